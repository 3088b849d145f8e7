# Covers: the views gradclip.torch keeps between calls (the drop-ins' cache, per model, and
# GradClipper's): once two calls see the same gradient tensors, later calls go through a kept
# GradientSet, and every way a gradient can change under it is noticed before anything is
# read or written: zero_grad(set_to_none=True) and a new backward (new tensors, possibly at
# reused ids and addresses), p.grad = new tensor, p.grad.data = other (a storage swap), set_,
# resize_, as_strided_, a dtype changed in place, a strided gradient's strides; the kept
# views never hold gradient memory (freed at zero_grad as without gradclip); sets are never
# kept over a tensor seen twice, nor over overlapping tensors read by get_total_norm.
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pytest
from gc_helpers import HAVE_BF16

torch = pytest.importorskip("torch", exc_type=ImportError)
import gradclip.torch as gt  # noqa: E402
from gradclip.torch import _cache  # noqa: E402

tu = torch.nn.utils


def model_with_grads(seed: int = 0, dtype: Any = torch.float32) -> Any:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Linear(4, 2)
    ).to(dtype)
    backward(model, seed)
    return model


def backward(model: Any, seed: int) -> None:
    torch.manual_seed(100 + seed)
    dtype = next(model.parameters()).dtype
    (model(torch.randn(8, 6, dtype=dtype)) ** 2).sum().backward()


def grads(model: Any) -> list[Any]:
    return [p.grad for p in model.parameters()]


def norm64(tensors: list[Any]) -> float:
    return float(np.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors if t is not None)))


def kept(params: list[Any]) -> bool:
    """Whether the drop-ins keep a set over these parameters' gradients."""
    cache = _cache._CACHES.get((len(params), id(params[0])))
    return cache is not None and cache.cached


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    _cache.clear()
    yield
    _cache.clear()


def warm(model: Any) -> list[Any]:
    """Two calls on the same gradients (nothing clipped): a set is kept from then on."""
    params = list(model.parameters())
    gt.clip_grad_norm_(params, 1e9)
    assert not kept(params)  # seen once: nothing kept
    gt.clip_grad_norm_(params, 1e9)
    assert kept(params)
    return params


def check_clips_live(params: list[Any], max_norm: float = 1e-2) -> None:
    """clip_grad_norm_ clips the live gradients (torch's result on a copy of them)."""
    live = [p.grad for p in params]
    copies = [
        torch.nn.Parameter(torch.zeros(0) if g is None else torch.zeros_like(g)) for g in live
    ]
    for c, g in zip(copies, live, strict=True):
        c.grad = None if g is None else g.clone()
    expected = tu.clip_grad_norm_(copies, max_norm)
    got = gt.clip_grad_norm_(params, max_norm)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    for c, p in zip(copies, params, strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, c.grad, rtol=1e-5, atol=1e-7)


def test_kept_set_gives_the_same_results() -> None:
    model = model_with_grads()
    params = warm(model)
    check_clips_live(params)
    assert kept(params)
    before = [g.clone() for g in grads(model)]
    torch.testing.assert_close(gt.get_total_norm(grads(model)), tu.get_total_norm(before))
    gt.get_total_norm(grads(model))
    assert _cache._CACHES[(len(params), id(grads(model)[0]))].cached  # tensors, kept too
    torch.testing.assert_close(gt.get_total_norm(grads(model)), tu.get_total_norm(before))
    gt.clip_grad_value_(params, 1e-3)
    gt.clip_grads_with_norm_(params, 1e-4, gt.get_total_norm(grads(model)))
    theirs = [torch.nn.Parameter(torch.zeros_like(b)) for b in before]
    for t, b in zip(theirs, before, strict=True):
        t.grad = b.clone()
    tu.clip_grad_value_(theirs, 1e-3)
    tu.clip_grads_with_norm_(theirs, 1e-4, tu.get_total_norm([t.grad for t in theirs]))
    for g, t in zip(grads(model), theirs, strict=True):
        torch.testing.assert_close(g, t.grad, rtol=1e-5, atol=1e-9)


def test_zero_grad_set_to_none_frees_the_memory_and_new_gradients_are_clipped() -> None:
    model = model_with_grads()
    params = warm(model)
    storages = [weakref.ref(g.untyped_storage()) for g in grads(model)]
    model.zero_grad(set_to_none=True)
    assert all(r() is None for r in storages)  # nothing of gradclip's holds them
    for step in range(3):  # new tensors every step (their ids and addresses may be reused)
        backward(model, step)
        check_clips_live(params)
        model.zero_grad(set_to_none=True)


def test_replaced_gradient_is_noticed() -> None:
    model = model_with_grads()
    params = warm(model)
    params[2].grad = torch.full_like(params[2], 7.0)
    check_clips_live(params)
    assert not kept(params)  # changed: seen once


def test_storage_swap_is_noticed() -> None:
    model = model_with_grads()
    params = warm(model)
    g = params[0].grad
    old = g.detach().clone()
    old_view = g.numpy().copy()
    g.data = torch.full_like(g, 3.0)  # the same tensor object on new memory
    check_clips_live(params)
    assert not torch.equal(params[0].grad, torch.full_like(g, 3.0))  # the live one clipped
    assert np.array_equal(old_view, old.numpy())


@pytest.mark.parametrize("change", ["set_", "as_strided_", "resize_", "dtype", "view_int"])
def test_in_place_changes_are_noticed(change: str) -> None:
    model = model_with_grads()
    params = warm(model)
    g = params[0].grad
    if change == "set_":
        g.set_(torch.full((g.numel() * 2,), 5.0)[: g.numel()].view(g.shape))
    elif change == "as_strided_":
        g.as_strided_(g.shape, tuple(reversed(torch.empty(g.shape[::-1]).stride()))).fill_(5.0)
    elif change == "resize_":  # the same pointer, fewer elements
        params[1].grad.resize_(2).fill_(5.0)
    elif change == "dtype":
        g.data = g.view(torch.int32)  # the same memory, shape and strides
        with pytest.raises(TypeError, match=r"parameters\[0\].grad has dtype torch.int32"):
            gt.clip_grad_norm_(params, 1e-3)
        return
    else:  # the same memory as another shape: the same elements, the kept view still fits
        g.data = g.view(-1)
    check_clips_live(params)


def test_strided_gradients_are_kept_and_their_strides_checked() -> None:
    buf = torch.randn(40, generator=torch.Generator().manual_seed(3))
    a = torch.nn.Parameter(torch.zeros(20))
    b = torch.nn.Parameter(torch.zeros(20))
    c = torch.nn.Parameter(torch.zeros(4, 5))
    a.grad, b.grad = buf[0::2], buf[1::2]  # disjoint views of one buffer
    c.grad = torch.randn(5, 4).t()  # dense, not contiguous
    params = [a, b, c]
    gt.clip_grad_norm_(params, 1e9)
    gt.clip_grad_norm_(params, 1e9)
    assert kept(params)
    check_clips_live(params)
    c.grad.as_strided_((4, 5), (5, 1))  # same pointer and size, other strides
    check_clips_live(params)
    assert not kept(params)


def test_no_set_over_a_tensor_twice_or_overlapping_reads() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    for _ in range(3):
        torch.testing.assert_close(gt.get_total_norm([p.grad, p.grad]), torch.tensor(50.0**0.5))
        gt.clip_grad_value_([p, p], 10.0)
    buf = torch.tensor([3.0, 4.0, 12.0])
    for _ in range(3):  # overlapping, read only: counted as torch counts them
        expected = torch.tensor(185.0**0.5)  # 3, 4 and 4, 12
        torch.testing.assert_close(gt.get_total_norm([buf[:2], buf[1:]]), expected)
    assert not any(c.cached for c in _cache._CACHES.values())
    with pytest.raises(ValueError, match="same tensor"):
        gt.clip_grad_norm_([p, p], 1.0)


@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(
            torch.bfloat16, marks=pytest.mark.skipif(not HAVE_BF16, reason="needs ml_dtypes")
        ),
        torch.float16,
        torch.float64,
    ],
    ids=str,
)
def test_kept_set_of_other_dtypes(dtype: Any) -> None:
    model = model_with_grads(dtype=dtype)
    params = warm(model)
    before = [g.clone() for g in grads(model)]
    got = gt.clip_grad_norm_(params, 1e-2)
    theirs = [torch.nn.Parameter(torch.zeros_like(b)) for b in before]
    for t, b in zip(theirs, before, strict=True):
        t.grad = b.clone()
    expected = tu.clip_grad_norm_(theirs, 1e-2)
    assert got.dtype == expected.dtype == dtype
    tol = {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(got, expected, rtol=tol, atol=0)
    for g, t in zip(grads(model), theirs, strict=True):
        torch.testing.assert_close(g, t.grad, rtol=tol, atol=tol * 1e-2)


def test_clipper_keeps_no_memory_and_notices_a_swap() -> None:
    model = model_with_grads()
    clipper = gt.GradClipper(model.parameters())
    clipper.get_total_norm()
    clipper.get_total_norm()
    assert clipper.cached
    g = model[0].weight.grad
    g.data = torch.full_like(g, 2.0)
    del g
    assert float(clipper.get_total_norm()) == pytest.approx(norm64(grads(model)), rel=1e-6)
    assert not clipper.cached
    storages = [weakref.ref(t.untyped_storage()) for t in grads(model)]
    clipper.get_total_norm()
    assert clipper.cached
    model.zero_grad(set_to_none=True)
    assert all(r() is None for r in storages)
    backward(model, 9)
    assert float(clipper.get_total_norm()) == pytest.approx(norm64(grads(model)), rel=1e-6)


def test_a_record_whose_tensor_died_never_matches() -> None:
    # a new tensor may take a dead one's id: the record's weak references say it died
    a, b = torch.zeros(3), torch.zeros(4)
    seen = _cache._Seen([a, None, b])
    assert seen.same([a, None, b]) and not seen.same([b, None, a])
    del b
    assert seen.dead == [True]
    assert not seen.same([a, None, a])


def test_kept_set_with_zero_size_and_none_gradients() -> None:
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(3,), (0,), (2, 0), (4,)]]
    for p in params[:3]:
        p.grad = torch.full_like(p, 2.0)
    for step in range(3):
        norm = gt.clip_grad_norm_(params, 0.1)
        assert float(norm) == pytest.approx(12.0**0.5 if step == 0 else 0.1, rel=1e-4)
        assert kept(params) == (step > 0)
    assert params[3].grad is None
