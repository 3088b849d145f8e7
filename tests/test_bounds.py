# Covers: the one bound-rounding rule (the design: a scalar bound applied to an array is the
# float64 value rounded once, to nearest with ties to even, to the element type, by gradclip's
# own code, whatever the NumPy and ml_dtypes versions). Every float16 and bfloat16 rounding
# midpoint, the doubles just below and above it and the two values around it, against the
# definition (gc_helpers.rounding_cases): through gradclip.reference's rounding, through
# clip_grad_value_ and GradientSet.clip_value_ on every CPU target (dense and strided), and a
# sample of float32 midpoints. test_cython_api.py runs the same cases through the C API.
from __future__ import annotations

import numpy as np
import pytest
from gc_helpers import LARGEST_BITS, dtype_of, needs_bf16, rounding_cases

import gradclip
from gradclip import reference as ref
from gradclip.reference._inputs import _round_to_dtype

NARROW = ["float16", pytest.param("bfloat16", marks=needs_bf16)]


def float32_bits() -> np.ndarray:
    """A reproducible sample of float32 bit patterns: every exponent, both ends of each
    binade, the subnormals' edge and the overflow threshold, plus random ones."""
    rng = np.random.default_rng(20261202)
    exps = np.arange(0, 255, dtype=np.int64) << 23
    ends = np.concatenate([exps, exps + 1, exps + (1 << 23) - 1, exps + (1 << 22)])
    random = rng.integers(0, LARGEST_BITS["float32"], size=20_000, dtype=np.int64)
    return np.unique(np.concatenate([ends, random, [0, 1, LARGEST_BITS["float32"]]]))


def cases(name: str) -> tuple[np.ndarray, np.ndarray]:
    return rounding_cases(name, float32_bits() if name == "float32" else None)


@pytest.mark.parametrize("name", [*NARROW, "float32"])
def test_reference_rounding_is_the_definition(name: str) -> None:
    dt = dtype_of(name)
    v, expected = cases(name)
    for sign in (1.0, -1.0):
        got = np.array([_round_to_dtype(sign * x, dt) for x in v.tolist()])
        bad = np.flatnonzero((got != sign * expected) | (np.signbit(got) != (sign < 0)))
        assert bad.size == 0, f"{bad.size} wrong, first {v[bad[:3]] * sign!r} -> {got[bad[:3]]!r}"


@pytest.mark.parametrize("name", [*NARROW, "float32"])
def test_far_out_of_range_rounds_to_inf(name: str) -> None:
    dt = dtype_of(name)
    for v in (1e39, 1e300, float.fromhex("0x1.fffffffffffffp1023")):
        assert _round_to_dtype(v, dt) == np.inf
        assert _round_to_dtype(-v, dt) == -np.inf
        buf = np.array([np.inf, -np.inf, 1.0], dtype=dt)
        gradclip.clip_grad_value_(buf, v)
        assert buf.astype(np.float64).tolist() == [np.inf, -np.inf, 1.0]
    for v in (5e-324, 1e-300):  # below half the smallest subnormal: zero, with v's sign
        assert _round_to_dtype(v, dt) == 0.0
        assert np.signbit(_round_to_dtype(-v, dt))
        buf = np.array([np.inf, -np.inf, 1.0], dtype=dt)
        gradclip.clip_grad_value_(buf, v)
        assert buf.astype(np.float64).tolist() == [0.0, 0.0, 0.0]
        assert np.signbit(buf.astype(np.float64)).tolist() == [False, True, False]


def test_reference_rounding_agrees_with_numpy_casts() -> None:
    # NumPy converts a double to float16 and to float32 in one rounding: an outside check
    # of the definition-based cases above (no such promise exists for ml_dtypes' bfloat16).
    for name in ("float16", "float32"):
        v, expected = cases(name)
        with np.errstate(over="ignore"):
            cast = v.astype(name).astype(np.float64)
        assert np.array_equal(cast, expected)


def clamp_each(target_call: object, buf: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Element values of buf = [inf, -inf, 0, ...] after clamping with each bound in turn."""
    out = np.empty((bounds.size, buf.size))
    fill = np.array(buf)
    for i, b in enumerate(bounds.tolist()):
        buf[...] = fill
        target_call(b)  # type: ignore[operator]
        out[i] = buf.astype(np.float64)
    return out


def check_clamped(out: np.ndarray, bounds: np.ndarray, expected: np.ndarray) -> None:
    bad = np.flatnonzero((out[:, 0] != expected) | (out[:, 1] != -expected))
    assert bad.size == 0, (
        f"{bad.size} bounds clamp wrong, first {bounds[bad[:3]]!r} -> {out[bad[:3], 0]!r} "
        f"(expected {expected[bad[:3]]!r})"
    )
    assert not out[:, 2].any()


@pytest.mark.parametrize("name", NARROW)
def test_clip_grad_value_bounds_at_every_midpoint(name: str, cpu_target: str) -> None:
    dt = dtype_of(name)
    bounds, expected = cases(name)
    buf = np.array([np.inf, -np.inf, 0.0], dtype=dt)
    out = clamp_each(lambda b: gradclip.clip_grad_value_(buf, b), buf, bounds)
    check_clamped(out, bounds, expected)


@pytest.mark.parametrize("name", NARROW)
def test_gradient_set_and_strided_bounds_at_every_midpoint(name: str) -> None:
    dt = dtype_of(name)
    bounds, expected = cases(name)
    buf = np.array([np.inf, -np.inf, 0.0], dtype=dt)
    gs = gradclip.GradientSet([buf])
    check_clamped(clamp_each(gs.clip_value_, buf, bounds), bounds, expected)
    # the strided path (a view with gaps) rounds the same way; every 7th case keeps it short
    base = np.zeros(6, dtype=dt)
    view = base[::2]
    view[...] = [np.inf, -np.inf, 0.0]
    some = slice(None, None, 7)
    out = clamp_each(lambda b: gradclip.clip_grad_value_(view, b), view, bounds[some])
    check_clamped(out, bounds[some], expected[some])
    assert not base[1::2].astype(np.float64).any()


def test_float32_and_float64_bounds(cpu_target: str) -> None:
    bounds, expected = cases("float32")
    buf = np.array([np.inf, -np.inf, 0.0], dtype=np.float32)
    check_clamped(
        clamp_each(lambda b: gradclip.clip_grad_value_(buf, b), buf, bounds), bounds, expected
    )
    # float64 takes the bound as it is
    buf64 = np.array([np.inf, -np.inf, 0.0])
    out = clamp_each(lambda b: gradclip.clip_grad_value_(buf64, b), buf64, bounds)
    check_clamped(out, bounds, bounds)


@pytest.mark.parametrize("name", NARROW)
def test_reference_clip_grad_value_uses_the_rule(name: str) -> None:
    # the reference's clamp, not only its helper, on a sample of the cases
    dt = dtype_of(name)
    bounds, expected = cases(name)
    some = slice(None, None, 101)
    buf = np.array([np.inf, -np.inf, 0.0], dtype=dt)
    out = clamp_each(lambda b: ref.clip_grad_value_(buf, b), buf, bounds[some])
    check_clamped(out, bounds[some], expected[some])
