# Covers: the functional forms: clip_by_global_norm, clip_by_norm_per_tensor
# and clip_by_value return clipped copies in the input's structure (or write into out), with
# the inputs untouched and allowed to be read-only, JAX arrays, the same array twice. Each
# result has the bits of the in-place function applied to a copy, on every target, dtype and
# layout, and matches gradclip.reference.
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import pytest
from gc_helpers import (
    DTYPE_PARAMS,
    LAYOUTS,
    assert_same_values,
    configured,
    dtype_of,
    each_config,
    make_array,
    random_values,
    snapshot,
)

import gradclip
from gradclip import reference as ref


class Pair(NamedTuple):
    w: Any
    b: Any


FUNCS = {
    "clip_by_global_norm": (
        lambda m, g, **kw: m.clip_by_global_norm(g, 0.5, **kw),
        lambda m, g: m.clip_grad_norm_(g, 0.5),
    ),
    "clip_by_norm_per_tensor": (
        lambda m, g, **kw: m.clip_by_norm_per_tensor(g, 0.5, **kw),
        lambda m, g: m.clip_grad_norm_per_tensor_(g, 0.5),
    ),
    "clip_by_value": (
        lambda m, g, **kw: (m.clip_by_value(g, min=-0.2, max=0.3, **kw), None),
        lambda m, g: m.clip_grad_value_(g, min=-0.2, max=0.3),
    ),
}


def copies_of(grads: list[Any]) -> list[Any]:
    return [None if g is None else np.array(g, copy=True) for g in grads]


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("dtype_name", DTYPE_PARAMS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_copy_has_the_bits_of_the_in_place_call(name: str, dtype_name: str, layout: str) -> None:
    functional, in_place = FUNCS[name]
    dtype = dtype_of(dtype_name)
    values = [random_values(20 + i, s) for i, s in enumerate([(7, 9), (40,), (3, 4, 5)])]
    for target, threads in each_config():
        grads = [make_array(v, dtype, layout) for v in values]
        grads.insert(1, None)
        before = snapshot([g for g in grads if g is not None])
        twin = copies_of(grads)
        with configured(target, threads):
            (clipped, result) = functional(gradclip, grads)
            expected = in_place(gradclip, twin)
        assert snapshot([g for g in grads if g is not None]) == before, "an input changed"
        assert clipped[1] is None and isinstance(clipped, list)
        for c, t in zip(clipped, twin, strict=True):
            if t is not None:
                assert c.dtype == t.dtype and c.shape == t.shape
                assert_same_values(c, t, f"{target}/{threads}")
        if result is not None:
            np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("name", FUNCS)
def test_matches_reference_and_keeps_structure(name: str) -> None:
    functional = FUNCS[name][0]
    tree = {
        "enc": Pair(random_values(1, (4, 3)), None),
        "dec": (random_values(2, (5,)).astype(np.float32), [random_values(3, (2, 2))]),
    }
    got, got_r = functional(gradclip, tree)
    want, want_r = functional(ref, tree)
    assert isinstance(got["enc"], Pair) and got["enc"].b is None
    assert isinstance(got["dec"], tuple) and isinstance(got["dec"][1], list)
    for a, b in zip(
        [got["enc"].w, got["dec"][0], got["dec"][1][0]],
        [want["enc"].w, want["dec"][0], want["dec"][1][0]],
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    if got_r is not None:
        np.testing.assert_allclose(got_r, want_r, rtol=1e-14)
    # one array in, one array out
    single, _ = functional(gradclip, random_values(4, (6,)))
    assert isinstance(single, np.ndarray) and single.shape == (6,)


def test_read_only_and_repeated_inputs() -> None:
    x = random_values(5, (30,))
    x.flags.writeable = False
    clipped, norm = gradclip.clip_by_global_norm([x, x], 1.0)
    assert norm == pytest.approx(math.sqrt(2) * np.linalg.norm(x), rel=1e-14)
    assert clipped[0] is not clipped[1] and clipped[0].flags.writeable
    np.testing.assert_allclose(np.linalg.norm(np.concatenate(clipped)), 1.0, rtol=1e-6)


def test_out_receives_the_result() -> None:
    g = [random_values(6, (8, 3)), random_values(7, (5,))]
    out = [np.empty((8, 3)), np.empty(5)]
    want, norm = gradclip.clip_by_global_norm(g, 0.1)
    res, norm2 = gradclip.clip_by_global_norm(g, 0.1, out=out)
    assert res is out and norm2 == norm
    for a, b in zip(out, want, strict=True):
        assert_same_values(a, b)
    # an output may be its own input: the in-place result
    h = [a.copy() for a in g]
    gradclip.clip_by_global_norm(h, 0.1, out=h)
    for a, b in zip(h, want, strict=True):
        assert_same_values(a, b)
    # into a strided view of a larger buffer
    big = np.zeros((8, 6))
    gradclip.clip_by_value(g[0], 0.05, out=big[:, ::2])
    assert_same_values(big[:, ::2], gradclip.clip_by_value(g[0], 0.05))
    assert (big[:, 1::2] == 0).all()


@pytest.mark.parametrize(
    ("out", "match"),
    [
        (lambda g: [np.empty((8, 3))], "None where"),
        (lambda g: [np.empty((8, 3)), np.empty(4)], "shape and dtype"),
        (lambda g: [np.empty((8, 3)), np.empty(5, np.float32)], "shape and dtype"),
        (lambda g: [np.empty((8, 3)), np.empty((8, 3))[0, :]], "shape and dtype"),
        (lambda g: [np.empty((8, 3)), g[0].reshape(-1)[:5]], "overlaps"),
    ],
)
def test_bad_out(out: Any, match: str) -> None:
    g = [random_values(6, (8, 3)), random_values(7, (5,))]
    before = snapshot(g)
    with pytest.raises(ValueError, match=match):
        gradclip.clip_by_global_norm(g, 0.1, out=out(g))
    assert snapshot(g) == before


def test_outputs_sharing_memory_refused() -> None:
    g = [np.ones(4), np.ones(4)]
    o = np.empty(4)
    with pytest.raises(ValueError, match="same memory"):
        gradclip.clip_by_value(g, 1.0, out=[o, o])


def test_read_only_out_refused() -> None:
    o = np.empty(3)
    o.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        gradclip.clip_by_value(np.ones(3), 1.0, out=o)


def test_nonfinite_norm_follows_pytorch_arithmetic() -> None:
    g = [np.array([1.0, np.inf]), np.array([2.0])]
    clipped, norm = gradclip.clip_by_global_norm(g, 1.0)
    assert norm == math.inf
    assert clipped[0][0] == 0.0 and np.isnan(clipped[0][1]) and clipped[1][0] == 0.0


def test_jax_arrays_in_numpy_out() -> None:
    jnp = pytest.importorskip("jax.numpy")
    grads = {"w": jnp.full((3, 4), 2.0), "b": jnp.ones(2)}
    clipped, norm = gradclip.clip_by_global_norm(grads, 1.0, eps=0.0)
    assert norm == pytest.approx(math.sqrt(48 + 2), rel=1e-7)
    assert isinstance(clipped["w"], np.ndarray) and clipped["w"].dtype == np.float32
    total = math.sqrt(sum(float(np.sum(np.square(v.astype(np.float64)))) for v in clipped.values()))
    assert total == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(np.asarray(grads["w"]), 2.0)  # the input is untouched
