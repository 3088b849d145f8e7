# Covers: an array of more than 2**31 elements, opt-in because it needs
# about 4.3 GB: run with GRADCLIP_HUGE=1 python -m pytest -m huge -s tests/test_huge.py.
# One float16 array of 2**31 + 2**20 + 3 elements, filled with multiples of 1/4 whose pattern
# depends on the index (and doubles past element 2**31, so a 32-bit index that wrapped around
# would read the head twice and give another sum); the largest magnitude is the last element.
#   - get_total_norm for p = 1, 2 and inf, tensor_norms and the dense reversed view equal a
#     chunked reference: a histogram of the float16 bit patterns built 16M elements at a
#     time, then math.fsum of count * |value|**p in float64 (every term exact, so the
#     reference is correctly rounded and "equal" means equal); p = 3 on the last 2**26
#     elements (the generic path, one pow() per element, is too slow for the whole array);
#   - a strided view (every third element: byte offsets up to 4.3e9) against the same;
#   - clip_grad_norm_ writes every element, checked chunk by chunk against the documented
#     float16 arithmetic (float32 product, rounded once), including both sides of 2**31 and
#     the last element; the norm afterwards is max_norm up to float16 rounding;
#   - clip_grad_value_ clamps past 2**31.
# No float64 copy of the array is made. Prints the time of each step and the peak RSS (run
# with -s to see them).
from __future__ import annotations

import functools
import math
import os
import resource
import time
from collections.abc import Iterator

import numpy as np
import pytest

import gradclip

pytestmark = [
    pytest.mark.huge,
    pytest.mark.skipif(
        os.environ.get("GRADCLIP_HUGE") != "1",
        reason="opt-in (about 4.3 GB of memory and a minute): set GRADCLIP_HUGE=1",
    ),
]

N = 2**31 + 2**20 + 3
CHUNK = 1 << 24  # 2**31 is a chunk boundary: chunks past it hold the doubled values
PERIOD = 2**20 + 1  # odd, so the pattern does not repeat with the chunks
VALUES = np.arange(-8, 9, dtype=np.float64) / 4  # exact in float16, squares and cubes exact


@functools.cache
def _block(scale: float) -> np.ndarray:
    """The pattern, long enough that any chunk is one slice of it (a copy, not arithmetic)."""
    i = np.arange(CHUNK + PERIOD, dtype=np.int64)
    return (VALUES[(i * 7 + (i >> 10)) % VALUES.size] * scale).astype(np.float16)


def pattern(start: int, stop: int) -> np.ndarray:
    """The float16 values of elements [start, stop) (within one chunk); past element 2**31
    they double, so a 32-bit index that wrapped around would read the head's values."""
    offset = start % PERIOD
    out = _block(2.0 if start >= 2**31 else 1.0)[offset : offset + stop - start].copy()
    if stop == N:
        out[-1] = -64.0  # the unique largest magnitude, at the very end
    return out


def chunks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, CHUNK):
        yield start, min(start + CHUNK, n)


_F16_VALUES = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)


def reference_norms(a: np.ndarray, ps: tuple[float, ...] = (1.0, 2.0, math.inf)) -> dict:
    """p-norms of the float16 array ``a`` from a histogram of its bit patterns, built chunk by
    chunk: the counts are exact, and so is every count * |value|**p term in float64, so
    math.fsum gives the correctly rounded sum."""
    counts = np.zeros(1 << 16, dtype=np.int64)
    for start, stop in chunks(a.shape[0]):
        counts += np.bincount(a[start:stop].view(np.uint16), minlength=1 << 16)
    present = counts > 0
    values = np.abs(_F16_VALUES[present])
    n = counts[present].astype(np.float64)
    out = {}
    for p in ps:
        if math.isinf(p):
            out[p] = float(values.max())
        else:
            s = math.fsum((n * values**p).tolist())
            out[p] = math.sqrt(s) if p == 2.0 else s ** (1.0 / p)
    return out


def report(step: str, t0: float) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"[huge] {step}: {time.perf_counter() - t0:.2f} s, peak RSS so far {peak:.2f} GiB")


@pytest.fixture(scope="module")
def huge() -> Iterator[np.ndarray]:
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
    if available * 1024 < 7 * 2**30:
        pytest.skip("needs about 7 GB of available memory")
    t0 = time.perf_counter()
    a = np.empty(N, dtype=np.float16)
    for start, stop in chunks(N):
        a[start:stop] = pattern(start, stop)
    report(f"filled {N} float16 elements ({a.nbytes / 1e9:.2f} GB)", t0)
    yield a
    del a


def test_huge_norms(huge: np.ndarray) -> None:
    a = huge
    t0 = time.perf_counter()
    expected = reference_norms(a)
    report("chunked reference (histogram of the float16 values)", t0)
    assert expected[math.inf] == 64.0
    for p, want in expected.items():
        t0 = time.perf_counter()
        got = gradclip.get_total_norm(a, p)
        report(f"get_total_norm p={p}", t0)
        assert got == want, (p, got, want)
    t0 = time.perf_counter()
    each = gradclip.tensor_norms([a, None, np.ones(5, np.float16)])
    report("tensor_norms", t0)
    assert each.tolist() == [expected[2.0], 0.0, math.sqrt(5.0)]
    t0 = time.perf_counter()
    assert gradclip.get_total_norm(a[::-1]) == expected[2.0]
    report("get_total_norm of the reversed view", t0)
    # The generic p path (no SIMD kernel: one pow() per element) is slow: its last 2**26
    # elements, which start past 2**31 and include the last one.
    tail = a[N - 2**26 :]
    want3 = reference_norms(tail, (3.0,))[3.0]
    t0 = time.perf_counter()
    got3 = gradclip.get_total_norm(tail, 3.0)
    report("get_total_norm p=3 of the last 2**26 elements", t0)
    assert got3 == pytest.approx(want3, rel=1e-15, abs=0.0)  # pow() for the root: last bit


def test_huge_strided_view(huge: np.ndarray) -> None:
    view = huge[1::3]  # byte offsets past 2**32, a non-contiguous path
    t0 = time.perf_counter()
    expected = reference_norms(view)
    report("chunked reference of a[1::3]", t0)
    t0 = time.perf_counter()
    got = gradclip.get_total_norm(view)
    report("get_total_norm of a[1::3]", t0)
    assert got == expected[2.0]
    assert gradclip.get_total_norm(view, math.inf) == expected[math.inf]


def test_huge_clip(huge: np.ndarray) -> None:
    a = huge
    norm = gradclip.get_total_norm(a)
    max_norm = norm / 3.0
    t0 = time.perf_counter()
    returned = gradclip.clip_grad_norm_(a, max_norm)
    report("clip_grad_norm_", t0)
    assert returned == norm
    coef = np.float32(max_norm / (norm + 1e-6))
    # every float16 value -> what the documented arithmetic makes of it (float32 product,
    # rounded once to float16), as a table over the 65536 bit patterns
    with np.errstate(all="ignore"):
        table = (_F16_VALUES.astype(np.float32) * coef).astype(np.float16).view(np.uint16)
    t0 = time.perf_counter()
    for start, stop in chunks(N):
        want = table[pattern(start, stop).view(np.uint16)]
        got = a[start:stop].view(np.uint16)
        if not np.array_equal(got, want):
            bad = np.flatnonzero(got != want)[:5] + start
            raise AssertionError(f"elements {bad.tolist()} were not clipped as documented")
    report("checked every written element", t0)
    assert a[N - 1] == np.float16(np.float32(-64.0) * coef)
    after = gradclip.get_total_norm(a)
    assert after == pytest.approx(max_norm, rel=2e-3)  # float16 rounding of each element
    t0 = time.perf_counter()
    gradclip.clip_grad_value_(a, 0.5)
    report("clip_grad_value_", t0)
    assert a[N - 1] == -0.5 and a[2**31 : 2**31 + 1000].max() <= 0.5
    assert gradclip.get_total_norm(a, math.inf) == 0.5
