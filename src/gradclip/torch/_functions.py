"""The drop-ins for ``torch.nn.utils``' clipping functions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from . import _cache
from ._convert import _as_list, _check_tensors, _param_grads, _views
from ._ops import (
    _bound,
    _clamp,
    _clip_norm,
    _get_norm,
    _p,
    _scale,
    _torch_names,
    _total,
    _value,
)
from ._sharded import (
    _sharded_clip_norm,
    _sharded_clip_with_norm,
    _sharded_get_norm,
    _sharding,
    _shards_of,
)

# ---------------------------------------------------------------- torch.nn.utils' functions


def _target(items: list[Any], single: bool, arg: str, repeats: str) -> Any:
    """``(target, dtype)`` for the operations: the set kept over the tensors (``items``'
    ``.grad`` for ``arg == "parameters"``, else ``items``) when the last call on these
    ``items`` saw the same ones with the same memory (``_cache``), else views of them."""
    grads = arg == "parameters"
    if single or len(items) < 2:  # nothing to gain
        tensors = _param_grads(items, single) if grads else items
        return _views(
            _shards_of(tensors, single) if repeats == "once" else tensors, arg, single, repeats
        )
    cache = _cache.cache_for(items)
    hit = cache.lease(items, grads)  # the plain case: every per-tensor read in C++
    if hit is not None:
        return hit
    if grads:
        _check_tensors(items)
    hit = cache.kept(items, grads)
    if hit is not None:
        return hit
    tensors = _param_grads(items, single) if grads else items
    if repeats == "once":  # clip_grad_value_: element-wise, DTensors as their local shards
        tensors = _shards_of(tensors, single)
    return cache.target(tensors, arg, single, repeats)


@_torch_names("parameters")
def clip_grad_norm_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    group: Any = None,
) -> torch.Tensor:
    """Clip the gradients of ``parameters`` in place so that their total norm is at most
    ``max_norm``: ``torch.nn.utils.clip_grad_norm_``, on gradclip's kernels.

    The norm is the ``norm_type``-norm of all gradient elements together, accumulated in
    float64; when ``max_norm / (norm + 1e-6)`` is below 1 every gradient is multiplied by it,
    otherwise nothing is written.

    Parameters
    ----------
    parameters : Tensor or iterable of Tensors
        Their ``.grad`` is clipped; parameters whose ``.grad`` is None are skipped.
    max_norm : float
        > 0, or inf (never clips).
    norm_type : float, default 2.0
        Any p > 0, inf, ``"inf"`` or ``"fro"``.
    error_if_nonfinite : bool, default False
        Raise :class:`gradclip.NonFiniteNormError` (a ``RuntimeError``) when the norm is NaN
        or infinite, before anything is written. Otherwise PyTorch's arithmetic applies: a
        NaN norm makes every element NaN, an infinite one makes finite elements 0.
    foreach : bool or None
        Accepted and ignored.
    group : torch.distributed ProcessGroup or DeviceMesh, optional
        Sharded training with plain tensors: each rank's ``.grad`` are its part of the
        gradients, and the norm is taken over every rank of ``group`` (call it on every
        rank). DTensor gradients need no ``group``: their device mesh is the group. Every
        rank gets the same norm (the same bits) and scales its own part; an error on any
        rank (a bad argument or tensor, a non-finite norm with ``error_if_nonfinite``, a
        ``max_norm`` or ``norm_type`` that differs from the other ranks') is raised on every
        rank, before anything is written.

    Returns
    -------
    Tensor
        The total norm before clipping, a 0-d CPU tensor in the gradients' dtype (their
        promoted dtype when they differ; ``torch.tensor(0.0)`` when there are none); for
        DTensor gradients, a 0-d DTensor replicated over their mesh, as torch returns it.

    Examples
    --------
    >>> import torch, gradclip.torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> w.grad = torch.tensor([3.0, 4.0])
    >>> gradclip.torch.clip_grad_norm_([w], max_norm=1.0)
    tensor(5.)
    >>> w.grad
    tensor([0.6000, 0.8000])
    """
    parameters, sharding = _sharding(parameters, group, "parameters")
    if sharding is not None:  # DTensor gradients, or group=: the sharded block below
        return _sharded_clip_norm(parameters, sharding, max_norm, norm_type, error_if_nonfinite)
    bound, p = _bound(max_norm), _p(norm_type)
    params, single = _as_list(parameters, "parameters", warn_empty_generator=True)
    target, dtype = _target(params, single, "parameters", "refuse")
    return _clip_norm(target, dtype, bound, p, bool(error_if_nonfinite))


@_torch_names("tensors")
def get_total_norm(
    tensors: torch.Tensor | Iterable[torch.Tensor],
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    group: Any = None,
) -> torch.Tensor:
    """The total ``norm_type``-norm of ``tensors`` (all elements together), accumulated in
    float64: ``torch.nn.utils.get_total_norm``, on gradclip's kernels.

    As in PyTorch, the tensors themselves are read (pass the gradients,
    ``[p.grad for p in params if p.grad is not None]``); ``None`` entries are skipped.
    ``foreach`` is accepted and ignored. DTensors are reduced over their device mesh (a
    replicated one counted once), plain tensors over ``group=`` when it is given (see
    :func:`clip_grad_norm_`).

    Returns
    -------
    Tensor
        A 0-d CPU tensor in the tensors' (promoted) dtype; ``torch.tensor(0.0)`` for none;
        a 0-d replicated DTensor for DTensors.

    Examples
    --------
    >>> import torch, gradclip.torch
    >>> gradclip.torch.get_total_norm([torch.tensor([3.0]), torch.tensor([4.0])])
    tensor(5.)
    """
    tensors, sharding = _sharding(tensors, group, "tensors")
    if sharding is not None:
        return _sharded_get_norm(tensors, sharding, norm_type, error_if_nonfinite)
    p = _p(norm_type)
    items, single = _as_list(tensors, "tensors")
    target, dtype = _target(items, single, "tensors", "allow")
    return _get_norm(target, dtype, p, bool(error_if_nonfinite))


@_torch_names("parameters")
def clip_grads_with_norm_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    max_norm: float,
    total_norm: torch.Tensor,
    foreach: bool | None = None,
    *,
    group: Any = None,
) -> None:
    """Scale the gradients of ``parameters`` in place by ``min(max_norm / (total_norm +
    1e-6), 1)``, with a total norm computed elsewhere: ``torch.nn.utils.clip_grads_with_norm_``
    on gradclip's kernels. Nothing is written when the coefficient is 1.

    ``total_norm`` is a one-element tensor (as :func:`get_total_norm` returns, a replicated
    DTensor included) or a number, >= 0, NaN or inf; ``foreach`` is accepted and ignored.
    With DTensor gradients or ``group=``, every rank checks its arguments and the ranks
    agree (one small collective) before any rank writes.

    Examples
    --------
    >>> import torch, gradclip.torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> w.grad = torch.tensor([3.0, 4.0])
    >>> norm = gradclip.torch.get_total_norm([w.grad])
    >>> gradclip.torch.clip_grads_with_norm_([w], 1.0, norm)
    >>> w.grad
    tensor([0.6000, 0.8000])
    """
    parameters, sharding = _sharding(parameters, group, "parameters")
    if sharding is not None:
        _sharded_clip_with_norm(parameters, sharding, max_norm, total_norm)
        return
    bound, total = _bound(max_norm), _total(total_norm)
    params, single = _as_list(parameters, "parameters")
    target, dtype = _target(params, single, "parameters", "refuse")
    if dtype is not None:
        _scale(target, bound, total)


@_torch_names("parameters")
def clip_grad_value_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    clip_value: float,
    foreach: bool | None = None,
) -> None:
    """Clamp every gradient element of ``parameters`` in place to ``[-clip_value,
    clip_value]`` (NaN stays NaN): ``torch.nn.utils.clip_grad_value_`` on gradclip's kernels.

    ``clip_value`` is >= 0 (inf changes nothing); ``foreach`` is accepted and ignored.

    Examples
    --------
    >>> import torch, gradclip.torch
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> w.grad = torch.tensor([-3.0, 0.5, 2.0])
    >>> gradclip.torch.clip_grad_value_([w], 1.0)
    >>> w.grad
    tensor([-1.0000,  0.5000,  1.0000])
    """
    v = _value(clip_value)
    params, single = _as_list(parameters, "parameters")
    target, dtype = _target(params, single, "parameters", "once")  # DTensors: local shards
    if dtype is not None:
        _clamp(target, v)
