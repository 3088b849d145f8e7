"""The compiled record of gradclip.torch (``_core.TorchGrads``): the plain case's per-tensor
reads in C++, and everything else handed back to the Python path (whose errors and results
the other tests of gradclip.torch pin)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.utils as tu  # noqa: E402
from gc_helpers import HAVE_BF16  # noqa: E402

import gradclip.torch as gt  # noqa: E402
from gradclip.torch import _cache  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    _cache.clear()
    yield
    _cache.clear()


def params_with_grads(shapes: list[tuple[int, ...]], dtype: Any = torch.float32) -> list[Any]:
    g = torch.Generator().manual_seed(11)
    params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(dtype)
    return params


def record(items: list[Any]) -> Any:
    """A fresh compiled record, as the drop-ins and GradClipper make one."""
    return _cache.ViewCache().fast


def test_plain_gradients_take_the_compiled_record() -> None:
    params = params_with_grads([(4, 3), (3,), (0,), (2, 2)])
    rec = record(params)
    first = rec.take(params, True, True)
    assert first is not None and len(first) == 3 and not rec.cached  # seen once
    assert rec.take(params, True, True) is not None and rec.cached and rec.builds == 1
    assert rec.take(params, True, True) is not None and rec.builds == 1  # kept


def test_drop_in_and_clipper_use_it_and_match_torch() -> None:
    ours = params_with_grads([(8, 5), (5,), (5, 8), (8,)])
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, q in zip(ours, theirs, strict=True):
        q.grad = p.grad.clone()
    clipper = gt.GradClipper(ours)
    for step in range(3):
        norm = clipper.clip_grad_norm_(0.5 * 0.9**step)
        expected = tu.clip_grad_norm_(theirs, 0.5 * 0.9**step)
        torch.testing.assert_close(norm, expected, rtol=1e-6, atol=0)
    assert clipper._cache.fast.cached and clipper.builds == 1
    for _ in range(3):
        torch.testing.assert_close(gt.clip_grad_norm_(ours, 0.1), tu.clip_grad_norm_(theirs, 0.1))
    assert _cache._CACHES[(len(ours), id(ours[0]))].fast.cached
    gt.clip_grad_value_(ours, 0.01)
    tu.clip_grad_value_(theirs, 0.01)
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)


def test_the_norm_dtype_is_torch_promotion_of_the_gradients() -> None:
    dtypes = [torch.float16, torch.float32, torch.float64]
    if HAVE_BF16:
        dtypes.append(torch.bfloat16)
    for a in dtypes:
        for b in dtypes:
            tensors = [torch.full((3,), 0.5, dtype=a), torch.full((4,), 0.25, dtype=b)]
            for _ in range(3):  # seen, kept, through the kept record
                got = gt.get_total_norm(tensors)
            assert _cache._CACHES[(2, id(tensors[0]))].fast.cached
            expected = tu.get_total_norm(tensors)
            assert got.dtype == expected.dtype, (a, b)


def neg_view(t: Any) -> Any:
    return torch._neg_view(t)


@pytest.mark.parametrize(
    "odd",
    [
        "strided",
        "transposed",
        "negative-bit",
        "meta",
        "sparse",
        "int",
        "complex",
        "twice",
        "overlap",
        "subclass",
        "not-a-tensor",
    ],
)
def test_anything_but_the_plain_case_is_handed_back(odd: str) -> None:
    params = params_with_grads([(6,), (6,)])
    p = params[1]
    items: list[Any] = params
    if odd == "strided":
        p.grad = torch.randn(12)[::2]
    elif odd == "transposed":
        params = params_with_grads([(6,), (3, 2)])
        params[1].grad = torch.randn(2, 3).t()
        items = params
    elif odd == "negative-bit":
        p.grad = neg_view(torch.randn(6))
    elif odd == "meta":
        items = [params[0].grad, torch.empty(6, device="meta")]
    elif odd == "sparse":
        p.grad = torch.randn(6).to_sparse()
    elif odd == "int":
        items = [params[0].grad, torch.arange(6)]
    elif odd == "complex":
        items = [params[0].grad, torch.randn(6, dtype=torch.complex64)]
    elif odd == "twice":
        items = [params[0], params[0]]
    elif odd == "overlap":
        buf = torch.randn(10)
        items = [buf[:6], buf[4:]]
    elif odd == "subclass":

        class Sub(torch.Tensor):
            pass

        items = [params[0].grad, torch.randn(6).as_subclass(Sub)]
    else:
        items = [params[0], "bias"]
    grads = isinstance(items[0], torch.nn.Parameter)
    rec = record(items)
    for _ in range(3):
        assert rec.take(items, grads, True) is None
    assert not rec.cached and rec.builds == 0


def test_bfloat16_is_handed_back_without_ml_dtypes() -> None:
    params = params_with_grads([(3,), (4,)], torch.bfloat16)
    rec = record(params)
    assert rec.take(params, True, False) is None
    assert rec.take(params, True, True) is not None


def test_errors_and_results_of_the_python_path_are_unchanged() -> None:
    # what the record hands back still raises the Python path's errors, nothing written
    params = params_with_grads([(6,), (6,)])
    before = [p.grad.clone() for p in params]
    for _ in range(3):
        with pytest.raises(ValueError, match=r"parameters\[0\].grad and parameters\[2\].grad"):
            gt.clip_grad_norm_([params[0], params[1], params[0]], 1e-3)
    params[1].grad.data = params[1].grad.view(torch.int32)
    for _ in range(3):
        with pytest.raises(TypeError, match=r"parameters\[1\].grad has dtype torch.int32"):
            gt.clip_grad_norm_(params, 1e-3)
    torch.testing.assert_close(params[0].grad, before[0], rtol=0, atol=0)
    buf = torch.randn(10)
    a, b = torch.nn.Parameter(torch.zeros(6)), torch.nn.Parameter(torch.zeros(6))
    a.grad, b.grad = buf[:6], buf[4:]
    snapshot = buf.clone()
    for _ in range(3):
        with pytest.raises(ValueError, match="overlap"):
            gt.clip_grad_norm_([a, b], 1e-3)
    assert torch.equal(buf, snapshot)


def test_a_lease_holds_the_calls_tensors_until_it_is_gone() -> None:
    params = params_with_grads([(5,), (7,)])
    rec = record(params)
    lease = rec.take(params, True, True)
    memory = weakref.ref(params[0].grad.untyped_storage())
    params[0].grad = None
    gc.collect()
    assert memory() is not None  # the lease's operation may still be running on it
    del lease
    gc.collect()
    assert memory() is None  # the record itself holds nothing


def test_a_tensor_that_died_never_matches_even_at_its_address() -> None:
    # a new tensor object over the same memory, possibly at the dead one's address: the
    # weak references say the old one died, so the record is not trusted
    base = torch.randn(8)
    items = [base.narrow(0, 0, 4), base.narrow(0, 4, 4)]
    rec = record(items)
    rec.take(items, False, True)
    rec.take(items, False, True)
    assert rec.cached
    old = id(items[1])
    reused = False
    for _ in range(200):
        items[1] = None
        items[1] = base.narrow(0, 4, 4)
        if id(items[1]) == old:
            reused = True
            break
    if not reused:
        pytest.skip("the allocator gave the new tensor another address")
    lease = rec.take(items, False, True)
    assert lease is not None and not rec.cached  # seen afresh, not kept
    assert lease.total_norm(2.0) == pytest.approx(float(base.double().norm()), rel=1e-12)


def test_many_new_tensors_every_call_are_clipped_live() -> None:
    shapes = [(16, 4), (4,), (4, 16), (16,)] * 50
    params = params_with_grads(shapes)
    clipper = gt.GradClipper(params)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):  # zero_grad(set_to_none=True), then a backward: new tensors
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        live = [p.grad.clone() for p in params]
        expected = float(np.sqrt(sum(float((t.double() ** 2).sum()) for t in live)))
        norm = clipper.clip_grad_norm_(1.0)
        assert float(norm) == pytest.approx(expected, rel=1e-6)
        coef = 1.0 / (expected + 1e-6)
        for p, t in zip(params, live, strict=True):
            torch.testing.assert_close(p.grad, t * coef, rtol=1e-5, atol=1e-8)
    assert clipper.builds == 0 and not clipper.cached
