"""Argument handling shared by the compiled functions: turning ``grads`` into a sequence,
viewing foreign arrays without a copy, and checking scalar arguments."""

from __future__ import annotations

import collections.abc
import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MODES",
    "as_array",
    "as_sequence",
    "check_clip_value",
    "check_eps",
    "check_max_norm",
    "check_norm_type",
    "check_total_norm",
    "resolve_mode",
]

MODES = ("propagate", "raise", "skip", "zero")


def _has_buffer(obj: object) -> bool:
    try:
        memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _is_single_array(obj: object) -> bool:
    return (
        hasattr(obj, "__array_interface__")
        or hasattr(obj, "__array_struct__")
        or hasattr(obj, "__dlpack__")
        or hasattr(obj, "__array__")
        or _has_buffer(obj)
    )


def as_sequence(grads: Any, arg: str = "grads") -> tuple[Sequence[Any], bool]:
    """Returns ``(sequence_of_arrays, single)``; ``single`` is True when ``grads`` was one array.

    Lists and tuples pass through untouched (the compiled core reads them directly); other
    iterables, generators included, are consumed once into a list.
    """
    if isinstance(grads, (list, tuple)):
        return grads, False
    if isinstance(grads, np.ndarray):
        return (grads,), True
    if grads is None:
        raise TypeError(f"{arg} must be an array or an iterable of arrays, not None")
    if isinstance(grads, (str, bytes, bytearray)) or not _is_single_array(grads):
        if isinstance(grads, (str, bytes, bytearray)) or not isinstance(
            grads, collections.abc.Iterable
        ):
            raise TypeError(
                f"{arg} must be an array or an iterable of arrays, not {type(grads).__name__}"
            )
        one_shot = isinstance(grads, collections.abc.Iterator)
        items = list(grads)
        if one_shot and not items:
            warnings.warn(
                f"`{arg}` is an empty generator, no gradient clipping will occur.",
                UserWarning,
                stacklevel=3,
            )
        return items, False
    return (grads,), True


def _torch_bfloat16_view(obj: Any) -> np.ndarray | None:
    # NumPy has no bfloat16 DLPack dtype; a CPU torch bfloat16 tensor is viewed through its
    # int16 bits instead (still the same memory), then as ml_dtypes.bfloat16.
    if str(getattr(obj, "dtype", "")) != "torch.bfloat16" or "ml_dtypes" not in sys.modules:
        return None
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    import ml_dtypes

    bits: np.ndarray = np.from_dlpack(obj.view(torch.int16))
    view: np.ndarray = bits.view(np.dtype(ml_dtypes.bfloat16))
    return view


def as_array(obj: Any, where: str) -> np.ndarray:
    """Views a non-ndarray gradient as an ndarray without copying, or raises TypeError."""
    try:
        if hasattr(obj, "__dlpack__") and not isinstance(obj, np.ndarray):
            view = _torch_bfloat16_view(obj)
            if view is not None:
                return view
            try:
                return np.from_dlpack(obj, copy=False)
            except (TypeError, ValueError, BufferError, RuntimeError):
                if not (hasattr(obj, "__array_interface__") or _has_buffer(obj)):
                    raise
        arr = np.asarray(obj, copy=False)
    except (TypeError, ValueError, BufferError, RuntimeError) as exc:
        raise TypeError(
            f"{where} ({type(obj).__name__}) cannot be used in place: NumPy cannot view it "
            f"without a copy, and a copy would silently lose the update ({exc})"
        ) from None
    if arr.dtype == object:
        raise TypeError(f"{where} ({type(obj).__name__}) is not an array of numbers")
    return arr


def _real(x: Any, name: str) -> float:
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a real number, not {type(x).__name__}")
    try:
        return float(x)
    except OverflowError:  # an int beyond the float range: out of range, not a type error
        return math.inf if x > 0 else -math.inf
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, not {type(x).__name__}") from None


def check_max_norm(x: Any, name: str = "max_norm") -> float:
    v = _real(x, name)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {v!r}")
    return v


def check_nonnegative(x: Any, name: str) -> float:
    v = _real(x, name)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
    return v


def check_clip_value(x: Any) -> float:
    return check_nonnegative(x, "clip_value")


def check_norm_type(x: Any) -> float:
    v = _real(x, "norm_type")
    if math.isnan(v) or v <= 0.0:
        raise ValueError(f"norm_type must be > 0 or inf, got {v!r}")
    return v


def check_eps(x: Any) -> float:
    return check_nonnegative(x, "eps")


def check_total_norm(x: Any) -> float:
    v = _real(x, "total_norm")
    if v < 0.0:
        raise ValueError(f"total_norm must be >= 0 (or NaN/inf), got {v!r}")
    return v


def resolve_mode(nonfinite: Any, error_if_nonfinite: Any) -> str:
    if not isinstance(nonfinite, str) or nonfinite not in MODES:
        raise ValueError(
            f"nonfinite must be one of {', '.join(map(repr, MODES))}, got {nonfinite!r}"
        )
    if error_if_nonfinite:
        if nonfinite not in ("propagate", "raise"):
            raise ValueError(
                f"error_if_nonfinite=True asks to raise, but nonfinite={nonfinite!r} was also given"
            )
        return "raise"
    return nonfinite
