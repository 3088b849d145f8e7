"""Twins of gradclip's functional forms: copy every leaf, run the in-place twin on the copies,
return them in the input's structure (or copy them into ``out``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._functions import clip_grad_norm_, clip_grad_norm_per_tensor_, clip_grad_value_
from ._inputs import Float64Array, _as_arrays, _as_tree, _in_structure

__all__ = ["clip_by_global_norm", "clip_by_norm_per_tensor", "clip_by_value"]


def _copies(grads: Any) -> tuple[Any, list[np.ndarray | None]]:
    grads = _as_tree(grads)
    leaves = _as_arrays(grads, use="read")
    return grads, [None if a is None else np.array(a, copy=True) for a in leaves]


def _deliver(grads: Any, copies: list[np.ndarray | None], out: Any) -> Any:
    if out is None:
        return _in_structure(grads, copies)
    targets = _as_arrays(out, "out")
    if [t is None for t in targets] != [c is None for c in copies]:
        raise ValueError("out must have an array where grads has one and None where it has None")
    for i, (t, c) in enumerate(zip(targets, copies, strict=True)):
        if t is None or c is None:
            continue
        if t.shape != c.shape or t.dtype != c.dtype:
            raise ValueError(f"out[{i}] must have the shape and dtype of grads[{i}]")
        t[...] = c
    return out


def clip_by_global_norm(
    grads: Any,
    max_norm: float,
    norm_type: float | str = 2.0,
    *,
    eps: float = 1e-6,
    out: Any = None,
) -> tuple[Any, float]:
    """Reference for :func:`gradclip.clip_by_global_norm`."""
    grads, copies = _copies(grads)
    norm = clip_grad_norm_(list(copies), max_norm, norm_type, eps=eps)  # type: ignore[arg-type]
    return _deliver(grads, copies, out), norm


def clip_by_norm_per_tensor(
    grads: Any,
    max_norm: float,
    norm_type: float | str = 2.0,
    *,
    eps: float = 1e-6,
    out: Any = None,
) -> tuple[Any, Float64Array]:
    """Reference for :func:`gradclip.clip_by_norm_per_tensor`."""
    grads, copies = _copies(grads)
    norms = clip_grad_norm_per_tensor_(copies, max_norm, norm_type, eps=eps)  # type: ignore[arg-type]
    return _deliver(grads, copies, out), norms


def clip_by_value(
    grads: Any,
    clip_value: float | None = None,
    *,
    min: float | None = None,
    max: float | None = None,
    out: Any = None,
) -> Any:
    """Reference for :func:`gradclip.clip_by_value`."""
    grads, copies = _copies(grads)
    clip_grad_value_(copies, clip_value, min=min, max=max)
    return _deliver(grads, copies, out)
