"""The functional forms: the clipping rules of the in-place functions, returning new arrays in
the input's structure (or writing into ``out``) and leaving the inputs untouched, for arrays
that cannot be written: JAX and TensorFlow arrays, read-only NumPy memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _core
from ._inputs import as_sequence, check_eps, check_max_norm, check_norm_type, value_bounds
from ._tree import flatten, unflatten

__all__ = ["clip_by_global_norm", "clip_by_norm_per_tensor", "clip_by_value"]


def _out_target(out: Any) -> Any:
    if out is None:
        return None
    seq, single = as_sequence(out, "out")
    return (seq, single, out)


def _shaped(target: tuple[Any, bool], outs: Any, out: Any) -> Any:
    """The new arrays in the structure of the input (``out`` itself when given)."""
    if out is not None or target[1]:
        return outs
    return unflatten(flatten(target[0])[1], list(outs))


def _copy_clip(
    op: Callable[..., tuple[Any, ...]],
    grads: Any,
    max_norm: Any,
    norm_type: Any,
    eps: Any,
    out: Any,
) -> tuple[Any, ...]:
    """A norm clip into copies: the arguments checked, then ``op`` (a ``_core.copy_clip_*``),
    whose first result, the new arrays, comes back in the input's structure."""
    max_norm = check_max_norm(max_norm)
    p = check_norm_type(norm_type)
    eps = check_eps(eps)
    target = as_sequence(grads)
    outs, *rest = op(target, _out_target(out), max_norm, p, eps)
    return (_shaped(target, outs, out), *rest)


def clip_by_global_norm(
    grads: Any,
    max_norm: float,
    norm_type: float | str = 2.0,
    *,
    eps: float = 1e-6,
    out: Any = None,
) -> tuple[Any, float]:
    """Global norm clipping that returns clipped copies: :func:`clip_grad_norm_`'s rule
    (``coef = min(1, max_norm / (total_norm + eps))``, PyTorch's arithmetic for a non-finite
    norm), with ``grads`` left untouched.

    ``grads`` is one array or a pytree (lists, tuples, named tuples, dicts; any JAX pytree
    when JAX is imported, see docs/pytrees.md) of array-likes: NumPy arrays (read-only ones
    too), JAX and TensorFlow CPU arrays and torch tensors (viewed through DLPack or the
    buffer protocol), numbers and anything else ``np.asarray`` reads (converted once, as are
    bfloat16 JAX arrays, which DLPack cannot hand to NumPy). One read pass computes the norm
    and one pass writes the outputs (the copy and the scaling together); nothing of a viewed
    input is copied first.

    Parameters
    ----------
    out : pytree of arrays, optional
        Where to write: writeable NumPy arrays of the inputs' shapes and dtypes, in the same
        leaf order (an output may be its own input, which is then clipped in place).
        Without it, new NumPy arrays are made (in the input's memory order where that is
        dense).

    Returns
    -------
    (clipped, norm)
        The clipped arrays in the input's structure (``out`` when given), and the total norm
        before clipping.

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> g = {"w": np.array([3.0, 4.0]), "b": np.array([0.0])}
    >>> clipped, norm = gradclip.clip_by_global_norm(g, 1.0, eps=0.0)
    >>> norm, clipped["w"], g["w"]
    (5.0, array([0.6, 0.8]), array([3., 4.]))
    """
    outs, norm, _ = _copy_clip(_core.copy_clip_total, grads, max_norm, norm_type, eps, out)
    return outs, float(norm)


def clip_by_norm_per_tensor(
    grads: Any,
    max_norm: float,
    norm_type: float | str = 2.0,
    *,
    eps: float = 1e-6,
    out: Any = None,
) -> tuple[Any, np.ndarray]:
    """:func:`clip_grad_norm_per_tensor_`'s rule (each array by its own norm, PyTorch's
    arithmetic for a non-finite one), returning clipped copies as
    :func:`clip_by_global_norm` does.

    Returns
    -------
    (clipped, norms)
        The clipped arrays in the input's structure, and each array's pre-clip norm in leaf
        order (0.0 for None leaves).

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> clipped, norms = gradclip.clip_by_norm_per_tensor([np.array([3.0, 4.0])], 1.0, eps=0.0)
    >>> clipped[0], norms
    (array([0.6, 0.8]), array([5.]))
    """
    return _copy_clip(_core.copy_clip_each, grads, max_norm, norm_type, eps, out)


def clip_by_value(
    grads: Any,
    clip_value: float | None = None,
    *,
    min: float | None = None,
    max: float | None = None,
    out: Any = None,
) -> Any:
    """:func:`clip_grad_value_`'s rule (``[-clip_value, clip_value]`` or ``[min, max]``, each
    bound rounded once to the dtype; NaN stays NaN), returning clipped copies as
    :func:`clip_by_global_norm` does.

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> gradclip.clip_by_value(np.array([-3.0, 0.5, 2.0]), min=0.0, max=1.0)
    array([0. , 0.5, 1. ])
    """
    lo, hi = value_bounds(clip_value, min, max)
    target = as_sequence(grads)
    outs = _core.copy_clamp(target, _out_target(out), lo, hi)
    return _shaped(target, outs, out)
