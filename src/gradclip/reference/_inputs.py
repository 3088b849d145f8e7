"""Dtypes, bound rounding and the checks of scalar and array arguments (gradclip.reference)."""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .._inputs import consumed

Array = npt.NDArray[Any]
Float64Array = npt.NDArray[np.float64]

_NONFINITE_MODES = ("propagate", "raise", "skip", "zero")

# Below this the plain float64 sum of |x|**p may have lost relative precision to gradual
# underflow (2**-1022 is the smallest normal, 53 more bits keep full precision).
_SMALL_SUM = 2.0**-969

# Elements per block when converting to float64: bounds the temporary memory of the reference
# (a 50M-element array is never materialised as one float64 copy or one Python list).
_BLOCK = 1 << 18

_EXPECTED_DTYPES = "expected float16, bfloat16, float32 or float64"


# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------


def _bfloat16() -> np.dtype[Any] | None:
    """Return ``ml_dtypes.bfloat16`` as a dtype if ml_dtypes is imported, else None.

    It never imports ml_dtypes: a bfloat16 array exists only once ml_dtypes is imported
    (that registers the type with NumPy), so an array of any other dtype need not pay for it.
    """
    bf16 = getattr(sys.modules.get("ml_dtypes"), "bfloat16", None)
    return None if bf16 is None else np.dtype(bf16)


def _is_supported_dtype(dtype: np.dtype[Any]) -> bool:
    if dtype.kind == "f":
        return dtype.isnative and dtype.itemsize in (2, 4, 8)
    bf16 = _bfloat16()
    return bf16 is not None and dtype == bf16


# (significand digits, exponent of the smallest normal, largest finite value) of each type
# a bound can be rounded to; bfloat16 has float32's exponent range and 8 digits.
_FORMATS: dict[str, tuple[int, int, float]] = {
    "float16": (11, -14, 65504.0),
    "bfloat16": (8, -126, float.fromhex("0x1.fep127")),
    "float32": (24, -126, float.fromhex("0x1.fffffep127")),
}


def _round_to_dtype(value: float, dtype: np.dtype[Any]) -> float:
    """``value`` rounded once, to nearest with ties to even, to ``dtype``, as a float.

    Written out in integer arithmetic so that it depends on no library's conversion (the
    float64 -> bfloat16 cast of ml_dtypes rounded through float32 before 0.7.0). IEEE 754:
    the result is the multiple of the type's spacing at ``value`` nearest to it (the even
    multiple on a tie); a result beyond the largest finite value is an infinity.
    """
    if dtype == np.float64 or value == 0.0 or not math.isfinite(value):
        return value
    digits, emin, largest = _FORMATS[dtype.name]
    exponent = math.frexp(value)[1]  # |value| = f * 2**exponent, 0.5 <= f < 1
    shift = max(exponent, emin + 1) - digits  # the spacing is 2**shift (fixed for subnormals)
    num, den = abs(value).as_integer_ratio()  # den is a power of two
    if shift >= 0:
        den <<= shift
    else:
        num <<= -shift
    q, r = divmod(num, den)  # |value| / 2**shift = q + r / den
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    try:
        rounded = math.ldexp(float(q), shift)  # q has at most digits + 1 bits: exact
    except OverflowError:  # beyond the double range, so far beyond the type's
        rounded = math.inf
    if rounded > largest:
        rounded = math.inf
    return math.copysign(rounded, value)


# --------------------------------------------------------------------------------------------
# scalar arguments
# --------------------------------------------------------------------------------------------


def _real(value: object, name: str) -> float:
    """Convert a real number to float; anything else (str, None, complex) is a TypeError.

    Python and NumPy real scalars are accepted, and so is any other object ``float()``
    accepts (a 0-d array, a one-element tensor), except strings and complex numbers.
    """
    if isinstance(value, (bool, np.bool_)):  # True is not a bound anyone means
        raise TypeError(f"{name} must be a real number, got bool")
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # an int beyond the float range: out of range, not a type error
            return math.inf if value > 0 else -math.inf  # type: ignore[operator]
    if value is None or isinstance(value, (str, bytes, numbers.Complex)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a complex 0-d array warns, then is rejected
            return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, Warning):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None


def _check_max_norm(max_norm: object) -> float:
    value = _real(max_norm, "max_norm")
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"max_norm must be finite and > 0, got {value!r}")
    return value


def _check_norm_type(norm_type: object) -> float:
    # PyTorch's spellings: "inf" (its float() conversion), "fro" (torch.norm; the 2-norm of
    # all elements)
    if isinstance(norm_type, str):
        name = norm_type.strip().lower()
        if name in ("inf", "infinity"):
            return math.inf
        if name == "fro":
            return 2.0
        raise TypeError(f"norm_type must be a real number, 'inf' or 'fro', not str {norm_type!r}")
    value = _real(norm_type, "norm_type")
    if math.isnan(value) or value <= 0.0:
        raise ValueError(f"norm_type must be > 0 or inf, got {value!r}")
    return value


def _check_eps(eps: object) -> float:
    value = _real(eps, "eps")
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"eps must be finite and >= 0, got {value!r}")
    return value


def _check_mode(nonfinite: object, error_if_nonfinite: object) -> str:
    if not isinstance(nonfinite, str) or nonfinite not in _NONFINITE_MODES:
        raise ValueError(
            f"nonfinite must be one of 'propagate', 'raise', 'skip', 'zero', got {nonfinite!r}"
        )
    if error_if_nonfinite:
        # error_if_nonfinite=True is PyTorch's spelling of nonfinite="raise"; the default
        # "propagate" cannot be told apart from an explicit one, so only skip/zero conflict.
        if nonfinite in ("skip", "zero"):
            raise ValueError(
                f"error_if_nonfinite=True conflicts with nonfinite={nonfinite!r}; "
                "pass only one of them"
            )
        return "raise"
    return nonfinite


# --------------------------------------------------------------------------------------------
# array arguments
# --------------------------------------------------------------------------------------------


def _is_single_array(obj: object) -> bool:
    """True for an object that stands for ONE array rather than a collection of arrays."""
    if isinstance(obj, np.ndarray):
        return True
    if isinstance(obj, (str, bytes)):
        # A str is an iterable, bytes exposes the buffer protocol; neither is a gradient, and
        # handling them here keeps the error message about the argument as a whole.
        return False
    if any(
        hasattr(obj, attr)
        for attr in ("__dlpack__", "__array_interface__", "__array_struct__", "__array__")
    ):
        return True
    try:
        memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _torch_bfloat16_view(obj: Any) -> Array | None:
    """View a CPU torch.bfloat16 tensor as ml_dtypes.bfloat16 (same memory), else None.

    DLPack has no bfloat16 NumPy can import, so the tensor is exported as int16 bits.
    """
    torch = sys.modules.get("torch")
    if torch is None or getattr(obj, "dtype", None) != torch.bfloat16:
        return None
    try:  # the tensor exists without ml_dtypes: import it now, if installed
        import ml_dtypes
    except ImportError:
        return None
    bits: Array = np.from_dlpack(obj.view(torch.int16))
    view: Array = bits.view(np.dtype(ml_dtypes.bfloat16))
    return view


def _view(obj: object, where: str, write: bool = True) -> Array:
    """View ``obj`` as an ndarray without copying; TypeError naming ``where`` if impossible.

    A reading call (``write=False``) may take a copy, since nothing is written back; a
    parameter (a torch tensor with ``requires_grad``, or an object with a non-None ``.grad``)
    is refused by a writing call and read (through ``detach()``) by a reading one.
    """
    if isinstance(obj, np.ma.MaskedArray):
        raise TypeError(f"{where} is a masked array: its masked entries would be clipped too")
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, (str, bytes)) or (write and isinstance(obj, (np.generic, numbers.Number))):
        raise TypeError(f"{where} is a {type(obj).__name__}, not an array")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor) and obj.requires_grad:
        if write:
            raise TypeError(f"{where} is a parameter (requires_grad=True), not a gradient")
        obj = obj.detach()
    elif getattr(obj, "grad", None) is not None and write:
        raise TypeError(f"{where} carries a .grad: a parameter, not a gradient")
    try:
        if hasattr(obj, "__dlpack__"):
            bf16_view = _torch_bfloat16_view(obj)
            if bf16_view is not None:
                return bf16_view
            try:
                return np.from_dlpack(obj, copy=False)
            except (TypeError, ValueError, BufferError, RuntimeError):
                if write:
                    raise
        return np.asarray(obj, copy=False if write else None)
    except (TypeError, ValueError, BufferError, RuntimeError) as exc:
        raise TypeError(
            f"{where} ({type(obj).__name__}) cannot be viewed as a NumPy array without a copy; "
            "gradients must be writeable float arrays updated in place"
        ) from exc


def _jax_tree(tree: object) -> bool:
    """Whether JAX is imported and ``tree`` holds a node that only JAX knows (a registered
    dataclass or custom node): then ``jax.tree_util`` defines the tree, its leaves and their
    order (None kept as a leaf, so positions count it)."""
    jax = sys.modules.get("jax")
    if jax is None:
        return False

    def holds(node: object, depth: int) -> bool:
        if node is None or isinstance(node, np.ndarray) or depth > 200:
            return False
        if isinstance(node, dict):
            return any(holds(v, depth + 1) for v in node.values())
        if isinstance(node, (list, tuple)):
            return any(holds(v, depth + 1) for v in node)
        with warnings.catch_warnings():  # JAX warns that a generator is a leaf: it is one
            warnings.simplefilter("ignore", DeprecationWarning)
            return not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(node))

    return holds(tree, 0)


def _leaves(grads: object, name: str) -> list[tuple[str, object]]:
    """(position name, leaf) for every leaf of a pytree: lists, tuples (named tuples too) and
    dicts nested to any depth, depth first, dicts in their iteration order; a JAX tree (see
    ``_jax_tree``) in ``jax.tree_util``'s order, named by its key paths."""
    if _jax_tree(grads):
        tu = sys.modules["jax"].tree_util
        pairs = tu.tree_flatten_with_path(grads, is_leaf=lambda x: x is None)[0]
        return [(name + tu.keystr(path), leaf) for path, leaf in pairs]
    out: list[tuple[str, object]] = []

    def visit(node: object, path: str, depth: int) -> None:
        if depth > 200:
            raise TypeError(f"{name} is nested more than 200 levels deep")
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{path}[{key!r}]", depth + 1)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                visit(value, f"{path}[{i}]", depth + 1)
        else:
            out.append((path, node))

    visit(grads, name, 0)
    return out


def _may_self_overlap(arr: Array) -> bool:
    """True when two elements of a (non-empty) view may share memory: with the axes sorted by
    |stride|, each must step past everything the faster axes cover (conservative)."""
    if arr.size == 0:
        return False
    dims = sorted((abs(st), n) for st, n in zip(arr.strides, arr.shape, strict=True) if n > 1)
    covered = arr.itemsize
    for st, n in dims:
        if st < covered:
            return True
        covered += (n - 1) * st
    return False


def _check_array(arr: Array, where: str) -> None:
    if not _is_supported_dtype(arr.dtype):
        raise TypeError(f"{where} has dtype {arr.dtype}; {_EXPECTED_DTYPES}")
    if not arr.flags.writeable:
        raise ValueError(f"{where} is read-only")


def _check_no_overlap(arrays: Sequence[Array | None], names: Sequence[str]) -> None:
    """Reject two arrays that share an element (at least one byte). Zero-size arrays never
    overlap anything. ``np.shares_memory`` decides it exactly, so disjoint views of one
    buffer (``a[::2]`` and ``a[1::2]``, the column blocks of a fused matrix) are accepted;
    the compiled path bounds the solver's work and refuses a pair beyond the bound, which the
    reference (no bound) decides."""
    # checked once every entry has passed its type checks, as the compiled path does
    for i, arr in enumerate(arrays):
        if arr is not None and _may_self_overlap(arr):
            raise ValueError(
                f"{names[i]} has elements that share memory (e.g. a stride-0 view); writing to "
                "it in place would apply the update more than once"
            )
    present = [(i, a) for i, a in enumerate(arrays) if a is not None and a.size > 0]
    for j, (second, b) in enumerate(present):
        for first, a in present[:j]:
            if np.shares_memory(a, b):
                raise ValueError(f"{names[first]} and {names[second]} overlap in memory")


def _as_tree(grads: object, name: str = "grads") -> object:
    """``grads`` as a tree the reference can rebuild results in: an iterable that is not a
    container (a generator, a dict view) consumed once into a list (an empty generator warns,
    as PyTorch does); anything else as it is."""
    if (
        _jax_tree(grads)
        or _is_single_array(grads)
        or isinstance(grads, (list, tuple, Mapping, str, bytes))
        or not isinstance(grads, Iterable)
    ):
        return grads
    return consumed(grads, name)


def _as_arrays(grads: object, name: str = "grads", use: str = "write") -> list[Array | None]:
    """Normalise a ``grads`` argument to a validated list of ndarrays (None where skipped).

    One array (ndarray or an object NumPy can view) becomes a list of one; a pytree of arrays
    is flattened (see ``_leaves``); any other iterable is consumed once (an empty generator
    warns, as PyTorch does). ``use``: ``"write"`` checks everything a writing call needs
    (writeable memory, no two arrays overlapping); ``"read"`` only that the leaves are float
    arrays (read-only memory and the same array twice are fine); ``"set"`` (a GradientSet) the
    checks of a write that do not depend on the memory. Raises TypeError / ValueError naming
    the position.
    """
    items: list[tuple[str, object]]
    if _jax_tree(grads):
        items = _leaves(grads, name)
    elif _is_single_array(grads):
        items = [(name, grads)]
    elif isinstance(grads, Mapping):
        items = _leaves(dict(grads), name)
    elif isinstance(grads, (str, bytes)) or not isinstance(grads, Iterable):
        raise TypeError(
            f"{name} must be an array or a pytree of arrays, got {type(grads).__name__}"
        )
    else:
        items = _leaves(consumed(grads, name), name)  # PyTorch's warning, in one place
    arrays: list[Array | None] = []
    for where, item in items:
        if item is None:
            arrays.append(None)
            continue
        arr = _view(item, where, write=use != "read")
        if not _is_supported_dtype(arr.dtype):
            raise TypeError(f"{where} has dtype {arr.dtype}; {_EXPECTED_DTYPES}")
        arrays.append(arr)
    if use == "write":
        for (where, _), entry in zip(items, arrays, strict=True):
            if entry is not None and not entry.flags.writeable:
                raise ValueError(f"{where} is read-only")
        _check_no_overlap(arrays, [where for where, _ in items])
    return arrays


def _as_single_array(x: object, name: str = "x") -> Array:
    if x is None or isinstance(x, (str, bytes)) or not _is_single_array(x):
        raise TypeError(
            f"{name} must be one array NumPy can view without a copy, got {type(x).__name__}"
        )
    arr = _view(x, name)
    _check_array(arr, name)
    return arr


def _in_structure(tree: Any, values: list[Any], outer_list: bool = False) -> Any:
    """``values`` (one per leaf, in order) in the structure of ``tree``: dicts, named tuples
    and nested containers rebuilt (the outermost list or tuple as a list with
    ``outer_list``); a single array gives its value."""
    if _jax_tree(tree):
        tu = sys.modules["jax"].tree_util
        return tu.tree_structure(tree, is_leaf=lambda x: x is None).unflatten(values)
    it = iter(values)

    def build(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(build(v) for v in node))
        if isinstance(node, (list, tuple)):
            return type(node)(build(v) for v in node)
        return next(it)

    if _is_single_array(tree):
        return list(values) if outer_list else values[0]
    if isinstance(tree, Mapping):
        return build(dict(tree))
    if outer_list and isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return [build(v) for v in tree]
    return build(tree)
