"""Training-grade clipping on the compiled core: mixed precision in two passes, adaptive
gradient clipping (AGC) and per-example clipping for DP-SGD."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from . import _core
from ._api import arrays_of, core_set, ops_of
from ._inputs import check_eps, check_max_norm, check_nonnegative, check_norm_type
from ._result import ClipResult
from ._steps import global_norm_of, p_or_default
from ._tree import flatten, unflatten

__all__ = ["adaptive_grad_clip_", "clip_per_example_", "unscale_clip_grad_norm_"]


def unscale_clip_grad_norm_(
    grads: Any,
    max_norm: float,
    inv_scale: float,
    norm_type: float = 2.0,
    *,
    eps: float = 1e-6,
    per_tensor_norms: bool = False,
    comm: Any = None,
) -> ClipResult:
    """Undo a loss scale and clip, in two passes over the gradients.

    Mixed-precision training multiplies the loss by a scale ``S``; its gradients carry the
    same factor. This reads the gradients once for the norm of the unscaled gradients,
    ``||g|| * inv_scale``, and for non-finite values; then, only when every value was
    finite, reads and writes them once, multiplying by ``inv_scale * coef`` with
    ``coef = min(1, max_norm / (norm + eps))``. The three-pass way (unscale, norm, clip)
    moves half as many bytes again.

    When the norm is NaN or infinite (an overflow in the scaled backward pass), or when
    unscaling would take a value past its dtype's largest finite one (``x * inv_scale``
    rounded to ``x``'s dtype is infinite: a loss scale below 1, ``inv_scale > 1``, on values
    near the dtype's maximum), nothing is written, ``found_nonfinite`` is True and
    ``total_norm`` is ``inf``: skip the optimizer step and lower ``S``, as dynamic loss
    scaling does (PyTorch's ``GradScaler`` flags the same values as ``found_inf``).
    With ``per_tensor_norms``, an array with such a value has an infinite norm.

    Parameters
    ----------
    grads : array, iterable of arrays, or GradientSet
    max_norm : float
        Clip the unscaled gradients to this norm; finite and > 0.
    inv_scale : float
        ``1 / S``; finite and > 0.
    norm_type : float, default 2.0
    eps : float, default 1e-6
    per_tensor_norms : bool, default False
        Also return each array's unscaled norm (from the same read pass; with ``comm``, of
        this rank's arrays, in one more read pass).
    comm : mpi4py communicator, optional
        Sharded training: the norm is the global one across ranks (one collective of 8
        bytes per rank), and every rank makes the same decision (all write, or none).

    Returns
    -------
    ClipResult

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> g = [np.array([3.0, 4.0]) * 1024]          # gradients of a loss scaled by 1024
    >>> r = gradclip.unscale_clip_grad_norm_(g, max_norm=1.0, inv_scale=1 / 1024, eps=0.0)
    >>> r.total_norm, r.clipped, g[0]
    (5.0, True, array([0.6, 0.8]))
    """

    def checked() -> tuple[float, float, float, float]:
        bound = check_max_norm(max_norm)
        inv = check_max_norm(inv_scale, "inv_scale")  # same rule: a finite real > 0
        return bound, inv, check_norm_type(norm_type), check_eps(eps)

    if comm is not None:
        args: list[tuple[float, float, float, float]] = []
        own: list[Any] = []

        def prepare() -> tuple[_core.GradientSet, tuple[float, ...]]:
            args.append(checked())  # inside the collective: a bad scalar raises on every rank
            s = core_set(grads)
            if per_tensor_norms:  # this rank's own arrays (one more read pass, only when asked)
                own.append(s.tensor_norms(args[0][2]) * args[0][1])
            return s, args[0]

        p = p_or_default(norm_type)
        # each rank's part is +inf when unscaling would overflow one of its values, so an
        # overflow on any rank makes every rank skip
        raw, s = global_norm_of(
            comm,
            prepare,
            p,
            lambda s: s.unscale_norm(p, args[0][1]),
            agree=("max_norm", "inv_scale", "norm_type", "eps"),
        )
        max_norm, inv, p, eps = args[0]
        norms = own[0] if own else None
        total, coef = raw * inv, s.apply_unscale(max_norm, raw, inv, eps)
    else:
        max_norm, inv, p, eps = checked()
        ops, target = ops_of(grads)
        total, coef, norms = ops.unscale_clip(target, max_norm, inv, p, eps, bool(per_tensor_norms))
    finite = math.isfinite(total)
    return ClipResult(
        total_norm=total,
        coef=coef,
        clipped=_core.clipped(coef),
        found_nonfinite=not finite,
        tensor_norms=norms,
    )


def _agc_reduce_axes(shape: tuple[int, ...], layout: str, axis: Any, where: str) -> list[int]:
    """Axes one AGC unit spans, for an array of this shape.

    ``axis`` given: those axes, for every array (Optax's ``unitwise_norm(x, axis)``).
    ``"OI"`` (PyTorch weights, ``(out, in, kh, kw)``; timm's ``unitwise_norm``): every axis
    but 0, and an array of at most one axis is one unit. ``"IO"`` / ``"HWIO"`` (JAX kernels;
    Optax's default rule): arrays with at most one axis longer than 1 are one unit (Optax
    squeezes), else axis 0 for 2-d and 3-d arrays, axes 0-2 for 4-d (HWIO) and 0-3 for 5-d
    (DHWIO, Conv3D) ones; other ranks need ``axis`` (Optax raises the same way).
    """
    nd = len(shape)
    if axis is not None:
        try:
            return sorted(normalize_axis_tuple(axis, nd, "axis"))
        except np.exceptions.AxisError as exc:
            raise ValueError(
                f"axis {axis!r} does not fit {where} of shape {shape}: {exc}"
            ) from None
    if layout == "OI":
        return list(range(1 if nd > 1 else 0, nd))
    if nd <= 1 or sum(1 for s in shape if s != 1) <= 1:
        return list(range(nd))
    if nd in (2, 3):
        return [0]
    if nd in (4, 5):  # HWIO convolutions, and DHWIO (Conv3D) ones
        return list(range(nd - 1))
    raise ValueError(
        f"layout {layout!r}: no unit-wise norm for {where}, a {nd}-d array (Optax's rule "
        "covers 1-d to 5-d); pass axis= to name the axes a unit spans"
    )


def _check_axis(axis: Any) -> Any:
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError("axis must be None, an int or a tuple of ints, not bool")
    if isinstance(axis, (int, np.integer)):
        return int(axis)
    try:
        items = tuple(axis)
    except TypeError:
        raise TypeError(
            f"axis must be None, an int or a tuple of ints, not {type(axis).__name__}"
        ) from None
    if not items or any(
        isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)) for a in items
    ):
        raise TypeError("axis must be None, an int or a non-empty tuple of ints")
    return tuple(int(a) for a in items)


def adaptive_grad_clip_(
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
    """Adaptive gradient clipping (AGC), unit-wise, in place.

    Brock, De, Smith and Simonyan, "High-Performance Large-Scale Image Recognition Without
    Normalization", ICML 2021, sec. 4.1: each unit's gradient ``g_i`` is clipped so that
    ``||g_i|| <= clipping * max(||w_i||, eps)``, where a unit is one output row of a
    weight. As in Optax's ``adaptive_grad_clip`` and timm's ``adaptive_clip_grad``,
    ``g_i`` is multiplied by ``max_i / max(||g_i||, 1e-6)`` unless ``||g_i|| < max_i``.
    A position whose gradient is ``None`` is skipped, as timm skips parameters without a
    gradient.

    Parameters
    ----------
    grads : array, iterable of arrays, or GradientSet
        Modified in place.
    params : array or iterable of arrays
        The parameters, same shapes and positions as ``grads``; only read (they may be
        read-only).
    clipping : float, default 0.01
    eps : float, default 1e-3
    layout : {"OI", "IO", "HWIO"}, default "OI"
        Where the output axis is: ``"OI"`` for PyTorch-style ``(out, in, ...)`` weights
        (timm's rule: each slice along axis 0 is a unit, a vector is one unit), ``"IO"`` /
        ``"HWIO"`` for JAX-style kernels (Optax's rule).
    axis : int or tuple of int, optional
        The axes a unit spans, for every array (Optax's ``axis``, e.g. ``(0, 1, 2)`` for the
        spatial axes of a 5-d Conv3D kernel); overrides ``layout``.
    norm_type : float, default 2.0
        The norm of units (timm's ``norm_type``: 1, 2, inf or any p > 0).
    return_result : bool, default False
        Return a :class:`ClipResult`: the total pre-clip norm, the smallest unit
        coefficient, whether any unit was clipped, and the per-array pre-clip norms (all from
        the same read pass).

    Returns
    -------
    None or ClipResult
        None, or the record with ``return_result=True``.

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> w = np.ones((2, 4))                      # two units with norm 2
    >>> g = np.array([[1.0, 0, 0, 0], [0.001, 0, 0, 0]])
    >>> gradclip.adaptive_grad_clip_(g, w, clipping=0.1)
    >>> g[:, 0]                                  # unit 0 clipped to 0.1 * 2, unit 1 kept
    array([0.2  , 0.001])
    """
    clipping = check_max_norm(clipping, "clipping")
    eps = check_eps(eps)
    p = check_norm_type(norm_type)
    if layout not in ("OI", "IO", "HWIO"):
        raise ValueError(f"layout must be 'OI', 'IO' or 'HWIO', got {layout!r}")
    axis = _check_axis(axis)
    gseq = arrays_of(grads, "grads")
    pseq = arrays_of(params, "params")
    # the leaves' shapes as the core sees them (its checks first: a bad leaf is named there)
    cs = core_set(grads)
    shapes = [None if a is None else a.shape for a in cs.arrays()]
    reduce = [
        [] if shape is None else _agc_reduce_axes(tuple(shape), layout, axis, cs.where(i))
        for i, shape in enumerate(shapes)
    ]
    # total: the engine's combination of the per-array norms
    norms, cmin, total = _core.adaptive_clip(gseq, pseq, clipping, eps, reduce, p)
    if not return_result:
        return None
    return ClipResult(
        total_norm=total,
        coef=cmin,
        clipped=_core.clipped(cmin),
        found_nonfinite=not math.isfinite(total),
        tensor_norms=norms,
    )


def _finish_sum(
    total: np.ndarray | None, noise: np.ndarray | None, typed: np.ndarray | None
) -> np.ndarray | None:
    """One array's float64 sum over the batch, with its noise, in its dtype (into ``typed``,
    made before the write; None for float64)."""
    if total is None:
        return None
    if noise is not None:
        total += noise
    if typed is None:
        return total
    typed[...] = total
    return typed


def clip_per_example_(
    grads: Any,
    max_norm: float,
    *,
    per_layer: bool = False,
    eps: float = 1e-6,
    noise_multiplier: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[list[np.ndarray | None], int | np.ndarray]:
    """Clip per-example gradients in place and sum them over the batch (DP-SGD).

    Axis 0 of every array is the batch. Each example's gradient, across all the arrays
    together (or, with ``per_layer=True``, in each array on its own), is multiplied by
    ``min(1, max_norm / (norm + eps))`` (Opacus' flat clipping; Optax's
    ``per_example_global_norm_clip`` / ``per_example_layer_norm_clip`` use eps = 0).

    With ``noise_multiplier > 0``, Gaussian noise of standard deviation
    ``max_norm * noise_multiplier`` is added to every element of the sums (Abadi et al.
    2016; as Optax's ``differentially_private_aggregate`` and Opacus do, before their
    division by the batch size, which is left to the caller). With ``per_layer=True`` the
    same standard deviation is used for every array. The noise comes from ``rng``, a
    :class:`numpy.random.Generator` (``numpy.random.default_rng()``, seeded by the operating
    system, when None): its ``standard_normal`` draws one float64 per element, array by
    array in position order, each in C order, so a seeded generator gives reproducible runs.
    NumPy's generators are not cryptographically secure sources (as in Opacus' default,
    non-secure mode); a deployment whose privacy guarantee must hold against an attacker who
    can predict the generator should pass a Generator built on a secure source.

    Returns
    -------
    sums : list of ndarray (or the input's structure)
        For each array, the sum over the batch of the clipped examples (shape
        ``g.shape[1:]``, the array's dtype, accumulated in float64); None for None entries.
        A pytree gives its sums in the same structure (the outermost list or tuple as a
        list).
    n_clipped : int or ndarray of int
        How many examples were clipped (per array, shape ``(len(grads),)``, with
        ``per_layer=True``).

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> g = [np.array([[3.0, 4.0], [0.3, 0.4]])]  # two examples
    >>> sums, n = gradclip.clip_per_example_(g, max_norm=1.0, eps=0.0)
    >>> sums[0], n
    (array([0.9, 1.2]), 1)
    """
    max_norm = check_max_norm(max_norm)
    eps = check_eps(eps)
    sigma = max_norm * check_nonnegative(noise_multiplier, "noise_multiplier")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator or None, not {type(rng).__name__} "
            "(numpy.random.default_rng(seed) makes one)"
        )
    seq = arrays_of(grads)
    # Everything the result needs is made before the in-place write, so that a MemoryError
    # leaves the gradients untouched: the noise (drawn array by array, in position order) and
    # the sums in each array's dtype. The core validates, clips, and sums in float64.
    arrays = core_set(seq).arrays()  # seq: a generator in grads is consumed once, above
    well_formed = all(a is None or a.ndim >= 1 for a in arrays)  # else the core says why
    noise: list[np.ndarray | None] = []
    outs: list[np.ndarray | None] = []
    for a in arrays:
        if a is None or not well_formed:
            noise.append(None)
            outs.append(None)
            continue
        if sigma > 0.0:
            if rng is None:
                rng = np.random.default_rng()
            noise.append(sigma * rng.standard_normal(a.shape[1:]))
        else:
            noise.append(None)
        outs.append(None if a.dtype == np.float64 else np.empty(a.shape[1:], a.dtype))
    _leaves, spec = flatten(seq)  # the structure too (flattening allocates)
    _, _, clipped, counts, totals = _core.clip_per_example(seq, max_norm, bool(per_layer), eps)
    sums = [_finish_sum(*t) for t in zip(totals, noise, outs, strict=True)]
    # the sums in the input's structure (the outermost list or tuple as a list)
    if spec is not None and spec[0] in (list, tuple):
        spec = (list, spec[1])
    out: Any = sums if spec is None else unflatten(spec, sums)
    if per_layer:
        return out, counts
    return out, int(clipped)
