"""GradClipper: the cached form for a training loop."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._cache import ViewCache
from ._convert import _GRAD, _as_list, _hint
from ._ops import _bound, _clamp, _clip_norm, _get_norm, _p, _scale, _torch_names, _total, _value
from ._sharded import (
    _sharded_clip_norm,
    _sharded_clip_with_norm,
    _sharded_get_norm,
    _sharding,
    _shards_of,
)

# ---------------------------------------------------------------- the cached form


class GradClipper:
    """Clips the gradients of a fixed list of parameters, step after step, with less work
    per call than the functions.

    Each call reads the parameters' current ``.grad``. Once the clipper has seen the same
    gradient tensors (the same objects) on two calls in a row, it keeps a
    :class:`gradclip.GradientSet` over their memory and reuses it while each still has that
    memory (data pointer, size, dtype, layout); at a change it views the new ones. So
    ``optimizer.zero_grad()`` (which sets the gradients to None, and the next backward
    allocates new ones) is safe: the live gradients are always the ones clipped.

    The clipper never holds gradient memory: it remembers the last call's gradients through
    weak references, and the set it keeps views their memory without holding the tensors
    (the check on each call finds them alive, with the same memory, before it is used), so
    ``zero_grad(set_to_none=True)`` frees the gradients at once, as it does without a
    clipper. The check costs a few C-level attribute reads per gradient (``.grad``, ``id``,
    ``data_ptr()``, ``nbytes``, dtype, contiguity).

    Parameters
    ----------
    parameters : Tensor or iterable of Tensors
        Consumed once (``model.parameters()`` is a generator). Each parameter once.
    group : torch.distributed ProcessGroup or DeviceMesh, optional
        As for :func:`clip_grad_norm_`. Sharded gradients (DTensors, or ``group``) take the
        functions' sharded path on every call: no set is kept over them.

    Examples
    --------
    >>> import torch, gradclip.torch
    >>> model = torch.nn.Linear(3, 1)
    >>> clipper = gradclip.torch.GradClipper(model.parameters())
    >>> model(torch.ones(2, 3)).sum().backward()
    >>> norm = clipper.clip_grad_norm_(1.0)
    >>> bool(clipper.get_total_norm() <= 1.0)
    True
    """

    __slots__ = ("_cache", "_group", "_params")

    def __init__(
        self, parameters: torch.Tensor | Iterable[torch.Tensor], *, group: Any = None
    ) -> None:
        params, single = _as_list(parameters, "parameters")
        seen: dict[int, int] = {}
        for i, p in enumerate(params):
            where = "parameters" if single else f"parameters[{i}]"
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"{where} is a {type(p).__name__}, not a torch.Tensor{_hint(p)}")
            first = seen.setdefault(id(p), i)
            if first != i:
                raise ValueError(
                    f"parameters[{first}] and parameters[{i}] are the same parameter: its "
                    "gradient would count twice in the norm and be scaled twice. Pass each "
                    "parameter once"
                )
        self._params = tuple(params)
        self._cache = ViewCache()  # the last call's gradients, and the set kept over them
        self._group = group

    @property
    def parameters(self) -> tuple[torch.Tensor, ...]:
        """The parameters whose gradients are clipped."""
        return self._params

    @property
    def builds(self) -> int:
        """How many times the clipper has built a GradientSet to keep (once per run of calls
        that find the same gradient tensors)."""
        return self._cache.builds

    @property
    def cached(self) -> bool:
        """Whether the clipper keeps a GradientSet over the current gradients."""
        return self._cache.cached

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"GradClipper({len(self._params)} parameters)"

    def _target(self) -> tuple[Any, Any]:
        """The current gradients: the kept set when they are the ones it was built over, else
        fresh views (kept as a set when they are the same as the last call's)."""
        cache = self._cache
        hit = cache.lease(self._params, True)  # the plain case: every per-tensor read in C++
        if hit is None:
            hit = cache.kept(self._params, True)
        if hit is not None:
            return hit
        grads = _shards_of(list(map(_GRAD, self._params)), False)
        return self._cache.target(grads, "parameters", False, "refuse")

    @_torch_names("parameters")
    def clip_grad_norm_(
        self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
    ) -> torch.Tensor:
        """:func:`clip_grad_norm_` of the parameters' current gradients."""
        params, sharding = self._sharding()
        if sharding is not None:
            return _sharded_clip_norm(params, sharding, max_norm, norm_type, error_if_nonfinite)
        bound, p = _bound(max_norm), _p(norm_type)
        target, dtype = self._target()
        return _clip_norm(target, dtype, bound, p, bool(error_if_nonfinite))

    @_torch_names("parameters")
    def get_total_norm(
        self, norm_type: float = 2.0, error_if_nonfinite: bool = False
    ) -> torch.Tensor:
        """The total norm of the parameters' current gradients (as :func:`get_total_norm`
        of them)."""
        params, sharding = self._sharding()
        if sharding is not None:
            grads = [q.grad for q in params]
            return _sharded_get_norm(grads, sharding, norm_type, error_if_nonfinite)
        p = _p(norm_type)
        target, dtype = self._target()
        return _get_norm(target, dtype, p, bool(error_if_nonfinite))

    @_torch_names("parameters")
    def clip_grads_with_norm_(self, max_norm: float, total_norm: torch.Tensor) -> None:
        """:func:`clip_grads_with_norm_` of the parameters' current gradients."""
        params, sharding = self._sharding()
        if sharding is not None:
            _sharded_clip_with_norm(params, sharding, max_norm, total_norm)
            return
        bound, total = _bound(max_norm), _total(total_norm)
        target, dtype = self._target()
        if dtype is not None:
            _scale(target, bound, total)

    def _sharding(self) -> tuple[Any, tuple[Any, Any] | None]:
        # sharded gradients (DTensors, or group=) take the functions' sharded path on every
        # call: no set is kept over them
        return _sharding(self._params, self._group, "parameters")

    @_torch_names("parameters")
    def clip_grad_value_(self, clip_value: float) -> None:
        """:func:`clip_grad_value_` of the parameters' current gradients."""
        v = _value(clip_value)
        target, dtype = self._target()
        if dtype is not None:
            _clamp(target, v)
