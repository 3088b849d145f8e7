"""The machinery AutoClip and ZClip share (gradclip.adaptive): one step that reads the norm,
asks the clipper for a threshold and writes only when it clips, and the state dict of the
constructor's settings and the clipper's statistics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from . import _core
from ._api import ENGINE_MODE, core_set
from ._errors import raise_nonfinite
from ._result import ClipResult
from ._settings import (
    STATE_VERSION,
    Setting,
    check_all,
    check_bool,
    check_eps_setting,
    check_nonfinite_setting,
    check_norm_setting,
    check_state_keys,
    settings_of,
)

Norms = np.ndarray | None


class _StatefulClipper:
    """Reads the norm, asks the subclass for a threshold, writes only when clipping. The
    constructor's arguments are :class:`~gradclip._settings.Setting` attributes; a subclass
    adds the statistics of its state (``_STATE``) with ``_state``, ``_check_state`` and
    ``_summary``."""

    __slots__ = ("_eps", "_nonfinite", "_norm_type", "_per_tensor_norms")

    norm_type = Setting(check_norm_setting)
    nonfinite = Setting(check_nonfinite_setting)
    eps = Setting(check_eps_setting)
    per_tensor_norms = Setting(check_bool)
    # the slots the settings are kept in (for the type checker)
    _norm_type: float
    _nonfinite: str
    _eps: float
    _per_tensor_norms: bool

    # the keys of the statistics in the state dict, after the settings
    _STATE: ClassVar[tuple[str, ...]] = ()

    def _configure(self, values: Mapping[str, Any]) -> None:
        """Check every setting, then set them all (nothing changes on an error)."""
        for name, value in check_all(type(self), values).items():
            object.__setattr__(self, "_" + name, value)

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_state(self, state: Mapping[str, Any], settings: Mapping[str, Any]) -> Any:
        """Check the statistics of ``state`` against the (checked) settings; return what
        ``_restore`` takes."""
        raise NotImplementedError

    def _restore(self, checked: Any) -> None:
        raise NotImplementedError

    def _summary(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{s.name}={getattr(self, s.slot)!r}" for s in settings_of(type(self)))
        return f"{type(self).__name__}({args}; {self._summary()})"

    def state_dict(self) -> dict[str, Any]:
        """The arguments and the statistics, as a plain JSON-serialisable dict."""
        return {
            "clipper": type(self).__name__,
            "version": STATE_VERSION,
            **{s.name: getattr(self, s.slot) for s in settings_of(type(self))},
            **self._state(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: arguments and statistics, exactly.

        Everything is checked before anything changes: ``TypeError`` for a value of the wrong
        type, ``ValueError`` for missing or unexpected keys, another clipper's state or a bad
        value (the constructor's rules, and those of the statistics).
        """
        cls = type(self)
        keys = ("clipper", "version", *(s.name for s in settings_of(cls)), *cls._STATE)
        check_state_keys(state_dict, cls.__name__, keys)
        settings = check_all(cls, state_dict)
        checked = self._check_state(state_dict, settings)
        self._configure(settings)
        self._restore(checked)

    def __call__(self, grads: Any) -> ClipResult:
        """Clip ``grads`` in place for one training step and update the statistics.

        Parameters
        ----------
        grads : array, iterable of arrays, or GradientSet
            What :func:`gradclip.clip_grad_norm_` accepts (a generator is consumed once), or a
            :class:`gradclip.GradientSet`, whose per-step Python work is O(1).

        Returns
        -------
        ClipResult
            ``total_norm`` (before clipping), ``coef`` (1.0 when nothing was written),
            ``clipped``, ``found_nonfinite``, ``threshold`` (this step's bound; ``inf``
            when there was none) and ``tensor_norms`` (None unless ``per_tensor_norms``).

        Raises
        ------
        TypeError, ValueError
            For bad gradients, as :func:`gradclip.clip_grad_norm_` does; nothing is written
            and the statistics are unchanged.
        gradclip.NonFiniteNormError
            With ``nonfinite="raise"`` and a NaN or infinite norm; nothing is written and the
            statistics are unchanged.
        """
        # A generator is consumed here, once (a one-shot set): the norm pass and the write
        # pass need the same arrays. A GradientSet brings its own set.
        return self._step(core_set(grads))

    def _step(self, s: Any) -> ClipResult:
        raise NotImplementedError

    def _total_norm(self, s: Any) -> tuple[float, Norms]:
        """The total norm, and with ``per_tensor_norms`` each array's norm from the same pass
        (the total is then the norm of those norms, as for
        ``clip_grad_norm_(per_tensor_norms=True)``: it may differ in the last bit)."""
        if self._per_tensor_norms:
            norm, norms = s.norms(self._norm_type)
            return float(norm), norms
        return float(s.total_norm(self._norm_type)), None

    def _scale(self, s: Any, threshold: float, norm: float) -> float:
        """Multiply the gradients by ``threshold / (norm + eps)``; returns that coefficient.

        The engine's global rule with this step's threshold as max_norm (a threshold of 0,
        after a history of zero norms, scales by exactly 0; a NaN norm gives NaN)."""
        coef: float = s.apply_norm(threshold, norm, self._eps, ENGINE_MODE["propagate"])
        return coef

    def _clip(self, s: Any, norm: float, norms: Norms, threshold: float) -> ClipResult:
        if norm > threshold:
            coef = self._scale(s, threshold, norm)
            return ClipResult(norm, coef, _core.clipped(coef), False, norms, threshold)
        return ClipResult(norm, 1.0, False, False, norms, threshold)

    def _nonfinite_step(self, s: Any, norm: float, norms: Norms, threshold: float) -> ClipResult:
        """A NaN or infinite norm: the statistics are never updated with it."""
        mode = self._nonfinite
        if mode == "raise":
            raise_nonfinite(norm, self._norm_type, clipper=type(self).__name__)
        if mode == "skip":
            return ClipResult(norm, 1.0, False, True, norms, threshold)
        if mode == "zero":
            coef = s.apply_norm(1.0, norm, self._eps, ENGINE_MODE["zero"])
            return ClipResult(norm, coef, _core.clipped(coef), True, norms, threshold)
        # "propagate": PyTorch's arithmetic with this step's bound (a NaN norm makes every
        # element NaN, an infinite one makes finite elements 0); with no bound, nothing is
        # written and the non-finite values pass through as they are.
        if math.isinf(threshold):
            return ClipResult(norm, 1.0, False, True, norms, threshold)
        coef = self._scale(s, threshold, norm)
        return ClipResult(norm, coef, _core.clipped(coef), True, norms, threshold)
