# Optax's published clipping expectations, translated to gradclip on NumPy.
#
# Peer: google-deepmind/optax at 2edbcbe2390da13983b92cbef94ac0460ecde1c5
#   optax/transforms/_clipping_test.py, class ClippingTest (clip, clip_by_block_rms,
#     clip_by_global_norm, adaptive_grad_clip, unitwise_norm, per_example_global_norm_clip,
#     per_example_layer_norm_clip), and the Examples in optax/transforms/_clipping.py's
#     docstrings of per_example_global_norm_clip / per_example_layer_norm_clip
#   optax/contrib/_privacy_test.py, class DifferentiallyPrivateAggregateTest
#
# Mapping: optax.clip(d) -> clip_grad_value_(d); clip_by_block_rms(t) -> clip_by_block_rms_;
# clip_by_global_norm(c) -> clip_grad_norm_(c); adaptive_grad_clip(c, eps, axis) ->
# adaptive_grad_clip_(..., layout="IO", axis=...) (Optax's JAX kernels are (in, out, ...));
# per_example_global_norm_clip -> clip_per_example_; per_example_layer_norm_clip ->
# clip_per_example_(per_layer=True), one call per layer where the layers' bounds differ;
# differentially_private_aggregate -> clip_per_example_(noise_multiplier=, rng=) / batch.
# Optax's coefficients have no eps: eps=0.0 reproduces them; the default eps is pinned in the
# test_difference_* tests. JAX's default dtype, float32, is used; Optax's integer example
# inputs are given as floats (test_difference_integer_gradients_refused).
# Needs the API being added on main: clip_by_block_rms_, adaptive_grad_clip_(axis=), the 5-D
# default axes, clip_per_example_(noise_multiplier=, rng=).
from __future__ import annotations

import math

import numpy as np
import pytest

import gradclip

F32 = np.float32
STEPS = 50


def per_step_updates() -> list[np.ndarray]:
    return [np.array([500.0, 5.0], F32), np.array([300.0, 3.0], F32)]


def init_params() -> list[np.ndarray]:
    return [np.array([1.0, 2.0], F32), np.array([3.0, 4.0], F32)]


def almost_equal(a: float, b: float, places: int = 7) -> None:
    """unittest's assertAlmostEqual: round(a - b, places) == 0."""
    assert round(float(a) - float(b), places) == 0, (a, b, places)


def trees_close(actual: list[np.ndarray], desired: list[np.ndarray], rtol: float = 1e-6) -> None:
    """optax._src.test_utils.assert_trees_all_close defaults: rtol 1e-6, atol 0."""
    assert len(actual) == len(desired)
    for a, d in zip(actual, desired, strict=True):
        np.testing.assert_allclose(a, d, rtol=rtol, atol=0.0)


def rms(t: np.ndarray) -> float:
    return float(np.sqrt(np.mean(t.astype(np.float64) ** 2)))


def tree_norm(ts: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in ts))


def copies(ts: list[np.ndarray]) -> list[np.ndarray]:
    return [t.copy() for t in ts]


# -------------------------------------------------------------------------------- clip


def test_clip() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_clip: clipping at 1e6 changes
    nothing; clipping at 1 makes every update exactly 1."""
    u = per_step_updates()
    gradclip.clip_grad_value_(u, 1e6)
    trees_close(u, per_step_updates())
    gradclip.clip_grad_value_(u, 1.0)
    for t in u:
        np.testing.assert_array_equal(t, np.ones_like(t))


# ------------------------------------------------------------------- clip_by_block_rms


def test_clip_by_block_rms() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_clip_by_block_rms: for thresholds
    1/i, i = 1..50, re-clipping the previous result gives each array an RMS of 1/i (places=6),
    equal (rtol 1e-6) to clipping the original updates once. Optax's formula,
    u / max(1, rms(u) / threshold), has no eps: eps=0.0. Needs clip_by_block_rms_."""
    updates = per_step_updates()
    for i in range(1, STEPS + 1):
        gradclip.clip_by_block_rms_(updates, 1.0 / i, eps=0.0)
        almost_equal(rms(updates[0]), 1.0 / i, places=6)
        almost_equal(rms(updates[1]), 1.0 / i, places=6)
        once = per_step_updates()
        gradclip.clip_by_block_rms_(once, 1.0 / i, eps=0.0)
        trees_close(updates, once)


def test_difference_eps_block_rms_iterated() -> None:
    """Pins docs/differences.md "eps in the coefficient" for Optax: with the default eps
    (1e-6, added to the RMS) re-clipping an array whose RMS already equals the threshold
    scales it again by t / (t + eps), so after 50 thresholds 1/i the iterated RMS is off by
    about 1e-6, which Optax's places=6 check sees."""
    updates = per_step_updates()
    worst = 0.0
    for i in range(1, STEPS + 1):
        gradclip.clip_by_block_rms_(updates, 1.0 / i)
        worst = max(worst, abs(rms(updates[0]) - 1.0 / i))
    assert worst > 5e-7  # visible at places=6
    assert worst < 2e-6


# ----------------------------------------------------------------- clip_by_global_norm


def test_clip_by_global_norm() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_clip_by_global_norm: for
    max_norm = 1/i, i = 1..50, the re-clipped updates have global norm 1/i (places=6) and
    equal (rtol 1e-6) the original clipped once. Optax: t / ||u|| * max_norm unless
    ||u|| < max_norm, no eps: eps=0.0."""
    updates = per_step_updates()
    for i in range(1, STEPS + 1):
        gradclip.clip_grad_norm_(updates, 1.0 / i, eps=0.0)
        almost_equal(tree_norm(updates), 1.0 / i, places=6)
        once = per_step_updates()
        gradclip.clip_grad_norm_(once, 1.0 / i, eps=0.0)
        trees_close(updates, once)


def test_difference_eps_global_norm_iterated() -> None:
    """Pins docs/differences.md "eps in the coefficient" for Optax's test_clip_by_global_norm:
    with the default eps a norm equal to max_norm is still scaled by c / (c + 1e-6); iterated
    over the 50 bounds the norm drifts by about 1e-6, visible at places=6."""
    updates = per_step_updates()
    worst = 0.0
    for i in range(1, STEPS + 1):
        gradclip.clip_grad_norm_(updates, 1.0 / i)
        worst = max(worst, abs(tree_norm(updates) - 1.0 / i))
    assert worst > 5e-7
    assert worst < 2e-6


# ----------------------------------------------------------------- adaptive_grad_clip


def unit_norms(x: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    return np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=axis, keepdims=True))


def optax_default_axes(ndim: int) -> tuple[int, ...]:
    """Optax's unitwise_norm defaults (for arrays with more than one axis longer than 1)."""
    return {1: (0,), 2: (0,), 3: (0,), 4: (0, 1, 2), 5: (0, 1, 2, 3)}[ndim]


def test_adaptive_grad_clip_with_axis() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_adaptive_grad_clip_with_axis: a
    Conv3D kernel (2, 2, 2, 3, 4) with gradient 2 and param 1, units over axes (0, 1, 2),
    clipping 0.5; a (5, 6) linear weight with gradient 3, the default units; each unit's
    clipped norm <= 0.5 * its param norm + 1e-6, shapes kept; a small gradient 0.1 with
    clipping 2 is unchanged (rtol 1e-6). Needs adaptive_grad_clip_(axis=)."""
    conv_g = np.full((2, 2, 2, 3, 4), 2.0, F32)
    conv_p = np.ones((2, 2, 2, 3, 4), F32)
    lin_g = np.full((5, 6), 3.0, F32)
    lin_p = np.ones((5, 6), F32)
    gradclip.adaptive_grad_clip_([conv_g], [conv_p], clipping=0.5, layout="IO", axis=(0, 1, 2))
    gradclip.adaptive_grad_clip_([lin_g], [lin_p], clipping=0.5, layout="IO")
    assert conv_g.shape == (2, 2, 2, 3, 4) and lin_g.shape == (5, 6)
    ax = (0, 1, 2)
    assert np.all(unit_norms(conv_g, ax) <= 0.5 * unit_norms(conv_p, ax) + 1e-6)
    assert np.all(unit_norms(lin_g, (0,)) <= 0.5 * unit_norms(lin_p, (0,)) + 1e-6)
    small = np.full((2, 2, 2, 3, 4), 0.1, F32)
    gradclip.adaptive_grad_clip_([small], [np.ones_like(small)], clipping=2.0, layout="IO", axis=ax)
    np.testing.assert_allclose(small, np.full((2, 2, 2, 3, 4), 0.1, F32), rtol=1e-6)


def test_adaptive_grad_clip_default_axis_conv3d() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_adaptive_grad_clip_default_axis_
    conv3d: for a 5-D kernel the default units are over axes (0, 1, 2, 3) (the same result as
    giving them), and each clipped unit norm <= 0.5 * param norm + 1e-6. Needs the 5-D default
    being added on main."""
    g_default = np.full((2, 2, 2, 3, 4), 2.0, F32)
    g_explicit = g_default.copy()
    p = np.ones((2, 2, 2, 3, 4), F32)
    gradclip.adaptive_grad_clip_([g_default], [p], clipping=0.5, layout="IO")
    gradclip.adaptive_grad_clip_([g_explicit], [p], clipping=0.5, layout="IO", axis=(0, 1, 2, 3))
    ax = (0, 1, 2, 3)
    np.testing.assert_allclose(unit_norms(g_default, ax), unit_norms(g_explicit, ax), rtol=1e-6)
    assert np.all(unit_norms(g_default, ax) <= 0.5 * unit_norms(p, ax) + 1e-6)


@pytest.mark.parametrize(
    "axis", [(0, 1, 2), (3, 4), -1, (0, 1, 2, 3)], ids=["spatial", "channels", "last", "conv3d"]
)
def test_unitwise_norm_with_axis(axis: int | tuple[int, ...]) -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_unitwise_norm_with_axis, the
    norms: x = arange(96).reshape(2, 2, 2, 3, 4) (float32) over the axes choices. gradclip has
    no unitwise_norm; clip_by_norm_ returns the per-unit norms (here with a bound so large that
    nothing is written), which must be Optax's (its broadcast back to x.shape: not applicable)."""
    x = np.arange(2 * 2 * 2 * 3 * 4, dtype=F32).reshape(2, 2, 2, 3, 4)
    before = x.copy()
    norms = gradclip.clip_by_norm_(x, 1e30, axis=axis)
    expected = np.sqrt(np.sum(before.astype(np.float64) ** 2, axis=axis))
    np.testing.assert_allclose(norms, expected, rtol=1e-12)
    np.testing.assert_array_equal(x, before)


def test_unitwise_norm_default_axes_5d() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_unitwise_norm_with_axis, the 5-D
    default: a 5-D array's default units equal axes (0, 1, 2, 3). Through
    adaptive_grad_clip_, which uses the units."""
    x = np.arange(96, dtype=F32).reshape(2, 2, 2, 3, 4) + 1
    p = np.full_like(x, 0.01)
    a, b = x.copy(), x.copy()
    gradclip.adaptive_grad_clip_(a, p, clipping=0.5, layout="IO")
    gradclip.adaptive_grad_clip_(b, p, clipping=0.5, layout="IO", axis=(0, 1, 2, 3))
    np.testing.assert_array_equal(a, b)


def test_unitwise_norm_6d_needs_axis() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_unitwise_norm_with_axis, the error
    case: a 6-D array has no default units (ValueError) but works with axis=(0, 1, 2).
    Through adaptive_grad_clip_, which uses the units."""
    g6 = np.ones((2,) * 6, F32)
    p6 = np.ones((2,) * 6, F32)
    with pytest.raises(ValueError):
        gradclip.adaptive_grad_clip_(g6.copy(), p6, clipping=0.5, layout="IO")
    gradclip.adaptive_grad_clip_(g6, p6, clipping=0.5, layout="IO", axis=(0, 1, 2))
    assert g6.shape == (2,) * 6
    # units of 8 ones: grad norm sqrt(8) against the bound 0.5 * sqrt(8): halved
    np.testing.assert_allclose(g6, 0.5, rtol=1e-6)


def test_adaptive_grad_clip() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_adaptive_grad_clip: for clipping
    1/i, i = 1..50, re-clipping the previous result keeps every unit within clipping * param
    norm (< 1e-6 over), and equals clipping the original once (rtol 1e-6); then a 2x2 gradient
    [[1, 2], [3, 4]] with params of ones and clipping 1 (default units: the columns)."""
    updates = per_step_updates()
    params = init_params()
    for i in range(1, STEPS + 1):
        c = 1.0 / i
        gradclip.adaptive_grad_clip_(updates, params, clipping=c, layout="IO")
        for u, p in zip(updates, params, strict=True):
            assert np.linalg.norm(u.astype(np.float64)) - c * np.linalg.norm(p) < 1e-6
        once = per_step_updates()
        gradclip.adaptive_grad_clip_(once, params, clipping=c, layout="IO")
        trees_close(updates, once)
    g = np.array([[1.0, 2.0], [3.0, 4.0]], F32)
    p = np.ones_like(g)
    gradclip.adaptive_grad_clip_([g], [p], clipping=1.0, layout="IO")
    assert np.all(unit_norms(g, (0,)) <= 1.0 * unit_norms(p, (0,)) + 1e-6)
    # the columns, [1, 3] and [2, 4], are both longer than sqrt(2): each scaled to sqrt(2)
    np.testing.assert_allclose(unit_norms(g, (0,)).ravel(), [math.sqrt(2)] * 2, rtol=1e-6)


# ------------------------------------------------------------ per-example clipping


def test_per_example_global_norm_clip() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_per_example_global_norm_clip: 4
    examples over two arrays, l2_norm_clip 1: the sums of the clipped examples (atol 1e-6)
    and 2 examples clipped (norms sqrt(50), sqrt(70); 0.5 and 0 are kept)."""
    grads = [
        np.array([[0.0, -0.5], [3.0, 4.0], [5.0, 6.0], [0.0, 0.0]], F32),
        np.array([[0.0], [5.0], [-3.0], [0.0]], F32),  # an int32 array in the peer
    ]
    answer = [
        np.array([0.0, -0.5])
        + np.array([3.0, 4.0]) / math.sqrt(50)
        + np.array([5.0, 6.0]) / math.sqrt(70),
        np.array([0.0]) + np.array([5.0]) / math.sqrt(50) + np.array([-3.0]) / math.sqrt(70),
    ]
    sums, n_clipped = gradclip.clip_per_example_(grads, 1.0, eps=0.0)
    for actual, expected in zip(sums, answer, strict=True):
        np.testing.assert_allclose(actual, expected, atol=1e-6)
    assert n_clipped == 2


EXAMPLE = [[0.0, 0.0, 0.0], [0.0, 3.0, 4.0], [4.0, 0.0, 3.0], [3.0, 4.0, 0.0]]


def test_per_example_global_norm_clip_docstring_example() -> None:
    """optax/transforms/_clipping.py per_example_global_norm_clip, Examples: the rows
    [0, 0, 0], [0, 3, 4], [4, 0, 3], [3, 4, 0] clipped to 1.25 sum to [1.75, 1.75, 1.75] with 3
    clipped. (Its l2_norm_clip = inf and = 0.0 lines: test_difference_bound_inf_and_zero.)"""
    grads = [np.array(EXAMPLE, F32)]
    sums, n = gradclip.clip_per_example_(grads, 1.25, eps=0.0)
    np.testing.assert_allclose(sums[0], [1.75, 1.75, 1.75], rtol=1e-7)
    assert n == 3


def test_per_example_layer_norm_clip_docstring_example() -> None:
    """optax/transforms/_clipping.py per_example_layer_norm_clip, Examples: with one layer the
    same as the global version: [1.75] * 3 and [3] clipped for 1.25."""
    grads = [np.array(EXAMPLE, F32)]
    sums, n = gradclip.clip_per_example_(grads, 1.25, per_layer=True, eps=0.0)
    np.testing.assert_allclose(sums[0], [1.75, 1.75, 1.75], rtol=1e-7)
    np.testing.assert_array_equal(n, [3])


def test_difference_bound_inf_and_zero() -> None:
    """Pins docs/differences.md "bound inf or 0": Optax's docstring examples call
    per_example_global_norm_clip / per_example_layer_norm_clip with l2_norm_clip = inf
    (nothing clipped, sums [7, 7, 7], 0 clipped) and 0.0 (all zero, 3 clipped: the zero row
    has coefficient nan -> 1). gradclip's max_norm must be finite and > 0, so both are a
    ValueError before anything is written; the same answers come from a huge bound and from
    zeroing the arrays."""
    grads = [np.array(EXAMPLE, F32)]
    for bad in (math.inf, 0.0):
        with pytest.raises(ValueError, match="max_norm"):
            gradclip.clip_per_example_(grads, bad)
    np.testing.assert_array_equal(grads[0], EXAMPLE)
    sums, n = gradclip.clip_per_example_(grads, float(np.finfo(np.float64).max))
    np.testing.assert_array_equal(sums[0], [7.0, 7.0, 7.0])
    assert n == 0


def layer_grads() -> list[np.ndarray]:
    # a (1,)-parameter layer and a (3, 3, 2) one, batch of 4
    return [np.array([[0.5], [1.5], [-2.0], [3.0]], F32), np.ones((4, 3, 3, 2), F32)]


def optax_layer_bounds(global_clip: float, grads: list[np.ndarray], uniform: bool) -> list[float]:
    """Optax's per-layer bounds: C / sqrt(K) (uniform) or C * sqrt(D_i / D)."""
    if uniform:
        return [global_clip * (1.0 / len(grads)) ** 0.5] * len(grads)
    sizes = [g[0].size for g in grads]
    return [global_clip * (s / sum(sizes)) ** 0.5 for s in sizes]


def test_per_example_layer_norm_clip_uniform() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_per_example_layer_norm_clip, the
    "Uniform Variant": global bound sqrt(2) over 2 layers is 1 per layer; sums [1.5] and
    4 / sqrt(18) everywhere (places=4); 3 and 4 examples clipped. One bound for every layer:
    clip_per_example_(per_layer=True)."""
    grads = layer_grads()
    (bound,) = set(optax_layer_bounds(math.sqrt(2), grads, uniform=True))
    sums, n = gradclip.clip_per_example_(grads, bound, per_layer=True, eps=0.0)
    almost_equal(sums[0][0], 1.5)
    for element in sums[1].ravel():
        almost_equal(element, 4 / math.sqrt(18), places=4)
    assert n[0] == 3
    assert n[1] == 4


def test_per_example_layer_norm_clip_scaled() -> None:
    """optax/transforms/_clipping_test.py ClippingTest.test_per_example_layer_norm_clip, the
    "Scaled Variant": global bound sqrt(19), per-layer bounds 1 and sqrt(18) (Optax's
    C * sqrt(D_i / D)); sums [1.5] and 4.0 everywhere (places=7); 3 and 0 clipped (the second
    layer's norms equal its bound). The bounds differ by layer, so each layer is its own
    clip_per_example_ call."""
    grads = layer_grads()
    bounds = optax_layer_bounds(math.sqrt(19), grads, uniform=False)
    sums, n = [], []
    for g, c in zip(grads, bounds, strict=True):
        (s,), k = gradclip.clip_per_example_([g], c, eps=0.0)
        sums.append(s)
        n.append(k)
    almost_equal(sums[0][0], 1.5)
    for element in sums[1].ravel():
        almost_equal(element, 4.0)
    assert n == [3, 0]


def test_difference_eps_norm_equal_to_bound_is_clipped() -> None:
    """Pins docs/differences.md "eps in the coefficient": in the "Scaled Variant" the second
    layer's per-example norms equal the bound sqrt(18). With the default eps = 1e-6 gradclip's
    coefficient is sqrt(18) / (sqrt(18) + 1e-6) < 1: all 4 examples count as clipped (Optax:
    0) and the sums are 4 * (1 - 2.4e-7), which fails Optax's places=7 check on 4.0."""
    grads = layer_grads()
    bound = optax_layer_bounds(math.sqrt(19), grads, uniform=False)[1]
    (s,), k = gradclip.clip_per_example_([grads[1]], bound)
    assert k == 4
    coef = bound / (math.sqrt(18) + 1e-6)
    np.testing.assert_allclose(s, np.float32(4 * coef), rtol=1e-7)
    assert round(float(s[0, 0, 0]) - 4.0, 7) != 0


def test_difference_integer_gradients_refused() -> None:
    """Pins docs/differences.md "integer gradients": Optax's per-example tests and docstring
    examples pass integer arrays (jnp.array of ints is int32), which JAX promotes. gradclip
    refuses integer gradients with a TypeError naming the position, before writing."""
    grads = [np.array([[0, 0, 0], [0, 3, 4]], np.int32)]
    with pytest.raises(TypeError, match=r"grads\[0\].*int32"):
        gradclip.clip_per_example_(grads, 1.25)


# ---------------------------------------------- contrib/_privacy_test.py (DP aggregate)
BATCH = 8
PARAM_SHAPES = {"key_a": ((2, 3, 4), ()), "key_b": (6, 7)}


def per_eg_grads() -> dict:
    """Example i's gradients are full of i (0 included, so no division by 0 may happen)."""
    a = np.arange(BATCH, dtype=F32)

    def make(shape: tuple[int, ...]) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(a * np.ones((*shape, BATCH), F32), -1, 0))

    return {"key_a": (make((2, 3, 4)), make(())), "key_b": make((6, 7))}


def leaf_shapes() -> list[tuple[int, ...]]:
    return [(2, 3, 4), (), (6, 7)]  # the pytree's leaves, depth first


def leaves(tree: object) -> list[np.ndarray]:
    """The pytree's leaves in jax.tree.flatten order (dict keys sorted, depth first), as
    differentially_private_aggregate flattens its updates before clipping."""
    if isinstance(tree, dict):
        return [leaf for k in sorted(tree) for leaf in leaves(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [leaf for t in tree for leaf in leaves(t)]
    return [tree]  # type: ignore[list-item]


def dp_aggregate(grads: dict, clip: float, noise: float, rng: np.random.Generator | None):
    """differentially_private_aggregate's update: (sum of clipped examples + noise) / batch."""
    sums, _ = gradclip.clip_per_example_(
        leaves(grads), clip, eps=0.0, noise_multiplier=noise, rng=rng
    )
    return [s / BATCH for s in sums]


def test_no_privacy() -> None:
    """optax/contrib/_privacy_test.py DifferentiallyPrivateAggregateTest.test_no_privacy:
    l2_norm_clip = float32 max and noise 0 give the mean gradient (3.5 everywhere), on each
    of 3 steps. Needs clip_per_example_(noise_multiplier=)."""
    rng = np.random.default_rng(0)
    for _ in range(3):
        updates = dp_aggregate(per_eg_grads(), float(np.finfo(F32).max), 0.0, rng)
        for u, shape in zip(updates, leaf_shapes(), strict=True):
            assert u.shape == shape
            np.testing.assert_allclose(u, np.full(shape, 3.5), rtol=1e-6)


@pytest.mark.parametrize("l2_norm_clip", [0.5, 10.0, 20.0, 40.0, 80.0])
def test_clipping_norm(l2_norm_clip: float) -> None:
    """optax/contrib/_privacy_test.py DifferentiallyPrivateAggregateTest.test_clipping_norm:
    example i's global norm is i * sqrt(67); the update is mean(i / max(norm_i / C, 1))
    everywhere (rtol 2e-7), on each of 3 steps. Needs clip_per_example_(noise_multiplier=)."""
    norms = np.arange(BATCH) * math.sqrt(2 * 3 * 4 + 1 + 6 * 7)
    divisors = np.maximum(norms / l2_norm_clip, 1.0)
    expected_val = np.mean(np.arange(BATCH) / divisors)
    rng = np.random.default_rng(42)
    for _ in range(3):
        updates = dp_aggregate(per_eg_grads(), l2_norm_clip, 0.0, rng)
        for u, shape in zip(updates, leaf_shapes(), strict=True):
            np.testing.assert_allclose(u, np.full(shape, expected_val), rtol=2e-7)


@pytest.mark.parametrize(
    ("l2_norm_clip", "noise_multiplier"), [(3.0, 2.0), (1.0, 5.0), (100.0, 4.0), (1.0, 90.0)]
)
def test_noise_multiplier(l2_norm_clip: float, noise_multiplier: float) -> None:
    """optax/contrib/_privacy_test.py DifferentiallyPrivateAggregateTest.test_noise_multiplier:
    a batch of one (1, 100, 100) example of ones; the standard deviation of the update is
    l2_norm_clip * noise_multiplier (atol 10 %), on each of 3 steps. Needs
    clip_per_example_(noise_multiplier=, rng=)."""
    expected_std = l2_norm_clip * noise_multiplier
    rng = np.random.default_rng(1337)
    for _ in range(3):
        grads = [np.ones((1, 100, 100), F32)]
        sums, _ = gradclip.clip_per_example_(
            grads, l2_norm_clip, eps=0.0, noise_multiplier=noise_multiplier, rng=rng
        )
        update = sums[0] / 1
        assert abs(float(np.std(update.astype(np.float64))) - expected_std) <= 0.1 * expected_std


def test_aggregated_updates_as_input_fails() -> None:
    """optax/contrib/_privacy_test.py DifferentiallyPrivateAggregateTest.test_aggregated_
    updates_as_input_fails: the mean gradients (no batch axis: shapes (2, 3, 4), () and
    (6, 7)) are a ValueError, not per-example gradients."""
    mean_grads = {
        "key_a": (np.full((2, 3, 4), 3.5, F32), np.array(3.5, F32)),
        "key_b": np.full((6, 7), 3.5, F32),
    }
    with pytest.raises(ValueError):
        gradclip.clip_per_example_(leaves(mean_grads), 0.1)


def test_pytree_of_per_example_grads() -> None:
    """optax/contrib/_privacy_test.py DifferentiallyPrivateAggregateTest: Optax takes the
    per-example gradients as a pytree ({"key_a": (a, b), "key_b": c}); gradclip takes the same
    pytrees (leaves depth first, dicts in iteration order). The same numbers as
    test_clipping_norm with C = 10, passing the dict itself."""
    norms = np.arange(BATCH) * math.sqrt(67)
    expected_val = np.mean(np.arange(BATCH) / np.maximum(norms / 10.0, 1.0))
    grads = per_eg_grads()
    sums, _ = gradclip.clip_per_example_(grads, 10.0, eps=0.0)
    assert set(sums) == set(grads)  # the sums come in the input's structure
    for s, shape in zip(leaves(sums), leaf_shapes(), strict=True):
        np.testing.assert_allclose(s / BATCH, np.full(shape, expected_val), rtol=2e-7)


def test_dpsgd_with_no_privacy_is_sgd() -> None:
    """optax/contrib/_privacy_test.py DifferentiallyPrivateAggregateTest.test_dpsgd_accepts_key
    (and _seed), the numbers: dpsgd(learning_rate=1, l2_norm_clip=float32 max,
    noise_multiplier=0) updates by -mean gradient. (Optax's key/seed arguments and their
    DeprecationWarning: not applicable; gradclip takes a NumPy Generator, rng=.) Needs
    clip_per_example_(noise_multiplier=, rng=)."""
    for rng in (np.random.default_rng(0), np.random.default_rng(123)):
        updates = [-u for u in dp_aggregate(per_eg_grads(), float(np.finfo(F32).max), 0.0, rng)]
        for u, shape in zip(updates, leaf_shapes(), strict=True):
            np.testing.assert_allclose(u, np.full(shape, -3.5), rtol=1e-6)


def test_difference_dict_leaf_order() -> None:
    """docs/differences.md, Optax (JAX) leaf order: jax.tree.flatten visits a dict's keys
    sorted; gradclip visits them in iteration order (the order the user wrote)."""
    tree = {"z": np.full(4, 1.0, F32), "a": np.full(1, 3.0, F32)}
    assert gradclip.tensor_norms(tree).tolist() == [2.0, 3.0]  # JAX's order: [3.0, 2.0]
    assert [float(np.linalg.norm(x)) for x in leaves(tree)] == [3.0, 2.0]
