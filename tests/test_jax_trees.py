# JAX pytrees as JAX defines them (registered dataclasses, custom nodes, named tuples, None
# leaves), flattened with jax.tree_util when JAX is imported, and JAX arrays, bfloat16 ones
# included, read by the reading and copying calls (a copy where DLPack has no view). Without
# JAX these tests skip; gradclip itself never imports JAX (checked in a subprocess).
from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any, NamedTuple

import numpy as np
import pytest

import gradclip
from gradclip import reference as ref

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
tu = jax.tree_util

MODULES = [pytest.param(gradclip, id="compiled"), pytest.param(ref, id="reference")]


@tu.register_dataclass
@dataclasses.dataclass
class Linear:
    w: Any
    b: Any


class Pair:
    """A class registered with register_pytree_node (children a, b)."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b


tu.register_pytree_node(Pair, lambda p: ((p.a, p.b), "aux"), lambda aux, ch: Pair(*ch))


class Moments(NamedTuple):
    mu: Any
    nu: Any


def tree(xp: Any = jnp) -> dict[str, Any]:
    return {
        "enc": Linear(w=xp.full((2, 3), 3.0, xp.float32), b=xp.full((3,), 4.0, xp.float32)),
        "pair": Pair(xp.ones(5, xp.float32), None),
        "m": Moments(mu=xp.full((2,), 2.0, xp.float32), nu=None),
    }


def expected_leaves(t: Any) -> list[Any]:
    return tu.tree_leaves(t, is_leaf=lambda x: x is None)


def norm_of(leaf: Any) -> float:
    return 0.0 if leaf is None else float(np.linalg.norm(np.asarray(leaf, np.float64)))


@pytest.mark.parametrize("m", MODULES)
def test_reading_calls_follow_jax_leaf_order(m: Any) -> None:
    t = tree()
    leaves = expected_leaves(t)
    norms = np.array([norm_of(x) for x in leaves])
    np.testing.assert_allclose(m.tensor_norms(t), norms, rtol=1e-12)
    assert m.get_total_norm(t) == pytest.approx(float(np.linalg.norm(norms)), rel=1e-12)
    if m is gradclip:
        gs = gradclip.GradientSet(t)
        assert len(gs) == len(leaves)
        np.testing.assert_allclose(gs.tensor_norms(), norms, rtol=1e-12)


@pytest.mark.parametrize("m", MODULES)
def test_copies_come_back_in_the_same_structure(m: Any) -> None:
    t = tree()
    clipped, norm = m.clip_by_global_norm(t, 1.0, eps=0.0)
    none_leaf = lambda x: x is None  # noqa: E731
    assert tu.tree_structure(clipped, is_leaf=none_leaf) == tu.tree_structure(t, is_leaf=none_leaf)
    assert isinstance(clipped["enc"], Linear) and isinstance(clipped["pair"], Pair)
    assert clipped["pair"].b is None and clipped["m"].nu is None
    for got, src in zip(expected_leaves(clipped), expected_leaves(t), strict=True):
        if src is not None:
            np.testing.assert_allclose(got, np.asarray(src) / norm, rtol=1e-6)
    per, norms = m.clip_by_norm_per_tensor(t, 1.0)
    assert isinstance(per["enc"], Linear) and len(norms) == len(expected_leaves(t))
    low = m.clip_by_value(t, min=0.0, max=2.5)
    assert isinstance(low["m"], Moments)
    np.testing.assert_array_equal(low["enc"].w, np.full((2, 3), 2.5, np.float32))


def test_a_top_level_dataclass_of_numpy_arrays_is_clipped_in_place() -> None:
    lin = Linear(w=np.full((2, 2), 3.0), b=np.full(2, 4.0))
    norm = gradclip.clip_grad_norm_(lin, 1.0, eps=0.0)
    assert norm == pytest.approx(float(np.sqrt(4 * 9 + 2 * 16)))
    assert gradclip.get_total_norm(lin) == pytest.approx(1.0)
    ref_lin = Linear(w=np.full((2, 2), 3.0), b=np.full(2, 4.0))
    ref.clip_grad_norm_(ref_lin, 1.0, eps=0.0)
    np.testing.assert_array_equal(lin.w, ref_lin.w)


def test_plain_containers_keep_their_own_order_with_jax_imported() -> None:
    # importing JAX changes nothing for a tree gradclip already took: insertion order
    a, b = np.array([1.0]), np.array([2.0, 2.0])
    np.testing.assert_array_equal(gradclip.tensor_norms({"z": a, "a": b}), [1.0, np.sqrt(8)])


def test_jax_arrays_in_place_are_refused_naming_the_copying_call() -> None:
    with pytest.raises(ValueError, match=r"grads\[0\] is read-only.*clip_by_global_norm"):
        gradclip.clip_grad_norm_([jnp.ones(3, jnp.float32)], 1.0)
    with pytest.raises(TypeError, match=r"cannot be used in place.*clip_by_global_norm"):
        gradclip.clip_grad_norm_([jnp.ones(3, jnp.bfloat16)], 1.0)


@pytest.mark.parametrize("m", MODULES)
def test_bfloat16_jax_arrays_are_read(m: Any) -> None:
    x = jnp.full((4,), 3.0, jnp.bfloat16)
    y = jnp.full((9,), 4.0, jnp.bfloat16)
    assert m.get_total_norm([x, y]) == pytest.approx(float(np.sqrt(4 * 9 + 9 * 16)), rel=1e-12)
    np.testing.assert_allclose(m.tensor_norms(x), [6.0])
    clipped, norm = m.clip_by_global_norm({"x": x, "y": y}, 1.0)
    assert clipped["x"].dtype == np.asarray(x).dtype  # bfloat16 copies
    assert float(norm) == pytest.approx(float(np.sqrt(180.0)))


@pytest.mark.parametrize("m", MODULES)
def test_positions_in_a_jax_tree_are_key_paths(m: Any) -> None:
    # one naming of positions: a leaf of a JAX tree by its key path (jax.tree_util.keystr),
    # in the compiled core as in the reference, like gradclip's own trees (grads['enc'][0])
    t = {"enc": Linear(w=np.ones(2), b=np.arange(2, dtype=np.int32))}
    with pytest.raises(TypeError, match=r"grads\['enc'\]\.b has dtype int32"):
        m.get_total_norm(t)
    with pytest.raises(TypeError, match=r"grads\['enc'\]\.b has dtype int32"):
        m.tensor_norms(t)


# Run in a fresh interpreter where importing JAX (or optree) is recorded and refused: an
# import gradclip tried, even one it guarded with ``except ImportError``, shows up.
NO_JAX = """
import sys
tried = []
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "optree"):
            tried.append(name)
            raise ImportError(name + " refused by the test")
        return None
sys.meta_path.insert(0, Refuse())
import dataclasses, collections
import numpy as np, ml_dtypes, gradclip
from gradclip import reference as ref
@dataclasses.dataclass
class Linear:
    w: object
tree = {"a": [np.ones(3), None], "t": (np.ones(2, ml_dtypes.bfloat16),)}
odd = [Linear(np.ones(3)), collections.deque([np.ones(2)]), object(), 3.0]
for m in (gradclip, ref):
    m.clip_grad_norm_(tree, 1.0)
    m.get_total_norm(tree)
    m.tensor_norms(tree)
    m.clip_by_global_norm(tree, 1.0)
    m.adaptive_grad_clip_([np.ones(3)], [np.ones(3)])
    for leaf in odd:  # leaves and top-level objects that are no container of gradclip's
        for call in (m.get_total_norm, m.clip_by_global_norm, m.clip_grad_norm_):
            for grads in (leaf, [leaf]):
                try:
                    call(grads, 1.0)
                except (TypeError, ValueError):
                    pass
gradclip.GradientSet(tree).clip_norm_(1.0)
assert not tried, f"gradclip tried to import {tried}"
assert not any(k.split(".")[0] in ("jax", "jaxlib") for k in sys.modules), "jax imported"
"""


def test_gradclip_does_not_import_jax() -> None:
    pytest.importorskip("ml_dtypes")
    out = subprocess.run(
        [sys.executable, "-c", NO_JAX], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr


@tu.register_dataclass
@dataclasses.dataclass
class Block:
    lin: Linear
    pair: Pair
    m: Moments


def test_bfloat16_trees_come_back_in_the_same_structure() -> None:
    # the case: bf16 jax.Arrays in registered dataclasses, a custom node with a None
    # leaf, a named tuple; every call reads them, the copies keep structure and dtype
    bf = jnp.bfloat16
    t = Block(
        lin=Linear(w=jnp.full((2, 3), 3.0, bf), b=jnp.full((3,), 4.0, bf)),
        pair=Pair(jnp.ones(5, bf), None),
        m=Moments(mu=jnp.full((2,), 2.0, bf), nu=None),
    )
    expected = float(np.sqrt(6 * 9 + 3 * 16 + 5 + 2 * 4))
    assert gradclip.get_total_norm(t) == pytest.approx(expected, rel=1e-12)
    norms = [norm_of(x) for x in expected_leaves(t)]
    np.testing.assert_allclose(gradclip.tensor_norms(t), norms, rtol=1e-12)
    none_leaf = lambda x: x is None  # noqa: E731
    for clipped in (
        gradclip.clip_by_global_norm(t, 1.0)[0],
        gradclip.clip_by_norm_per_tensor(t, 1.0)[0],
        gradclip.clip_by_value(t, 1.0),
    ):
        assert tu.tree_structure(clipped, is_leaf=none_leaf) == tu.tree_structure(
            t, is_leaf=none_leaf
        )
        assert isinstance(clipped, Block) and isinstance(clipped.m, Moments)
        assert clipped.pair.b is None and clipped.m.nu is None
        assert all(x.dtype == np.dtype(bf) for x in tu.tree_leaves(clipped))
    top, norm = gradclip.clip_by_global_norm(Moments(mu=t.lin.w, nu=None), 1.0, eps=0.0)
    assert isinstance(top, Moments) and top.nu is None and norm == pytest.approx(np.sqrt(54))
    want = np.full((2, 3), 3 / np.sqrt(54))
    np.testing.assert_allclose(np.asarray(top.mu, np.float64), want, rtol=4e-3)  # bf16
