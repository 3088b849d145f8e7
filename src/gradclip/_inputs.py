"""Argument handling shared by the compiled functions: turning ``grads`` into a sequence,
viewing foreign arrays without a copy, and checking scalar arguments."""

from __future__ import annotations

import collections.abc
import math
import sys
import warnings
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


def as_sequence(grads: Any, arg: str = "grads") -> tuple[Any, bool]:
    """Returns ``(grads, single)`` for the compiled core; ``single`` is True when ``grads``
    was one array (it is then wrapped in a tuple).

    Lists, tuples and dicts pass through untouched: the compiled core reads them directly,
    flattening nested ones (leaves depth first, dicts in their iteration order). Any other
    mapping becomes a dict; other iterables, generators included, are consumed once into a
    list.
    """
    if isinstance(grads, (list, tuple, dict)):
        return grads, False
    if isinstance(grads, np.ndarray):
        return (grads,), True
    if grads is None:
        raise TypeError(f"{arg} must be an array or a pytree of arrays, not None")
    if isinstance(grads, collections.abc.Mapping):
        return dict(grads), False
    if isinstance(grads, (str, bytes, bytearray)) or not _is_single_array(grads):
        if isinstance(grads, (str, bytes, bytearray)) or not isinstance(
            grads, collections.abc.Iterable
        ):
            raise TypeError(
                f"{arg} must be an array or a pytree of arrays (lists, tuples, dicts), "
                f"not {type(grads).__name__}"
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


def loaded_bfloat16() -> np.dtype[Any] | None:
    """``ml_dtypes.bfloat16`` as a dtype if ml_dtypes is imported, else None (never imports it).

    A bfloat16 array can only exist once ml_dtypes is imported (importing it registers the
    type with NumPy), so this is enough to recognise every one; the compiled core asks it
    when it meets a dtype it does not know.
    """
    ml_dtypes = sys.modules.get("ml_dtypes")
    bf16 = getattr(ml_dtypes, "bfloat16", None)  # None too while ml_dtypes is half imported
    return None if bf16 is None else np.dtype(bf16)


def _torch_bfloat16_view(obj: Any) -> np.ndarray | None:
    # NumPy has no bfloat16 DLPack dtype; a CPU torch bfloat16 tensor is viewed through its
    # int16 bits instead (still the same memory), then as ml_dtypes.bfloat16. The tensor
    # exists without ml_dtypes, so this is where it is imported, if installed.
    if str(getattr(obj, "dtype", "")) != "torch.bfloat16":
        return None
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        import ml_dtypes
    except ImportError:  # then the tensor is refused as a type NumPy cannot view
        return None

    bits: np.ndarray = np.from_dlpack(obj.view(torch.int16))
    view: np.ndarray = bits.view(np.dtype(ml_dtypes.bfloat16))
    return view


def _is_torch_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _not_a_gradient(obj: Any, where: str, write: bool) -> Any:
    """A parameter handed over instead of its gradient: refused by a writing call (clipping
    it would change the weights). A reading call reads it (a weight norm is a fair question);
    a torch parameter is read through ``detach()``, the same memory. Returns the object to
    view."""
    if _is_torch_tensor(obj):
        if not obj.requires_grad:
            return obj
        what = "a torch tensor with requires_grad=True (a parameter, not a gradient)"
    elif getattr(obj, "grad", None) is not None:
        what = f"a {type(obj).__name__} that carries a .grad (a parameter, not a gradient)"
    else:
        return obj
    if write:
        raise TypeError(
            f"{where} is {what}; clipping it would change the weights. Pass the gradients "
            "instead ([p.grad for p in params]), or use gradclip.torch, whose functions take "
            "parameters as torch.nn.utils does"
        )
    return obj.detach() if _is_torch_tensor(obj) else obj


def _leaf_error(obj: Any, where: str) -> TypeError | None:
    """The message for a leaf that is not an array at all, or None."""
    if isinstance(obj, np.ma.MaskedArray):
        return TypeError(
            f"{where} is a masked array; gradclip would read and write its masked entries "
            f"too. Pass its .data to clip every entry, or fill the masked ones first"
        )
    if isinstance(obj, np.generic):
        return TypeError(
            f"{where} is a NumPy scalar ({type(obj).__name__}), not an array: it holds a copy "
            "of the value, so clipping it in place could not change your gradient. Pass the "
            "array it came from"
        )
    if isinstance(obj, (bool, int, float, complex)):
        return TypeError(
            f"{where} is a {type(obj).__name__} ({obj!r}), not an array: gradclip clips arrays "
            "in place and a number has no memory to write to. Pass NumPy arrays (or use "
            "gradclip.clip_by_global_norm, which returns clipped copies)"
        )
    if isinstance(obj, (str, bytes)):
        return TypeError(
            f"{where} is a {type(obj).__name__} ({obj!r}), not an array; if it is a dict key, "
            "pass the dict itself (gradclip takes dicts and clips their values)"
        )
    return None


def as_array(obj: Any, where: str, write: bool = True) -> np.ndarray:
    """Views a non-ndarray gradient as an ndarray without copying, or raises TypeError.

    Called by the compiled core for every leaf that is not a plain ndarray. A reading call
    (``write=False``) may also take a copy, since nothing is written back.
    """
    error = _leaf_error(obj, where)
    if error is not None:
        raise error
    obj = _not_a_gradient(obj, where, write)
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
            except MemoryError:
                raise
            except Exception as exc:  # the exporter's own failure, named with the position
                raise TypeError(
                    f"{where} ({type(obj).__name__}): its __dlpack__ failed with "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        arr = np.asarray(obj, copy=None if not write else False)
    except (TypeError, ValueError, BufferError, RuntimeError):
        raise TypeError(
            f"{where} ({type(obj).__name__}) cannot be used in place: NumPy cannot view it as "
            "an array without a copy, and a copy would silently lose the update. Pass NumPy "
            "arrays or objects that expose their memory (the buffer protocol, "
            "__array_interface__ or __dlpack__); gradclip.clip_by_global_norm returns clipped "
            "copies instead"
        ) from None
    if arr.dtype == object:
        raise TypeError(f"{where} ({type(obj).__name__}) is not an array of numbers")
    return arr


def _real(x: Any, name: str) -> float:
    if type(x) is float:  # the common case, first: this runs on every call
        return x
    if isinstance(x, (str, bytes, bool, np.bool_)) or x is None:
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
    if type(x) is float and x > 0.0:  # the common case (NaN fails the comparison)
        return x
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


def check_flag(value: Any, name: str) -> bool:
    """A bool argument: Python's or NumPy's bool, or an integer (as ``if value:`` reads it);
    anything else (an array, whose truth is ambiguous) is a TypeError naming the argument."""
    if not isinstance(value, (bool, np.bool_, int, np.integer)):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return bool(value)


def resolve_mode(nonfinite: Any, error_if_nonfinite: Any) -> str:
    if not isinstance(nonfinite, str) or nonfinite not in MODES:
        raise ValueError(
            f"nonfinite must be one of {', '.join(map(repr, MODES))}, got {nonfinite!r}"
        )
    if check_flag(error_if_nonfinite, "error_if_nonfinite"):
        if nonfinite not in ("propagate", "raise"):
            raise ValueError(
                f"error_if_nonfinite=True asks to raise, but nonfinite={nonfinite!r} was also given"
            )
        return "raise"
    return nonfinite
