"""Arithmetic whose float32 results are the same bits on every machine: the demo's matrix
products and its tanh, exp and log.

The demo's training runs are chaotic: a difference in the last bit of one product grows, step
after step, until a run that learned on one machine diverges on another. NumPy hands float32
matrix products to the BLAS library, whose kernels (chosen by CPU, or by
``OPENBLAS_CORETYPE``) and thread count fix the order of the additions and whether they use
fused multiply-adds; and NumPy's own tanh, exp and log have SIMD versions per instruction set
(AVX-512, AVX2, SSE) that differ in the last bit. Measured on one machine (AMD EPYC Zen 4):
float32 ``a @ b`` gave three different results under the SkylakeX, Haswell/Zen and Sandybridge
kernels; float64 exp and log differ between the AVX-512 and AVX2 code paths; float32 tanh,
exp and log between AVX2 and the baseline. So the demo computes, for float32 operands:

- :func:`matmul`: each operand is rounded to a block floating-point form, integers of at most
  ``bits`` bits times one power of two per matrix, with ``bits`` chosen from the length ``K``
  of the sums so that every product and every partial sum of the float64 product of the
  integer matrices is an integer below 2**53. Such a sum is exact in float64, in any order,
  with or without fused multiply-adds, on any number of threads; the BLAS kernel computes it,
  and it cannot round differently anywhere. The result is scaled back (exact: a power of two)
  and rounded once to float32. ``bits`` is 23 for ``K`` = 64 and 20 for ``K`` = 4,096: the
  operands keep 20 to 23 significant bits relative to their largest element (float32 has
  24), an error far below what changes the training's course, but one that is the same
  everywhere.
- :func:`tanh`, :func:`exp`, :func:`log`: the correctly rounded float32 result. NumPy's float64
  function is computed and rounded to float32; that is the correctly rounded result unless the
  float64 value lies within :data:`WINDOW` float64 ulps of the midpoint between two float32
  numbers (every float64 implementation NumPy may call is accurate to a few ulps), and the
  rare elements that do (about one in a million) are recomputed with :mod:`decimal`, whose
  exp and ln are correctly rounded, to 50 digits.

float64 operands (the tests' gradient checks against finite differences) take NumPy's own
functions: the rounding above would make the loss a step function at the 1e-7 level.

Sums along an axis (``np.sum``, ``np.mean``) and element-wise arithmetic need nothing of this:
NumPy adds in an order fixed by the array's shape, and +, -, *, / and comparisons are rounded
by IEEE 754 the same way everywhere.
"""

from __future__ import annotations

import decimal
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["WINDOW", "Prepared", "bits_for", "exp", "log", "matmul", "prepare", "tanh"]

FloatArray = npt.NDArray[np.floating[Any]]

#: A float64 value this many ulps (or fewer) from a float32 rounding midpoint is recomputed
#: exactly. NumPy's float64 tanh, exp and log (its SIMD versions and the C library's) are
#: accurate to a few ulps; 256 leaves a wide margin, and about one element in two million
#: falls inside it.
WINDOW = 256
_LOW_BITS = 29  # float64 has 29 more significand bits than float32
_MASK = np.uint64((1 << _LOW_BITS) - 1)
_BELOW_MIDPOINT = np.uint64((1 << (_LOW_BITS - 1)) - WINDOW)


@functools.cache
def bits_for(k: int) -> int:
    """The largest integer width ``b`` for which a sum of ``k`` products of two integers of
    magnitude at most ``2**b`` stays at most ``2**53``, exact in float64."""
    return (53 - math.ceil(math.log2(max(k, 1)))) // 2


class Prepared:
    """A float32 matrix (or stack of matrices, the last two axes) rounded for :func:`matmul`:
    integers ``q`` (float64) of magnitude at most ``2**bits`` and one power of two per matrix,
    ``x ~= q * scale``. A product of two prepared operands over sums of length ``k`` is exact
    when ``k * 2**(bits_a + bits_b) <= 2**53``; :func:`bits_for` gives the width that makes
    it so for two operands of the same width. Rounding an operand once serves every product
    with it (a weight matrix in every step of a recurrence, an activation in the forward and
    the weight-gradient product).

    ``bound``, when given, is a power of two known to bound every ``|x|`` (1 for tanh
    outputs): it stands for the largest element, which then need not be found.
    """

    __slots__ = ("bits", "q", "scale")

    def __init__(
        self, x: FloatArray | None, k: int = 1, bound: float | None = None, bits: int | None = None
    ) -> None:
        self.bits = bits_for(k) if bits is None else bits
        if x is None:  # filled in by Prepared.of
            return
        x64 = np.asarray(x, dtype=np.float64)
        if bound is None:
            flat = x64.reshape(*x64.shape[:-2], -1)
            top = np.max(np.abs(flat), axis=-1)[..., None, None] if x64.size else np.zeros(1)
            # top < 2**exponent, so |q| <= 2**bits after rounding; a zero or non-finite top
            # gives exponent 0, and a non-finite element stays non-finite (the run that made
            # it stops there)
            _, exponent = np.frexp(np.where(top < np.inf, top, 0.0))
        else:
            exponent = np.asarray(math.frexp(bound)[1] - 1)
        # multiplying by a power of two is exact (float32 data is far from float64's limits)
        self.scale = np.ldexp(1.0, exponent - self.bits)
        self.q = np.rint(x64 * np.ldexp(1.0, self.bits - exponent))

    @classmethod
    def of(cls, q: npt.NDArray[np.float64], scale: Any, bits: int) -> Prepared:
        """Integers already rounded (rearranged from a prepared operand, say) and their
        scale."""
        out = cls(None, bits=bits)
        out.q, out.scale = q, scale
        return out

    @property
    def T(self) -> Prepared:
        """The transpose of the last two axes; the same scales."""
        return Prepared.of(np.swapaxes(self.q, -1, -2), self.scale, self.bits)


def prepare(
    x: FloatArray, k: int = 1, bound: float | None = None, bits: int | None = None
) -> Prepared:
    """Round ``x`` once for :func:`matmul`: for sums of length ``k`` against an operand of
    the same width, or to ``bits`` bits (see :class:`Prepared`)."""
    return Prepared(x, k, bound, bits)


def matmul(a: FloatArray | Prepared, b: FloatArray | Prepared) -> FloatArray:
    """``a @ b``: exact for float32 operands (see the module docstring), NumPy's for float64.

    Either operand may be a :class:`Prepared` matrix; both are then float32 operands. Stacks
    of matrices broadcast as in :func:`numpy.matmul`; each matrix of a stack has its own
    scale, so a product does not depend on what else is in the stack.
    """
    if (
        not isinstance(a, Prepared)
        and not isinstance(b, Prepared)
        and np.float64 in (a.dtype, b.dtype)
    ):
        return np.asarray(np.matmul(a, b))
    k = (a.q if isinstance(a, Prepared) else a).shape[-1]
    pa = a if isinstance(a, Prepared) else Prepared(a, k)
    pb = b if isinstance(b, Prepared) else Prepared(b, k)
    if k << (pa.bits + pb.bits) > 1 << 53:
        raise ValueError(
            f"operands of {pa.bits} and {pb.bits} bits: a sum of {k} products is not exact"
        )
    product = np.matmul(pa.q, pb.q)
    product *= pa.scale * pb.scale
    out: FloatArray = product.astype(np.float32)
    return out


# --------------------------------------------------------------------------- tanh, exp, log

_CONTEXT = decimal.Context(prec=50, Emin=-999_999, Emax=999_999)


def _nearest_float32(value: decimal.Decimal) -> np.float32:
    """The float32 nearest to ``value`` (finite, in float32's normal range)."""
    guess = np.float32(float(value))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess]
    candidates.append(np.nextafter(guess, np.float32(np.inf)))
    return min(candidates, key=lambda c: abs(decimal.Decimal(float(c)) - value))


def _round_correctly(
    x: FloatArray,
    value64: npt.NDArray[np.float64],
    exact: Callable[[decimal.Decimal], decimal.Decimal],
) -> npt.NDArray[np.float32]:
    out = value64.astype(np.float32)
    # the low 29 bits of a float64 in float32's normal range say where it lies between two
    # float32 numbers (2**28: the midpoint); NaN and infinities are never near one
    low = (value64.view(np.uint64) - _BELOW_MIDPOINT) & _MASK
    near = low <= np.uint64(2 * WINDOW)
    if np.any(near):
        flat_x, flat_out = x.reshape(-1), out.reshape(-1)
        for i in np.flatnonzero(near.reshape(-1)).tolist():
            if not math.isfinite(flat_out[i]) or not math.isfinite(flat_x[i]):
                continue
            with decimal.localcontext(_CONTEXT):
                flat_out[i] = _nearest_float32(exact(decimal.Decimal(float(flat_x[i]))))
    return out


def _tanh_exact(d: decimal.Decimal) -> decimal.Decimal:
    e2 = (2 * d).exp()
    return (e2 - 1) / (e2 + 1)


#: below this x, exp(x) is under float32's smallest normal number, 2**-126: flushed to 0
_EXP_FLUSH = -87.0


def tanh(x: FloatArray) -> FloatArray:
    """Correctly rounded float32 tanh of a float32 array; NumPy's for float64."""
    if x.dtype != np.float32:
        return np.asarray(np.tanh(x))
    # A float32-subnormal x is its own float64 tanh, rounded back to itself: the midpoint
    # test (for results in float32's normal range) is not needed there.
    return _round_correctly(x, np.tanh(x, dtype=np.float64), _tanh_exact)


def exp(x: FloatArray) -> FloatArray:
    """Correctly rounded float32 exp of a float32 array, results below 2**-126 flushed to
    zero (no subnormal results); NumPy's for float64."""
    if x.dtype != np.float32:
        return np.asarray(np.exp(x))
    out = _round_correctly(x, np.exp(x, dtype=np.float64), lambda d: d.exp())
    np.copyto(out, 0, where=x < _EXP_FLUSH)
    return out


def log(x: FloatArray) -> FloatArray:
    """Correctly rounded float32 natural logarithm of a positive float32 array; NumPy's for
    float64."""
    if x.dtype != np.float32:
        return np.asarray(np.log(x))
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.log(x, dtype=np.float64)
    return _round_correctly(x, value, lambda d: d.ln())
