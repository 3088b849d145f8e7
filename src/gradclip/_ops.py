"""The compiled core's two tables of operations, typed.

Every operation runs as ``ops.name(target, ...)``: the same compiled method for a free
function's arrays (``ONCE``, ``_core.once``: ``target`` is ``as_sequence``'s
``(sequence, single)``, made into a one-shot set inside the call and validated then and
there) and for a :class:`gradclip.GradientSet` (``SET``, the compiled set's class:
``target`` is the set itself, with its cached plan and its re-check). :class:`Ops` is what
both offer, so mypy checks each call against ``_core.pyi`` whichever table it goes to.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from . import _core

__all__ = ["ENGINE_MODE", "ONCE", "SET", "Norms", "Ops", "Target"]

Norms = npt.NDArray[np.float64]
# a free function's arrays: as_sequence's (sequence, single)
Target = tuple[Any, bool]
T_contra = TypeVar("T_contra", contravariant=True)


class Ops(Protocol[T_contra]):
    """The operations of ``_core.once`` (on a :data:`Target`) and of ``_core.GradientSet``
    (called on the class, the set first). Positional-only: the set's methods name their
    first argument ``self``."""

    def own(self, target: T_contra, write: bool = ..., /) -> _core.GradientSet: ...
    def total_norm(self, target: T_contra, p: float, /) -> float: ...
    def tensor_norms(self, target: T_contra, p: float, /) -> Norms: ...
    def clip_total(
        self,
        target: T_contra,
        max_norm: float,
        p: float,
        mode: _core.NonFinite,
        eps: float,
        with_norms: bool,
        /,
    ) -> tuple[float, float, Norms | None]: ...
    def apply_norm(
        self, target: T_contra, max_norm: float, norm: float, eps: float, mode: _core.NonFinite, /
    ) -> float: ...
    def clamp(self, target: T_contra, lo: float, hi: float, /) -> None: ...
    def clip_each(
        self, target: T_contra, max_norm: float, p: float, mode: _core.NonFinite, eps: float, /
    ) -> Norms: ...
    def clip_block_rms(self, target: T_contra, threshold: float, eps: float, /) -> Norms: ...
    def unscale_clip(
        self,
        target: T_contra,
        max_norm: float,
        inv_scale: float,
        p: float,
        eps: float,
        with_norms: bool,
        /,
    ) -> tuple[float, float, Norms | None]: ...


ONCE: Ops[Target] = _core.once
SET: Ops[_core.GradientSet] = _core.GradientSet

# The engine's non-finite policies; "raise" is the engine's "skip" (nothing written), then
# an exception in Python. The one mapping from the public spelling to the engine's.
ENGINE_MODE: dict[str, _core.NonFinite] = {
    "propagate": _core.NonFinite.propagate,
    "raise": _core.NonFinite.skip,
    "skip": _core.NonFinite.skip,
    "zero": _core.NonFinite.zero,
}
