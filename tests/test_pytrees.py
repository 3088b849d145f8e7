# Covers: grads as pytrees: dicts, lists, tuples and named tuples nested to
# any depth, with None leaves; leaves depth first and dicts in iteration order, the
# per-array outputs in that order, positions named by path in errors; and the reading calls
# taking read-only and repeated arrays. Every operation against its flat-list self and
# gradclip.reference.
from __future__ import annotations

import collections
import math
import subprocess
import sys
import types
from typing import Any, NamedTuple

import numpy as np
import pytest
from gc_helpers import assert_same_values, random_values, snapshot
from operations import assert_same_outcome, operations

import gradclip
from gradclip import reference as ref


class Layer(NamedTuple):
    w: Any
    b: Any


def tree(seed: int = 0) -> dict[str, Any]:
    """An Optax/Flax-like parameter tree: dicts, a named tuple, a list, a tuple, a None."""
    r = np.random.default_rng(seed)

    def arr(*shape: int, dtype: Any = np.float32) -> np.ndarray:
        return (r.standard_normal(shape) * 3).astype(dtype)

    return {
        "encoder": {"conv": Layer(arr(3, 3, 2, 4), arr(4)), "norm": None},
        "blocks": [Layer(arr(4, 4, dtype=np.float64), None), (arr(5), arr(2, 2, dtype=np.float16))],
        "head": arr(4, 10),
    }


def leaves_in_order(t: Any) -> list[Any]:
    """The documented order, written out: depth first, dicts in iteration order."""
    if isinstance(t, dict):
        return [x for v in t.values() for x in leaves_in_order(v)]
    if isinstance(t, (list, tuple)):
        return [x for v in t for x in leaves_in_order(v)]
    return [t]


def arrays(t: Any) -> list[np.ndarray]:
    return [x for x in leaves_in_order(t) if x is not None]


# every operation on a pytree of arrays of any shapes (tests/operations.py)
CALLS = {op.name: op.call for op in operations(shapes=["any"])}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("module", [gradclip, ref], ids=["compiled", "reference"])
def test_tree_is_its_leaves_in_order(module: Any, call: str) -> None:
    t = tree()
    flat = [None if x is None else x.copy() for x in leaves_in_order(t)]
    got = CALLS[call](module, t)
    want = CALLS[call](module, flat)
    assert (got is None) == (want is None)
    assert_same_outcome(got, want)
    for a, b in zip(leaves_in_order(t), flat, strict=True):
        if a is not None:
            assert_same_values(a, b, call)


@pytest.mark.parametrize("call", CALLS)
def test_tree_compiled_matches_reference(call: str) -> None:
    t, u = tree(1), tree(1)
    got, want = CALLS[call](gradclip, t), CALLS[call](ref, u)
    assert_same_outcome(got, want, rtol=1e-14)
    for a, b in zip(arrays(t), arrays(u), strict=True):
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-6)


def test_per_array_outputs_follow_leaf_order() -> None:
    t = tree(2)
    norms = gradclip.tensor_norms(t)
    leaves = leaves_in_order(t)
    assert norms.shape == (len(leaves),)
    for n, leaf in zip(norms, leaves, strict=True):
        want = 0.0 if leaf is None else float(np.linalg.norm(leaf.astype(np.float64)))
        assert n == pytest.approx(want, rel=1e-12)
    # dict order is insertion order, not key order
    d = {"z": np.full(1, 3.0), "a": np.full(1, 4.0)}
    assert gradclip.tensor_norms(d).tolist() == [3.0, 4.0]


def test_containers_of_every_kind() -> None:
    a, b, c = np.full(4, 1.0), np.full(4, 2.0), np.full(4, 3.0)
    norm = math.sqrt(4 * (1 + 4 + 9))
    for t in (
        {"a": a, "rest": [b, (c,)]},
        collections.OrderedDict(a=a, b=[b, None, c]),
        types.MappingProxyType({"a": a, "b": b, "c": c}),  # a read-only mapping at the top
        [[[[a]]], [b], c],
        (a, Layer(b, c)),
    ):
        assert gradclip.get_total_norm(t) == pytest.approx(norm, rel=1e-15)
        assert ref.get_total_norm(t) == pytest.approx(norm, rel=1e-15)
    for module in (gradclip, ref):  # a generator of subtrees, consumed once
        gen = (x for x in [a, {"b": b}, c])
        assert module.get_total_norm(gen) == pytest.approx(norm, rel=1e-15)


def test_empty_containers_contribute_nothing() -> None:
    for t in ({}, [], [[], {}], {"a": [], "b": ()}):
        assert gradclip.get_total_norm(t) == 0.0
        assert gradclip.clip_grad_norm_(t, 1.0) == 0.0
        assert gradclip.tensor_norms(t).shape == (0,)


def test_gradient_set_of_a_tree() -> None:
    t = tree(3)
    gs = gradclip.GradientSet(t)
    assert len(gs) == len(leaves_in_order(t))
    assert [x is None for x in gs.arrays] == [x is None for x in leaves_in_order(t)]
    before = gs.total_norm()
    assert gs.clip_norm_(0.5) == before
    assert gs.total_norm() == pytest.approx(0.5, rel=1e-5)


def test_agc_and_per_example_take_trees() -> None:
    params = {"w": np.ones((4, 3)), "b": np.ones(4)}
    g = {"w": np.full((4, 3), 5.0), "b": np.full(4, 5.0)}
    g_ref = {k: v.copy() for k, v in g.items()}
    gradclip.adaptive_grad_clip_(g, params, clipping=0.1)
    ref.adaptive_grad_clip_(g_ref, params, clipping=0.1)
    for k, v in g.items():
        np.testing.assert_allclose(v, g_ref[k], rtol=1e-15)
    batch = {"w": np.full((6, 3), 2.0), "b": [np.full((6, 2), 1.0)]}
    flat = [batch["w"].copy(), batch["b"][0].copy()]
    sums, n = gradclip.clip_per_example_(batch, 1.0)
    flat_sums, flat_n = gradclip.clip_per_example_(flat, 1.0)
    assert n == flat_n == 6
    assert set(sums) == {"w", "b"} and isinstance(sums["b"], list)  # the input's structure
    np.testing.assert_array_equal(sums["w"], flat_sums[0])
    np.testing.assert_array_equal(sums["b"][0], flat_sums[1])


def test_error_names_the_path() -> None:
    t = {"enc": [np.ones(3), {"w": np.arange(3)}]}
    for module in (gradclip, ref):
        with pytest.raises(TypeError, match=r"grads\['enc'\]\[1\]\['w'\]"):
            module.clip_grad_norm_(t, 1.0)
    ro = np.ones(3)
    ro.flags.writeable = False
    a = np.ones(2)
    with pytest.raises(ValueError, match=r"grads\['b'\]\[0\] is read-only"):
        gradclip.clip_grad_norm_({"a": a, "b": [ro]}, 1.0)
    with pytest.raises(ValueError, match=r"grads\['a'\] and grads\['b'\]\[1\]"):
        gradclip.clip_grad_norm_({"a": a, "b": [np.ones(1), a]}, 1.0)
    assert (a == 1.0).all()


def test_a_container_holding_itself_is_refused() -> None:
    loop: list[Any] = [np.ones(2)]
    loop.append(loop)
    for module in (gradclip, ref):
        with pytest.raises(TypeError, match="nested"):
            module.get_total_norm(loop)


def test_nothing_written_when_a_late_leaf_is_bad() -> None:
    t = {"a": np.full(5, 9.0), "b": [np.full(3, 9.0), "oops"]}
    before = snapshot(arrays({"a": t["a"], "b": t["b"][0]}))
    for module in (gradclip, ref):
        with pytest.raises(TypeError, match=r"grads\['b'\]\[1\]"):
            module.clip_grad_norm_(t, 1.0)
        assert snapshot([t["a"], t["b"][0]]) == before


# ---------------------------------------------------------------- reading calls read


@pytest.mark.parametrize("module", [gradclip, ref], ids=["compiled", "reference"])
def test_reading_calls_take_read_only_and_repeated(module: Any) -> None:
    x = random_values(4, (50,))
    y = random_values(5, (7, 3)).astype(np.float32)
    x.flags.writeable = False
    grads = [x, y, x, y[:, 1]]
    want = math.sqrt(sum(float(np.sum(np.square(g.astype(np.float64)))) for g in grads))
    assert module.get_total_norm(grads) == pytest.approx(want, rel=1e-14)
    norms = module.tensor_norms(grads)
    assert norms[0] == norms[2]
    gs = module.GradientSet(grads)
    assert gs.total_norm() == pytest.approx(want, rel=1e-14)
    np.testing.assert_array_equal(gs.tensor_norms(), norms)
    with pytest.raises(ValueError, match=r"grads\[0\] is read-only"):
        module.clip_grad_norm_(grads, 1.0)
    with pytest.raises(ValueError, match=r"grads\[0\] is read-only"):
        gs.clip_norm_(1.0)


def test_reading_call_takes_objects_that_need_a_copy() -> None:
    # nothing is written back, so a reading call may copy what NumPy cannot view
    class Copying:
        def __init__(self, a: np.ndarray) -> None:
            self.a = a

        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            if copy is False:
                raise ValueError("a copy is needed")
            return self.a.copy()

    c = Copying(np.full(4, 2.0))
    assert gradclip.get_total_norm([c]) == 4.0
    assert ref.get_total_norm([c]) == 4.0
    with pytest.raises(TypeError, match="cannot be used in place"):
        gradclip.clip_grad_norm_([c], 1.0)


# ---------------------------------------------------------------- the documented rule, exactly

# docs/pytrees.md, "Without JAX", checked in an interpreter where JAX cannot be imported:
# which objects are containers (nested and at the top level), which are leaves, and which
# container types the functional forms give back.
WITHOUT_JAX = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib"):
            raise ImportError(name)
sys.meta_path.insert(0, Refuse())
import collections, dataclasses, types
import numpy as np, gradclip

class L(list): pass
class T(tuple): pass
class D(dict): pass
NT = collections.namedtuple("NT", "x y")
@dataclasses.dataclass
class DC:
    w: object

a, b, c = np.full(4, 1.0), np.full(4, 2.0), np.full(1, 3.0)
# containers at any depth, and the container type the copies come back in
for node, back in [
    (L([a, b]), L), (T((a, b)), T), (NT(a, b), NT), ([a, b], list), ((a, b), tuple),
    ({"x": a, "y": b}, dict), (collections.OrderedDict(x=a, y=b), collections.OrderedDict),
    (D(x=a, y=b), D), (collections.defaultdict(list, x=a, y=b), dict),
]:
    t = [node, c]
    assert gradclip.tensor_norms(t).tolist() == [2.0, 4.0, 3.0], type(node)
    out, _ = gradclip.clip_by_global_norm(t, 100.0)
    assert type(out[0]) is back, (type(node), type(out[0]))
# converted once at the top level only
for top in (types.MappingProxyType({"x": a, "y": b}), collections.deque([a, b]),
            (x for x in [a, b]), {"x": a, "y": b}.values()):
    assert gradclip.tensor_norms(top).tolist() == [2.0, 4.0], type(top)
# leaves inside a tree: refused by a writing call, read by a reading call if NumPy reads them
for leaf in (types.MappingProxyType({"x": a}), {1.0}, frozenset([1.0]), DC(a),
             collections.deque([a, b])):
    try:
        gradclip.clip_grad_norm_([leaf, c], 1.0)
    except TypeError as exc:
        assert str(exc).startswith("grads[0] (" + type(leaf).__name__ + ")"), exc
    else:
        raise AssertionError(type(leaf))
# a nested deque of equal-shaped arrays is one stacked array to a reading call
assert gradclip.tensor_norms([collections.deque([a, b]), c]).tolist() == [20 ** 0.5, 3.0]
print("ok")
"""


def test_the_containers_without_jax_are_the_documented_ones() -> None:
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_JAX],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_an_optree_tree_flattened_by_the_caller() -> None:
    # docs/pytrees.md's recipe for optree's custom nodes: flatten, clip the leaves, rebuild
    optree = pytest.importorskip("optree")
    tree = {"a": collections.deque([np.full(4, 1.0), None]), "b": (np.full(4, 2.0),)}
    leaves, spec = optree.tree_flatten(tree, none_is_leaf=True)
    clipped, norm = gradclip.clip_by_global_norm(leaves, 1.0, eps=0.0)
    back = optree.tree_unflatten(spec, clipped)
    assert norm == pytest.approx(math.sqrt(20))
    assert isinstance(back["a"], collections.deque) and back["a"][1] is None
    np.testing.assert_allclose(back["b"][0], np.full(4, 2.0 / math.sqrt(20)))
