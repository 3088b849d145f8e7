"""Errors that must leave every array untouched, beyond bad input: an overflow that only
unscaling reveals, parameters that alias the gradients AGC writes, leaves that only a
DLPack exporter describes, and arguments whose errors must name themselves. (Allocation
failures, swept call by call, are tests/test_fault_injection.py's job.)"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from gc_helpers import dtype_of, snapshot

import gradclip
from gradclip import reference as ref

NARROW = ["float16", "bfloat16", "float32"]


def _largest(name: str) -> float:
    return float(np.finfo(dtype_of(name)).max) if name != "bfloat16" else 3.3895313892515355e38


# ---------------------------------------------------------------- unscaling overflow
@pytest.mark.parametrize("name", NARROW)
@pytest.mark.parametrize("inv_scale", [2.0, 1e30])
def test_unscaling_past_the_largest_value_is_nonfinite(
    name: str, inv_scale: float, impl: Any, cpu_target: str
) -> None:
    # The scaled values are finite, their float64 norm times inv_scale too, but x * inv_scale
    # in the dtype is inf (torch's GradScaler flags it as found_inf): nothing may be written.
    dt = dtype_of(name)
    big = np.full(7, _largest(name), dt)
    small = np.linspace(-1.0, 1.0, 5).astype(np.float64)
    grads = [big, None, small]
    before = snapshot([big, small])
    r = impl.unscale_clip_grad_norm_(grads, 1.0, inv_scale, per_tensor_norms=True)
    assert r.found_nonfinite
    assert not r.clipped
    assert math.isinf(r.total_norm)
    assert snapshot([big, small]) == before
    assert math.isinf(r.tensor_norms[0])
    assert r.tensor_norms[1] == 0.0
    assert math.isfinite(r.tensor_norms[2])


@pytest.mark.parametrize("name", NARROW)
def test_unscaling_overflow_through_a_gradient_set_and_a_strided_view(name: str) -> None:
    dt = dtype_of(name)
    base = np.zeros(40, dt)
    base[::4] = _largest(name) / 1.5  # * 2 overflows
    view = base[::2]
    before = snapshot([base])
    gs = gradclip.GradientSet([view])
    r = gradclip.unscale_clip_grad_norm_(gs, 1e6, 2.0)
    assert r.found_nonfinite
    assert snapshot([base]) == before


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_a_large_norm_of_values_that_do_not_overflow_is_not_flagged(name: str, impl: Any) -> None:
    # The norm times inv_scale is far above the dtype's maximum (1e4 elements of a quarter
    # of it), but no single value overflows: the step must go on.
    dt = dtype_of(name)
    value = _largest(name) / 4
    g = np.full(10_000, value, dt)
    r = impl.unscale_clip_grad_norm_([g], max_norm=1e300, inv_scale=2.0)
    assert not r.found_nonfinite
    assert math.isfinite(r.total_norm)
    assert np.all(g.astype(np.float64) == float(np.asarray(value, dt).astype(np.float64)) * 2)


def test_compiled_and_reference_agree_at_the_overflow_boundary() -> None:
    # float16's largest value is 65504; 65504 * s rounds to inf from s = 65520 / 65504 on
    # (the midpoint rounds to even, which is inf)
    lo = np.nextafter(65520.0 / 65504.0, 0.0)
    for s in (lo * (1 - 1e-6), 65520.0 / 65504.0, 1.01):
        results = []
        for impl in (gradclip, ref):
            g = [np.array([65504.0, 1.0], np.float16)]
            r = impl.unscale_clip_grad_norm_(g, 1e300, s)
            results.append((r.found_nonfinite, g[0].tobytes()))
        assert results[0] == results[1], s


# ---------------------------------------------------------------- AGC aliasing
@pytest.mark.parametrize(
    "make",
    [
        lambda w: (w, w),
        lambda w: ([w[:2]], [w[1:3]]),
        lambda w: ([np.ones(3), w], [np.ones(3), w]),
    ],
    ids=["same", "overlapping-views", "second-position"],
)
def test_agc_refuses_parameters_that_share_memory_with_gradients(make: Any) -> None:
    w = np.arange(1.0, 13.0).reshape(4, 3)
    grads, params = make(w)
    before = snapshot([w])
    with pytest.raises(ValueError, match=r"params\[\d\] and grads\[\d\] share memory") as info:
        gradclip.adaptive_grad_clip_(grads, params, 0.01)
    assert "grads" in str(info.value)
    assert snapshot([w]) == before


def test_agc_accepts_disjoint_views_of_one_buffer() -> None:
    buf = np.arange(1.0, 25.0).reshape(8, 3)
    g, w = buf[:4], buf[4:]
    expected_g, expected_w = g.copy(), w.copy()
    ref.adaptive_grad_clip_(expected_g, expected_w, 0.01)
    gradclip.adaptive_grad_clip_(g, w, 0.01)
    np.testing.assert_array_equal(g, expected_g)
    np.testing.assert_array_equal(w, expected_w)


def test_agc_names_a_bad_gradient_before_reading_shapes() -> None:
    with pytest.raises(TypeError, match=r"^grads\[1\]"):
        gradclip.adaptive_grad_clip_([np.ones(3), object()], [np.ones(3), np.ones(2)])


def test_agc_result_total_is_the_norm_of_the_per_array_norms() -> None:
    rng = np.random.default_rng(3)
    g = [rng.standard_normal((5, 4)), rng.standard_normal(6)]
    w = [rng.standard_normal((5, 4)), rng.standard_normal(6)]
    r = gradclip.adaptive_grad_clip_([a.copy() for a in g], w, 0.01, return_result=True)
    e = ref.adaptive_grad_clip_([a.copy() for a in g], w, 0.01, return_result=True)
    assert r is not None and e is not None
    assert r.total_norm == pytest.approx(e.total_norm, rel=1e-12)
    np.testing.assert_allclose(r.tensor_norms, e.tensor_norms, rtol=1e-12)


# ---------------------------------------------------------------- per-example sums
class DLPackOnly:
    """A leaf that only a DLPack exporter describes (no buffer, no __array_interface__)."""

    def __init__(self, arr: np.ndarray) -> None:
        self._arr = arr

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._arr.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self._arr.__dlpack_device__()


@pytest.mark.skipif(
    tuple(int(x) for x in np.__version__.split(".")[:2]) < (2, 1),
    reason="NumPy 2.0 imports DLPack memory read-only: a DLPack-only leaf cannot be written",
)
@pytest.mark.parametrize("per_layer", [False, True])
def test_per_example_with_a_dlpack_only_leaf(per_layer: bool) -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, 3, 2)).astype(np.float32)
    b = rng.standard_normal((6, 4))
    expected_a, expected_b = a.copy(), b.copy()
    e_sums, e_n = ref.clip_per_example_([expected_a, expected_b], 0.5, per_layer=per_layer)
    sums, n = gradclip.clip_per_example_([DLPackOnly(a), b], 0.5, per_layer=per_layer)
    np.testing.assert_allclose(a, expected_a, rtol=1e-6)
    np.testing.assert_allclose(b, expected_b, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(n), np.asarray(e_n))
    for got, want in zip(sums, e_sums, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("layout", ["C", "F", "strided", "reversed"])
def test_per_example_sums_follow_the_element_order_of_every_layout(layout: str) -> None:
    rng = np.random.default_rng(9)
    data = rng.standard_normal((5, 3, 4))
    if layout == "F":
        g = np.asfortranarray(data)
    elif layout == "strided":
        g = np.repeat(data, 2, axis=2)[:, :, ::2]
    elif layout == "reversed":
        g = np.ascontiguousarray(data[::-1, ::-1])[::-1, ::-1]
    else:
        g = data.copy()
    expected = data.copy()
    e_sums, _ = ref.clip_per_example_([expected], 1.0)
    sums, _ = gradclip.clip_per_example_([g], 1.0)
    np.testing.assert_allclose(sums[0], e_sums[0], rtol=1e-12)
    np.testing.assert_allclose(g, expected, rtol=1e-12)


# ---------------------------------------------------------------- copies between layouts
def test_copy_between_two_strided_layouts_on_two_threads(threads: int) -> None:
    # >= 256 KiB so the copy runs on the OpenMP team; source and out both strided
    rng = np.random.default_rng(11)
    src = rng.standard_normal((256, 300)).astype(np.float32)[:, ::2]
    out = np.zeros((300, 256), np.float32).T[:, ::2]
    assert out.shape == src.shape
    before = src.copy()
    _clipped, norm = gradclip.clip_by_global_norm([src], 1.0, out=[out])
    e_clipped, e_norm = ref.clip_by_global_norm([src], 1.0)
    assert norm == pytest.approx(e_norm, rel=1e-12)
    np.testing.assert_array_equal(out, e_clipped[0])
    np.testing.assert_array_equal(src, before)


# ---------------------------------------------------------------- messages
def test_error_if_nonfinite_must_be_a_bool() -> None:
    g = np.ones(3)
    for call in (
        lambda: gradclip.clip_grad_norm_([g], 1.0, error_if_nonfinite=np.array([1, 0])),
        lambda: gradclip.get_total_norm([g], error_if_nonfinite=np.array([1, 0])),
    ):
        with pytest.raises(TypeError, match="error_if_nonfinite must be a bool, not ndarray"):
            call()
    assert np.all(g == 1.0)


def test_a_failing_foreign_dlpack_exporter_is_a_type_error_naming_the_position() -> None:
    class Broken:
        def __dlpack__(self, **kwargs: Any) -> Any:
            raise KeyError("no such device")

        def __dlpack_device__(self) -> Any:
            return (1, 0)

    with pytest.raises(TypeError, match=r"^grads\[1\]"):
        gradclip.clip_grad_norm_([np.ones(2), Broken()], 1.0)


# The stateful clippers read the threshold, clip, and only then record the step: a clip that
# fails (MemoryError from the engine, made to fail here at the one call that writes) leaves the
# gradients and the clipper's state exactly as they were, and the next successful step gives
# the same result as on a clipper that never saw the failure.
_CLIPPERS = {
    "autoclip-unbounded": lambda: gradclip.AutoClip(percentile=50.0),
    "autoclip-bounded-filling": lambda: gradclip.AutoClip(percentile=30.0, history_size=50),
    "autoclip-bounded-full": lambda: gradclip.AutoClip(percentile=70.0, history_size=4),
    "zclip-warmup": lambda: gradclip.ZClip(warmup_steps=20, max_grad_norm=1.0),
    "zclip-warmup-last-step": lambda: gradclip.ZClip(warmup_steps=7, max_grad_norm=1.0),
    "zclip-zscore": lambda: gradclip.ZClip(warmup_steps=3, max_grad_norm=None, z_thresh=0.5),
    "zclip-percentile": lambda: gradclip.ZClip(
        warmup_steps=3, max_grad_norm=None, z_thresh=0.1, mode="percentile"
    ),
}


@pytest.mark.parametrize("name", list(_CLIPPERS))
def test_a_failed_clip_leaves_the_clipper_state_unchanged(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    steps = [(rng.standard_normal(50) * (1.0 + i % 3)).astype(np.float32) for i in range(6)]
    failing, clean = _CLIPPERS[name](), _CLIPPERS[name]()
    for g in steps:  # the same history in both
        failing(g.copy())
        clean(g.copy())
    spike = (rng.standard_normal(50) * 40.0).astype(np.float32)  # a norm both clippers clip
    state = failing.state_dict()
    real = gradclip.adaptive._StatefulClipper._scale

    def fail(self: Any, s: Any, threshold: float, norm: float) -> float:
        raise MemoryError("injected")

    monkeypatch.setattr(gradclip.adaptive._StatefulClipper, "_scale", fail)
    g = spike.copy()
    with pytest.raises(MemoryError, match="injected"):
        failing(g)
    assert g.tobytes() == spike.tobytes()
    assert failing.state_dict() == state
    monkeypatch.setattr(gradclip.adaptive._StatefulClipper, "_scale", real)
    a, b = spike.copy(), spike.copy()
    ra, rb = failing(a), clean(b)
    assert ra.clipped and (ra.total_norm, ra.coef, ra.threshold) == (
        rb.total_norm,
        rb.coef,
        rb.threshold,
    )
    assert a.tobytes() == b.tobytes()
    assert failing.state_dict() == clean.state_dict()
