"""The settings of the stateful clippers: one declaration per constructor argument gives its
check (shared by the constructor and ``load_state_dict``), its read-only attribute, and its
place in ``repr`` and ``state_dict``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, overload

import numpy as np

from ._inputs import _real, check_eps, check_norm_type, resolve_mode

STATE_VERSION = 1

T = TypeVar("T")


class Setting(Generic[T]):
    """A constructor argument of a clipper, read-only afterwards and kept in its state: stored
    in the slot ``_<name>``, checked by ``check(value, name)``."""

    def __init__(self, check: Callable[[Any, str], T]) -> None:
        self.check = check
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = "_" + name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Setting[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> T | Setting[T]:
        if obj is None:
            return self
        value: T = getattr(obj, self.slot)
        return value

    def __repr__(self) -> str:
        return f"Setting({self.name!r})"

    def __set__(self, obj: object, value: Any) -> None:
        raise AttributeError(f"{self.name} is read-only: make a new clipper, or load_state_dict")


def settings_of(cls: type) -> tuple[Setting[Any], ...]:
    """The settings of a clipper class: its own in definition order, then its bases'."""
    out: list[Setting[Any]] = []
    for klass in cls.__mro__:
        out += [v for v in vars(klass).values() if isinstance(v, Setting)]
    return tuple(out)


def check_all(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting of ``cls`` checked (all before any is used)."""
    return {s.name: s.check(values[s.name], s.name) for s in settings_of(cls)}


# --------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------


def _check_int(x: Any, name: str, *, allow_none: bool = False) -> int | None:
    if x is None and allow_none:
        return None
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        what = "None or an int" if allow_none else "an int"
        raise TypeError(f"{name} must be {what}, not {type(x).__name__}")
    if x < 1:
        raise ValueError(f"{name} must be >= 1, got {int(x)}")
    return int(x)


def check_percentile(x: Any, name: str = "percentile") -> float:
    v = _real(x, name)
    if not (0.0 < v <= 100.0):
        raise ValueError(f"percentile must be in (0, 100], got {v!r}")
    return v


def check_alpha(x: Any, name: str = "alpha") -> float:
    v = _real(x, name)
    if not (0.0 < v < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {v!r}")
    return v


def check_positive(x: Any, name: str) -> float:
    v = _real(x, name)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {v!r}")
    return v


def check_bool(x: Any, name: str) -> bool:
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {type(x).__name__}")
    return bool(x)


def _check_choice(x: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(x, str) or x not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {x!r}")
    return x


def check_norm_list(x: Any, name: str) -> list[float]:
    """A list of finite norms >= 0 from a state dict (list or tuple of real numbers)."""
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"state_dict[{name!r}] must be a list of floats, not {type(x).__name__}")
    out: list[float] = []
    for i, v in enumerate(x):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(
                f"state_dict[{name!r}][{i}] must be a real number, not {type(v).__name__}"
            )
        f = float(v)
        if not (math.isfinite(f) and f >= 0.0):
            raise ValueError(f"state_dict[{name!r}][{i}] must be a finite norm >= 0, got {f!r}")
        out.append(f)
    return out


def check_stat(x: Any, name: str) -> float:
    """An EMA statistic from a state dict: a real number >= 0 (inf allowed: it can overflow)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"state_dict[{name!r}] must be a float or None, not {type(x).__name__}")
    f = float(x)
    if not f >= 0.0:  # also rejects NaN
        raise ValueError(f"state_dict[{name!r}] must be >= 0, got {f!r}")
    return f


def check_state_keys(state: Any, clipper: str, keys: tuple[str, ...]) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a dict, not {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    unexpected = [k for k in state if k not in keys]
    if missing or unexpected:
        raise ValueError(
            f"not a {clipper} state_dict: missing keys {missing}, unexpected keys {unexpected}"
        )
    if state["clipper"] != clipper:
        raise ValueError(
            f"state_dict is for {state['clipper']!r}; it cannot be loaded into {clipper}"
        )
    if state["version"] != STATE_VERSION:
        raise ValueError(
            f"state_dict has version {state['version']!r}; this gradclip reads version "
            f"{STATE_VERSION}"
        )


def check_count(x: Any, name: str) -> int:
    n = _check_int(x, name)
    assert n is not None
    return n


def check_optional_count(x: Any, name: str) -> int | None:
    return _check_int(x, name, allow_none=True)


def check_optional_positive(x: Any, name: str) -> float | None:
    return None if x is None else check_positive(x, name)


def check_choice(choices: tuple[str, ...]) -> Callable[[Any, str], str]:
    return lambda x, name: _check_choice(x, name, choices)


# the settings both clippers have
def check_norm_setting(x: Any, name: str) -> float:
    return check_norm_type(x)


def check_nonfinite_setting(x: Any, name: str) -> str:
    return resolve_mode(x, False)


def check_eps_setting(x: Any, name: str) -> float:
    return check_eps(x)
