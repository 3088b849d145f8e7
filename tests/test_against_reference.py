# Covers: every public norm and clip function of the compiled package against
# gradclip.reference, on every CPU target the machine supports x 1 and 2 threads (looped inside
# each test, so the reference is computed once per case). The grid of dtypes x shapes x layouts
# x norm types x value regimes is split in two parts whose factors barely interact:
#   numerics: every dtype (float16, bfloat16, float32, float64) x every norm type (or bound)
#     x value regimes (typical magnitudes; near the dtype's smallest normal, subnormals
#     included; near its largest, so float64 squares overflow) on a few shapes (a vector
#     tail, an array the OpenMP team splits, a 3-d block) in C order;
#   layouts: every shape (lengths 0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 70001, 0-d,
#     zero-size and several multi-dim shapes) x every layout (C, F, reversed/negative strides,
#     strided with sentinel gaps, unaligned), the dtype and norm type rotating from case to
#     case so that each layout meets every dtype and nearly every norm type.
#   The full product (every dtype x shape x layout x norm type, the numerics on every shape)
#   is the exhaustive run: GRADCLIP_EXHAUSTIVE=1, or -m exhaustive, adds it.
# Also: mixed lists with None entries, many small arrays, 1000003 elements for a few cases.
# Norms: within the contract tolerance of the reference (rtol 1e-12, p=inf exact).
# Writes: exactly the documented per-dtype arithmetic applied with the compiled path's own
#   returned norm (bit-exact up to NaN payloads), within an ulp of the reference's own writes,
#   nothing written when coef >= 1, gaps of strided views never touched.
# Determinism: norms and written bytes bitwise equal across CPU targets and thread counts.
# Non-finite modes (propagate, raise, skip, zero) of the norm clips against the reference.
# Hypothesis property tests over random lists of arrays (dtypes, shapes, layouts, special
#   values, max_norm, eps, norm_type in {1, 2, inf, 0.5, 3}): clip_grad_norm_ + tensor_norms,
#   clip_grad_norm_per_tensor_ + clip_grad_value_, and clip_by_norm_ with random axes.
from __future__ import annotations

import itertools
import math
import os
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from gc_helpers import (
    CONFIGS,
    DTYPE_NAMES,
    DTYPE_PARAMS,
    GAP_SENTINEL,
    HAVE_BF16,
    LAYOUTS,
    assert_norm_close,
    assert_norms_close,
    assert_same_values,
    assert_ulp_close,
    bits,
    cast,
    dtype_of,
    each_config,
    expected_scaled,
    finfo,
    make_array,
    needs_bf16,
    random_values,
    snapshot,
    ulps_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradclip
from gradclip import NonFiniteNormError
from gradclip import reference as ref

INF = math.inf
P_ALL = [1.0, 2.0, INF, 0.5, 3.0]

LENGTHS = [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 70001]
# (7, 10001) spans several 64 KiB chunks: in the strided layout (whose axes do not merge) a
# chunk then starts in the middle of a row, where the strided walk restarts.
SHAPES = [(n,) for n in LENGTHS] + [(), (0, 5), (3, 0, 2), (3, 5, 7), (2, 33), (4, 16, 3)]
SHAPES += [(7, 10001)]


def shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "0d"


# The exhaustive run (GRADCLIP_EXHAUSTIVE=1, or -m exhaustive, which conftest.py turns into
# it) adds the full product to the two parts; without it those cases are not even collected.
EXHAUSTIVE = os.environ.get("GRADCLIP_EXHAUSTIVE") == "1"

REGIMES = ("typical", "small", "large")
# A vector tail (33 = one 32-lane block + 1), an array the OpenMP team splits (70001 float32
# is above the 256 KiB threshold for threads) and a 3-d block.
NUMERIC_SHAPES = [(33,), (70001,), (3, 5, 7)]


def case_id(value: Any) -> str:
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return shape_id(value)
    if isinstance(value, tuple):
        return "-".join(case_id(v) for v in value)
    return repr(value).replace(" ", "") if not isinstance(value, (str, float)) else str(value)


def grid(
    extras: Sequence[Any],
    shapes: Sequence[Any] = SHAPES,
    numeric_shapes: Sequence[Any] = NUMERIC_SHAPES,
) -> list[Any]:
    """pytest params (dtype_name, shape, layout, extra, regime): the numerics part (every
    dtype x extra x regime, the shape rotating through numeric_shapes, C order), the layout
    part (every shape x layout, typical values, dtype and extra rotating), and under
    EXHAUSTIVE the full product, marked exhaustive. ``extra`` is the test's own factor (a
    norm type, a bound, ...)."""
    seen: set[Any] = set()
    out: list[Any] = []

    def add(d: str, shape: Any, layout: str, extra: Any, regime: str, full: bool) -> None:
        key = (d, repr(shape), layout, repr(extra), regime)
        if key in seen:
            return
        seen.add(key)
        marks = [needs_bf16] if d == "bfloat16" else []
        if full:
            marks.append(pytest.mark.exhaustive)
        ident = "-".join([d, case_id(shape), layout, case_id(extra), regime])
        out.append(pytest.param(d, shape, layout, extra, regime, marks=marks, id=ident))

    numeric = itertools.product(DTYPE_NAMES, extras, REGIMES)
    for i, (d, extra, regime) in enumerate(numeric):
        add(d, numeric_shapes[i % len(numeric_shapes)], "C", extra, regime, False)
    for si, shape in enumerate(shapes):
        for li, layout in enumerate(LAYOUTS):
            d = DTYPE_NAMES[(si + li) % len(DTYPE_NAMES)]
            add(d, shape, layout, extras[(si + 2 * li) % len(extras)], "typical", False)
    if EXHAUSTIVE:
        for d, shape, layout, extra in itertools.product(DTYPE_NAMES, shapes, LAYOUTS, extras):
            add(d, shape, layout, extra, "typical", True)
        for d, shape, extra, regime in itertools.product(
            DTYPE_NAMES, numeric_shapes, extras, REGIMES
        ):
            add(d, shape, "C", extra, regime, True)
    return out


def regime_values(seed: int, shape: Sequence[int], dtype: np.dtype[Any], regime: str) -> np.ndarray:
    """float64 values for a value regime: "typical" magnitudes (1e-2..1e2), "small" ones near
    the dtype's smallest normal (some subnormal once rounded; float64 squares underflow) or
    "large" ones near its largest (float64 squares overflow; the norm stays finite)."""
    if regime == "typical":
        return random_values(seed, shape)
    info = finfo(dtype)
    if regime == "small":
        return random_values(seed, shape, scale=float(info.tiny) * 16)
    # float64: a scale below max / n**2 keeps every p-norm down to p = 0.5 finite (at most
    # n**2 max|x|); the narrower types' norms are far from float64's range anyway
    n = max(1, math.prod(shape))
    scale = float(info.max) / 16 / (n * n if dtype == np.float64 else 1)
    return random_values(seed, shape, scale=scale)


def seed_of(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode())


def assert_gaps_intact(arr: np.ndarray, layout: str) -> None:
    """The gaps between the elements of a strided view still hold the sentinel."""
    if layout == "strided" and arr.ndim:
        base = arr.base
        assert isinstance(base, np.ndarray)
        gaps = base[..., 1::2].astype(np.float64)
        assert np.all(gaps == GAP_SENTINEL), "a gap of a strided view was written"


def clip_max_norm(norm: float, clip: str) -> float:
    """A max_norm that makes the clip write (coef ~0.3) or certainly not write (coef ~0.5)."""
    if not (math.isfinite(norm) and norm > 0):
        return 1.0
    return 0.3 * norm if clip == "clips" else 2.0 * norm + 1.0


def all_equal(outcomes: dict[tuple[str, int], Any], what: str) -> None:
    first_cfg, first = next(iter(outcomes.items()))
    for cfg, value in outcomes.items():
        assert value == first, f"{what}: {cfg} differs from {first_cfg} (not deterministic)"


# ---------------------------------------------------------------------------------------------
# get_total_norm / tensor_norms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype_name", "shape", "layout", "p", "regime"), grid(P_ALL))
def test_get_total_norm(
    dtype_name: str, shape: tuple[int, ...], layout: str, p: float, regime: str
) -> None:
    dtype = dtype_of(dtype_name)
    values = regime_values(seed_of(dtype_name, shape, layout), shape, dtype, regime)
    expected = ref.get_total_norm(make_array(values, dtype, layout), p)
    outcomes = {}
    for cfg in each_config():
        arr = make_array(values, dtype, layout)
        before = snapshot([arr])
        got = gradclip.get_total_norm(arr, p)
        assert_norm_close(got, expected, p, f"{cfg}")
        assert snapshot([arr]) == before, "get_total_norm wrote to its input"
        assert gradclip.get_total_norm([arr], norm_type=p) == got
        outcomes[cfg] = bits(got)
    all_equal(outcomes, "total norm")


@pytest.mark.parametrize(("dtype_name", "shape", "layout", "p", "regime"), grid(P_ALL))
def test_tensor_norms(
    dtype_name: str, shape: tuple[int, ...], layout: str, p: float, regime: str
) -> None:
    dtype = dtype_of(dtype_name)
    values = regime_values(seed_of("tn", dtype_name, shape, layout), shape, dtype, regime)
    other = random_values(seed_of("tn-other", shape), (5, 3))

    def grads() -> list[Any]:
        return [make_array(values, dtype, layout), None, make_array(other, np.float32, "F")]

    expected = ref.tensor_norms(grads(), p)
    assert expected.shape == (3,) and expected[1] == 0.0
    outcomes = {}
    for cfg in each_config():
        g = grads()
        before = snapshot(g)
        got = gradclip.tensor_norms(g, p)
        assert_norms_close(got, expected, p, f"{cfg}")
        assert snapshot(g) == before, "tensor_norms wrote to its input"
        single = gradclip.tensor_norms(g[0], norm_type=p)
        assert single.shape == (1,) and single[0] == got[0]
        outcomes[cfg] = got.tobytes()
    all_equal(outcomes, "tensor norms")


# ---------------------------------------------------------------------------------------------
# clip_grad_norm_ / clip_grads_with_norm_ / clip_grad_norm_per_tensor_
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype_name", "shape", "layout", "case", "regime"),
    grid([(p, clip) for p in P_ALL for clip in ("clips", "noop")]),
)
def test_clip_grad_norm(
    dtype_name: str, shape: tuple[int, ...], layout: str, case: tuple[float, str], regime: str
) -> None:
    p, clip = case
    dtype = dtype_of(dtype_name)
    values = regime_values(seed_of("cgn", dtype_name, shape, layout, p), shape, dtype, regime)
    ref_arr = make_array(values, dtype, layout)
    max_norm = clip_max_norm(ref.get_total_norm(ref_arr, p), clip)
    expected_norm = ref.clip_grad_norm_(ref_arr, max_norm, p)
    outcomes = {}
    for cfg in each_config():
        arr = make_array(values, dtype, layout)
        original = np.array(arr)
        before = snapshot([arr])
        got = gradclip.clip_grad_norm_(arr, max_norm, p)
        assert_norm_close(got, expected_norm, p, f"{cfg}")
        if clip == "noop" or arr.size == 0:
            assert snapshot([arr]) == before, f"{cfg}: wrote although coef >= 1"
        else:
            assert_same_values(arr, expected_scaled(original, max_norm, got), f"{cfg} writes")
        assert_ulp_close(arr, ref_arr, dtype, ulps_for(dtype), f"{cfg} vs reference writes")
        assert_gaps_intact(arr, layout)
        outcomes[cfg] = (bits(got), arr.tobytes())
    all_equal(outcomes, "clip_grad_norm_ norm and writes")


@pytest.mark.parametrize(
    ("dtype_name", "shape", "layout", "total", "regime"),
    grid(["clips", "noop", "nan", "inf", "zero"]),
)
def test_clip_grads_with_norm(
    dtype_name: str, shape: tuple[int, ...], layout: str, total: str, regime: str
) -> None:
    dtype = dtype_of(dtype_name)
    values = regime_values(seed_of("cgwn", dtype_name, shape, layout), shape, dtype, regime)
    max_norm = 0.75
    total_norm = {"clips": 7.0, "noop": 0.5, "nan": math.nan, "inf": INF, "zero": 0.0}[total]
    ref_arr = make_array(values, dtype, layout)
    assert ref.clip_grads_with_norm_(ref_arr, max_norm, total_norm) is None
    outcomes = {}
    for cfg in each_config():
        arr = make_array(values, dtype, layout)
        before = snapshot([arr])
        assert gradclip.clip_grads_with_norm_(arr, max_norm, total_norm) is None
        if total in ("noop", "zero"):
            assert snapshot([arr]) == before, f"{cfg}: wrote although coef >= 1"
        # Same coefficient on both sides: the writes agree exactly.
        assert_same_values(arr, ref_arr, f"{cfg} vs reference writes")
        assert_gaps_intact(arr, layout)
        outcomes[cfg] = arr.tobytes()
    if total != "nan":  # NaN payloads may legitimately differ between kernels
        all_equal(outcomes, "clip_grads_with_norm_ writes")


@pytest.mark.parametrize(
    ("dtype_name", "shape", "layout", "p", "regime"), grid([1.0, 2.0, INF, 3.0])
)
def test_clip_grad_norm_per_tensor(
    dtype_name: str, shape: tuple[int, ...], layout: str, p: float, regime: str
) -> None:
    dtype = dtype_of(dtype_name)
    values = regime_values(seed_of("pt", dtype_name, shape, layout), shape, dtype, regime)
    big = random_values(seed_of("pt-big"), (4, 6), scale=10.0)
    small = random_values(seed_of("pt-small"), (3,), scale=1e-3)

    def grads() -> list[Any]:
        return [
            make_array(values, dtype, layout),
            None,
            make_array(big, np.float32, "C"),
            make_array(small, np.float64, "reversed"),
        ]

    max_norm = 1.0
    ref_grads = grads()
    expected = ref.clip_grad_norm_per_tensor_(ref_grads, max_norm, p)
    assert expected.shape == (4,) and expected[1] == 0.0
    outcomes = {}
    for cfg in each_config():
        g = grads()
        originals = [None if a is None else np.array(a) for a in g]
        got = gradclip.clip_grad_norm_per_tensor_(g, max_norm, p)
        assert_norms_close(got, expected, p, f"{cfg}")
        for i, (a, o, r) in enumerate(zip(g, originals, ref_grads, strict=True)):
            if a is None:
                continue
            assert_same_values(a, expected_scaled(o, max_norm, float(got[i])), f"{cfg} [{i}]")
            assert_ulp_close(a, r, a.dtype, ulps_for(a.dtype), f"{cfg} [{i}] vs reference")
        assert_gaps_intact(g[0], layout)
        outcomes[cfg] = (got.tobytes(), *(a.tobytes() for a in g if a is not None))
    all_equal(outcomes, "per-tensor norms and writes")


# ---------------------------------------------------------------------------------------------
# clip_grad_value_
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype_name", "shape", "layout", "which", "regime"),
    grid(["zero", "median", "tiny", "huge"]),
)
def test_clip_grad_value(
    dtype_name: str, shape: tuple[int, ...], layout: str, which: str, regime: str
) -> None:
    dtype = dtype_of(dtype_name)
    values = regime_values(seed_of("cgv", dtype_name, shape, layout), shape, dtype, regime)
    if values.size > 3:  # NaN stays NaN, infinities are clamped
        flat = values.reshape(-1)
        flat[0], flat[1], flat[2] = math.nan, INF, -INF
    finite = np.abs(values[np.isfinite(values)])
    median = float(np.median(finite)) if finite.size else 1.0
    # median * 1.0001 is (almost surely) not representable in float16/bfloat16/float32: the
    # bound is the dtype's own rounding of it.
    clip_value = {"zero": 0.0, "median": median * 1.0001, "tiny": 1e-30, "huge": 1e308}[which]
    ref_arr = make_array(values, dtype, layout)
    ref.clip_grad_value_(ref_arr, clip_value)
    outcomes = {}
    for cfg in each_config():
        arr = make_array(values, dtype, layout)
        before = snapshot([arr])
        assert gradclip.clip_grad_value_(arr, clip_value) is None
        if which == "zero":  # the sign of a clamped zero is not specified
            assert np.array_equal(
                arr.astype(np.float64), ref_arr.astype(np.float64), equal_nan=True
            )
        else:
            assert_same_values(arr, ref_arr, f"{cfg}")
        if which == "huge":  # every finite element is inside the bound: left as it was
            original = np.frombuffer(before[0], dtype).reshape(shape).astype(np.float64)
            finite = np.isfinite(original)
            assert_same_values(arr.astype(np.float64)[finite], original[finite], "unchanged")
        assert_gaps_intact(arr, layout)
        outcomes[cfg] = arr.tobytes()
    all_equal(outcomes, "clip_grad_value_ writes")


# ---------------------------------------------------------------------------------------------
# clip_by_norm_
# ---------------------------------------------------------------------------------------------

AXIS_CASES = [
    ((), None),
    ((), ()),
    ((0,), None),
    ((0,), 0),
    ((1,), 0),
    ((17,), None),
    ((17,), -1),
    ((17,), ()),
    ((65,), (0,)),
    ((0, 4), 0),
    ((0, 4), 1),
    ((3, 0, 2), 1),
    ((3, 0, 2), (0, 2)),
    ((6, 33), None),
    ((6, 33), 1),
    ((6, 33), 0),
    ((6, 33), (-1, -2)),
    ((3, 5, 7), None),
    ((3, 5, 7), 0),
    ((3, 5, 7), -1),
    ((3, 5, 7), (0, 2)),
    ((3, 5, 7), (2, 0)),
    ((3, 5, 7), (1,)),
    ((3, 5, 7), ()),
    ((2, 3, 4, 5), (1, 3)),
]


def slices_of(arr: np.ndarray, axis: Any) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """(index into the norms array, view of the slice) for every slice clip_by_norm_ clips."""
    if axis is None:
        reduced = tuple(range(arr.ndim))
    else:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        reduced = tuple(a % arr.ndim for a in axes)
    kept = [d for d in range(arr.ndim) if d not in reduced]
    out = []
    for index in np.ndindex(*(arr.shape[d] for d in kept)):
        slicer: list[Any] = [slice(None)] * arr.ndim
        for d, i in zip(kept, index, strict=True):
            slicer[d] = i
        out.append((index, arr[(*slicer, Ellipsis)]))
    return out


@pytest.mark.parametrize(
    ("dtype_name", "shape_axis", "layout", "p", "regime"),
    grid([2.0, 1.0, INF, 3.0], AXIS_CASES, [((6, 33), 1), ((3, 5, 7), (0, 2)), ((65,), None)]),
)
def test_clip_by_norm(
    dtype_name: str, shape_axis: tuple[tuple[int, ...], Any], layout: str, p: float, regime: str
) -> None:
    shape, axis = shape_axis
    dtype = dtype_of(dtype_name)
    values = regime_values(seed_of("cbn", dtype_name, shape, layout, axis), shape, dtype, regime)
    ref_arr = make_array(values, dtype, layout)
    slice_norms = [ref.get_total_norm(s, p) for _, s in slices_of(ref_arr, axis)]
    # Half of the slices clip (those above the median norm), half are left alone.
    max_norm = float(np.median(slice_norms)) if slice_norms and max(slice_norms) > 0 else 1.0
    expected = ref.clip_by_norm_(ref_arr, max_norm, axis, p)
    expected_shape = np.asarray(np.linalg.vector_norm(np.zeros(shape), axis=axis)).shape
    assert isinstance(expected, np.ndarray) and expected.shape == expected_shape
    outcomes = {}
    for cfg in each_config():
        arr = make_array(values, dtype, layout)
        original = np.array(arr)
        got = gradclip.clip_by_norm_(arr, max_norm, axis, p)
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        assert got.shape == expected_shape
        assert_norms_close(got, expected, p, f"{cfg}")
        want = np.array(original)
        for index, part in slices_of(want, axis):
            ref.clip_grads_with_norm_(part, max_norm, float(got[index]))
        assert_same_values(arr, want, f"{cfg} writes")
        assert_ulp_close(arr, ref_arr, dtype, ulps_for(dtype), f"{cfg} vs reference writes")
        assert_gaps_intact(arr, layout)
        outcomes[cfg] = (got.tobytes(), arr.tobytes())
    all_equal(outcomes, "clip_by_norm_ norms and writes")


def test_clip_by_norm_keyword_arguments() -> None:
    x = make_array(random_values(1, (4, 5), scale=10.0), np.dtype(np.float32), "C")
    y = np.array(x)
    got = gradclip.clip_by_norm_(x, max_norm=1.0, axis=1, norm_type=2.0, eps=0.0)
    expected = ref.clip_by_norm_(y, max_norm=1.0, axis=1, norm_type=2.0, eps=0.0)
    assert_norms_close(got, expected, 2.0)
    assert_ulp_close(x, y, x.dtype, 2.0)
    assert np.all(np.linalg.vector_norm(x.astype(np.float64), axis=1) <= 1.0 + 1e-6)


# Shapes whose slices the compiled path processes in several windows (at most 4096 slices and
# 16 MiB of data at a time, whole slices), with a last partial window: many tiny slices, slices
# of a few KiB, and (one per dtype size) slices big enough that the byte limit sets the window.
WINDOW_CASES = [
    ("float32", (10000, 3), 1, "C"),
    ("float32", (10000, 3), 1, "strided"),
    ("float16", (3, 9000), 0, "F"),
    ("float64", (4097, 2, 2), (1, 2), "reversed"),
    ("bfloat16", (2, 4500, 3), (0, 2), "unaligned"),
    ("float64", (5000, 1), -1, "C"),
    ("float32", (9000,), (), "C"),
    ("float64", (3000, 1000), 1, "strided"),
    ("float32", (20, 262144), 1, "C"),
    ("float16", (262144, 34), 0, "F"),
]


@pytest.mark.parametrize("per_slice_bounds", [False, True], ids=["one_bound", "bound_per_slice"])
@pytest.mark.parametrize(
    ("dtype_name", "shape", "axis", "layout"),
    [pytest.param(*c, id=f"{c[0]}-{shape_id(c[1])}-{c[2]}-{c[3]}") for c in WINDOW_CASES],
)
def test_clip_by_norm_many_slices_bitwise(
    dtype_name: str, shape: tuple[int, ...], axis: Any, layout: str, per_slice_bounds: bool
) -> None:
    """Every slice of a many-slice call ends up with the bits of clip_by_norm_ on that slice
    alone, for every slice of every window (special values included), the norms too."""
    if dtype_name == "bfloat16" and not HAVE_BF16:
        pytest.skip("needs ml_dtypes")
    dtype = dtype_of(dtype_name)
    rng = np.random.default_rng(seed_of("windows", dtype_name, shape, axis, layout))
    # a magnitude per slice along axis 0 or 1, so some slices clip and others do not
    scales = 10.0 ** rng.uniform(-2, 2, size=shape[:1] + (1,) * (len(shape) - 1))
    values = rng.standard_normal(shape) * scales
    flat = values.reshape(-1)
    picks = rng.integers(0, flat.size, 4)
    flat[picks] = [math.nan, math.inf, -math.inf, 0.0]
    template = make_array(values, dtype, layout)
    sl = slices_of(template, axis)
    kept = np.asarray(np.linalg.vector_norm(np.zeros(shape), axis=axis)).shape
    if per_slice_bounds:
        max_norm: Any = 10.0 ** rng.uniform(-2, 2, size=kept)
    else:
        norms = [ref.get_total_norm(part) for _, part in sl[:200]]
        finite = [n for n in norms if math.isfinite(n) and n > 0]
        max_norm = float(np.median(finite)) if finite else 1.0
    bound_of = np.broadcast_to(np.asarray(max_norm, np.float64), kept)
    # what each slice gets on its own
    alone = make_array(values, dtype, layout)
    want_norms = np.empty(kept)
    for index, part in slices_of(alone, axis):
        want_norms[index] = gradclip.clip_by_norm_(part, float(bound_of[index]))
    want = snapshot([alone])
    if math.prod(shape) <= 100_000:  # the pure-Python reference is slow on the big cases
        ref_arr = make_array(values, dtype, layout)
        ref_norms = ref.clip_by_norm_(ref_arr, max_norm, axis)
        assert_norms_close(want_norms, ref_norms, 2.0, "per-slice calls vs reference")
        assert_ulp_close(alone, ref_arr, dtype, ulps_for(dtype), "per-slice calls vs reference")
    assert np.isnan(want_norms).any(), "the special values should reach the norms"
    for cfg in each_config():
        arr = make_array(values, dtype, layout)
        got = gradclip.clip_by_norm_(arr, max_norm, axis)
        assert got.shape == kept
        assert got.tobytes() == want_norms.tobytes(), f"{cfg}: norms differ from per-slice calls"
        assert snapshot([arr]) == want, f"{cfg}: writes differ from per-slice calls"
        assert_gaps_intact(arr, layout)


# ---------------------------------------------------------------------------------------------
# mixed lists, None entries, several arrays at once
# ---------------------------------------------------------------------------------------------


def mixed_specs() -> list[tuple[str, tuple[int, ...], str] | None]:
    specs: list[tuple[str, tuple[int, ...], str] | None] = [
        ("float32", (33,), "C"),
        None,
        ("float16", (4, 17), "F"),
        ("float64", (65,), "reversed"),
        ("float32", (), "C"),
        ("float64", (0, 3), "C"),
        ("float16", (15,), "unaligned"),
        ("float32", (5, 7), "strided"),
        None,
        ("float64", (3, 2, 16), "unaligned"),
        ("float32", (70001,), "C"),
    ]
    if HAVE_BF16:
        specs += [("bfloat16", (63,), "strided"), ("bfloat16", (2, 31), "C")]
    return specs


def build_mixed(seed: int) -> list[Any]:
    out: list[Any] = []
    for i, spec in enumerate(mixed_specs()):
        if spec is None:
            out.append(None)
            continue
        name, shape, layout = spec
        out.append(make_array(random_values(seed + i, shape), dtype_of(name), layout))
    return out


@pytest.mark.parametrize("p", P_ALL, ids=str)
def test_mixed_list_norms(p: float) -> None:
    expected_total = ref.get_total_norm(build_mixed(10), p)
    expected_each = ref.tensor_norms(build_mixed(10), p)
    outcomes = {}
    for cfg in each_config():
        total = gradclip.get_total_norm(build_mixed(10), p)
        each = gradclip.tensor_norms(build_mixed(10), p)
        assert_norm_close(total, expected_total, p, f"{cfg}")
        assert_norms_close(each, expected_each, p, f"{cfg}")
        outcomes[cfg] = (bits(total), each.tobytes())
    all_equal(outcomes, "mixed-list norms")


@pytest.mark.parametrize("p", P_ALL, ids=str)
def test_mixed_list_clip_grad_norm(p: float) -> None:
    ref_grads = build_mixed(20)
    max_norm = 0.1 * ref.get_total_norm(ref_grads, p)
    expected = ref.clip_grad_norm_(ref_grads, max_norm, p)
    outcomes = {}
    for cfg in each_config():
        g = build_mixed(20)
        originals = [None if a is None else np.array(a) for a in g]
        got = gradclip.clip_grad_norm_(g, max_norm, p)
        assert_norm_close(got, expected, p, f"{cfg}")
        for i, (a, o, r) in enumerate(zip(g, originals, ref_grads, strict=True)):
            if a is not None:
                assert_same_values(a, expected_scaled(o, max_norm, got), f"{cfg} [{i}]")
                assert_ulp_close(a, r, a.dtype, ulps_for(a.dtype), f"{cfg} [{i}] vs reference")
        outcomes[cfg] = (bits(got), *(a.tobytes() for a in g if a is not None))
    all_equal(outcomes, "mixed-list clip_grad_norm_")


def test_mixed_list_per_tensor_value_and_with_norm() -> None:
    ref_grads = build_mixed(30)
    expected = ref.clip_grad_norm_per_tensor_(ref_grads, 0.5, 2.0)
    ref_value = build_mixed(31)
    ref.clip_grad_value_(ref_value, 0.05)
    ref_with = build_mixed(32)
    ref.clip_grads_with_norm_(ref_with, 1.0, 123.0)
    for cfg in each_config():
        g = build_mixed(30)
        got = gradclip.clip_grad_norm_per_tensor_(g, 0.5, 2.0)
        assert_norms_close(got, expected, 2.0, f"{cfg}")
        for a, r in zip(g, ref_grads, strict=True):
            if a is not None:
                assert_ulp_close(a, r, a.dtype, ulps_for(a.dtype), f"{cfg}")
        v = build_mixed(31)
        gradclip.clip_grad_value_(v, 0.05)
        w = build_mixed(32)
        gradclip.clip_grads_with_norm_(w, 1.0, 123.0)
        for a, r in zip(v + w, ref_value + ref_with, strict=True):
            if a is not None:
                assert_same_values(a, r, f"{cfg}")


def test_many_small_arrays() -> None:
    """200 biases and one big weight: the engine splits by bytes, not by arrays."""
    shapes = [(70001,)] + [(i % 37 + 1,) for i in range(200)]
    values = [random_values(i, s) for i, s in enumerate(shapes)]

    def grads() -> list[np.ndarray]:
        return [make_array(v, np.dtype(np.float32), "C") for v in values]

    ref_grads = grads()
    expected = ref.clip_grad_norm_(ref_grads, 1.0)
    outcomes = {}
    for cfg in each_config():
        g = grads()
        got = gradclip.clip_grad_norm_(g, 1.0)
        assert_norm_close(got, expected, 2.0, f"{cfg}")
        for a, r in zip(g, ref_grads, strict=True):
            assert_ulp_close(a, r, a.dtype, 2.0, f"{cfg}")
        outcomes[cfg] = (bits(got), b"".join(a.tobytes() for a in g))
    all_equal(outcomes, "many small arrays")


# ---------------------------------------------------------------------------------------------
# 1000003 elements (a few cases only: the reference is slow)
# ---------------------------------------------------------------------------------------------

LARGE = 1000003


@pytest.mark.parametrize(
    ("dtype_name", "layout", "p"),
    [
        ("float32", "C", 2.0),
        ("float32", "unaligned", 1.0),
        ("float32", "reversed", INF),
        ("float64", "C", 2.0),
        ("float64", "strided", 3.0),
        ("float16", "C", 2.0),
        pytest.param(
            "bfloat16",
            "unaligned",
            2.0,
            marks=pytest.mark.skipif(not HAVE_BF16, reason="no ml_dtypes"),
        ),
    ],
)
def test_large_clip_grad_norm(dtype_name: str, layout: str, p: float) -> None:
    dtype = dtype_of(dtype_name)
    values = random_values(seed_of("large", dtype_name), (LARGE,), scale=1.0)
    ref_arr = make_array(values, dtype, layout)
    max_norm = 0.5 * ref.get_total_norm(ref_arr, p)
    expected = ref.clip_grad_norm_(ref_arr, max_norm, p)
    outcomes = {}
    for cfg in each_config():
        arr = make_array(values, dtype, layout)
        original = np.array(arr)
        got = gradclip.clip_grad_norm_(arr, max_norm, p)
        assert_norm_close(got, expected, p, f"{cfg}")
        assert_same_values(arr, expected_scaled(original, max_norm, got), f"{cfg} writes")
        assert_ulp_close(arr, ref_arr, dtype, ulps_for(dtype), f"{cfg} vs reference writes")
        assert_gaps_intact(arr, layout)
        outcomes[cfg] = (bits(got), zlib.crc32(arr.tobytes()))
    all_equal(outcomes, "large clip_grad_norm_")


def test_large_other_functions() -> None:
    values = random_values(seed_of("large-other"), (LARGE,), scale=1.0)
    shaped = values[: 7 * 142857].reshape(7, 142857)  # 999999 elements in 2-d
    f32 = np.dtype(np.float32)
    ref_value = make_array(values, f32, "C")
    ref.clip_grad_value_(ref_value, 0.5)
    ref_per = [make_array(values, f32, "unaligned"), make_array(shaped, f32, "F")]
    expected_per = ref.clip_grad_norm_per_tensor_(ref_per, 100.0)
    ref_by = make_array(shaped, f32, "C")
    expected_by = ref.clip_by_norm_(ref_by, 300.0, axis=1)
    for cfg in each_config():
        v = make_array(values, f32, "C")
        gradclip.clip_grad_value_(v, 0.5)
        assert_same_values(v, ref_value, f"{cfg} clip_grad_value_")
        per = [make_array(values, f32, "unaligned"), make_array(shaped, f32, "F")]
        got_per = gradclip.clip_grad_norm_per_tensor_(per, 100.0)
        assert_norms_close(got_per, expected_per, 2.0, f"{cfg} per-tensor")
        for a, r in zip(per, ref_per, strict=True):
            assert_ulp_close(a, r, f32, 2.0, f"{cfg} per-tensor writes")
        by = make_array(shaped, f32, "C")
        got_by = gradclip.clip_by_norm_(by, 300.0, axis=1)
        assert_norms_close(got_by, expected_by, 2.0, f"{cfg} clip_by_norm_")
        assert_ulp_close(by, ref_by, f32, 2.0, f"{cfg} clip_by_norm_ writes")


# ---------------------------------------------------------------------------------------------
# non-finite norms: propagate / raise / skip / zero
# ---------------------------------------------------------------------------------------------

SPECIALS = {
    "nan": [math.nan],
    "inf": [INF],
    "-inf": [-INF],
    "nan+inf": [INF, math.nan],
}


def nonfinite_grads(dtype: np.dtype[Any], kind: str, layout: str) -> list[Any]:
    a = random_values(1, (5, 7), scale=3.0)
    b = random_values(2, (33,), scale=3.0)
    c = random_values(3, (17,), scale=3.0)
    if kind == "overflow":  # every element finite, the float64 sum of |x| is not
        b = np.full(33, 1e307)
        b[::2] *= -1
    else:
        for j, s in enumerate(SPECIALS[kind]):
            b[3 + 5 * j] = s
    return [
        make_array(a, np.dtype(np.float32), "C"),
        None,
        make_array(b, dtype, layout),
        make_array(c, np.dtype(np.float64), "F"),
    ]


NONFINITE_CASES = [
    (name, kind)
    for name in ("float16", "bfloat16", "float32", "float64")
    for kind in ("nan", "inf", "-inf", "nan+inf")
] + [("float64", "overflow")]


NONFINITE_P_CASES = [
    (name, kind, p)
    for name, kind in NONFINITE_CASES
    for p in (2.0, 1.0, INF, 0.5)
    if kind != "overflow" or p == 1.0  # only the p=1 norm of those finite elements overflows
]


NONFINITE_MODES = ["propagate", "raise", "skip", "zero", "error_if_nonfinite"]
NONFINITE_LAYOUTS = ["C", "strided", "unaligned"]


def nonfinite_grid() -> list[Any]:
    """(dtype_name, kind, p, layout, mode): every dtype x kind x p in C order with the modes
    rotating (whether the kernels see the special value is a matter of dtype and p; what the
    call does with a non-finite norm is not), every mode x kind on float32 p=2, every layout
    x dtype; under EXHAUSTIVE the full product, marked exhaustive."""
    cases: dict[tuple[Any, ...], bool] = {}
    for i, (name, kind, p) in enumerate(NONFINITE_P_CASES):
        cases.setdefault((name, kind, p, "C", NONFINITE_MODES[i % len(NONFINITE_MODES)]), False)
    for kind, mode in itertools.product(["nan", "inf", "-inf", "nan+inf"], NONFINITE_MODES):
        cases.setdefault(("float32", kind, 2.0, "C", mode), False)
    for i, (layout, name) in enumerate(itertools.product(NONFINITE_LAYOUTS, DTYPE_NAMES)):
        cases.setdefault((name, "nan+inf", 2.0, layout, NONFINITE_MODES[i % 2]), False)
    if EXHAUSTIVE:
        for (name, kind, p), layout, mode in itertools.product(
            NONFINITE_P_CASES, NONFINITE_LAYOUTS, NONFINITE_MODES
        ):
            cases.setdefault((name, kind, p, layout, mode), True)
    out = []
    for case, full in cases.items():
        marks = [needs_bf16] if case[0] == "bfloat16" else []
        if full:
            marks.append(pytest.mark.exhaustive)
        out.append(pytest.param(*case, marks=marks, id="-".join(map(str, case))))
    return out


@pytest.mark.parametrize(("dtype_name", "kind", "p", "layout", "mode"), nonfinite_grid())
def test_nonfinite_clip_grad_norm(
    dtype_name: str, kind: str, p: float, layout: str, mode: str
) -> None:
    dtype = dtype_of(dtype_name)
    kwargs: dict[str, Any] = (
        {"error_if_nonfinite": True} if mode == "error_if_nonfinite" else {"nonfinite": mode}
    )
    raises = mode in ("raise", "error_if_nonfinite")
    max_norm = 1.0
    ref_grads = nonfinite_grads(dtype, kind, layout)
    if raises:
        with pytest.raises(NonFiniteNormError):
            ref.clip_grad_norm_(ref_grads, max_norm, p, **kwargs)
        expected = math.nan
    else:
        expected = ref.clip_grad_norm_(ref_grads, max_norm, p, **kwargs)
        assert not math.isfinite(expected)
    for cfg in each_config():
        g = nonfinite_grads(dtype, kind, layout)
        before = snapshot(g)
        if raises:
            with pytest.raises(NonFiniteNormError) as info:
                gradclip.clip_grad_norm_(g, max_norm, p, **kwargs)
            assert isinstance(info.value, FloatingPointError)
            assert isinstance(info.value, RuntimeError)
            assert "non-finite" in str(info.value)
            assert snapshot(g) == before, f"{cfg}: raised after writing"
            continue
        got = gradclip.clip_grad_norm_(g, max_norm, p, **kwargs)
        assert_norm_close(got, expected, p, f"{cfg}")
        if mode == "skip":
            assert snapshot(g) == before, f"{cfg}: skip wrote"
        for i, (a, r) in enumerate(zip(g, ref_grads, strict=True)):
            if a is None:
                continue
            if mode == "zero":
                zeros = a.astype(np.float64)
                assert not np.any(zeros) and not np.any(np.signbit(zeros)), f"[{i}] not +0.0"
            assert_same_values(a, r, f"{cfg} [{i}]")


@pytest.mark.parametrize("mode", ["propagate", "raise", "skip", "zero"])
@pytest.mark.parametrize(("dtype_name", "kind"), NONFINITE_CASES)
def test_nonfinite_per_tensor(dtype_name: str, kind: str, mode: str) -> None:
    dtype = dtype_of(dtype_name)
    p = 1.0 if kind == "overflow" else 2.0
    ref_grads = nonfinite_grads(dtype, kind, "C")
    if mode == "raise":
        with pytest.raises(NonFiniteNormError):
            ref.clip_grad_norm_per_tensor_(ref_grads, 1.0, p, nonfinite=mode)
    else:
        expected = ref.clip_grad_norm_per_tensor_(ref_grads, 1.0, p, nonfinite=mode)
    for cfg in each_config():
        g = nonfinite_grads(dtype, kind, "C")
        before = snapshot(g)
        if mode == "raise":
            with pytest.raises(NonFiniteNormError, match="non-finite"):
                gradclip.clip_grad_norm_per_tensor_(g, 1.0, p, nonfinite=mode)
            assert snapshot(g) == before
            with pytest.raises(NonFiniteNormError):
                gradclip.clip_grad_norm_per_tensor_(g, 1.0, p, error_if_nonfinite=True)
            assert snapshot(g) == before
            continue
        originals = [None if a is None else np.array(a) for a in g]
        got = gradclip.clip_grad_norm_per_tensor_(g, 1.0, p, nonfinite=mode)
        assert_norms_close(got, expected, p, f"{cfg}")
        if mode == "skip":
            assert snapshot(g) == before
        for i, (a, o, r) in enumerate(zip(g, originals, ref_grads, strict=True)):
            if a is None:
                continue
            if mode == "propagate":  # each array by its own coefficient
                assert_same_values(a, expected_scaled(o, 1.0, float(got[i])), f"{cfg} [{i}]")
                assert_ulp_close(a, r, a.dtype, ulps_for(a.dtype), f"{cfg} [{i}] vs reference")
            else:
                assert_same_values(a, r, f"{cfg} [{i}]")


@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
@pytest.mark.parametrize("special", [math.nan, INF])
def test_nonfinite_get_total_norm_and_clip_by_norm(dtype_name: str, special: float) -> None:
    dtype = dtype_of(dtype_name)
    values = random_values(5, (4, 9), scale=2.0)
    values[2, 3] = special
    for p in P_ALL:
        arr = make_array(values, dtype, "C")
        before = snapshot([arr])
        got = gradclip.get_total_norm(arr, p)
        assert_norm_close(got, ref.get_total_norm(arr, p), p)
        with pytest.raises(NonFiniteNormError, match="non-finite"):
            gradclip.get_total_norm(arr, p, error_if_nonfinite=True)
        assert snapshot([arr]) == before
        # clip_by_norm_: only the slice holding the special value is affected by it.
        ref_arr = make_array(values, dtype, "C")
        expected = ref.clip_by_norm_(ref_arr, 1.0, axis=1, norm_type=p)
        got_rows = gradclip.clip_by_norm_(arr, 1.0, axis=1, norm_type=p)
        assert_norms_close(got_rows, expected, p)
        assert_ulp_close(arr, ref_arr, dtype, ulps_for(dtype))
        assert not np.isfinite(got_rows[2]) and np.all(np.isfinite(np.delete(got_rows, 2)))


# ---------------------------------------------------------------------------------------------
# hypothesis: random lists of arrays
# ---------------------------------------------------------------------------------------------

HYP_DTYPES = ["float16", "float32", "float64"] + (["bfloat16"] if HAVE_BF16 else [])


@st.composite
def array_lists(draw: st.DrawFn) -> tuple[list[Any], int]:
    n = draw(st.integers(0, 5))
    specs: list[Any] = []
    for _ in range(n):
        if draw(st.integers(0, 9)) == 0:
            specs.append(None)
            continue
        ndim = draw(st.integers(0, 3))
        shape = tuple(draw(st.lists(st.integers(0, 40), min_size=ndim, max_size=ndim)))
        specs.append(
            (
                draw(st.sampled_from(HYP_DTYPES)),
                shape,
                draw(st.sampled_from(LAYOUTS)),
                draw(st.floats(-3, 3)),  # log10 of the magnitude
                draw(st.sampled_from(["none", "zeros", "subnormal", "tiny", "ties"])),
            )
        )
    return specs, draw(st.integers(0, 2**32 - 1))


def build_hyp(specs: list[Any], seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    out: list[Any] = []
    for spec in specs:
        if spec is None:
            out.append(None)
            continue
        name, shape, layout, log_scale, extra = spec
        values = rng.standard_normal(shape) * 10.0**log_scale
        flat = values.reshape(-1)
        if flat.size:
            k = rng.integers(0, flat.size, size=max(1, flat.size // 4))
            if extra == "zeros":
                flat[k] = rng.choice([0.0, -0.0], size=k.size)
            elif extra == "subnormal":
                flat[k] = {"float16": 3e-6, "bfloat16": 1e-39, "float32": 1e-40}.get(
                    name, 1e-310
                ) * rng.integers(1, 5, size=k.size)
            elif extra == "tiny":
                flat[k] *= 1e-30
            elif extra == "ties":  # few distinct values: exact ties between rounding paths
                flat[k] = rng.integers(-4, 5, size=k.size) * 0.25
        out.append(
            make_array(cast(values, dtype_of(name)).astype(np.float64), dtype_of(name), layout)
        )
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=array_lists(),
    p=st.sampled_from([1.0, 2.0, INF, 0.5, 3.0]),
    max_norm_factor=st.sampled_from([1e-3, 0.1, 0.7, 0.999, 1.5, 1e3]),
    eps=st.sampled_from([1e-6, 0.0, 1e-3]),
)
def test_property_clip_grad_norm(
    case: tuple[list[Any], int], p: float, max_norm_factor: float, eps: float
) -> None:
    specs, seed = case
    ref_grads = build_hyp(specs, seed)
    norm = ref.get_total_norm(ref_grads, p)
    max_norm = max(norm * max_norm_factor, 1e-300) if norm > 0 else 1.0
    expected = ref.clip_grad_norm_(ref_grads, max_norm, p, eps=eps)
    expected_each = ref.tensor_norms(build_hyp(specs, seed), p)
    outcomes = {}
    for cfg in each_config():
        g = build_hyp(specs, seed)
        originals = [None if a is None else np.array(a) for a in g]
        before = snapshot(g)
        got = gradclip.clip_grad_norm_(g, max_norm, p, eps=eps)
        assert_norm_close(got, expected, p, f"{cfg}")
        coef = max_norm / (got + eps) if got + eps > 0 else INF
        if coef >= 1.0:
            assert snapshot(g) == before, f"{cfg}: wrote although coef >= 1"
        for i, (a, o, r) in enumerate(zip(g, originals, ref_grads, strict=True)):
            if a is None:
                continue
            assert_same_values(a, expected_scaled(o, max_norm, got, eps), f"{cfg} [{i}]")
            assert_ulp_close(a, r, a.dtype, ulps_for(a.dtype), f"{cfg} [{i}] vs reference")
        each = gradclip.tensor_norms(build_hyp(specs, seed), p)
        assert_norms_close(each, expected_each, p, f"{cfg} tensor_norms")
        outcomes[cfg] = (bits(got), each.tobytes(), *(a.tobytes() for a in g if a is not None))
    all_equal(outcomes, "property: norms and writes")
    assert len(outcomes) == len(CONFIGS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=array_lists(),
    p=st.sampled_from([1.0, 2.0, INF, 0.5, 3.0]),
    max_norm=st.floats(1e-3, 1e3),
    clip_value=st.floats(0.0, 1e3),
)
def test_property_per_tensor_and_value(
    case: tuple[list[Any], int], p: float, max_norm: float, clip_value: float
) -> None:
    specs, seed = case
    ref_per = build_hyp(specs, seed)
    expected = ref.clip_grad_norm_per_tensor_(ref_per, max_norm, p)
    ref_val = build_hyp(specs, seed)
    ref.clip_grad_value_(ref_val, clip_value)
    outcomes = {}
    for cfg in each_config():
        g = build_hyp(specs, seed)
        originals = [None if a is None else np.array(a) for a in g]
        got = gradclip.clip_grad_norm_per_tensor_(g, max_norm, p)
        assert_norms_close(got, expected, p, f"{cfg}")
        for i, (a, o) in enumerate(zip(g, originals, strict=True)):
            if a is not None:
                assert_same_values(a, expected_scaled(o, max_norm, float(got[i])), f"{cfg} [{i}]")
        v = build_hyp(specs, seed)
        gradclip.clip_grad_value_(v, clip_value)
        for a, r in zip(v, ref_val, strict=True):
            if a is not None:
                if clip_value == 0.0:  # the sign of a clamped zero is not specified
                    assert np.array_equal(a.astype(np.float64), r.astype(np.float64))
                else:
                    assert_same_values(a, r, f"{cfg} clip_grad_value_")
        outcomes[cfg] = (got.tobytes(), *(a.tobytes() for a in g + v if a is not None))
    all_equal(outcomes, "property: per-tensor and value clipping")


@st.composite
def array_and_axis(draw: st.DrawFn) -> tuple[Any, Any, int]:
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    spec = (
        draw(st.sampled_from(HYP_DTYPES)),
        shape,
        draw(st.sampled_from(LAYOUTS)),
        draw(st.floats(-2, 2)),
        draw(st.sampled_from(["none", "zeros", "ties"])),
    )
    if draw(st.booleans()) or ndim == 0:
        axis: Any = None if ndim == 0 or draw(st.booleans()) else draw(st.integers(-ndim, ndim - 1))
    else:
        axes = draw(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim))
        axis = tuple(a - ndim if draw(st.booleans()) else a for a in axes)
    return spec, axis, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=array_and_axis(), p=st.sampled_from([1.0, 2.0, INF, 0.5, 3.0]))
def test_property_clip_by_norm(case: tuple[Any, Any, int], p: float) -> None:
    spec, axis, seed = case
    ref_x = build_hyp([spec], seed)[0]
    slice_norms = [ref.get_total_norm(s, p) for _, s in slices_of(ref_x, axis)]
    max_norm = float(np.median(slice_norms)) if slice_norms and max(slice_norms) > 0 else 1.0
    expected = ref.clip_by_norm_(ref_x, max_norm, axis, p)
    outcomes = {}
    for cfg in each_config():
        x = build_hyp([spec], seed)[0]
        want = np.array(x)
        got = gradclip.clip_by_norm_(x, max_norm, axis, p)
        assert_norms_close(got, expected, p, f"{cfg}")
        for index, part in slices_of(want, axis):
            ref.clip_grads_with_norm_(part, max_norm, float(got[index]))
        assert_same_values(x, want, f"{cfg} writes")
        outcomes[cfg] = (got.tobytes(), x.tobytes())
    all_equal(outcomes, "property: clip_by_norm_")
