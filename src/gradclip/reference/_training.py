"""Pure-NumPy twins of gradclip's training-grade functions (mixed precision, AGC,
per-example clipping), for :mod:`gradclip.reference`. Written for clarity, not speed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from .._result import ClipResult
from ._arith import _clipped, _coefficient, _pnorm, _present, _scale
from ._inputs import (
    _as_arrays,
    _as_tree,
    _check_eps,
    _check_max_norm,
    _check_norm_type,
    _in_structure,
    _real,
    _round_to_dtype,
)

__all__ = ["adaptive_grad_clip_", "clip_per_example_", "unscale_clip_grad_norm_"]


def _positive(x: object, name: str) -> float:
    v = _real(x, name)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {v!r}")
    return v


def unscale_clip_grad_norm_(
    grads: Any,
    max_norm: float,
    inv_scale: float,
    norm_type: float = 2.0,
    *,
    eps: float = 1e-6,
    per_tensor_norms: bool = False,
) -> ClipResult:
    """Reference for :func:`gradclip.unscale_clip_grad_norm_`: the unscaled norm is
    ``||g|| * inv_scale``; with a finite norm, and no element whose unscaled value
    ``x * inv_scale`` (rounded once to its dtype) is infinite, every array is multiplied once
    by ``inv_scale * min(1, max_norm / (norm + eps))``; otherwise nothing is written and the
    norm is ``inf`` (an array with an overflowing element has an infinite norm)."""
    max_norm = _check_max_norm(max_norm)
    inv = _positive(inv_scale, "inv_scale")
    p = _check_norm_type(norm_type)
    eps = _check_eps(eps)
    arrays = _as_arrays(grads)
    present = _present(arrays)

    def overflows(a: np.ndarray) -> bool:
        if a.size == 0:
            return False
        m = float(np.max(np.abs(a.astype(np.float64))))
        return math.isfinite(m) and math.isinf(_round_to_dtype(m * inv, a.dtype))

    norms = None
    if per_tensor_norms:
        norms = np.array(
            [
                0.0 if a is None else math.inf if overflows(a) else _pnorm([a], p) * inv
                for a in arrays
            ]
        )
    raw = _pnorm(present, p)
    if math.isfinite(raw) and any(overflows(a) for a in present):
        raw = math.inf
    total = raw * inv
    if not math.isfinite(raw):
        return ClipResult(total, 1.0, False, True, norms)
    coef = min(1.0, _coefficient(max_norm, total, eps))
    factor = inv * coef
    # a factor beyond float32's range goes in exact power-of-two steps first (products stay
    # finite: no unscaled value overflows)
    while abs(factor) > float(np.finfo(np.float32).max):
        for a in present:
            _scale(a, 2.0**127)
        factor /= 2.0**127
    if factor != 1.0:
        for a in present:
            _scale(a, factor)
    return ClipResult(total, coef, coef < 1.0, False, norms)


def _unit_axes(shape: tuple[int, ...], layout: str, axis: Any) -> tuple[int, ...]:
    nd = len(shape)
    if axis is not None:  # Optax's explicit axes, for every array
        if isinstance(axis, (bool, np.bool_)):
            raise TypeError("axis must be None, an int or a tuple of ints, not bool")
        try:
            axes = normalize_axis_tuple(axis, nd, "axis")
        except np.exceptions.AxisError as exc:
            raise ValueError(str(exc)) from None
        return tuple(sorted(axes))
    if layout == "OI":  # timm's unitwise_norm: a vector is one unit, else one per row
        return tuple(range(nd)) if nd <= 1 else tuple(range(1, nd))
    # Optax's unitwise_norm: squeezed vectors and scalars are one unit
    if nd <= 1 or sum(1 for s in shape if s != 1) <= 1:
        return tuple(range(nd))
    if nd in (2, 3):
        return (0,)
    if nd in (4, 5):  # HWIO, DHWIO kernels: every axis but the output one
        return tuple(range(nd - 1))
    raise ValueError(f"layout {layout!r}: no unit-wise norm for a {nd}-d array; pass axis=")


def _unit_norms(a: np.ndarray, axes: tuple[int, ...], p: float) -> np.ndarray:
    """p-norm of every unit (the slices over `axes`), each with math.fsum-exact care."""
    kept = [d for d in range(a.ndim) if d not in axes]
    moved = np.moveaxis(a, kept, list(range(len(kept))))
    units = int(np.prod([a.shape[d] for d in kept]))
    per_unit = int(np.prod([a.shape[d] for d in axes]))
    flat = moved.reshape((units, per_unit))
    return np.array([_pnorm([np.ascontiguousarray(row)], p) for row in flat])


# The reference spells each algorithm out as one procedure, step by step in the order of its
# description, for a reader checking it against the paper: longer than the limits allow.
def adaptive_grad_clip_(  # noqa: C901
    grads: Any,
    params: Any,
    clipping: float = 0.01,
    eps: float = 1e-3,
    *,
    layout: str = "OI",
    axis: int | tuple[int, ...] | None = None,
    norm_type: float | str = 2.0,
    return_result: bool = False,
) -> ClipResult | None:
    """Reference for :func:`gradclip.adaptive_grad_clip_` (Brock et al. 2021); positions
    whose gradient is None are skipped (as timm does)."""
    clipping = _positive(clipping, "clipping")
    eps = _check_eps(eps)
    p = _check_norm_type(norm_type)
    if layout not in ("OI", "IO", "HWIO"):
        raise ValueError(f"layout must be 'OI', 'IO' or 'HWIO', got {layout!r}")
    gs = _as_arrays(grads, "grads")
    ws = _as_arrays(params, "params", use="read")
    if len(gs) != len(ws):
        raise ValueError("grads and params must have the same length")
    plans = []
    for i, (g, w) in enumerate(zip(gs, ws, strict=True)):
        if g is None:
            continue
        if w is None:
            raise ValueError(f"params[{i}] is None but grads[{i}] is not")
        if g.shape != w.shape:
            raise ValueError(f"grads[{i}] and params[{i}] have different shapes")
        axes = _unit_axes(g.shape, layout, axis)
        gn = _unit_norms(g, axes, p)
        wn = _unit_norms(w, axes, p)
        with np.errstate(all="ignore"):
            max_n = clipping * np.maximum(wn, eps)
            coefs = np.where(gn < max_n, 1.0, max_n / np.maximum(gn, 1e-6))
        plans.append((g, axes, gn, coefs))
    per_array = np.zeros(len(gs))
    cmin = 1.0
    k = 0
    for i, g in enumerate(gs):
        if g is None:
            continue
        _, axes, gn, coefs = plans[k]
        k += 1
        per_array[i] = _pnorm([gn], p) if gn.size else 0.0
        kept = [d for d in range(g.ndim) if d not in axes]
        moved = np.moveaxis(g, kept, list(range(len(kept))))  # a view: units first
        for u in range(coefs.size):
            if coefs[u] != 1.0:
                unit = moved[np.unravel_index(u, moved.shape[: len(kept)])] if kept else moved
                _scale_view(unit, float(coefs[u]))
        cmin = min(cmin, float(coefs.min())) if coefs.size else cmin
        if np.isnan(coefs).any():
            cmin = math.nan
    if not return_result:
        return None
    total = _pnorm([per_array], p) if per_array.size else 0.0
    return ClipResult(total, cmin, not (cmin >= 1.0), not math.isfinite(total), per_array)


def _scale_view(view: np.ndarray, coef: float) -> None:
    arr = np.asarray(view)
    tmp = np.array(arr, copy=True)
    _scale(tmp, coef)
    arr[...] = tmp


def _example_coef(max_norm: float, norm: float, eps: float) -> float:
    """``min(1, max_norm / (norm + eps))`` for one example, NaN kept: an example whose norm is
    NaN is multiplied by NaN and counted as clipped (Python's ``min(1.0, nan)`` is 1.0)."""
    coef = _coefficient(max_norm, norm, eps)
    return coef if not coef >= 1.0 else 1.0


def clip_per_example_(  # noqa: C901, PLR0912, PLR0915  (one procedure: see above)
    grads: Any,
    max_norm: float,
    *,
    per_layer: bool = False,
    eps: float = 1e-6,
    noise_multiplier: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[list[np.ndarray | None], int | np.ndarray]:
    """Reference for :func:`gradclip.clip_per_example_` (noise: ``rng.standard_normal``
    per array, in position order, times ``max_norm * noise_multiplier``)."""
    max_norm = _check_max_norm(max_norm)
    eps = _check_eps(eps)
    sigma = _real(noise_multiplier, "noise_multiplier")
    if not (math.isfinite(sigma) and sigma >= 0.0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {sigma!r}")
    sigma *= max_norm
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, not {type(rng).__name__}")
    grads = _as_tree(grads)  # consumed once: its items are the tree
    arrays = _as_arrays(grads)
    present = [a for a in arrays if a is not None]
    batch = None
    for i, a in enumerate(arrays):
        if a is None:
            continue
        if a.ndim < 1:
            raise ValueError(f"grads[{i}] is 0-d; per-example gradients need a batch axis")
        if batch is None:
            batch = a.shape[0]
        elif a.shape[0] != batch:
            raise ValueError(f"grads[{i}] has batch size {a.shape[0]}; expected {batch}")
    batch = batch or 0
    norms = [[_pnorm([np.ascontiguousarray(a[b])], 2.0) for b in range(batch)] for a in present]
    counts = []
    clipped_examples = 0
    if per_layer:
        for a, ns in zip(present, norms, strict=True):
            c = 0
            for b in range(batch):
                coef = _example_coef(max_norm, ns[b], eps)
                if _clipped(coef):
                    c += 1
                    _scale_view(a[b : b + 1], coef)  # a slice: a view even for 0-d examples
            counts.append(c)
    else:
        for b in range(batch):
            nb = math.hypot(*[ns[b] for ns in norms]) if norms else 0.0
            coef = _example_coef(max_norm, nb, eps)
            if _clipped(coef):
                clipped_examples += 1
                for a in present:
                    _scale_view(a[b : b + 1], coef)  # a slice: a view even for 0-d examples
    sums: list[np.ndarray | None] = []
    for a in arrays:
        if a is None:
            sums.append(None)
            continue
        total = a.sum(axis=0, dtype=np.float64)
        if sigma > 0.0:
            rng = np.random.default_rng() if rng is None else rng
            total = total + sigma * rng.standard_normal(np.shape(total))
        sums.append(total.astype(a.dtype))
    out: Any = _in_structure(grads, sums, outer_list=True)
    if per_layer:
        full = []
        k = 0
        for a in arrays:
            if a is None:
                full.append(0)
            else:
                full.append(counts[k])
                k += 1
        return out, np.asarray(full, dtype=np.int64)
    return out, clipped_examples
