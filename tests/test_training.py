# Training-grade functions against gradclip.reference: unscale_clip_grad_norm_ (mixed
# precision in two passes), adaptive_grad_clip_ (AGC), clip_per_example_ (DP-SGD), and
# clip_grad_norm_(return_result=True, per_tensor_norms=True). Every dtype, several layouts,
# every CPU target; bad input raises with nothing modified.
import math

import numpy as np
import pytest

import gradclip
from gradclip import reference as ref

ml_dtypes = pytest.importorskip("ml_dtypes", exc_type=ImportError)
DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


def rand(rng, shape, dtype, scale=1.0):
    return np.asarray(rng.standard_normal(shape) * scale).astype(dtype)


# The compiled norm and the reference's (math.fsum) may differ in the last bit, and so may
# the coefficient: written values agree to one unit in the last place of their dtype.
ULP = {2: 2.0**-7, 4: 2.0**-23, 8: 2.0**-52}


def assert_same(a, b, cancel=False):
    """cancel: sums over a batch, where cancellation scales the error by the terms' size."""
    for x, y in zip(a, b, strict=True):
        if x is None:
            assert y is None
            continue
        x, y = np.asarray(x), np.asarray(y)
        rtol = 4 * ULP[x.dtype.itemsize] * (1.0 if x.dtype != np.float16 else 8.0)
        scale = float(np.abs(y.astype(np.float64)).max()) if cancel and y.size else 0.0
        np.testing.assert_allclose(
            x.astype(np.float64), y.astype(np.float64), rtol=rtol, atol=64 * rtol * scale
        )


@pytest.fixture(params=gradclip.available_cpu_targets())
def target(request):
    before = gradclip.cpu_target()
    gradclip._set_cpu_target(request.param)
    yield request.param
    gradclip._set_cpu_target(before)


# ---------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("inv_scale", [2.0**-10, 0.37, 1.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_unscale_matches_reference(target, dtype, inv_scale, max_norm):
    rng = np.random.default_rng(1)
    a = [rand(rng, s, dtype, 100.0) for s in [(33, 5), (7,), (), (0,), (1000,)]] + [None]
    b = [None if x is None else x.copy() for x in a]
    r1 = gradclip.unscale_clip_grad_norm_(a, max_norm, inv_scale, per_tensor_norms=True)
    r2 = ref.unscale_clip_grad_norm_(b, max_norm, inv_scale, per_tensor_norms=True)
    assert r1.total_norm == pytest.approx(r2.total_norm, rel=1e-13)
    assert r1.coef == pytest.approx(r2.coef, rel=1e-12)
    assert r1.clipped == r2.clipped == (max_norm < r2.total_norm)
    assert not r1.found_nonfinite
    np.testing.assert_allclose(r1.tensor_norms, r2.tensor_norms, rtol=1e-13)
    assert_same(a, b)


def test_unscale_is_exact_for_power_of_two_scales():
    rng = np.random.default_rng(2)
    g = rand(rng, 5000, np.float32)
    scaled = g * np.float32(2.0**12)
    r = gradclip.unscale_clip_grad_norm_(scaled, 1e9, 2.0**-12)
    assert r.coef == 1.0 and not r.clipped
    np.testing.assert_array_equal(scaled, g)  # unscaled exactly, nothing else
    assert r.total_norm == gradclip.get_total_norm(g)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_unscale_nonfinite_writes_nothing(bad):
    g = [np.ones(100, np.float16), np.ones(10, np.float32)]
    g[0][37] = bad
    snap = [x.tobytes() for x in g]
    r = gradclip.unscale_clip_grad_norm_(g, 1.0, 1 / 512)
    assert r.found_nonfinite and not r.clipped and r.coef == 1.0
    assert [x.tobytes() for x in g] == snap
    r2 = ref.unscale_clip_grad_norm_([x.copy() for x in g], 1.0, 1 / 512)
    assert r2.found_nonfinite


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"max_norm": 0.0, "inv_scale": 1.0}, ValueError),
        ({"max_norm": 1.0, "inv_scale": 0.0}, ValueError),
        ({"max_norm": 1.0, "inv_scale": math.inf}, ValueError),
        ({"max_norm": 1.0, "inv_scale": -1.0}, ValueError),
        ({"max_norm": 1.0, "inv_scale": "1"}, TypeError),
    ],
)
def test_unscale_bad_arguments(kwargs, exc):
    g = np.ones(10)
    with pytest.raises(exc):
        gradclip.unscale_clip_grad_norm_(g, **kwargs)
    with pytest.raises(exc):
        ref.unscale_clip_grad_norm_(g.copy(), **kwargs)
    assert (g == 1).all()


# ---------------------------------------------------------------- AGC
SHAPES = [(16, 8), (6, 4, 3, 3), (3, 4, 2, 5), (5, 7, 3), (10,), (), (1, 12), (0, 3)]


@pytest.mark.parametrize("layout", ["OI", "IO", "HWIO"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_agc_matches_reference(target, layout, dtype):
    rng = np.random.default_rng(3)
    g = [rand(rng, s, dtype) for s in SHAPES]
    w = [rand(rng, s, dtype, 3.0) for s in SHAPES]
    w[1][0] = 0  # a unit whose weights are zero: eps takes over
    g2 = [x.copy() for x in g]
    r1 = gradclip.adaptive_grad_clip_(g, w, 0.05, layout=layout, return_result=True)
    r2 = ref.adaptive_grad_clip_(g2, w, 0.05, layout=layout, return_result=True)
    assert r1.total_norm == pytest.approx(r2.total_norm, rel=1e-13)
    np.testing.assert_allclose(r1.tensor_norms, r2.tensor_norms, rtol=1e-13)
    assert r1.coef == pytest.approx(r2.coef, rel=1e-12) and r1.clipped == r2.clipped
    assert_same(g, g2)


def test_agc_follows_the_papers_rule():
    # weights (out=3, in=4), one unit per row ("OI"); clipping 0.1
    w = np.array([[1.0, 1, 1, 1], [0, 0, 0, 0], [2, 0, 0, 0]])
    g = np.array([[1.0, 0, 0, 0], [1e-4, 0, 0, 0], [0.1, 0, 0, 0]])
    gradclip.adaptive_grad_clip_(g, w, clipping=0.1, eps=1e-3)
    # row 0: ||w||=2 -> max 0.2 < 1 -> scaled to 0.2; row 1: max(0, eps)*0.1 = 1e-4 -> not
    # below the max (equal), scaled by 1e-4/1e-4 = 1; row 2: max 0.2 > 0.1 -> kept
    np.testing.assert_allclose(g[:, 0], [0.2, 1e-4, 0.1])
    # "IO": the same weights transposed give the same units
    wt, gt = w.T.copy(), np.array([[1.0, 0, 0, 0], [1e-4, 0, 0, 0], [0.1, 0, 0, 0]]).T.copy()
    gradclip.adaptive_grad_clip_(gt, wt, clipping=0.1, layout="IO")
    np.testing.assert_allclose(gt[0], [0.2, 1e-4, 0.1])


def test_agc_params_read_only_and_untouched():
    rng = np.random.default_rng(4)
    w = rand(rng, (8, 8), np.float32)
    w.flags.writeable = False
    g = rand(rng, (8, 8), np.float32)
    before = w.tobytes()
    gradclip.adaptive_grad_clip_(g, w, 0.01)
    assert w.tobytes() == before


@pytest.mark.parametrize(
    ("g", "w", "exc"),
    [
        ([np.ones((2, 3))], [np.ones((3, 2))], ValueError),
        ([np.ones(3)], [np.ones(3), np.ones(3)], ValueError),
        ([np.ones(3)], [np.ones(3, np.int64)], TypeError),
        ([np.ones(3, np.int64)], [np.ones(3)], TypeError),
    ],
)
def test_agc_bad_input(g, w, exc):
    snap = [x.tobytes() for x in g]
    with pytest.raises(exc):
        gradclip.adaptive_grad_clip_(g, w, 1e-9)
    assert [x.tobytes() for x in g] == snap
    with pytest.raises(exc):
        ref.adaptive_grad_clip_([x.copy() for x in g], w, 1e-9)


def test_agc_bad_layout():
    with pytest.raises(ValueError, match="layout"):
        gradclip.adaptive_grad_clip_(np.ones(3), np.ones(3), layout="NCHW")


# ---------------------------------------------------------------- per-example
@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_per_example_matches_reference(target, per_layer, dtype):
    rng = np.random.default_rng(5)
    g = [rand(rng, (9, *s), dtype) for s in [(4,), (2, 3), (), (0,)]] + [None]
    g[0][3] *= 100  # one example far above the bound
    g2 = [None if x is None else x.copy() for x in g]
    s1, n1 = gradclip.clip_per_example_(g, 1.5, per_layer=per_layer)
    s2, n2 = ref.clip_per_example_(g2, 1.5, per_layer=per_layer)
    assert_same(g, g2)
    assert_same(s1, s2, cancel=True)
    np.testing.assert_array_equal(n1, n2)
    assert (np.asarray(n1) > 0).any()


def test_per_example_matches_opacus_formula():
    rng = np.random.default_rng(6)
    g = [rng.standard_normal((5, 3)), rng.standard_normal((5, 2, 2))]
    orig = [x.copy() for x in g]
    sums, n = gradclip.clip_per_example_(g, 1.0)
    norms = np.sqrt(sum((x.reshape(5, -1) ** 2).sum(axis=1) for x in orig))
    factor = np.minimum(1.0, 1.0 / (norms + 1e-6))  # Opacus' per_sample_clip_factor
    for x, o, s in zip(g, orig, sums, strict=True):
        exp = o * factor.reshape((5,) + (1,) * (o.ndim - 1))
        np.testing.assert_allclose(x, exp, rtol=1e-12)
        np.testing.assert_allclose(s, exp.sum(axis=0), rtol=1e-12)
    assert n == int((factor < 1).sum())


def test_per_example_bad_input():
    g = [np.ones((4, 3)), np.ones((5, 3))]
    snap = [x.tobytes() for x in g]
    with pytest.raises(ValueError, match=r"grads\[1\] has batch size 5"):
        gradclip.clip_per_example_(g, 1e-3)
    assert [x.tobytes() for x in g] == snap
    with pytest.raises(ValueError, match="0-d"):
        gradclip.clip_per_example_([np.ones(()), np.ones(3)], 1.0)


# ---------------------------------------------------------------- ClipResult
def test_clip_grad_norm_result():
    rng = np.random.default_rng(7)
    g = [rand(rng, s, np.float32) for s in [(100,), (10, 10), ()]]
    g2 = [x.copy() for x in g]
    pre = [np.linalg.norm(x.astype(np.float64)) for x in g]
    r = gradclip.clip_grad_norm_(g, 1.0, return_result=True, per_tensor_norms=True)
    norm = gradclip.clip_grad_norm_(g2, 1.0)
    assert isinstance(r, gradclip.ClipResult)
    assert r.total_norm == pytest.approx(norm, rel=1e-14)
    assert r.clipped and r.coef == pytest.approx(1.0 / (norm + 1e-6))
    np.testing.assert_allclose(r.tensor_norms, pre, rtol=1e-13)
    assert_same(g, g2)
    with pytest.raises(AttributeError):
        r.coef = 2.0  # frozen
    r = gradclip.clip_grad_norm_([np.array([np.nan])], 1.0, nonfinite="skip", return_result=True)
    assert r.found_nonfinite and not r.clipped and r.coef == 1.0


def test_training_functions_take_a_gradient_set() -> None:
    # the same results from a GradientSet as from its arrays
    def make() -> list[np.ndarray]:
        rng = np.random.default_rng(8)
        return [rng.standard_normal((4, 3)) * 5, rng.standard_normal((4,)) * 5]

    plain, in_set = make(), make()
    gs = gradclip.GradientSet(in_set)
    a = gradclip.unscale_clip_grad_norm_(plain, 1.0, 0.5)
    b = gradclip.unscale_clip_grad_norm_(gs, 1.0, 0.5)
    assert a == b
    params = [np.ones((4, 3)), np.ones(4)]
    gradclip.adaptive_grad_clip_(plain, params, 0.05)
    gradclip.adaptive_grad_clip_(gs, gradclip.GradientSet([np.ones((4, 3)), np.ones(4)]), 0.05)
    sums_a, n_a = gradclip.clip_per_example_(plain, 0.1)
    sums_b, n_b = gradclip.clip_per_example_(gs, 0.1)
    assert n_a == n_b
    for x, y, sx, sy in zip(plain, in_set, sums_a, sums_b, strict=True):
        assert x.tobytes() == y.tobytes() and sx.tobytes() == sy.tobytes()
