"""Pure-Python/NumPy reference implementation of gradclip.

This package is the **oracle for the test suite** and a **documented slow fallback**. Every
public function and class of :mod:`gradclip` that computes something has a twin here with the
same name, signature (``comm=`` aside: the reference runs on one process), return type,
exceptions and semantics; the compiled path is checked against it, and
``tests/test_reference_twins.py`` fails when a public name has no twin. (The machine settings,
``set_num_threads``, ``cpu_target`` and the like, have none: they configure the compiled path.)
It is written for clarity, not speed:

- every element is converted exactly to float64 and the p-th powers are summed with
  ``math.fsum`` (a correctly rounded sum, so the element order does not matter);
- when that plain sum overflows or falls below ``2**-969`` (where float64 starts losing
  relative precision) the norm is recomputed on elements scaled by a power of two close to the
  largest magnitude, so no norm overflows or underflows when the true value is a finite, normal
  float64; for p < 1, and for p > 512 when the plain sum lost range, it is
  ``max * (sum (|x| / max)**p)**(1/p)`` instead, never below the largest magnitude;
- each clip writes with exactly the arithmetic documented for the compiled path (a float64
  multiply for float64, a float32 multiply for float32, and float32 followed by a
  round-to-nearest-even conversion for float16 and bfloat16).

It imports neither the compiled extension nor :mod:`gradclip`'s ``__init__`` helpers, only
``gradclip._errors``, ``gradclip._result`` and the pure-Python ``consumed`` of
``gradclip._inputs`` (one iterable consumed once, with PyTorch's warning for an empty
generator), so it works when the extension is missing.
Its modules: ``_inputs`` (dtypes, bound rounding, argument checks), ``_arith`` (norms and
writes), ``_functions`` (the PyTorch-style functions and :class:`GradientSet`), ``_training``
(mixed precision, AGC, per-example clipping), ``_stateful`` (AutoClip, ZClip). ``ml_dtypes`` is
optional: without it bfloat16 arrays cannot exist in the first place.

Examples
--------
>>> import numpy as np
>>> from gradclip import reference
>>> g = [np.full(4, 3.0, dtype=np.float32), np.full(4, 4.0)]
>>> round(reference.get_total_norm(g), 6)
10.0
>>> total = reference.clip_grad_norm_(g, max_norm=1.0)
>>> round(total, 6), round(reference.get_total_norm(g), 4)
(10.0, 1.0)
"""

from .._errors import NonFiniteNormError
from .._result import ClipResult
from ._functional import clip_by_global_norm, clip_by_norm_per_tensor, clip_by_value
from ._functions import (
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
from ._stateful import AutoClip, ZClip
from ._training import adaptive_grad_clip_, clip_per_example_, unscale_clip_grad_norm_

__all__ = [
    "AutoClip",
    "ClipResult",
    "GradientSet",
    "NonFiniteNormError",
    "ZClip",
    "adaptive_grad_clip_",
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
    "get_total_norm",
    "tensor_norms",
    "unscale_clip_grad_norm_",
]
