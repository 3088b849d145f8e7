"""Scalar arguments as torch.nn.utils converts them, the operations once (on a list of views
or a kept GradientSet), the norm as PyTorch returns it, and the core's errors renamed."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import torch

import gradclip

from .. import _core
from .._errors import NonFiniteNormError
from .._inputs import check_clip_value, check_max_norm, check_norm_type, check_total_norm
from ._convert import _name

# ---------------------------------------------------------------- scalar arguments


def _float(x: Any) -> Any:
    # torch.nn.utils converts max_norm, clip_value and norm_type with float(), so True and
    # "1.0" are bounds there; a value float() refuses is left for gradclip's check to name
    try:
        return float(x)
    except (TypeError, ValueError, OverflowError):
        return x


def _bound(max_norm: Any) -> float:
    """``max_norm`` as a float: finite and > 0, or inf (never clips, as in PyTorch)."""
    max_norm = _float(max_norm)
    if max_norm == math.inf:
        return math.inf
    return check_max_norm(max_norm)


def _value(clip_value: Any) -> float:
    """``clip_value`` as a float: >= 0, inf included (clamping to +-inf changes nothing)."""
    clip_value = _float(clip_value)
    if clip_value == math.inf:
        return math.inf
    return check_clip_value(clip_value)


def _p(norm_type: Any) -> float:
    """``norm_type`` as torch converts it (float(): True is 1, "2" is 2), or one of gradclip's
    names ("fro", which float() does not read)."""
    return check_norm_type(_float(norm_type))


_CORE_POSITION = re.compile(r"\bgrads\[(\d+)\]")


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _torch_names(arg: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Errors of gradclip's core name positions in the list of views they were given
    (``grads[3]``); the caller passed ``arg``, so name them as the rest of this module does
    (``parameters[3].grad``, ``tensors[3]``)."""

    def wrap(f: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(f)
        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return f(*args, **kwargs)
            except (TypeError, ValueError) as exc:
                first = args[0] if args else kwargs.get(arg)  # passed by keyword too
                single = isinstance(first, torch.Tensor)
                exc.args = tuple(
                    _CORE_POSITION.sub(lambda m: _name(arg, int(m[1]), single), a)
                    if isinstance(a, str)
                    else a
                    for a in exc.args
                )
                raise

        return call

    return wrap


def _total(total_norm: Any) -> float:
    if isinstance(total_norm, torch.Tensor):
        if total_norm.numel() != 1:
            raise TypeError(
                f"total_norm must be a number or a one-element tensor, not a tensor of shape "
                f"{tuple(total_norm.shape)}"
            )
        total_norm = total_norm.item()
    return check_total_norm(total_norm)


# ---------------------------------------------------------------- the operations, once
# ``target`` is either a list of views (a one-shot call of the module's functions) or a
# gradclip.GradientSet (GradClipper's cached set); ``dtype`` is the norm's dtype (None: there
# are no gradients).


_LEASE = _core.TorchLease  # the plain case's tensors, read in C++ (_cache.ViewCache.lease)
_PROPAGATE = _core.NonFinite.propagate


def _total_norm(target: Any, p: float) -> float:
    if isinstance(target, _LEASE):
        return target.total_norm(p)
    if isinstance(target, gradclip.GradientSet):
        return target.total_norm(p)
    norm: float = gradclip.get_total_norm(target, p)
    return norm


def _scale(target: Any, max_norm: float, total_norm: float) -> None:
    """PyTorch's ``grad *= min(max_norm / (total_norm + 1e-6), 1)``, through gradclip."""
    if max_norm == math.inf:
        if math.isfinite(total_norm):
            return  # the coefficient is inf, clamped to 1
        # inf / inf and inf / nan are NaN in PyTorch's arithmetic: every element becomes NaN,
        # which is what the engine's rule gives for a NaN norm
        max_norm, total_norm = 1.0, math.nan
    if isinstance(target, gradclip.GradientSet):
        target.clip_with_norm_(max_norm, total_norm)
    elif isinstance(target, (_LEASE, _core.GradientSet)):  # compiled, validated for the write
        target.apply_norm(max_norm, total_norm, 1e-6, _PROPAGATE)
    else:
        gradclip.clip_grads_with_norm_(target, max_norm, total_norm)


def _result(norm: float, dtype: Any) -> torch.Tensor:
    """The norm as PyTorch returns it: a 0-d CPU tensor of ``dtype``."""
    if dtype is None:  # no gradients at all: PyTorch returns torch.tensor(0.0)
        return torch.tensor(0.0)
    try:
        return torch.scalar_tensor(norm, dtype=dtype)
    except RuntimeError:  # a finite norm beyond float32's range: a cast rounds it to inf
        return torch.scalar_tensor(norm, dtype=torch.float64).to(dtype)


def _nonfinite(p: float, norm: float, out: Any) -> NonFiniteNormError:
    if math.isfinite(norm):  # finite in float64, beyond the range of the returned dtype
        why = f"{float(out)} in {out.dtype}: the float64 norm {norm!r} is beyond its range"
    else:
        why = repr(norm)
    # starts as torch.nn.utils' message does, for code that matches it
    return NonFiniteNormError(
        f"The total norm of order {p} for gradients from `parameters` is non-finite ({why}), "
        "so it cannot be clipped; nothing was modified. To scale the gradients by the "
        "non-finite norm anyway, as torch.nn.utils does, set `error_if_nonfinite=False`"
    )


def _clip_norm(target: Any, dtype: Any, max_norm: float, p: float, raise_: bool) -> torch.Tensor:
    if dtype is None:
        return _result(0.0, None)
    if not raise_ and max_norm != math.inf:  # the common case: one call, one read pass
        if isinstance(target, _LEASE):
            norm = target.clip_total(max_norm, p, _PROPAGATE, 1e-6)[0]
        elif isinstance(target, gradclip.GradientSet):
            norm = target.clip_norm_(max_norm, p)
        else:
            norm = gradclip.clip_grad_norm_(target, max_norm, p)
        return _result(norm, dtype)
    norm = _total_norm(target, p)
    out = _result(norm, dtype)
    if raise_ and not (math.isfinite(norm) and bool(torch.isfinite(out))):
        raise _nonfinite(p, norm, out)
    _scale(target, max_norm, norm)
    return out


def _get_norm(target: Any, dtype: Any, p: float, raise_: bool) -> torch.Tensor:
    if dtype is None:
        return _result(0.0, None)
    norm = _total_norm(target, p)
    out = _result(norm, dtype)
    if raise_ and not (math.isfinite(norm) and bool(torch.isfinite(out))):
        raise _nonfinite(p, norm, out)
    return out


def _clamp(target: Any, clip_value: float) -> None:
    if clip_value == math.inf:
        return  # clamping to [-inf, inf] changes nothing, NaN included
    if isinstance(target, _LEASE):
        target.clamp(-clip_value, clip_value)
    elif isinstance(target, gradclip.GradientSet):
        target.clip_value_(clip_value)
    else:
        gradclip.clip_grad_value_(target, clip_value)
