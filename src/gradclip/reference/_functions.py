"""The twins of the public functions of gradclip's compiled path (gradclip.reference)."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from .._errors import raise_nonfinite
from .._result import ClipResult
from ._arith import (
    _clip_by_coef,
    _clipped,
    _coefficient,
    _norms_each,
    _pnorm,
    _present,
    _zero,
)
from ._inputs import (
    Float64Array,
    _as_arrays,
    _as_single_array,
    _check_eps,
    _check_max_norm,
    _check_mode,
    _check_norm_type,
    _real,
    _round_to_dtype,
)

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
        p > 0, or ``inf`` for ``max |x|``.
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
    arrays = _present(_as_arrays(grads, use="read"))
    norm = _pnorm(arrays, p)
    if error_if_nonfinite and not math.isfinite(norm):
        raise_nonfinite(norm, p)
    return norm


def clip_grad_norm_(
    grads: object,
    max_norm: float,
    norm_type: float = 2.0,
    *,
    error_if_nonfinite: bool = False,
    nonfinite: str = "propagate",
    eps: float = 1e-6,
    return_result: bool = False,
    per_tensor_norms: bool = False,
) -> Any:
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
    return_result : bool, default False
        Return a :class:`ClipResult` instead of the norm.
    per_tensor_norms : bool, default False
        Also report each array's norm, in a ClipResult, which the call then returns even
        without ``return_result``; the total is then the norm of those norms.

    Returns
    -------
    float or ClipResult
        The total norm before clipping, or the record when ``return_result`` or
        ``per_tensor_norms`` is True.

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
    entries = _as_arrays(grads)
    arrays = _present(entries)
    norms = _norms_each(entries, p) if per_tensor_norms else None
    norm = _pnorm([norms], p) if norms is not None else _pnorm(arrays, p)
    finite = math.isfinite(norm)
    if not finite and mode == "raise":
        raise_nonfinite(norm, p)
    if not finite and mode == "skip":
        coef = 1.0
    elif not finite and mode == "zero":
        _zero(arrays)
        coef = 0.0
    else:
        c = _coefficient(m, norm, e)
        coef = 1.0 if c >= 1.0 else c  # NaN stays NaN
        _clip_by_coef(arrays, m, norm, e)
    if not return_result and not per_tensor_norms:
        return norm
    return ClipResult(norm, coef, _clipped(coef), not finite, norms)


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


def _value_bounds(clip_value: object, lo: object, hi: object) -> tuple[float, float]:
    if clip_value is not None:
        if lo is not None or hi is not None:
            raise TypeError("pass clip_value or min/max, not both")
        v = _real(clip_value, "clip_value")
        if not (math.isfinite(v) and v >= 0.0):
            raise ValueError(f"clip_value must be finite and >= 0, got {v!r}")
        return -v, v
    if lo is None and hi is None:
        raise TypeError("clip_grad_value_ needs clip_value, or min and/or max")
    low = -math.inf if lo is None else _real(lo, "min")
    high = math.inf if hi is None else _real(hi, "max")
    if math.isnan(low) or math.isnan(high):
        raise ValueError("min and max must be numbers or None, not nan")
    if low > high:
        raise ValueError(f"min must be <= max, got min={low!r} and max={high!r}")
    return low, high


def clip_grad_value_(
    grads: object,
    clip_value: float | None = None,
    *,
    min: float | None = None,
    max: float | None = None,
) -> None:
    """Clamp every element of ``grads`` in place to ``[-clip_value, clip_value]``, or to
    ``[min, max]`` (a side given as None is unbounded).

    Each bound is rounded to each array's dtype. NaN stays NaN; elements already inside the
    interval are left unchanged.

    Parameters
    ----------
    grads : array or iterable of arrays
        Writeable float arrays, updated in place.
    clip_value : float, optional
        Finite and >= 0; or pass ``min`` and/or ``max`` instead.
    min, max : float, optional
        Not NaN, ``min <= max``.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([-3.0, 0.5, np.nan])
    >>> clip_grad_value_(g, 1.0)
    >>> g.tolist()
    [-1.0, 0.5, nan]
    """
    lo, hi = _value_bounds(clip_value, min, max)
    arrays = _present(_as_arrays(grads))
    with np.errstate(all="ignore"):
        for arr in arrays:
            # the bounds, rounded to the array's type, are exactly float64s: clamp there and
            # convert back (exact, since every result is an element or a bound). Spelled
            # out rather than np.clip, whose choice between -0.0 and 0.0 at clip_value = 0
            # changed between NumPy releases: x < lo gives lo, x > hi gives hi, NaN stays.
            a = _round_to_dtype(lo, arr.dtype)
            b = _round_to_dtype(hi, arr.dtype)
            wide = arr.astype(np.float64)
            wide = np.where(wide < a, a, np.where(wide > b, b, wide))
            arr[...] = wide.astype(arr.dtype)


def clip_by_block_rms_(grads: object, threshold: float, *, eps: float = 1e-6) -> Float64Array:
    """Clip each array in place by its root mean square ``||g||_2 / sqrt(g.size)``: it is
    multiplied by ``threshold / (rms + eps)`` when that is below 1 (Optax's
    ``clip_by_block_rms`` with ``eps=0``). Returns each array's pre-clip RMS (0.0 for None
    and empty arrays).

    Examples
    --------
    >>> import numpy as np
    >>> g = [np.array([3.0, 4.0])]
    >>> clip_by_block_rms_(g, 1.0, eps=0.0).round(6).tolist()
    [3.535534]
    """
    t = _real(threshold, "threshold")
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"threshold must be finite and > 0, got {t!r}")
    e = _check_eps(eps)
    arrays = _as_arrays(grads)
    out = np.zeros(len(arrays))
    for i, arr in enumerate(arrays):
        if arr is None or arr.size == 0:
            continue
        rms = _pnorm([arr], 2.0) / math.sqrt(arr.size)
        out[i] = rms
        _clip_by_coef([arr], t, rms, e)
    return out


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
    return _norms_each(_as_arrays(grads, use="read"), p)


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
        i = int(np.flatnonzero(~np.isfinite(norms))[0])
        if mode == "raise":
            raise_nonfinite(float(norms[i]), p, f"norm of grads[{i}]")
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
    p = _check_norm_type(norm_type)
    e = _check_eps(eps)
    arr = _as_single_array(x)
    reduced = _normalize_axes(axis, arr.ndim)
    kept = [d for d in range(arr.ndim) if d not in reduced]
    kept_shape = tuple(arr.shape[d] for d in kept)
    bound = _bounds_per_slice(max_norm, arr.shape, reduced, kept_shape)
    norms = np.zeros(kept_shape, dtype=np.float64)
    for index in np.ndindex(*kept_shape):
        slicer: list[Any] = [slice(None)] * arr.ndim
        for d, i in zip(kept, index, strict=True):
            slicer[d] = i
        # The trailing Ellipsis keeps a 0-d *view* (not a scalar copy) when every axis is kept.
        part = arr[(*slicer, Ellipsis)]
        norm = _pnorm([part], p)
        norms[index] = norm
        _clip_by_coef([part], float(bound[index]), norm, e)
    return norms


def _bounds_per_slice(
    max_norm: object, shape: tuple[int, ...], reduced: tuple[int, ...], kept: tuple[int, ...]
) -> Float64Array:
    """max_norm for every slice, shaped ``kept``: a number, or an array that broadcasts to
    ``kept`` or, with as many axes as x, whose reduced axes have length 1."""
    if isinstance(max_norm, (bool, np.bool_)) or getattr(max_norm, "dtype", None) == np.bool_:
        raise TypeError("max_norm must be a real number or an array of them, not bool")
    if np.ndim(max_norm) == 0:  # type: ignore[arg-type]
        return np.full(kept, _check_max_norm(max_norm))
    try:
        m = np.asarray(max_norm, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("max_norm must be a real number or an array of them") from None
    try:
        if m.ndim == len(shape):
            if any(m.shape[d] != 1 for d in reduced):
                raise ValueError
            m = m.reshape(tuple(n for d, n in enumerate(m.shape) if d not in reduced))
        full = np.broadcast_to(m, kept)
    except ValueError:
        raise ValueError(f"max_norm of shape {m.shape} does not fit {kept}") from None
    if not (np.isfinite(full).all() and (full > 0).all()):
        raise ValueError("every max_norm must be finite and > 0")
    return full


class GradientSet:
    """Twin of :class:`gradclip.GradientSet`: the arrays validated once, each method the
    function of the same name applied to them.

    Examples
    --------
    >>> import numpy as np
    >>> gs = GradientSet([np.array([3.0, 4.0])])
    >>> gs.clip_norm_(1.0)
    5.0
    """

    def __init__(self, grads: Any) -> None:
        self._grads = tuple(_as_arrays(grads, use="set"))

    def __len__(self) -> int:
        return len(self._grads)

    @property
    def arrays(self) -> tuple[Any, ...]:
        """The arrays (as NumPy views), ``None`` where the input had ``None``."""
        return self._grads

    def __repr__(self) -> str:
        return f"GradientSet({len(self)} arrays)"

    def clip_norm_(
        self,
        max_norm: float,
        norm_type: float = 2.0,
        *,
        error_if_nonfinite: bool = False,
        nonfinite: str = "propagate",
        eps: float = 1e-6,
    ) -> float:
        """:func:`clip_grad_norm_` over the set."""
        norm: float = clip_grad_norm_(
            list(self._grads),
            max_norm,
            norm_type,
            error_if_nonfinite=error_if_nonfinite,
            nonfinite=nonfinite,
            eps=eps,
        )
        return norm

    def total_norm(self, norm_type: float = 2.0, *, error_if_nonfinite: bool = False) -> float:
        """:func:`get_total_norm` over the set."""
        return get_total_norm(list(self._grads), norm_type, error_if_nonfinite=error_if_nonfinite)

    def clip_with_norm_(self, max_norm: float, total_norm: float, *, eps: float = 1e-6) -> None:
        """:func:`clip_grads_with_norm_` over the set."""
        clip_grads_with_norm_(list(self._grads), max_norm, total_norm, eps=eps)

    def clip_value_(
        self,
        clip_value: float | None = None,
        *,
        min: float | None = None,
        max: float | None = None,
    ) -> None:
        """:func:`clip_grad_value_` over the set."""
        clip_grad_value_(list(self._grads), clip_value, min=min, max=max)

    def tensor_norms(self, norm_type: float = 2.0) -> Float64Array:
        """:func:`tensor_norms` over the set."""
        return tensor_norms(list(self._grads), norm_type)

    def clip_norm_per_tensor_(
        self,
        max_norm: float,
        norm_type: float = 2.0,
        *,
        error_if_nonfinite: bool = False,
        nonfinite: str = "propagate",
        eps: float = 1e-6,
    ) -> Float64Array:
        """:func:`clip_grad_norm_per_tensor_` over the set."""
        return clip_grad_norm_per_tensor_(
            list(self._grads),
            max_norm,
            norm_type,
            error_if_nonfinite=error_if_nonfinite,
            nonfinite=nonfinite,
            eps=eps,
        )
