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
    "check_nonnegative",
    "check_norm_type",
    "check_total_norm",
    "resolve_mode",
    "value_bounds",
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


# PyTorch's string spellings: ``clip_grad_norm_`` converts norm_type with float(), so "inf"
# works there, and ``torch.norm`` takes "fro" (the Frobenius norm: the 2-norm of all elements).
_NORM_NAMES = {"inf": math.inf, "infinity": math.inf, "fro": 2.0}


def check_norm_type(x: Any) -> float:
    if isinstance(x, str):
        v = _NORM_NAMES.get(x.strip().lower())
        if v is None:
            raise TypeError(f"norm_type must be a real number, 'inf' or 'fro', not str {x!r}")
        return v
    v = _real(x, "norm_type")
    if math.isnan(v) or v <= 0.0:
        raise ValueError(f"norm_type must be > 0 or inf, got {v!r}")
    return v


def check_bound(x: Any, name: str) -> float | None:
    """A value-clipping bound: None (no bound on that side) or a real number, not NaN."""
    if x is None:
        return None
    v = _real(x, name)
    if math.isnan(v):
        raise ValueError(f"{name} must be a number or None, got nan")
    return v


def value_bounds(clip_value: Any, lo: Any, hi: Any) -> tuple[float, float]:
    """The [lo, hi] of ``clip_grad_value_``: [-clip_value, clip_value], or min/max with an
    infinite bound for a side given as None."""
    if clip_value is not None:
        if lo is not None or hi is not None:
            raise TypeError("pass clip_value or min/max, not both")
        v = check_clip_value(clip_value)
        return -v, v
    if lo is None and hi is None:
        raise TypeError("clip_grad_value_ needs clip_value, or min and/or max")
    low = check_bound(lo, "min")
    high = check_bound(hi, "max")
    low = -math.inf if low is None else low
    high = math.inf if high is None else high
    if low > high:
        raise ValueError(f"min must be <= max, got min={low!r} and max={high!r}")
    return low, high


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
