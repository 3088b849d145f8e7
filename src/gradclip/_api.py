"""The compiled implementations of gradclip's public functions.

Each function checks its scalar arguments, then hands the whole list of arrays to the
compiled core in one call: no per-array Python work on the hot path.
"""

from __future__ import annotations

import math
import sys
from functools import partial
from typing import Any, Literal, overload

import numpy as np

from . import (
    _config,  # noqa: F401  (sets the core up before any call)
    _core,
)
from ._inputs import (
    as_sequence,
    check_eps,
    check_max_norm,
    check_norm_type,
    check_total_norm,
    value_bounds,
)

# (the "as" form re-exports ENGINE_MODE for the stateful clippers, PEP 484 style)
from ._ops import ENGINE_MODE as ENGINE_MODE  # noqa: PLC0414
from ._ops import ONCE, SET, Ops
from ._result import ClipResult
from ._slices import clip_by_norm_
from ._steps import (
    CONTAINERS,
    ENGINE_PROPAGATE,
    clip_norm_across,
    common_scalars,
    norm_args,
    run_clip_each,
    run_clip_norm,
    run_total_norm,
    total_norm_across,
)

__all__ = [
    "GradientSet",
    "clip_by_block_rms_",
    "clip_by_norm_",
    "clip_grad_norm_",
    "clip_grad_norm_per_tensor_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
    "tensor_norms",
]


def ops_of(grads: Any) -> tuple[Ops[Any], Any]:
    """``(ops, target)`` for ``grads`` (see :mod:`._ops`): a :class:`GradientSet`'s own set,
    else one-shot. ``ops.own(target)`` is the compiled set itself, for code that makes
    several calls on the same arrays."""
    if isinstance(grads, GradientSet):
        return SET, grads._set
    return ONCE, as_sequence(grads)


def arrays_of(grads: Any, arg: str = "grads") -> tuple[Any, ...] | Any:
    """The sequence of arrays behind ``grads``: a :class:`GradientSet`'s arrays, else what
    ``as_sequence`` makes of it (for the operations that take their own lists)."""
    if isinstance(grads, GradientSet):
        return grads.arrays
    return as_sequence(grads, arg)[0]


def _one_shot_set(grads: Any, write: bool = True) -> _core.GradientSet:
    """A one-shot compiled set of ``grads``, validated for writing or for reading."""
    return ONCE.own(as_sequence(grads), write)


def core_set(grads: Any) -> _core.GradientSet:
    """The compiled set behind ``grads``: a :class:`GradientSet`'s own, else a one-shot one."""
    ops, target = ops_of(grads)
    return ops.own(target)


# The return type follows the flags: a float, or a ClipResult when either flag is True.
@overload
def clip_grad_norm_(
    grads: Any,
    max_norm: float,
    norm_type: float = ...,
    *,
    error_if_nonfinite: bool = ...,
    nonfinite: str = ...,
    eps: float = ...,
    return_result: Literal[False] = ...,
    per_tensor_norms: Literal[False] = ...,
    comm: Any = ...,
) -> float: ...
@overload
def clip_grad_norm_(
    grads: Any,
    max_norm: float,
    norm_type: float = ...,
    *,
    error_if_nonfinite: bool = ...,
    nonfinite: str = ...,
    eps: float = ...,
    return_result: Literal[True],
    per_tensor_norms: bool = ...,
    comm: Any = ...,
) -> ClipResult: ...
@overload
def clip_grad_norm_(
    grads: Any,
    max_norm: float,
    norm_type: float = ...,
    *,
    error_if_nonfinite: bool = ...,
    nonfinite: str = ...,
    eps: float = ...,
    return_result: bool = ...,
    per_tensor_norms: Literal[True],
    comm: Any = ...,
) -> ClipResult: ...
@overload
def clip_grad_norm_(
    grads: Any,
    max_norm: float,
    norm_type: float = ...,
    *,
    error_if_nonfinite: bool = ...,
    nonfinite: str = ...,
    eps: float = ...,
    return_result: bool = ...,
    per_tensor_norms: bool = ...,
    comm: Any = ...,
) -> float | ClipResult: ...
def clip_grad_norm_(
    grads: Any,
    max_norm: float,
    norm_type: float = 2.0,
    *,
    error_if_nonfinite: bool = False,
    nonfinite: str = "propagate",
    eps: float = 1e-6,
    return_result: bool = False,
    per_tensor_norms: bool = False,
    comm: Any = None,
) -> float | ClipResult:
    """Clip gradients in place so that their total norm is at most ``max_norm``.

    The total norm is the ``norm_type``-norm of all elements of all arrays together,
    accumulated in float64. When ``coef = max_norm / (total_norm + eps)`` is below 1, every
    array is multiplied by it in the array's own precision (a float32 array by the
    coefficient rounded to float32, so the norm afterwards is ``max_norm`` to float32's
    rounding, on either side of it); otherwise nothing is written at all.

    Parameters
    ----------
    grads : array or iterable of arrays
        float16, bfloat16, float32 or float64 arrays, modified in place. ``None`` entries
        are skipped.
    max_norm : float
        Finite and > 0.
    norm_type : float, default 2.0
        Any p > 0, or ``inf``.
    error_if_nonfinite : bool, default False
        PyTorch's spelling of ``nonfinite="raise"``.
    nonfinite : {"propagate", "raise", "skip", "zero"}, default "propagate"
        What to do when the total norm is NaN or infinite: apply the coefficient as is
        (PyTorch's arithmetic), raise :class:`NonFiniteNormError`, write nothing, or set
        every gradient to zero.
    eps : float, default 1e-6
        Added to the norm before dividing.
    return_result : bool, default False
        Return a :class:`ClipResult` (norm, coefficient, whether it clipped, whether the
        norm was non-finite) instead of the norm.
    per_tensor_norms : bool, default False
        Also report each array's norm, from the same read pass, as ``tensor_norms``: the
        flag alone makes the call return a :class:`ClipResult` (``return_result`` is not
        needed).
        The total is then the norm of those norms, which may differ from the plain call's
        total in the last bit. With ``comm``, the norms are of this rank's arrays (one more
        read pass) and the total is the global norm.
    comm : mpi4py communicator, optional
        Sharded training: ``grads`` is this rank's part of the gradients. Every rank reduces
        its part to its local norm, one collective gathers those (8 bytes per rank), and
        every rank clips with the same global norm and coefficient. Call it on every rank.
        The global norm is the same bits on every rank, and within 1e-15 relative of the
        single-process norm of all the arrays together.

    Returns
    -------
    float or ClipResult
        The total norm before clipping, or the record when ``return_result`` or
        ``per_tensor_norms`` is True.

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> g = [np.full(3, 2.0, np.float32), np.full(4, 2.0, np.float32)]
    >>> round(gradclip.clip_grad_norm_(g, max_norm=1.0), 4)
    5.2915
    >>> round(float(np.sqrt(sum((x.astype(np.float64) ** 2).sum() for x in g))), 4)
    1.0
    """
    if (
        type(grads) in CONTAINERS
        and return_result is False
        and per_tensor_norms is False
        and comm is None
        and "jax" not in sys.modules
        and common_scalars(max_norm, norm_type, error_if_nonfinite, nonfinite, eps)
    ):
        # The common call: gradclip's own containers, which the compiled parse reads as they
        # are (as_sequence's rule for them), and the common scalars (see common_scalars).
        target = (grads, False)
        return ONCE.clip_total(target, max_norm, norm_type, ENGINE_PROPAGATE, eps, False)[0]
    scalars = (max_norm, norm_type, error_if_nonfinite, nonfinite, eps)
    if comm is not None:
        make_set = partial(_one_shot_set, grads)
        norm, coef, norms = clip_norm_across(comm, make_set, per_tensor_norms, scalars)
    else:
        max_norm, p, mode, eps = norm_args(*scalars)
        norm, coef, norms = run_clip_norm(
            ONCE, as_sequence(grads), max_norm, p, mode, eps, per_tensor_norms
        )
    if not return_result and not per_tensor_norms:
        return norm
    return ClipResult(norm, coef, _core.clipped(coef), not math.isfinite(norm), norms)


def get_total_norm(
    grads: Any, norm_type: float = 2.0, *, error_if_nonfinite: bool = False, comm: Any = None
) -> float:
    """Total ``norm_type``-norm of all elements of all arrays, in one read pass.

    Parameters
    ----------
    grads : array or iterable of arrays
    norm_type : float, default 2.0
        Any p > 0, or ``inf``.
    error_if_nonfinite : bool, default False
        Raise :class:`NonFiniteNormError` when the norm is NaN or infinite.
    comm : mpi4py communicator, optional
        The global norm over every rank's ``grads`` (see :func:`clip_grad_norm_`).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> gradclip.get_total_norm([np.array([3.0]), np.array([4.0])])
    5.0
    """
    if (
        type(grads) in CONTAINERS
        and type(norm_type) is float
        and norm_type > 0.0
        and error_if_nonfinite is False
        and comm is None
        and "jax" not in sys.modules
    ):
        # the common call, checked inline as clip_grad_norm_'s is
        target = (grads, False)
        return ONCE.total_norm(target, norm_type)
    if comm is not None:
        make_set = partial(_one_shot_set, grads, False)
        return total_norm_across(comm, make_set, norm_type, error_if_nonfinite)
    p = check_norm_type(norm_type)
    return run_total_norm(ONCE, as_sequence(grads), p, error_if_nonfinite)


def clip_grads_with_norm_(
    grads: Any, max_norm: float, total_norm: float, *, eps: float = 1e-6
) -> None:
    """Scale gradients in place using a total norm computed elsewhere.

    For sharded training, where each process holds part of the gradients: compute the
    global norm across processes, then call this on the local part. The coefficient is
    ``min(1, max_norm / (total_norm + eps))``; nothing is written when it is 1.

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> g = np.array([3.0, 4.0])
    >>> gradclip.clip_grads_with_norm_(g, max_norm=1.0, total_norm=5.0, eps=0.0)
    >>> g
    array([0.6, 0.8])
    """
    max_norm = check_max_norm(max_norm)
    total = check_total_norm(total_norm)
    eps = check_eps(eps)
    ONCE.apply_norm(as_sequence(grads), max_norm, total, eps, ENGINE_MODE["propagate"])


def clip_grad_value_(
    grads: Any,
    clip_value: float | None = None,
    *,
    min: float | None = None,
    max: float | None = None,
) -> None:
    """Clamp every element in place to ``[-clip_value, clip_value]``, or to ``[min, max]``;
    NaN stays NaN.

    ``min`` and ``max`` give asymmetric or one-sided bounds (TensorFlow's ``clip_by_value``,
    Optax's ``tree_clip``, Chainer's ``GradientHardClipping``): a side given as None is not
    bounded. Pass either ``clip_value`` or ``min``/``max``; ``min > max`` is a ValueError.

    Each bound is rounded once, to nearest with ties to even, to each array's dtype (by
    gradclip itself, the same in every path and for every version of NumPy and ml_dtypes).

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> g = np.array([-3.0, 0.5, 2.0, np.nan])
    >>> gradclip.clip_grad_value_(g, 1.0)
    >>> g
    array([-1. ,  0.5,  1. ,  nan])
    >>> g = np.array([-3.0, 0.5, 2.0])
    >>> gradclip.clip_grad_value_(g, min=0.0)
    >>> g
    array([0. , 0.5, 2. ])
    """
    lo, hi = value_bounds(clip_value, min, max)
    ONCE.clamp(as_sequence(grads), lo, hi)


def tensor_norms(grads: Any, norm_type: float = 2.0) -> np.ndarray:
    """The ``norm_type``-norm of each array, in one pass (0.0 for ``None`` entries).

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> gradclip.tensor_norms([np.array([3.0, 4.0]), None, np.ones(4, np.float32)])
    array([5., 0., 2.])
    """
    p = check_norm_type(norm_type)
    return ONCE.tensor_norms(as_sequence(grads), p)


def clip_grad_norm_per_tensor_(
    grads: Any,
    max_norm: float,
    norm_type: float = 2.0,
    *,
    error_if_nonfinite: bool = False,
    nonfinite: str = "propagate",
    eps: float = 1e-6,
) -> np.ndarray:
    """Clip each array in place by its own norm ("local" clipping).

    Every array whose ``coef = max_norm / (norm + eps)`` is below 1 is multiplied by it;
    the others are not written. ``nonfinite`` applies to the whole call when any array's
    norm is NaN or infinite (``"raise"`` and ``"skip"`` write nothing, ``"zero"`` zeroes
    every array, ``"propagate"`` applies each coefficient as is).

    Returns
    -------
    ndarray of float64
        The pre-clip norm of each array (0.0 for ``None`` entries).

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> g = [np.array([3.0, 4.0]), np.array([0.1])]
    >>> gradclip.clip_grad_norm_per_tensor_(g, max_norm=1.0, eps=0.0)
    array([5. , 0.1])
    >>> g[0], g[1]
    (array([0.6, 0.8]), array([0.1]))
    """
    max_norm, p, mode, eps = norm_args(max_norm, norm_type, error_if_nonfinite, nonfinite, eps)
    return run_clip_each(ONCE, as_sequence(grads), max_norm, p, mode, eps)


def clip_by_block_rms_(grads: Any, threshold: float, *, eps: float = 1e-6) -> np.ndarray:
    """Clip each array in place by its root mean square (Optax's ``clip_by_block_rms``).

    An array's RMS is ``||g||_2 / sqrt(g.size)``; the array is multiplied by
    ``min(1, threshold / (rms + eps))`` when that is below 1 and not written otherwise. With
    ``eps=0.0`` this is Optax's ``g / max(1, rms / threshold)``. One read pass for every RMS,
    then one read+write pass over the arrays that are clipped.

    Returns
    -------
    ndarray of float64
        The pre-clip RMS of each array (0.0 for ``None`` entries and empty arrays).

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> g = [np.array([3.0, 4.0]), np.array([0.1])]
    >>> gradclip.clip_by_block_rms_(g, 1.0, eps=0.0)
    array([3.53553391, 0.1       ])
    >>> round(float(np.sqrt(np.mean(g[0] ** 2))), 12)
    1.0
    """
    threshold = check_max_norm(threshold, "threshold")
    eps = check_eps(eps)
    return ONCE.clip_block_rms(as_sequence(grads), threshold, eps)


class GradientSet:
    """A fixed list of gradient arrays, validated once, for O(1) Python work per call.

    Training loops clip the same buffers every step. ``GradientSet`` checks dtypes,
    writeability and overlaps once, keeps the arrays alive, and keeps their memory layout;
    each method then only re-checks, in C++, that no array was resized, re-allocated or
    made read-only since (a ``ValueError`` says which, and nothing is written).

    The set holds the arrays, not the container they came in: to change the gradients,
    write into those arrays (``np.copyto(grads[0], new)``). Each call also checks, by
    identity, that the entries of every list and dict in the tree the set was made from
    (at any depth) are still the ones the set was made with; a replaced, added or removed
    entry (``grads[0] = new_array``, ``grads["enc"]["w"] = new_array``) is a
    ``ValueError`` naming the position, never a silent clip of the old array.

    Parameters
    ----------
    grads : array or iterable of arrays
        As for :func:`clip_grad_norm_`; ``None`` entries keep their positions.

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> g = [np.full(3, 2.0, np.float32), np.full(4, 2.0, np.float32)]
    >>> gs = gradclip.GradientSet(g)
    >>> round(gs.clip_norm_(1.0), 4)       # same as clip_grad_norm_(g, 1.0)
    5.2915
    >>> round(gs.total_norm(), 4)
    1.0
    """

    __slots__ = ("_set",)

    def __init__(self, grads: Any) -> None:
        seq, single = as_sequence(grads)
        self._set = _core.GradientSet(seq, "grads", single, True)

    def __len__(self) -> int:
        return len(self._set)

    @property
    def arrays(self) -> tuple[Any, ...]:
        """The arrays (as NumPy views), ``None`` where the input had ``None``."""
        return self._set.arrays()

    def __repr__(self) -> str:
        return f"GradientSet({len(self)} arrays)"

    def clip_norm_(
        self,
        max_norm: float,
        norm_type: float = 2.0,
        *,
        error_if_nonfinite: bool = False,
        nonfinite: str = "propagate",
        eps: float = 1e-6,
        comm: Any = None,
    ) -> float:
        """:func:`clip_grad_norm_` over the set; returns the pre-clip total norm."""
        if comm is None and common_scalars(max_norm, norm_type, error_if_nonfinite, nonfinite, eps):
            # the common call, as clip_grad_norm_'s
            return self._set.clip_total(max_norm, norm_type, ENGINE_PROPAGATE, eps, False)[0]
        scalars = (max_norm, norm_type, error_if_nonfinite, nonfinite, eps)
        if comm is not None:
            return clip_norm_across(comm, partial(SET.own, self._set), False, scalars)[0]
        max_norm, p, mode, eps = norm_args(*scalars)
        return run_clip_norm(SET, self._set, max_norm, p, mode, eps, False)[0]

    def total_norm(
        self, norm_type: float = 2.0, *, error_if_nonfinite: bool = False, comm: Any = None
    ) -> float:
        """:func:`get_total_norm` over the set."""
        if (
            type(norm_type) is float
            and norm_type > 0.0
            and error_if_nonfinite is False
            and comm is None
        ):
            return self._set.total_norm(norm_type)  # the common call, checked inline
        if comm is not None:
            make_set = partial(SET.own, self._set, False)
            return total_norm_across(comm, make_set, norm_type, error_if_nonfinite)
        return run_total_norm(SET, self._set, check_norm_type(norm_type), error_if_nonfinite)

    def clip_with_norm_(self, max_norm: float, total_norm: float, *, eps: float = 1e-6) -> None:
        """:func:`clip_grads_with_norm_` over the set."""
        max_norm, total = check_max_norm(max_norm), check_total_norm(total_norm)
        self._set.apply_norm(max_norm, total, check_eps(eps), ENGINE_MODE["propagate"])

    def clip_value_(
        self,
        clip_value: float | None = None,
        *,
        min: float | None = None,
        max: float | None = None,
    ) -> None:
        """:func:`clip_grad_value_` over the set."""
        lo, hi = value_bounds(clip_value, min, max)
        self._set.clamp(lo, hi)

    def tensor_norms(self, norm_type: float = 2.0) -> np.ndarray:
        """:func:`tensor_norms` over the set."""
        return self._set.tensor_norms(check_norm_type(norm_type))

    def clip_norm_per_tensor_(
        self,
        max_norm: float,
        norm_type: float = 2.0,
        *,
        error_if_nonfinite: bool = False,
        nonfinite: str = "propagate",
        eps: float = 1e-6,
    ) -> np.ndarray:
        """:func:`clip_grad_norm_per_tensor_` over the set."""
        max_norm, p, mode, eps = norm_args(max_norm, norm_type, error_if_nonfinite, nonfinite, eps)
        return run_clip_each(SET, self._set, max_norm, p, mode, eps)
