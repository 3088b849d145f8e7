"""Drop-ins for ``torch.nn.utils``' gradient clipping, on gradclip's kernels.

``clip_grad_norm_``, ``clip_grad_value_``, ``get_total_norm`` and ``clip_grads_with_norm_``
take what PyTorch's take (parameters, or a single tensor; their ``.grad`` is used and a
``None`` gradient is skipped), with the same signatures and defaults, and return what
PyTorch's return (the norm as a 0-d tensor). ``foreach`` is accepted and ignored: gradclip
has one implementation. :class:`GradClipper` is the cached form for a training loop.

Sharded training (the project's ``docs/distributed.md``): DTensor gradients (FSDP2's
``fully_shard``) are reduced over their device mesh, and plain tensors holding each rank's
part of the gradients over ``group=`` (a torch.distributed process group, gloo on the CPU):
every rank gets the same global norm, bit for bit, and scales its own shards in place.

The gradients are viewed as NumPy arrays (the same memory, never a copy) and handed to the
functions of :mod:`gradclip`; CPU tensors of float16, bfloat16 (with ml_dtypes), float32 and
float64 are supported, anything else is a ``TypeError`` naming the tensor.

Deliberate differences from ``torch.nn.utils`` (listed with their pinning tests in the
project's ``docs/differences.md``):

- The norm is accumulated in float64 whatever the gradients' dtype (PyTorch accumulates in
  the dtype): within the dtype's rounding of PyTorch's for well-scaled gradients, exact where
  PyTorch's overflows. It is returned rounded to the gradients' dtype, as PyTorch returns it.
  float16 gradients whose norm exceeds float16's range are clipped by the true norm (PyTorch's
  norm is inf and its coefficient zeroes them); the returned norm is then inf, and
  ``error_if_nonfinite=True`` raises, as PyTorch does, before anything is written.
- Nothing is written when the coefficient is 1 (PyTorch multiplies by 1.0: the same values).
- ``max_norm`` must be > 0 or inf (PyTorch zeroes the gradients for 0 and flips them for a
  negative bound); ``clip_value`` must be >= 0 (a negative one makes PyTorch set every
  element to it); ``norm_type`` must be > 0, inf, ``"inf"`` or ``"fro"`` (PyTorch computes
  its 0 and negative "norms"); NaN for any of them is refused. Each is a ``ValueError`` before
  anything is written.
- The same parameter (the same ``.grad`` tensor) twice is a ``ValueError`` for the norm-based
  writes: PyTorch counts it twice in the norm and scales it twice. ``clip_grad_value_``
  clamps it once (PyTorch's result), ``get_total_norm`` counts it twice (as PyTorch does).
- ``get_total_norm`` skips ``None`` entries (PyTorch raises); ``clip_grad_value_`` on no
  gradients does nothing (PyTorch 2.13 raises); ``clip_grads_with_norm_`` also takes the
  total norm as a Python number.
- Tensors on other devices, sparse and complex gradients are a ``TypeError`` naming the
  tensor (PyTorch clips them).
- gradclip writes through NumPy views, so the tensors' autograd version counters do not
  move: gradients that are themselves part of a graph (``create_graph=True``) are not
  protected against a later double backward the way an in-place torch operation is.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

import numpy as np

try:
    import torch  # the real PyTorch: imports are absolute, this module is gradclip.torch
except ImportError as _exc:
    raise ImportError(
        "gradclip.torch needs PyTorch, which is not installed: pip install torch "
        "(gradclip's own functions work on NumPy arrays without it)"
    ) from _exc

import gradclip

from ._dist import global_norm
from ._errors import NonFiniteNormError
from ._inputs import check_clip_value, check_max_norm, check_norm_type, check_total_norm

__all__ = [
    "GradClipper",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
]

# NumPy views CPU float16/32/64 tensors directly; bfloat16 goes through its int16 bits.
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
try:
    import ml_dtypes

    _BF16: np.dtype[Any] | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    _BF16 = None


# ---------------------------------------------------------------- tensors to NumPy views


def _array(t: Any, where: str) -> np.ndarray:
    """A NumPy view of the CPU tensor ``t`` (the same memory), or TypeError naming ``where``
    (``_views`` takes the common case itself)."""
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
        raise TypeError(
            f"{where} cannot be viewed as a NumPy array without a copy, and a copy would lose "
            f"the update ({exc})"
        ) from None
    return view if as_dtype is None else view.view(as_dtype)


def _param_grads(params: list[Any], single: bool) -> list[Any]:
    """The ``.grad`` of each parameter (None where it has none)."""
    grads = []
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            where = "parameters" if single else f"parameters[{i}]"
            raise TypeError(f"{where} is a {type(p).__name__}, not a torch.Tensor{_hint(p)}")
        grads.append(p.grad)
    return grads


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
    dtypes: set[Any] = set()
    seen: dict[int, int] = {}
    for i, t in enumerate(tensors):
        if t is None:
            arrays.append(None)
            continue
        if repeats != "allow":
            first = seen.setdefault(id(t), i)
            if first != i:
                if repeats == "once":
                    arrays.append(None)
                    continue
                both = f"{_name(arg, first, False)} and {_name(arg, i, False)}"
                raise ValueError(
                    f"{both} are the same tensor (the same parameter twice?): it would count "
                    "twice in the norm and be scaled twice. Pass each parameter once"
                )
        view = None
        if isinstance(t, torch.Tensor) and t.dtype in _NUMPY_FLOATS:
            try:  # the common case first: torch's numpy() refuses what it cannot view as is
                view = t.numpy()
            except (RuntimeError, TypeError):  # a parameter, another device, sparse, ...
                pass
        arrays.append(view if view is not None else _array(t, _name(arg, i, single)))
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
                single = bool(args) and isinstance(args[0], torch.Tensor)
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


def _total_norm(target: Any, p: float) -> float:
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
        if isinstance(target, gradclip.GradientSet):
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
    if isinstance(target, gradclip.GradientSet):
        target.clip_value_(clip_value)
    else:
        gradclip.clip_grad_value_(target, clip_value)


# ---------------------------------------------------------------- torch.nn.utils' functions


@_torch_names("parameters")
def clip_grad_norm_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    group: Any = None,
) -> torch.Tensor:
    """Clip the gradients of ``parameters`` in place so that their total norm is at most
    ``max_norm``: ``torch.nn.utils.clip_grad_norm_``, on gradclip's kernels.

    The norm is the ``norm_type``-norm of all gradient elements together, accumulated in
    float64; when ``max_norm / (norm + 1e-6)`` is below 1 every gradient is multiplied by it,
    otherwise nothing is written.

    Parameters
    ----------
    parameters : Tensor or iterable of Tensors
        Their ``.grad`` is clipped; parameters whose ``.grad`` is None are skipped.
    max_norm : float
        > 0, or inf (never clips).
    norm_type : float, default 2.0
        Any p > 0, inf, ``"inf"`` or ``"fro"``.
    error_if_nonfinite : bool, default False
        Raise :class:`gradclip.NonFiniteNormError` (a ``RuntimeError``) when the norm is NaN
        or infinite, before anything is written. Otherwise PyTorch's arithmetic applies: a
        NaN norm makes every element NaN, an infinite one makes finite elements 0.
    foreach : bool or None
        Accepted and ignored.
    group : torch.distributed ProcessGroup or DeviceMesh, optional
        Sharded training with plain tensors: each rank's ``.grad`` are its part of the
        gradients, and the norm is taken over every rank of ``group`` (call it on every
        rank). DTensor gradients need no ``group``: their device mesh is the group. Every
        rank gets the same norm (the same bits) and scales its own part; an error on any
        rank (a bad argument or tensor, a non-finite norm with ``error_if_nonfinite``) is
        raised on every rank, before anything is written.

    Returns
    -------
    Tensor
        The total norm before clipping, a 0-d CPU tensor in the gradients' dtype (their
        promoted dtype when they differ; ``torch.tensor(0.0)`` when there are none); for
        DTensor gradients, a 0-d DTensor replicated over their mesh, as torch returns it.

    Examples
    --------
    >>> import torch, gradclip.torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> w.grad = torch.tensor([3.0, 4.0])
    >>> gradclip.torch.clip_grad_norm_([w], max_norm=1.0)
    tensor(5.)
    >>> w.grad
    tensor([0.6000, 0.8000])
    """
    parameters, sharding = _sharding(parameters, group, "parameters")
    if sharding is not None:  # DTensor gradients, or group=: the sharded block below
        return _sharded_clip_norm(parameters, sharding, max_norm, norm_type, error_if_nonfinite)
    bound, p = _bound(max_norm), _p(norm_type)
    params, single = _as_list(parameters, "parameters", warn_empty_generator=True)
    arrays, dtype = _views(_param_grads(params, single), "parameters", single, "refuse")
    return _clip_norm(arrays, dtype, bound, p, bool(error_if_nonfinite))


@_torch_names("tensors")
def get_total_norm(
    tensors: torch.Tensor | Iterable[torch.Tensor],
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    group: Any = None,
) -> torch.Tensor:
    """The total ``norm_type``-norm of ``tensors`` (all elements together), accumulated in
    float64: ``torch.nn.utils.get_total_norm``, on gradclip's kernels.

    As in PyTorch, the tensors themselves are read (pass the gradients,
    ``[p.grad for p in params if p.grad is not None]``); ``None`` entries are skipped.
    ``foreach`` is accepted and ignored. DTensors are reduced over their device mesh (a
    replicated one counted once), plain tensors over ``group=`` when it is given (see
    :func:`clip_grad_norm_`).

    Returns
    -------
    Tensor
        A 0-d CPU tensor in the tensors' (promoted) dtype; ``torch.tensor(0.0)`` for none;
        a 0-d replicated DTensor for DTensors.

    Examples
    --------
    >>> import torch, gradclip.torch
    >>> gradclip.torch.get_total_norm([torch.tensor([3.0]), torch.tensor([4.0])])
    tensor(5.)
    """
    tensors, sharding = _sharding(tensors, group, "tensors")
    if sharding is not None:
        return _sharded_get_norm(tensors, sharding, norm_type, error_if_nonfinite)
    p = _p(norm_type)
    items, single = _as_list(tensors, "tensors")
    arrays, dtype = _views(items, "tensors", single, "allow")
    return _get_norm(arrays, dtype, p, bool(error_if_nonfinite))


@_torch_names("parameters")
def clip_grads_with_norm_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    max_norm: float,
    total_norm: torch.Tensor,
    foreach: bool | None = None,
    *,
    group: Any = None,
) -> None:
    """Scale the gradients of ``parameters`` in place by ``min(max_norm / (total_norm +
    1e-6), 1)``, with a total norm computed elsewhere: ``torch.nn.utils.clip_grads_with_norm_``
    on gradclip's kernels. Nothing is written when the coefficient is 1.

    ``total_norm`` is a one-element tensor (as :func:`get_total_norm` returns, a replicated
    DTensor included) or a number, >= 0, NaN or inf; ``foreach`` is accepted and ignored.
    With DTensor gradients or ``group=``, every rank checks its arguments and the ranks
    agree (one small collective) before any rank writes.

    Examples
    --------
    >>> import torch, gradclip.torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> w.grad = torch.tensor([3.0, 4.0])
    >>> norm = gradclip.torch.get_total_norm([w.grad])
    >>> gradclip.torch.clip_grads_with_norm_([w], 1.0, norm)
    >>> w.grad
    tensor([0.6000, 0.8000])
    """
    parameters, sharding = _sharding(parameters, group, "parameters")
    if sharding is not None:
        _sharded_clip_with_norm(parameters, sharding, max_norm, total_norm)
        return
    bound, total = _bound(max_norm), _total(total_norm)
    params, single = _as_list(parameters, "parameters")
    arrays, dtype = _views(_param_grads(params, single), "parameters", single, "refuse")
    if dtype is not None:
        _scale(arrays, bound, total)


@_torch_names("parameters")
def clip_grad_value_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    clip_value: float,
    foreach: bool | None = None,
) -> None:
    """Clamp every gradient element of ``parameters`` in place to ``[-clip_value,
    clip_value]`` (NaN stays NaN): ``torch.nn.utils.clip_grad_value_`` on gradclip's kernels.

    ``clip_value`` is >= 0 (inf changes nothing); ``foreach`` is accepted and ignored.

    Examples
    --------
    >>> import torch, gradclip.torch
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> w.grad = torch.tensor([-3.0, 0.5, 2.0])
    >>> gradclip.torch.clip_grad_value_([w], 1.0)
    >>> w.grad
    tensor([-1.0000,  0.5000,  1.0000])
    """
    v = _value(clip_value)
    params, single = _as_list(parameters, "parameters")
    grads = _shards_of(_param_grads(params, single), single)  # element-wise: no collective
    arrays, dtype = _views(grads, "parameters", single, "once")
    if dtype is not None:
        _clamp(arrays, v)


# ---------------------------------------------------------------- the cached form


class GradClipper:
    """Clips the gradients of a fixed list of parameters, step after step, with less work
    per call than the functions.

    Each call reads the parameters' current ``.grad``. Once the clipper has seen the same
    gradient tensors (the same objects, memory, shape, strides and dtype) on two calls in a
    row, it keeps a :class:`gradclip.GradientSet` over them and reuses it until one of them
    changes; then it views the new ones. So ``optimizer.zero_grad()`` (which sets the
    gradients to None, and the next backward allocates new ones) is safe: the live gradients
    are always the ones clipped.

    The clipper holds the gradients it keeps a set over, and only those: gradients that are
    replaced every step are never kept alive by it (it remembers them through weak
    references), so ``zero_grad(set_to_none=True)`` frees their memory as it does without a
    clipper; after steps with unchanged gradients, the kept ones are released at the first
    call that finds them replaced.

    Parameters
    ----------
    parameters : Tensor or iterable of Tensors
        Consumed once (``model.parameters()`` is a generator). Each parameter once.
    group : torch.distributed ProcessGroup or DeviceMesh, optional
        As for :func:`clip_grad_norm_`. Sharded gradients (DTensors, or ``group``) take the
        functions' sharded path on every call: no set is kept over them.

    Examples
    --------
    >>> import torch, gradclip.torch
    >>> model = torch.nn.Linear(3, 1)
    >>> clipper = gradclip.torch.GradClipper(model.parameters())
    >>> model(torch.ones(2, 3)).sum().backward()
    >>> norm = clipper.clip_grad_norm_(1.0)
    >>> bool(clipper.get_total_norm() <= 1.0)
    True
    """

    __slots__ = ("_builds", "_dtype", "_group", "_params", "_seen", "_set")

    def __init__(
        self, parameters: torch.Tensor | Iterable[torch.Tensor], *, group: Any = None
    ) -> None:
        params, single = _as_list(parameters, "parameters")
        seen: dict[int, int] = {}
        for i, p in enumerate(params):
            where = "parameters" if single else f"parameters[{i}]"
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"{where} is a {type(p).__name__}, not a torch.Tensor{_hint(p)}")
            first = seen.setdefault(id(p), i)
            if first != i:
                raise ValueError(
                    f"parameters[{first}] and parameters[{i}] are the same parameter: its "
                    "gradient would count twice in the norm and be scaled twice. Pass each "
                    "parameter once"
                )
        self._params = tuple(params)
        # (weak reference, data pointer, shape, strides, dtype) of each gradient of the last
        # call (None for a None gradient), and the set kept over them
        self._seen: list[Any] | None = None
        self._set: gradclip.GradientSet | None = None
        self._dtype: Any = None
        self._builds = 0
        self._group = group

    @property
    def parameters(self) -> tuple[torch.Tensor, ...]:
        """The parameters whose gradients are clipped."""
        return self._params

    @property
    def builds(self) -> int:
        """How many times the clipper has built a GradientSet to keep (once per run of calls
        that find the same gradient tensors)."""
        return self._builds

    @property
    def cached(self) -> bool:
        """Whether the clipper keeps a GradientSet over the current gradients."""
        return self._set is not None

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"GradClipper({len(self._params)} parameters)"

    def _unchanged(self, grads: list[Any]) -> bool:
        seen = self._seen
        if seen is None:
            return False
        for g, s in zip(grads, seen, strict=True):
            if g is None or s is None:
                if g is not s:  # a gradient appeared or went away
                    return False
                continue
            ref, ptr, shape, stride, dtype = s
            if (
                ref() is not g  # another tensor (a dead reference gives None)
                or g.data_ptr() != ptr
                or g.shape != shape
                or g.stride() != stride
                or g.dtype != dtype
            ):
                return False
        return True

    def _target(self) -> tuple[Any, Any]:
        """The current gradients: the kept set when they are the ones it was built over, else
        fresh views (kept as a set when they are the same as the last call's)."""
        grads = _shards_of([p.grad for p in self._params], False)
        unchanged = self._unchanged(grads)
        if unchanged and self._set is not None:
            return self._set, self._dtype
        self._set = None  # release gradients that were replaced
        arrays, dtype = _views(grads, "parameters", False, "refuse")
        self._seen = [
            None if g is None else (weakref.ref(g), g.data_ptr(), g.shape, g.stride(), g.dtype)
            for g in grads
        ]
        self._dtype = dtype
        if not unchanged:
            return arrays, dtype  # seen once: a one-shot call, nothing kept
        self._set = gradclip.GradientSet(arrays)
        self._builds += 1
        return self._set, dtype

    @_torch_names("parameters")
    def clip_grad_norm_(
        self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
    ) -> torch.Tensor:
        """:func:`clip_grad_norm_` of the parameters' current gradients."""
        params, sharding = self._sharding()
        if sharding is not None:
            return _sharded_clip_norm(params, sharding, max_norm, norm_type, error_if_nonfinite)
        bound, p = _bound(max_norm), _p(norm_type)
        target, dtype = self._target()
        return _clip_norm(target, dtype, bound, p, bool(error_if_nonfinite))

    @_torch_names("parameters")
    def get_total_norm(
        self, norm_type: float = 2.0, error_if_nonfinite: bool = False
    ) -> torch.Tensor:
        """The total norm of the parameters' current gradients (as :func:`get_total_norm`
        of them)."""
        params, sharding = self._sharding()
        if sharding is not None:
            grads = [q.grad for q in params]
            return _sharded_get_norm(grads, sharding, norm_type, error_if_nonfinite)
        p = _p(norm_type)
        target, dtype = self._target()
        return _get_norm(target, dtype, p, bool(error_if_nonfinite))

    @_torch_names("parameters")
    def clip_grads_with_norm_(self, max_norm: float, total_norm: torch.Tensor) -> None:
        """:func:`clip_grads_with_norm_` of the parameters' current gradients."""
        params, sharding = self._sharding()
        if sharding is not None:
            _sharded_clip_with_norm(params, sharding, max_norm, total_norm)
            return
        bound, total = _bound(max_norm), _total(total_norm)
        target, dtype = self._target()
        if dtype is not None:
            _scale(target, bound, total)

    def _sharding(self) -> tuple[Any, tuple[Any, Any] | None]:
        # sharded gradients (DTensors, or group=) take the functions' sharded path on every
        # call: no set is kept over them
        return _sharding(self._params, self._group, "parameters")

    @_torch_names("parameters")
    def clip_grad_value_(self, clip_value: float) -> None:
        """:func:`clip_grad_value_` of the parameters' current gradients."""
        v = _value(clip_value)
        target, dtype = self._target()
        if dtype is not None:
            _clamp(target, v)


# ---------------------------------------------------------------- sharded gradients
# DTensor gradients (FSDP2's) and hand-sharded tensors with ``group=``. Each rank reduces
# the local shards it owns to its local norm with the engine; one all-gather per mesh
# dimension (8 bytes and an error flag per rank) brings every rank's local norm to every
# rank; the engine's combination of partial norms (``_dist.global_norm``, the one the
# mpi4py ``comm=`` path uses) gives every rank the same bits, and every rank scales its own
# shards in place. Validation (scalar arguments, placements, meshes, dtypes, overlaps) runs
# inside the agreement step: a rank whose input is bad still enters the collective, so every
# rank raises and none writes or waits.


def _dtensor_type() -> Any:
    """torch's DTensor class, or None when no code has imported it yet (then no gradient
    can be a DTensor, and a plain call pays nothing for the check)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None)


class _TorchGather:
    """What ``_dist.global_norm`` needs of a communicator (``allgather`` of each rank's
    ``(local norm, error or None)``), over torch.distributed process groups: one
    ``all_gather`` of a float64 pair per group, in order (the mesh's dimensions), so every
    rank gets every rank's pair in the same order. The error messages travel only when a
    flag is set, which every rank then sees, so every rank enters that second collective."""

    __slots__ = ("groups",)

    def __init__(self, groups: list[Any]) -> None:
        self.groups = groups

    def allgather(self, sent: tuple[float, Any]) -> list[tuple[float, Any]]:
        import torch.distributed as dist

        value, error = sent
        rows = torch.tensor([[value, 0.0 if error is None else 1.0]], dtype=torch.float64)
        for g in self.groups:
            parts = [torch.empty_like(rows) for _ in range(dist.get_world_size(g))]
            dist.all_gather(parts, rows, group=g)
            rows = torch.cat(parts)
        errors: list[Any] = [None] * rows.shape[0]
        if bool(rows[:, 1].any()):
            errors = [error]
            for g in self.groups:
                out: list[Any] = [None] * dist.get_world_size(g)
                dist.all_gather_object(out, errors, group=g)
                errors = [e for part in out for e in part]
        return [(float(v), e) for (v, _), e in zip(rows.tolist(), errors, strict=True)]


def _groups_of(group: Any) -> list[Any]:
    """The process groups to gather over: a ProcessGroup, or each dimension of a DeviceMesh."""
    import torch.distributed as dist

    if isinstance(group, dist.ProcessGroup):
        return [group]
    from torch.distributed.device_mesh import DeviceMesh

    if isinstance(group, DeviceMesh):
        return [group.get_group(d) for d in range(group.ndim)]
    raise TypeError(
        f"group must be a torch.distributed ProcessGroup or DeviceMesh, not {type(group).__name__}"
    )


def _sharding(items: Any, group: Any, arg: str) -> tuple[Any, tuple[Any, Any] | None]:
    """``(items, (gather, mesh))`` when the call is distributed (``group`` given, or a DTensor
    among the gradients), else ``(items, None)``. A generator is consumed into a list here
    (an empty one is handed back as it is, so that the plain path warns about it)."""
    if isinstance(items, Iterable) and not isinstance(items, (torch.Tensor, list, tuple, str)):
        listed = list(items)
        items = listed if listed or not isinstance(items, types.GeneratorType) else items
    if group is not None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "group= needs torch.distributed initialised (init_process_group) on every rank"
            )
        return items, (_TorchGather(_groups_of(group)), None)
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(items, (torch.Tensor, list, tuple)):
        return items, None
    for t in [items] if isinstance(items, torch.Tensor) else items:
        g = getattr(t, "grad", None) if arg == "parameters" else t
        if isinstance(g, dtensor):
            mesh = g.device_mesh
            return items, (_TorchGather(_groups_of(mesh)), mesh)
    return items, None


def _local_views(
    tensors: list[Any], arg: str, single: bool, mesh: Any, repeats: str
) -> tuple[list[np.ndarray | None], list[np.ndarray | None], Any]:
    """``(views to write, views to count in the norm, norm dtype)`` of this rank's shards.

    A DTensor contributes its local tensor (viewed, never copied: the write lands in the
    DTensor's storage). It counts in the norm on this rank unless it is replicated along a
    mesh dimension where this rank's coordinate is not 0 (a replica is counted once, by the
    first rank of that dimension). ``Partial`` placements, another mesh, and plain tensors
    mixed with DTensors are refused, naming the tensor."""
    dtensor = _dtensor_type()
    local: list[Any] = []
    owned: list[bool] = []
    first = ""
    coord = None if mesh is None else mesh.get_coordinate()
    for i, t in enumerate(tensors):
        where = _name(arg, i, single)
        if dtensor is None or not isinstance(t, dtensor):
            if mesh is not None and t is not None:
                raise TypeError(
                    f"{where} is a {type(t).__name__} while {first} is a DTensor: gradclip.torch "
                    "reduces one kind per call (DTensors over their mesh, or plain tensors with "
                    "group=)"
                )
            local.append(t)
            owned.append(True)
            continue
        if mesh is None:
            raise ValueError(
                f"{where} is a DTensor: pass group=None, its device mesh gives the process group"
            )
        first = first or where
        if t.device_mesh != mesh:
            raise ValueError(
                f"{where} is on device mesh {t.device_mesh} while {first} is on {mesh}: one call "
                "reduces over one mesh; clip the parameters of each mesh with a call of its own, "
                "or combine the norms with get_total_norm and clip_grads_with_norm_"
            )
        mine = True
        for d, placement in enumerate(t.placements):
            if placement.is_partial():
                raise ValueError(
                    f"{where} has a Partial placement ({placement}) on mesh dimension {d}: its "
                    "local values are unreduced partial sums, whose norm is not the norm of the "
                    "gradient. Reduce it first (redistribute to Shard or Replicate)"
                )
            if placement.is_replicate() and (coord is None or coord[d] != 0):
                mine = False
        with torch.no_grad():  # without autograd, to_local() is the DTensor's own local tensor
            local.append(t.to_local())
        owned.append(mine)
    arrays, dtype = _views(local, arg, single, repeats)
    counted = [a if mine else None for a, mine in zip(arrays, owned, strict=True)]
    return arrays, counted, dtype


def _sharded_norm(gather: Any, prepare: Any, p: float) -> tuple[float, Any]:
    """The global norm, and what ``prepare()`` made on this rank (``(write, counted, dtype,
    extra)``), with every rank agreeing on errors raised by ``prepare`` (see _dist)."""
    made: list[Any] = []

    def local() -> float:
        made.append(prepare())
        counted = made[0][1]
        return _total_norm(counted, p) if counted else 0.0

    return global_norm(gather, local, p), made[0]


def _p_or_default(norm_type: Any) -> float:
    # a bad norm_type is raised inside the agreement step (prepare), on every rank
    try:
        return check_norm_type(norm_type)
    except (TypeError, ValueError):
        return 2.0


def _sharded_result(norm: float, dtype: Any, mesh: Any) -> torch.Tensor:
    """The norm as torch returns it: a 0-d tensor, replicated over ``mesh`` for DTensors."""
    out = _result(norm, dtype) if dtype is not None else torch.scalar_tensor(norm)
    if mesh is None:
        return out
    from torch.distributed.tensor import DTensor, Replicate

    return DTensor.from_local(out, mesh, [Replicate()] * mesh.ndim, run_check=False)


def _local_norm_value(total_norm: Any) -> Any:
    """A DTensor total norm as a plain tensor (replicated: its local value is the norm)."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(total_norm, dtensor):
        if any(pl.is_partial() for pl in total_norm.placements):
            raise ValueError(
                "total_norm is a DTensor with a Partial placement: pass total_norm.full_tensor()"
            )
        with torch.no_grad():
            return total_norm.to_local()
    return total_norm


def _sharded_clip_norm(
    items: Any, sharding: tuple[Any, Any], max_norm: Any, norm_type: Any, raise_: Any
) -> torch.Tensor:
    gather, mesh = sharding
    p = _p_or_default(norm_type)
    bound: list[float] = []

    def prepare() -> Any:
        bound.append(_bound(max_norm))
        check_norm_type(norm_type)
        params, single = _as_list(items, "parameters")
        return _local_views(_param_grads(params, single), "parameters", single, mesh, "refuse")

    norm, (arrays, _, dtype) = _sharded_norm(gather, prepare, p)
    out = _result(norm, dtype) if dtype is not None else torch.scalar_tensor(norm)
    if bool(raise_) and not (math.isfinite(norm) and bool(torch.isfinite(out))):
        raise _nonfinite(p, norm, out)  # the same norm on every rank: every rank raises
    if dtype is not None:
        _scale(arrays, bound[0], norm)
    return _sharded_result(norm, dtype, mesh)


def _sharded_get_norm(
    items: Any, sharding: tuple[Any, Any], norm_type: Any, raise_: Any
) -> torch.Tensor:
    gather, mesh = sharding
    p = _p_or_default(norm_type)

    def prepare() -> Any:
        check_norm_type(norm_type)
        tensors, single = _as_list(items, "tensors")
        return _local_views(tensors, "tensors", single, mesh, "allow")

    norm, (_, _, dtype) = _sharded_norm(gather, prepare, p)
    out = _result(norm, dtype) if dtype is not None else torch.scalar_tensor(norm)
    if bool(raise_) and not (math.isfinite(norm) and bool(torch.isfinite(out))):
        raise _nonfinite(p, norm, out)
    return _sharded_result(norm, dtype, mesh)


def _sharded_clip_with_norm(
    items: Any, sharding: tuple[Any, Any], max_norm: Any, total_norm: Any
) -> None:
    gather, mesh = sharding
    scalars: list[float] = []

    def prepare() -> Any:
        scalars.extend((_bound(max_norm), _total(_local_norm_value(total_norm))))
        params, single = _as_list(items, "parameters")
        arrays, _, dtype = _local_views(
            _param_grads(params, single), "parameters", single, mesh, "refuse"
        )
        return arrays, None, dtype  # no norm to reduce: the collective only agrees on errors

    _, (arrays, _, dtype) = _sharded_norm(gather, prepare, 2.0)
    if dtype is not None:
        _scale(arrays, scalars[0], scalars[1])


def _shards_of(grads: list[Any], single: bool) -> list[Any]:
    """The local tensors of DTensor gradients, for element-wise work (clamping) that needs
    no collective; other entries as they are. A Partial placement is refused: clamping
    unreduced partial sums is not clamping the gradient."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return grads
    out = []
    for i, g in enumerate(grads):
        if isinstance(g, dtensor):
            if any(pl.is_partial() for pl in g.placements):
                raise ValueError(
                    f"{_name('parameters', i, single)} has a Partial placement: reduce it "
                    "first (redistribute to Shard or Replicate)"
                )
            with torch.no_grad():
                g = g.to_local()
        out.append(g)
    return out
