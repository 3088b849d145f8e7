"""Sharded gradients: DTensor gradients (FSDP2's) over their device mesh, and plain tensors
over ``group=`` (torch.distributed process groups)."""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .. import _core
from .._dist import global_norm
from ._convert import _GRAD, _as_list, _name, _norm_dtype, _param_grads, _views
from ._ops import _bound, _nonfinite, _p, _result, _scale, _total, _total_norm

# ---------------------------------------------------------------- sharded gradients
# DTensor gradients (FSDP2's) and hand-sharded tensors with ``group=``. Each rank reduces
# the local shards it owns to its local norm with the engine; one all-gather per mesh
# dimension (8 bytes and an error flag per rank) brings every rank's local norm to every
# rank; the engine's combination of partial norms (``_dist.global_norm``, the one the
# mpi4py ``comm=`` path uses) gives every rank the same bits, and every rank scales its own
# shards in place. Validation (scalar arguments, placements, meshes, dtypes, overlaps) runs
# inside the agreement step: a rank whose input is bad still enters the collective, so every
# rank raises and none writes or waits.


def _dtensor_type() -> Any:
    """torch's DTensor class, or None when no code has imported it yet (then no gradient
    can be a DTensor, and a plain call pays nothing for the check)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None)


# The norm's dtype travels as a code (0: this rank has no gradients), so that every rank
# returns the norm in the same dtype: the promotion of every rank's gradient dtypes.
_DTYPES: tuple[Any, ...] = (None, torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _TorchGather:
    """What ``_dist.global_norm`` needs of a communicator (``allgather`` of each rank's
    ``(local norm, error or None, agreed values)``), over torch.distributed process groups:
    one ``all_gather`` of a float64 row ``[norm, error flag, dtype code, *agreed values]``
    per group, in order (the mesh's dimensions), so every rank gets every rank's row in the
    same order. The error messages travel only when a flag is set, which every rank then
    sees, so every rank enters that second collective. ``dtype`` is this rank's norm dtype
    (set before the collective), and afterwards the one every rank returns."""

    __slots__ = ("dtype", "groups")

    def __init__(self, groups: list[Any]) -> None:
        self.groups = groups
        self.dtype: Any = None

    def allgather(self, sent: tuple[float, Any, tuple[float, ...]]) -> list[Any]:
        import torch.distributed as dist

        value, error, same = sent
        flag = 0.0 if error is None else 1.0
        code = float(_DTYPES.index(self.dtype)) if self.dtype in _DTYPES else 0.0
        rows = torch.tensor([[value, flag, code, *same]], dtype=torch.float64)
        for g in self.groups:
            parts = [torch.empty_like(rows) for _ in range(dist.get_world_size(g))]
            dist.all_gather(parts, rows, group=g)
            rows = torch.cat(parts)
        errors: list[Any] = [None] * rows.shape[0]
        if bool(rows[:, 1].any()):
            errors = [error]
            for g in self.groups:
                out: list[Any] = [None] * dist.get_world_size(g)
                dist.all_gather_object(out, errors, group=g)
                errors = [e for part in out for e in part]
        table = rows.tolist()
        self.dtype = _norm_dtype({_DTYPES[int(row[2])] for row in table} - {None})
        return [(row[0], e, tuple(row[3:])) for row, e in zip(table, errors, strict=True)]


def _groups_of(group: Any) -> list[Any]:
    """The process groups to gather over: a ProcessGroup, or each dimension of a DeviceMesh."""
    import torch.distributed as dist

    if isinstance(group, dist.ProcessGroup):
        return [group]
    from torch.distributed.device_mesh import DeviceMesh

    if isinstance(group, DeviceMesh):
        return [group.get_group(d) for d in range(group.ndim)]
    raise TypeError(
        f"group must be a torch.distributed ProcessGroup or DeviceMesh, not {type(group).__name__}"
    )


def _sharding(items: Any, group: Any, arg: str) -> tuple[Any, tuple[Any, Any] | None]:
    """``(items, (gather, mesh))`` when the call is distributed (``group`` given, or a DTensor
    among the gradients), else ``(items, None)``. A generator is consumed into a list here
    (an empty one is handed back as it is, so that the plain path warns about it)."""
    if isinstance(items, Iterable) and not isinstance(items, (torch.Tensor, list, tuple, str)):
        listed = list(items)
        items = listed if listed or not isinstance(items, types.GeneratorType) else items
    if group is not None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "group= needs torch.distributed initialised (init_process_group) on every rank"
            )
        return items, (_TorchGather(_groups_of(group)), None)
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(items, (torch.Tensor, list, tuple)):
        return items, None
    every: Any = [items] if isinstance(items, torch.Tensor) else items
    found: Any
    try:  # one C-level pass; a found DTensor is then looked for in order
        found = list(map(_GRAD, every)) if arg == "parameters" else every
    except AttributeError:  # not all are tensors: the plain path names the one
        found = [getattr(t, "grad", None) for t in every]
    if not any(issubclass(kind, dtensor) for kind in set(map(type, found))):
        # DTensor parameters (FSDP2's) whose gradients on this rank are all None: this rank
        # still takes part (its norm is 0), or the ranks that have gradients would wait
        found = every if arg == "parameters" else ()
        if not any(issubclass(kind, dtensor) for kind in set(map(type, found))):
            return items, None
    mesh = next(g for g in found if isinstance(g, dtensor)).device_mesh
    return items, (_TorchGather(_groups_of(mesh)), mesh)


def _first(tensors: list[Any], arg: str, single: bool) -> str:
    """How errors name the first DTensor (the mesh may have come from the parameters)."""
    dtensor = _dtensor_type()
    for i, t in enumerate(tensors):
        if isinstance(t, dtensor):
            return f"{_name(arg, i, single)} is a DTensor"
    return "the parameters are DTensors"


def _local_views(
    tensors: list[Any], arg: str, single: bool, mesh: Any, repeats: str
) -> tuple[list[np.ndarray | None], list[np.ndarray | None], Any]:
    """``(views to write, views to count in the norm, norm dtype)`` of this rank's shards.

    A DTensor contributes its local tensor (viewed, never copied: the write lands in the
    DTensor's storage). It counts in the norm on this rank unless it is replicated along a
    mesh dimension where this rank's coordinate is not 0 (a replica is counted once, by the
    first rank of that dimension). ``Partial`` placements, another mesh, and plain tensors
    mixed with DTensors are refused, naming the tensor."""
    dtensor = _dtensor_type()
    local: list[Any] = []
    owned: list[bool] = []
    coord = None if mesh is None else mesh.get_coordinate()
    for i, t in enumerate(tensors):
        where = _name(arg, i, single)
        if dtensor is None or not isinstance(t, dtensor):
            if mesh is not None and t is not None:
                first = _first(tensors, arg, single)
                raise TypeError(
                    f"{where} is a {type(t).__name__} while {first}: gradclip.torch reduces one "
                    "kind per call (DTensors over their mesh, or plain tensors with group=)"
                )
            local.append(t)
            owned.append(True)
            continue
        if mesh is None:
            raise ValueError(
                f"{where} is a DTensor: pass group=None, its device mesh gives the process group"
            )
        if t.device_mesh != mesh:
            first = _first(tensors, arg, single)
            raise ValueError(
                f"{where} is on device mesh {t.device_mesh} while {first} on {mesh}: one call "
                "reduces over one mesh; clip the parameters of each mesh with a call of its own, "
                "or combine the norms with get_total_norm and clip_grads_with_norm_"
            )
        mine = True
        for d, placement in enumerate(t.placements):
            if placement.is_partial():
                raise ValueError(
                    f"{where} has a Partial placement ({placement}) on mesh dimension {d}: its "
                    "local values are unreduced partial sums, whose norm is not the norm of the "
                    "gradient. Reduce it first (redistribute to Shard or Replicate)"
                )
            if placement.is_replicate() and (coord is None or coord[d] != 0):
                mine = False
        with torch.no_grad():  # without autograd, to_local() is the DTensor's own local tensor
            local.append(t.to_local())
        owned.append(mine)
    arrays, dtype = _views(local, arg, single, repeats)
    counted = [a if mine else None for a, mine in zip(arrays, owned, strict=True)]
    return arrays, counted, dtype


def _sharded_norm(
    gather: _TorchGather, prepare: Any, p: float, agree: list[tuple[str, Any]]
) -> tuple[float, Any, Any]:
    """``(global norm, what prepare() made on this rank, the norm's dtype on every rank)``.
    ``prepare()`` gives ``(views to write, views to count, dtype)``; every rank agrees on the
    errors it raises and on the ``agree`` arguments (see _dist) before any writes."""
    made: list[Any] = []

    def local() -> float:
        made.append(prepare())
        _, counted, gather.dtype = made[0]
        if counted is None or gather.dtype is None:
            return 0.0
        if isinstance(counted, _core.GradientSet):
            return counted.total_norm(p)
        return _total_norm(counted, p)

    norm = global_norm(gather, local, p, agree)
    return norm, made[0], gather.dtype


def _for_writing(views: Any) -> Any:
    """``(target to write, target to count, dtype)`` from ``_local_views``' triple: the views
    to write as a compiled set validated for writing, made here, inside the agreement step,
    so that what the write refuses (overlapping views, read-only memory) or fails to
    allocate is raised on every rank, before any rank writes (a reading pass accepts
    overlapping views). The set also counts in the norm when every view counts."""
    arrays, counted, dtype = views
    if dtype is None:
        return views
    target = _core.once.own((arrays, False))
    every = all(c is a for a, c in zip(arrays, counted, strict=True))
    return target, target if every else counted, dtype


def _p_or_default(norm_type: Any) -> float:
    # a bad norm_type is raised inside the agreement step (prepare), on every rank
    try:
        return _p(norm_type)
    except Exception:  # raised again in prepare(), inside the agreement step
        return 2.0


def _sharded_result(norm: float, dtype: Any, mesh: Any) -> torch.Tensor:
    """The norm as torch returns it: a 0-d tensor (``torch.tensor(0.0)`` when no rank has
    gradients), replicated over ``mesh`` for DTensors."""
    out = _result(norm, dtype)
    if mesh is None:
        return out
    from torch.distributed.tensor import DTensor, Replicate

    return DTensor.from_local(out, mesh, [Replicate()] * mesh.ndim, run_check=False)


def _flag(raise_: Any) -> float:
    return 1.0 if bool(raise_) else 0.0


def _local_norm_value(total_norm: Any) -> Any:
    """A DTensor total norm as a plain tensor (replicated: its local value is the norm)."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(total_norm, dtensor):
        if any(pl.is_partial() for pl in total_norm.placements):
            raise ValueError(
                "total_norm is a DTensor with a Partial placement: pass total_norm.full_tensor()"
            )
        with torch.no_grad():
            return total_norm.to_local()
    return total_norm


def _sharded_clip_norm(
    items: Any, sharding: tuple[Any, Any], max_norm: Any, norm_type: Any, raise_: Any
) -> torch.Tensor:
    gather, mesh = sharding
    p = _p_or_default(norm_type)
    bound: list[float] = []

    def prepare() -> Any:
        bound.append(_bound(max_norm))
        _p(norm_type)
        params, single = _as_list(items, "parameters")
        grads = _param_grads(params, single)
        return _for_writing(_local_views(grads, "parameters", single, mesh, "refuse"))

    agree = [
        ("norm_type", lambda: p),
        ("max_norm", lambda: bound[0]),
        ("error_if_nonfinite", lambda: _flag(raise_)),
    ]
    norm, (arrays, _, mine), dtype = _sharded_norm(gather, prepare, p, agree)
    out = _result(norm, dtype)
    if bool(raise_) and not (math.isfinite(norm) and bool(torch.isfinite(out))):
        raise _nonfinite(p, norm, out)  # the same norm on every rank: every rank raises
    if mine is not None:
        _scale(arrays, bound[0], norm)
    return _sharded_result(norm, dtype, mesh)


def _sharded_get_norm(
    items: Any, sharding: tuple[Any, Any], norm_type: Any, raise_: Any
) -> torch.Tensor:
    gather, mesh = sharding
    p = _p_or_default(norm_type)

    def prepare() -> Any:
        _p(norm_type)
        tensors, single = _as_list(items, "tensors")
        return _local_views(tensors, "tensors", single, mesh, "allow")

    agree = [("norm_type", lambda: p), ("error_if_nonfinite", lambda: _flag(raise_))]
    norm, _, dtype = _sharded_norm(gather, prepare, p, agree)
    out = _result(norm, dtype)
    if bool(raise_) and not (math.isfinite(norm) and bool(torch.isfinite(out))):
        raise _nonfinite(p, norm, out)
    return _sharded_result(norm, dtype, mesh)


def _sharded_clip_with_norm(
    items: Any, sharding: tuple[Any, Any], max_norm: Any, total_norm: Any
) -> None:
    gather, mesh = sharding
    scalars: list[float] = []

    def prepare() -> Any:
        scalars.extend((_bound(max_norm), _total(_local_norm_value(total_norm))))
        params, single = _as_list(items, "parameters")
        grads = _param_grads(params, single)
        target, _, dtype = _for_writing(_local_views(grads, "parameters", single, mesh, "refuse"))
        return target, None, dtype  # no norm to reduce: the collective only agrees on errors

    agree = [("max_norm", lambda: scalars[0]), ("total_norm", lambda: scalars[1])]
    _, (arrays, _, mine), _ = _sharded_norm(gather, prepare, 2.0, agree)
    if mine is not None:
        _scale(arrays, scalars[0], scalars[1])


def _shards_of(grads: list[Any], single: bool) -> list[Any]:
    """The local tensors of DTensor gradients, for element-wise work (clamping) that needs
    no collective; other entries as they are. A Partial placement is refused: clamping
    unreduced partial sums is not clamping the gradient."""
    dtensor = _dtensor_type()
    if dtensor is None or not any(issubclass(k, dtensor) for k in set(map(type, grads))):
        return grads
    out = []
    for i, g in enumerate(grads):
        if isinstance(g, dtensor):
            if any(pl.is_partial() for pl in g.placements):
                raise ValueError(
                    f"{_name('parameters', i, single)} has a Partial placement: reduce it "
                    "first (redistribute to Shard or Replicate)"
                )
            with torch.no_grad():
                g = g.to_local()
        out.append(g)
    return out
