# Opacus' published per-sample clipping expectations, translated to gradclip on NumPy.
#
# Peer: pytorch/opacus at 4d0ebc84613d214fbfd37fbfd1390e3747a625ce
#   opacus/tests/privacy_engine_test.py, BasePrivacyEngineTest (run by
#     PrivacyEngineConvNetTest, ...EmptyBatchTest, ...FrozenTest, ...): test_flat_clipping,
#     test_per_layer_clipping, test_sample_grad_aggregation, test_compare_to_vanilla,
#     test_noise_changes_every_time, test_deterministic_run, test_noise_level
#   the rules those tests check, from opacus/optimizers/optimizer.py (DPOptimizer:
#     clip_and_accumulate, add_noise, scale_grad) and opacus/optimizers/perlayeroptimizer.py
#     (DPPerLayerOptimizer)
# Opacus computes per-sample gradients of a SampleConvNet with hooks and then clips them:
# factor_i = min(1, C / (||g_i|| + 1e-6)) over all parameters together ("flat") or per
# parameter ("per_layer"), summed_grad = sum_i factor_i g_i, grad = (summed_grad + N(0,
# (noise_multiplier * C)^2)) / expected_batch_size. The model's per-sample gradients are not
# available without torch; here they are drawn (fixed seeds) with the shapes of
# SampleConvNet's trainable parameters (convf is frozen), and the tests' settings are kept:
# batch 64, lr 0.5, SGD without momentum, batch 1 for the clipping tests.
# Mapping: clip_and_accumulate + add_noise -> clip_per_example_(grads, C, per_layer=,
# noise_multiplier=, rng=) (gradclip's eps is Opacus' 1e-6); scale_grad -> / batch.
# Needs the API being added on main: clip_per_example_(noise_multiplier=, rng=).
from __future__ import annotations

import numpy as np
import pytest

import gradclip

F32 = np.float32
BATCH_SIZE = 64
LR = 0.5
# SampleConvNet's trainable parameters: conv1 (w, b), gnorm1 (w, b), conv2 (w, b), lnorm1
# (w, b), conv3 (w), fc1 (w, b), lnorm2 (w, b), fc2 (w, b)
SHAPES = [
    (16, 1, 8, 8),
    (16,),
    (16,),
    (16,),
    (32, 16, 3),
    (32,),
    (32, 23),
    (32, 23),
    (32, 32, 3),
    (17, 21),
    (17,),
    (17,),
    (17,),
    (10, 32 * 17),
    (10,),
]
N_PARAMS = sum(int(np.prod(s)) for s in SHAPES)


def grad_samples(batch: int, seed: int) -> list[np.ndarray]:
    """Per-sample gradients (axis 0 the batch), one scale per layer so that layers' norms
    fall on both sides of the bounds the tests use."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(-2.5, -0.5, len(SHAPES))
    return [
        (rng.standard_normal((batch, *s)) * scale).astype(F32)
        for s, scale in zip(SHAPES, scales, strict=True)
    ]


def flat_norm(ts: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(t.astype(np.float64) ** 2) for t in ts)))


def dp_grads(
    samples: list[np.ndarray],
    max_grad_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    *,
    per_layer: bool = False,
) -> list[np.ndarray]:
    """DPOptimizer.pre_step: clip_and_accumulate, add_noise, scale_grad (loss "mean")."""
    sums, _ = gradclip.clip_per_example_(
        samples, max_grad_norm, per_layer=per_layer, noise_multiplier=noise_multiplier, rng=rng
    )
    return [s / F32(len(samples[0]) or BATCH_SIZE) for s in sums]


def test_flat_clipping() -> None:
    """opacus/tests/privacy_engine_test.py BasePrivacyEngineTest.test_flat_clipping: batch 1,
    max_grad_norm 0.5, no noise: the summed clipped gradient has norm 0.5 (places=3) and the
    non-clipped gradient a larger one."""
    samples = grad_samples(1, 1337)
    vanilla = [s[0].copy() for s in samples]
    sums, n = gradclip.clip_per_example_(samples, 0.5, noise_multiplier=0.0)
    assert round(flat_norm(sums) - 0.5, 3) == 0
    assert flat_norm(vanilla) > flat_norm(sums)
    assert n == 1


def test_per_layer_clipping() -> None:
    """opacus/tests/privacy_engine_test.py BasePrivacyEngineTest.test_per_layer_clipping:
    batch 1, max_grad_norm 1.0 for every layer, no noise: each layer's summed clipped gradient
    has norm min(its non-clipped norm, 1.0) (places=3)."""
    samples = grad_samples(1, 1337)
    for s in samples:
        s *= F32(3.0)  # some layers above 1, some below
    vanilla = [s[0].copy() for s in samples]
    sums, n = gradclip.clip_per_example_(samples, 1.0, per_layer=True, noise_multiplier=0.0)
    below = 0
    for v, s in zip(vanilla, sums, strict=True):
        expected = min(flat_norm([v]), 1.0)
        below += expected < 1.0
        assert round(expected - flat_norm([s]), 3) == 0
    assert 0 < below < len(SHAPES)  # both cases were exercised
    assert n.shape == (len(SHAPES),)


def test_sample_grad_aggregation() -> None:
    """opacus/tests/privacy_engine_test.py BasePrivacyEngineTest.test_sample_grad_aggregation:
    max_grad_norm 99999 and no noise: each parameter's gradient is the sum of its per-sample
    gradients / batch size (atol 1e-8, rtol 1e-4)."""
    samples = grad_samples(BATCH_SIZE, 0)
    expected = [s.astype(np.float64).sum(axis=0) / BATCH_SIZE for s in samples]
    grads = dp_grads(samples, 99999.0, 0.0, np.random.default_rng(0))
    for g, e in zip(grads, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-8, rtol=1e-4)


def train(
    steps: int, max_grad_norm: float | None, noise: float, rng: np.random.Generator, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """SGD(lr=0.5) for `steps` batches of 64 (the same batches for every caller: `seed`),
    vanilla when max_grad_norm is None; returns the parameters and the last gradients."""
    params = [np.zeros(s, np.float64) for s in SHAPES]
    grads: list[np.ndarray] = []
    for step in range(steps):
        samples = grad_samples(BATCH_SIZE, seed + step)
        if max_grad_norm is None:
            grads = [s.astype(np.float64).mean(axis=0) for s in samples]
        else:
            grads = [g.astype(np.float64) for g in dp_grads(samples, max_grad_norm, noise, rng)]
        for p, g in zip(params, grads, strict=True):
            p -= LR * g
    return params, grads


@pytest.mark.parametrize("max_steps", [1, 3])
@pytest.mark.parametrize(
    ("do_clip", "do_noise"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_compare_to_vanilla(do_clip: bool, do_noise: bool, max_steps: int) -> None:
    """opacus/tests/privacy_engine_test.py BasePrivacyEngineTest.test_compare_to_vanilla (its
    hypothesis draws do_clip, do_noise, max_steps in {1, 3}; here all of them): private
    training (max_grad_norm 0.1 if clipping else 1e20, noise_multiplier 1.0 or 0) matches
    vanilla SGD in weights and gradients (atol 1e-7 for 1 step, 1e-4 for 3; rtol 1e-3)
    exactly when there is neither clipping nor noise. Layers whose vanilla gradient norm is
    below 1e-4 are skipped, as the peer skips them."""
    v_params, v_grads = train(max_steps, None, 0.0, np.random.default_rng(0), seed=100)
    p_params, p_grads = train(
        max_steps,
        0.1 if do_clip else 1e20,
        1.0 if do_noise else 0.0,
        np.random.default_rng(0),
        seed=100,
    )
    expected_match = not (do_clip or do_noise)
    atol = 1e-7 if max_steps == 1 else 1e-4
    checked = 0
    for vp, pp, vg, pg in zip(v_params, p_params, v_grads, p_grads, strict=True):
        if flat_norm([vg]) < 1e-4:
            continue
        checked += 1
        assert np.allclose(vp, pp, atol=atol, rtol=1e-3) == expected_match
        assert np.allclose(vg, pg, atol=atol, rtol=1e-3) == expected_match
    assert checked > 0


def test_noise_changes_every_time() -> None:
    """opacus/tests/privacy_engine_test.py BasePrivacyEngineTest.test_noise_changes_every_time:
    two private runs with noise (noise_multiplier 1.0, max_grad_norm 1.0) end with different
    parameters, each one of them. The runs draw from one generator in turn, as Opacus' two
    runs draw from torch's global one."""
    rng = np.random.default_rng(2024)
    first, _ = train(1, 1.0, 1.0, rng, seed=7)
    second, _ = train(1, 1.0, 1.0, rng, seed=7)
    for p0, p1 in zip(first, second, strict=True):
        assert not np.allclose(p0, p1)


def test_deterministic_run() -> None:
    """opacus/tests/privacy_engine_test.py BasePrivacyEngineTest.test_deterministic_run: two
    runs from the same seed (torch.manual_seed(0) in the peer; a generator seeded 0 here)
    give the same parameters."""
    first, _ = train(2, 1.0, 1.0, np.random.default_rng(0), seed=7)
    second, _ = train(2, 1.0, 1.0, np.random.default_rng(0), seed=7)
    for p0, p1 in zip(first, second, strict=True):
        np.testing.assert_array_equal(p0, p1)


@pytest.mark.parametrize(("noise_multiplier", "max_steps"), [(0.5, 3), (1.3, 4), (5.0, 5)])
def test_noise_level(noise_multiplier: float, max_steps: int) -> None:
    """opacus/tests/privacy_engine_test.py BasePrivacyEngineTest.test_noise_level (hypothesis
    draws noise_multiplier in [0.5, 5] and max_steps in 3..5; here three fixed draws): from
    zero parameters and zero gradients, after `steps` DP-SGD steps the squared norm of the
    parameters is steps * n_params * sigma^2 * lr^2 / batch^2 (max_grad_norm 1.0), within
    15 %."""
    rng = np.random.default_rng(100)
    params = [np.zeros(s, F32) for s in SHAPES]
    for _ in range(max_steps):
        zero = [np.zeros((BATCH_SIZE, *s), F32) for s in SHAPES]
        grads = dp_grads(zero, 1.0, noise_multiplier, rng)
        for p, g in zip(params, grads, strict=True):
            p -= F32(LR) * g
    expected = max_steps * N_PARAMS * noise_multiplier**2 * LR**2 / BATCH_SIZE**2
    real = sum(float(np.sum(p.astype(np.float64) ** 2)) for p in params)
    assert abs(real - expected) <= 0.15 * expected


def test_empty_batch() -> None:
    """opacus/tests/privacy_engine_test.py PrivacyEngineConvNetEmptyBatchTest (batch size 1
    with Poisson sampling, so some batches are empty) and DPOptimizer.clip_and_accumulate's
    empty-batch branch: an empty batch sums to zeros, nothing is clipped, and noise is still
    added (add_noise runs on the zero sums)."""
    empty = [np.zeros((0, *s), F32) for s in SHAPES[:3]]
    sums, n = gradclip.clip_per_example_(empty, 1.0, noise_multiplier=0.0)
    assert n == 0
    for s, shape in zip(sums, SHAPES[:3], strict=True):
        assert s.shape == shape
        np.testing.assert_array_equal(s, np.zeros(shape))
    sums, _ = gradclip.clip_per_example_(
        empty, 1.0, noise_multiplier=1.0, rng=np.random.default_rng(5)
    )
    assert all(np.any(s != 0) for s in sums)


def test_difference_per_layer_noise_std() -> None:
    """Pins docs/differences.md "per-layer noise": Opacus' DPPerLayerOptimizer
    (opacus/optimizers/perlayeroptimizer.py) adds noise of standard deviation
    noise_multiplier * ||(C_1, ..., C_K)||_2 (sqrt(K) * C for one C), the sensitivity of the
    whole per-layer-clipped gradient. gradclip's clip_per_example_(per_layer=True) adds
    noise_multiplier * max_norm to every array (a caller who wants Opacus' calibration passes
    noise_multiplier * sqrt(K))."""
    k = 4
    zero = [np.zeros((1, 200, 50), F32) for _ in range(k)]
    sums, _ = gradclip.clip_per_example_(
        zero, 1.0, per_layer=True, noise_multiplier=1.0, rng=np.random.default_rng(8)
    )
    std = float(np.std(np.concatenate([s.ravel() for s in sums]).astype(np.float64)))
    assert abs(std - 1.0) < 0.03  # gradclip: nm * C
    assert abs(std - np.sqrt(k)) > 0.5  # not Opacus' nm * sqrt(K) * C


def test_difference_no_secure_mode() -> None:
    """Pins docs/differences.md "noise source": Opacus draws its noise from torch's generator,
    or with secure_mode=True from a cryptographically secure one summed 2n times (n = 2,
    test_generate_noise_in_secure_mode, skipped upstream). gradclip draws standard_normal
    from the NumPy Generator passed as rng, and has no secure mode: a caller who needs one
    passes a Generator built on a secure bit generator."""
    g = [np.zeros((1, 3), F32)]
    with pytest.raises(TypeError):
        gradclip.clip_per_example_(g, 1.0, noise_multiplier=1.0, secure_mode=True)  # type: ignore[call-arg]
    a, _ = gradclip.clip_per_example_(
        [np.zeros((1, 3), F32)], 2.0, noise_multiplier=1.5, rng=np.random.default_rng(9)
    )
    expected = (np.random.default_rng(9).standard_normal(3) * 3.0).astype(F32)
    np.testing.assert_allclose(a[0], expected, rtol=1e-6)
