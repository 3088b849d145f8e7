"""Global norms across processes (MPI through mpi4py; torch.distributed through the same
function, from gradclip.torch).

Each rank reduces its own arrays to one number, its local norm (overflow-safe, float64);
one collective gathers those numbers (8 bytes per rank, whatever the model size); every
rank then combines them in rank order with the same arithmetic, so all ranks get the same
bits and apply the same coefficient. A rank whose input fails validation sends its error
(or a MemoryError) instead of a norm, so every rank raises and none writes (no rank is left
waiting in a collective).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from . import _core

__all__ = ["global_norm"]

_BUILTIN_ERRORS: dict[str, type[Exception]] = {
    "TypeError": TypeError,
    "ValueError": ValueError,
    "MemoryError": MemoryError,
}


def global_norm(comm: Any, local: Callable[[], float], p: float) -> float:
    """Run ``local()`` on this rank, gather every rank's result, and combine them.

    ``comm`` is an mpi4py communicator, or anything with its ``allgather`` of one Python
    object per rank (``gradclip.torch`` passes one over torch.distributed process groups).
    """
    if not callable(getattr(comm, "allgather", None)):
        raise TypeError(f"comm must be an mpi4py communicator, not {type(comm).__name__}")
    error: Exception | None = None
    value = math.nan
    try:
        value = float(local())
    except (TypeError, ValueError, MemoryError) as exc:
        error = exc
    sent = (value, None if error is None else (type(error).__name__, str(error)))
    parts = comm.allgather(sent)
    if error is not None:
        raise error
    for rank, (_, err) in enumerate(parts):
        if err is not None:
            kind = _BUILTIN_ERRORS.get(err[0], RuntimeError)
            raise kind(f"rank {rank} rejected its input, so no rank writes: {err[1]}")
    # the engine's combination of partial norms (scaled by the largest, in rank order)
    return _core.norm_of_norms([v for v, _ in parts], p)
