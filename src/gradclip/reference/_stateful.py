"""Twins of gradclip.adaptive: AutoClip and ZClip (gradclip.reference)."""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import raise_nonfinite
from .._result import ClipResult
from ._arith import _coefficient, _norms_each, _pnorm, _present, _scale, _zero
from ._inputs import (
    Array,
    Float64Array,
    _as_arrays,
    _check_eps,
    _check_mode,
    _check_norm_type,
    _real,
)

# --------------------------------------------------------------------------------------------
# stateful clippers: AutoClip and ZClip
# --------------------------------------------------------------------------------------------
#
# Twins of gradclip.adaptive, written the plain way: the whole history goes through
# np.percentile every step, the statistics are updated in the obvious order. Each step reads the
# norm with this module's _pnorm and writes with its _scale, only when norm > threshold (the
# rule of ZClip's reference code; see gradclip.adaptive for why not min(1, ...)).

_STATE_VERSION = 1
_AUTOCLIP_KEYS = (
    "clipper",
    "version",
    "percentile",
    "history_size",
    "norm_type",
    "nonfinite",
    "eps",
    "per_tensor_norms",
    "history",
)
_ZCLIP_KEYS = (
    "clipper",
    "version",
    "alpha",
    "z_thresh",
    "warmup_steps",
    "max_grad_norm",
    "mode",
    "clip_option",
    "norm_type",
    "nonfinite",
    "eps",
    "per_tensor_norms",
    "warmup_norms",
    "mean",
    "var",
)


def _check_count(value: object, name: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {'None or ' if allow_none else ''}an int")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def _check_in_range(value: object, name: str, low: float, high: float, closed_high: bool) -> float:
    """low < value < high (or <= high when closed_high); ValueError otherwise."""
    v = _real(value, name)
    if not (low < v < high or (closed_high and v == high)):
        raise ValueError(f"{name} is out of range, got {v!r}")
    return v


def _check_finite_positive(value: object, name: str) -> float:
    v = _real(value, name)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {v!r}")
    return v


def _check_option(value: object, name: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def _check_nonfinite(value: object) -> str:
    return _check_mode(value, False)


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool")
    return bool(value)


def _norm_and_norms(
    grads: object, p: float, per_tensor_norms: bool
) -> tuple[list[Array], float, Float64Array | None]:
    """The arrays, their total norm, and each one's norm (None entries: 0.0) when asked."""
    arrays = _as_arrays(grads)
    present = _present(arrays)
    return present, _pnorm(present, p), _norms_each(arrays, p) if per_tensor_norms else None


def _state_norms(value: object, key: str) -> list[float]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"state_dict[{key!r}] must be a list of floats")
    norms = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"state_dict[{key!r}] must hold real numbers, got {v!r}")
        if not (math.isfinite(float(v)) and float(v) >= 0.0):
            raise ValueError(f"state_dict[{key!r}] must hold finite norms >= 0, got {v!r}")
        norms.append(float(v))
    return norms


def _state_statistic(value: object, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"state_dict[{key!r}] must be a float or None")
    if not float(value) >= 0.0:
        raise ValueError(f"state_dict[{key!r}] must be >= 0, got {value!r}")
    return float(value)


def _check_state(state: object, clipper: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a dict, not {type(state).__name__}")
    if set(state) != set(keys):
        raise ValueError(f"not a {clipper} state_dict: keys {sorted(state)}")
    if state["clipper"] != clipper or state["version"] != _STATE_VERSION:
        raise ValueError(f"not a version-{_STATE_VERSION} {clipper} state_dict")
    return state


def _adaptive_clip(
    arrays: Sequence[Array],
    norm: float,
    norms: Float64Array | None,
    threshold: float,
    eps: float,
) -> ClipResult:
    if norm > threshold:
        coef = _coefficient(threshold, norm, eps)
        for arr in arrays:
            _scale(arr, coef)
        return ClipResult(norm, coef, True, False, norms, threshold)
    return ClipResult(norm, 1.0, False, False, norms, threshold)


def _adaptive_nonfinite(
    arrays: Sequence[Array],
    norm: float,
    norms: Float64Array | None,
    threshold: float,
    p: float,
    eps: float,
    mode: str,
    clipper: str,
) -> ClipResult:
    """A non-finite norm: the statistics are left alone, ``mode`` says what is written
    (``clipper``, the class's name, for the error)."""
    if mode == "raise":
        raise_nonfinite(norm, p, clipper=clipper)
    if mode == "skip":
        return ClipResult(norm, 1.0, False, True, norms, threshold)
    if mode == "zero":
        _zero(arrays)
        return ClipResult(norm, 0.0, True, True, norms, threshold)
    if math.isinf(threshold):  # propagate, but no bound this step: nothing to scale by
        return ClipResult(norm, 1.0, False, True, norms, threshold)
    coef = _coefficient(threshold, norm, eps)
    for arr in arrays:
        _scale(arr, coef)
    return ClipResult(norm, coef, True, True, norms, threshold)


class AutoClip:
    """Reference twin of :class:`gradclip.AutoClip` (Seetharaman et al., MLSP 2020).

    Each call appends the total norm to the history and clips to
    ``np.percentile(history, percentile)`` when the norm exceeds it.

    Examples
    --------
    >>> import numpy as np
    >>> clipper = AutoClip(percentile=50.0)
    >>> _ = clipper(np.array([3.0, 4.0]))
    >>> r = clipper(np.array([6.0, 8.0]))
    >>> r.threshold, r.clipped
    (7.5, True)
    """

    def __init__(
        self,
        percentile: float = 10.0,
        history_size: int | None = None,
        norm_type: float = 2.0,
        *,
        nonfinite: str = "skip",
        eps: float = 1e-6,
        per_tensor_norms: bool = False,
    ) -> None:
        self.percentile = _check_in_range(percentile, "percentile", 0.0, 100.0, True)
        self.history_size = _check_count(history_size, "history_size", allow_none=True)
        self.norm_type = _check_norm_type(norm_type)
        self.nonfinite = _check_nonfinite(nonfinite)
        self.eps = _check_eps(eps)
        self.per_tensor_norms = _check_flag(per_tensor_norms, "per_tensor_norms")
        self._history: deque[float] = deque(maxlen=self.history_size)

    @property
    def history(self) -> tuple[float, ...]:
        return tuple(self._history)

    def _threshold(self) -> float:
        if not self._history:
            return math.inf
        return float(np.percentile(np.array(self._history, dtype=np.float64), self.percentile))

    def __call__(self, grads: object) -> ClipResult:
        arrays, norm, norms = _norm_and_norms(grads, self.norm_type, self.per_tensor_norms)
        if not math.isfinite(norm):
            threshold = self._threshold()
            return _adaptive_nonfinite(
                arrays, norm, norms, threshold, self.norm_type, self.eps, self.nonfinite, "AutoClip"
            )
        self._history.append(norm)  # the deque drops the oldest norm when it is full
        return _adaptive_clip(arrays, norm, norms, self._threshold(), self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {
            "clipper": "AutoClip",
            "version": _STATE_VERSION,
            "percentile": self.percentile,
            "history_size": self.history_size,
            "norm_type": self.norm_type,
            "nonfinite": self.nonfinite,
            "eps": self.eps,
            "per_tensor_norms": self.per_tensor_norms,
            "history": list(self._history),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = _check_state(state_dict, "AutoClip", _AUTOCLIP_KEYS)
        percentile = _check_in_range(state["percentile"], "percentile", 0.0, 100.0, True)
        history_size = _check_count(state["history_size"], "history_size", allow_none=True)
        norm_type = _check_norm_type(state["norm_type"])
        nonfinite = _check_nonfinite(state["nonfinite"])
        eps = _check_eps(state["eps"])
        per_tensor_norms = _check_flag(state["per_tensor_norms"], "per_tensor_norms")
        history = _state_norms(state["history"], "history")
        if history_size is not None and len(history) > history_size:
            raise ValueError("state_dict['history'] is longer than history_size")
        self.percentile, self.history_size, self.norm_type = percentile, history_size, norm_type
        self.nonfinite, self.eps, self.per_tensor_norms = nonfinite, eps, per_tensor_norms
        self._history = deque(history, maxlen=history_size)


class ZClip:
    """Reference twin of :class:`gradclip.ZClip` (Kumar et al., 2025, arXiv:2504.02507).

    Examples
    --------
    >>> import numpy as np
    >>> clipper = ZClip(warmup_steps=3, max_grad_norm=None)
    >>> for norm in [1.0, 1.2, 0.8, 1.1]:
    ...     assert not clipper(np.array([norm])).clipped
    >>> round(clipper(np.array([5.0])).threshold, 4)
    1.0439
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        *,
        warmup_steps: int = 25,
        max_grad_norm: float | None = 1.0,
        mode: str = "zscore",
        clip_option: str = "adaptive_scaling",
        norm_type: float = 2.0,
        nonfinite: str = "skip",
        eps: float = 1e-6,
        per_tensor_norms: bool = False,
    ) -> None:
        self.alpha = _check_in_range(alpha, "alpha", 0.0, 1.0, False)
        self.z_thresh = _check_finite_positive(z_thresh, "z_thresh")
        self.warmup_steps: int = _check_count(warmup_steps, "warmup_steps")  # type: ignore[assignment]
        self.max_grad_norm = (
            None
            if max_grad_norm is None
            else _check_finite_positive(max_grad_norm, "max_grad_norm")
        )
        self.mode = _check_option(mode, "mode", ("zscore", "percentile"))
        self.clip_option = _check_option(clip_option, "clip_option", ("adaptive_scaling", "mean"))
        self.norm_type = _check_norm_type(norm_type)
        self.nonfinite = _check_nonfinite(nonfinite)
        self.eps = _check_eps(eps)
        self.per_tensor_norms = _check_flag(per_tensor_norms, "per_tensor_norms")
        self.warmup_norms: list[float] = []
        self.mean: float | None = None
        self.var: float | None = None

    @property
    def initialized(self) -> bool:
        return self.mean is not None

    def _bound(self) -> float:
        return math.inf if self.max_grad_norm is None else self.max_grad_norm

    def __call__(self, grads: object) -> ClipResult:
        arrays, norm, norms = _norm_and_norms(grads, self.norm_type, self.per_tensor_norms)
        if not math.isfinite(norm):
            return _adaptive_nonfinite(
                arrays,
                norm,
                norms,
                self._bound(),
                self.norm_type,
                self.eps,
                self.nonfinite,
                "ZClip",
            )
        if self.mean is None or self.var is None:  # warm-up: only the hard bound applies
            result = _adaptive_clip(arrays, norm, norms, self._bound(), self.eps)
            self.warmup_norms.append(norm)
            if len(self.warmup_norms) == self.warmup_steps:
                n = len(self.warmup_norms)
                self.mean = math.fsum(self.warmup_norms) / n
                self.var = math.fsum((x - self.mean) ** 2 for x in self.warmup_norms) / n
                self.warmup_norms = []
            return result
        std = math.sqrt(self.var)
        spike: float | None = None
        if self.mode == "percentile":
            if norm > self.mean + self.z_thresh * std:
                spike = self.mean + self.z_thresh * std
        else:
            denominator = std + self.eps
            if denominator > 0.0:
                z = (norm - self.mean) / denominator
            else:
                z = math.inf if norm > self.mean else 0.0  # x / 0, only the sign matters here
            if z > self.z_thresh:
                if self.clip_option == "mean":
                    spike = self.mean
                else:
                    spike = self.mean + (self.z_thresh * std) / (z / self.z_thresh)
        threshold = self._bound() if spike is None else min(spike, self._bound())
        result = _adaptive_clip(arrays, norm, norms, threshold, self.eps)
        x = norm if spike is None else spike
        self.mean = self.alpha * self.mean + (1.0 - self.alpha) * x
        self.var = self.alpha * self.var + (1.0 - self.alpha) * (x - self.mean) ** 2
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "clipper": "ZClip",
            "version": _STATE_VERSION,
            "alpha": self.alpha,
            "z_thresh": self.z_thresh,
            "warmup_steps": self.warmup_steps,
            "max_grad_norm": self.max_grad_norm,
            "mode": self.mode,
            "clip_option": self.clip_option,
            "norm_type": self.norm_type,
            "nonfinite": self.nonfinite,
            "eps": self.eps,
            "per_tensor_norms": self.per_tensor_norms,
            "warmup_norms": list(self.warmup_norms),
            "mean": self.mean,
            "var": self.var,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = _check_state(state_dict, "ZClip", _ZCLIP_KEYS)
        alpha = _check_in_range(state["alpha"], "alpha", 0.0, 1.0, False)
        z_thresh = _check_finite_positive(state["z_thresh"], "z_thresh")
        warmup_steps = _check_count(state["warmup_steps"], "warmup_steps")
        assert warmup_steps is not None
        max_grad_norm = state["max_grad_norm"]
        if max_grad_norm is not None:
            max_grad_norm = _check_finite_positive(max_grad_norm, "max_grad_norm")
        mode = _check_option(state["mode"], "mode", ("zscore", "percentile"))
        clip_option = _check_option(
            state["clip_option"], "clip_option", ("adaptive_scaling", "mean")
        )
        norm_type = _check_norm_type(state["norm_type"])
        nonfinite = _check_nonfinite(state["nonfinite"])
        eps = _check_eps(state["eps"])
        per_tensor_norms = _check_flag(state["per_tensor_norms"], "per_tensor_norms")
        warmup_norms = _state_norms(state["warmup_norms"], "warmup_norms")
        mean = _state_statistic(state["mean"], "mean")
        var = _state_statistic(state["var"], "var")
        warming_up = mean is None and var is None and len(warmup_norms) < warmup_steps
        warmed_up = mean is not None and var is not None and not warmup_norms
        if not (warming_up or warmed_up):
            raise ValueError(
                "state_dict: mean and var must both be None with fewer than warmup_steps "
                "warmup_norms, or both set with no warmup_norms"
            )
        self.alpha, self.z_thresh, self.warmup_steps = alpha, z_thresh, warmup_steps
        self.max_grad_norm, self.mode, self.clip_option = max_grad_norm, mode, clip_option
        self.norm_type, self.nonfinite, self.eps = norm_type, nonfinite, eps
        self.per_tensor_norms = per_tensor_norms
        self.warmup_norms, self.mean, self.var = warmup_norms, mean, var
