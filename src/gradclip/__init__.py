"""gradclip: gradient clipping on the CPU, in place, over many NumPy arrays at once.

Global norm clipping (:func:`clip_grad_norm_`), per-array and per-slice norm clipping
(:func:`clip_grad_norm_per_tensor_`, :func:`clip_by_norm_`) and value clipping
(:func:`clip_grad_value_`), with SIMD kernels, OpenMP threads and float64 accumulation.
:mod:`gradclip.reference` is a pure-NumPy implementation of the same functions.
"""

from __future__ import annotations

from ._api import (
    GradientSet,
    _set_cpu_target,
    available_cpu_targets,
    clip_by_norm_,
    clip_grad_norm_,
    clip_grad_norm_per_tensor_,
    clip_grad_value_,
    clip_grads_with_norm_,
    cpu_target,
    get_num_threads,
    get_total_norm,
    set_num_threads,
    tensor_norms,
)
from . import reference
from ._errors import NonFiniteNormError

__version__ = "0.1.0"

__all__ = [
    "GradientSet",
    "NonFiniteNormError",
    "available_cpu_targets",
    "clip_by_norm_",
    "clip_grad_norm_",
    "clip_grad_norm_per_tensor_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "cpu_target",
    "get_num_threads",
    "get_total_norm",
    "reference",
    "set_num_threads",
    "tensor_norms",
]

