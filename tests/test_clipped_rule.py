# What "clipped" means, one rule everywhere: the gradients were multiplied by a coefficient
# other than 1 to clip them, a NaN coefficient included (PyTorch's arithmetic for a NaN norm
# writes NaN everywhere: that step clipped, it was not left alone). Skipping writes nothing
# and is not clipping; zeroing is.
import math

import numpy as np
import pytest

import gradclip
from gradclip import _core
from gradclip import reference as ref


def nan_grads():
    return [np.array([1.0, np.nan, 2.0], np.float32), np.array([3.0, 4.0], np.float64)]


@pytest.mark.parametrize("coef", [0.0, 0.5, math.nextafter(1.0, 0.0), math.nan])
def test_rule_clips(coef):
    assert _core.clipped(coef)


@pytest.mark.parametrize("coef", [1.0, 2.0, math.inf])
def test_rule_does_not_clip(coef):
    assert not _core.clipped(coef)


@pytest.mark.parametrize("lib", [gradclip, ref], ids=["compiled", "reference"])
def test_nan_norm_propagated_is_clipped(lib):
    g = nan_grads()
    r = lib.clip_grad_norm_(g, 1.0, return_result=True)
    assert math.isnan(r.total_norm) and math.isnan(r.coef)
    assert r.clipped and r.found_nonfinite
    assert all(np.isnan(a).all() for a in g)  # the NaN coefficient was written


@pytest.mark.parametrize("lib", [gradclip, ref], ids=["compiled", "reference"])
@pytest.mark.parametrize(("mode", "coef", "clipped"), [("skip", 1.0, False), ("zero", 0.0, True)])
def test_nan_norm_skipped_or_zeroed(lib, mode, coef, clipped):
    g = nan_grads()
    r = lib.clip_grad_norm_(g, 1.0, nonfinite=mode, return_result=True)
    assert r.coef == coef and r.clipped is clipped and r.found_nonfinite


def test_unscale_with_nan_writes_nothing_and_is_not_clipped():
    g = nan_grads()
    before = [a.copy() for a in g]
    r = gradclip.unscale_clip_grad_norm_(g, 1.0, 0.5)
    assert r.found_nonfinite and not r.clipped and r.coef == 1.0
    for a, b in zip(g, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_agc_with_nan_gradient_is_clipped():
    g = [np.array([[np.nan, 1.0], [0.001, 0.0]])]
    w = [np.ones((2, 2))]
    r = gradclip.adaptive_grad_clip_(g, w, clipping=0.1, return_result=True)
    assert r.clipped and math.isnan(r.coef)


@pytest.mark.parametrize("module", [gradclip, ref], ids=["gradclip", "reference"])
@pytest.mark.parametrize("per_layer", [False, True])
def test_per_example_nan_example_counts_as_clipped(module, per_layer):
    # example 0 has a NaN, example 1 is far below the bound, example 2 above it
    g = [np.array([[np.nan, 0.0], [0.01, 0.0], [30.0, 40.0]])]
    _, n = module.clip_per_example_(g, 1.0, per_layer=per_layer)
    counted = int(n[0]) if per_layer else n
    assert counted == 2
    assert np.isnan(g[0][0]).all()  # the NaN coefficient was written to the whole example
    np.testing.assert_array_equal(g[0][1], [0.01, 0.0])


@pytest.mark.parametrize(
    "coef", [0.0, -0.0, 0.5, np.nextafter(1.0, 0.0), 1.0, 1.5, math.inf, -math.inf, math.nan]
)
def test_the_reference_rule_is_the_engines(coef: float) -> None:
    # the reference states the rule on its own (it runs without the core); it must say what
    # the engine's rule says
    from gradclip.reference._arith import _clipped

    assert _clipped(coef) is _core.clipped(coef)


def test_the_engine_rule_takes_a_float_only() -> None:
    # the no-allocation entry point reads its argument as a float, and raises as the rest of
    # the core does for anything else
    assert _core.clipped(0) is True and _core.clipped(True) is False
    with pytest.raises(TypeError):
        _core.clipped("0.5")
    with pytest.raises(TypeError):
        _core.clipped(coef=0.5)
