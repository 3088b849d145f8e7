# Covers: the accepted forms of the grads argument, for the compiled package and
# gradclip.reference (the `impl` fixture), across CPU targets and thread counts where the
# compiled path is involved:
#   - empty input (empty list/tuple, all None, only zero-size arrays): norm 0.0, nothing
#     written, per-array outputs aligned with the input;
#   - generators (consumed once; an empty/exhausted one warns UserWarning) and other iterables;
#   - None entries (skipped, 0.0 at their position), 0-d arrays (one element);
#   - objects NumPy views without a copy, modified in place: memoryview of a bytearray,
#     array.array, an object exposing __array_interface__, CPU torch tensors (incl. strided);
#   - scalar arguments given as NumPy scalars or ints; return types.
from __future__ import annotations

import array
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from gc_helpers import BF16, HAVE_BF16, assert_same_values, needs_bf16, snapshot
from operations import assert_same_outcome, operations

import gradclip
from gradclip import reference as ref

# Every operation taking grads (tests/operations.py), called with arguments that would write if
# it could.
CALLS: dict[str, Callable[[ModuleType, Any], Any]] = {
    op.name: op.call for op in operations(shapes=["any", "batched"])
}


def check_empty_result(func: str, result: Any, n_positions: int) -> None:
    if func in ("get_total_norm", "clip_grad_norm_"):
        assert type(result) is float and result == 0.0
    elif func in ("tensor_norms", "clip_grad_norm_per_tensor_"):
        assert isinstance(result, np.ndarray) and result.dtype == np.float64
        assert result.shape == (n_positions,) and not result.any()
    elif func in ("clip_grads_with_norm_", "clip_grad_value_", "adaptive_grad_clip_"):
        assert result is None


@pytest.mark.parametrize("func", CALLS)
@pytest.mark.parametrize(
    ("make", "n_positions"),
    [
        pytest.param(lambda: [], 0, id="empty-list"),
        pytest.param(lambda: (), 0, id="empty-tuple"),
        pytest.param(lambda: [None, None], 2, id="all-None"),
        pytest.param(lambda: [np.zeros(0, np.float32)], 1, id="zero-size"),
        pytest.param(
            # one batch size (3) along axis 0, for the batched operations
            lambda: [np.zeros((3, 0), np.float64), None, np.zeros((3, 2, 0), np.float16)],
            3,
            id="zero-size-mixed",
        ),
        pytest.param(lambda: np.zeros((4, 0), np.float32), 1, id="single-zero-size"),
        pytest.param({}.values, 0, id="empty-dict-values"),
    ],
)
def test_empty_input(
    impl: ModuleType,
    func: str,
    make: Callable[[], Any],
    n_positions: int,
) -> None:
    grads = make()
    result = CALLS[func](impl, grads)
    check_empty_result(func, result, n_positions)
    # every operation, whatever its result: what the reference gives
    assert_same_outcome(result, CALLS[func](ref, make()))


@pytest.mark.parametrize("func", CALLS)
def test_empty_generator_warns(impl: ModuleType, func: str) -> None:
    with pytest.warns(UserWarning, match="empty generator") as record:
        result = CALLS[func](impl, (g for g in []))
    check_empty_result(func, result, 0)
    # the warning names the caller's line (the registry's call), not one inside gradclip (AGC's
    # call passes the same generator as its parameters too: one warning for each argument)
    assert {os.path.basename(w.filename) for w in record} == {"operations.py"}
    exhausted = (g for g in [np.ones(3, np.float32)])
    list(exhausted)
    with pytest.warns(UserWarning, match="empty generator"):
        result = CALLS[func](impl, exhausted)
    check_empty_result(func, result, 0)


# (AGC's registry call builds its parameters from the structure of grads: a generator has none)
@pytest.mark.parametrize("func", [f for f in CALLS if f != "adaptive_grad_clip_"])
def test_generator_gives_what_the_list_gives(impl: ModuleType, func: str) -> None:
    # every operation reads a generator once and does with its arrays what it does with the
    # list of them (clip_per_example_ once read a generator twice, wrote with the first read
    # and then raised on the second, empty one)
    def fresh() -> list[Any]:
        return [np.full((3, 5), 2.0, np.float32), None, np.full((3, 7), -1.0, np.float64)]

    listed, generated = fresh(), fresh()
    want = CALLS[func](impl, listed)
    got = CALLS[func](impl, (x for x in generated))
    assert_same_outcome(got, want)
    for a, b in zip(generated, listed, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_generator_is_consumed_once_and_clipped(impl: ModuleType) -> None:
    a = np.full(16, 3.0, np.float32)
    b = np.full(9, 4.0, np.float64)
    consumed = []

    def gen() -> Iterator[np.ndarray]:
        for x in (a, None, b):
            consumed.append(x)
            yield x  # type: ignore[misc]

    norm = impl.clip_grad_norm_(gen(), 1.0, eps=0.0)
    assert len(consumed) == 3
    assert norm == pytest.approx(math.sqrt(16 * 9 + 9 * 16), rel=1e-15)
    assert impl.get_total_norm([a, b]) == pytest.approx(1.0, rel=1e-6)
    assert impl.tensor_norms(x for x in (None, a)).tolist()[0] == 0.0


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(list, id="list"),
        pytest.param(tuple, id="tuple"),
        pytest.param(deque, id="deque"),
        pytest.param(iter, id="iterator"),
        pytest.param(lambda xs: (x for x in xs), id="generator"),
        pytest.param(lambda xs: dict(enumerate(xs)).values(), id="dict-values"),
        pytest.param(lambda xs: (x for x in xs), id="map"),
    ],
)
def test_iterables(impl: ModuleType, wrap: Callable[[list[Any]], Any]) -> None:
    def fresh() -> list[Any]:
        return [np.full((3, 5), 2.0, np.float32), None, np.full(7, -1.0, np.float64)]

    expected_arrays = fresh()
    expected = ref.clip_grad_norm_(list(expected_arrays), 0.25)
    arrays = fresh()
    got = impl.clip_grad_norm_(wrap(arrays), 0.25)
    assert got == pytest.approx(expected, rel=1e-14)
    for a, e in zip(arrays, expected_arrays, strict=True):
        if a is not None:
            np.testing.assert_allclose(a, e, rtol=1e-6)
    norms = impl.tensor_norms(wrap(fresh()))
    assert norms.shape == (3,) and norms[1] == 0.0


def test_none_entries_keep_positions(impl: ModuleType) -> None:
    a = np.full(4, 3.0, np.float32)  # norm 6
    b = np.full(1, 8.0, np.float64)  # norm 8
    norms = impl.tensor_norms([None, a, None, None, b])
    assert norms.tolist() == [0.0, 6.0, 0.0, 0.0, 8.0]
    norms = impl.clip_grad_norm_per_tensor_([None, a, None, b], 7.0, eps=0.0)
    assert norms.tolist() == [0.0, 6.0, 0.0, 8.0]
    assert a.tolist() == [3.0] * 4  # coef 7/6 >= 1: untouched
    assert b.tolist() == [7.0]
    assert impl.get_total_norm([None, a, None]) == 6.0


@pytest.mark.parametrize("dtype_name", ["float16", "float32", "float64"])
def test_zero_d_arrays(impl: ModuleType, dtype_name: str) -> None:
    x = np.array(-8.0, dtype=dtype_name)
    assert impl.get_total_norm(x) == 8.0
    assert impl.tensor_norms(x).tolist() == [8.0]
    assert impl.clip_grad_norm_(x, 2.0, eps=0.0) == 8.0
    assert x.shape == () and float(x) == -2.0
    impl.clip_grad_value_(x, 0.5)
    assert float(x) == -0.5
    ys = [np.array(3.0, dtype_name), np.array(4.0, dtype_name)]
    assert impl.clip_grad_norm_(ys, 1.0, eps=0.0) == 5.0
    assert [float(y) for y in ys] == pytest.approx([0.6, 0.8], rel=1e-3)
    z = np.array(5.0, dtype_name)
    norms = impl.clip_by_norm_(z, 1.0, eps=0.0)
    assert isinstance(norms, np.ndarray) and norms.shape == () and float(norms) == 5.0
    assert float(z) == 1.0


@needs_bf16
def test_zero_d_bfloat16(impl: ModuleType) -> None:
    x = np.array(-8.0, dtype=BF16)
    assert impl.clip_grad_norm_(x, 2.0, eps=0.0) == 8.0
    assert float(x) == -2.0


# ---------------------------------------------------------------------------------------------
# objects NumPy views without a copy: modified in place
# ---------------------------------------------------------------------------------------------


class ArrayInterface:
    """Exposes an ndarray's memory through __array_interface__ only."""

    def __init__(self, arr: np.ndarray) -> None:
        self._arr = arr
        self.__array_interface__ = arr.__array_interface__


def _viewables() -> list[Any]:
    """(make the object, read its current values as float64) pairs."""

    def mv() -> tuple[Any, Callable[[], np.ndarray]]:
        buf = bytearray(np.linspace(-9, 9, 24, dtype=np.float32).tobytes())
        return memoryview(buf).cast("f"), lambda: np.frombuffer(buf, np.float32).astype(float)

    def mv_2d() -> tuple[Any, Callable[[], np.ndarray]]:
        buf = bytearray(np.linspace(-9, 9, 24, dtype=np.float64).tobytes())
        obj = memoryview(buf).cast("B").cast("d", shape=[4, 6])
        return obj, lambda: np.frombuffer(buf, np.float64).astype(float)

    def arr_d() -> tuple[Any, Callable[[], np.ndarray]]:
        a = array.array("d", np.linspace(-5, 7, 33).tolist())
        return a, lambda: np.array(a.tolist())

    def arr_f() -> tuple[Any, Callable[[], np.ndarray]]:
        a = array.array("f", np.linspace(-5, 7, 17).tolist())
        return a, lambda: np.array(a.tolist())

    def iface() -> tuple[Any, Callable[[], np.ndarray]]:
        base = np.linspace(-3, 4, 20, dtype=np.float32).reshape(4, 5)
        return ArrayInterface(base), lambda: base.astype(float).ravel()

    def iface_strided() -> tuple[Any, Callable[[], np.ndarray]]:
        base = np.linspace(-3, 4, 40, dtype=np.float64).reshape(4, 10)
        return ArrayInterface(base[:, ::3]), lambda: base[:, ::3].astype(float).ravel()

    return [
        pytest.param(mv, id="memoryview-bytearray-f"),
        pytest.param(mv_2d, id="memoryview-2d-d"),
        pytest.param(arr_d, id="array.array-d"),
        pytest.param(arr_f, id="array.array-f"),
        pytest.param(iface, id="__array_interface__"),
        pytest.param(iface_strided, id="__array_interface__-strided"),
    ]


@pytest.mark.parametrize("how", ["single", "in-list"])
@pytest.mark.parametrize("make", _viewables())
def test_viewable_objects_modified_in_place(
    impl: ModuleType, make: Callable[[], tuple[Any, Callable[[], np.ndarray]]], how: str
) -> None:
    obj, read = make()
    values = read()
    ndarray_twin = values.copy()
    norm = impl.clip_grad_norm_(obj if how == "single" else [None, obj], 1.0, eps=0.0)
    assert norm == pytest.approx(float(np.linalg.vector_norm(values)), rel=1e-14)
    after = read()
    assert not np.array_equal(after, values), "the object was not modified in place"
    np.testing.assert_allclose(after, ndarray_twin / norm, rtol=1e-6)
    # The other functions accept it too, and agree with the same data as an ndarray.
    assert impl.get_total_norm([obj]) == pytest.approx(1.0, rel=1e-6)
    impl.clip_grad_value_(obj, 0.01)
    assert np.all(np.abs(read()) <= 0.01 * (1 + 1e-6))


def test_viewable_objects_compiled_all_configs(cpu_target: str, threads: int) -> None:
    buf = bytearray(np.linspace(-9, 9, 1001, dtype=np.float32).tobytes())
    mv = memoryview(buf).cast("f")
    a = array.array("d", np.linspace(-5, 7, 333).tolist())
    expected = [np.frombuffer(buf, np.float32).copy(), np.array(a.tolist())]
    expected_norm = ref.clip_grad_norm_(expected, 2.0)
    norm = gradclip.clip_grad_norm_([mv, a], 2.0)
    assert norm == pytest.approx(expected_norm, rel=1e-12)
    assert_same_values(np.frombuffer(buf, np.float32), expected[0])
    np.testing.assert_allclose(np.array(a.tolist()), expected[1], rtol=1e-12)


@pytest.mark.parametrize("dtype_name", ["float32", "float64", "float16", "bfloat16"])
def test_torch_cpu_tensor_modified_in_place(impl: ModuleType, dtype_name: str) -> None:
    torch = pytest.importorskip("torch", exc_type=ImportError)
    if dtype_name == "bfloat16" and not HAVE_BF16:
        pytest.skip("ml_dtypes (bfloat16) is not installed")
    tdtype = getattr(torch, dtype_name)
    t = torch.linspace(-4, 4, 48, dtype=torch.float64).to(tdtype).reshape(6, 8)
    original = t.to(torch.float64).numpy().copy()
    strided = torch.linspace(-4, 4, 40, dtype=torch.float64).to(tdtype).reshape(4, 10)
    view = strided[:, ::3]  # non-contiguous: still a view NumPy can use
    view_original = view.to(torch.float64).numpy().copy()
    strided_original = strided.clone()
    norm = impl.clip_grad_norm_([t, view], 1.0, eps=0.0)
    expected = float(np.sqrt((original**2).sum() + (view_original**2).sum()))
    assert norm == pytest.approx(expected, rel=1e-12)
    scaled = t.to(torch.float64).numpy()
    np.testing.assert_allclose(scaled, original / norm, rtol=1e-2 if "16" in dtype_name else 1e-6)
    np.testing.assert_allclose(
        view.to(torch.float64).numpy(),
        view_original / norm,
        rtol=1e-2 if "16" in dtype_name else 1e-6,
    )
    for j in range(10):
        if j % 3:  # columns between the view's columns: not written
            assert torch.equal(strided[:, j], strided_original[:, j]), j


def test_torch_tensor_requiring_grad_is_rejected(impl: ModuleType) -> None:
    torch = pytest.importorskip("torch", exc_type=ImportError)
    a = np.full(5, 10.0, np.float32)
    t = torch.full((5,), 10.0, requires_grad=True)
    before = snapshot([a])
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        impl.clip_grad_norm_([a, t], 1.0)
    assert snapshot([a]) == before
    assert torch.equal(t.detach(), torch.full((5,), 10.0))


# ---------------------------------------------------------------------------------------------
# scalar argument types and return types
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "max_norm", [1, 1.0, np.float32(1.0), np.float64(1.0), np.int64(1), np.float16(1.0)], ids=repr
)
@pytest.mark.parametrize("norm_type", [2, 2.0, np.float64(2.0), np.int32(2)], ids=repr)
def test_scalar_argument_types(impl: ModuleType, max_norm: Any, norm_type: Any) -> None:
    x = np.full(9, 2.0, np.float32)
    assert impl.clip_grad_norm_(x, max_norm, norm_type, eps=np.float64(0.0)) == 6.0
    np.testing.assert_allclose(x, np.full(9, 1.0 / 3.0), rtol=1e-7)
    assert impl.get_total_norm(x, norm_type=norm_type) == pytest.approx(1.0, rel=1e-7)


@pytest.mark.parametrize("p", [math.inf, float("inf"), np.inf, np.float32("inf")], ids=repr)
def test_inf_norm_type(impl: ModuleType, p: Any) -> None:
    x = np.array([1.0, -7.5, 3.0], np.float32)
    original = x.copy()
    assert impl.get_total_norm(x, p) == 7.5
    assert impl.clip_grad_norm_(x, 1.5, p, eps=0.0) == 7.5
    assert_same_values(x, original * np.float32(1.5 / 7.5))


def test_return_types(impl: ModuleType) -> None:
    g = [np.ones(5, np.float32), np.ones((2, 3), np.float64)]
    assert type(impl.get_total_norm(g)) is float
    assert type(impl.clip_grad_norm_(g, 100.0)) is float
    assert impl.clip_grads_with_norm_(g, 1.0, 2.0) is None
    assert impl.clip_grad_value_(g, 1.0) is None
    for out in (impl.tensor_norms(g), impl.clip_grad_norm_per_tensor_(g, 100.0)):
        assert type(out) is np.ndarray and out.dtype == np.float64 and out.shape == (2,)
    norms = impl.clip_by_norm_(g[1], 100.0, axis=0)
    assert type(norms) is np.ndarray and norms.dtype == np.float64 and norms.shape == (3,)
    norms = impl.clip_by_norm_(g[1], 100.0)
    assert type(norms) is np.ndarray and norms.shape == ()
