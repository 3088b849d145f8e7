"""Stateful clippers whose threshold follows the history of gradient norms.

- :class:`AutoClip` (Seetharaman, Wichern, Pardo and Le Roux, "AutoClip: Adaptive Gradient
  Clipping for Source Separation Networks", MLSP 2020): the threshold is the p-th percentile
  of every gradient norm seen so far, the current one included.
- :class:`ZClip` (Kumar, Owen, Roy Chowdhury and Güra, "ZClip: Adaptive Spike Mitigation for
  LLM Pre-Training", 2025, arXiv:2504.02507; reference code github.com/bluorion-com/ZClip):
  an exponential moving mean and variance of the norm; a step whose z-score marks it as a
  spike is clipped down to an adaptive threshold.

Both are called once per training step, between the backward pass and the optimizer step:
``clipper(grads)`` reads the gradients once for the total norm, writes them only when it clips
(one read+write pass), and returns a :class:`~gradclip._result.ClipResult`, so logging the
norm, the coefficient and the threshold costs nothing more. ``grads`` is anything
:func:`gradclip.clip_grad_norm_` accepts, or a :class:`gradclip.GradientSet` (validated once,
the cheapest per step).

Both clip with ``coef = threshold / (norm + eps)`` and only when ``norm > threshold``. That is
the rule of ZClip's reference code; it differs from :func:`gradclip.clip_grad_norm_`'s
``min(1, max_norm / (norm + eps))`` only when the threshold lies in ``[norm, norm + eps)``.
Here the threshold is computed from the norms themselves and often *is* the current norm
(AutoClip's first step, or a new maximum at ``percentile=100``), where PyTorch's rule would
spend a full read+write pass multiplying by ``norm / (norm + eps)`` for nothing.

The state (:meth:`~AutoClip.state_dict`) is a plain dict of Python floats, ints, strings,
lists and None, holding the constructor's arguments too: ``AutoClip().load_state_dict(d)``
gives back the clipper that saved ``d``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._quantiles import SortedNorms, SplitHeaps
from ._result import ClipResult
from ._settings import (
    Setting,
    check_alpha,
    check_choice,
    check_count,
    check_norm_list,
    check_optional_count,
    check_optional_positive,
    check_percentile,
    check_positive,
    check_stat,
)
from ._stateful import _StatefulClipper

__all__ = ["AutoClip", "ZClip"]


# --------------------------------------------------------------------------------------------
# AutoClip
# --------------------------------------------------------------------------------------------


class AutoClip(_StatefulClipper):
    """Clip to the p-th percentile of the gradient norms seen so far (AutoClip).

    Seetharaman, Wichern, Pardo and Le Roux, "AutoClip: Adaptive Gradient Clipping for Source
    Separation Networks", MLSP 2020. Each call computes the total norm, appends it to the
    history, takes the ``percentile``-th percentile of the history (the current norm
    included) as the threshold, and clips the gradients to it when the norm exceeds it.

    The percentile is NumPy's default definition (``np.percentile(history, percentile)``,
    method ``"linear"``), bit for bit, without sorting the history each step: O(log n) per
    step for an unbounded history, a list insertion for a bounded one.

    Parameters
    ----------
    percentile : float, default 10.0
        In (0, 100]. The paper recommends the 10th percentile; 100 clips only new maxima.
    history_size : int or None, default None
        Keep only the last ``history_size`` norms (None: every norm, as in the paper).
    norm_type : float, default 2.0
        Any p > 0, or ``inf``.
    nonfinite : {"skip", "raise", "zero", "propagate"}, default "skip"
        What to do with a NaN or infinite total norm. It never enters the history. ``"skip"``
        writes nothing and returns ``found_nonfinite=True``, so the caller can skip the
        optimizer step; ``"raise"`` raises :class:`gradclip.NonFiniteNormError`; ``"zero"``
        zeroes every gradient; ``"propagate"`` multiplies by ``threshold / (norm + eps)``
        (the percentile of the history so far) as PyTorch would, and writes nothing while the
        history is empty.
    eps : float, default 1e-6
        Added to the norm in the coefficient's denominator.
    per_tensor_norms : bool, default False
        Also report each array's norm (``ClipResult.tensor_norms``), from the same read
        pass. The total is then the norm of those norms, which may differ from the plain
        total in the last bit (as with ``clip_grad_norm_(per_tensor_norms=True)``).

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> clipper = gradclip.AutoClip(percentile=50.0)
    >>> g = np.array([3.0, 4.0])
    >>> clipper(g).clipped            # history [5]: the threshold is the norm itself
    False
    >>> g[...] = [6.0, 8.0]
    >>> r = clipper(g)                # history [5, 10]: the median is 7.5
    >>> r.total_norm, r.threshold, r.clipped
    (10.0, 7.5, True)
    >>> round(float(np.linalg.norm(g)), 4)
    7.5
    """

    __slots__ = ("_history", "_history_size", "_index", "_percentile", "_start")

    percentile = Setting(check_percentile)
    history_size = Setting(check_optional_count)
    _percentile: float
    _history_size: int | None
    _STATE = ("history",)

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
        self._configure(locals())
        self._set_history([])

    def _set_history(self, norms: list[float]) -> None:
        # Insertion order (for the state and to drop the oldest): a list, oldest first from
        # _start (a ring once history_size norms are held); and an index for the percentile.
        self._history: list[float] = list(norms)
        self._start = 0
        q = self._percentile / 100.0
        self._index: SplitHeaps | SortedNorms = (
            SplitHeaps(norms, q) if self._history_size is None else SortedNorms(norms, q)
        )

    def _ordered(self) -> list[float]:
        return self._history[self._start :] + self._history[: self._start]

    def _current_threshold(self) -> float:
        return self._index.quantile() if self._history else math.inf

    def _step(self, s: Any) -> ClipResult:
        norm, norms = self._total_norm(s)
        if not math.isfinite(norm):
            return self._nonfinite_step(s, norm, norms, self._current_threshold())
        # The threshold the history gives with this norm in it, read without changing it; then
        # the clip, the one step that can fail (MemoryError); then the norm is recorded, in
        # storage reserved before the clip, so that recording allocates nothing: an error
        # leaves the history as it was, and nothing can fail once the gradients are written.
        history, index = self._history, self._index
        full = self._history_size is not None and len(history) == self._history_size
        oldest = history[self._start] if full else None
        if isinstance(index, SortedNorms):
            threshold = index.quantile_with(norm, oldest)
        else:
            threshold = index.quantile_with(norm)
        if not full:
            history.append(0.0)  # room for the append below (see _quantiles._reserve)
            history.pop()
            index.reserve()
        result = self._clip(s, norm, norms, threshold)
        if oldest is not None:  # the ring is full: the new norm takes the oldest one's place
            assert isinstance(index, SortedNorms)  # bounded histories are kept sorted
            index.remove(oldest)
            index.add(norm)
            history[self._start] = norm
            self._start = (self._start + 1) % len(history)
        else:
            history.append(norm)
            index.add(norm)
        return result

    @property
    def history(self) -> tuple[float, ...]:
        """The norms in the history, oldest first."""
        return tuple(self._ordered())

    def _summary(self) -> str:
        return f"{len(self._history)} norms seen"

    def _state(self) -> dict[str, Any]:
        return {"history": self._ordered()}

    def _check_state(self, state: Mapping[str, Any], settings: Mapping[str, Any]) -> Any:
        history = check_norm_list(state["history"], "history")
        size = settings["history_size"]
        if size is not None and len(history) > size:
            raise ValueError(
                f"state_dict['history'] holds {len(history)} norms, more than history_size={size}"
            )
        return history

    def _restore(self, checked: Any) -> None:
        self._set_history(checked)

    def state_dict(self) -> dict[str, Any]:
        """The arguments and the history, as a plain JSON-serialisable dict.

        Examples
        --------
        >>> import json, numpy as np, gradclip
        >>> a = gradclip.AutoClip(percentile=90.0, history_size=100)
        >>> _ = a(np.array([3.0, 4.0]))
        >>> d = json.loads(json.dumps(a.state_dict()))
        >>> b = gradclip.AutoClip()
        >>> b.load_state_dict(d)
        >>> b.percentile, b.history
        (90.0, (5.0,))
        """
        return super().state_dict()


# --------------------------------------------------------------------------------------------
# ZClip
# --------------------------------------------------------------------------------------------


def _ieee_div(a: float, b: float) -> float:
    """a / b with IEEE semantics for b == 0 (only reachable with eps=0 and zero variance)."""
    if b == 0.0:
        return math.copysign(math.inf, a) if a != 0.0 else math.nan
    return a / b


class ZClip(_StatefulClipper):
    """Clip gradient-norm spikes found by a z-score on running statistics (ZClip).

    Kumar, Owen, Roy Chowdhury and Güra, "ZClip: Adaptive Spike Mitigation for LLM
    Pre-Training", 2025 (arXiv:2504.02507); the behaviour follows the authors' code
    (github.com/bluorion-com/ZClip, ``zclip/zclip.py``):

    - **Warm-up.** The first ``warmup_steps`` finite norms are collected and only
      ``max_grad_norm`` applies. When the last one arrives, the mean and the (population)
      variance of the collected norms start the statistics.
    - **Spikes.** Afterwards, with ``std = sqrt(var)`` and ``z = (norm - mean) / (std + eps)``,
      mode ``"zscore"`` calls the step a spike when ``z > z_thresh`` and clips it to
      ``mean + z_thresh * std / (z / z_thresh)`` (``clip_option="adaptive_scaling"``: the
      larger the spike, the harder it is clipped) or to ``mean`` (``clip_option="mean"``).
      Mode ``"percentile"`` (the authors' name; no percentile is computed) clips every norm
      above ``mean + z_thresh * std`` to that value; ``clip_option`` is then ignored.
    - **Hard bound.** ``max_grad_norm``, when not None, caps the threshold of every step.
    - **Update.** The statistics are then updated with the spike's clipped value, or with the
      norm itself when the step was not a spike (a ``max_grad_norm`` clip does not count):
      ``mean = alpha * mean + (1 - alpha) * x``, then
      ``var = alpha * var + (1 - alpha) * (x - mean) ** 2`` with the *updated* mean, as in
      the authors' code.

    The result's ``threshold`` is the bound of the step: the spike's clipped value and/or
    ``max_grad_norm``, whichever is lower; ``inf`` when nothing bounded the step.

    Parameters
    ----------
    alpha : float, default 0.97
        EMA factor, in (0, 1).
    z_thresh : float, default 2.5
        Finite and > 0.
    warmup_steps : int, default 25
        >= 1.
    max_grad_norm : float or None, default 1.0
        Finite and > 0, or None for no hard bound. 1.0 is the default of the authors' code
        (their README's table lists None); set it to your model's scale, or None.
    mode : {"zscore", "percentile"}, default "zscore"
    clip_option : {"adaptive_scaling", "mean"}, default "adaptive_scaling"
    norm_type : float, default 2.0
        Any p > 0, or ``inf``.
    nonfinite : {"skip", "raise", "zero", "propagate"}, default "skip"
        What to do with a NaN or infinite total norm, which never enters the statistics:
        ``"skip"`` writes nothing and returns ``found_nonfinite=True`` (skip the optimizer
        step); ``"raise"`` raises :class:`gradclip.NonFiniteNormError`; ``"zero"`` zeroes
        every gradient; ``"propagate"`` multiplies by ``max_grad_norm / (norm + eps)`` as
        PyTorch would (nothing is written when ``max_grad_norm`` is None).
    eps : float, default 1e-6
        Added to ``std`` in the z-score and to the norm in the coefficient's denominator.
    per_tensor_norms : bool, default False
        Also report each array's norm, from the same read pass (see :class:`AutoClip`).

    Examples
    --------
    >>> import numpy as np, gradclip
    >>> clipper = gradclip.ZClip(warmup_steps=3, max_grad_norm=None)
    >>> g = np.zeros(2)
    >>> for norm in [1.0, 1.2, 0.8, 1.1]:     # warm-up, then an ordinary step
    ...     g[...] = [0.0, norm]
    ...     assert not clipper(g).clipped
    >>> g[...] = [0.0, 5.0]                   # a spike: z is about 24.7
    >>> r = clipper(g)
    >>> r.clipped, round(r.threshold, 4), round(float(g[1]), 4)
    (True, 1.0439, 1.0439)
    """

    __slots__ = (
        "_alpha",
        "_clip_option",
        "_max_grad_norm",
        "_mean",
        "_mode",
        "_var",
        "_warmup_norms",
        "_warmup_steps",
        "_z_thresh",
    )

    alpha = Setting(check_alpha)
    z_thresh = Setting(check_positive)
    warmup_steps = Setting(check_count)
    max_grad_norm = Setting(check_optional_positive)
    mode = Setting(check_choice(("zscore", "percentile")))
    clip_option = Setting(check_choice(("adaptive_scaling", "mean")))
    _alpha: float
    _z_thresh: float
    _warmup_steps: int
    _max_grad_norm: float | None
    _mode: str
    _clip_option: str
    _STATE = ("warmup_norms", "mean", "var")

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
        self._configure(locals())
        self._warmup_norms: list[float] = []
        self._mean: float | None = None
        self._var: float | None = None

    def _cap(self) -> float:
        return math.inf if self._max_grad_norm is None else self._max_grad_norm

    def _spike_value(self, norm: float, mean: float, var: float) -> float | None:
        """The value a spike is clipped to, or None when ``norm`` is not a spike."""
        std = math.sqrt(var)
        if self._mode == "percentile":
            level = mean + self._z_thresh * std
            return level if norm > level else None
        z = _ieee_div(norm - mean, std + self._eps)
        if not z > self._z_thresh:
            return None
        if self._clip_option == "mean":
            return mean
        # z / z_thresh > 1 grows with the spike, so the threshold falls back towards the mean
        eta = z / self._z_thresh
        return mean + (self._z_thresh * std) / eta

    def _step(self, s: Any) -> ClipResult:
        norm, norms = self._total_norm(s)
        if not math.isfinite(norm):
            # The z-score of a non-finite norm means nothing: only the hard bound applies.
            return self._nonfinite_step(s, norm, norms, self._cap())
        # The new statistics are computed first, into locals; then the clip, the one step that
        # can fail (MemoryError); then they are assigned, which allocates nothing: an error
        # leaves the state as it was.
        if self._mean is None or self._var is None:
            warmup = [*self._warmup_norms, norm]
            mean: float | None = None
            var: float | None = None
            if len(warmup) >= self._warmup_steps:
                n = len(warmup)
                mean = math.fsum(warmup) / n
                var = math.fsum((x - mean) ** 2 for x in warmup) / n
                warmup = []
            result = self._clip(s, norm, norms, self._cap())
            self._warmup_norms, self._mean, self._var = warmup, mean, var
            return result
        spike = self._spike_value(norm, self._mean, self._var)
        threshold = self._cap() if spike is None else min(spike, self._cap())
        x = norm if spike is None else spike
        a = self._alpha
        new_mean = a * self._mean + (1.0 - a) * x
        new_var = a * self._var + (1.0 - a) * (x - new_mean) ** 2
        result = self._clip(s, norm, norms, threshold)
        self._mean, self._var = new_mean, new_var
        return result

    @property
    def initialized(self) -> bool:
        """False during the warm-up."""
        return self._mean is not None

    @property
    def mean(self) -> float | None:
        """The moving mean of the norm (None during the warm-up)."""
        return self._mean

    @property
    def var(self) -> float | None:
        """The moving variance of the norm (None during the warm-up)."""
        return self._var

    @property
    def warmup_norms(self) -> tuple[float, ...]:
        """The norms collected so far during the warm-up (empty afterwards)."""
        return tuple(self._warmup_norms)

    def _summary(self) -> str:
        if self._mean is None:
            return f"warm-up {len(self._warmup_norms)}/{self._warmup_steps}"
        return f"mean={self._mean!r}, var={self._var!r}"

    def _state(self) -> dict[str, Any]:
        return {"warmup_norms": list(self._warmup_norms), "mean": self._mean, "var": self._var}

    def _check_state(self, state: Mapping[str, Any], settings: Mapping[str, Any]) -> Any:
        # mean and var both None with fewer than warmup_steps warm-up norms, or both numbers
        # >= 0 with none
        warmup_norms = check_norm_list(state["warmup_norms"], "warmup_norms")
        raw_mean, raw_var = state["mean"], state["var"]
        mean = None if raw_mean is None else check_stat(raw_mean, "mean")
        var = None if raw_var is None else check_stat(raw_var, "var")
        if (mean is None) != (var is None):
            raise ValueError("state_dict['mean'] and state_dict['var'] must both be None or not")
        steps = settings["warmup_steps"]
        if mean is None and len(warmup_norms) >= steps:
            raise ValueError(
                f"state_dict['warmup_norms'] holds {len(warmup_norms)} norms but the warm-up "
                f"ends at warmup_steps={steps} (mean and var would be set)"
            )
        if mean is not None and warmup_norms:
            raise ValueError("state_dict['warmup_norms'] must be empty once mean and var are set")
        return warmup_norms, mean, var

    def _restore(self, checked: Any) -> None:
        self._warmup_norms, self._mean, self._var = checked

    def state_dict(self) -> dict[str, Any]:
        """The arguments and the statistics, as a plain JSON-serialisable dict.

        ``mean`` and ``var`` are None during the warm-up, ``warmup_norms`` is empty after it.

        Examples
        --------
        >>> import json, numpy as np, gradclip
        >>> z = gradclip.ZClip(warmup_steps=2)
        >>> _ = z(np.array([0.3, 0.4]))
        >>> d = json.loads(json.dumps(z.state_dict()))
        >>> d["warmup_norms"], d["mean"]
        ([0.5], None)
        >>> z2 = gradclip.ZClip()
        >>> z2.load_state_dict(d)
        >>> z2.warmup_steps, z2.warmup_norms
        (2, (0.5,))
        """
        return super().state_dict()
