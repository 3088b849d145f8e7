"""Exception types shared by the compiled path and :mod:`gradclip.reference`, and the one
place that raises :class:`NonFiniteNormError`."""

from __future__ import annotations

from typing import NoReturn

__all__ = ["NonFiniteNormError", "raise_nonfinite"]


class NonFiniteNormError(FloatingPointError, RuntimeError):
    """The total norm is NaN or infinite and the caller asked to raise.

    Raised before any gradient has been modified. It is a ``FloatingPointError``
    (NumPy's family for floating-point trouble) and a ``RuntimeError`` (what
    PyTorch's ``clip_grad_norm_(..., error_if_nonfinite=True)`` raises), so
    either ``except`` clause catches it.
    """


def raise_nonfinite(
    norm: float, p: float, what: str = "total norm of the gradients", *, clipper: str = ""
) -> NoReturn:
    """Raise :class:`NonFiniteNormError` for the non-finite ``norm`` of order ``p``.

    ``what`` names the norm ("total norm of the gradients", "norm of grads[3]", ...);
    ``clipper`` is the name of a stateful clipper raising it (its statistics are not updated
    either). Every raise of the package goes through here, so the message, and its advice,
    is written once.
    """
    where = f"{clipper}: the" if clipper else "The"
    kept = "nothing was modified" + (
        " and the clipper's statistics were not updated" if clipper else ""
    )
    raise NonFiniteNormError(
        f"{where} {what} of order {p} is non-finite ({norm}), so it cannot be clipped; {kept}. "
        "Pass nonfinite='skip' to get the norm back without an error, or "
        "nonfinite='propagate' (error_if_nonfinite=False) to scale by it as PyTorch does."
    )
