# Covers: numerics of the compiled path (and of gradclip.reference where noted), independent of
# the reference's code where possible:
#   - overflow/underflow-safe norms: float64 elements of 1e200, 1e-160, 1e-200, 1e300, 1e-300,
#     near DBL_MAX / DBL_MIN, float32/float16 extremes, mixed magnitudes, for p in
#     {1, 2, 3, 0.5, 7.5, inf}, against closed forms (reference checked the same way);
#   - NaN / inf at every position class (first, SIMD tail, middle, last) for every p, target and
#     thread count (a SIMD max or sum that drops a NaN would show);
#   - subnormal inputs are neither flushed in the norm nor in the writes (no FTZ/DAZ);
#   - the coefficient rule: coef = max_norm / (norm + eps), nothing written when coef >= 1
#     (incl. exactly 1 and all-zero input with eps=0), float32 multiply for float32 (not a
#     double multiply rounded), float32-then-round for float16/bfloat16, double for float64;
#   - clip_grad_value_'s bound is the value rounded to each dtype;
#   - determinism: the total norm has identical bits across CPU targets, thread counts and
#     placement in memory (alignment offsets, unaligned copies); a strided view gives the bits
#     of its C-contiguous copy; a reversed or F-ordered dense block gives the bits of the same
#     memory read forwards;
#   - accuracy: the total 2-norm of 50M float32 elements is within 1e-12 relative of
#     math.fsum in float64 (marked slow).
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from gc_helpers import (
    BF16,
    CONFIGS,
    DTYPE_PARAMS,
    HAVE_BF16,
    assert_same_values,
    bits,
    cast,
    configured,
    dtype_of,
    each_config,
    expected_scaled,
    finfo,
    needs_bf16,
    snapshot,
)

import gradclip
from gradclip import reference as ref

INF = math.inf
P_ALL = [1.0, 2.0, 3.0, 0.5, 7.5, INF]
DBL_MAX = np.finfo(np.float64).max
DBL_MIN = np.finfo(np.float64).tiny  # smallest normal


def closed_form(value: float, n: int, p: float) -> float:
    """p-norm of n copies of value: |value| * n**(1/p) (a few ulps; inf when it overflows)."""
    if math.isinf(p):
        return abs(value)
    return abs(value) * n ** (1.0 / p)  # n**(1/p) >= 1: the product cannot underflow


def check_against(expected: float, got: float, rtol: float, what: str) -> None:
    assert isinstance(got, float), what
    if math.isinf(expected):
        assert got == expected, f"{what}: {got!r} != inf"
    else:
        assert abs(got - expected) <= rtol * expected, f"{what}: {got!r} vs {expected!r}"


# ---------------------------------------------------------------------------------------------
# overflow / underflow
# ---------------------------------------------------------------------------------------------

EXTREME_VALUES = [1e200, -1e200, 1e-160, 1e-200, -1e-200, 1e300, 1e-300, 1e308, 3 * DBL_MIN, 1.0]


@pytest.mark.parametrize("p", P_ALL, ids=str)
@pytest.mark.parametrize("n", [1, 17, 1000])
@pytest.mark.parametrize("value", EXTREME_VALUES, ids=repr)
def test_extreme_float64_norms(value: float, n: int, p: float) -> None:
    expected = closed_form(value, n, p)
    if not math.isinf(expected) and expected < DBL_MIN:
        pytest.fail("test data must give a normal float64 norm")  # pragma: no cover
    x = np.full(n, value)
    check_against(expected, ref.get_total_norm(x, p), 1e-13, "reference")
    outcomes = set()
    for cfg in each_config():
        got = gradclip.get_total_norm(x, p)
        check_against(expected, got, 1e-12, f"compiled {cfg}")
        outcomes.add(bits(got))
        assert gradclip.tensor_norms([x], p)[0] == pytest.approx(got, rel=1e-12)
    assert len(outcomes) == 1


@pytest.mark.parametrize("p", P_ALL, ids=str)
@pytest.mark.parametrize(
    "values",
    [
        pytest.param([1e200, 1e-200, 1.0, -3e199], id="huge+tiny"),
        pytest.param([1e-160] * 4 + [1e-170], id="tiny-squares-underflow"),
        pytest.param([1e-200, 2e-200, -3e-200], id="all-tiny"),
        pytest.param([DBL_MAX / 4, DBL_MAX / 4], id="near-max"),
        pytest.param([5e-324, 1e-300], id="subnormal+tiny"),
        pytest.param([1e150, 1e-150, 0.0, -0.0], id="mixed-zeros"),
    ],
)
def test_mixed_magnitudes(values: list[float], p: float) -> None:
    x = np.array(values)
    # Independent: scale by a power of two near the max, norm in float64, scale back.
    m = float(np.max(np.abs(x)))
    e = math.frexp(m)[1]
    scaled = np.ldexp(x, -e)
    if math.isinf(p):
        expected = m
    else:
        expected = math.ldexp(math.fsum(np.abs(scaled) ** p) ** (1.0 / p), e)
    check_against(expected, ref.get_total_norm(x, p), 1e-13, "reference")
    for cfg in each_config():
        check_against(expected, gradclip.get_total_norm(x, p), 1e-12, f"compiled {cfg}")
        check_against(expected, gradclip.get_total_norm([x[:2], x[2:]], p), 1e-12, f"{cfg}")


def test_true_norm_overflows_gives_inf() -> None:
    x = np.full(3, DBL_MAX / 2)
    assert ref.get_total_norm(x, 1.0) == INF
    for _ in each_config():
        assert gradclip.get_total_norm(x, 1.0) == INF
        assert gradclip.get_total_norm(x, INF) == DBL_MAX / 2


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF], ids=str)
def test_clip_when_fast_sum_overflows(p: float) -> None:
    """Elements of 1e200: the plain sum of squares overflows, the clip must still be finite."""
    values = np.linspace(1, 2, 101) * 1e200
    ref_x = values.copy()
    expected = ref.clip_grad_norm_(ref_x, 1.0, p)
    assert math.isfinite(expected) and np.all(np.isfinite(ref_x))
    for cfg in each_config():
        x = values.copy()
        got = gradclip.clip_grad_norm_(x, 1.0, p)
        assert got == pytest.approx(expected, rel=1e-12), cfg
        np.testing.assert_allclose(x, values * (1.0 / (got + 1e-6)), rtol=1e-15, atol=0)
        assert gradclip.get_total_norm(x, p) == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_dtype_extremes_exact_conversion(dtype_name: str) -> None:
    """Every element is converted exactly to float64: dtype max values and subnormals."""
    dtype = dtype_of(dtype_name)
    info = finfo(dtype)
    big, tiny_sub = float(info.max), float(info.smallest_subnormal)
    n = 100003
    for value in (big, -big, tiny_sub, float(info.smallest_normal)):
        x = np.full(n, value, dtype=dtype)
        for p in (1.0, 2.0, INF):
            expected = closed_form(value, n, p)
            if expected < DBL_MIN:  # float64 subnormal results: no accuracy promise
                continue
            for cfg in each_config():
                check_against(expected, gradclip.get_total_norm(x, p), 1e-12, f"{value} {cfg}")


# ---------------------------------------------------------------------------------------------
# NaN / inf anywhere
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("special", [math.nan, INF, -INF], ids=str)
@pytest.mark.parametrize("n", [1, 7, 15, 16, 17, 33, 64, 65, 130, 70001])
@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_special_value_at_every_position_class(dtype_name: str, n: int, special: float) -> None:
    dtype = dtype_of(dtype_name)
    base = cast(np.linspace(-2.0, 3.0, n), dtype)
    positions = sorted({0, n - 1, n // 2, max(0, n - 2), (n // 16) * 16 % n, min(n - 1, 16)})
    expected = math.nan if math.isnan(special) else INF
    for pos in positions:
        x = base.copy()
        x[pos] = special
        for p in (1.0, 2.0, INF, 3.0):
            if n <= 130:  # the reference too (skipped for the long one: it is slow)
                ref_norm = ref.get_total_norm(x, p)
                assert math.isnan(ref_norm) if math.isnan(expected) else ref_norm == INF
            for cfg in each_config():
                got = gradclip.get_total_norm(x, p)
                ok = math.isnan(got) if math.isnan(expected) else got == INF
                assert ok, f"pos {pos}, p={p}, {cfg}: {got!r}"
                each = gradclip.tensor_norms([base, x], p)
                assert math.isfinite(each[0]) and not math.isfinite(each[1]), (pos, p, cfg)


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_propagate_arithmetic(dtype_name: str) -> None:
    """PyTorch's arithmetic: NaN norm -> all NaN; inf norm -> finite*0 (sign kept), inf -> NaN."""
    dtype = dtype_of(dtype_name)
    values = np.array([1.5, -2.0, 0.0, -0.0, 7.0, INF, -3.0, 1e-3])
    for cfg in each_config():
        x = cast(values, dtype)
        assert gradclip.clip_grad_norm_(x, 1.0) == INF
        got = x.astype(np.float64)
        assert np.isnan(got[5]), cfg
        finite = np.delete(got, 5)
        assert np.all(finite == 0.0), cfg
        assert np.array_equal(np.signbit(finite), np.signbit(np.delete(values, 5))), cfg
        y = cast(values, dtype)
        y[2] = math.nan
        assert math.isnan(gradclip.clip_grad_norm_(y, 1.0))
        assert np.all(np.isnan(y.astype(np.float64))), cfg


# ---------------------------------------------------------------------------------------------
# subnormals: no flush-to-zero, no denormals-are-zero
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_subnormals_not_flushed(dtype_name: str) -> None:
    dtype = dtype_of(dtype_name)
    info = finfo(dtype)
    sub = float(info.smallest_normal) / 8  # subnormal in dtype, exact
    n = 4099
    x = np.full(n, sub, dtype=dtype)
    assert float(x[0]) == sub
    for cfg in each_config():
        assert gradclip.get_total_norm(x, 1.0) == pytest.approx(sub * n, rel=1e-14), cfg
        assert gradclip.get_total_norm(x, 2.0) == pytest.approx(sub * math.sqrt(n), rel=1e-14)
        assert gradclip.get_total_norm(x, INF) == sub, cfg
    # Writes: halving a subnormal gives a (non-zero) subnormal.
    values = np.full(33, sub)
    values[0] = 1.0
    for cfg in each_config():
        y = cast(values, dtype)
        norm = gradclip.clip_grad_norm_(y, 0.5, INF, eps=0.0)
        assert norm == 1.0
        assert float(y[0]) == 0.5
        assert np.all(y[1:].astype(np.float64) == sub / 2), f"{cfg}: subnormal writes flushed"


def test_float64_subnormal_writes() -> None:
    values = np.array([1.0, 3e-320, -5e-324 * 6, 2.5e-310])
    for cfg in each_config():
        x = values.copy()
        gradclip.clip_grads_with_norm_(x, 0.5, 1.0, eps=0.0)
        assert_same_values(x, values * 0.5, f"{cfg}")


# ---------------------------------------------------------------------------------------------
# the coefficient rule and the per-dtype write arithmetic
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_coef_exactly_one_writes_nothing(dtype_name: str) -> None:
    dtype = dtype_of(dtype_name)
    for cfg in each_config():
        x = cast(np.array([3.0, 4.0, -0.0]), dtype)
        before = snapshot([x])
        assert gradclip.clip_grad_norm_(x, 5.0, eps=0.0) == 5.0  # coef == 1
        assert snapshot([x]) == before, cfg
        gradclip.clip_grads_with_norm_(x, 5.0, 5.0, eps=0.0)
        assert snapshot([x]) == before, cfg
        assert gradclip.clip_grad_norm_per_tensor_([x], 5.0, eps=0.0).tolist() == [5.0]
        assert snapshot([x]) == before, cfg
        assert gradclip.clip_by_norm_(x, 5.0, eps=0.0) == 5.0
        assert snapshot([x]) == before, cfg
        # With the default eps the coefficient is just below 1: it writes (visible in float64
        # and float32; in float16/bfloat16 it rounds back to the same values).
        original = np.array(x)
        assert gradclip.clip_grad_norm_(x, 5.0) == 5.0
        assert_same_values(x, expected_scaled(original, 5.0, 5.0), f"{cfg}")
        if dtype.itemsize >= 4:
            assert snapshot([x]) != before, f"{cfg}: coef just below 1 did not write"


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_all_zero_grads_stay_zero(eps: float) -> None:
    for cfg in each_config():
        grads = [np.zeros(17, np.float32), -np.zeros(5), np.zeros((3, 3), np.float16)]
        before = snapshot(grads)
        assert gradclip.clip_grad_norm_(grads, 1.0, eps=eps) == 0.0
        assert gradclip.clip_grad_norm_per_tensor_(grads, 1.0, eps=eps).tolist() == [0.0] * 3
        gradclip.clip_grads_with_norm_(grads, 1.0, 0.0, eps=eps)
        assert snapshot(grads) == before, f"{cfg}: zeros written (or turned into NaN)"


def _write_cases() -> list[Any]:
    return [
        pytest.param("float32", id="float32"),
        pytest.param("float64", id="float64"),
        pytest.param("float16", id="float16"),
        pytest.param("bfloat16", id="bfloat16", marks=needs_bf16),
    ]


@pytest.mark.parametrize("dtype_name", _write_cases())
def test_write_arithmetic_matches_formula(dtype_name: str) -> None:
    """Writes are exactly: f64 x*c; f32 x*float32(c); f16/bf16 round(float32(x)*float32(c))."""
    dtype = dtype_of(dtype_name)
    rng = np.random.default_rng(42)
    n = 20011
    values = rng.standard_normal(n) * np.exp2(rng.integers(-12, 12, n))
    values[:5] = [0.0, -0.0, 1.0, -1.0, 0.5]
    original = cast(values, dtype)
    for total in (1.7, 3.3333333333333335, 123.456, 1e5 + 1 / 3):
        coef = 0.9 / (total + 1e-6)
        if dtype == np.float64:
            expected = original * coef
        elif dtype == np.float32:
            expected = original * np.float32(coef)
        else:
            expected = (original.astype(np.float32) * np.float32(coef)).astype(dtype)
        if dtype == np.float32:  # the test data must tell the two roundings apart
            double_then_round = (original.astype(np.float64) * coef).astype(np.float32)
            assert not np.array_equal(double_then_round, expected)
        for cfg in each_config():
            x = original.copy()
            gradclip.clip_grads_with_norm_(x, 0.9, total)
            assert x.tobytes() == expected.tobytes(), f"{cfg}, total={total}"


@pytest.mark.parametrize("dtype_name", _write_cases())
def test_clip_value_bound_is_rounded_to_dtype(dtype_name: str) -> None:
    dtype = dtype_of(dtype_name)
    v = 0.1  # not representable in any of the four dtypes
    with np.errstate(all="ignore"):
        b = float(np.array(v).astype(dtype).astype(np.float64))
    values = np.array([0.1, -0.1, 0.2, -0.2, 0.05, INF, -INF, math.nan, 0.0, -0.0, 1e-8, b, -b])
    x_original = cast(values, dtype)
    expected = np.clip(x_original.astype(np.float64), -b, b)
    for cfg in each_config():
        x = x_original.copy()
        gradclip.clip_grad_value_(x, v)
        assert_same_values(x, expected, f"{cfg}")
        assert float(x[2]) == b and float(x[5]) == b and float(x[6]) == -b


@pytest.mark.parametrize("dtype_name", _write_cases())
def test_clip_value_leaves_inside_values_and_nan(dtype_name: str) -> None:
    dtype = dtype_of(dtype_name)
    rng = np.random.default_rng(3)
    values = rng.standard_normal(1001)
    values[::10] = math.nan
    for cfg in each_config():
        x = cast(values, dtype)
        original = x.astype(np.float64)
        gradclip.clip_grad_value_(x, 0.75)
        got = x.astype(np.float64)
        inside = np.abs(original) <= 0.75
        assert np.array_equal(got[inside], original[inside]), cfg
        assert np.all(np.isnan(got[::10])), cfg
        assert np.all(np.abs(got[~np.isnan(got)]) <= 0.75), cfg


# ---------------------------------------------------------------------------------------------
# determinism: targets, threads, placement
# ---------------------------------------------------------------------------------------------


def _det_values(dtype: np.dtype[Any], n: int, seed: int) -> np.ndarray:
    """Values spread over many binades (within float16's range for float16)."""
    rng = np.random.default_rng(seed)
    span = 10 if dtype.itemsize == 2 and dtype.kind == "f" else 20
    values = cast(rng.standard_normal(n) * np.exp2(rng.integers(-span, span, n)), dtype)
    assert np.all(np.isfinite(values.astype(np.float64)))
    return values


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, INF], ids=str)
@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_bitwise_across_targets_threads_and_placement(dtype_name: str, p: float) -> None:
    dtype = dtype_of(dtype_name)
    sizes = [1000003, 70001, 33, 1, 0, 4097]
    arrays = [_det_values(dtype, n, i) for i, n in enumerate(sizes)]

    def placements() -> list[tuple[str, list[np.ndarray]]]:
        out = [("C", [a.copy() for a in arrays])]
        for offset in (1, 3):  # the same values starting `offset` elements into a buffer
            placed = []
            for a in arrays:
                buf = np.empty(a.size + 8, dtype)
                view = buf[offset : offset + a.size]
                view[...] = a
                placed.append(view)
            out.append((f"element-offset-{offset}", placed))
        unaligned = []
        for a in arrays:
            raw = bytearray(a.nbytes + 1)
            view = np.frombuffer(raw, dtype, count=a.size, offset=1)
            view[...] = a
            unaligned.append(view)
        out.append(("byte-offset-1", unaligned))
        return out

    results: dict[Any, bytes] = {}
    for cfg in each_config():
        for where, grads in placements():
            results[(cfg, where)] = bits(gradclip.get_total_norm(grads, p))
    assert len(set(results.values())) == 1, {k: np.frombuffer(v) for k, v in results.items()}
    expected = ref.get_total_norm(arrays, p)
    got = np.frombuffer(next(iter(results.values())))[0]
    assert got == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_strided_view_same_bits_as_contiguous_copy(dtype_name: str) -> None:
    dtype = dtype_of(dtype_name)
    base = _det_values(dtype, 300 * 401, 7).reshape(300, 401)
    views = {
        "every-3rd": base.reshape(-1)[::3],
        "columns": base[:, ::2],
        "rows-and-columns": base[1::2, 3:-5],
        "negative-step-columns": base[:, ::-2],
        "transposed-slice": base.T[::2],
    }
    for name, view in views.items():
        assert not view.flags.c_contiguous and not view.flags.f_contiguous
        copy = np.ascontiguousarray(view)
        for p in (2.0, 1.0, INF):
            seen = set()
            for cfg in each_config():
                a = gradclip.get_total_norm(view, p)
                b = gradclip.get_total_norm(copy, p)
                assert bits(a) == bits(b), f"{name}, p={p}, {cfg}: {a!r} != {b!r}"
                seen.add(bits(a))
            assert len(seen) == 1, (name, p)


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_dense_blocks_read_in_memory_order(dtype_name: str) -> None:
    dtype = dtype_of(dtype_name)
    flat = _det_values(dtype, 600 * 301, 11)
    c = flat.reshape(600, 301)
    f = c.T  # F-ordered, same memory
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    for p in (2.0, 1.0, 3.0):
        expected = bits(gradclip.get_total_norm(flat, p))
        for cfg in each_config():
            # Every one of these is the same dense block of memory, read in memory order.
            for name, arr in {
                "C": c,
                "F": f,
                "reversed-all-axes": c[::-1, ::-1],
                "reversed-flat": flat[::-1],
                "F-reversed": f[::-1, ::-1],
            }.items():
                got = bits(gradclip.get_total_norm(arr, p))
                assert got == expected, f"{name}, p={p}, {cfg}"


def test_clip_writes_bitwise_across_configs() -> None:
    dtypes = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]
    if HAVE_BF16:
        dtypes.append(BF16)
    values = [_det_values(d, 300007, i) for i, d in enumerate(dtypes)]
    outcomes = {}
    for cfg in each_config():
        grads = [v.copy() for v in values]
        norm = gradclip.clip_grad_norm_(grads, 1.0)
        per = [v.copy() for v in values]
        per_norms = gradclip.clip_grad_norm_per_tensor_(per, 1.0)
        outcomes[cfg] = (bits(norm), per_norms.tobytes(), *(g.tobytes() for g in grads + per))
    first = next(iter(outcomes.values()))
    for cfg, outcome in outcomes.items():
        assert outcome == first, f"{cfg} differs from {CONFIGS[0]}"


def test_thread_count_above_cores_is_deterministic() -> None:
    x = _det_values(np.dtype(np.float32), 2_000_003, 5)
    with configured(gradclip.cpu_target(), 1):
        expected = bits(gradclip.get_total_norm(x))
    previous = gradclip.get_num_threads()
    try:
        for threads in (3, 4, 7):
            gradclip.set_num_threads(threads)
            assert bits(gradclip.get_total_norm(x)) == expected, threads
    finally:
        gradclip.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# accuracy: 50M float32 elements
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_accuracy_50m_float32() -> None:
    n = 50_000_000
    rng = np.random.default_rng(2024)
    x = rng.standard_normal(n, dtype=np.float32)
    x[::7] *= np.float32(1000.0)  # a wide dynamic range
    x[3::11] = np.float32(1.0)  # many equal terms (a naive float32 sum would stall)
    # Reference: math.fsum of the exact float64 squares (x*x of a float32 is exact in float64
    # to 48 bits, so only fsum's final rounding and the products' rounding remain).
    block = 1 << 20
    sq = math.fsum(
        t
        for start in range(0, n, block)
        for t in (x[start : start + block].astype(np.float64) ** 2).tolist()
    )
    expected = math.sqrt(sq)
    expected_inf = float(np.max(np.abs(x)))
    outcomes = set()
    for cfg in each_config():
        got = gradclip.get_total_norm(x)
        rel = abs(got - expected) / expected
        assert rel <= 1e-12, f"{cfg}: {got!r} vs fsum {expected!r} (relative error {rel:.3g})"
        assert gradclip.get_total_norm(x, INF) == expected_inf
        outcomes.add(bits(got))
    assert len(outcomes) == 1, "50M-element norm differs across targets/threads"


@pytest.mark.parametrize("dtype_name", ["float16", "float32"])
def test_scaling_factor_beyond_the_float_range(dtype_name: str, cpu_target: str) -> None:
    # unscale's factor inv_scale * coef = 1e305 * 0.1 is a finite double beyond FLT_MAX: the
    # unscaled value 1e301 overflows the type, so nothing is written and the step is flagged
    # (not an undefined float conversion, not an inf written)
    x = np.array([1e-4] + [0.0] * 40, dtype=dtype_name)
    view = x[::2]  # the strided path too
    for arr in (x, view):
        a = np.array(arr) if arr is x else arr
        before = a.copy()
        r = gradclip.unscale_clip_grad_norm_(a, max_norm=1e300, inv_scale=1e305)
        assert r.found_nonfinite and not r.clipped and math.isinf(r.total_norm)
        np.testing.assert_array_equal(a, before)
    # where the products are finite, a factor beyond the float range still gives them: the
    # smallest float32 subnormal times 1e40 is about 1.4e-5
    tiny = np.full(5, np.finfo(np.float32).smallest_subnormal, np.float32)
    for arr in (tiny, np.repeat(tiny, 2)[::2]):
        r = gradclip.unscale_clip_grad_norm_(arr, max_norm=1e300, inv_scale=1e40)
        assert not r.found_nonfinite
        expected = np.float32(float(np.finfo(np.float32).smallest_subnormal) * 1e40)
        np.testing.assert_allclose(arr, np.full(5, expected, np.float32), rtol=1e-6)


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
def test_many_small_arrays_same_bits_everywhere(dtype_name: str) -> None:
    # Runs of small dense arrays go to the kernels together, their partial blocks assembled
    # across array boundaries; the bits must be those of the one-array-at-a-time baseline on
    # every target and thread count. Odd sizes put the boundaries on every lane; a strided
    # view and an array of another dtype interrupt the runs; the total passes 256 KiB so two
    # threads split it.
    dtype = dtype_of(dtype_name)
    rng = np.random.default_rng(31)
    other = np.dtype(np.float64) if dtype != np.float64 else np.dtype(np.float32)
    arrays: list[np.ndarray] = []
    for i in range(1500):
        n = int(rng.integers(0, 130))
        arrays.append(cast(rng.standard_normal(n) * rng.uniform(0.1, 10.0), dtype))
        if i % 97 == 5:
            arrays.append(cast(rng.standard_normal(2 * n + 2), dtype)[::2])
        if i % 211 == 7:
            arrays.append(cast(rng.standard_normal(n + 1), other))
    for p in (2.0, 1.0, 3.0):
        seen = {bits(gradclip.get_total_norm(arrays, p)) for _ in each_config()}
        assert len(seen) == 1, (p, len(seen))
        got = np.frombuffer(next(iter(seen)))[0]
        assert got == pytest.approx(ref.get_total_norm(arrays, p), rel=1e-12, abs=0)


def test_an_arrays_norm_does_not_depend_on_the_others() -> None:
    # Chunks grow with the bytes a plan covers (64 KiB up to 1 MiB); per-array norms are
    # chunked by each array's own size, so an array's norm has the same bits alone, beside a
    # small array and beside a large one, and equals its total norm alone.
    rng = np.random.default_rng(41)
    a = rng.standard_normal(3_000_001).astype(np.float32)  # 12 MB: 256 KiB chunks alone
    big = rng.standard_normal(10_000_000).astype(np.float32)
    small = rng.standard_normal(17).astype(np.float32)
    for _ in each_config():
        alone = gradclip.get_total_norm(a)
        assert bits(float(gradclip.tensor_norms([a])[0])) == bits(alone)
        assert bits(float(gradclip.tensor_norms([small, a])[1])) == bits(alone)
        assert bits(float(gradclip.tensor_norms([big, a, small])[1])) == bits(alone)
        assert bits(gradclip.GradientSet([big, a]).tensor_norms()[1]) == bits(alone)
