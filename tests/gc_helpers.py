# Shared helpers for the test suite (not a test module): dtypes (bfloat16 optional), array
# layouts (C, F, reversed, strided, unaligned), memory snapshots for "nothing changed" checks,
# value comparisons (exact, ulp-based) and a context manager switching the compiled path's CPU
# target and thread count.
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

import gradclip
from gradclip import reference as ref

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - exercised only where ml_dtypes is missing
    ml_dtypes = None

HAVE_BF16 = ml_dtypes is not None
BF16 = np.dtype(ml_dtypes.bfloat16) if ml_dtypes is not None else None

DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")
needs_bf16 = pytest.mark.skipif(not HAVE_BF16, reason="ml_dtypes (bfloat16) is not installed")

# Parameter lists: the bfloat16 entries skip cleanly when ml_dtypes is absent.
DTYPE_PARAMS = [
    pytest.param(name, marks=needs_bf16) if name == "bfloat16" else name for name in DTYPE_NAMES
]

LAYOUTS = ("C", "F", "reversed", "strided", "unaligned")

# Value written in the gaps of strided layouts: reading it changes a norm, writing it shows in
# the snapshot of the base buffer (exact in every dtype, finite in float16).
GAP_SENTINEL = 1000.0

MANTISSA_BITS = {"float16": 10, "bfloat16": 7, "float32": 23, "float64": 52}
MIN_EXPONENT = {"float16": -14, "bfloat16": -126, "float32": -126, "float64": -1022}

# The exhaustive run (GRADCLIP_EXHAUSTIVE=1, or -m exhaustive, which conftest.py turns into
# it) adds the full products of the grids that the default run samples; without it those
# cases are not even collected.
EXHAUSTIVE = os.environ.get("GRADCLIP_EXHAUSTIVE") == "1"


def spread(rows: Iterable[str], cases: Sequence[Any], per_row: int) -> list[Any]:
    """pytest params (row, *case values) for the product of two factors that barely interact
    (the operations, which all reach the same check, x the inputs it must refuse): each row
    meets about ``per_row`` cases and each case about len(rows) * per_row / len(cases) rows,
    rotating (row i takes the cases j with j = i mod m), so that no row and no case is left
    out; under EXHAUSTIVE the rest of the product too, marked exhaustive. ``cases`` may be
    pytest.param objects (their ids and marks are kept) or plain values."""
    rows = list(rows)
    m = max(1, -(-len(cases) // per_row))  # ceil: every row takes at least per_row cases
    assert len(rows) >= m, "fewer rows than the rotation needs: some cases would be left out"
    out = []
    for i, row in enumerate(rows):
        for j, case in enumerate(cases):
            sampled = (j - i) % m == 0
            if not (sampled or EXHAUSTIVE):
                continue
            if isinstance(case, type(pytest.param(None))):
                values, marks, ident = tuple(case.values), list(case.marks), case.id
            else:
                values, marks, ident = (case,), [], None
            if not sampled:
                marks.append(pytest.mark.exhaustive)
            ident = f"{row}-{ident if ident is not None else j}"
            out.append(pytest.param(row, *values, marks=marks, id=ident))
    return out


# Every compiled path configuration the machine supports: (cpu target, thread count). A
# build without OpenMP (CMake found none) runs every call on one thread.
THREAD_COUNTS = (1, 2) if gradclip._core.have_openmp() else (1,)
# Thread count major: each_config() then changes the thread count once per pass (a change to
# more than one thread starts the OpenMP team, milliseconds on a busy machine), the target
# once per configuration.
CONFIGS = [(t, n) for n in THREAD_COUNTS for t in gradclip.available_cpu_targets()]


def dtype_of(name: str) -> np.dtype[Any]:
    """numpy dtype for a name from DTYPE_NAMES (skips the test for bfloat16 without ml_dtypes)."""
    if name == "bfloat16":
        if BF16 is None:
            pytest.skip("ml_dtypes (bfloat16) is not installed")
        return BF16
    return np.dtype(name)


def finfo(dtype: np.dtype[Any]) -> Any:
    """np.finfo, or ml_dtypes.finfo for bfloat16 (NumPy's does not know it)."""
    if BF16 is not None and dtype == BF16:
        return ml_dtypes.finfo(BF16)
    return np.finfo(dtype)


def dtype_name(dtype: np.dtype[Any]) -> str:
    return "bfloat16" if BF16 is not None and dtype == BF16 else np.dtype(dtype).name


@contextlib.contextmanager
def configured(target: str, threads: int) -> Iterator[None]:
    """Run the compiled path on ``target`` with ``threads`` threads, restoring both afterwards."""
    old_target, old_threads = gradclip.cpu_target(), gradclip.get_num_threads()
    try:
        _switch(target, threads)
        yield
    finally:
        _switch(old_target, old_threads)


def _switch(target: str, threads: int) -> None:
    """Switch the compiled path to ``target`` and ``threads``; the thread count only when it
    changes (setting it warms the OpenMP team, which is the slow part of a switch)."""
    gradclip._set_cpu_target(target)
    if gradclip.get_num_threads() != threads:
        gradclip.set_num_threads(threads)
    assert gradclip.cpu_target() == target
    assert gradclip.get_num_threads() == threads


def each_config() -> Iterator[tuple[str, int]]:
    """Iterate over CONFIGS with the compiled path switched to each one in turn (from one to
    the next directly), restoring the target and thread count at the end."""
    old_target, old_threads = gradclip.cpu_target(), gradclip.get_num_threads()
    try:
        for target, threads in CONFIGS:
            _switch(target, threads)
            yield target, threads
    finally:
        _switch(old_target, old_threads)


# ---------------------------------------------------------------------------------------------
# values and layouts
# ---------------------------------------------------------------------------------------------


def random_values(seed: int, shape: Sequence[int], scale: float | None = None) -> np.ndarray:
    """float64 values: normal, with a magnitude drawn per array (1e-2..1e2) unless given."""
    rng = np.random.default_rng(seed)
    if scale is None:
        scale = 10.0 ** rng.uniform(-2, 2)
    return rng.standard_normal(tuple(shape)) * scale


def cast(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(values).astype(dtype)


def make_array(values: np.ndarray, dtype: np.dtype[Any], layout: str) -> np.ndarray:
    """A fresh writeable array holding ``values`` (rounded to ``dtype``) in ``layout``.

    C / F: dense; reversed: a dense block seen with negative strides on every axis; strided:
    every other element along the last axis of a larger buffer whose gaps hold GAP_SENTINEL
    (rows of 2n + 1 elements, so the axes do not merge);
    unaligned: dense C data starting at an odd address inside a bytearray.
    """
    values = np.asarray(values)
    shape = values.shape
    if layout == "C":
        out = np.empty(shape, dtype)
    elif layout == "F":
        out = np.empty(shape, dtype, order="F")
    elif layout == "reversed":
        out = np.empty(shape, dtype)[(*(slice(None, None, -1),) * len(shape), Ellipsis)]
    elif layout == "strided":
        if not shape:
            out = np.empty(shape, dtype)
        else:
            # 2n + 1, not 2n: the rows' stride is then no multiple of the elements', so the
            # axes cannot merge into one strided run and the walk over rows is exercised
            base = np.empty((*shape[:-1], 2 * shape[-1] + 1), dtype)
            base[...] = cast(np.array(GAP_SENTINEL), dtype)
            out = base[..., : 2 * shape[-1] : 2]
    elif layout == "unaligned":
        n = math.prod(shape)
        buf = bytearray(n * dtype.itemsize + 1)
        out = np.frombuffer(buf, dtype=dtype, count=n, offset=1).reshape(shape)
        assert out.flags.writeable
        assert dtype.itemsize == 1 or not out.flags.aligned or n == 0
    else:  # pragma: no cover
        raise AssertionError(layout)
    out[...] = cast(values, dtype)
    return out


def _owner(arr: np.ndarray) -> Any:
    base: Any = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


def snapshot(objects: Sequence[Any]) -> list[bytes]:
    """Bytes of every array (and of the buffer it lives in) for an "unchanged" check."""
    out: list[bytes] = []
    for obj in objects:
        if obj is None:
            continue
        arr = obj if isinstance(obj, np.ndarray) else None
        if arr is None:
            with contextlib.suppress(Exception):
                arr = np.asarray(obj, copy=False)
        if arr is None:
            with contextlib.suppress(Exception):
                arr = np.from_dlpack(obj)
        if arr is None:
            out.append(repr(obj).encode())
            continue
        out.append(arr.tobytes())
        owner = _owner(arr)
        if isinstance(owner, np.ndarray):
            out.append(owner.tobytes())
        elif isinstance(owner, (bytearray, bytes, memoryview)):
            out.append(bytes(owner))
    return out


def copy_like(arr: np.ndarray, layout: str) -> np.ndarray:
    """A fresh array with the same values and dtype as ``arr``, in ``layout``."""
    return make_array_raw(np.array(arr), layout)


def make_array_raw(data: np.ndarray, layout: str) -> np.ndarray:
    """Like make_array but takes values already in their dtype (copied bit for bit)."""
    out = make_array(np.zeros(data.shape), data.dtype, layout)
    out[...] = data
    return out


# ---------------------------------------------------------------------------------------------
# comparisons
# ---------------------------------------------------------------------------------------------


def as_f64(a: Any) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def assert_same_values(actual: Any, expected: Any, what: str = "") -> None:
    """Equal values, equal sign of zero, NaN where NaN (payload/sign of NaN not compared)."""
    a, e = as_f64(actual), as_f64(expected)
    assert a.shape == e.shape, what
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), f"{what}: NaN positions differ"
    ok = ~nan_a
    bad = ok & ((a != e) | (np.signbit(a) != np.signbit(e)))
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        raise AssertionError(
            f"{what}: {int(bad.sum())} values differ, first at flat {i.tolist()}: "
            f"{a.ravel()[i].tolist()} vs {e.ravel()[i].tolist()}"
        )


def assert_ulp_close(
    actual: Any, expected: Any, dtype: np.dtype[Any], ulps: float, what=""
) -> None:
    """Within ``ulps`` units in the last place of ``dtype``; NaN and inf must match exactly."""
    name = dtype_name(dtype)
    a, e = as_f64(actual), as_f64(expected)
    assert a.shape == e.shape, what
    assert np.array_equal(np.isnan(a), np.isnan(e)), f"{what}: NaN positions differ"
    inf_a, inf_e = np.isinf(a), np.isinf(e)
    assert np.array_equal(inf_a, inf_e), f"{what}: inf positions differ"
    assert np.array_equal(a[inf_a], e[inf_e]), f"{what}: inf signs differ"
    fin = np.isfinite(a)
    mag = np.maximum(np.abs(a[fin]), np.abs(e[fin]))
    with np.errstate(divide="ignore"):
        exp = np.where(mag > 0, np.floor(np.log2(np.where(mag > 0, mag, 1.0))), MIN_EXPONENT[name])
    ulp = np.exp2(np.maximum(exp, MIN_EXPONENT[name]) - MANTISSA_BITS[name])
    diff = np.abs(a[fin] - e[fin])
    bad = diff > ulps * ulp
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        raise AssertionError(
            f"{what}: {int(bad.sum())} values differ by more than {ulps} ulp ({name}): "
            f"{a[fin][i].tolist()} vs {e[fin][i].tolist()}"
        )


def norm_rtol(p: float) -> float:
    """Tolerance for compiled vs reference norms (the contract: 1e-12; p=inf exact)."""
    return 0.0 if math.isinf(p) else 1e-12


def assert_norm_close(actual: float, expected: float, p: float, what: str = "") -> None:
    assert isinstance(actual, float), f"{what}: expected a Python float, got {type(actual)}"
    if math.isnan(expected):
        assert math.isnan(actual), f"{what}: {actual!r} != nan"
        return
    if math.isinf(expected) or expected == 0.0 or math.isinf(p):
        assert actual == expected, f"{what}: {actual!r} != {expected!r}"
        return
    rel = abs(actual - expected) / expected
    # A subnormal norm has fewer significant bits (the contract covers normal results only):
    # allow a few units of the smallest subnormal on top of the relative tolerance.
    ok = abs(actual - expected) <= norm_rtol(p) * expected + 16 * 5e-324
    assert ok, f"{what}: {actual!r} vs {expected!r} (rel {rel:.3g}, p={p})"


def assert_norms_close(actual: np.ndarray, expected: np.ndarray, p: float, what: str = "") -> None:
    assert isinstance(actual, np.ndarray), f"{what}: expected ndarray, got {type(actual)}"
    assert actual.dtype == np.float64, what
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    for i, (a, e) in enumerate(
        zip(actual.ravel().tolist(), expected.ravel().tolist(), strict=True)
    ):
        assert_norm_close(a, e, p, f"{what}[{i}]")


def expected_scaled(arr: np.ndarray, max_norm: float, norm: float, eps: float = 1e-6) -> np.ndarray:
    """The documented write for a clip by ``norm``: what ``arr`` must hold afterwards."""
    out = np.array(arr)  # C copy, same dtype
    ref.clip_grads_with_norm_(out, max_norm, norm, eps=eps)
    return out


def bits(x: float) -> bytes:
    return np.float64(x).tobytes()


def ulps_for(dtype: np.dtype[Any]) -> float:
    """Allowed ulps between compiled and reference writes (coefficients may differ in the last
    bit of a float64, which can move a float32 product by one ulp and a float16/bfloat16 result
    by one ulp after rounding)."""
    return {"float64": 8192.0, "float32": 2.0, "float16": 1.0, "bfloat16": 1.0}[dtype_name(dtype)]


# ---------------------------------------------------------------------------------------------
# bound rounding: every float16 / bfloat16 rounding midpoint
# ---------------------------------------------------------------------------------------------


def _decode(name: str, bits: np.ndarray) -> np.ndarray:
    """float64 values of float16 / bfloat16 / float32 bit patterns, decoded without ml_dtypes."""
    if name == "float16":
        return bits.astype(np.uint16).view(np.float16).astype(np.float64)
    if name == "bfloat16":  # the top half of a float32
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


# bit pattern of the largest finite positive value; the next pattern is +inf
LARGEST_BITS = {"float16": 0x7BFF, "bfloat16": 0x7F7F, "float32": 0x7F7FFFFF}


def rounding_cases(name: str, bits: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(v, expected): float64 bounds at and next to rounding midpoints of type ``name``, and
    each one rounded once to nearest, ties to even, as the definition gives it.

    For each pair of neighbouring non-negative values a < b of the type (bit patterns k and
    k + 1; every one for the 16-bit types, the patterns ``bits`` for float32), v runs over
    the midpoint (a + b) / 2 (exact in float64), the doubles just below and just above it, a
    and b themselves: they round to the even one of a and b, to a, to b, to a and to b. The
    last pair is (largest finite, +inf), whose midpoint is the overflow threshold (the tie
    goes to inf, as its pattern is even). Positive v only: negating v negates the result.
    """
    if bits is None:
        bits = np.arange(LARGEST_BITS[name] + 1, dtype=np.int64)
    k = np.asarray(bits, dtype=np.int64)
    a = _decode(name, k)
    b = _decode(name, k + 1)
    with np.errstate(over="ignore"):
        top = k == LARGEST_BITS[name]
        # the "value" after the largest finite one, for the midpoint: 2**(emax + 1)
        b_mid = np.where(top, np.ldexp(1.0, 16 if name == "float16" else 128), b)
        mid = a + (b_mid - a) / 2.0
    even = np.where(k % 2 == 0, a, b)
    v = np.concatenate([mid, np.nextafter(mid, 0.0), np.nextafter(mid, np.inf), a, b])
    expected = np.concatenate([even, a, b, a, b])
    keep = np.isfinite(v)  # b = +inf for the top pattern is no bound
    return v[keep], expected[keep]
