# Covers: the clipping rules added from the peers: asymmetric and one-sided value
# clipping, Optax's clip_by_block_rms, clip_by_norm_ with an array of bounds, AGC with timm's
# "OI" rule, explicit unit axes and norm_type, AGC skipping None gradients, DP-SGD noise, and
# PyTorch's "inf" / "fro" spellings of norm_type. Each is checked against gradclip.reference
# on every CPU target and dtype, and against the rule written out in NumPy here.
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from gc_helpers import (
    DTYPE_PARAMS,
    LAYOUTS,
    assert_norms_close,
    assert_same_values,
    assert_ulp_close,
    configured,
    dtype_of,
    each_config,
    expected_scaled,
    make_array,
    random_values,
    snapshot,
    ulps_for,
)

import gradclip
from gradclip import reference as ref

# ---------------------------------------------------------------- value clipping, min / max

BOUNDS = [
    (-0.5, 2.0),
    (0.0, None),
    (None, 0.25),
    (-1e-3, -1e-4),
    (1.0, 1.0),
    (-math.inf, 0.5),
    (0.3, math.inf),
    (-0.1, 0.7000000000000001),  # rounds differently per dtype
]


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("lo", "hi"), BOUNDS)
def test_value_min_max_matches_reference(dtype_name: str, layout: str, lo: Any, hi: Any) -> None:
    dtype = dtype_of(dtype_name)
    values = random_values(7, (5, 9), scale=1.0)
    values[0, 0] = math.nan
    values[1, 1] = -math.inf
    values[2, 2] = math.inf
    for target, threads in each_config():
        a = make_array(values, dtype, layout)
        b = make_array(values, dtype, layout)
        with configured(target, threads):
            gradclip.clip_grad_value_([a], min=lo, max=hi)
        ref.clip_grad_value_([b], min=lo, max=hi)
        assert_same_values(a, b, f"{target}/{threads}")
        # the rule itself: every non-NaN result within the bounds rounded to the dtype
        wide = a.astype(np.float64)
        ok = ~np.isnan(wide)
        if lo is not None:
            low = float(np.asarray(lo).astype(dtype).astype(np.float64))
            assert (wide[ok] >= low).all()
        if hi is not None:
            high = float(np.asarray(hi).astype(dtype).astype(np.float64))
            assert (wide[ok] <= high).all()
        assert np.isnan(wide[0, 0])


def test_value_one_sided_leaves_the_other_side() -> None:
    g = np.array([-5.0, -0.5, 0.5, 5.0])
    gradclip.clip_grad_value_(g, max=1.0)
    assert g.tolist() == [-5.0, -0.5, 0.5, 1.0]
    gradclip.clip_grad_value_(g, min=0.0)
    assert g.tolist() == [0.0, 0.0, 0.5, 1.0]


def test_value_clip_value_equals_symmetric_min_max() -> None:
    v = random_values(3, (100,))
    a, b = v.copy(), v.copy()
    gradclip.clip_grad_value_(a, 0.3)
    gradclip.clip_grad_value_(b, min=-0.3, max=0.3)
    assert_same_values(a, b)


def test_gradient_set_value_min_max() -> None:
    a = random_values(4, (50,)).astype(np.float32)
    b = a.copy()
    gradclip.GradientSet([a]).clip_value_(min=-0.1, max=0.2)
    ref.GradientSet([b]).clip_value_(min=-0.1, max=0.2)
    assert_same_values(a, b)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({}, TypeError),
        ({"clip_value": 1.0, "min": 0.0}, TypeError),
        ({"clip_value": 1.0, "max": 2.0}, TypeError),
        ({"min": 1.0, "max": 0.0}, ValueError),
        ({"min": math.nan}, ValueError),
        ({"max": math.nan}, ValueError),
        ({"min": "0"}, TypeError),
    ],
)
@pytest.mark.parametrize("module", [gradclip, ref], ids=["compiled", "reference"])
def test_value_bad_bounds(module: Any, kwargs: dict[str, Any], exc: type) -> None:
    g = np.ones(4)
    with pytest.raises(exc):
        module.clip_grad_value_(g, **kwargs)
    assert (g == 1.0).all()


# ---------------------------------------------------------------- clip_by_block_rms_


def optax_block_rms(u: np.ndarray, threshold: float) -> np.ndarray:
    """Optax's clip_by_block_rms, written out: u / max(1, sqrt(mean(u^2)) / threshold)."""
    u = u.astype(np.float64)
    return u / max(1.0, math.sqrt(float(np.mean(u * u))) / threshold)


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_block_rms_matches_reference_and_optax(dtype_name: str) -> None:
    dtype = dtype_of(dtype_name)
    shapes = [(3, 4), (17,), (2, 3, 5), (1,), (0,)]
    for target, threads in each_config():
        for threshold in (1e-3, 0.5, 1e3):
            grads = [random_values(10 + i, s).astype(dtype) for i, s in enumerate(shapes)]
            twins = [g.copy() for g in grads]
            before = [g.astype(np.float64) for g in grads]
            with configured(target, threads):
                rms = gradclip.clip_by_block_rms_([*grads, None], threshold, eps=0.0)
            rms_ref = ref.clip_by_block_rms_([*twins, None], threshold, eps=0.0)
            assert_norms_close(rms, rms_ref, 2.0, f"{target}/{threads}")
            assert rms[-1] == 0.0 and rms[-2] == 0.0  # None and the empty array
            for i, (g, t, b) in enumerate(zip(grads, twins, before, strict=True)):
                # exactly the documented write for the RMS it reports; the reference within
                # an ulp (its RMS may differ in the last bit of a float64)
                orig = b.astype(dtype)
                assert_same_values(g, expected_scaled(orig, threshold, float(rms[i]), eps=0.0))
                assert_ulp_close(g, t, dtype, ulps_for(dtype), f"{target}/{threads} {g.shape}")
                if b.size:
                    tol = 4 * float(np.finfo(np.float16).eps) if g.itemsize == 2 else 1e-6
                    np.testing.assert_allclose(
                        g.astype(np.float64), optax_block_rms(b, threshold), rtol=tol, atol=0
                    )


def test_block_rms_eps_and_bound() -> None:
    g = np.full(16, 3.0)  # rms 3
    rms = gradclip.clip_by_block_rms_(g, 1.0)  # default eps=1e-6
    assert rms.tolist() == [3.0]
    np.testing.assert_allclose(g, 3.0 * (1.0 / (3.0 + 1e-6)), rtol=1e-15)
    untouched = np.full(4, 0.5)
    gradclip.clip_by_block_rms_(untouched, 1.0)
    assert (untouched == 0.5).all()


def test_block_rms_nonfinite_follows_optax_arithmetic() -> None:
    g = np.array([1.0, np.inf, 2.0])
    gradclip.clip_by_block_rms_(g, 1.0, eps=0.0)
    # rms is inf: u / inf, so finite entries become 0 and the infinite one NaN
    assert g[0] == 0.0 and g[2] == 0.0 and np.isnan(g[1])
    h = np.array([1.0, np.nan])
    gradclip.clip_by_block_rms_(h, 1.0, eps=0.0)
    assert np.isnan(h).all()


@pytest.mark.parametrize("module", [gradclip, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize(
    ("threshold", "exc"),
    [(0.0, ValueError), (-1.0, ValueError), (math.inf, ValueError), ("1", TypeError)],
)
def test_block_rms_bad_threshold(module: Any, threshold: Any, exc: type) -> None:
    g = np.ones(3)
    with pytest.raises(exc, match="threshold"):
        module.clip_by_block_rms_(g, threshold)
    assert (g == 1.0).all()


# ---------------------------------------------------------------- clip_by_norm_, array bounds

ARRAY_BOUNDS = [
    ((6, 5), 1, lambda: np.linspace(0.1, 3.0, 6)),
    ((6, 5), 1, lambda: np.linspace(0.1, 3.0, 6)[:, None]),  # keepdims form
    ((6, 5), 0, lambda: np.linspace(0.1, 3.0, 5)),
    ((4, 3, 2), (1, 2), lambda: np.array([0.5, 1.0, 2.0, 4.0])),
    ((4, 3, 2), 2, lambda: np.array([[0.1], [1.0], [10.0]]).T.repeat(4, 0)),  # shape (4, 3)
    ((4, 3, 2), 2, lambda: np.array([0.2, 0.4, 0.8])),  # broadcasts along the batch
    ((4, 3, 2), None, lambda: np.array(0.7)),
]


@pytest.mark.parametrize(("shape", "axis", "bounds"), ARRAY_BOUNDS)
def test_clip_by_norm_array_bounds(shape: Any, axis: Any, bounds: Any) -> None:
    m = bounds()
    for target, threads in each_config():
        x = random_values(5, shape, scale=1.0)
        y = x.copy()
        with configured(target, threads):
            norms = gradclip.clip_by_norm_(x, m, axis=axis, eps=0.0)
        norms_ref = ref.clip_by_norm_(y, m, axis=axis, eps=0.0)
        np.testing.assert_array_equal(norms, norms_ref)
        assert_same_values(x, y)
        # the rule: each slice's norm after clipping is min(its norm, its bound)
        kept = np.linalg.vector_norm(x, axis=axis)
        full = np.broadcast_to(
            m if np.ndim(m) != len(shape) else np.squeeze(m, axis=axis), np.shape(norms)
        )
        np.testing.assert_allclose(kept, np.minimum(norms, full), rtol=1e-14)


def test_clip_by_norm_array_bounds_like_a_loop() -> None:
    x = random_values(9, (8, 3), scale=1.0)
    m = np.linspace(0.2, 1.6, 8)
    rows = [x[i].copy() for i in range(8)]
    gradclip.clip_by_norm_(x, m, axis=1)
    for i, r in enumerate(rows):
        gradclip.clip_by_norm_(r, float(m[i]))
        assert_same_values(x[i], r)


@pytest.mark.parametrize("module", [gradclip, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize(
    ("bounds", "exc"),
    [
        (np.ones(3), ValueError),  # the norms have shape (2,)
        (np.ones((2, 3)), ValueError),  # keepdims form must be (2, 1)
        (np.array([1.0, 0.0]), ValueError),
        (np.array([1.0, np.nan]), ValueError),
        (np.array([1.0, np.inf]), ValueError),
        (np.array([True, True]), TypeError),
        (["a", "b"], TypeError),
    ],
)
def test_clip_by_norm_bad_array_bounds(module: Any, bounds: Any, exc: type) -> None:
    x = np.ones((2, 3))
    with pytest.raises(exc):
        module.clip_by_norm_(x, bounds, axis=1)
    assert (x == 1.0).all()


# ---------------------------------------------------------------- AGC


def timm_agc(g: np.ndarray, w: np.ndarray, clipping: float, eps: float, p: float) -> np.ndarray:
    """timm's adaptive_clip_grad for one parameter, written out in float64."""

    def unitwise(x: np.ndarray) -> np.ndarray:
        if x.ndim <= 1:
            return np.asarray(np.linalg.vector_norm(x.ravel(), ord=p))
        return np.linalg.vector_norm(x, ord=p, axis=tuple(range(1, x.ndim)), keepdims=True)

    g = g.astype(np.float64)
    max_norm = np.maximum(unitwise(w.astype(np.float64)), eps) * clipping
    gn = unitwise(g)
    clipped = g * (max_norm / np.maximum(gn, 1e-6))
    return np.where(gn < max_norm, g, clipped)


@pytest.mark.parametrize("shape", [(10, 1), (10, 1, 1, 1), (1, 10), (6, 4), (3, 2, 3, 3), (7,)])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 3.0])
def test_agc_oi_is_timms_rule(shape: tuple[int, ...], p: float) -> None:
    w = random_values(1, shape, scale=1.0)
    for target, threads in each_config():
        g = random_values(2, shape, scale=1.0)
        expected = timm_agc(g, w, 0.05, 1e-3, p)
        twin = g.copy()
        with configured(target, threads):
            gradclip.adaptive_grad_clip_([g], [w], clipping=0.05, norm_type=p)
        ref.adaptive_grad_clip_([twin], [w], clipping=0.05, norm_type=p)
        np.testing.assert_allclose(g, expected, rtol=1e-13)
        np.testing.assert_allclose(g, twin, rtol=1e-15)


def test_agc_oi_column_weight_clips_each_row() -> None:
    # nn.Linear(1, 10): each output row is its own unit (timm), not one unit (Optax squeeze)
    w = np.ones((10, 1))
    g = np.arange(1.0, 11.0).reshape(10, 1) * 0.001
    g[9] = 1.0
    gradclip.adaptive_grad_clip_(g, w, clipping=0.01)
    np.testing.assert_allclose(g[:9, 0], np.arange(1.0, 10.0) * 0.001)
    np.testing.assert_allclose(g[9, 0], 0.01)
    # Optax's layout still squeezes: one unit of norm 1, clipped as a whole
    h = np.arange(1.0, 11.0).reshape(10, 1) * 0.001
    h[9] = 1.0
    before = h.copy()
    gradclip.adaptive_grad_clip_(h, w, clipping=0.01, layout="IO")
    np.testing.assert_allclose(h, before * (0.01 * math.sqrt(10) / np.linalg.norm(before)))


def test_agc_explicit_axis_conv3d() -> None:
    shape = (2, 2, 2, 3, 4)  # D, H, W, in, out (a JAX Conv3D kernel)
    w = random_values(3, shape, scale=1.0)
    g = random_values(4, shape, scale=10.0)
    twin = g.copy()
    gradclip.adaptive_grad_clip_(g, w, clipping=0.5, axis=(0, 1, 2, 3))
    ref.adaptive_grad_clip_(twin, w, clipping=0.5, axis=(0, 1, 2, 3))
    np.testing.assert_allclose(g, twin, rtol=1e-15)
    gn = np.linalg.vector_norm(g, axis=(0, 1, 2, 3))
    wn = np.linalg.vector_norm(w, axis=(0, 1, 2, 3))
    assert (gn <= 0.5 * np.maximum(wn, 1e-3) * (1 + 1e-12)).all()
    # without axis, Optax's default for 5-d kernels: every axis but the last (the output)
    h, twin = g.copy(), g.copy()
    gradclip.adaptive_grad_clip_(h, w, clipping=0.5, layout="HWIO")
    gradclip.adaptive_grad_clip_(twin, w, clipping=0.5, axis=(0, 1, 2, 3))
    assert_same_values(h, twin)
    # 6-d arrays have no default; an axis out of range is named
    with pytest.raises(ValueError, match="axis"):
        gradclip.adaptive_grad_clip_(np.ones((2,) * 6), np.ones((2,) * 6), layout="HWIO")
    with pytest.raises(ValueError, match="axis"):
        gradclip.adaptive_grad_clip_(g, w, axis=5)


def test_agc_skips_none_gradients() -> None:
    w = [np.ones((3, 2)), np.ones(4), np.ones((2, 2))]
    g = [np.full((3, 2), 5.0), None, np.full((2, 2), 5.0)]
    twin = [None if x is None else x.copy() for x in g]
    r = gradclip.adaptive_grad_clip_(g, w, clipping=0.1, return_result=True)
    r_ref = ref.adaptive_grad_clip_(twin, w, clipping=0.1, return_result=True)
    assert r is not None and r_ref is not None
    assert r.tensor_norms is not None and r.tensor_norms[1] == 0.0
    np.testing.assert_allclose(r.tensor_norms, r_ref.tensor_norms, rtol=1e-15)
    np.testing.assert_allclose(g[0], 0.1 * math.sqrt(2) / math.sqrt(2))  # row norm -> 0.1*|w|
    np.testing.assert_allclose(g[2], twin[2], rtol=1e-15)
    # a gradient without its parameter is still an error, and nothing is written
    h = [np.full(3, 5.0)]
    for module in (gradclip, ref):
        with pytest.raises(ValueError, match=r"params\[0\]"):
            module.adaptive_grad_clip_(h, [None])
    assert (h[0] == 5.0).all()


# ---------------------------------------------------------------- DP-SGD noise


def test_per_example_noise_reproducible_and_scaled() -> None:
    base = random_values(6, (8, 300, 50), scale=1.0)
    runs = []
    for _ in range(2):
        g = [base.copy()]
        sums, _ = gradclip.clip_per_example_(
            g, 1.0, noise_multiplier=2.0, rng=np.random.default_rng(123)
        )
        runs.append(sums[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    clean = [base.copy()]
    sums0, _ = gradclip.clip_per_example_(clean, 1.0)
    noise = runs[0] - sums0[0]
    # the draws are rng.standard_normal, scaled by max_norm * noise_multiplier
    expected = 2.0 * np.random.default_rng(123).standard_normal(noise.shape)
    np.testing.assert_allclose(noise, expected, rtol=0, atol=1e-12)
    assert abs(float(noise.std()) - 2.0) < 0.05


def test_per_example_noise_matches_reference() -> None:
    base = [random_values(7, (5, 3, 2), scale=2.0), random_values(8, (5, 4), scale=2.0)]
    for per_layer in (False, True):
        g = [b.copy() for b in base]
        h = [b.copy() for b in base]
        s, n = gradclip.clip_per_example_(
            g, 0.5, per_layer=per_layer, noise_multiplier=0.7, rng=np.random.default_rng(9)
        )
        s_ref, n_ref = ref.clip_per_example_(
            h, 0.5, per_layer=per_layer, noise_multiplier=0.7, rng=np.random.default_rng(9)
        )
        for a, b in zip(s, s_ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-13)
        np.testing.assert_array_equal(n, n_ref)


def test_per_example_no_noise_leaves_rng_alone() -> None:
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    gradclip.clip_per_example_([np.ones((2, 3))], 1.0, rng=rng)
    assert rng.bit_generator.state == state


@pytest.mark.parametrize("module", [gradclip, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"noise_multiplier": -1.0}, ValueError),
        ({"noise_multiplier": math.nan}, ValueError),
        ({"noise_multiplier": 1.0, "rng": 0}, TypeError),
        ({"noise_multiplier": 1.0, "rng": np.random.RandomState(0)}, TypeError),
    ],
)
def test_per_example_bad_noise_arguments(module: Any, kwargs: dict[str, Any], exc: type) -> None:
    g = [np.full((2, 3), 4.0)]
    before = snapshot(g)
    with pytest.raises(exc):
        module.clip_per_example_(g, 1.0, **kwargs)
    assert snapshot(g) == before


# ---------------------------------------------------------------- "inf" / "fro"


@pytest.mark.parametrize(("name", "p"), [("inf", math.inf), ("Inf", math.inf), ("fro", 2.0)])
@pytest.mark.parametrize("module", [gradclip, ref], ids=["compiled", "reference"])
def test_norm_type_names(module: Any, name: str, p: float) -> None:
    grads = [random_values(1, (4, 5)), random_values(2, (7,))]
    assert module.get_total_norm(grads, name) == module.get_total_norm(grads, p)
    np.testing.assert_array_equal(module.tensor_norms(grads, name), module.tensor_norms(grads, p))
    a = [x.copy() for x in grads]
    b = [x.copy() for x in grads]
    assert module.clip_grad_norm_(a, 0.1, name) == module.clip_grad_norm_(b, 0.1, p)
    for x, y in zip(a, b, strict=True):
        assert_same_values(x, y)
