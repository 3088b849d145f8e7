# Chainer's published expectations for its GradientClipping and GradientHardClipping
# optimizer hooks, translated to gradclip on NumPy.
#
# Peer: chainer/chainer
#   tests/chainer_tests/optimizer_hooks_tests/test_gradient_clipping.py and
#   tests/chainer_tests/optimizer_hooks_tests/test_gradient_hard_clipping.py at
#     a8e15cbe55a90854a3918b8b5a976abbbff9ec94 (parameters of shapes (2, 3), (2, 0, 1) and (),
#     float32, values and gradients uniform in [-3, 3], via tests/.../utils.py
#     ParametersLink.from_param_props), and their first versions at
#     fc06976a10a953a27229615febe74b4342df97b6 (TestOptimizerUtility's _sum_sqnorm cases and
#     the arange-based TestGradientClipping / TestGradientHardClipping)
#   the hooks' rules, chainer/optimizer_hooks/gradient_clipping.py and
#     gradient_hard_clipping.py at the same commit
# Chainer's hooks run inside an SGD(lr=1) update: param -= clipped grad. GradientClipping
# scales every gradient by threshold / norm when that is < 1 (no eps: eps=0.0 here);
# GradientHardClipping clips to [lower, upper] (min=/max=, the API added on main). The
# peer's backend matrix (NumPy, iDeep, CuPy on 1-2 GPUs, ChainerX native/CUDA) picks devices
# only: gradclip runs the NumPy case (the others: not applicable).
from __future__ import annotations

import math

import numpy as np
import pytest

import gradclip

F32 = np.float32
PARAM_SHAPES = [(2, 3), (2, 0, 1), ()]


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    """chainer.testing.assert_allclose defaults: atol 1e-5, rtol 1e-4."""
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-4)


def parameters_link(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """ParametersLink.from_param_props(((2, 3), (2, 0, 1), ())): arrays and gradients drawn
    uniformly from [-3, 3], float32 (a fixed seed instead of NumPy's global state)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-3, 3, s).astype(F32) for s in PARAM_SHAPES]
    grads = [rng.uniform(-3, 3, s).astype(F32) for s in PARAM_SHAPES]
    return arrays, grads


def sgd_step(arrays: list[np.ndarray], grads: list[np.ndarray]) -> None:
    for a, g in zip(arrays, grads, strict=True):
        a -= g  # SGD(lr=1)


# ---------------------------------------------------------------- GradientClipping


@pytest.mark.parametrize("rate", [0.5, 2.0], ids=["test_clipping", "test_clipping_2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_clipping(rate: float, seed: int) -> None:
    """tests/chainer_tests/optimizer_hooks_tests/test_gradient_clipping.py
    TestGradientClipping.test_clipping (rate 0.5) and test_clipping_2 (rate 2.0): with
    threshold = norm * rate, one SGD(lr=1) step gives param - grad * min(1, rate)."""
    arrays, grads = parameters_link(seed)
    norm = math.sqrt(sum(float(np.square(g.astype(np.float64)).sum()) for g in grads))
    expects = [a - g * min(1.0, rate) for a, g in zip(arrays, grads, strict=True)]
    total = gradclip.clip_grad_norm_(grads, norm * rate, eps=0.0)
    assert total == pytest.approx(norm, rel=1e-7)
    sgd_step(arrays, grads)
    for e, a in zip(expects, arrays, strict=True):
        close(a, e)


@pytest.mark.parametrize("multiplier", [0.5, 2.0], ids=["test_clipping_cpu", "test_clipping_2_cpu"])
def test_gradient_clipping_first_version(multiplier: float) -> None:
    """tests/chainer_tests/optimizer_hooks_tests/test_gradient_clipping.py at fc06976a10
    TestGradientClipping.test_clipping_cpu / test_clipping_2_cpu: w = arange(6) (2x3), g =
    [3, 2, 1, 0, -1, -2]; threshold = ||g|| * multiplier; w - g * multiplier if it is < 1,
    else w - g."""
    w = np.arange(6, dtype=F32).reshape(2, 3)
    g = np.arange(3, -3, -1, dtype=F32).reshape(2, 3)
    norm = math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))
    expect = w - g * multiplier if multiplier < 1 else w - g
    gradclip.clip_grad_norm_([g], norm * multiplier, eps=0.0)
    w -= g
    close(w, expect)


def test_sqnorm() -> None:
    """tests/chainer_tests/optimizer_hooks_tests/test_gradient_clipping.py at fc06976a10
    TestOptimizerUtility: _sum_sqnorm of x = linspace(-1, 1.5, 6) (float32, 2x3) is 4.75
    (test_sqnorm_cpu), of the 0-d 2.0 it is 4 (test_sqnorm_scalar_cpu), of [x, a] twice
    8.75 * 2 (test_sqnorm_array) and three times 8.75 * 3 (test_sqnorm_array_multi_gpu; the
    device copies are copies here). gradclip's squared total norm."""
    x = np.linspace(-1.0, 1.5, num=6).astype(F32).reshape(2, 3)
    a = np.array(2.0)
    assert gradclip.get_total_norm([x]) ** 2 == pytest.approx(4.75, abs=1e-7)
    assert gradclip.get_total_norm([a]) ** 2 == pytest.approx(4.0, abs=1e-7)
    two = [x, a, x.copy(), a.copy()]
    assert gradclip.get_total_norm(two) ** 2 == pytest.approx(8.75 * 2, abs=1e-7)
    three = [x, a, x.copy(), a.copy(), x.copy(), a.copy()]
    assert gradclip.get_total_norm(three) ** 2 == pytest.approx(8.75 * 3, abs=1e-7)


def test_zero_norm_is_left_alone() -> None:
    """chainer/optimizer_hooks/gradient_clipping.py GradientClipping.__call__: rate =
    threshold / norm, and on NumPy `if rate >= 1: return`; a zero norm gives rate inf (its
    TODO notes it), so nothing is written. gradclip with eps=0: coefficient inf, clamped to 1,
    nothing written and nothing non-finite."""
    grads = [np.zeros((2, 3), F32), np.zeros((2, 0, 1), F32), np.zeros((), F32)]
    assert gradclip.clip_grad_norm_(grads, 1.0, eps=0.0) == 0.0
    for g, s in zip(grads, PARAM_SHAPES, strict=True):
        np.testing.assert_array_equal(g, np.zeros(s))


def test_difference_eps_norm_equal_to_threshold() -> None:
    """Pins docs/differences.md "eps in the coefficient" for Chainer: a gradient whose norm
    equals the threshold has rate 1 and Chainer's hook returns without writing; gradclip's
    default eps = 1e-6 makes the coefficient threshold / (threshold + 1e-6) < 1 and scales it
    (far inside chainer's assert_allclose tolerance, so the peer's tests pass either way)."""
    g = [np.array([3.0, 4.0])]
    gradclip.clip_grad_norm_(g, 5.0)
    assert g[0][0] == 3.0 * 5.0 / (5.0 + 1e-6) < 3.0
    g0 = [np.array([3.0, 4.0])]
    gradclip.clip_grad_norm_(g0, 5.0, eps=0.0)
    np.testing.assert_array_equal(g0[0], [3.0, 4.0])


# ------------------------------------------------------------ GradientHardClipping


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_hard_clipping(seed: int) -> None:
    """tests/chainer_tests/optimizer_hooks_tests/test_gradient_hard_clipping.py
    TestGradientHardClipping.test_hardclipping: lower -0.9, upper 1.1; one SGD(lr=1) step
    gives param - clip(grad, -0.9, 1.1). Needs clip_grad_value_(min=, max=)."""
    arrays, grads = parameters_link(seed)
    expects = [a - np.clip(g, -0.9, 1.1) for a, g in zip(arrays, grads, strict=True)]
    gradclip.clip_grad_value_(grads, min=-0.9, max=1.1)
    sgd_step(arrays, grads)
    for e, a in zip(expects, arrays, strict=True):
        close(a, e)


def test_gradient_hard_clipping_first_version() -> None:
    """tests/chainer_tests/optimizer_hooks_tests/test_gradient_hard_clipping.py at fc06976a10
    TestGradientHardClipping.test_hardclipping_cpu: w = arange(6), g = [3, 2, 1, 0, -1, -2],
    bounds [-0.9, 1.1]: w - clip(g, -0.9, 1.1) = [[-1.1, -0.1, 1], [3, 4.9, 5.9]]."""
    w = np.arange(6, dtype=F32).reshape(2, 3)
    g = np.arange(3, -3, -1, dtype=F32).reshape(2, 3)
    gradclip.clip_grad_value_(g, min=-0.9, max=1.1)
    w -= g
    close(w, np.array([[-1.1, -0.1, 1.0], [3.0, 4.9, 5.9]]))


def test_hard_clipping_skips_missing_gradient() -> None:
    """chainer/optimizer_hooks/gradient_hard_clipping.py GradientHardClipping.__call__: `if
    grad is None: return`. A None entry is skipped, the others clipped."""
    grads = [np.array([2.0, -2.0], F32), None, np.array([0.5], F32)]
    gradclip.clip_grad_value_(grads, min=-0.9, max=1.1)
    assert grads[1] is None
    np.testing.assert_array_equal(grads[0], np.array([1.1, -0.9], F32))
    np.testing.assert_array_equal(grads[2], [0.5])
