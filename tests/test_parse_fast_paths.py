# Covers the per-call shortcuts of the free functions: clip_grad_norm_'s inline argument
# checks for the common call, the compiled parse's one-pass reading of a flat list of plain
# ndarrays, and the overlap check's remembered address order. Each must give what the
# general path gives: the same results, the same errors naming the same positions, and
# nothing written when a call is refused.
from __future__ import annotations

import math

import numpy as np
import pytest

import gradclip
from gradclip import reference


def _arrays(n: int, size: int = 7, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(size).astype(np.float32) for _ in range(n)]


def _by_address(arrays: list[np.ndarray], reverse: bool = False) -> list[np.ndarray]:
    return sorted(arrays, key=lambda a: a.__array_interface__["data"][0], reverse=reverse)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"norm_type": 2.0},
        {"norm_type": math.inf},
        {"norm_type": 3},  # an int: the general path
        {"norm_type": "fro"},
        {"eps": 0.0},
        {"nonfinite": "skip"},
        {"error_if_nonfinite": True},
        {"return_result": True},
    ],
)
def test_common_call_matches_the_general_path(kwargs: dict) -> None:
    g = _arrays(5)
    want = [a.copy() for a in g]
    norm = gradclip.clip_grad_norm_(g, 0.5, **kwargs)
    want_norm = reference.clip_grad_norm_(
        want, 0.5, **{k: v for k, v in kwargs.items() if k != "return_result"}
    )
    got = norm.total_norm if kwargs.get("return_result") else norm
    assert type(got) is float
    assert got == pytest.approx(want_norm, rel=1e-12)
    for a, b in zip(g, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_norm": math.nan}, ValueError, "max_norm must be finite and > 0, got nan"),
        ({"max_norm": math.inf}, ValueError, "max_norm must be finite and > 0, got inf"),
        ({"max_norm": -1.0}, ValueError, "max_norm must be finite and > 0"),
        ({"max_norm": 0.0}, ValueError, "max_norm must be finite and > 0"),
        ({"norm_type": math.nan}, ValueError, "norm_type must be > 0 or inf, got nan"),
        ({"norm_type": -2.0}, ValueError, "norm_type must be > 0 or inf"),
        ({"eps": -1e-6}, ValueError, "eps must be finite and >= 0"),
        ({"eps": math.inf}, ValueError, "eps must be finite and >= 0"),
        ({"nonfinite": "propagatex"}, ValueError, "nonfinite must be one of"),
        ({"error_if_nonfinite": np.zeros(2)}, TypeError, "error_if_nonfinite must be a bool"),
    ],
)
def test_common_call_refuses_what_the_checks_refuse(kwargs, error, match) -> None:
    g = _arrays(3)
    before = [a.copy() for a in g]
    args = {"max_norm": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        gradclip.clip_grad_norm_(g, **args)
    for a, b in zip(g, before, strict=True):
        np.testing.assert_array_equal(a, b)


class _Propagate(str):
    """A str subclass equal to "propagate": the general path's rules decide for it."""


def test_a_propagate_lookalike_takes_the_general_path() -> None:
    g = _arrays(2)
    want = reference.clip_grad_norm_([a.copy() for a in g], 0.1)
    assert gradclip.clip_grad_norm_(g, 0.1, nonfinite=_Propagate("propagate")) == pytest.approx(
        want, rel=1e-12
    )


@pytest.mark.parametrize("container", [list, tuple])
def test_plain_list_with_a_bad_dtype_names_it(container) -> None:
    g = _arrays(4)
    g[2] = np.zeros(3, np.int32)
    with pytest.raises(TypeError, match=r"grads\[2\] has dtype int32"):
        gradclip.clip_grad_norm_(container(g), 0.1)
    g[2] = np.zeros(3, ">f4")
    with pytest.raises(TypeError, match=r"grads\[2\] has non-native byte order"):
        gradclip.clip_grad_norm_(container(g), 0.1)


def test_plain_list_mixed_layouts_none_and_dtypes() -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 8))
    g = [
        None,
        base[:, ::2].copy(order="F"),  # dense, F order
        base[::2, 1::3],  # strided (the general layout path)
        None,
        rng.standard_normal(5).astype(np.float16),
        np.full((), 1.5, np.float32),  # 0-d
        np.zeros(0, np.float32),  # zero-size
        rng.standard_normal((3, 2)).astype(np.float32)[::-1],  # reversed dense block
    ]
    want = [None if a is None else a.copy() for a in g]
    norms = gradclip.tensor_norms(g)
    np.testing.assert_allclose(norms, reference.tensor_norms(want), rtol=1e-12)
    norm = gradclip.clip_grad_norm_(g, 0.01)
    assert norm == pytest.approx(reference.clip_grad_norm_(want, 0.01), rel=1e-12)
    for a, b in zip(g, want, strict=True):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=2e-3)
    assert base.sum() != 0  # the strided view's base was written through


def test_plain_list_read_only_array_is_named_after_a_read() -> None:
    g = _arrays(3)
    g[1].flags.writeable = False
    gradclip.get_total_norm(g)  # a read takes it
    before = [a.copy() for a in g]
    with pytest.raises(ValueError, match=r"grads\[1\] is read-only"):
        gradclip.clip_grad_norm_(g, 1e-3)
    for a, b in zip(g, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_plain_list_stride0_view_is_refused() -> None:
    g = [*_arrays(2), np.broadcast_to(np.ones(1, np.float32), (4,))]
    with pytest.raises(ValueError, match=r"grads\[2\] (is read-only|has elements that share)"):
        gradclip.clip_grad_norm_(g, 1e-3)
    buf = np.ones(1, np.float32)
    g[2] = np.lib.stride_tricks.as_strided(buf, shape=(4,), strides=(0,))
    with pytest.raises(ValueError, match=r"grads\[2\] has elements that share memory"):
        gradclip.clip_grad_norm_(g, 1e-3)


@pytest.mark.parametrize("reverse", [False, True])
def test_overlap_found_after_the_order_was_remembered(reverse: bool) -> None:
    """The same list clipped twice (the second call takes the first's order), then the same
    number of arrays with two sharing memory: found, named, nothing written."""
    g = _by_address(_arrays(6), reverse)
    gradclip.clip_grad_norm_(g, 1e9)
    gradclip.clip_grad_norm_(g, 1e9)
    buf = np.arange(10, dtype=np.float32)
    bad = [*g[:4], buf[:6], buf[4:]]
    before = [a.copy() for a in bad]
    with pytest.raises(ValueError, match=r"grads\[4\] and grads\[5\] overlap in memory"):
        gradclip.clip_grad_norm_(bad, 1e-3)
    for a, b in zip(bad, before, strict=True):
        np.testing.assert_array_equal(a, b)
    # the same array twice, at the same positions as an earlier call's arrays
    twice = [*g[:5], g[1]]
    with pytest.raises(ValueError, match=r"grads\[1\] and grads\[5\] are the same memory"):
        gradclip.clip_grad_norm_(twice, 1e-3)


def test_remembered_order_with_other_sizes_and_orders() -> None:
    """Calls alternating between lists of different lengths and orders of the same arrays
    all clip as the reference does, and an overlap in any of them is found."""
    g = _arrays(9, size=5, seed=4)
    orders = [g, g[::-1], _by_address(g), g[3:], g[:2], [g[4], g[0], g[8], g[2]]]
    for _ in range(2):
        for lst in orders:
            want = [a.copy() for a in lst]
            norm = gradclip.clip_grad_norm_(lst, 1e9)
            assert norm == pytest.approx(reference.get_total_norm(want), rel=1e-12)
    buf = np.zeros(8, np.float32)
    for lst in orders:
        if len(lst) < 2:
            continue
        bad = list(lst)
        bad[-1] = buf[2:]
        bad[0] = buf[:3]
        with pytest.raises(ValueError, match=rf"grads\[0\] and grads\[{len(bad) - 1}\] overlap"):
            gradclip.clip_grad_norm_(bad, 1e-3)


def test_interleaved_views_are_still_accepted_every_call() -> None:
    """Views whose bounds intersect without sharing an element (decided exactly) are
    accepted on every call, before and after a remembered order."""
    buf = np.ones(20, np.float32)
    views = [buf[0::2], buf[1::2]]
    for _ in range(3):
        gradclip.clip_grad_norm_(views, 1e9)
    assert gradclip.clip_grad_norm_(views, 1.0) == pytest.approx(math.sqrt(20))
    np.testing.assert_allclose(np.linalg.norm(buf), 1.0, rtol=1e-6)


def _lists_of(lengths, dtypes, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dt) for n, dt in zip(lengths, dtypes, strict=True)]


def test_plans_lent_between_calls_match_fresh_ones() -> None:
    """One-shot calls that repeat the previous call's lengths and types borrow its plans:
    every call gives the bits a GradientSet over the same arrays gives, and a call whose
    lengths or types differ (same count) is planned for its own."""
    f32, f64 = np.float32, np.float64
    # several 64 KiB chunks, arrays split across chunk boundaries at different places
    cases = [
        ([40_000, 30_000, 50_000], [f32, f32, f32]),
        ([40_000, 30_000, 50_000], [f32, f32, f32]),
        ([40_000, 30_000, 50_000], [f32, f32, f32]),
        ([50_000, 30_000, 40_000], [f32, f32, f32]),  # same count and types, other lengths
        ([50_000, 30_000, 40_000], [f32, f64, f32]),  # same lengths, another type
        ([50_000, 30_000, 40_000], [f32, f64, f32]),
        ([50_000, 30_000, 40_000], [np.float16, f64, f32]),
    ]
    for i, (lengths, dtypes) in enumerate(cases):
        g = _lists_of(lengths, dtypes, seed=i)
        set_norm = gradclip.GradientSet(g).total_norm()
        assert gradclip.get_total_norm(g) == set_norm
        assert gradclip.get_total_norm(g) == set_norm
        np.testing.assert_array_equal(
            gradclip.tensor_norms(g), gradclip.GradientSet(g).tensor_norms()
        )
        assert set_norm == pytest.approx(reference.get_total_norm(g), rel=1e-12)
        want = [a.copy() for a in g]
        twin = [a.copy() for a in g]
        assert gradclip.clip_grad_norm_(g, 1.0) == set_norm
        gradclip.GradientSet(twin).clip_norm_(1.0)
        reference.clip_grad_norm_(want, 1.0)
        for a, b, c in zip(g, twin, want, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, c, rtol=2e-3 if a.dtype == np.float16 else 1e-6)


def test_lent_plans_on_threads() -> None:
    """Free-function calls on several threads at once (each takes the one kept plan or builds
    its own) give the single-threaded bits."""
    import threading

    lists = [_lists_of([3000, 70_000, 5], [np.float32] * 3, seed=s) for s in range(4)]
    want = [gradclip.GradientSet(g).total_norm() for g in lists]
    errors: list[str] = []

    def work(k: int) -> None:
        for _ in range(200):
            got = gradclip.get_total_norm(lists[k])
            if got != want[k]:
                errors.append(f"list {k}: {got!r} != {want[k]!r}")
                return

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_gradient_set_common_call_skips_the_general_checks(monkeypatch) -> None:
    """GradientSet.clip_norm_'s common call (float arguments, the defaults) takes the inline
    path: the general argument checks are not called (an argument passed in the wrong order
    to the inline check once sent every call down the general path)."""
    import gradclip._api as api

    calls = []
    general = api.norm_args

    def spy(*args):
        calls.append(args)
        return general(*args)

    monkeypatch.setattr(api, "norm_args", spy)
    grads = [np.ones(10, np.float32) for _ in range(3)]
    gradclip.GradientSet(grads).clip_norm_(1.0)
    assert calls == []
    gradclip.GradientSet(grads).clip_norm_(1)  # an int takes the general path
    assert len(calls) == 1
