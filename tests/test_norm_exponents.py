# Covers: p-norms for every finite p > 0 up to the largest double (the design: any p > 0; no
# overflow or underflow where the true norm is a normal double). A log-spaced sweep of p from
# 1e-300 to 1.7976931348623157e308, plus the p where the algorithm changes (1, 512, the
# underflow limit ~1074), over every dtype and CPU target: get_total_norm, tensor_norms and
# clip_grad_norm_ against gradclip.reference, and both against the bounds every p-norm obeys,
# max|x| <= ||x||_p <= n**(1/p) max|x| (for huge p the norm tends to the max: it must never
# collapse to 0 or lose the max, as it did for get_total_norm([0.8359375], 1e20)).
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from gc_helpers import DTYPE_PARAMS, assert_norm_close, assert_norms_close, dtype_of

import gradclip
from gradclip import reference as ref

SWEEP = sorted(
    {float(p) for p in np.logspace(-300, 308, 39)}
    | {1e-3, 0.25, 0.999, 1.5, 3.0, 511.0, 512.0, 513.0, 969.0, 1074.0, 1100.0, 1e20}
    | {sys.float_info.max}
)


def workload(dtype: np.dtype, seed: int) -> list[np.ndarray | None]:
    """Arrays whose magnitudes sit below 1 (where huge powers underflow), above 1 (where they
    overflow), with ties at the maximum, a single element, a zero-size array and None."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0.05, 0.95, size=37)
    large = rng.uniform(1.5, 30.0, size=20) * rng.choice([-1.0, 1.0], size=20)
    ties = np.array([0.8359375, -0.8359375, 0.5, 0.8359375])
    return [
        small.astype(dtype),
        np.array([0.8359375], dtype=dtype),
        ties.astype(dtype),
        None,
        np.zeros(0, dtype=dtype),
        large.astype(dtype).reshape(4, 5),
    ]


def check_bounds(norm: float, arrays: list[np.ndarray | None], p: float, what: str) -> None:
    present = [a.astype(np.float64).ravel() for a in arrays if a is not None and a.size]
    if not present:
        assert norm == 0.0, what
        return
    x = np.concatenate(present)
    m = float(np.max(np.abs(x)))
    with np.errstate(over="ignore"):
        upper = m * float(np.float64(x.size) ** (1.0 / p))
    assert norm >= m * (1 - 1e-12), f"{what}: p={p!r}: {norm!r} below max|x| {m!r}"
    assert norm <= upper * (1 + 1e-12), f"{what}: p={p!r}: {norm!r} above {upper!r}"


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_norms_for_every_p(dtype_name: str, cpu_target: str) -> None:
    dt = dtype_of(dtype_name)
    arrays = workload(dt, 11)
    for p in SWEEP:
        total = gradclip.get_total_norm(arrays, p)
        assert_norm_close(total, ref.get_total_norm(arrays, p), p, f"total p={p!r}")
        check_bounds(total, arrays, p, "total")
        each = gradclip.tensor_norms(arrays, p)
        assert_norms_close(each, ref.tensor_norms(arrays, p), p, f"tensor_norms p={p!r}")
        for i, a in enumerate(arrays):
            check_bounds(float(each[i]), [a], p, f"tensor_norms[{i}]")


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_clip_grad_norm_for_every_p(dtype_name: str, cpu_target: str) -> None:
    # a norm that collapsed to 0 would clip nothing: check that it clips, like the reference
    dt = dtype_of(dtype_name)
    for p in SWEEP:
        ours, theirs = workload(dt, 12), workload(dt, 12)
        norm = ref.get_total_norm(theirs, p)
        max_norm = norm / 4.0 if math.isfinite(norm) else 1.0
        got = gradclip.clip_grad_norm_(ours, max_norm, p)
        want = ref.clip_grad_norm_(theirs, max_norm, p)
        assert_norm_close(got, want, p, f"p={p!r}")
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if a is None:
                continue
            # the two norms agree to 1e-12, so the coefficients (and the float32 products)
            # may differ in the last place; the reference checks the writes bit for bit
            # elsewhere. Here: every array was scaled down, as the reference scaled it.
            np.testing.assert_allclose(
                a.astype(np.float64),
                b.astype(np.float64),
                rtol=1e-2 if dt.itemsize == 2 else 1e-6,
                err_msg=f"p={p!r} array {i}",
            )
        if math.isfinite(norm) and norm > 0.0:
            after = gradclip.get_total_norm(ours, p)
            assert after <= max_norm * 1.01, f"p={p!r}: {after!r} after clipping to {max_norm!r}"


@pytest.mark.parametrize("p", [1e20, 1e100, 1e308, sys.float_info.max])
def test_huge_p_is_the_max(p: float, cpu_target: str) -> None:
    # |x| < 1 everywhere: every plain power underflows; the result is max|x| exactly for one
    # element (and for ties: n**(1/p) rounds to 1)
    assert gradclip.get_total_norm(np.array([0.8359375]), p) == 0.8359375
    assert gradclip.get_total_norm([np.full(5, 0.5, np.float32), np.array([-0.25])], p) == 0.5
    assert gradclip.tensor_norms([np.array([0.5, 0.7], np.float16)], p)[0] == float(np.float16(0.7))


@pytest.mark.parametrize("p", [1e-300, 1e-20, 1e-6, 0.01])
def test_tiny_p_single_element_is_exact(p: float, cpu_target: str) -> None:
    # for p < 1 the norm is max|x| * (sum (|x| / max|x|)**p)**(1/p): exact for one nonzero
    # element, where the plain sum's rounding error would be multiplied by 1/p
    for impl in (gradclip, ref):
        assert impl.get_total_norm(np.array([3.0]), p) == 3.0
        assert impl.get_total_norm([np.array([0.0, -0.8359375, 0.0], np.float32)], p) == 0.8359375


@pytest.mark.parametrize("dtype_name", ["float64"])
def test_tiny_max_for_every_p(dtype_name: str, cpu_target: str) -> None:
    # a max below 2^-1001, where a power-of-two rescaling cannot reach [0.5, 1): the norm is a
    # normal double and must not underflow for any p
    arrays = [np.array([2.0**-1015, -(2.0**-1016), 2.0**-1030]), np.array([2.0**-1020])]
    for p in SWEEP:
        total = gradclip.get_total_norm(arrays, p)
        assert_norm_close(total, ref.get_total_norm(arrays, p), p, f"p={p!r}")
        check_bounds(total, arrays, p, "tiny")
