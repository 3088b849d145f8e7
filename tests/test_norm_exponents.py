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
from gc_helpers import DTYPE_PARAMS, assert_norm_close, assert_norms_close, dtype_of, each_config

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


# p a multiple of 1/2 up to 128 (but 1 and 2) has its own kernels: powers by repeated squaring
# times one square root, in float64, the same operations on every target and in the scalar
# path that strided views take.
HALF_STEP_PS = [
    0.5,
    1.5,
    2.5,
    3.0,
    3.5,
    4.0,
    4.5,
    5.0,
    6.5,
    7.0,
    8.0,
    12.5,
    32.0,
    63.5,
    100.0,
    127.5,
    128.0,
]


def half_step_workload(dtype: np.dtype, seed: int) -> list[np.ndarray]:
    # odd sizes, so arrays start on every lane of a chunk; one array past 256 KiB, so two
    # threads split it; magnitudes around 1 so that p = 128 neither overflows nor underflows
    rng = np.random.default_rng(seed)
    sizes = [1, 3, 31, 33, 1000, 70001]
    return [(rng.uniform(0.5, 1.5, n) * rng.choice([-1.0, 1.0], n)).astype(dtype) for n in sizes]


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_half_step_p_against_reference(dtype_name: str, cpu_target: str) -> None:
    arrays = half_step_workload(dtype_of(dtype_name), 21)
    for p in HALF_STEP_PS:
        assert_norm_close(
            gradclip.get_total_norm(arrays, p), ref.get_total_norm(arrays, p), p, f"p={p}"
        )
        assert_norms_close(
            gradclip.tensor_norms(arrays, p), ref.tensor_norms(arrays, p), p, f"p={p}"
        )


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_half_step_p_same_bits_everywhere(dtype_name: str) -> None:
    # every target, 1 and 2 threads, and a strided view (the scalar path) of the same values
    arrays = half_step_workload(dtype_of(dtype_name), 22)
    strided = []
    for a in arrays:
        buf = np.zeros(2 * a.size, dtype=a.dtype)
        buf[::2] = a
        strided.append(buf[::2])
    for p in HALF_STEP_PS:
        seen = set()
        for _ in each_config():
            seen.add(gradclip.get_total_norm(arrays, p))
            seen.add(gradclip.get_total_norm(strided, p))
            seen.add(float(gradclip.tensor_norms(strided, p)[-1]))
            seen.add(float(gradclip.tensor_norms(arrays, p)[-1]))
        assert len(seen) == 2, f"p={p}: {sorted(seen)}"  # the total and the last array's norm


@pytest.mark.parametrize("p", [0.5, 1.5, 3.0, 4.5, 128.0])
def test_half_step_p_out_of_range_values(p: float, cpu_target: str) -> None:
    # powers that overflow or underflow float64 take the rescaled pass; the norm is exact for
    # equal magnitudes: n ** (1/p) * |x|
    for x in (1e300, 1e200, 3e-300, 2.0**-1070):
        arrays = [np.full(5, x), np.array([-x, x, -x])]
        want = ref.get_total_norm(arrays, p)
        assert_norm_close(gradclip.get_total_norm(arrays, p), want, p, f"x={x!r}")
        assert want == pytest.approx(8.0 ** (1.0 / p) * x, rel=1e-12)
