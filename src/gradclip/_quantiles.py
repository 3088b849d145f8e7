"""AutoClip's percentile of a growing history, without sorting it every step."""

from __future__ import annotations

import bisect
import heapq
import math

__all__ = ["SortedNorms", "SplitHeaps"]

# AutoClip's percentile is NumPy's default (``method="linear"``): the same operations in the
# same order as ``np.percentile(history, percentile)``, so the result has the same bits. Only the
# two order statistics around position ``(n - 1) * q`` are needed, which the two structures below
# give without sorting the history every step.


def _kept(n: int, q: float) -> int:
    """How many of the smallest of ``n`` values the percentile ``q`` in (0, 1] reads up to."""
    virtual = (n - 1) * q
    return n if virtual >= n - 1 else math.floor(virtual) + 1


def _interpolate(n: int, q: float, a: float, b: float) -> float:
    """NumPy's linear interpolation between the order statistics ``a <= b`` around
    ``(n - 1) * q`` (``b`` unused when that position is the last one)."""
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return a
    t = virtual - math.floor(virtual)
    d = b - a
    # NumPy interpolates from the nearer neighbour (its _lerp), which keeps it monotonic in t
    return b - d * (1.0 - t) if t >= 0.5 else a + d * t


class SortedNorms:
    """A bounded history kept sorted: a list insertion and a deletion per step, an
    O(history_size) memmove (about 20 µs for 100,000 norms)."""

    __slots__ = ("_q", "_sorted")

    def __init__(self, norms: list[float], q: float) -> None:
        self._q = q
        self._sorted = sorted(norms)

    def add(self, x: float) -> None:
        bisect.insort(self._sorted, x)

    def remove(self, x: float) -> None:
        del self._sorted[bisect.bisect_left(self._sorted, x)]

    def quantile(self) -> float:
        n = len(self._sorted)
        below = _kept(n, self._q) - 1
        b = self._sorted[below + 1] if below + 1 < n else math.nan
        return _interpolate(n, self._q, self._sorted[below], b)


class SplitHeaps:
    """An unbounded history split at the percentile's position: a max-heap of the ``_kept``
    smallest norms and a min-heap of the others, so each step costs O(log n) however long the
    run (a sorted list would cost a memmove of the whole history: 0.25 ms at a million)."""

    __slots__ = ("_lower", "_q", "_upper")

    def __init__(self, norms: list[float], q: float) -> None:
        self._q = q
        ordered = sorted(norms)
        keep = _kept(len(ordered), q)
        self._lower = [-x for x in reversed(ordered[:keep])]  # descending: a valid max-heap
        self._upper = ordered[keep:]  # ascending: a valid min-heap

    def add(self, x: float) -> None:
        lower, upper = self._lower, self._upper
        if lower and x <= -lower[0]:
            heapq.heappush(lower, -x)
        else:
            heapq.heappush(upper, x)
        keep = _kept(len(lower) + len(upper), self._q)
        while len(lower) > keep:
            heapq.heappush(upper, -heapq.heappop(lower))
        while len(lower) < keep:
            heapq.heappush(lower, -heapq.heappop(upper))

    def quantile(self) -> float:
        n = len(self._lower) + len(self._upper)
        b = self._upper[0] if self._upper else math.nan
        return _interpolate(n, self._q, -self._lower[0], b)
