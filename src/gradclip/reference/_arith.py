"""Norms in float64 (math.fsum) and the documented writes (gradclip.reference)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ._inputs import _BLOCK, _SMALL_SUM, Array, Float64Array

# --------------------------------------------------------------------------------------------
# norms
# --------------------------------------------------------------------------------------------


def _clipped(coef: float) -> bool:
    """Whether a step with applied coefficient ``coef`` clipped: it wrote (below 1), or it
    wrote NaN (a NaN coefficient, which ``coef < 1`` would call not clipped)."""
    return not coef >= 1.0


def _float64_blocks(arrays: Iterable[Array]) -> Iterator[Float64Array]:
    """Yield every element of ``arrays`` exactly converted to float64, block by block."""
    for arr in arrays:
        flat = np.ravel(arr, order="K")
        for start in range(0, flat.size, _BLOCK):
            yield flat[start : start + _BLOCK].astype(np.float64)


def _abs_max(arrays: Sequence[Array]) -> float:
    """max |x| over all elements (NaN if any element is NaN, 0.0 when there are none)."""
    result = 0.0
    for block in _float64_blocks(arrays):
        if block.size:
            m = float(np.max(np.abs(block)))
            if math.isnan(m):
                return math.nan
            result = max(result, m)
    return result


def _power_sum(
    arrays: Sequence[Array], p: float, exponent_shift: int, divisor: float | None = None
) -> float:
    """math.fsum of |x * 2**-exponent_shift| ** p (or |x / divisor| ** p) over all elements."""

    def terms() -> Iterator[float]:
        with np.errstate(all="ignore"):
            for block in _float64_blocks(arrays):
                if divisor is not None:
                    y = np.abs(block / divisor)
                elif exponent_shift:
                    y = np.abs(np.ldexp(block, -exponent_shift))
                else:
                    y = np.abs(block)
                if p == 1.0:
                    t = y
                elif p == 2.0:
                    t = y * y
                else:
                    t = np.power(y, p)
                yield from t.tolist()

    try:
        return math.fsum(terms())
    except OverflowError:  # fsum's "intermediate overflow": all terms are >= 0, so s > max
        return math.inf


def _root(s: float, p: float) -> float:
    """s ** (1/p) without Python's OverflowError (inf instead)."""
    if p == 1.0:
        return s
    if p == 2.0:
        return math.sqrt(s)
    try:
        return float(s ** (1.0 / p))
    except OverflowError:
        return math.inf


def _pnorm(arrays: Sequence[Array], p: float) -> float:
    """p-norm of all elements of ``arrays`` together, in float64.

    p = inf: max |x|. Otherwise (sum |x|**p) ** (1/p) with math.fsum; NaN if any element is
    NaN, inf if any element is infinite. When the plain sum overflows or is below 2**-969 the
    sum is redone on elements scaled by 2**-e, where 2**e is the power of two just above max |x|
    (exact: scaling by a power of two only moves the exponent), and the root is scaled back.
    For p < 1 (always) and p > 512 (when the plain sum lost range) the ratio form
    max * (sum (|x| / max)**p) ** (1/p) is used instead: the largest term is exactly 1, so the
    result is never below max |x|; for p < 1 the plain sum's rounding error would be
    multiplied by 1/p in the root, and for large p even (max * 2**-e) ** p underflows.
    """
    m = _abs_max(arrays)
    if math.isnan(m) or math.isinf(m) or m == 0.0 or math.isinf(p):
        return m
    if p < 1.0:
        return _root(_power_sum(arrays, p, 0, divisor=m), p) * m
    s = _power_sum(arrays, p, 0)
    if math.isfinite(s) and s >= _SMALL_SUM:
        return _root(s, p)
    if p > 512.0:
        return _root(_power_sum(arrays, p, 0, divisor=m), p) * m
    e = math.frexp(m)[1]  # m = f * 2**e with 0.5 <= f < 1
    root = _root(_power_sum(arrays, p, e), p)
    try:
        return math.ldexp(root, e)
    except OverflowError:
        return math.inf


def _norms_each(arrays: Sequence[Array | None], p: float) -> Float64Array:
    return np.array([0.0 if a is None else _pnorm([a], p) for a in arrays], dtype=np.float64)


def _present(arrays: Sequence[Array | None]) -> list[Array]:
    return [a for a in arrays if a is not None]


# --------------------------------------------------------------------------------------------
# writes
# --------------------------------------------------------------------------------------------


def _coefficient(max_norm: float, norm: float, eps: float) -> float:
    """max_norm / (norm + eps) with IEEE semantics (x/0 -> inf, NaN propagates)."""
    denominator = norm + eps
    if denominator == 0.0:
        return math.inf
    return max_norm / denominator


def _scale(arr: Array, coef: float) -> None:
    """Multiply ``arr`` in place by ``coef`` with the documented per-dtype arithmetic."""
    with np.errstate(all="ignore"):
        if arr.dtype == np.float64:
            np.multiply(arr, np.float64(coef), out=arr)
        elif arr.dtype == np.float32:
            np.multiply(arr, np.float32(coef), out=arr)
        else:  # float16 / bfloat16: float32 multiply, then round to nearest even
            wide = arr.astype(np.float32) * np.float32(coef)
            arr[...] = wide.astype(arr.dtype)


def _clip_by_coef(arrays: Iterable[Array], max_norm: float, norm: float, eps: float) -> None:
    coef = _coefficient(max_norm, norm, eps)
    if coef >= 1.0:  # never write when nothing would change (NaN compares False: it writes)
        return
    for arr in arrays:
        _scale(arr, coef)


def _zero(arrays: Iterable[Array]) -> None:
    for arr in arrays:
        arr[...] = 0
