"""Drop-ins for ``torch.nn.utils``' gradient clipping, on gradclip's kernels.

``clip_grad_norm_``, ``clip_grad_value_``, ``get_total_norm`` and ``clip_grads_with_norm_``
take what PyTorch's take (parameters, or a single tensor; their ``.grad`` is used and a
``None`` gradient is skipped), with the same signatures and defaults, and return what
PyTorch's return (the norm as a 0-d tensor). ``foreach`` is accepted and ignored: gradclip
has one implementation. :class:`GradClipper` is the cached form for a training loop.

Sharded training (the project's ``docs/distributed.md``): DTensor gradients (FSDP2's
``fully_shard``) are reduced over their device mesh, and plain tensors holding each rank's
part of the gradients over ``group=`` (a torch.distributed process group, gloo on the CPU):
every rank gets the same global norm, bit for bit, and scales its own shards in place.

The gradients are handed to gradclip's engine as their own memory (never a copy): in the
common case (contiguous CPU tensors) described in C++ from each tensor's data pointer, dtype
and size, otherwise viewed as NumPy arrays and handed to the functions of :mod:`gradclip`. CPU
tensors of float16, bfloat16 (with ml_dtypes), float32 and float64 are supported, anything
else is a ``TypeError`` naming the tensor.

Deliberate differences from ``torch.nn.utils`` (listed with their pinning tests in the
project's ``docs/differences.md``):

- The norm is accumulated in float64 whatever the gradients' dtype (PyTorch accumulates in
  the dtype): within the dtype's rounding of PyTorch's for well-scaled gradients, exact where
  PyTorch's overflows. It is returned rounded to the gradients' dtype, as PyTorch returns it.
  float16 gradients whose norm exceeds float16's range are clipped by the true norm (PyTorch's
  norm is inf and its coefficient zeroes them); the returned norm is then inf, and
  ``error_if_nonfinite=True`` raises, as PyTorch does, before anything is written.
- Nothing is written when the coefficient is 1 (PyTorch multiplies by 1.0: the same values).
- ``max_norm`` must be > 0 or inf (PyTorch zeroes the gradients for 0 and flips them for a
  negative bound); ``clip_value`` must be >= 0 (a negative one makes PyTorch set every
  element to it); ``norm_type`` must be > 0, inf, ``"inf"`` or ``"fro"`` (PyTorch computes
  its 0 and negative "norms"); NaN for any of them is refused. Each is a ``ValueError`` before
  anything is written.
- The same parameter (the same ``.grad`` tensor) twice is a ``ValueError`` for the norm-based
  writes: PyTorch counts it twice in the norm and scales it twice. ``clip_grad_value_``
  clamps it once (PyTorch's result), ``get_total_norm`` counts it twice (as PyTorch does).
- ``get_total_norm`` skips ``None`` entries (PyTorch raises); ``clip_grad_value_`` on no
  gradients does nothing (PyTorch 2.13 raises); ``clip_grads_with_norm_`` also takes the
  total norm as a Python number.
- Tensors on other devices, sparse and complex gradients are a ``TypeError`` naming the
  tensor (PyTorch clips them).
- gradclip writes through NumPy views, so the tensors' autograd version counters do not
  move: gradients that are themselves part of a graph (``create_graph=True``) are not
  protected against a later double backward the way an in-place torch operation is.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401  (the real PyTorch: imports are absolute)
except ImportError as _exc:
    raise ImportError(
        "gradclip.torch needs PyTorch, which is not installed: pip install torch "
        "(gradclip's own functions work on NumPy arrays without it)"
    ) from _exc

# The package's files, by job: _convert (tensors to NumPy views, naming them in errors),
# _cache (views kept from call to call), _ops (scalar arguments, the operations once),
# _functions (the drop-ins), _clipper (GradClipper), _sharded (DTensor and group=).
from ._clipper import GradClipper
from ._functions import clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm

__all__ = [
    "GradClipper",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
]

for _obj in (GradClipper, clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm):
    _obj.__module__ = __name__  # documented and shown as gradclip.torch.<name>
del _obj
