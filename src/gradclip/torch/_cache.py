"""Views of the same gradient tensors kept from call to call, with a cheap check that they
are still the tensors' memory.

A training loop that keeps its gradient tensors (``zero_grad(set_to_none=False)``, gradient
accumulation, a clip and a log of the norm in one step) hands gradclip.torch the same
tensors call after call. Viewing each as a NumPy array costs about a microsecond per tensor
(``Tensor.numpy()``), which on a model of thousands of small tensors is most of a call. So
once a call finds the same tensors as the call before, a :class:`gradclip.GradientSet` is
kept over views of them, and later calls only check, per tensor, what could make a view
stale, in one pass of C-level calls (``map``): the same tensor objects (their ``id``, with
weak references that say when one died, so a new tensor at a reused id never passes), the
same ``data_ptr()`` (a ``p.grad.data = other`` or ``set_`` swap moves it), the same
``nbytes`` and dtype, and the same layout (contiguous, or the same shape and strides). A
change anywhere: the call views the current tensors afresh (and validates them, as the
first call did), and keeps a set again once it sees them twice.

The kept views borrow the tensors' memory without holding the tensors (their base is a
small ``__array_interface__`` object, not the tensor): neither a clipper nor the drop-ins'
cache keeps gradient memory alive, so ``zero_grad(set_to_none=True)`` frees it at once, as
without gradclip. A view is only used after the check has found its tensor alive (the call
holds it) with that memory, so it never points at freed memory when used. The norm-based
clips, the norms and the clamp read and write the same elements whatever the shape, so a
tensor reshaped in place over the same contiguous bytes keeps its view.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

import gradclip

from .. import _core
from . import _convert

# What the compiled record compares tensors against (it is built without torch): the types of
# the plain case, torch.strided, and the float dtypes in the engine's order.
_TORCH = (
    torch.Tensor,
    torch.nn.Parameter,
    torch.strided,
    (torch.float16, torch.bfloat16, torch.float32, torch.float64),
)
_DTYPE_BITS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NORM_DTYPES: dict[int, Any] = {0: None}


def _norm_dtype(bits: int) -> Any:
    """The norm's dtype for a lease's dtype bits (one bit per engine dtype present)."""
    dtype = _NORM_DTYPES.get(bits)
    if dtype is None and bits:
        dtype = _NORM_DTYPES[bits] = _convert._norm_dtype(
            {d for k, d in enumerate(_DTYPE_BITS) if bits >> k & 1}
        )
    return dtype


class _Memory:
    """Memory of a tensor, described to NumPy by pointer, without a reference to the tensor."""

    __slots__ = ("__array_interface__",)
    __array_interface__: dict[str, Any]


def _borrowed(view: np.ndarray, ptr: int) -> np.ndarray:
    """A view of the same memory as ``view`` (a NumPy view of a tensor, whose base is the
    tensor) whose base does not hold the tensor."""
    bf16 = view.dtype == _convert._BF16
    mem = _Memory()
    mem.__array_interface__ = {
        "data": (ptr, False),
        "shape": view.shape,
        "strides": view.strides,
        "typestr": "<u2" if bf16 else view.dtype.str,
        "version": 3,
    }
    out = np.asarray(mem)
    return out.view(view.dtype) if bf16 else out


class _Kept:
    """A GradientSet over borrowed views of a list of tensors, and what the views assume."""

    __slots__ = ("dtype", "meta", "set")

    def __init__(self, tensors: list[Any], arrays: list[Any], dtype: Any) -> None:
        # per position: None, or (data pointer, nbytes, dtype, None when contiguous else
        # (shape, strides))
        self.meta: list[Any] = [
            None
            if t is None
            else (
                t.data_ptr(),
                t.nbytes,
                t.dtype,
                None if t.is_contiguous() else (t.shape, t.stride()),
            )
            for t in tensors
        ]
        views = [
            None if a is None else _borrowed(a, m[0])
            for a, m in zip(arrays, self.meta, strict=True)
        ]
        self.set = gradclip.GradientSet(views)
        self.dtype = dtype

    def holds(self, tensors: Iterable[Any], ids: list[int]) -> bool:
        """Whether ``tensors`` are the tensor objects of ``ids`` (the ones the set was made
        over, known alive) and the views are still their memory. One pass, every check of a
        tensor together (``tensors`` may be a lazy ``map`` reading each ``.grad``): on a model
        of 20,000 tensors, their metadata does not stay in the CPU's caches from one pass
        over them to the next."""
        for t, i, m in zip(tensors, ids, self.meta, strict=True):  # lengths: checked
            if id(t) != i:
                return False
            if m is None:
                continue
            ptr, nbytes, dtype, strided = m
            if t.data_ptr() != ptr or t.nbytes != nbytes or t.dtype is not dtype:
                return False
            if strided is None:
                if not t.is_contiguous():
                    return False
            elif t.shape != strided[0] or t.stride() != strided[1]:
                return False
        return True


class _Seen:
    """The tensors of one call, by identity: their ids, and weak references whose callbacks
    raise a flag when any of them dies (then an id may be reused by a new tensor)."""

    __slots__ = ("dead", "ids", "kept", "refs")

    def __init__(self, tensors: list[Any]) -> None:
        dead = self.dead = [False]

        def died(_: Any) -> None:
            dead[0] = True

        self.ids = list(map(id, tensors))
        self.refs = [weakref.ref(t, died) for t in tensors if t is not None]
        self.kept: _Kept | None = None

    def same(self, tensors: list[Any]) -> bool:
        return not self.dead[0] and list(map(id, tensors)) == self.ids


class ViewCache:
    """The views of one list of tensors (a clipper's gradients, or the drop-ins' calls on
    one model), from call to call. Holds no tensor and no tensor's memory.

    The plain case (every tensor a contiguous CPU torch.Tensor of a float dtype, none twice,
    none sharing memory) is the compiled record's (``fast``, ``_core.TorchGrads``): it reads
    each ``.grad`` and checks or describes it in C++, with the same rules as the views below
    (the same tensors twice in a row: a chunk plan is kept; a change: seen once again).
    Everything else it hands back (None), and the views below decide, as before."""

    __slots__ = ("_builds", "fast", "seen")

    def __init__(self) -> None:
        self.seen: _Seen | None = None
        self._builds = 0
        self.fast = _core.TorchGrads(*_TORCH)

    @property
    def builds(self) -> int:
        return self._builds + self.fast.builds

    @property
    def cached(self) -> bool:
        return self.fast.cached or (self.seen is not None and self.seen.kept is not None)

    def lease(self, items: Sequence[Any], grads: bool) -> tuple[Any, Any] | None:
        """``(lease, dtype)`` from the compiled record when ``items``' tensors (their
        ``.grad`` with ``grads``) are the plain case, else None. A kept set of views (a
        strided gradient among them) is tried first: the record would refer it back."""
        seen = self.seen
        if seen is not None and seen.kept is not None:
            return None
        got = self.fast.take(items, grads, _convert._BF16 is not None)
        if got is None:
            return None
        return got, _norm_dtype(got.dtypes)

    def kept(self, items: Sequence[Any], grads: bool) -> tuple[Any, Any] | None:
        """``(kept set, dtype)`` when ``items`` (parameters whose ``.grad`` is used, with
        ``grads``, or the tensors themselves) give the tensors the set was made over, with
        the memory it views; else None (then ``target`` decides). The hot path: one pass."""
        seen = self.seen
        if seen is None or seen.kept is None or seen.dead[0] or len(items) != len(seen.ids):
            return None
        tensors = map(_convert._GRAD, items) if grads else items
        return (seen.kept.set, seen.kept.dtype) if seen.kept.holds(tensors, seen.ids) else None

    def target(self, tensors: list[Any], arg: str, single: bool, repeats: str) -> tuple[Any, Any]:
        """``(target, dtype)`` for the operations of ``_ops``: the kept GradientSet when
        ``tensors`` are the last call's and still its memory, else fresh views of them
        (validated by ``_views``, which raises naming the tensor), kept as a set when they
        are the same tensors as the last call's."""
        seen = self.seen
        if seen is not None and seen.same(tensors):
            kept = seen.kept
            if kept is not None:
                if kept.holds(tensors, seen.ids):
                    return kept.set, kept.dtype
            else:
                arrays, dtype = _convert._views(tensors, arg, single, repeats)
                kept = _keep(tensors, arrays, dtype)
                if kept is not None:
                    seen.kept = kept
                    self._builds += 1
                    return kept.set, dtype
                return arrays, dtype
        self.seen = None  # forget the last call's tensors before viewing these
        self.fast.clear()
        arrays, dtype = _convert._views(tensors, arg, single, repeats)
        self.seen = _Seen(tensors)
        return arrays, dtype


def _keep(tensors: list[Any], arrays: list[Any], dtype: Any) -> _Kept | None:
    """A kept set over ``arrays`` (the views ``_views`` just made of ``tensors``), or None
    when a write set cannot hold them: a tensor twice (a read counts it twice, a clamp skips
    the repeat), or what a write refuses (overlapping memory, read by get_total_norm). The
    current call then goes on with ``arrays``, and its own errors."""
    live = [t for t in tensors if t is not None]
    if len(set(map(id, live))) != len(live):
        return None
    try:
        return _Kept(tensors, arrays, dtype)
    except (TypeError, ValueError):
        return None


# The drop-in functions' caches, one per model (keyed by the id of its first parameter or
# tensor: a key is only where to look, the check decides), the most recent few.
_CACHES: dict[tuple[int, int], ViewCache] = {}
_MOST = 8


def cache_for(items: list[Any]) -> ViewCache:
    key = (len(items), id(items[0]))
    cache = _CACHES.get(key)
    if cache is None:
        while len(_CACHES) >= _MOST:
            try:  # the oldest; another thread may change the dict meanwhile
                _CACHES.pop(next(iter(_CACHES)), None)
            except (RuntimeError, StopIteration):
                break
        cache = _CACHES[key] = ViewCache()
    return cache


def clear() -> None:
    """Forget every drop-in cache (tests)."""
    _CACHES.clear()
