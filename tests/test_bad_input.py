# Covers: every bad input, for the compiled package AND gradclip.reference (the `impl`
# fixture), through every function that takes it:
#   - grads entries that are not arrays NumPy can view without a copy (str, dict, a Python list
#     of floats, Python numbers), wrong dtypes (int, uint, bool, complex, object, str, datetime,
#     void, float8, long double, non-native byte order), read-only arrays and buffers, the same
#     array twice, overlapping / interleaved / nested views;
#   - a bad top-level grads (None, str, a number, one int array);
#   - bad scalars: max_norm, clip_value, norm_type, eps, total_norm, nonfinite,
#     error_if_nonfinite conflicts; clip_by_norm_'s x and axis;
#   - non-finite norms with raise: NonFiniteNormError (a FloatingPointError and RuntimeError).
# The bad entries reach one parse whichever operation takes them: the operations x entries
# products are spread (gc_helpers.spread: every operation meets several cases, every case
# several operations); the exhaustive run (GRADCLIP_EXHAUSTIVE=1) has the full products.
# Each: the right exception type, a message naming the argument (and list position where there
# is one), and every array byte-for-byte unchanged afterwards (valid arrays around the bad one
# are large enough that any write before validation would show).
from __future__ import annotations

import math
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from gc_helpers import BF16, HAVE_BF16, snapshot, spread
from operations import BY_NAME, assert_same_outcome, operations

from gradclip import NonFiniteNormError

INF = math.inf
NAN = math.nan

# name -> call with (module, grads), every operation taking a pytree of arrays of any shapes
# (tests/operations.py; clip_per_example_ needs one batch size: test_batched_entry_errors); each
# call would write to the valid arrays used below if it could.
GRAD_FUNCS: dict[str, Callable[[ModuleType, Any], Any]] = {
    op.name: op.call for op in operations(shapes=["any"])
}

# The reading calls (and the functional forms, which return copies) accept read-only memory
# and the same array twice; the others write.
READ_FUNCS = [op.name for op in operations(access=["read", "copy"], shapes=["any"])]
WRITE_FUNCS = [op.name for op in operations(access=["write"], shapes=["any"])]


def good(seed: int, n: int = 37, dtype: Any = np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 50.0).astype(dtype)


def readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class ArrayInterface:
    """Exposes another array's memory through __array_interface__ only."""

    def __init__(self, arr: np.ndarray, readonly: bool = False) -> None:
        self._arr = arr  # keeps the memory alive
        iface = dict(arr.__array_interface__)
        iface["data"] = (iface["data"][0], readonly)
        self.__array_interface__ = iface


def _dtype_cases() -> list[Any]:
    cases: list[Any] = [
        pytest.param(lambda: np.arange(9, dtype=np.int32), id="int32"),
        pytest.param(lambda: np.arange(9, dtype=np.int64), id="int64"),
        pytest.param(lambda: np.arange(9, dtype=np.int8), id="int8"),
        pytest.param(lambda: np.arange(9, dtype=np.uint16), id="uint16"),
        pytest.param(lambda: np.ones(9, dtype=bool), id="bool"),
        pytest.param(lambda: np.ones(9, dtype=np.complex64), id="complex64"),
        pytest.param(lambda: np.ones(9, dtype=np.complex128), id="complex128"),
        pytest.param(lambda: np.array([1.0, None, 2.0], dtype=object), id="object"),
        pytest.param(lambda: np.array(["1.0", "2.0"]), id="unicode"),
        pytest.param(lambda: np.zeros(3, dtype="datetime64[s]"), id="datetime64"),
        pytest.param(lambda: np.zeros(3, dtype="V4"), id="void"),
        pytest.param(lambda: np.ones(9, dtype=">f2"), id="float16-big-endian"),
        pytest.param(lambda: np.ones(9, dtype=">f4"), id="float32-big-endian"),
        pytest.param(lambda: np.ones(9, dtype=">f8"), id="float64-big-endian"),
        pytest.param(
            lambda: np.ones(9, dtype=np.longdouble),
            id="longdouble",
            marks=pytest.mark.skipif(
                np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 here"
            ),
        ),
    ]
    if HAVE_BF16:
        import ml_dtypes

        cases += [
            pytest.param(lambda: np.ones(9, dtype=ml_dtypes.float8_e4m3fn), id="float8_e4m3fn"),
            pytest.param(lambda: np.ones(9, dtype=ml_dtypes.float8_e5m2), id="float8_e5m2"),
        ]
    return cases


DTYPE_CASES = _dtype_cases()

# Entries that cannot be viewed as an array without a copy (or at all).
# Refused by every call: not numbers NumPy reads as floats.
NOT_READABLE_CASES = [
    pytest.param(lambda: "abc", id="str"),
    pytest.param(lambda: np.ma.masked_array(np.ones(3), [0, 1, 0]), id="masked-array"),
    pytest.param(lambda: 7, id="int"),
    pytest.param(object, id="object"),
]
# Refused by writing calls only (no memory to write to); reading calls read them as arrays.
NUMBER_CASES = [
    pytest.param(lambda: {"w": 1.0}, id="dict-of-float"),
    pytest.param(lambda: np.float32(1.0), id="numpy-scalar"),
    pytest.param(lambda: [1.0, 2.0, 3.0], id="list-of-floats"),
    pytest.param(lambda: (1.0, 2.0), id="tuple-of-floats"),
    pytest.param(lambda: 3.0, id="float"),
]


def run_bad(
    impl: ModuleType,
    func: str,
    grads: Any,
    keep: list[Any],
    exc: type[BaseException],
    pattern: str,
) -> None:
    """Call ``func`` on ``grads``: ``exc`` matching ``pattern``, ``keep`` unchanged."""
    before = snapshot(keep)
    with pytest.raises(exc) as info:
        GRAD_FUNCS[func](impl, grads)
    assert type(info.value) is not AssertionError
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} !~ {pattern!r}"
    assert snapshot(keep) == before, "an array changed although the call raised"


# ---------------------------------------------------------------------------------------------
# bad entries in a list of grads
# ---------------------------------------------------------------------------------------------


# Every operation reaches the same parse of an entry: each meets a few of the cases, each case
# several operations (spread; the full product in the exhaustive run). Numbers are refused by
# the writing calls only (the reading calls read them: test_reading_call_reads_numbers).
@pytest.mark.parametrize(
    ("func", "make_bad"),
    spread(GRAD_FUNCS, NOT_READABLE_CASES, per_row=2)
    + spread(WRITE_FUNCS, NUMBER_CASES, per_row=3),
)
def test_entry_not_viewable(impl: ModuleType, func: str, make_bad: Callable[[], Any]) -> None:
    goods = [good(0), good(1, 65, np.float64), good(3, 17, np.float16)]
    grads = [goods[0], goods[1], make_bad(), goods[2]]
    run_bad(impl, func, grads, goods, TypeError, r"grads\[2\]")


@pytest.mark.parametrize("func", READ_FUNCS)
@pytest.mark.parametrize("make_bad", NUMBER_CASES)
def test_reading_call_reads_numbers(
    impl: ModuleType, func: str, make_bad: Callable[[], Any]
) -> None:
    goods = [good(0), good(1, 65, np.float64), good(3, 17, np.float16)]
    number = make_bad()
    leaves = list(number.values()) if isinstance(number, dict) else [number]
    if isinstance(number, (list, tuple)):
        leaves = list(number)
    as_arrays = [np.asarray(x) for x in leaves]
    got = GRAD_FUNCS[func](impl, [goods[0], goods[1], number, goods[2]])
    want = GRAD_FUNCS[func](impl, [goods[0], goods[1], *as_arrays, goods[2]])
    # the copying calls return trees (a dict of numbers comes back a dict): compare values
    np.testing.assert_allclose(_values(got), _values(want), rtol=1e-14)


def _values(x: Any) -> np.ndarray:
    """Every number in a result (arrays, numbers, and trees of them), in leaf order."""
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        parts = [_values(v) for v in x]
        return np.concatenate(parts) if parts else np.zeros(0)
    return np.ravel(np.asarray(x, np.float64))


# One dtype check for every operation: each operation meets about five of the dtypes (an
# integer or bool one and an exotic one among them), each dtype three or four operations.
@pytest.mark.parametrize(("func", "make_bad"), spread(GRAD_FUNCS, DTYPE_CASES, per_row=5))
def test_entry_bad_dtype(impl: ModuleType, func: str, make_bad: Callable[[], Any]) -> None:
    goods = [good(0), good(1, 65, np.float64), good(3, 17, np.float16)]
    bad = make_bad()
    grads = [goods[0], None, bad, goods[1], goods[2]]
    run_bad(impl, func, grads, [*goods, bad], TypeError, r"grads\[2\]")


# Every dtype case once, the operation rotating: the message is made in one place, which
# test_entry_bad_dtype reaches from every operation.
@pytest.mark.parametrize(
    ("func", "make_bad"),
    [
        pytest.param(
            list(GRAD_FUNCS)[i % len(GRAD_FUNCS)], case.values[0], id=case.id, marks=case.marks
        )
        for i, case in enumerate(DTYPE_CASES)
    ],
)
def test_dtype_message_names_dtype(
    impl: ModuleType, func: str, make_bad: Callable[[], Any]
) -> None:
    bad = make_bad()
    run_bad(impl, func, [good(0), bad], [bad], TypeError, r"grads\[1\].*dtype")


READONLY_CASES = [
    pytest.param(lambda: readonly(good(7)), id="flag-cleared"),
    pytest.param(lambda: np.broadcast_to(np.float32(1.0), (5, 4)), id="broadcast_to"),
    pytest.param(lambda: np.frombuffer(bytes(40), dtype=np.float32), id="frombuffer-bytes"),
    pytest.param(lambda: memoryview(bytes(40)).cast("f"), id="memoryview-of-bytes"),
    pytest.param(lambda: ArrayInterface(good(8), readonly=True), id="array-interface-readonly"),
    pytest.param(lambda: readonly(good(9, 12).reshape(3, 4))[:, ::-1], id="view-of-readonly"),
    pytest.param(lambda: readonly(np.zeros((), np.float64)), id="0d"),
]


@pytest.mark.parametrize(("func", "make_bad"), spread(WRITE_FUNCS, READONLY_CASES, per_row=3))
def test_entry_read_only(impl: ModuleType, func: str, make_bad: Callable[[], Any]) -> None:
    goods = [good(0), good(1, 65, np.float64)]
    bad = make_bad()
    grads = [goods[0], None, bad, goods[1]]
    run_bad(impl, func, grads, [*goods, bad], ValueError, r"grads\[2\].*read-only")


@pytest.mark.parametrize(("func", "make_bad"), spread(READ_FUNCS, READONLY_CASES, per_row=3))
def test_reading_call_reads_read_only(
    impl: ModuleType, func: str, make_bad: Callable[[], Any]
) -> None:
    goods = [good(0), good(1, 65, np.float64)]
    bad = make_bad()
    grads = [goods[0], None, bad, goods[1]]
    writable = [goods[0], None, np.array(bad, copy=True), goods[1]]
    assert_same_outcome(GRAD_FUNCS[func](impl, grads), GRAD_FUNCS[func](impl, writable))


def _overlap_cases() -> list[Any]:
    def same_twice() -> tuple[list[Any], list[Any]]:
        a, b = good(0), good(1)
        return [a, b, a], [a, b]

    def same_memory_new_object() -> tuple[list[Any], list[Any]]:
        a, b = good(0), good(1)
        return [a, b, a[:]], [a, b]

    def partial_overlap() -> tuple[list[Any], list[Any]]:
        base, b = good(2, 40), good(3)
        return [b, base[:10], base[5:15]], [base, b]

    def touching_is_fine_but_third_overlaps() -> tuple[list[Any], list[Any]]:
        base = good(4, 40)
        return [base[:10], base[10:20], base[15:25]], [base]

    def nested() -> tuple[list[Any], list[Any]]:
        base = good(7, 40)
        return [base, good(8), base[3:5]], [base]

    def reversed_view() -> tuple[list[Any], list[Any]]:
        base = good(11, 40)
        return [base, good(12), base[::-1]], [base]

    def transposed() -> tuple[list[Any], list[Any]]:
        m = good(13, 40).reshape(8, 5)
        return [m, good(14), m.T], [m]

    def through_memoryview() -> tuple[list[Any], list[Any]]:
        buf = bytearray(np.arange(16, dtype=np.float32).tobytes() * 4)
        a = np.frombuffer(buf, dtype=np.float32)
        return [a, good(15), memoryview(buf).cast("f")], [a]

    def zero_d_inside() -> tuple[list[Any], list[Any]]:
        base = good(16, 10)
        return [base, good(17), base[3, ...]], [base]

    def mixed_dtype_same_memory() -> tuple[list[Any], list[Any]]:
        base = good(18, 10)
        return [base, good(19), base.view(np.float16)], [base]

    return [
        pytest.param(same_twice, r"grads\[(0|2)\]", id="same-array-twice"),
        pytest.param(same_memory_new_object, r"grads\[(0|2)\]", id="same-memory"),
        pytest.param(partial_overlap, r"grads\[(1|2)\]", id="a[:10],a[5:15]"),
        pytest.param(touching_is_fine_but_third_overlaps, r"grads\[(1|2)\]", id="third-overlaps"),
        pytest.param(nested, r"grads\[(0|2)\]", id="a,a[3:5]"),
        pytest.param(reversed_view, r"grads\[(0|2)\]", id="a,a[::-1]"),
        pytest.param(transposed, r"grads\[(0|2)\]", id="m,m.T"),
        pytest.param(through_memoryview, r"grads\[(0|2)\]", id="array+memoryview"),
        pytest.param(zero_d_inside, r"grads\[(0|2)\]", id="0d-inside"),
        pytest.param(mixed_dtype_same_memory, r"grads\[(0|2)\]", id="f32+f16-view"),
    ]


@pytest.mark.parametrize(
    ("func", "make", "pattern"), spread(WRITE_FUNCS, _overlap_cases(), per_row=4)
)
def test_overlap(
    impl: ModuleType, func: str, make: Callable[[], tuple[list[Any], list[Any]]], pattern: str
) -> None:
    grads, keep = make()
    run_bad(impl, func, grads, keep, ValueError, pattern)


@pytest.mark.parametrize(
    ("func", "make", "pattern"), spread(READ_FUNCS, _overlap_cases(), per_row=4)
)
def test_reading_call_reads_overlapping_arrays(
    impl: ModuleType, func: str, make: Callable[[], tuple[list[Any], list[Any]]], pattern: str
) -> None:
    # each array counted as given, as PyTorch, Optax and Chainer sum a repeated one
    grads, keep = make()
    before = snapshot(keep)
    copies = [np.array(g, copy=True) for g in grads]
    # (a copy of a reversed view is read in the other order: the last bit may differ)
    assert_same_outcome(GRAD_FUNCS[func](impl, grads), GRAD_FUNCS[func](impl, copies), rtol=1e-14)
    assert snapshot(keep) == before


@pytest.mark.parametrize("func", GRAD_FUNCS)
def test_adjacent_and_zero_size_views_are_not_overlaps(impl: ModuleType, func: str) -> None:
    """The overlap check must not reject disjoint views (the contract of the check)."""
    base = good(20, 60)
    grads = [base[:20], base[20:40], base[40:], base[5:5], base[10:10], np.zeros(0, np.float32)]
    GRAD_FUNCS[func](impl, grads)  # no exception


BATCHED = [op.name for op in operations(shapes=["batched"])]


@pytest.mark.parametrize("func", BATCHED)
@pytest.mark.parametrize(
    ("make_bad", "exc", "pattern"),
    [
        pytest.param(lambda a: "abc", TypeError, r"grads\[2\]", id="str"),
        pytest.param(lambda a: np.arange(8), TypeError, r"grads\[2\].*dtype", id="int64"),
        pytest.param(lambda a: readonly(good(5, 8)), ValueError, r"grads\[2\].*read-only", id="ro"),
        pytest.param(lambda a: a, ValueError, r"grads\[(0|2)\]", id="same-array-twice"),
        pytest.param(lambda a: a[::-1], ValueError, r"grads\[(0|2)\]", id="a,a[::-1]"),
    ],
)
def test_batched_entry_errors(
    impl: ModuleType, func: str, make_bad: Callable[[Any], Any], exc: type, pattern: str
) -> None:
    """The operations whose arrays share a batch axis: the entry errors of the others, on
    arrays that share one (8 examples)."""
    goods = [good(0, 8), good(1, 8 * 5, np.float64).reshape(8, 5), good(2, 8 * 3, np.float16)]
    goods[2] = goods[2].reshape(8, 3)
    grads = [goods[0], goods[1], make_bad(goods[0]), None, goods[2]]
    before = snapshot(goods)
    with pytest.raises(exc) as info:
        BY_NAME[func].call(impl, grads)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert snapshot(goods) == before, "an array changed although the call raised"


def test_bad_entry_first_and_after_none(impl: ModuleType) -> None:
    a = good(0)
    run_bad(impl, "clip_grad_norm_", [np.arange(3), a], [a], TypeError, r"grads\[0\]")
    run_bad(impl, "clip_grad_norm_", [None, None, None, "x", a], [a], TypeError, r"grads\[3\]")
    run_bad(impl, "clip_grad_norm_", [a, readonly(good(1))], [a], ValueError, r"grads\[1\]")


def test_bad_entry_in_generator(impl: ModuleType) -> None:
    a, b = good(0), good(1)
    gen = (x for x in [a, b, np.arange(4)])
    run_bad(impl, "clip_grad_norm_", gen, [a, b], TypeError, r"grads\[2\]")


def test_first_error_wins_later_valid_arrays_untouched(impl: ModuleType) -> None:
    arrays = [good(i, 70001) for i in range(3)]
    bad = readonly(good(9))
    run_bad(impl, "clip_grad_norm_", [*arrays, bad], arrays, ValueError, r"grads\[3\]")
    run_bad(impl, "clip_grad_value_", [*arrays, "s"], arrays, TypeError, r"grads\[3\]")


# ---------------------------------------------------------------------------------------------
# a bad grads argument as a whole
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("func", GRAD_FUNCS)
@pytest.mark.parametrize(
    "grads",
    [
        pytest.param(None, id="None"),
        pytest.param("abc", id="str"),
        pytest.param(3.5, id="float"),
        pytest.param(4, id="int"),
        pytest.param(object(), id="object"),
    ],
)
def test_grads_not_arrays(impl: ModuleType, func: str, grads: Any) -> None:
    run_bad(impl, func, grads, [], TypeError, r"grads")


@pytest.mark.parametrize("func", GRAD_FUNCS)
def test_single_bad_array(impl: ModuleType, func: str) -> None:
    run_bad(impl, func, np.arange(5), [], TypeError, r"grads")
    a = readonly(good(1))
    if func in READ_FUNCS:
        GRAD_FUNCS[func](impl, a)
    else:
        run_bad(impl, func, a, [a], ValueError, r"grads.*read-only")
    c = np.ones(4, dtype=">f4")
    run_bad(impl, func, c, [c], TypeError, r"grads")


# ---------------------------------------------------------------------------------------------
# bad scalar arguments
# ---------------------------------------------------------------------------------------------

BAD_MAX_NORM = [
    (0, ValueError),
    (0.0, ValueError),
    (-1.0, ValueError),
    (-1e-300, ValueError),
    (NAN, ValueError),
    (INF, ValueError),
    (-INF, ValueError),
    (np.float32("nan"), ValueError),
    ("1.0", TypeError),
    (None, TypeError),
    (1 + 0j, TypeError),
]
BAD_NORM_TYPE = [
    (0, ValueError),
    (0.0, ValueError),
    (-1.0, ValueError),
    (-2.5, ValueError),
    (NAN, ValueError),
    (-INF, ValueError),
    (None, TypeError),
    (2j, TypeError),
    ("2", TypeError),
    ("l2", TypeError),
    ("-inf", TypeError),
]
BAD_EPS = [
    (-1e-09, ValueError),
    (NAN, ValueError),
    (INF, ValueError),
    (-INF, ValueError),
    ("1e-6", TypeError),
    (None, TypeError),
]
BAD_CLIP_VALUE = [
    (-1.0, ValueError),
    (-1e-300, ValueError),
    (NAN, ValueError),
    (INF, ValueError),
    (-INF, ValueError),
    ("0.5", TypeError),
    (None, TypeError),
    (1j, TypeError),
]
BAD_TOTAL_NORM = [
    (-1.0, ValueError),
    (-1e-300, ValueError),
    (-INF, ValueError),
    ("3", TypeError),
    (None, TypeError),
    (3j, TypeError),
]
BAD_NONFINITE = ["bad", "", "RAISE", "Propagate", " skip", None, 1]


def _scalar_cases() -> list[Any]:
    """(function, its keyword arguments with one bad value, argument name, exception)."""
    cases: list[Any] = []

    def add(func: str, kwargs: dict[str, Any], name: str, exc: type[BaseException]) -> None:
        case_id = f"{func}-{name}={kwargs[name]!r}-{exc.__name__}"
        cases.append(pytest.param(func, kwargs, name, exc, id=case_id))

    norm_clips = ["clip_grad_norm_", "clip_grad_norm_per_tensor_", "clip_by_norm_"]
    for func in [*norm_clips, "clip_grads_with_norm_"]:
        for value, exc in BAD_MAX_NORM:
            add(func, {"max_norm": value}, "max_norm", exc)
        for value, exc in BAD_EPS:
            add(func, {"max_norm": 0.5, "eps": value}, "eps", exc)
    for func in [*norm_clips, "get_total_norm", "tensor_norms"]:
        for value, exc in BAD_NORM_TYPE:
            kwargs = {"max_norm": 0.5} if func in norm_clips else {}
            kwargs["norm_type"] = value
            add(func, kwargs, "norm_type", exc)
    for value, exc in BAD_CLIP_VALUE:
        add("clip_grad_value_", {"clip_value": value}, "clip_value", exc)
    for value, exc in BAD_TOTAL_NORM:
        add("clip_grads_with_norm_", {"max_norm": 0.5, "total_norm": value}, "total_norm", exc)
    for func in ["clip_grad_norm_", "clip_grad_norm_per_tensor_"]:
        for value in BAD_NONFINITE:
            add(func, {"max_norm": 0.5, "nonfinite": value}, "nonfinite", ValueError)
        for value in ("skip", "zero"):
            kwargs = {"max_norm": 0.5, "nonfinite": value, "error_if_nonfinite": True}
            add(func, kwargs, "nonfinite", ValueError)
    return cases


@pytest.mark.parametrize(("func", "kwargs", "name", "exc"), _scalar_cases())
def test_bad_scalar(
    impl: ModuleType, func: str, kwargs: dict[str, Any], name: str, exc: type[BaseException]
) -> None:
    # Finite values, so a norm clip with max_norm=0.5 would write if it got that far.
    arrays = [good(0), good(1, 65, np.float64), good(2, 16, np.float16)]
    if func == "clip_grads_with_norm_":
        kwargs = {"total_norm": 100.0, **kwargs}
    before = snapshot(arrays)
    target = arrays[0] if func == "clip_by_norm_" else arrays
    with pytest.raises(exc) as info:
        getattr(impl, func)(target, **kwargs)
    assert name in str(info.value), f"message {str(info.value)!r} does not name {name!r}"
    assert snapshot(arrays) == before


@pytest.mark.parametrize("mode", ["raise", "propagate"])
def test_error_if_nonfinite_agrees_with_raise(impl: ModuleType, mode: str) -> None:
    a = good(0)
    a[3] = np.nan
    before = snapshot([a])
    with pytest.raises(NonFiniteNormError):
        impl.clip_grad_norm_(a, 0.5, error_if_nonfinite=True, nonfinite=mode)
    assert snapshot([a]) == before


# ---------------------------------------------------------------------------------------------
# clip_by_norm_: x and axis
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_x", "exc", "pattern"),
    [
        pytest.param(lambda: np.arange(12).reshape(3, 4), TypeError, r"\bx\b", id="int"),
        pytest.param(lambda: np.ones((3, 4), ">f4"), TypeError, r"\bx\b", id="big-endian"),
        pytest.param(lambda: np.ones(3, np.complex128), TypeError, r"\bx\b", id="complex"),
        pytest.param(lambda: readonly(good(1, 12)), ValueError, r"\bx\b.*read-only", id="ro"),
        pytest.param(lambda: None, TypeError, r"\bx\b", id="None"),
        pytest.param(lambda: [1.0, 2.0], TypeError, r"\bx\b", id="list-of-floats"),
        pytest.param(lambda: [good(2), good(3)], TypeError, r"\bx\b", id="list-of-arrays"),
        pytest.param(lambda: "abc", TypeError, r"\bx\b", id="str"),
        pytest.param(lambda: 2.0, TypeError, r"\bx\b", id="float"),
    ],
)
def test_clip_by_norm_bad_x(
    impl: ModuleType, make_x: Callable[[], Any], exc: type[BaseException], pattern: str
) -> None:
    x = make_x()
    if isinstance(x, np.ndarray):
        keep = [x]
    else:
        keep = [a for a in x if isinstance(a, np.ndarray)] if isinstance(x, list) else []
    before = snapshot(keep)
    with pytest.raises(exc) as info:
        impl.clip_by_norm_(x, 0.5)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert snapshot(keep) == before


@pytest.mark.parametrize(
    ("axis", "exc"),
    [
        (2, ValueError),
        (-3, ValueError),
        ((0, 2), ValueError),
        ((0, 0), ValueError),
        ((1, -1), ValueError),
        ((0, 1, 0), ValueError),
        (1.5, TypeError),
        ("0", TypeError),
        ((0, 1.0), TypeError),
    ],
    ids=repr,
)
def test_clip_by_norm_bad_axis(impl: ModuleType, axis: Any, exc: type[BaseException]) -> None:
    x = good(3, 20).reshape(4, 5)
    before = snapshot([x])
    with pytest.raises(exc) as info:
        impl.clip_by_norm_(x, 0.5, axis=axis)
    assert "axis" in str(info.value) or exc is TypeError
    assert snapshot([x]) == before


def test_clip_by_norm_bad_axis_0d(impl: ModuleType) -> None:
    x = np.array(5.0)
    with pytest.raises(ValueError, match="out of bounds"):
        impl.clip_by_norm_(x, 0.5, axis=0)
    assert x == 5.0


# ---------------------------------------------------------------------------------------------
# non-finite norms asked to raise
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [2.0, 1.0, INF, 3.0], ids=str)
@pytest.mark.parametrize("special", [NAN, INF, -INF], ids=str)
def test_nonfinite_raise(impl: ModuleType, p: float, special: float) -> None:
    arrays = [good(0), good(1, 65, np.float64), good(2, 33, np.float16)]
    arrays[1][40] = special
    if HAVE_BF16:
        arrays.append(good(3, 17).astype(BF16))
    before = snapshot(arrays)
    order = "inf" if math.isinf(p) else rf"{int(p)}(\.0)?"
    calls = [
        lambda: impl.get_total_norm(arrays, p, error_if_nonfinite=True),
        lambda: impl.clip_grad_norm_(arrays, 0.5, p, error_if_nonfinite=True),
        lambda: impl.clip_grad_norm_(arrays, 0.5, p, nonfinite="raise"),
        lambda: impl.clip_grad_norm_per_tensor_(arrays, 0.5, p, nonfinite="raise"),
        lambda: impl.clip_grad_norm_per_tensor_(arrays, 0.5, p, error_if_nonfinite=True),
    ]
    for call in calls:
        with pytest.raises(NonFiniteNormError) as info:
            call()
        assert isinstance(info.value, FloatingPointError)
        assert isinstance(info.value, RuntimeError)
        message = str(info.value)
        assert "non-finite" in message, message
        assert re.search(order, message), f"{message!r} does not name the norm order {p}"
        assert snapshot(arrays) == before
    # Without a request to raise, the same inputs do not raise (and get_total_norm reports).
    got = impl.get_total_norm(arrays, p)
    assert math.isnan(got) if math.isnan(special) else got == INF
