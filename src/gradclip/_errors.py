"""Exception types shared by the compiled path and :mod:`gradclip.reference`."""

from __future__ import annotations

__all__ = ["NonFiniteNormError"]


class NonFiniteNormError(FloatingPointError, RuntimeError):
    """The total norm is NaN or infinite and the caller asked to raise.

    Raised before any gradient has been modified. It is a ``FloatingPointError``
    (NumPy's family for floating-point trouble) and a ``RuntimeError`` (what
    PyTorch's ``clip_grad_norm_(..., error_if_nonfinite=True)`` raises), so
    either ``except`` clause catches it.
    """
