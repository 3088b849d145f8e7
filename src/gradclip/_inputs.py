"""Argument handling shared by the compiled functions: turning ``grads`` into a sequence,
viewing foreign arrays without a copy, and checking scalar arguments."""

from __future__ import annotations

import collections.abc
import math
import os
import re
import sys
import types
import warnings
from collections.abc import Iterable
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


def _from_dlpack(obj: Any) -> np.ndarray:
    """``np.from_dlpack`` without a copy; NumPy 2.0 takes no keyword arguments (and never
    copies a CPU tensor; its arrays are read-only, so a writing call refuses them)."""
    try:
        return np.from_dlpack(obj, copy=False)
    except TypeError as exc:
        if "keyword" not in str(exc) and "copy" not in str(exc):
            raise
    return np.from_dlpack(obj)


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


class JaxLeaves(list):  # type: ignore[type-arg]
    """The leaves of a tree that ``jax.tree_util`` flattened (None leaves kept, so positions
    count them as gradclip's own trees do), with its ``treedef`` to rebuild the structure."""

    __slots__ = ("_paths", "tree", "treedef")
    treedef: Any
    tree: Any
    _paths: list[str] | None

    def leaf_name(self, arg: str, i: int) -> str:
        """Leaf ``i`` as error messages name it: ``arg`` and its key path
        (``jax.tree_util.keystr``), as for gradclip's own trees (``grads['enc'][0]``)."""
        if self._paths is None:
            tu = sys.modules["jax"].tree_util
            pairs = tu.tree_flatten_with_path(self.tree, is_leaf=lambda x: x is None)[0]
            self._paths = [tu.keystr(path) for path, _ in pairs]
        return arg + self._paths[i]


# Types known to be pytree leaves / nodes for jax.tree_util, learned as they are met: a type's
# registration decides, and registering happens where a class is defined, before any instance
# reaches gradclip.
_LEAF_TYPES: set[type] = {np.ndarray, type(None)}
_NODE_TYPES: set[type] = set()


def _is_jax_node(obj: Any, jax: Any) -> bool:
    kind = type(obj)
    if kind in _LEAF_TYPES:
        return False
    if kind not in _NODE_TYPES:
        tu = jax.tree_util
        with warnings.catch_warnings():
            # JAX warns that an unregistered iterable (a generator) is a leaf: it is one here
            warnings.simplefilter("ignore", DeprecationWarning)
            is_node = not tu.treedef_is_leaf(tu.tree_structure(obj))
        (_NODE_TYPES if is_node else _LEAF_TYPES).add(kind)
    return kind in _NODE_TYPES


def _holds_jax_node(node: Any, jax: Any, depth: int = 0) -> bool:
    """Whether a tree of gradclip's own containers holds a node only JAX knows (a registered
    dataclass, a custom node, a Flax FrozenDict, ...). One ``set(map(type, ...))`` per
    container: a flat list of arrays costs a few microseconds, and nothing without JAX."""
    if depth > _MAX_DEPTH:
        return False  # the compiled walk raises its nesting error
    items = list(node.values()) if isinstance(node, dict) else node
    kinds = set(map(type, items))
    if kinds <= _LEAF_TYPES:
        return False
    for kind in kinds - _LEAF_TYPES:
        same = [x for x in items if type(x) is kind]
        if issubclass(kind, (list, tuple, dict)):  # gradclip's containers: look inside
            if any(_holds_jax_node(x, jax, depth + 1) for x in same):
                return True
        elif _is_jax_node(same[0], jax):
            return True
    return False


_MAX_DEPTH = 200


def _jax_leaves(tree: Any, jax: Any) -> JaxLeaves:
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is None)
    out = JaxLeaves(leaves)
    out.treedef = treedef
    out.tree = tree
    out._paths = None
    return out


# this package's folder, with a separator: frames in files below it are gradclip's own
_PACKAGE_PREFIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")


def _outside_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by this function's caller name the first
    frame outside the package, however deep inside it the call is (``skip_file_prefixes``
    does this on Python 3.12+)."""
    level = 2  # level 1 is the caller, the function that warns
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_PREFIX):
        level, frame = level + 1, frame.f_back
    return level


def consumed(grads: Iterable[Any], arg: str) -> list[Any]:
    """The entries of an iterable, consumed once into a list; an empty generator (any
    exhausted iterator) warns, as PyTorch does. Shared with gradclip.reference (pure Python:
    this module does not import the compiled core). The warning names the user's line: the
    first frame outside the package."""
    one_shot = isinstance(grads, collections.abc.Iterator)
    items = list(grads)
    if one_shot and not items:
        warnings.warn(
            f"`{arg}` is an empty generator, no gradient clipping will occur.",
            UserWarning,
            stacklevel=_outside_stacklevel(),
        )
    return items


def as_sequence(grads: Any, arg: str = "grads") -> tuple[Any, bool]:
    """Returns ``(grads, single)`` for the compiled core; ``single`` is True when ``grads``
    was one array (it is then wrapped in a tuple).

    Lists, tuples and dicts pass through untouched: the compiled core reads them directly,
    flattening nested ones (leaves depth first, dicts in their iteration order). When JAX is
    imported (never imported here) and the tree holds a node only JAX knows (a registered
    dataclass or custom node, a Flax ``FrozenDict``, ...), ``jax.tree_util`` flattens the
    whole tree (its leaf order, None leaves kept) into a :class:`JaxLeaves`. Any other
    mapping becomes a dict; other iterables, generators included, are consumed once into a
    list.
    """
    if isinstance(grads, (list, tuple, dict)):
        jax = sys.modules.get("jax")
        if jax is not None and type(grads) is not JaxLeaves and _holds_jax_node(grads, jax):
            return _jax_leaves(grads, jax), False
        return grads, False
    if isinstance(grads, np.ndarray):
        return (grads,), True
    if grads is None:
        raise TypeError(f"{arg} must be an array or a pytree of arrays, not None")
    jax = sys.modules.get("jax")
    if jax is not None and _is_jax_node(grads, jax):
        return _jax_leaves(grads, jax), False
    if isinstance(grads, collections.abc.Mapping):
        return dict(grads), False
    if isinstance(grads, (str, bytes, bytearray)) or not _is_single_array(grads):
        if isinstance(grads, (str, bytes, bytearray)) or not isinstance(
            grads, collections.abc.Iterable
        ):
            raise TypeError(
                f"{arg} must be an array or a pytree of arrays (lists, tuples, dicts; with "
                f"JAX imported, any JAX pytree), not {type(grads).__name__}"
            )
        return consumed(grads, arg), False
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


def _copy_hint(where: str, text: str) -> str:
    """``text`` (which names gradclip.clip_by_global_norm, the copying alternative), except
    for the ``out`` arrays of a copying call: its caller already uses that function."""
    return "" if where.startswith("out") else text


def _str_hint(where: str) -> str:
    # "[i][0]": the first item of an entry of a sequence, as the name in a (name, array)
    # pair is (list(d.items()), named_parameters())
    if re.search(r"\[\d+\]\[0\]$", where):
        return (
            "; if grads holds (name, array) pairs (list(d.items()) gives those), pass "
            "dict(pairs), whose values gradclip clips, or the arrays alone (d.values())"
        )
    return (
        "; if it is a dict key, pass the dict itself (gradclip takes dicts and clips their values)"
    )


def _leaf_error(obj: Any, where: str, write: bool) -> TypeError | None:
    """The message for a leaf that is not an array at all, or None. A reading or copying call
    (``write=False``) reads numbers and NumPy scalars as 0-d arrays."""
    if isinstance(obj, np.ma.MaskedArray):
        return TypeError(
            f"{where} is a masked array; gradclip would read and write its masked entries "
            f"too. Pass its .data to clip every entry, or fill the masked ones first"
        )
    if isinstance(obj, (str, bytes)):
        return TypeError(
            f"{where} is a {type(obj).__name__} ({obj!r}), not an array{_str_hint(where)}"
        )
    if not write:
        return None
    if isinstance(obj, np.generic):
        return TypeError(
            f"{where} is a NumPy scalar ({type(obj).__name__}), not an array: it holds a copy "
            "of the value, so clipping it in place could not change your gradient. Pass the "
            "array it came from"
        )
    if isinstance(obj, (bool, int, float, complex)):
        hint = _copy_hint(
            where, " (or use gradclip.clip_by_global_norm, which returns clipped copies)"
        )
        return TypeError(
            f"{where} is a {type(obj).__name__} ({obj!r}), not an array: gradclip clips arrays "
            f"in place and a number has no memory to write to. Pass NumPy arrays{hint}"
        )
    return None


def as_array(obj: Any, where: str, write: bool = True) -> np.ndarray:
    """Views a non-ndarray gradient as an ndarray without copying, or raises TypeError.

    Called by the compiled core for every leaf that is not a plain ndarray. A reading or
    copying call (``write=False``) takes a copy where no view exists (a bfloat16 JAX array,
    which DLPack cannot describe to NumPy; a number), since nothing is written back.
    """
    error = _leaf_error(obj, where, write)
    if error is not None:
        raise error
    obj = _not_a_gradient(obj, where, write)
    try:
        if hasattr(obj, "__dlpack__") and not isinstance(obj, np.ndarray):
            view = _torch_bfloat16_view(obj)
            if view is not None:
                return view
            try:
                return _from_dlpack(obj)
            except (TypeError, ValueError, BufferError, RuntimeError):
                if write and not (hasattr(obj, "__array_interface__") or _has_buffer(obj)):
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
        if not write:
            raise TypeError(
                f"{where} ({type(obj).__name__}) cannot be read as an array: NumPy cannot "
                "convert it (np.asarray fails)"
            ) from None
        hint = _copy_hint(where, "; gradclip.clip_by_global_norm returns clipped copies instead")
        raise TypeError(
            f"{where} ({type(obj).__name__}) cannot be used in place: NumPy cannot view it as "
            "an array without a copy, and a copy would silently lose the update. Pass NumPy "
            "arrays or objects that expose their memory (the buffer protocol, "
            f"__array_interface__ or __dlpack__){hint}"
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
