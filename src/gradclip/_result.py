"""The record every stateful or fused clipping call can return."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ClipResult"]


@dataclass(frozen=True, slots=True)
class ClipResult:
    """What one clipping step saw and did.

    Attributes
    ----------
    total_norm : float
        The total norm before clipping (of the unscaled gradients, for mixed precision).
    coef : float
        The coefficient the gradients were multiplied by (1.0 when nothing was written for
        clipping; a mixed-precision step still multiplies by the inverse loss scale).
    clipped : bool
        True when the gradients were multiplied by a coefficient other than 1 to clip them:
        ``coef < 1``, or ``coef`` NaN (a NaN norm under ``nonfinite="propagate"``, PyTorch's
        arithmetic, writes NaN: that step is reported as clipped, not as left alone). A step
        that zeroed the gradients (``coef == 0``) is clipped too.
    found_nonfinite : bool
        True when the norm was NaN or infinite.
    tensor_norms : ndarray of float64 or None
        Per-array norms, when they were asked for (computed in the same read pass).
    threshold : float or None
        The clipping threshold used, for clippers that choose it (AutoClip, ZClip).
    """

    total_norm: float
    coef: float
    clipped: bool
    found_nonfinite: bool
    tensor_norms: np.ndarray | None = None
    threshold: float | None = None
