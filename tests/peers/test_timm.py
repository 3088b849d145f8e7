# timm's adaptive gradient clipping (AGC), translated to gradclip on NumPy.
#
# Peer: huggingface/pytorch-image-models at aa4b5850c1543fa488abf260f18390eda46cf85d,
#   timm/utils/agc.py (unitwise_norm, adaptive_clip_grad) and timm/utils/clip_grad.py
#   (dispatch_clip_grad). timm publishes no test of these (tests/ has none), so the
#   expectations are the behaviour its code defines, written here as NumPy facts:
#   - a unit is a slice along axis 0 (the output axis of nn.Linear / nn.ConvNd weights), its
#     norm over every other axis; a tensor with at most one axis is one unit;
#   - max_norm = clip_factor * max(||w_unit||, eps), eps = 1e-3, clip_factor = 0.01;
#   - a unit whose gradient norm is < max_norm is kept; otherwise it is multiplied by
#     max_norm / max(||g_unit||, 1e-6);
#   - norm_type is the p of every norm (timm passes 1, 2 or inf through);
#   - a parameter whose .grad is None is skipped.
# Mapping: adaptive_clip_grad(params, clip_factor, eps, norm_type) ->
# adaptive_grad_clip_(grads, params, clipping, eps, layout="OI", norm_type=); the "OI" rule
# for (N, 1) and (N, 1, 1, 1) weights (per output row, as timm) and norm_type are the API
# added on main.
from __future__ import annotations

import math

import numpy as np
import pytest

import gradclip

F32 = np.float32


def p_norm(x: np.ndarray, p: float, axis: tuple[int, ...] | None) -> np.ndarray:
    a = np.abs(x.astype(np.float64))
    if p == math.inf:
        return np.max(a, axis=axis, keepdims=True)
    return np.sum(a**p, axis=axis, keepdims=True) ** (1.0 / p)


def timm_unitwise_norm(x: np.ndarray, p: float) -> np.ndarray:
    """timm.utils.agc.unitwise_norm: the whole tensor for ndim <= 1, else over axes 1..."""
    if x.ndim <= 1:
        return p_norm(x, p, None)
    return p_norm(x, p, tuple(range(1, x.ndim)))


def timm_agc(g: np.ndarray, w: np.ndarray, clip: float, eps: float, p: float) -> np.ndarray:
    """timm.utils.agc.adaptive_clip_grad for one parameter, in float64."""
    max_norm = np.maximum(timm_unitwise_norm(w, p), eps) * clip
    grad_norm = timm_unitwise_norm(g, p)
    clipped = g.astype(np.float64) * (max_norm / np.maximum(grad_norm, 1e-6))
    return np.where(grad_norm < max_norm, g.astype(np.float64), clipped)


# the parameter shapes of a small CNN: conv weight (out, in, kh, kw), its bias, a linear
# weight (out, in) and bias, a 1x1 conv to one channel... and the (N, 1), (N, 1, 1, 1)
# weights whose units timm takes per row, a 0-d scale and a (1, K) weight (one unit)
SHAPES = [(8, 3, 3, 3), (8,), (10, 32), (10,), (16, 8, 1, 1), (6, 1), (5, 1, 1, 1), (), (1, 7)]


def model(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    params = [rng.normal(0.0, 0.5, s).astype(F32) for s in SHAPES]
    # gradients spanning "kept" and "clipped" units: scales from 1e-4 to 1 per unit
    grads = []
    for s in SHAPES:
        g = rng.normal(0.0, 1.0, s)
        if len(s) >= 1:
            g = g * np.logspace(-4, 0, s[0]).reshape((s[0],) + (1,) * (len(s) - 1))
        grads.append(np.asarray(g, F32))
    return grads, params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize(("clip_factor", "eps"), [(0.01, 1e-3), (0.1, 1e-3), (0.01, 0.5)])
def test_adaptive_clip_grad_unitwise(norm_type: float, clip_factor: float, eps: float) -> None:
    """timm/utils/agc.py adaptive_clip_grad(parameters, clip_factor, eps, norm_type) over a
    model's parameters: every unit kept or rescaled exactly as timm's rule says (float32
    tolerance), for timm's norm types 2, 1 and inf."""
    grads, params = model(7)
    expected = [
        timm_agc(g, w, clip_factor, eps, norm_type) for g, w in zip(grads, params, strict=True)
    ]
    gradclip.adaptive_grad_clip_(
        grads, params, clipping=clip_factor, eps=eps, layout="OI", norm_type=norm_type
    )
    for g, e in zip(grads, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-12)


def test_defaults_are_timms() -> None:
    """timm/utils/agc.py adaptive_clip_grad(parameters, clip_factor=0.01, eps=1e-3,
    norm_type=2.0): gradclip's defaults (and the "OI" layout's) give the same result."""
    grads, params = model(11)
    expected = [timm_agc(g, w, 0.01, 1e-3, 2.0) for g, w in zip(grads, params, strict=True)]
    gradclip.adaptive_grad_clip_(grads, params)
    for g, e in zip(grads, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-12)


def test_units_are_output_rows() -> None:
    """timm/utils/agc.py unitwise_norm: for a (2, 4) weight the units are its rows. Row 0's
    gradient (norm 1) is above 0.1 * ||w_0|| = 0.2 and becomes 0.2; row 1's (0.001) is
    kept."""
    w = np.ones((2, 4))
    g = np.array([[1.0, 0.0, 0.0, 0.0], [0.001, 0.0, 0.0, 0.0]])
    gradclip.adaptive_grad_clip_(g, w, clipping=0.1)
    np.testing.assert_allclose(g[:, 0], [0.2, 0.001], rtol=1e-15)


@pytest.mark.parametrize("shape", [(4, 1), (4, 1, 1, 1)])
def test_single_column_weights_clip_per_row(shape: tuple[int, ...]) -> None:
    """timm/utils/agc.py unitwise_norm: an (N, 1) linear or (N, 1, 1, 1) conv weight still has
    N units (the norm over axes 1..), not one: with w = 1, clip_factor 0.1, the rows' gradients
    1, 0.001, 2, 0 become 0.1, 0.001, 0.1, 0."""
    w = np.ones(shape)
    g = np.array([1.0, 0.001, 2.0, 0.0]).reshape(shape)
    gradclip.adaptive_grad_clip_(g, w, clipping=0.1)
    np.testing.assert_allclose(g.ravel(), [0.1, 0.001, 0.1, 0.0], rtol=1e-15)


def test_vector_and_scalar_are_one_unit() -> None:
    """timm/utils/agc.py unitwise_norm: x.ndim <= 1 is one unit, the whole tensor's norm: a
    bias [3, 4] with w = [0, 1] (norm 1, bound 0.1) becomes [0.06, 0.08]; a 0-d gradient 5
    with w 2 becomes 0.2."""
    b = np.array([3.0, 4.0])
    gradclip.adaptive_grad_clip_(b, np.array([0.0, 1.0]), clipping=0.1)
    np.testing.assert_allclose(b, [0.06, 0.08], rtol=1e-15)
    s = np.array(5.0)
    gradclip.adaptive_grad_clip_(s, np.array(2.0), clipping=0.1)
    np.testing.assert_allclose(s, 0.2, rtol=1e-15)


def test_zero_initialised_params_use_eps() -> None:
    """timm/utils/agc.py: unitwise_norm(p).clamp_(min=eps): a zero parameter's units are
    bounded by clip_factor * eps = 1e-5, so a gradient of ones (norm sqrt(3) per row) is
    scaled to norm 1e-5 per row."""
    w = np.zeros((2, 3))
    g = np.ones((2, 3))
    gradclip.adaptive_grad_clip_(g, w, clipping=0.01, eps=1e-3)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), [1e-5, 1e-5], rtol=1e-12)


def test_norm_equal_to_bound_is_rescaled_by_one() -> None:
    """timm/utils/agc.py: torch.where(grad_norm < max_norm, g, clipped): a unit whose norm
    equals max_norm takes the clipped branch, a factor max_norm / grad_norm = 1 (so the
    values stay). w = [2, 0] (bound 0.2), g = [0.12, 0.16] (norm 0.2)."""
    g = np.array([[0.12, 0.16]])
    norm = float(np.linalg.norm(g))
    gradclip.adaptive_grad_clip_(g, np.array([[2.0, 0.0]]), clipping=0.1)
    np.testing.assert_allclose(g, [[0.12, 0.16]], rtol=1e-15)
    assert norm == pytest.approx(0.2, rel=1e-15)


def test_tiny_gradient_norm_is_clamped_at_1e_minus_6() -> None:
    """timm/utils/agc.py: max_norm / grad_norm.clamp(min=1e-6): for a zero parameter with
    clip_factor 1e-6 the bound is 1e-9; a gradient of norm 1e-8 (above it) is multiplied by
    1e-9 / max(1e-8, 1e-6) = 1e-3, to norm 1e-11 (not to the bound)."""
    g = np.array([[1e-8, 0.0]])
    gradclip.adaptive_grad_clip_(g, np.zeros((1, 2)), clipping=1e-6, eps=1e-3)
    np.testing.assert_allclose(g, [[1e-11, 0.0]], rtol=1e-12)


def test_none_gradient_is_skipped() -> None:
    """timm/utils/agc.py adaptive_clip_grad: `if p.grad is None: continue`. A None entry in
    grads (its parameter given) is skipped; the others are clipped as without it."""
    grads, params = model(3)
    expected = [timm_agc(g, w, 0.01, 1e-3, 2.0) for g, w in zip(grads, params, strict=True)]
    with_none: list[np.ndarray | None] = list(grads)
    with_none[1] = None
    gradclip.adaptive_grad_clip_(with_none, params)
    assert with_none[1] is None
    for i, (g, e) in enumerate(zip(with_none, expected, strict=True)):
        if i != 1:
            np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-12)


def test_single_tensor_input() -> None:
    """timm/utils/agc.py adaptive_clip_grad: `if isinstance(parameters, torch.Tensor):
    parameters = [parameters]`: one array is the same as a list of one."""
    grads, params = model(5)
    a, b = grads[0].copy(), grads[0].copy()
    gradclip.adaptive_grad_clip_(a, params[0])
    gradclip.adaptive_grad_clip_([b], [params[0]])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["norm", "value", "agc"])
def test_dispatch_clip_grad_modes(mode: str) -> None:
    """timm/utils/clip_grad.py dispatch_clip_grad(parameters, value, mode, norm_type): 'norm'
    is torch's clip_grad_norm_ (gradclip.clip_grad_norm_, same eps 1e-6), 'value' is
    clip_grad_value_, 'agc' is adaptive_clip_grad with value as clip_factor."""
    grads, params = model(9)
    value = 0.05
    if mode == "norm":
        flat = np.concatenate([g.astype(np.float64).ravel() for g in grads])
        total = float(np.linalg.norm(flat))
        expected = [g.astype(np.float64) * min(1.0, value / (total + 1e-6)) for g in grads]
        assert gradclip.clip_grad_norm_(grads, value) == pytest.approx(total, rel=1e-12)
    elif mode == "value":
        expected = [np.clip(g.astype(np.float64), -value, value) for g in grads]
        gradclip.clip_grad_value_(grads, value)
    else:
        expected = [timm_agc(g, w, value, 1e-3, 2.0) for g, w in zip(grads, params, strict=True)]
        gradclip.adaptive_grad_clip_(grads, params, clipping=value)
    for g, e in zip(grads, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-9)
