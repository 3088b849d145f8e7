"""Tensors to NumPy views, the arguments' lists, and how errors name the tensors."""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Iterable
from operator import attrgetter
from typing import Any

import numpy as np
import torch

# NumPy views CPU float16/32/64 tensors directly; bfloat16 goes through its int16 bits.
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
try:
    import ml_dtypes

    _BF16: np.dtype[Any] | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    _BF16 = None

_TENSOR = torch.Tensor
_GRAD = attrgetter("grad")


def _array(t: Any, where: str, write: bool = True) -> np.ndarray:
    """A NumPy view of the CPU tensor ``t`` (the same memory), or TypeError naming ``where``
    (``_views`` takes the common case itself). ``write`` is False for a reading call
    (``get_total_norm``), whose message then speaks of no lost update."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where} is a {type(t).__name__}, not a torch.Tensor")
    if not t.is_cpu:
        raise TypeError(
            f"{where} is on device {str(t.device)!r}; gradclip.torch works on CPU tensors only "
            "(torch.nn.utils clips tensors on other devices)"
        )
    if t.layout is not torch.strided:
        raise TypeError(
            f"{where} is a {t.layout} tensor; gradclip.torch works on dense (strided) tensors only"
        )
    dtype = t.dtype
    if dtype not in _NUMPY_FLOATS and dtype is not torch.bfloat16:
        kind = "complex" if dtype.is_complex else "not a supported floating-point type"
        raise TypeError(
            f"{where} has dtype {dtype} ({kind}); gradclip clips float16, bfloat16, float32 "
            "and float64 tensors"
        )
    if t.requires_grad:  # a tensor read by get_total_norm may be a parameter
        t = t.detach()
    as_dtype = None
    if dtype is torch.bfloat16:  # NumPy has no bfloat16: its int16 bits, as ml_dtypes'
        if _BF16 is None:
            raise ImportError(
                f"{where} is bfloat16, which gradclip reads through ml_dtypes: pip install "
                "ml_dtypes (or gradclip[bfloat16])"
            )
        t, as_dtype = t.view(torch.int16), _BF16
    try:
        view: np.ndarray = t.numpy()
    except RuntimeError as exc:  # e.g. a tensor with its negative bit set, a tensor subclass
        if not write:  # nothing would be lost, but the read is through a view all the same
            raise TypeError(f"{where} cannot be viewed as a NumPy array ({exc})") from None
        raise TypeError(
            f"{where} cannot be viewed as a NumPy array without a copy, and a copy would lose "
            f"the update ({exc})"
        ) from None
    return view if as_dtype is None else view.view(as_dtype)


def _check_tensors(params: list[Any], single: bool = False) -> None:
    """A TypeError naming the first of ``params`` that is not a tensor (a check of their few
    types on the common path)."""
    if not all(issubclass(kind, _TENSOR) for kind in set(map(type, params))):
        for i, p in enumerate(params):
            if not isinstance(p, _TENSOR):
                where = "parameters" if single else f"parameters[{i}]"
                raise TypeError(f"{where} is a {type(p).__name__}, not a torch.Tensor{_hint(p)}")


def _param_grads(params: list[Any], single: bool) -> list[Any]:
    """The ``.grad`` of each parameter (None where it has none), in one pass of C-level
    reads, after :func:`_check_tensors`."""
    _check_tensors(params, single)
    return list(map(_GRAD, params))


def _name(arg: str, i: int, single: bool) -> str:
    """How errors name the ``i``-th tensor: ``parameters[3].grad``, ``tensors[3]``."""
    where = arg if single else f"{arg}[{i}]"
    return where + ".grad" if arg == "parameters" else where


def _views(
    tensors: list[Any], arg: str, single: bool, repeats: str
) -> tuple[list[np.ndarray | None], Any]:
    """NumPy views of ``tensors`` (None kept, so positions match), and the dtype PyTorch
    gives their norm (None when there are no tensors).

    ``arg`` names them in errors (``"parameters[3].grad"``, ``"tensors[3]"``). ``repeats`` is
    what to do with a tensor seen twice: ``"refuse"`` it (a ValueError naming both
    positions), view it ``"once"`` (later positions are skipped), or ``"allow"`` it."""
    arrays: list[np.ndarray | None] = []
    append = arrays.append
    dtypes: set[Any] = set()
    seen: dict[int, int] = {}
    for i, t in enumerate(tensors):
        if t is None:
            append(None)
            continue
        if repeats != "allow":
            first = seen.setdefault(id(t), i)
            if first != i:
                if repeats == "once":
                    append(None)
                    continue
                both = f"{_name(arg, first, False)} and {_name(arg, i, False)}"
                raise ValueError(
                    f"{both} are the same tensor (the same parameter twice?): it would count "
                    "twice in the norm and be scaled twice. Pass each parameter once"
                )
        view = None
        if type(t) is _TENSOR and t.dtype in _NUMPY_FLOATS:
            try:  # the common case first: torch's numpy() refuses what it cannot view as is
                view = t.numpy()
            except (RuntimeError, TypeError):  # a parameter, another device, sparse, ...
                view = None
        append(view if view is not None else _array(t, _name(arg, i, single), repeats != "allow"))
        dtypes.add(t.dtype)
    return arrays, _norm_dtype(dtypes)


def _norm_dtype(dtypes: set[Any]) -> Any:
    # PyTorch stacks the per-tensor norms, each in its tensor's dtype: type promotion decides
    if not dtypes:
        return None
    return functools.reduce(torch.promote_types, dtypes)


def _hint(obj: Any) -> str:
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
        return " (a (name, parameter) pair: pass model.parameters(), not named_parameters())"
    return ""


def _as_list(obj: Any, arg: str, warn_empty_generator: bool = False) -> tuple[list[Any], bool]:
    """``(items, single)``: a tensor is one item (PyTorch's rule), an iterable is consumed
    once into a list."""
    if isinstance(obj, torch.Tensor):
        return [obj], True
    if obj is None or isinstance(obj, (str, bytes)) or not isinstance(obj, Iterable):
        raise TypeError(
            f"{arg} must be a torch.Tensor or an iterable of them, not {type(obj).__name__}"
        )
    items = list(obj)
    if warn_empty_generator and not items and isinstance(obj, types.GeneratorType):
        # the warning torch.nn.utils.clip_grad_norm_ gives, pointing at the caller
        warnings.warn(
            f"`{arg}` is an empty generator, no gradient clipping will occur.",
            UserWarning,
            stacklevel=4,  # _as_list, the public function, its _torch_names wrapper, caller
        )
    return items, False
