# TensorFlow's and Keras' published clipping expectations, translated to gradclip on NumPy.
#
# Peers:
#   tensorflow/tensorflow tensorflow/python/kernel_tests/math_ops/clip_ops_test.py at
#     2f22fbeda2d897492b28dbe659bd9241ebbca6f6, class ClipTest (tf.clip_by_value,
#     tf.clip_by_norm, tf.clip_by_global_norm, tf.clip_by_average_norm)
#   tensorflow/tensorflow tensorflow/python/ops/clip_ops_test.py at
#     0975e71e0d9451e3a5d8a1581a31c0dc9aef994a, class ClipOpsTest
#   tensorflow/tensorflow tensorflow/python/keras/optimizer_v2/optimizer_v2_test.py at
#     006d57e623f2cfd9510161cbfc9d02b2ac261853, class OptimizerTest (tf.keras clipnorm /
#     clipvalue)
#   keras-team/keras keras/src/optimizers/*_test.py at
#     3422977a5e38fb2f7709aaa9a08e47f0c43d0f60 (Keras 3: clipnorm, clipvalue,
#     global_clipnorm through Optimizer._clip_gradients)
#
# Mapping: tf.clip_by_value(t, lo, hi) -> clip_grad_value_(t, min=lo, max=hi);
# tf.clip_by_norm(t, c, axes) -> clip_by_norm_(t, c, axis=axes); tf.clip_by_global_norm(ts, c)
# -> clip_grad_norm_(ts, c); tf.clip_by_average_norm(t, c) -> clip_by_norm_(t, c * t.size);
# Keras clipnorm -> clip_grad_norm_per_tensor_, global_clipnorm -> clip_grad_norm_,
# clipvalue -> clip_grad_value_. TensorFlow's norm clipping has no eps: eps=0.0 reproduces it
# (the default eps: test_difference_eps_*). TensorFlow builds new tensors; gradclip writes in
# place, so each case clips a fresh array. TF constants are float32 unless stated.
# Needs the API being added on main: min=/max= of clip_grad_value_, an array max_norm for
# clip_by_norm_.
from __future__ import annotations

import math

import numpy as np
import pytest

import gradclip

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
    BF16 = None

F32 = np.float32


def close(actual: np.ndarray, expected: object) -> None:
    """TensorFlow's assertAllClose defaults: rtol = atol = 1e-6 (float32 and float64)."""
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- clip_by_value


def test_clip_by_value() -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByValue: [[-5, 2, 3], [4, 5, 6]] clipped
    to [-4.4, 4.4]."""
    x = np.array([[-5.0, 2.0, 3.0], [4.0, 5.0, 6.0]], F32)
    gradclip.clip_grad_value_(x, 4.4)
    close(x, [[-4.4, 2.0, 3.0], [4.0, 4.4, 4.4]])


FLOAT_DTYPES = ["float16", "float32", "float64"] + (["bfloat16"] if BF16 is not None else [])


def dt(name: str) -> np.dtype:
    return BF16 if name == "bfloat16" else np.dtype(name)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_clip_by_value_0_type_scalar_bounds(dtype: str) -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByValue0Type ([Tensor, Scalar, Scalar]):
    [[1..6]] clipped to [2, 4] -> [[2, 2, 3], [4, 4, 4]], for the float dtypes (the integer
    ones: test_difference_integer_gradients). Needs min=/max= (being added on main)."""
    x = np.arange(1, 7).reshape(2, 3).astype(dt(dtype))
    gradclip.clip_grad_value_(x, min=2, max=4)
    np.testing.assert_array_equal(x.astype(np.float64), [[2, 2, 3], [4, 4, 4]])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_clip_by_value_tensor_bounds_as_row_views(dtype: str) -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByValue1Type / 2Type / 3Type: bounds given
    as tensors. Their bounds are constant along each row, so the same numbers come from
    clipping each row (a view) with scalar bounds; gradclip takes scalar bounds only
    (test_difference_tensor_bounds). Needs min=/max= (being added on main)."""
    cases = [
        # (min per row, max per row, expected)  1Type: [Tensor, Tensor, Scalar]
        ([2, 3], [4, 4], [[2, 2, 3], [4, 4, 4]]),
        # 2Type: [Tensor, Scalar, Tensor]
        ([4, 4], [6, 6], [[4, 4, 4], [4, 5, 6]]),
        # 3Type: [Tensor, Tensor, Tensor]
        ([2, 5], [5, 7], [[2, 2, 3], [5, 5, 6]]),
    ]
    for lo, hi, expected in cases:
        x = np.arange(1, 7).reshape(2, 3).astype(dt(dtype))
        for row in range(2):
            gradclip.clip_grad_value_(x[row], min=lo[row], max=hi[row])
        np.testing.assert_array_equal(x.astype(np.float64), expected)


def test_difference_tensor_bounds() -> None:
    """Pins docs/differences.md "tensor-valued bounds": tf.clip_by_value takes bounds of any
    broadcastable shape (and raises ValueError for a shape that does not broadcast,
    testClipByValueBadShape); gradclip's bounds are scalars, and an array bound is refused
    before anything is written (a TypeError, as for any non-real bound)."""
    x = np.array([-5.0, 2.0, 3.0, 4.0, 5.0, 6.0], F32).reshape(2, 3, 1)
    before = x.copy()
    clip = np.array([1.0, 2.0])
    with pytest.raises((TypeError, ValueError)):
        gradclip.clip_grad_value_(x, min=-clip, max=clip)
    with pytest.raises((TypeError, ValueError)):
        gradclip.clip_grad_value_(x, min=1.0, max=clip)
    np.testing.assert_array_equal(x, before)


def test_clip_by_value_non_finite() -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByValueNonFinite: NaN stays NaN, +-inf
    become the bounds."""
    x = np.array([math.nan, math.inf, -math.inf], F32)
    gradclip.clip_grad_value_(x, 4.0)
    np.testing.assert_array_equal(x, [math.nan, 4.0, -4.0])


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (-2.0, 2.0, [[[-2, 0, 0], [2, 0, 0]], [[0, 2, 0], [0, 0, -1]]]),
        (1.0, 2.0, [[[1, 1, 1], [2, 1, 1]], [[1, 2, 1], [1, 1, 1]]]),
        (-2.0, -1.0, [[[-2, -1, -1], [-1, -1, -1]], [[-1, -1, -1], [-1, -1, -1]]]),
    ],
)
def test_clip_by_value_indexed_slices_values(lo: float, hi: float, expected: list) -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByValueWithIndexedSlicesClipped: the
    IndexedSlices' values array clipped to [lo, hi] (the sparse container itself is not
    applicable: docs/differences.md). Needs min=/max= for the one-sided-looking bounds."""
    values = np.array(
        [[[-3.0, 0.0, 0.0], [4.0, 0.0, 0.0]], [[0.0, 2.0, 0.0], [0.0, 0.0, -1.0]]], F32
    )
    gradclip.clip_grad_value_(values, min=lo, max=hi)
    close(values, expected)


def test_clip_by_value_empty_tensor() -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByValueEmptyTensor (GitHub issue 19337): a
    (7, 0) array clipped with equal bounds, or one bound, raises nothing. (Its tensor-valued
    bounds: test_difference_tensor_bounds.) Needs min=/max=."""
    z = np.zeros((7, 0), F32)
    gradclip.clip_grad_value_(z, min=1.0, max=1.0)
    gradclip.clip_grad_value_(z, min=0.0, max=1.0)
    gradclip.clip_grad_value_(z, min=1.0, max=1.0)
    assert z.shape == (7, 0)


# -------------------------------------------------------------------------- clip_by_norm

X6 = [-3.0, 0.0, 0.0, 4.0, 0.0, 0.0]  # norm 5
X6B = [-3.0, 0.0, 0.0, 4.0, 0.0, 3.0]


@pytest.mark.parametrize(
    ("values", "clip_norm", "axes", "expected", "peer"),
    [
        (X6, 4.0, None, [[-2.4, 0.0, 0.0], [3.2, 0.0, 0.0]], "testClipByNormClipped"),
        (X6, 6.0, None, [[-3.0, 0.0, 0.0], [4.0, 0.0, 0.0]], "testClipByNormNotClipped"),
        ([0.0] * 6, 6.0, None, [[0.0] * 3] * 2, "testClipByNormZero"),
        (X6B, 4.0, [0], [[-2.4, 0.0, 0.0], [3.2, 0.0, 3.0]], "testClipByNormClippedWithDim0"),
        (X6B, 4.0, [1], [[-3.0, 0.0, 0.0], [3.2, 0.0, 2.4]], "testClipByNormClippedWithDim1"),
        (X6B, 6.0, [1], [[-3.0, 0.0, 0.0], [4.0, 0.0, 3.0]], "testClipByNormNotClippedWithAxes"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_clip_by_norm(
    values: list[float], clip_norm: float, axes: list[int] | None, expected: list, peer: str
) -> None:
    """tensorflow clip_ops_test.py ClipTest.<peer>: tf.clip_by_norm of a 2x3 tensor, over all
    axes or the given ones (TF's axes = the axes the norm reduces = gradclip's axis)."""
    x = np.array(values, F32).reshape(2, 3)
    axis = None if axes is None else tuple(axes)
    gradclip.clip_by_norm_(x, clip_norm, axis=axis, eps=0.0)
    close(x, expected)


def test_clip_by_norm_twice() -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByNormClipped, second evaluation
    (tf_ans_tensor): clipping the same input again gives the same answer."""
    for _ in range(2):
        x = np.array(X6, F32).reshape(2, 3)
        norms = gradclip.clip_by_norm_(x, 4.0, eps=0.0)
        assert norms == pytest.approx(5.0)
        close(x, [[-2.4, 0.0, 0.0], [3.2, 0.0, 0.0]])


def test_clip_by_norm_bad_shape() -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByNormBadShape: a clip_norm tensor [1, 2]
    for a (2, 3, 1) tensor clipped over all axes has a shape that does not fit: ValueError.
    Needs the array max_norm of clip_by_norm_ being added on main."""
    x = np.array(X6, F32).reshape(2, 3, 1)
    before = x.copy()
    with pytest.raises(ValueError, match="does not broadcast"):
        gradclip.clip_by_norm_(x, np.array([1.0, 2.0]), eps=0.0)
    np.testing.assert_array_equal(x, before)


def test_clip_by_norm_tensor_clip_norm_per_slice() -> None:
    """TensorFlow's clip_norm may be a tensor (the "ClippedTensor" variants and
    testClipByNormBadShape): a clip_norm that broadcasts against the norms clips each slice to
    its own bound. Here axes [1] of testClipByNormClippedWithDim1 with bounds [4, 4] (the same
    answer) and [2, 4] (row 0 clipped too). Needs the array max_norm being added on main."""
    x = np.array(X6B, F32).reshape(2, 3)
    gradclip.clip_by_norm_(x, np.array([4.0, 4.0]), axis=1, eps=0.0)
    close(x, [[-3.0, 0.0, 0.0], [3.2, 0.0, 2.4]])
    x = np.array(X6B, F32).reshape(2, 3)
    gradclip.clip_by_norm_(x, np.array([2.0, 4.0]), axis=1, eps=0.0)
    close(x, [[-2.0, 0.0, 0.0], [3.2, 0.0, 2.4]])


def test_clip_tensor_by_norm() -> None:
    """tensorflow ops/clip_ops_test.py ClipOpsTest.testClipTensorByNorm: the simple example
    and the zero-norm one (which must stay finite: TF checks numerics)."""
    x = np.array([[-3.0, 0.0, 0.0], [4.0, 0.0, 0.0]], F32)
    gradclip.clip_by_norm_(x, 4.0, eps=0.0)
    close(x, [[-2.4, 0.0, 0.0], [3.2, 0.0, 0.0]])
    z = np.zeros((2, 3), F32)
    gradclip.clip_by_norm_(z, 4.0, eps=0.0)
    assert np.isfinite(z).all()
    close(z, np.zeros((2, 3)))


@pytest.mark.parametrize("axes", [None, 0, 1, 2, (0, 1), (0, 2), (1, 2), (0, 1, 2)])
def test_clip_indexed_slices_by_norm_dense_equivalent(axes: int | tuple[int, ...] | None) -> None:
    """tensorflow ops/clip_ops_test.py ClipOpsTest.testClipIndexedSlicesByNorm: the dense
    [10, 2, 3] tensor holding the slices' values at rows 2 and 6, clipped to 4 over each axes
    choice, equals TensorFlow's formula t * c / max(||t||_axes, c). (The peer passes 1 where
    its comment says "Axes == 2"; both are run here. The sparse container: not applicable.)"""
    dense = np.zeros((10, 2, 3), F32)
    dense[2] = [[-3.0, 0.0, 0.0], [4.0, 0.0, 0.0]]
    dense[6] = [[0.0, 2.0, 0.0], [0.0, 0.0, -1.0]]
    t = dense.astype(np.float64)
    l2 = np.sqrt(np.sum(t * t, axis=axes, keepdims=True))
    expected = t * 4.0 / np.maximum(l2, 4.0)
    gradclip.clip_by_norm_(dense, 4.0, axis=axes, eps=0.0)
    close(dense, expected)


# ------------------------------------------------------------------- clip_by_global_norm


def global_pair() -> list[np.ndarray]:
    # x0 = [[-2, 0, 0], [4, 0, 0]], x1 = [1, -2]: global norm sqrt(4 + 16 + 1 + 4) = 5
    return [np.array([[-2.0, 0.0, 0.0], [4.0, 0.0, 0.0]], F32), np.array([1.0, -2.0], F32)]


@pytest.mark.parametrize(
    "clip_norm", [4.0, np.float32(4.0), np.array(4.0, F32)], ids=["float", "f32", "0d"]
)
def test_clip_by_global_norm_clipped(clip_norm: object) -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByGlobalNormClipped and
    testClipByGlobalNormClippedTensor (clip_norm a scalar tensor): norm 5, both tensors
    scaled by 4/5."""
    x = global_pair()
    norm = gradclip.clip_grad_norm_(x, clip_norm, eps=0.0)
    close(norm, 5.0)
    close(x[0], [[-1.6, 0.0, 0.0], [3.2, 0.0, 0.0]])
    close(x[1], [0.8, -1.6])


def test_clip_by_global_norm_supports_none() -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByGlobalNormSupportsNone: (x0, None, x1,
    None): the Nones stay None and do not count."""
    x0, x1 = global_pair()
    grads = (x0, None, x1, None)
    norm = gradclip.clip_grad_norm_(grads, 4.0, eps=0.0)
    assert grads[1] is None and grads[3] is None
    close(norm, 5.0)
    close(x0, [[-1.6, 0.0, 0.0], [3.2, 0.0, 0.0]])
    close(x1, [0.8, -1.6])


def test_clip_by_global_norm_with_indexed_slices_values() -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByGlobalNormWithIndexedSlicesClipped: x1
    is IndexedSlices with values [1, -2]; its values count in the global norm and are scaled
    like a dense tensor (here: the values array itself)."""
    x0, values = global_pair()
    norm = gradclip.clip_grad_norm_([x0, values], 4.0, eps=0.0)
    close(norm, 5.0)
    close(x0, [[-1.6, 0.0, 0.0], [3.2, 0.0, 0.0]])
    close(values, [0.8, -1.6])


def test_clip_by_global_norm_not_clipped() -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByGlobalNormNotClipped: clip_norm 6 > 5,
    nothing changes, the norm is 5."""
    x = global_pair()
    norm = gradclip.clip_grad_norm_(x, 6.0, eps=0.0)
    close(norm, 5.0)
    np.testing.assert_array_equal(x[0], global_pair()[0])
    np.testing.assert_array_equal(x[1], global_pair()[1])


def test_clip_by_global_norm_zero() -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByGlobalNormZero: all zeros, norm 0,
    unchanged (and finite)."""
    x = [np.zeros((2, 3), F32), np.zeros(2, F32)]
    norm = gradclip.clip_grad_norm_(x, 6.0, eps=0.0)
    assert norm == 0.0
    np.testing.assert_array_equal(x[0], np.zeros((2, 3)))
    np.testing.assert_array_equal(x[1], np.zeros(2))


def test_difference_global_norm_inf() -> None:
    """Pins docs/differences.md "infinite global norm": TensorFlow's testClipByGlobalNormInf
    expects norm inf and every output NaN (its scale is made NaN on purpose). gradclip's default
    follows PyTorch's arithmetic, coef = 6 / inf = 0: finite entries become (signed) 0,
    infinite ones NaN; nonfinite="skip"/"raise" leave everything as it was, "zero" zeroes."""
    x = [
        np.array([[-2.0, 0.0, math.inf], [4.0, 0.0, 0.0]], F32),
        np.array([1.0, -2.0], F32),
    ]
    norm = gradclip.clip_grad_norm_(x, 6.0, eps=0.0)
    assert norm == math.inf
    np.testing.assert_array_equal(x[0], [[0.0, 0.0, math.nan], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(x[1], [0.0, 0.0])
    assert not np.isnan(x[1]).any()  # not TensorFlow's all-NaN
    y = [np.array([1.0, math.inf], F32)]
    assert gradclip.clip_grad_norm_(y, 6.0, nonfinite="skip") == math.inf
    np.testing.assert_array_equal(y[0], [1.0, math.inf])


# --------------------------------------------------------------------- clip_by_average_norm


@pytest.mark.parametrize(
    ("values", "clip_norm", "expected", "peer"),
    [
        (X6, 0.8, [[-2.88, 0.0, 0.0], [3.84, 0.0, 0.0]], "testClipByAverageNormClipped"),
        (X6, F32(0.8), [[-2.88, 0.0, 0.0], [3.84, 0.0, 0.0]], "ClippedTensor"),
        (X6, 0.9, [[-3.0, 0.0, 0.0], [4.0, 0.0, 0.0]], "testClipByAverageNormNotClipped"),
        ([0.0] * 6, 0.9, [[0.0] * 3] * 2, "testClipByAverageNormZero"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_clip_by_average_norm(
    values: list[float], clip_norm: float, expected: list, peer: str
) -> None:
    """tensorflow clip_ops_test.py ClipTest.<peer>: the average norm ||t|| / size(t) (5/6 here)
    clipped to clip_norm, i.e. clip_by_norm with clip_norm * size, as
    testClipByAverageNormReplacedWithClipByNorm states."""
    x = np.array(values, F32).reshape(2, 3)
    gradclip.clip_by_norm_(x, float(clip_norm) * x.size, eps=0.0)
    close(x, expected)


def test_clip_by_average_norm_replaced_with_clip_by_norm() -> None:
    """tensorflow clip_ops_test.py ClipTest.testClipByAverageNormReplacedWithClipByNorm: the
    average-norm answer equals clip_by_norm with clip_norm * size."""
    a = np.array(X6, F32).reshape(2, 3)
    b = a.copy()
    gradclip.clip_by_norm_(a, 0.8 * a.size, eps=0.0)
    norm = gradclip.tensor_norms(b)[0]
    expected = b * (0.8 * b.size / max(norm, 0.8 * b.size))
    close(a, expected)
    close(a, [[-2.88, 0.0, 0.0], [3.84, 0.0, 0.0]])


# --------------------------------------------------------------------- Keras clip options
KERAS3_FILES = [
    "optimizer_test.py",
    "sgd_test.py",
    "adadelta_test.py",
    "adafactor_test.py",
    "adagrad_test.py",
    "adam_test.py",
    "adamax_test.py",
    "adamw_test.py",
    "ftrl_test.py",
    "lamb_test.py",
    "lion_test.py",
    "muon_test.py",
    "nadam_test.py",
    "rmsprop_test.py",
    "schedule_free_adamw_test.py",
    "../backend/tensorflow/optimizer_distribute_test.py",
]


@pytest.mark.parametrize("peer_file", KERAS3_FILES)
def test_keras_clipnorm(peer_file: str) -> None:
    """keras-team/keras keras/src/optimizers/<peer_file> test_clip_norm: clipnorm=1 on the
    gradient [100, 100] gives [sqrt(2)/2, sqrt(2)/2]. Keras clips each gradient by its own
    norm (values * c / max(||g||, c), no eps): clip_grad_norm_per_tensor_ with eps=0. The
    files differ only in the optimizer class and in whether the gradient is float32
    (backend.convert_to_tensor) or float64 (np.array)."""
    dtype = F32 if peer_file == "optimizer_test.py" else np.float64
    grads = [np.array([100.0, 100.0], dtype)]
    norms = gradclip.clip_grad_norm_per_tensor_(grads, 1.0, eps=0.0)
    close(norms, [100.0 * math.sqrt(2.0)])
    close(grads[0], [2**0.5 / 2, 2**0.5 / 2])


@pytest.mark.parametrize("peer_file", KERAS3_FILES)
def test_keras_clipvalue(peer_file: str) -> None:
    """keras-team/keras keras/src/optimizers/<peer_file> test_clip_value: clipvalue=1 on
    [100, 100] gives [1, 1] (ops.clip(g, -v, v))."""
    dtype = F32 if peer_file == "optimizer_test.py" else np.float64
    grads = [np.array([100.0, 100.0], dtype)]
    gradclip.clip_grad_value_(grads, 1.0)
    close(grads[0], [1.0, 1.0])


def test_keras_global_clipnorm() -> None:
    """keras-team/keras keras/src/optimizers/optimizer_test.py test_global_clip_norm:
    global_clipnorm=1 on [50, 100] (float32) gives grad / ||grad||."""
    grad = np.array([50.0, 100.0], F32)
    expected = grad / np.linalg.norm(grad)
    grads = [grad.copy()]
    gradclip.clip_grad_norm_(grads, 1.0, eps=0.0)
    close(grads[0], expected)


def test_keras_per_tensor_vs_global_on_two_tensors() -> None:
    """Keras' two norm options on more than one gradient (base_optimizer._clip_gradients:
    clipnorm maps _clip_by_norm over the list, global_clipnorm scales all by one factor):
    [100, 100] and [3, 4] with bound 1."""
    per = [np.array([100.0, 100.0]), np.array([3.0, 4.0])]
    gradclip.clip_grad_norm_per_tensor_(per, 1.0, eps=0.0)
    close(per[0], [2**0.5 / 2, 2**0.5 / 2])
    close(per[1], [0.6, 0.8])
    glob = [np.array([100.0, 100.0]), np.array([3.0, 4.0])]
    total = math.sqrt(2 * 100.0**2 + 25.0)
    gradclip.clip_grad_norm_(glob, 1.0, eps=0.0)
    close(glob[0], np.array([100.0, 100.0]) / total)
    close(glob[1], np.array([3.0, 4.0]) / total)


def test_tf_keras_grad_clip_value() -> None:
    """tensorflow keras/optimizer_v2/optimizer_v2_test.py OptimizerTest.testGradClipValue:
    var [1, 2], loss 3 * var (gradient [3, 3]), SGD(lr=1, clipvalue=1): var becomes [0, 1]."""
    var = np.array([1.0, 2.0], F32)
    grad = np.array([3.0, 3.0], F32)
    gradclip.clip_grad_value_(grad, 1.0)
    var -= 1.0 * grad
    close(var, [0.0, 1.0])


def test_tf_keras_grad_clip_norm() -> None:
    """tensorflow keras/optimizer_v2/optimizer_v2_test.py OptimizerTest.testGradClipNorm: var
    [1], gradient [3], SGD(lr=1, clipnorm=1): var becomes [0]."""
    var = np.array([1.0], F32)
    grad = [np.array([3.0], F32)]
    gradclip.clip_grad_norm_per_tensor_(grad, 1.0, eps=0.0)
    var -= 1.0 * grad[0]
    close(var, [0.0])


def test_tf_keras_invalid_clip_norm() -> None:
    """tensorflow keras/optimizer_v2/optimizer_v2_test.py OptimizerTest.testInvalidClipNorm:
    clipnorm=-1 is a ValueError. gradclip refuses it in the call, before writing (and 0 too:
    its bound must be > 0, where Keras' is ">= 0")."""
    g = [np.array([3.0], F32)]
    for bad in (-1.0, 0.0):
        with pytest.raises(ValueError, match="max_norm"):
            gradclip.clip_grad_norm_per_tensor_(g, bad)
    np.testing.assert_array_equal(g[0], [3.0])


# ----------------------------------------------------------------------------- differences


@pytest.mark.parametrize("dtype", ["int16", "int32", "int64", "uint8"])
def test_difference_integer_gradients(dtype: str) -> None:
    """Pins docs/differences.md "integer gradients": tf.clip_by_value's testClipByValue0Type
    to 3Type run int16, int32, int64 and uint8 tensors too; gradclip refuses integer arrays
    (TypeError, nothing written): gradients are floating point, and rounding a clipped or
    scaled value back to an integer would hide what happened."""
    x = np.arange(1, 7, dtype=dtype).reshape(2, 3)
    with pytest.raises(TypeError, match=dtype):
        gradclip.clip_grad_value_(x, 4)
    with pytest.raises(TypeError, match=dtype):
        gradclip.clip_by_norm_(x, 4.0)
    np.testing.assert_array_equal(x, np.arange(1, 7).reshape(2, 3))


def test_difference_eps_default() -> None:
    """Pins docs/differences.md "eps in the coefficient" for TensorFlow/Keras: with the
    default eps = 1e-6 the coefficient is 4 / (5 + 1e-6), so testClipByNormClipped's -2.4
    becomes -2.4 * 5 / (5 + 1e-6) (still inside assertAllClose's 1e-6), and a tensor whose
    norm equals clip_norm is scaled by c / (c + eps) < 1 where TensorFlow leaves it alone."""
    x = np.array(X6, np.float64).reshape(2, 3)
    gradclip.clip_by_norm_(x, 4.0)
    np.testing.assert_allclose(x[0, 0], -2.4 * 5.0 / (5.0 + 1e-6), rtol=1e-15)
    close(x, [[-2.4, 0.0, 0.0], [3.2, 0.0, 0.0]])
    at = np.array([3.0, 4.0])
    gradclip.clip_by_norm_(at, 5.0)
    assert at[0] == 3.0 * 5.0 / (5.0 + 1e-6) < 3.0
    at0 = np.array([3.0, 4.0])
    gradclip.clip_by_norm_(at0, 5.0, eps=0.0)
    np.testing.assert_array_equal(at0, [3.0, 4.0])


def test_difference_float32_overflow_in_norm() -> None:
    """Pins docs/differences.md "float32 gradients whose squares overflow" (found while
    translating tf.clip_by_norm, whose l2sum = sum(t * t) is computed in the tensor's dtype):
    for float32 [1e20, 1e20], t * t overflows, TensorFlow's norm is inf and the clipped tensor
    is t * c / inf = [0, 0]. gradclip accumulates in float64 (norm 1.414e20) and clips to
    norm c."""
    x = np.array([1e20, 1e20], F32)
    norms = gradclip.clip_by_norm_(x, 1.0, eps=0.0)
    np.testing.assert_allclose(norms, math.sqrt(2.0) * 1e20, rtol=1e-7)
    close(x, [2**0.5 / 2, 2**0.5 / 2])


def test_difference_not_differentiable() -> None:
    """Pins docs/differences.md "not differentiable": testClipByValueGradient and
    testClipByNormGradientZeros check TensorFlow's gradient of the clip (1 at zero). gradclip
    works on values in place: its calls return only norms (a float or a float64 ndarray) and
    build no graph, so there is no gradient to take. At the point TF differentiates, zeros,
    the values are left as they were."""
    x = np.zeros(3, F32)
    out = gradclip.clip_by_norm_(x, 1.0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == ()
    np.testing.assert_array_equal(x, [0.0, 0.0, 0.0])
    assert gradclip.clip_grad_value_(np.array([1.0, 2.0, 3.0, 4.0], F32), 3.5) is None
