"""Global norms across processes (MPI through mpi4py; torch.distributed through the same
function, from gradclip.torch).

Each rank reduces its own arrays to one number, its local norm (overflow-safe, float64);
one collective gathers those numbers (8 bytes per rank, whatever the model size); every
rank then combines them in rank order with the same arithmetic, so all ranks get the same
bits and apply the same coefficient. A rank whose ``local()`` raises (any ``Exception``: a
validation error, a MemoryError, or anything a user's object raises while it is read) sends
the error instead of a norm, so every rank raises and none writes: no rank is left waiting
in a collective, and no rank's next collective is paired with another rank's this one.
Scalar arguments that every rank must give alike (``agree``) travel in the same message: a
rank that differs makes every rank raise, before any writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from . import _core

__all__ = ["global_norm"]

_BUILTIN_ERRORS: dict[str, type[Exception]] = {
    "TypeError": TypeError,
    "ValueError": ValueError,
    "MemoryError": MemoryError,
}


def global_norm(
    comm: Any,
    local: Callable[[], float],
    p: float,
    agree: Sequence[tuple[str, Callable[[], float]]] = (),
) -> float:
    """Run ``local()`` on this rank, gather every rank's result, and combine them.

    ``comm`` is an mpi4py communicator, or anything with its ``allgather`` of one Python
    object per rank (``gradclip.torch`` passes one over torch.distributed process groups):
    here a ``(local norm, error or None, agreed values)`` triple. ``agree`` names scalar
    arguments (``("max_norm", getter)``, read after ``local()``) whose values every rank must
    give alike; a difference is a ValueError on every rank.
    """
    if not callable(getattr(comm, "allgather", None)):
        raise TypeError(f"comm must be an mpi4py communicator, not {type(comm).__name__}")
    error: Exception | None = None
    value = math.nan
    same = (math.nan,) * len(agree)
    try:
        value = float(local())
        same = tuple(float(get()) for _, get in agree)
    except Exception as exc:  # sent to every rank, then raised here as it is
        # Any exception, not only the validation errors: a rank that raised before the
        # collective would leave the others waiting in it, or pair their next collective
        # with this one (then they write with a norm made of the wrong messages).
        error = exc
    sent = (value, None if error is None else (type(error).__name__, str(error)), same)
    parts = comm.allgather(sent)
    if error is not None:
        raise error
    _raise_any_error(parts)
    _check_agreement(parts, [name for name, _ in agree])
    # the engine's combination of partial norms (scaled by the largest, in rank order)
    return _core.norm_of_norms([v for v, _, _ in parts], p)


def _raise_any_error(parts: list[Any]) -> None:
    """Another rank's error, raised here (the same kind for the builtin ones)."""
    for rank, (_, err, _) in enumerate(parts):
        if err is not None:
            kind = _BUILTIN_ERRORS.get(err[0])
            text = f"rank {rank} rejected its input, so no rank writes: "
            if kind is None:  # another kind: a RuntimeError that names it
                raise RuntimeError(text + f"{err[0]}: {err[1]}")
            raise kind(text + err[1])


def _check_agreement(parts: list[Any], names: list[str]) -> None:
    """A ValueError when the ranks gave different values for one of ``names`` (NaN equals
    NaN here: a NaN total norm on every rank is the same argument)."""
    for i, name in enumerate(names):
        values = [same[i] for _, _, same in parts]
        first = values[0]
        if any(not (v == first or (math.isnan(v) and math.isnan(first))) for v in values):
            given = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise ValueError(
                f"the ranks were given different {name} ({given}): every rank must pass the "
                "same, or they would scale their parts by different coefficients. No rank wrote"
            )
