# PyTorch's published expectations for torch.nn.utils.clip_grad_norm_ / clip_grad_value_ /
# get_total_norm / clip_grads_with_norm_, translated to gradclip on NumPy arrays.
#
# Peer: pytorch/pytorch, test/test_nn.py at 74f2fa66feec00335f72813782f4802e80bff4cb
#   TestNNDeviceType.test_clip_grad_norm          (norm_type x foreach x device)
#   TestNNDeviceType.test_clip_grad_value         (foreach x device)
#   TestNNDeviceType.test_clip_grad_norm_error_if_nonfinite (its table of cases)
# and the same cases in PyTorch's C++ API tests, test/cpp/api/nn_utils.cpp at
# 04821b971ff811725a8862d365d20445c1370fa2: NNUtilsTest.ClipGradNorm (which also asserts the
# clipped norm within 1e-6 of max_norm), NNUtilsTest.ClipGradNormErrorIfNonfinite (the table
# below was checked against its copy there) and NNUtilsTest.ClipGradValue.
# "foreach" and "device" only pick PyTorch's kernels; gradclip has one CPU path, so each case
# is run once. The inputs are the peer's (a Linear(10, 10): a 10x10 weight and a 10 bias
# gradient, float32 as PyTorch's default dtype; float64 for the non-finite table); where the
# peer draws random numbers, a fixed NumPy seed does.
# Rows of docs/differences.md pinned here: test_difference_overflow_*,
# test_difference_norm_type_zero_and_negative, test_difference_nonfinite_message,
# test_difference_empty_generator_message.
from __future__ import annotations

import math
import warnings
from itertools import product

import numpy as np
import pytest

import gradclip

INF, NAN = math.inf, math.nan
# the peer's norm types, as the peer spells them ('inf' as a string)
NORM_TYPES = [0.5, 1.5, 2, 4, "inf"]
MAX_NORM = 2.0


def p_of(norm_type: float | str) -> float:
    return float(norm_type)  # float('inf') for the string, as PyTorch converts it


def norm(grads: list[np.ndarray], norm_type: float | str) -> float:
    """The peer's compute_norm helper, in float64: (sum |g|^p)^(1/p), or max |g|."""
    p = p_of(norm_type)
    flat = np.concatenate([np.abs(g.astype(np.float64)).ravel() for g in grads])
    if p == INF:
        return float(flat.max())
    return float(np.sum(flat**p) ** (1.0 / p))


def large_grads() -> list[np.ndarray]:
    # torch.arange(1., 101).view(10, 10), torch.ones(10).div(1000)
    return [
        np.arange(1.0, 101.0, dtype=np.float32).reshape(10, 10),
        np.ones(10, np.float32) / np.float32(1000),
    ]


def small_grads() -> list[np.ndarray]:
    # torch.rand(10, 10).div(10000), torch.ones(10).div(500)
    rng = np.random.default_rng(20240514)
    return [
        (rng.random((10, 10)) / 10000).astype(np.float32),
        np.ones(10, np.float32) / np.float32(500),
    ]


def assert_uniform_scale(after: list[np.ndarray], before: list[np.ndarray]) -> float:
    """The peer's compare_scaling: every element was multiplied by the same factor (its
    assertEqual(scale.std(), 0) at float32 tolerance); returns that factor."""
    scale = np.concatenate(
        [(a.astype(np.float64) / b).ravel() for a, b in zip(after, before, strict=True)]
    )
    assert scale.std() <= 1e-6
    return float(scale[0])


# ------------------------------------------------------------------- test_clip_grad_norm


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_clip_grad_norm_large_gradients(norm_type: float | str) -> None:
    """pytorch/pytorch test/test_nn.py TestNNDeviceType.test_clip_grad_norm, first part:
    large gradients are scaled to norm max_norm, uniformly, and the pre-clip norm comes back.
    (The string 'inf' needs the norm_type spellings being added on main.)"""
    grads = large_grads()
    before = [g.copy() for g in grads]
    norm_before = norm(grads, norm_type)
    total = gradclip.clip_grad_norm_(grads, MAX_NORM, norm_type=norm_type)
    norm_after = norm(grads, norm_type)
    assert total == pytest.approx(norm_before, rel=1.3e-6)  # assertEqual at float32
    assert norm_after == pytest.approx(MAX_NORM, rel=1.3e-6, abs=1e-5)
    # test/cpp/api/nn_utils.cpp ClipGradNorm: ASSERT_NEAR(norm_after, max_norm, 1e-6) and
    # ASSERT_LE(norm_after, max_norm), the latter in float32 arithmetic; measured in float64,
    # the float32 rounding of the clipped values may leave the norm a float32 ulp above
    assert abs(norm_after - MAX_NORM) <= 1e-6
    assert norm_after <= MAX_NORM * (1 + 2**-23)
    assert norm_after <= norm_before
    assert_uniform_scale(grads, before)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_decomposed_get_total_norm_then_clip_grads_with_norm(norm_type: float | str) -> None:
    """pytorch/pytorch test/test_nn.py TestNNDeviceType.test_clip_grad_norm, "decomposed APIs
    should behave as expected": get_total_norm, then clip_grads_with_norm_ with that norm."""
    grads = large_grads()
    before = [g.copy() for g in grads]
    norm_before = norm(grads, norm_type)
    total = gradclip.get_total_norm(grads, norm_type=norm_type)
    gradclip.clip_grads_with_norm_(grads, MAX_NORM, total)
    norm_after = norm(grads, norm_type)
    assert total == pytest.approx(norm_before, rel=1.3e-6)
    assert norm_after == pytest.approx(MAX_NORM, rel=1.3e-6, abs=1e-5)
    assert norm_after <= norm_before
    assert_uniform_scale(grads, before)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_clip_grad_norm_small_gradients_unchanged(norm_type: float | str) -> None:
    """pytorch/pytorch test/test_nn.py TestNNDeviceType.test_clip_grad_norm, "Small gradients
    should be left unchanged": the norm is returned, the values keep a scale of exactly 1."""
    grads = small_grads()
    before = [g.copy() for g in grads]
    norm_before = norm(grads, norm_type)
    total = gradclip.clip_grad_norm_(grads, MAX_NORM, norm_type=norm_type)
    norm_after = norm(grads, norm_type)
    assert total == pytest.approx(norm_before, rel=1.3e-6)
    assert norm_after == norm_before
    assert norm_after <= MAX_NORM
    assert assert_uniform_scale(grads, before) == 1.0
    for g, b in zip(grads, before, strict=True):
        np.testing.assert_array_equal(g, b)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_clip_grad_norm_single_array_same_as_list(norm_type: float | str) -> None:
    """pytorch/pytorch test/test_nn.py TestNNDeviceType.test_clip_grad_norm, "Should accept a
    single Tensor as input": one array and a one-element list give the same result."""
    g1 = np.arange(1.0, 101.0, dtype=np.float32).reshape(10, 10)
    g2 = g1.copy()
    gradclip.clip_grad_norm_(g1, MAX_NORM, norm_type=norm_type)
    gradclip.clip_grad_norm_([g2], MAX_NORM, norm_type=norm_type)
    np.testing.assert_array_equal(g1, g2)


def test_clip_grad_norm_exhausted_generator_warns() -> None:
    """pytorch/pytorch test/test_nn.py TestNNDeviceType.test_clip_grad_norm, "Should warning
    when parameters generator exhausted": exactly one UserWarning, nothing clipped. (The
    wording names gradclip's argument: test_difference_empty_generator_message.)"""
    grads = large_grads()
    gen = (g for g in grads)
    for _ in gen:
        pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        total = gradclip.clip_grad_norm_(gen, MAX_NORM)
    assert len(caught) == 1
    assert issubclass(caught[0].category, UserWarning)
    assert str(caught[0].message).endswith(
        "is an empty generator, no gradient clipping will occur."
    )
    assert total == 0.0
    np.testing.assert_array_equal(grads[0], large_grads()[0])


def test_difference_empty_generator_message() -> None:
    """Pins docs/differences.md "empty generator warning text": PyTorch's message names its
    argument `parameters`; gradclip's names its own, `grads`."""
    gen = (g for g in [np.ones(2)])
    list(gen)
    with pytest.warns(UserWarning, match="empty generator") as caught:
        gradclip.clip_grad_norm_(gen, 1.0)
    assert str(caught[0].message) == (
        "`grads` is an empty generator, no gradient clipping will occur."
    )


@pytest.mark.parametrize("norm_type", [2.0, INF, 1.0])
def test_cross_check_with_torch_if_installed(norm_type: float) -> None:
    """The large-gradient case of pytorch/pytorch test/test_nn.py
    TestNNDeviceType.test_clip_grad_norm run through torch itself when it is installed: the
    same norm and the same clipped values (float32 tolerance)."""
    torch = pytest.importorskip("torch", exc_type=ImportError)
    ours = large_grads()
    theirs = [torch.from_numpy(g.copy()) for g in large_grads()]
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in theirs]
    for p, t in zip(params, theirs, strict=True):
        p.grad = t
    t_total = float(torch.nn.utils.clip_grad_norm_(params, MAX_NORM, norm_type=norm_type))
    total = gradclip.clip_grad_norm_(ours, MAX_NORM, norm_type=norm_type)
    assert total == pytest.approx(t_total, rel=2e-6)
    for g, p in zip(ours, params, strict=True):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=2e-6, atol=1e-9)


# ------------------------------------------------------------------ test_clip_grad_value


@pytest.mark.parametrize("with_bias", [True, False], ids=["w_b", "w_None"])
def test_clip_grad_value(with_bias: bool) -> None:
    """pytorch/pytorch test/test_nn.py TestNNDeviceType.test_clip_grad_value: gradients
    arange(-50, 50)/5 (10x10) and 2*ones(10), or the weight and None; after clipping at 2.5
    every present gradient lies in [-2.5, 2.5] (here: exactly NumPy's clip)."""
    clip_value = 2.5
    w = np.arange(-50.0, 50.0, dtype=np.float32).reshape(10, 10) / np.float32(5)
    b = np.ones(10, np.float32) * np.float32(2)
    grads = [w, b if with_bias else None]
    expected = [np.clip(w, -clip_value, clip_value), np.clip(b, -clip_value, clip_value)]
    gradclip.clip_grad_value_(grads, clip_value)
    for g, e in zip(grads, expected, strict=True):
        if g is None:
            continue
        assert g.max() <= clip_value
        assert g.min() >= -clip_value
        np.testing.assert_array_equal(g, e)
    assert grads[1] is None or with_bias


def test_clip_grad_value_single_array_same_as_list() -> None:
    """pytorch/pytorch test/test_nn.py TestNNDeviceType.test_clip_grad_value, "Should accept a
    single Tensor as input"."""
    g1 = np.arange(-50.0, 50.0, dtype=np.float32).reshape(10, 10) / np.float32(5)
    g2 = g1.copy()
    gradclip.clip_grad_value_(g1, 2.5)
    gradclip.clip_grad_value_([g2], 2.5)
    np.testing.assert_array_equal(g1, g2)


# ------------------------------------------------ test_clip_grad_norm_error_if_nonfinite
# The peer's table: (grad_only_one_elem, prefix_finite_grad_param, scalars, norm types whose
# total norm is non-finite, norm types whose total norm is finite). The peer's norm types
# include 0 and negative p, which gradclip refuses (test_difference_norm_type_zero_and_
# negative); here each row keeps its positive p. For the 2e200 rows PyTorch's norm of orders
# 2 and 3.5 overflows where gradclip's does not (test_difference_overflow_*): those entries
# are moved to the finite side, as gradclip computes them.
NORMS_POS = [0.1, 1.0, 2.0, 3.5, INF]
TABLE = [
    # an infinite gradient
    (False, False, [INF, -INF], NORMS_POS, []),
    (False, True, [INF, -INF], NORMS_POS, []),
    (True, False, [INF, -INF], NORMS_POS, []),
    (True, True, [INF, -INF], NORMS_POS, []),
    # a NaN gradient
    (False, False, [NAN], NORMS_POS, []),
    (False, True, [NAN], NORMS_POS, []),
    (True, False, [NAN], NORMS_POS, []),
    (True, True, [NAN], NORMS_POS, []),
    # a gradient that never errors
    (False, False, [2e22, -2e22], [], NORMS_POS),
    (False, True, [2e22, -2e22], [], NORMS_POS),
    (True, False, [2e22, -2e22], [], NORMS_POS),
    (True, True, [2e22, -2e22], [], NORMS_POS),
    # PyTorch overflows for p = 3.5 and 2 here; gradclip's norm is finite for every p
    (False, False, [2e200, -2e200], [], NORMS_POS),
    (False, True, [2e200, -2e200], [], NORMS_POS),
    (True, False, [2e200, -2e200], [], NORMS_POS),
    (True, True, [2e200, -2e200], [], NORMS_POS),
]


def gen_grads(scalar: float, one_elem: bool, prefix: bool) -> list[np.ndarray]:
    """The peer's gen_parameters: the gradient of sum(param * scalar) for a float64 param of
    ten ones (or of param[1] * scalar only), after a one-element gradient of 1 if prefix."""
    g = np.zeros(10) if one_elem else np.full(10, scalar)
    if one_elem:
        g[1] = scalar
    return [np.ones(1), g] if prefix else [g]


def _cases() -> list[tuple[bool, bool, float, float, bool]]:
    out = []
    for one_elem, prefix, scalars, nonfinite, finite in TABLE:
        for p, s in product(nonfinite, scalars):
            out.append((one_elem, prefix, s, p, True))
        for p, s in product(finite, scalars):
            out.append((one_elem, prefix, s, p, False))
    return out


@pytest.mark.parametrize("error_if_nonfinite", [False, True])
@pytest.mark.parametrize(("one_elem", "prefix", "scalar", "p", "is_nonfinite"), _cases())
def test_clip_grad_norm_error_if_nonfinite(
    one_elem: bool, prefix: bool, scalar: float, p: float, is_nonfinite: bool,
    error_if_nonfinite: bool,
) -> None:  # fmt: skip
    """pytorch/pytorch test/test_nn.py TestNNDeviceType.test_clip_grad_norm_error_if_nonfinite:
    raise only when the total norm is non-finite and error_if_nonfinite=True, and then leave
    the gradients untouched; otherwise clip without raising. gradclip's error is a
    RuntimeError as PyTorch's is (its wording: test_difference_nonfinite_message)."""
    grads = gen_grads(scalar, one_elem, prefix)
    before = [g.copy() for g in grads]
    if is_nonfinite and error_if_nonfinite:
        with pytest.raises(RuntimeError, match=f"of order {p} is non-finite"):
            gradclip.clip_grad_norm_(grads, 1.0, norm_type=p, error_if_nonfinite=True)
        for g, b in zip(grads, before, strict=True):
            np.testing.assert_array_equal(g, b)
    else:
        total = gradclip.clip_grad_norm_(
            grads, 1.0, norm_type=p, error_if_nonfinite=error_if_nonfinite
        )
        assert math.isfinite(total) is not is_nonfinite


def test_difference_nonfinite_message() -> None:
    """Pins docs/differences.md "non-finite norm error text": PyTorch says "The total norm of
    order 2.0 for gradients from `parameters` is non-finite, so it cannot be clipped";
    gradclip raises NonFiniteNormError (a RuntimeError and FloatingPointError) worded for its
    own arguments and options."""
    g = [np.array([1.0, INF])]
    with pytest.raises(gradclip.NonFiniteNormError) as info:
        gradclip.clip_grad_norm_(g, 1.0, error_if_nonfinite=True)
    assert isinstance(info.value, RuntimeError)
    assert str(info.value).startswith(
        "The total norm of the gradients of order 2.0 is non-finite (inf), so it cannot be "
        "clipped; nothing was modified."
    )


@pytest.mark.parametrize("p", [2.0, 3.5])
@pytest.mark.parametrize(("one_elem", "prefix"), list(product([False, True], repeat=2)))
@pytest.mark.parametrize("scalar", [2e200, -2e200])
def test_difference_overflow_2e200_is_clipped(
    p: float, one_elem: bool, prefix: bool, scalar: float
) -> None:
    """Pins docs/differences.md "float64 gradients whose p-th powers overflow": in
    test_clip_grad_norm_error_if_nonfinite PyTorch's norm of 2e200 gradients of orders 2 and
    3.5 is inf (raised under error_if_nonfinite; otherwise every gradient becomes 0 or NaN).
    gradclip computes the true, finite norm, raises nothing and clips to max_norm."""
    grads = gen_grads(scalar, one_elem, prefix)
    before = [g.copy() for g in grads]
    flat = np.concatenate(before)
    big = np.abs(flat).max()
    true_norm = big * float(np.sum((np.abs(flat) / big) ** p)) ** (1.0 / p)
    total = gradclip.clip_grad_norm_(grads, 1.0, norm_type=p, error_if_nonfinite=True)
    assert math.isfinite(total)
    assert total == pytest.approx(true_norm, rel=1e-14)
    coef = 1.0 / (true_norm + 1e-6)
    for g, b in zip(grads, before, strict=True):
        np.testing.assert_allclose(g, b * coef, rtol=1e-14)
    assert norm(grads, p) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("p", [0, -0.1, -1, -2, -3.5])
def test_difference_norm_type_zero_and_negative(p: float) -> None:
    """Pins docs/differences.md "norm_type 0 and negative": the peer's table also runs
    norm_type 0 (count of non-zeros) and negative p, which torch.linalg.vector_norm computes;
    gradclip accepts p > 0 and inf only and raises ValueError before touching anything."""
    g = [np.full(10, 2.0)]
    with pytest.raises(ValueError, match="norm_type must be > 0 or inf"):
        gradclip.clip_grad_norm_(g, 1.0, norm_type=p)
    np.testing.assert_array_equal(g[0], np.full(10, 2.0))


def test_propagate_arithmetic_on_inf_gradient() -> None:
    """What the peer's error_if_nonfinite=False cases leave behind (PyTorch does not assert
    it; this is its arithmetic, coef = max_norm / (inf + eps) = 0): finite entries become 0,
    infinite ones NaN. gradclip's default nonfinite="propagate" is the same."""
    grads = gen_grads(INF, one_elem=True, prefix=True)
    total = gradclip.clip_grad_norm_(grads, 1.0)
    assert total == INF
    np.testing.assert_array_equal(grads[0], [0.0])
    expected = np.zeros(10)
    expected[1] = NAN
    np.testing.assert_array_equal(grads[1], expected)
