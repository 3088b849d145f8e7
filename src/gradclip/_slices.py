"""Per-slice norm clipping of one array: :func:`clip_by_norm_` (unit-wise, per-example)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from . import _core
from ._inputs import as_array, check_eps, check_max_norm, check_norm_type

__all__ = ["clip_by_norm_"]


def clip_by_norm_(
    x: Any,
    max_norm: float,
    axis: int | tuple[int, ...] | None = None,
    norm_type: float = 2.0,
    *,
    eps: float = 1e-6,
) -> np.ndarray:
    """Clip the slices of one array in place, each by its own norm.

    ``axis`` names the axes the norm reduces, as in ``np.linalg.vector_norm`` and
    TensorFlow's ``clip_by_norm(axes=)``: ``axis=None`` clips the whole array,
    ``axis=1`` on an ``(out, in)`` weight clips each row (unit-wise), ``axis`` = all but 0
    clips each example of a batch.

    Returns
    -------
    ndarray of float64
        The pre-clip norms, shaped as ``np.linalg.vector_norm(x, axis=axis)`` is.

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> w = np.array([[3.0, 4.0], [0.3, 0.4]])
    >>> gradclip.clip_by_norm_(w, 1.0, axis=1, eps=0.0)
    array([5. , 0.5])
    >>> w
    array([[0.6, 0.8],
           [0.3, 0.4]])
    """
    p = check_norm_type(norm_type)
    eps = check_eps(eps)
    if x is None or isinstance(x, (list, tuple)):
        raise TypeError(f"x must be one array, not {type(x).__name__}")
    arr = x if isinstance(x, np.ndarray) else as_array(x, "x")
    if axis is None:
        axes: tuple[int, ...] = tuple(range(arr.ndim))
    else:
        if isinstance(axis, (bool, np.bool_)):
            raise TypeError("axis must be None, an int or a tuple of ints, not bool")
        try:
            axes = normalize_axis_tuple(axis, arr.ndim, "axis")
        except TypeError:
            raise TypeError(
                f"axis must be None, an int or a tuple of ints, not {type(axis).__name__}"
            ) from None
    kept = tuple(arr.shape[d] for d in range(arr.ndim) if d not in axes)
    bounds = _slice_bounds(max_norm, arr.shape, axes, kept)
    return _core.clip_by_norm(arr, bounds, sorted(axes), p, eps, "x").reshape(kept)


def _slice_bounds(
    max_norm: Any, shape: tuple[int, ...], axes: tuple[int, ...], kept: tuple[int, ...]
) -> np.ndarray:
    """``clip_by_norm_``'s bound per slice, flat in C order of the kept axes: one number, or an
    array broadcastable to the norms' shape ``kept`` or to their keepdims shape (``x.ndim``
    axes, the reduced ones of length 1), as TensorFlow broadcasts a tensor ``clip_norm``."""
    if np.ndim(max_norm) == 0 and not isinstance(max_norm, np.ndarray):
        return np.array([check_max_norm(max_norm)])
    if isinstance(max_norm, (bool, np.bool_)) or (
        isinstance(max_norm, np.ndarray) and max_norm.dtype == np.bool_
    ):
        raise TypeError("max_norm must be a real number or an array of them, not bool")
    try:
        m = np.asarray(max_norm, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"max_norm must be a real number or an array of them, not {type(max_norm).__name__}"
        ) from None
    if m.ndim == 0:
        return np.array([check_max_norm(float(m))])
    keepdims = tuple(1 if d in axes else n for d, n in enumerate(shape))
    try:
        if m.ndim == len(shape):
            if any(m.shape[d] != 1 for d in axes):
                raise ValueError
            full = np.broadcast_to(m, keepdims).reshape(kept)
        else:
            full = np.broadcast_to(m, kept)
    except ValueError:
        raise ValueError(
            f"max_norm of shape {m.shape} does not broadcast to the norms' shape {kept} "
            f"(or {keepdims} with the reduced axes kept)"
        ) from None
    if not (np.isfinite(full).all() and (full > 0.0).all()):
        raise ValueError("every max_norm must be finite and > 0")
    return np.ascontiguousarray(full, dtype=np.float64).reshape(-1)
