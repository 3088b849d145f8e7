"""Pure-Python/NumPy reference implementation of gradclip.

This module is the **oracle for the test suite** and a **documented slow fallback**. Every
public function of :mod:`gradclip` has a twin here with the same name, signature, return type,
exceptions and semantics; the compiled path is checked against it. It is written for clarity,
not speed:

- every element is converted exactly to float64 and the p-th powers are summed with
  :func:`math.fsum` (a correctly rounded sum, so the element order does not matter);
- when that plain sum overflows or falls below ``2**-969`` (where float64 starts losing
  relative precision) the norm is recomputed on elements scaled by a power of two close to the
  largest magnitude, so no norm overflows or underflows when the true value is a finite, normal
  float64;
- each clip writes with exactly the arithmetic documented for the compiled path (a float64
  multiply for float64, a float32 multiply for float32, and float32 followed by a
  round-to-nearest-even conversion for float16 and bfloat16).

It imports neither the compiled extension nor :mod:`gradclip`'s ``__init__`` helpers, only
:mod:`gradclip._errors` and :mod:`gradclip._result`, so it works when the extension is
missing. ``ml_dtypes`` is optional: without it bfloat16 arrays cannot exist in the first place.

Examples
--------
>>> import numpy as np
>>> from gradclip import reference
>>> g = [np.full(4, 3.0, dtype=np.float32), np.full(4, 4.0)]
>>> round(reference.get_total_norm(g), 6)
10.0
>>> total = reference.clip_grad_norm_(g, max_norm=1.0)
>>> round(total, 6), round(reference.get_total_norm(g), 4)
(10.0, 1.0)
"""

from __future__ import annotations

import math
import numbers
import operator
import sys
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.array_utils import byte_bounds, normalize_axis_tuple

from gradclip._errors import NonFiniteNormError
from gradclip._result import ClipResult

__all__ = [
    "AutoClip",
    "NonFiniteNormError",
    "ZClip",
    "clip_by_norm_",
    "clip_grad_norm_",
    "clip_grad_norm_per_tensor_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
    "tensor_norms",
]

Array = npt.NDArray[Any]
Float64Array = npt.NDArray[np.float64]

_NONFINITE_MODES = ("propagate", "raise", "skip", "zero")

# Below this the plain float64 sum of |x|**p may have lost relative precision to gradual
# underflow (2**-1022 is the smallest normal, 53 more bits keep full precision).
_SMALL_SUM = 2.0**-969

# Elements per block when converting to float64: bounds the temporary memory of the reference
# (a 50M-element array is never materialised as one float64 copy or one Python list).
_BLOCK = 1 << 18

_EXPECTED_DTYPES = "expected float16, bfloat16, float32 or float64"


# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------


def _bfloat16() -> np.dtype[Any] | None:
    """Return ``ml_dtypes.bfloat16`` as a dtype, or None when ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    bf16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return bf16


def _is_supported_dtype(dtype: np.dtype[Any]) -> bool:
    if dtype.kind == "f":
        return dtype.isnative and dtype.itemsize in (2, 4, 8)
    bf16 = _bfloat16()
    return bf16 is not None and dtype == bf16


# (significand digits, exponent of the smallest normal, largest finite value) of each type
# a bound can be rounded to; bfloat16 has float32's exponent range and 8 digits.
_FORMATS: dict[str, tuple[int, int, float]] = {
    "float16": (11, -14, 65504.0),
    "bfloat16": (8, -126, float.fromhex("0x1.fep127")),
    "float32": (24, -126, float.fromhex("0x1.fffffep127")),
}


def _round_to_dtype(value: float, dtype: np.dtype[Any]) -> float:
    """``value`` rounded once, to nearest with ties to even, to ``dtype``, as a float.

    Written out in integer arithmetic so that it depends on no library's conversion (the
    float64 -> bfloat16 cast of ml_dtypes rounded through float32 before 0.7.0). IEEE 754:
    the result is the multiple of the type's spacing at ``value`` nearest to it (the even
    multiple on a tie); a result beyond the largest finite value is an infinity.
    """
    if dtype == np.float64 or value == 0.0 or not math.isfinite(value):
        return value
    digits, emin, largest = _FORMATS[dtype.name]
    exponent = math.frexp(value)[1]  # |value| = f * 2**exponent, 0.5 <= f < 1
    shift = max(exponent, emin + 1) - digits  # the spacing is 2**shift (fixed for subnormals)
    num, den = abs(value).as_integer_ratio()  # den is a power of two
    if shift >= 0:
        den <<= shift
    else:
        num <<= -shift
    q, r = divmod(num, den)  # |value| / 2**shift = q + r / den
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    try:
        rounded = math.ldexp(float(q), shift)  # q has at most digits + 1 bits: exact
    except OverflowError:  # beyond the double range, so far beyond the type's
        rounded = math.inf
    if rounded > largest:
        rounded = math.inf
    return math.copysign(rounded, value)


# --------------------------------------------------------------------------------------------
# scalar arguments
# --------------------------------------------------------------------------------------------


def _real(value: object, name: str) -> float:
    """Convert a real number to float; anything else (str, None, complex) is a TypeError.

    Python and NumPy real scalars are accepted, and so is any other object ``float()``
    accepts (a 0-d array, a one-element tensor), except strings and complex numbers.
    """
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # an int beyond the float range: out of range, not a type error
            return math.inf if value > 0 else -math.inf  # type: ignore[operator]
    if value is None or isinstance(value, (str, bytes, numbers.Complex)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a complex 0-d array warns, then is rejected
            return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, Warning):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None


def _check_max_norm(max_norm: object) -> float:
    value = _real(max_norm, "max_norm")
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"max_norm must be finite and > 0, got {value!r}")
    return value


def _check_norm_type(norm_type: object) -> float:
    value = _real(norm_type, "norm_type")
    if math.isnan(value) or value <= 0.0:
        raise ValueError(f"norm_type must be > 0 or inf, got {value!r}")
    return value


def _check_eps(eps: object) -> float:
    value = _real(eps, "eps")
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"eps must be finite and >= 0, got {value!r}")
    return value


def _check_mode(nonfinite: object, error_if_nonfinite: object) -> str:
    if not isinstance(nonfinite, str) or nonfinite not in _NONFINITE_MODES:
        raise ValueError(
            f"nonfinite must be one of 'propagate', 'raise', 'skip', 'zero', got {nonfinite!r}"
        )
    if error_if_nonfinite:
        # error_if_nonfinite=True is PyTorch's spelling of nonfinite="raise"; the default
        # "propagate" cannot be told apart from an explicit one, so only skip/zero conflict.
        if nonfinite in ("skip", "zero"):
            raise ValueError(
                f"error_if_nonfinite=True conflicts with nonfinite={nonfinite!r}; "
                "pass only one of them"
            )
        return "raise"
    return nonfinite


# --------------------------------------------------------------------------------------------
# array arguments
# --------------------------------------------------------------------------------------------


def _is_single_array(obj: object) -> bool:
    """True for an object that stands for ONE array rather than a collection of arrays."""
    if isinstance(obj, np.ndarray):
        return True
    if isinstance(obj, (str, bytes)):
        # A str is an iterable, bytes exposes the buffer protocol; neither is a gradient, and
        # handling them here keeps the error message about the argument as a whole.
        return False
    if any(
        hasattr(obj, attr)
        for attr in ("__dlpack__", "__array_interface__", "__array_struct__", "__array__")
    ):
        return True
    try:
        memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _torch_bfloat16_view(obj: Any) -> Array | None:
    """View a CPU torch.bfloat16 tensor as ml_dtypes.bfloat16 (same memory), else None.

    DLPack has no bfloat16 NumPy can import, so the tensor is exported as int16 bits.
    """
    torch = sys.modules.get("torch")
    bf16 = _bfloat16()
    if torch is None or bf16 is None or getattr(obj, "dtype", None) != torch.bfloat16:
        return None
    bits: Array = np.from_dlpack(obj.view(torch.int16))
    return bits.view(bf16)


def _view(obj: object, where: str) -> Array:
    """View ``obj`` as an ndarray without copying; TypeError naming ``where`` if impossible."""
    if isinstance(obj, np.ndarray):
        return obj
    try:
        if hasattr(obj, "__dlpack__"):
            bf16_view = _torch_bfloat16_view(obj)
            if bf16_view is not None:
                return bf16_view
            return np.from_dlpack(obj, copy=False)
        return np.asarray(obj, copy=False)
    except (TypeError, ValueError, BufferError, RuntimeError) as exc:
        raise TypeError(
            f"{where} ({type(obj).__name__}) cannot be viewed as a NumPy array without a copy; "
            "gradients must be writeable float arrays updated in place"
        ) from exc


def _may_self_overlap(arr: Array) -> bool:
    """True when two elements of a (non-empty) view may share memory: with the axes sorted by
    |stride|, each must step past everything the faster axes cover (conservative)."""
    if arr.size == 0:
        return False
    dims = sorted((abs(st), n) for st, n in zip(arr.strides, arr.shape, strict=True) if n > 1)
    covered = arr.itemsize
    for st, n in dims:
        if st < covered:
            return True
        covered += (n - 1) * st
    return False


def _check_array(arr: Array, where: str) -> None:
    if not _is_supported_dtype(arr.dtype):
        raise TypeError(f"{where} has dtype {arr.dtype}; {_EXPECTED_DTYPES}")
    if not arr.flags.writeable:
        raise ValueError(f"{where} is read-only")


def _check_no_overlap(arrays: Sequence[Array | None], name: str) -> None:
    """Reject two arrays whose byte ranges [lowest, highest+1) intersect.

    Conservative: interleaved strided views such as ``a[::2]`` and ``a[1::2]`` share no
    element but their byte ranges intersect, and they are rejected. Zero-size arrays never
    overlap anything.
    """
    # checked once every entry has passed its type checks, as the compiled path does
    for i, arr in enumerate(arrays):
        if arr is not None and _may_self_overlap(arr):
            raise ValueError(
                f"{name}[{i}] has elements that share memory (e.g. a stride-0 view); writing to "
                "it in place would apply the update more than once"
            )
    spans: list[tuple[int, int, int]] = []
    for i, arr in enumerate(arrays):
        if arr is not None and arr.size > 0:
            low, high = byte_bounds(arr)
            spans.append((low, high, i))
    spans.sort()
    reach_high, reach_index = -1, -1
    for low, high, i in spans:
        if low < reach_high:
            first, second = sorted((reach_index, i))
            raise ValueError(
                f"{name}[{first}] and {name}[{second}] overlap in memory (the same memory twice "
                "or views whose byte ranges intersect; interleaved strided views count as "
                "overlapping)"
            )
        if high > reach_high:
            reach_high, reach_index = high, i


def _as_arrays(grads: object, name: str = "grads") -> list[Array | None]:
    """Normalise a ``grads`` argument to a validated list of ndarrays (None where skipped).

    One array (ndarray or an object NumPy can view) becomes a list of one; any other iterable
    is a collection (a generator or other one-shot iterator is consumed once, and an empty one
    warns, as PyTorch does for an empty generator). Raises TypeError /
    ValueError, naming the position, for anything that cannot be updated in place.
    """
    items: list[object]
    if _is_single_array(grads):
        items = [grads]
    elif isinstance(grads, (str, bytes)) or not isinstance(grads, Iterable):
        raise TypeError(
            f"{name} must be an array or an iterable of arrays, got {type(grads).__name__}"
        )
    else:
        one_shot = isinstance(grads, Iterator)  # generators included
        items = list(grads)
        if one_shot and not items:
            warnings.warn(
                f"`{name}` is an empty generator, no gradient clipping will occur.",
                UserWarning,
                stacklevel=3,
            )
    arrays: list[Array | None] = []
    for i, item in enumerate(items):
        if item is None:
            arrays.append(None)
            continue
        where = f"{name}[{i}]"
        arr = _view(item, where)
        _check_array(arr, where)
        arrays.append(arr)
    _check_no_overlap(arrays, name)
    return arrays


def _as_single_array(x: object, name: str = "x") -> Array:
    if x is None or isinstance(x, (str, bytes)) or not _is_single_array(x):
        raise TypeError(
            f"{name} must be one array NumPy can view without a copy, got {type(x).__name__}"
        )
    arr = _view(x, name)
    _check_array(arr, name)
    return arr


# --------------------------------------------------------------------------------------------
# norms
# --------------------------------------------------------------------------------------------


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


def _nonfinite_error(norm: float, p: float) -> NonFiniteNormError:
    return NonFiniteNormError(
        f"The total norm of order {p} for gradients is non-finite ({norm}), so it cannot be "
        "clipped. To scale the gradients by the non-finite norm anyway, pass "
        "nonfinite='propagate' (error_if_nonfinite=False)."
    )


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


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def get_total_norm(
    grads: object, norm_type: float = 2.0, *, error_if_nonfinite: bool = False
) -> float:
    """Total p-norm of all elements of ``grads`` together, without modifying anything.

    Parameters
    ----------
    grads : array or iterable of arrays
        float16, bfloat16, float32 or float64 arrays (or objects NumPy views without a copy);
        ``None`` entries are skipped.
    norm_type : float, default 2.0
        p > 0, or ``inf`` for max |x|.
    error_if_nonfinite : bool, default False
        Raise :class:`NonFiniteNormError` when the norm is NaN or infinite.

    Returns
    -------
    float
        The norm, computed in float64 (0.0 for empty input).

    Examples
    --------
    >>> import numpy as np
    >>> get_total_norm([np.array([3.0]), np.array([4.0], dtype=np.float32)])
    5.0
    """
    p = _check_norm_type(norm_type)
    arrays = _present(_as_arrays(grads))
    norm = _pnorm(arrays, p)
    if error_if_nonfinite and not math.isfinite(norm):
        raise _nonfinite_error(norm, p)
    return norm


def clip_grad_norm_(
    grads: object,
    max_norm: float,
    norm_type: float = 2.0,
    *,
    error_if_nonfinite: bool = False,
    nonfinite: str = "propagate",
    eps: float = 1e-6,
) -> float:
    """Scale ``grads`` in place so that their total p-norm is at most ``max_norm``.

    ``coef = max_norm / (total_norm + eps)``; when ``coef >= 1`` nothing is written, otherwise
    every element is multiplied by it (see the module docstring for the per-dtype arithmetic).

    Parameters
    ----------
    grads : array or iterable of arrays
        Writeable float16, bfloat16, float32 or float64 arrays, updated in place.
    max_norm : float
        Finite and > 0.
    norm_type : float, default 2.0
        p > 0, or ``inf``.
    error_if_nonfinite : bool, default False
        PyTorch's spelling of ``nonfinite="raise"``.
    nonfinite : {"propagate", "raise", "skip", "zero"}, default "propagate"
        What to do when the total norm is NaN or infinite: apply the coefficient anyway
        (PyTorch's arithmetic), raise :class:`NonFiniteNormError`, leave everything unchanged,
        or set every gradient to +0.0.
    eps : float, default 1e-6
        Added to the norm in the coefficient's denominator; finite and >= 0.

    Returns
    -------
    float
        The total norm before clipping.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([3.0, 4.0])
    >>> clip_grad_norm_(g, 1.0)
    5.0
    >>> np.round(g, 6).tolist()
    [0.6, 0.8]
    """
    m = _check_max_norm(max_norm)
    p = _check_norm_type(norm_type)
    e = _check_eps(eps)
    mode = _check_mode(nonfinite, error_if_nonfinite)
    arrays = _present(_as_arrays(grads))
    norm = _pnorm(arrays, p)
    if not math.isfinite(norm):
        if mode == "raise":
            raise _nonfinite_error(norm, p)
        if mode == "skip":
            return norm
        if mode == "zero":
            _zero(arrays)
            return norm
    _clip_by_coef(arrays, m, norm, e)
    return norm


def clip_grads_with_norm_(
    grads: object, max_norm: float, total_norm: float, *, eps: float = 1e-6
) -> None:
    """Scale ``grads`` in place by ``max_norm / (total_norm + eps)`` when that is below 1.

    For a norm computed elsewhere (e.g. all-reduced across shards). No non-finite check: a NaN
    ``total_norm`` makes every element NaN, an infinite one makes finite elements 0.

    Parameters
    ----------
    grads : array or iterable of arrays
        Writeable float arrays, updated in place.
    max_norm : float
        Finite and > 0.
    total_norm : float
        >= 0; NaN and inf are accepted.
    eps : float, default 1e-6
        Finite and >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([3.0, 4.0])
    >>> clip_grads_with_norm_(g, 1.0, 10.0)
    >>> np.round(g, 6).tolist()
    [0.3, 0.4]
    """
    m = _check_max_norm(max_norm)
    t = _real(total_norm, "total_norm")
    if t < 0.0:
        raise ValueError(f"total_norm must be >= 0 (NaN and inf are accepted), got {t!r}")
    e = _check_eps(eps)
    arrays = _present(_as_arrays(grads))
    _clip_by_coef(arrays, m, t, e)


def clip_grad_value_(grads: object, clip_value: float) -> None:
    """Clamp every element of ``grads`` in place to ``[-b, b]``.

    ``b`` is ``clip_value`` rounded to each array's dtype. NaN stays NaN; elements already
    inside the interval are left unchanged.

    Parameters
    ----------
    grads : array or iterable of arrays
        Writeable float arrays, updated in place.
    clip_value : float
        Finite and >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([-3.0, 0.5, np.nan])
    >>> clip_grad_value_(g, 1.0)
    >>> g.tolist()
    [-1.0, 0.5, nan]
    """
    v = _real(clip_value, "clip_value")
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"clip_value must be finite and >= 0, got {v!r}")
    arrays = _present(_as_arrays(grads))
    with np.errstate(all="ignore"):
        for arr in arrays:
            # the bound, rounded to the array's type, is exactly a float64: clamp there and
            # convert back (exact, since every result is an element or the bound). Spelled
            # out rather than np.clip, whose choice between -0.0 and 0.0 at clip_value = 0
            # changed between NumPy releases: x < -b gives -b, x > b gives b, NaN stays.
            b = _round_to_dtype(v, arr.dtype)
            wide = arr.astype(np.float64)
            wide = np.where(wide < -b, -b, np.where(wide > b, b, wide))
            arr[...] = wide.astype(arr.dtype)


def tensor_norms(grads: object, norm_type: float = 2.0) -> Float64Array:
    """p-norm of each array of ``grads`` separately.

    Parameters
    ----------
    grads : array or iterable of arrays
        As for :func:`get_total_norm`.
    norm_type : float, default 2.0
        p > 0, or ``inf``.

    Returns
    -------
    numpy.ndarray of float64
        One entry per input position (0.0 for ``None`` and zero-size arrays).

    Examples
    --------
    >>> import numpy as np
    >>> tensor_norms([np.array([3.0, 4.0]), None]).tolist()
    [5.0, 0.0]
    """
    p = _check_norm_type(norm_type)
    return _norms_each(_as_arrays(grads), p)


def clip_grad_norm_per_tensor_(
    grads: object,
    max_norm: float,
    norm_type: float = 2.0,
    *,
    error_if_nonfinite: bool = False,
    nonfinite: str = "propagate",
    eps: float = 1e-6,
) -> Float64Array:
    """Clip each array of ``grads`` in place by its own p-norm.

    The coefficient rule is that of :func:`clip_grad_norm_`, per array. The ``nonfinite`` mode
    applies to the whole call when any array's norm is NaN or infinite: ``"raise"`` raises and
    ``"skip"`` writes nothing, ``"zero"`` zeroes every array, ``"propagate"`` applies each
    array's own coefficient.

    Parameters
    ----------
    grads, max_norm, norm_type, error_if_nonfinite, nonfinite, eps
        As for :func:`clip_grad_norm_`.

    Returns
    -------
    numpy.ndarray of float64
        Pre-clip norm per input position (0.0 for ``None``).

    Examples
    --------
    >>> import numpy as np
    >>> a, b = np.array([3.0, 4.0]), np.array([0.1])
    >>> clip_grad_norm_per_tensor_([a, b], 1.0).tolist()
    [5.0, 0.1]
    >>> np.round(a, 6).tolist(), b.tolist()
    ([0.6, 0.8], [0.1])
    """
    m = _check_max_norm(max_norm)
    p = _check_norm_type(norm_type)
    e = _check_eps(eps)
    mode = _check_mode(nonfinite, error_if_nonfinite)
    arrays = _as_arrays(grads)
    norms = _norms_each(arrays, p)
    if not bool(np.all(np.isfinite(norms))):
        bad = float(norms[~np.isfinite(norms)][0])
        if mode == "raise":
            raise _nonfinite_error(bad, p)
        if mode == "skip":
            return norms
        if mode == "zero":
            _zero(_present(arrays))
            return norms
    for arr, norm in zip(arrays, norms.tolist(), strict=True):
        if arr is not None:
            _clip_by_coef([arr], m, norm, e)
    return norms


def _normalize_axes(axis: object, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError("axis must be None, an int or a tuple of ints, got bool")
    raw: tuple[int, ...]
    try:
        raw = (operator.index(axis),)  # type: ignore[arg-type]
    except TypeError:
        if not isinstance(axis, Iterable):
            raise TypeError(
                f"axis must be None, an int or a tuple of ints, got {type(axis).__name__}"
            ) from None
        try:
            raw = tuple(operator.index(a) for a in axis)
        except TypeError:
            raise TypeError("axis must be None, an int or a tuple of ints") from None
    # AxisError (a ValueError) for out-of-range axes, ValueError for repeated ones.
    return normalize_axis_tuple(raw, ndim, argname="axis")


def clip_by_norm_(
    x: object,
    max_norm: float,
    axis: int | tuple[int, ...] | None = None,
    norm_type: float = 2.0,
    *,
    eps: float = 1e-6,
) -> Float64Array:
    """Clip the slices of one array in place, each by its own p-norm over ``axis``.

    ``axis`` names the axes the norm reduces, as in ``np.linalg.vector_norm(x, axis=axis)``;
    every slice left over is clipped with the coefficient rule of :func:`clip_grad_norm_`
    (propagate arithmetic for non-finite norms).

    Parameters
    ----------
    x : array
        One writeable float16, bfloat16, float32 or float64 array.
    max_norm : float
        Finite and > 0.
    axis : None, int or tuple of ints
        Axes reduced by the norm (negative allowed); None means all axes.
    norm_type : float, default 2.0
        p > 0, or ``inf``.
    eps : float, default 1e-6
        Finite and >= 0.

    Returns
    -------
    numpy.ndarray of float64
        Pre-clip norms, shaped like ``np.linalg.vector_norm(x, axis=axis)`` (0-d for
        ``axis=None``).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[3.0, 4.0], [0.3, 0.4]])
    >>> clip_by_norm_(x, 1.0, axis=1).tolist()
    [5.0, 0.5]
    >>> np.round(x, 6).tolist()
    [[0.6, 0.8], [0.3, 0.4]]
    """
    m = _check_max_norm(max_norm)
    p = _check_norm_type(norm_type)
    e = _check_eps(eps)
    arr = _as_single_array(x)
    reduced = _normalize_axes(axis, arr.ndim)
    kept = [d for d in range(arr.ndim) if d not in reduced]
    kept_shape = tuple(arr.shape[d] for d in kept)
    norms = np.zeros(kept_shape, dtype=np.float64)
    for index in np.ndindex(*kept_shape):
        slicer: list[Any] = [slice(None)] * arr.ndim
        for d, i in zip(kept, index, strict=True):
            slicer[d] = i
        # The trailing Ellipsis keeps a 0-d *view* (not a scalar copy) when every axis is kept.
        part = arr[(*slicer, Ellipsis)]
        norm = _pnorm([part], p)
        norms[index] = norm
        _clip_by_coef([part], m, norm, e)
    return norms


# --------------------------------------------------------------------------------------------
# stateful clippers: AutoClip and ZClip
# --------------------------------------------------------------------------------------------
#
# Twins of gradclip.adaptive, written the plain way: the whole history goes through
# np.percentile every step, the statistics are updated in the obvious order. Each step reads the
# norm with this module's _pnorm and writes with its _scale, only when norm > threshold (the
# rule of ZClip's reference code; see gradclip.adaptive for why not min(1, ...)).

_STATE_VERSION = 1
_AUTOCLIP_KEYS = (
    "clipper",
    "version",
    "percentile",
    "history_size",
    "norm_type",
    "nonfinite",
    "eps",
    "per_tensor_norms",
    "history",
)
_ZCLIP_KEYS = (
    "clipper",
    "version",
    "alpha",
    "z_thresh",
    "warmup_steps",
    "max_grad_norm",
    "mode",
    "clip_option",
    "norm_type",
    "nonfinite",
    "eps",
    "per_tensor_norms",
    "warmup_norms",
    "mean",
    "var",
)


def _check_count(value: object, name: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {'None or ' if allow_none else ''}an int")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def _check_in_range(value: object, name: str, low: float, high: float, closed_high: bool) -> float:
    """low < value < high (or <= high when closed_high); ValueError otherwise."""
    v = _real(value, name)
    if not (low < v < high or (closed_high and v == high)):
        raise ValueError(f"{name} is out of range, got {v!r}")
    return v


def _check_finite_positive(value: object, name: str) -> float:
    v = _real(value, name)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {v!r}")
    return v


def _check_option(value: object, name: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def _check_nonfinite(value: object) -> str:
    return _check_mode(value, False)


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool")
    return bool(value)


def _norm_and_norms(
    grads: object, p: float, per_tensor_norms: bool
) -> tuple[list[Array], float, Float64Array | None]:
    """The arrays, their total norm, and each one's norm (None entries: 0.0) when asked."""
    arrays = _as_arrays(grads)
    present = _present(arrays)
    return present, _pnorm(present, p), _norms_each(arrays, p) if per_tensor_norms else None


def _state_norms(value: object, key: str) -> list[float]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"state_dict[{key!r}] must be a list of floats")
    norms = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"state_dict[{key!r}] must hold real numbers, got {v!r}")
        if not (math.isfinite(float(v)) and float(v) >= 0.0):
            raise ValueError(f"state_dict[{key!r}] must hold finite norms >= 0, got {v!r}")
        norms.append(float(v))
    return norms


def _state_statistic(value: object, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"state_dict[{key!r}] must be a float or None")
    if not float(value) >= 0.0:
        raise ValueError(f"state_dict[{key!r}] must be >= 0, got {value!r}")
    return float(value)


def _check_state(state: object, clipper: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a dict, not {type(state).__name__}")
    if set(state) != set(keys):
        raise ValueError(f"not a {clipper} state_dict: keys {sorted(state)}")
    if state["clipper"] != clipper or state["version"] != _STATE_VERSION:
        raise ValueError(f"not a version-{_STATE_VERSION} {clipper} state_dict")
    return state


def _adaptive_clip(
    arrays: Sequence[Array],
    norm: float,
    norms: Float64Array | None,
    threshold: float,
    eps: float,
) -> ClipResult:
    if norm > threshold:
        coef = _coefficient(threshold, norm, eps)
        for arr in arrays:
            _scale(arr, coef)
        return ClipResult(norm, coef, True, False, norms, threshold)
    return ClipResult(norm, 1.0, False, False, norms, threshold)


def _adaptive_nonfinite(
    arrays: Sequence[Array],
    norm: float,
    norms: Float64Array | None,
    threshold: float,
    p: float,
    eps: float,
    mode: str,
) -> ClipResult:
    """A non-finite norm: the statistics are left alone, ``mode`` says what is written."""
    if mode == "raise":
        raise _nonfinite_error(norm, p)
    if mode == "skip":
        return ClipResult(norm, 1.0, False, True, norms, threshold)
    if mode == "zero":
        _zero(arrays)
        return ClipResult(norm, 0.0, True, True, norms, threshold)
    if math.isinf(threshold):  # propagate, but no bound this step: nothing to scale by
        return ClipResult(norm, 1.0, False, True, norms, threshold)
    coef = _coefficient(threshold, norm, eps)
    for arr in arrays:
        _scale(arr, coef)
    return ClipResult(norm, coef, True, True, norms, threshold)


class AutoClip:
    """Reference twin of :class:`gradclip.AutoClip` (Seetharaman et al., MLSP 2020).

    Each call appends the total norm to the history and clips to
    ``np.percentile(history, percentile)`` when the norm exceeds it.

    Examples
    --------
    >>> import numpy as np
    >>> clipper = AutoClip(percentile=50.0)
    >>> _ = clipper(np.array([3.0, 4.0]))
    >>> r = clipper(np.array([6.0, 8.0]))
    >>> r.threshold, r.clipped
    (7.5, True)
    """

    def __init__(
        self,
        percentile: float = 10.0,
        history_size: int | None = None,
        norm_type: float = 2.0,
        *,
        nonfinite: str = "skip",
        eps: float = 1e-6,
        per_tensor_norms: bool = False,
    ) -> None:
        self.percentile = _check_in_range(percentile, "percentile", 0.0, 100.0, True)
        self.history_size = _check_count(history_size, "history_size", allow_none=True)
        self.norm_type = _check_norm_type(norm_type)
        self.nonfinite = _check_nonfinite(nonfinite)
        self.eps = _check_eps(eps)
        self.per_tensor_norms = _check_flag(per_tensor_norms, "per_tensor_norms")
        self._history: deque[float] = deque(maxlen=self.history_size)

    @property
    def history(self) -> tuple[float, ...]:
        return tuple(self._history)

    def _threshold(self) -> float:
        if not self._history:
            return math.inf
        return float(np.percentile(np.array(self._history, dtype=np.float64), self.percentile))

    def __call__(self, grads: object) -> ClipResult:
        arrays, norm, norms = _norm_and_norms(grads, self.norm_type, self.per_tensor_norms)
        if not math.isfinite(norm):
            threshold = self._threshold()
            return _adaptive_nonfinite(
                arrays, norm, norms, threshold, self.norm_type, self.eps, self.nonfinite
            )
        self._history.append(norm)  # the deque drops the oldest norm when it is full
        return _adaptive_clip(arrays, norm, norms, self._threshold(), self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {
            "clipper": "AutoClip",
            "version": _STATE_VERSION,
            "percentile": self.percentile,
            "history_size": self.history_size,
            "norm_type": self.norm_type,
            "nonfinite": self.nonfinite,
            "eps": self.eps,
            "per_tensor_norms": self.per_tensor_norms,
            "history": list(self._history),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = _check_state(state_dict, "AutoClip", _AUTOCLIP_KEYS)
        percentile = _check_in_range(state["percentile"], "percentile", 0.0, 100.0, True)
        history_size = _check_count(state["history_size"], "history_size", allow_none=True)
        norm_type = _check_norm_type(state["norm_type"])
        nonfinite = _check_nonfinite(state["nonfinite"])
        eps = _check_eps(state["eps"])
        per_tensor_norms = _check_flag(state["per_tensor_norms"], "per_tensor_norms")
        history = _state_norms(state["history"], "history")
        if history_size is not None and len(history) > history_size:
            raise ValueError("state_dict['history'] is longer than history_size")
        self.percentile, self.history_size, self.norm_type = percentile, history_size, norm_type
        self.nonfinite, self.eps, self.per_tensor_norms = nonfinite, eps, per_tensor_norms
        self._history = deque(history, maxlen=history_size)


class ZClip:
    """Reference twin of :class:`gradclip.ZClip` (Kumar et al., 2025, arXiv:2504.02507).

    Examples
    --------
    >>> import numpy as np
    >>> clipper = ZClip(warmup_steps=3, max_grad_norm=None)
    >>> for norm in [1.0, 1.2, 0.8, 1.1]:
    ...     assert not clipper(np.array([norm])).clipped
    >>> round(clipper(np.array([5.0])).threshold, 4)
    1.0439
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        *,
        warmup_steps: int = 25,
        max_grad_norm: float | None = 1.0,
        mode: str = "zscore",
        clip_option: str = "adaptive_scaling",
        norm_type: float = 2.0,
        nonfinite: str = "skip",
        eps: float = 1e-6,
        per_tensor_norms: bool = False,
    ) -> None:
        self.alpha = _check_in_range(alpha, "alpha", 0.0, 1.0, False)
        self.z_thresh = _check_finite_positive(z_thresh, "z_thresh")
        self.warmup_steps: int = _check_count(warmup_steps, "warmup_steps")  # type: ignore[assignment]
        self.max_grad_norm = (
            None
            if max_grad_norm is None
            else _check_finite_positive(max_grad_norm, "max_grad_norm")
        )
        self.mode = _check_option(mode, "mode", ("zscore", "percentile"))
        self.clip_option = _check_option(clip_option, "clip_option", ("adaptive_scaling", "mean"))
        self.norm_type = _check_norm_type(norm_type)
        self.nonfinite = _check_nonfinite(nonfinite)
        self.eps = _check_eps(eps)
        self.per_tensor_norms = _check_flag(per_tensor_norms, "per_tensor_norms")
        self.warmup_norms: list[float] = []
        self.mean: float | None = None
        self.var: float | None = None

    @property
    def initialized(self) -> bool:
        return self.mean is not None

    def _bound(self) -> float:
        return math.inf if self.max_grad_norm is None else self.max_grad_norm

    def __call__(self, grads: object) -> ClipResult:
        arrays, norm, norms = _norm_and_norms(grads, self.norm_type, self.per_tensor_norms)
        if not math.isfinite(norm):
            return _adaptive_nonfinite(
                arrays, norm, norms, self._bound(), self.norm_type, self.eps, self.nonfinite
            )
        if self.mean is None or self.var is None:  # warm-up: only the hard bound applies
            result = _adaptive_clip(arrays, norm, norms, self._bound(), self.eps)
            self.warmup_norms.append(norm)
            if len(self.warmup_norms) == self.warmup_steps:
                n = len(self.warmup_norms)
                self.mean = math.fsum(self.warmup_norms) / n
                self.var = math.fsum((x - self.mean) ** 2 for x in self.warmup_norms) / n
                self.warmup_norms = []
            return result
        std = math.sqrt(self.var)
        spike: float | None = None
        if self.mode == "percentile":
            if norm > self.mean + self.z_thresh * std:
                spike = self.mean + self.z_thresh * std
        else:
            denominator = std + self.eps
            if denominator > 0.0:
                z = (norm - self.mean) / denominator
            else:
                z = math.inf if norm > self.mean else 0.0  # x / 0, only the sign matters here
            if z > self.z_thresh:
                if self.clip_option == "mean":
                    spike = self.mean
                else:
                    spike = self.mean + (self.z_thresh * std) / (z / self.z_thresh)
        threshold = self._bound() if spike is None else min(spike, self._bound())
        result = _adaptive_clip(arrays, norm, norms, threshold, self.eps)
        x = norm if spike is None else spike
        self.mean = self.alpha * self.mean + (1.0 - self.alpha) * x
        self.var = self.alpha * self.var + (1.0 - self.alpha) * (x - self.mean) ** 2
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "clipper": "ZClip",
            "version": _STATE_VERSION,
            "alpha": self.alpha,
            "z_thresh": self.z_thresh,
            "warmup_steps": self.warmup_steps,
            "max_grad_norm": self.max_grad_norm,
            "mode": self.mode,
            "clip_option": self.clip_option,
            "norm_type": self.norm_type,
            "nonfinite": self.nonfinite,
            "eps": self.eps,
            "per_tensor_norms": self.per_tensor_norms,
            "warmup_norms": list(self.warmup_norms),
            "mean": self.mean,
            "var": self.var,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = _check_state(state_dict, "ZClip", _ZCLIP_KEYS)
        alpha = _check_in_range(state["alpha"], "alpha", 0.0, 1.0, False)
        z_thresh = _check_finite_positive(state["z_thresh"], "z_thresh")
        warmup_steps = _check_count(state["warmup_steps"], "warmup_steps")
        assert warmup_steps is not None
        max_grad_norm = state["max_grad_norm"]
        if max_grad_norm is not None:
            max_grad_norm = _check_finite_positive(max_grad_norm, "max_grad_norm")
        mode = _check_option(state["mode"], "mode", ("zscore", "percentile"))
        clip_option = _check_option(
            state["clip_option"], "clip_option", ("adaptive_scaling", "mean")
        )
        norm_type = _check_norm_type(state["norm_type"])
        nonfinite = _check_nonfinite(state["nonfinite"])
        eps = _check_eps(state["eps"])
        per_tensor_norms = _check_flag(state["per_tensor_norms"], "per_tensor_norms")
        warmup_norms = _state_norms(state["warmup_norms"], "warmup_norms")
        mean = _state_statistic(state["mean"], "mean")
        var = _state_statistic(state["var"], "var")
        warming_up = mean is None and var is None and len(warmup_norms) < warmup_steps
        warmed_up = mean is not None and var is not None and not warmup_norms
        if not (warming_up or warmed_up):
            raise ValueError(
                "state_dict: mean and var must both be None with fewer than warmup_steps "
                "warmup_norms, or both set with no warmup_norms"
            )
        self.alpha, self.z_thresh, self.warmup_steps = alpha, z_thresh, warmup_steps
        self.max_grad_norm, self.mode, self.clip_option = max_grad_norm, mode, clip_option
        self.norm_type, self.nonfinite, self.eps = norm_type, nonfinite, eps
        self.per_tensor_norms = per_tensor_norms
        self.warmup_norms, self.mean, self.var = warmup_norms, mean, var
