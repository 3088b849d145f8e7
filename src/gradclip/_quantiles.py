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
#
# A clipper reads the percentile the history will have once this step's norm is in it
# (``quantile_with``) without changing anything, clips, and only then records the norm (``add``,
# ``remove``): the clip is the step that can fail (MemoryError), and the history must not change
# when it does. ``reserve`` grows the lists first, so that recording the norm after the clip
# allocates nothing and cannot fail either.


def _reserve(values: list[float]) -> None:
    """Room for one more element: CPython grows a list's storage on an append that finds it
    full and shrinks it only below half, so after this the next append does not allocate."""
    values.append(0.0)
    values.pop()


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

    def reserve(self) -> None:
        _reserve(self._sorted)

    def quantile_with(self, x: float, drop: float | None = None) -> float:
        """``quantile()`` once ``x`` is added (and ``drop``, a value held, removed), without
        changing anything: the same order statistics, so the same bits."""
        s = self._sorted
        gone = len(s) if drop is None else bisect.bisect_left(s, drop)

        def kept(j: int) -> float:  # the j-th of s without the dropped value
            return s[j] if j < gone else s[j + 1]

        # where insort would put x once drop is gone (among equal values the position does
        # not change the values read)
        at = bisect.bisect_right(s, x)
        at -= 1 if gone < at else 0
        n = len(s) + 1 - (drop is not None)

        def order(k: int) -> float:
            return kept(k) if k < at else x if k == at else kept(k - 1)

        below = _kept(n, self._q) - 1
        b = order(below + 1) if below + 1 < n else math.nan
        return _interpolate(n, self._q, order(below), b)

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

    def reserve(self) -> None:
        # add() grows each heap by at most one element at any moment (a push, then at most
        # one move across, as _kept changes by at most one when n does)
        _reserve(self._lower)
        _reserve(self._upper)

    def quantile_with(self, x: float) -> float:
        """``quantile()`` once ``x`` is added, without changing anything.

        The order statistics needed after the add sit within one place of the split (``_kept``
        moves by at most one when n grows by one), so the two largest of the lower heap (its
        root and the larger of its children), the two smallest of the upper heap and ``x``
        hold them: sorted, they are the history's order statistics from position
        ``keep - (lower values taken)`` on."""
        lower, upper = self._lower, self._upper
        n = len(lower) + len(upper) + 1
        if n == 1:
            return x
        keep = len(lower)
        low = [-lower[0]] + ([-min(lower[1:3])] if len(lower) > 1 else [])
        high = upper[:1] + ([min(upper[1:3])] if len(upper) > 1 else [])
        window = sorted([*low, *high, x])
        start = keep - len(low)
        below = _kept(n, self._q) - 1
        b = window[below + 1 - start] if below + 1 < n else math.nan
        return _interpolate(n, self._q, window[below - start], b)
