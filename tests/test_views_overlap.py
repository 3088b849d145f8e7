# Disjoint views of one buffer: the column blocks of a fused QKV gradient and interleaved
# views share no element, so every writing call accepts them (their memory bounds intersect,
# and the exact check decides); a pair that does share an element is still refused, by every
# writing call, before anything is written; reading calls accept both.
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from gc_helpers import snapshot
from numpy.lib.stride_tricks import as_strided

import gradclip
from gradclip import reference as ref

MODULES = [pytest.param(gradclip, id="compiled"), pytest.param(ref, id="reference")]


def qkv_split(buf: np.ndarray) -> list[np.ndarray]:
    qkv = buf.reshape(4, 96)
    return [qkv[:, :32], qkv[:, 32:64], qkv[:, 64:]]


def interleaved(buf: np.ndarray) -> list[np.ndarray]:
    half = buf.reshape(8, 48)  # 2-d so that per-example clipping has a batch axis
    return [half[0::2], half[1::2]]


def overlapping(buf: np.ndarray) -> list[np.ndarray]:
    # strided views whose elements meet: buf[0::2] and buf[0::3] both hold buf[0], buf[6], ...
    flat = buf[:288]
    return [flat[0::2][:96].reshape(8, 12), flat[0::3][:96].reshape(8, 12)]


# Every writing call of the package, on a list of arrays (per-example clipping: axis 0 of
# each is the batch; AGC: parameters of the same shapes).
def _agc(m: Any, grads: list[np.ndarray]) -> Any:
    return m.adaptive_grad_clip_(grads, [np.ones(g.shape) for g in grads], 0.01)


def _out(m: Any, grads: list[np.ndarray]) -> Any:
    # the functional form writing into `out`, which here is the views themselves
    return m.clip_by_global_norm([g.copy() for g in grads], 0.5, out=grads)


WRITERS: dict[str, Callable[[Any, list[np.ndarray]], Any]] = {
    "clip_grad_norm_": lambda m, g: m.clip_grad_norm_(g, 0.5),
    "clip_grads_with_norm_": lambda m, g: m.clip_grads_with_norm_(g, 0.5, 100.0),
    "clip_grad_value_": lambda m, g: m.clip_grad_value_(g, 0.01),
    "clip_grad_norm_per_tensor_": lambda m, g: m.clip_grad_norm_per_tensor_(g, 0.5),
    "unscale_clip_grad_norm_": lambda m, g: m.unscale_clip_grad_norm_(g, 0.5, 0.5),
    "clip_per_example_": lambda m, g: m.clip_per_example_(g, 0.5),
    "adaptive_grad_clip_": _agc,
    "clip_by_block_rms_": lambda m, g: m.clip_by_block_rms_(g, 0.01),
    "AutoClip": lambda m, g: m.AutoClip()(g),
    "ZClip": lambda m, g: m.ZClip()(g),
    "GradientSet.clip_norm_": lambda m, g: m.GradientSet(g).clip_norm_(0.5),
    "GradientSet.clip_value_": lambda m, g: m.GradientSet(g).clip_value_(0.01),
    "clip_by_global_norm(out=)": _out,
}


def fresh(layout: Callable[[np.ndarray], list[np.ndarray]]) -> tuple[np.ndarray, list[Any]]:
    rng = np.random.default_rng(26)
    buf = rng.standard_normal(384)
    return buf, layout(buf)


@pytest.mark.parametrize("m", MODULES)
@pytest.mark.parametrize("layout", [qkv_split, interleaved])
@pytest.mark.parametrize("name", WRITERS)
def test_disjoint_views_are_accepted_and_clipped_like_copies(
    m: Any, layout: Callable[[np.ndarray], list[np.ndarray]], name: str
) -> None:
    buf, views = fresh(layout)
    for a in range(len(views)):
        for b in range(a):
            assert not np.shares_memory(views[a], views[b])
    copies = [v.copy() for v in views]
    WRITERS[name](m, views)
    WRITERS[name](m, copies)  # the same call on separate buffers: the same result
    for v, c in zip(views, copies, strict=True):
        np.testing.assert_array_equal(v, c)
    if name not in ("AutoClip", "ZClip"):  # (their first call clips by its own norm: no-op)
        assert not np.array_equal(buf, fresh(layout)[0]), "the call wrote nothing"


@pytest.mark.parametrize("m", MODULES)
@pytest.mark.parametrize("name", WRITERS)
def test_views_sharing_an_element_are_refused_before_any_write(m: Any, name: str) -> None:
    buf, views = fresh(overlapping)
    assert np.shares_memory(views[0], views[1])
    before = snapshot([buf])
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[1\] overlap in memory|out"):
        WRITERS[name](m, views)
    assert snapshot([buf]) == before


def test_an_output_sharing_memory_with_another_output_is_refused() -> None:
    buf, views = fresh(overlapping)
    with pytest.raises(ValueError, match=r"out\[0\] and out\[1\] overlap in memory"):
        gradclip.clip_by_global_norm([v.copy() for v in views], 0.5, out=views)


@pytest.mark.parametrize("m", MODULES)
@pytest.mark.parametrize("layout", [qkv_split, interleaved, overlapping])
def test_reading_calls_accept_views_that_share_memory(
    m: Any, layout: Callable[[np.ndarray], list[np.ndarray]]
) -> None:
    _, views = fresh(layout)
    expected = np.array([np.linalg.norm(v) for v in views])
    np.testing.assert_allclose(m.tensor_norms(views), expected, rtol=1e-12)
    total = m.get_total_norm(views)
    assert total == pytest.approx(float(np.linalg.norm(expected)), rel=1e-12)
    if m is gradclip:
        assert gradclip.GradientSet(views).total_norm() == pytest.approx(total, rel=1e-12)


def test_a_cached_set_of_disjoint_views_clips_every_call() -> None:
    buf, views = fresh(qkv_split)
    gs = gradclip.GradientSet(views)
    for _ in range(3):
        views[0][...] = 10.0  # large again: each call clips
        norm = gs.clip_norm_(1.0)
        assert norm > 1.0
        assert gs.total_norm() == pytest.approx(1.0, rel=1e-5)


def test_same_array_twice_is_still_named_as_such() -> None:
    g = np.ones(4)
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[1\] are the same memory"):
        gradclip.clip_grad_norm_([g, g], 1.0)


def hard_pair() -> tuple[np.ndarray, list[np.ndarray]]:
    # Two 5-d views (no self-overlap) whose exact overlap NumPy cannot decide within
    # max_work=65536 (found by a random search over strides; decidable without the bound).
    base = np.zeros(200_000, np.float32)
    x = as_strided(base, (3, 4, 10, 9, 5), tuple(4 * s for s in (9684, 2421, 242, 27, 5)))
    y = as_strided(base[6:], (9, 11, 5, 6, 7), tuple(4 * s for s in (6658, 605, 121, 20, 3)))
    return base, [x, y]


def test_a_pair_beyond_the_work_bound_is_refused_and_says_so() -> None:
    base, pair = hard_pair()
    with pytest.raises(np.exceptions.TooHardError):
        np.shares_memory(pair[0], pair[1], max_work=1 << 16)
    before = snapshot([base])
    with pytest.raises(ValueError, match=r"may overlap in memory.*work bound"):
        gradclip.clip_grad_value_(pair, 0.0)
    assert snapshot([base]) == before
    assert gradclip.get_total_norm(pair) == 0.0  # reading is fine
