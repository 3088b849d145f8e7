"""The steps the public functions and :class:`GradientSet`'s methods share.

Each step takes ``(ops, target)`` (see :mod:`._ops`) and scalar arguments already checked;
the public function and the method both call it, so an operation's rule is written once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import numpy as np

from . import _core
from ._dist import global_norm
from ._errors import raise_nonfinite
from ._inputs import (
    MODES,
    check_eps,
    check_flag,
    check_max_norm,
    check_norm_type,
    resolve_mode,
)
from ._ops import ENGINE_MODE, Norms, Ops

T = TypeVar("T")

__all__ = [
    "CONTAINERS",
    "ENGINE_PROPAGATE",
    "clip_norm_across",
    "common_scalars",
    "global_norm_of",
    "norm_args",
    "p_or_default",
    "run_clip_each",
    "run_clip_norm",
    "run_total_norm",
    "total_norm_across",
]


def global_norm_of(
    comm: Any,
    prepare: Callable[[], tuple[_core.GradientSet, tuple[float, ...]]],
    p: float,
    part: Callable[[_core.GradientSet], float] | None = None,
    agree: Sequence[str] = (),
) -> tuple[float, _core.GradientSet]:
    """The norm over every rank's arrays, and this rank's compiled set.

    ``prepare()`` checks the call's scalar arguments and makes this rank's set, inside the
    collective's error handling: a rank whose input is bad (an array or a scalar) still takes
    part in the collective, and then every rank raises (none is left waiting, none writes).
    It returns the set and the checked values of the arguments ``agree`` names, which every
    rank must give alike. ``part`` gives this rank's norm from its set (default: its total
    ``p``-norm); ``p`` is this rank's norm type (any value when it is bad: ``prepare``
    raises then, and ``p`` is not used)."""
    made: list[tuple[_core.GradientSet, tuple[float, ...]]] = []

    def local() -> float:
        made.append(prepare())
        return made[0][0].total_norm(p) if part is None else part(made[0][0])

    getters = [(name, partial(lambda i: made[0][1][i], i)) for i, name in enumerate(agree)]
    return global_norm(comm, local, p, getters), made[0][0]


def p_or_default(norm_type: Any) -> float:
    """``norm_type`` checked, or 2.0 when it is bad (for :func:`global_norm_of`, whose
    ``prepare`` raises that error on every rank)."""
    try:
        return check_norm_type(norm_type)
    except Exception:  # raised again inside the collective
        return 2.0


# the non-finite mode as a number, for the ranks to compare
_MODE_NAME = f"nonfinite (as its index in {MODES})"


def clip_norm_across(
    comm: Any,
    make_set: Callable[[], _core.GradientSet],
    per_tensor_norms: bool,
    scalars: tuple[Any, Any, Any, Any, Any],
) -> tuple[float, float, Norms | None]:
    """:func:`run_clip_norm` over every rank's arrays (``make_set()``, this rank's): the
    ``scalars`` of :func:`norm_args`, checked inside the collective, must be the same on
    every rank."""
    checked: list[tuple[float, float, str, float]] = []
    norms: list[Norms] = []

    def prepare() -> tuple[_core.GradientSet, tuple[float, ...]]:
        checked.append(norm_args(*scalars))
        max_norm, p, mode, eps = checked[0]
        s = make_set()
        if per_tensor_norms:  # this rank's own arrays (one more read pass, only when asked)
            norms.append(s.tensor_norms(p))
        return s, (max_norm, p, float(MODES.index(mode)), eps)

    agree = ("max_norm", "norm_type", _MODE_NAME, "eps")
    norm, s = global_norm_of(comm, prepare, p_or_default(scalars[1]), agree=agree)
    max_norm, p, mode, eps = checked[0]
    if mode == "raise" and not math.isfinite(norm):  # every rank has the same norm
        raise_nonfinite(norm, p, "global norm of the gradients across ranks")
    coef = s.apply_norm(max_norm, norm, eps, ENGINE_MODE[mode])
    return norm, coef, norms[0] if norms else None


def total_norm_across(
    comm: Any, make_set: Callable[[], _core.GradientSet], norm_type: Any, error_if_nonfinite: Any
) -> float:
    """:func:`run_total_norm` over every rank's arrays; the arguments are checked inside the
    collective and must be the same on every rank."""
    checked: list[tuple[float, bool]] = []

    def prepare() -> tuple[_core.GradientSet, tuple[float, ...]]:
        checked.append(
            (check_norm_type(norm_type), check_flag(error_if_nonfinite, "error_if_nonfinite"))
        )
        return make_set(), (checked[0][0], float(checked[0][1]))

    p_hint = p_or_default(norm_type)
    norm = global_norm_of(comm, prepare, p_hint, agree=("norm_type", "error_if_nonfinite"))[0]
    p, raise_ = checked[0]
    if raise_ and not math.isfinite(norm):
        raise_nonfinite(norm, p, "global norm of the gradients across ranks")
    return float(norm)


# ---------------------------------------------------------------- each operation, once


def run_clip_norm(
    ops: Ops[T],
    target: T,
    max_norm: float,
    p: float,
    mode: str,
    eps: float,
    per_tensor_norms: bool,
) -> tuple[float, float, Norms | None]:
    """``(norm, coef, per-array norms or None)`` of a global norm clip."""
    norm, coef, norms = ops.clip_total(
        target, max_norm, p, ENGINE_MODE[mode], eps, per_tensor_norms
    )
    if mode == "raise" and not math.isfinite(norm):
        raise_nonfinite(norm, p)
    return norm, coef, norms


def run_total_norm(ops: Ops[T], target: T, p: float, error_if_nonfinite: bool) -> float:
    error_if_nonfinite = check_flag(error_if_nonfinite, "error_if_nonfinite")
    norm = ops.total_norm(target, p)
    if error_if_nonfinite and not math.isfinite(norm):
        raise_nonfinite(norm, p)
    return float(norm)


def run_clip_each(
    ops: Ops[T], target: T, max_norm: float, p: float, mode: str, eps: float
) -> np.ndarray:
    norms = ops.clip_each(target, max_norm, p, ENGINE_MODE[mode], eps)
    if mode == "raise" and not np.isfinite(norms).all():
        bad = int(np.flatnonzero(~np.isfinite(norms))[0])
        raise_nonfinite(float(norms[bad]), p, f"norm of {ops.own(target, False).where(bad)}")
    return norms


# clip_grad_norm_'s common call (see there): gradclip's own containers, read as they are by
# the compiled parse; the default non-finite mode, by identity (the signature's default is
# this object, and so is every "propagate" literal, which CPython interns)
CONTAINERS = frozenset({list, tuple, dict})
PROPAGATE = "propagate"
ENGINE_PROPAGATE = ENGINE_MODE["propagate"]


def common_scalars(
    max_norm: Any, norm_type: Any, error_if_nonfinite: Any, nonfinite: Any, eps: Any
) -> bool:
    """Whether a norm clip's scalar arguments are those of the common call, already valid:
    the rules of ``norm_args``, checked inline (calling the checks costs a W4-sized call,
    100 arrays of 100, a fifth of its time). NaN fails every comparison; a string equal to
    "propagate" that is another object takes the general path."""
    return (
        type(max_norm) is float
        and 0.0 < max_norm < math.inf
        and type(norm_type) is float
        and norm_type > 0.0
        and type(eps) is float
        and 0.0 <= eps < math.inf
        and nonfinite is PROPAGATE
        and error_if_nonfinite is False
    )


def norm_args(
    max_norm: Any, norm_type: Any, error_if_nonfinite: Any, nonfinite: Any, eps: Any
) -> tuple[float, float, str, float]:
    """``(max_norm, p, mode, eps)`` of a norm clip, checked."""
    max_norm = check_max_norm(max_norm)
    p = check_norm_type(norm_type)
    return max_norm, p, resolve_mode(nonfinite, error_if_nonfinite), check_eps(eps)
