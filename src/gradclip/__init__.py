"""gradclip: gradient clipping on the CPU, in place, over many NumPy arrays at once.

Global norm clipping (:func:`clip_grad_norm_`), per-array and per-slice norm clipping
(:func:`clip_grad_norm_per_tensor_`, :func:`clip_by_norm_`) and value clipping
(:func:`clip_grad_value_`), with SIMD kernels, OpenMP threads and float64 accumulation.
:mod:`gradclip.reference` is a pure-NumPy implementation of the same functions.
"""

from __future__ import annotations

# The package's one version string: the build reads it from here into the wheel's metadata
# (pyproject.toml, [tool.scikit-build.metadata.version]), and `python -m gradclip --version`
# prints it.
__version__ = "0.1.0"

from ._errors import NonFiniteNormError
from ._include import get_include
from ._result import ClipResult

__all__ = [
    "AutoClip",
    "ClipResult",
    "GradientSet",
    "NonFiniteNormError",
    "ZClip",
    "adaptive_grad_clip_",
    "available_cpu_targets",
    "clip_by_block_rms_",
    "clip_by_global_norm",
    "clip_by_norm_",
    "clip_by_norm_per_tensor",
    "clip_by_value",
    "clip_grad_norm_",
    "clip_grad_norm_per_tensor_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "clip_per_example_",
    "cpu_target",
    "get_include",
    "get_num_threads",
    "get_total_norm",
    "reference",
    "set_num_threads",
    "tensor_norms",
    "unscale_clip_grad_norm_",
]

# the public names that work without the compiled core
_PURE_NAMES = frozenset({"ClipResult", "NonFiniteNormError", "get_include", "reference"})

try:
    from ._api import (
        GradientSet,
        clip_by_block_rms_,
        clip_by_norm_,
        clip_grad_norm_,
        clip_grad_norm_per_tensor_,
        clip_grad_value_,
        clip_grads_with_norm_,
        get_total_norm,
        tensor_norms,
    )
    from ._config import (
        _set_cpu_target,  # noqa: F401  (tests and benchmarks switch targets)
        available_cpu_targets,
        cpu_target,
        get_num_threads,
        set_num_threads,
    )
    from ._functional import clip_by_global_norm, clip_by_norm_per_tensor, clip_by_value
    from ._training import adaptive_grad_clip_, clip_per_example_, unscale_clip_grad_norm_
    from .adaptive import AutoClip, ZClip
except ImportError as _exc:  # the compiled core is missing or broken
    # Keep ``import gradclip.reference`` working (the documented pure-NumPy fallback); the
    # compiled functions raise the original error when used.
    _CORE_ERROR = _exc

    def __getattr__(name: str) -> object:
        # every public name but the pure-Python ones needs the compiled core
        if name in __all__ and name not in _PURE_NAMES:
            raise ImportError(
                f"gradclip.{name} needs the compiled core, which failed to import "
                f"({_CORE_ERROR}); gradclip.reference has the same functions in pure NumPy"
            ) from _CORE_ERROR
        raise AttributeError(f"module 'gradclip' has no attribute {name!r}")


from . import reference  # noqa: E402
