# gradclip.GradientSet: validated once, then every method gives exactly what the plain
# function gives on the same arrays; arrays are kept alive; a resized, re-allocated or
# read-only array is refused with nothing written.
import gc
import math

import numpy as np
import pytest

import gradclip
from gradclip import reference as ref

ml_dtypes = pytest.importorskip("ml_dtypes", exc_type=ImportError)

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


def make(seed=0, n=40):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = tuple(int(s) for s in rng.integers(0, 40, size=int(rng.integers(0, 3))))
        out.append(np.asarray(rng.standard_normal(shape) * 3).astype(DTYPES[i % 4]))
    out[5] = None
    return out


def copies(grads):
    return [None if g is None else g.copy() for g in grads]


def same(a, b):
    for x, y in zip(a, b, strict=True):
        if x is None:
            assert y is None
        else:
            assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_methods_match_functions(p):
    a = make()
    b = copies(a)
    gs = gradclip.GradientSet(a)
    assert len(gs) == len(a)
    assert gs.arrays[5] is None and gs.arrays[0] is a[0]
    assert gs.total_norm(p) == gradclip.get_total_norm(b, p)
    np.testing.assert_array_equal(gs.tensor_norms(p), gradclip.tensor_norms(b, p))
    assert gs.clip_norm_(0.5, p) == gradclip.clip_grad_norm_(b, 0.5, p)
    same(a, b)
    np.testing.assert_array_equal(
        gs.clip_norm_per_tensor_(0.1, p), gradclip.clip_grad_norm_per_tensor_(b, 0.1, p)
    )
    same(a, b)
    gs.clip_value_(0.01)
    gradclip.clip_grad_value_(b, 0.01)
    same(a, b)
    gs.clip_with_norm_(1.0, 7.0)
    gradclip.clip_grads_with_norm_(b, 1.0, 7.0)
    same(a, b)


def test_nonfinite_modes():
    a = [np.array([1.0, np.inf], np.float32), np.ones(3)]
    before = copies(a)
    gs = gradclip.GradientSet(a)
    with pytest.raises(gradclip.NonFiniteNormError):
        gs.clip_norm_(1.0, error_if_nonfinite=True)
    same(a, before)
    assert gs.clip_norm_(1.0, nonfinite="skip") == math.inf
    same(a, before)
    gs.clip_norm_(1.0, nonfinite="zero")
    assert all(not g.any() for g in a)


def test_keeps_arrays_alive():
    gs = gradclip.GradientSet(np.full(1000, 2.0, np.float32) for _ in range(3))
    gc.collect()
    assert gs.total_norm() == pytest.approx(math.sqrt(3000 * 4.0))
    gs.clip_norm_(1.0)
    assert gs.total_norm() == pytest.approx(1.0, rel=1e-5)


def test_resized_array_is_refused_and_nothing_written():
    a = [np.ones(10), np.ones(1000)]
    gs = gradclip.GradientSet(a)
    a[1].resize(5000, refcheck=False)  # re-allocates the buffer behind the set's back
    snapshot = [g.tobytes() for g in a]
    with pytest.raises(ValueError, match=r"grads\[1\] was resized or re-allocated"):
        gs.clip_norm_(1e-3)
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        gs.total_norm()
    assert [g.tobytes() for g in a] == snapshot


def test_reshaped_in_place_is_refused():
    a = [np.ones((4, 6))]
    gs = gradclip.GradientSet(a)
    # same memory, other layout; ndarray.resize changes the shape in place (setting
    # .shape does too, but NumPy 2.5 deprecates it)
    a[0].resize((6, 4), refcheck=False)
    assert a[0].shape == (6, 4)
    with pytest.raises(ValueError, match="resized or re-allocated"):
        gs.tensor_norms()


def test_made_read_only_is_refused():
    a = [np.ones(10), np.ones(10)]
    gs = gradclip.GradientSet(a)
    a[0].flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[0\] is read-only"):
        gs.clip_value_(0.5)
    assert (a[1] == 1).all()


@pytest.mark.parametrize(
    ("grads", "exc"),
    [
        ([np.ones(3, np.int32)], TypeError),
        (["x"], TypeError),
    ],
)
def test_validated_at_construction(grads, exc):
    with pytest.raises(exc):
        gradclip.GradientSet(grads)


@pytest.mark.parametrize("impl", [gradclip, ref], ids=["compiled", "reference"])
def test_read_only_and_repeated_arrays_read_but_not_written(impl):
    # a reading method takes read-only memory and the same array twice (as every peer's
    # norm does); a writing method refuses them, and writes nothing
    a = np.full(4, 3.0)
    r = np.full(4, 4.0)
    r.flags.writeable = False
    gs = impl.GradientSet([a, r, a])
    assert gs.total_norm() == pytest.approx(math.sqrt(9 * 4 * 2 + 16 * 4))
    np.testing.assert_array_equal(gs.tensor_norms(), [6.0, 8.0, 6.0])
    for write in (lambda: gs.clip_norm_(1.0), lambda: gs.clip_value_(1.0)):
        with pytest.raises(ValueError, match=r"grads\[1\] is read-only|the same memory"):
            write()
    assert (a == 3.0).all()


def test_scalar_arguments_checked():
    gs = gradclip.GradientSet([np.ones(3)])
    with pytest.raises(ValueError, match="max_norm must be finite and > 0"):
        gs.clip_norm_(0.0)
    with pytest.raises(ValueError, match="norm_type must be > 0 or inf"):
        gs.total_norm(-1.0)
    with pytest.raises(ValueError, match="clip_value must be finite and >= 0"):
        gs.clip_value_(float("nan"))
    with pytest.raises(TypeError):
        gs.clip_norm_("1")


def test_a_replaced_entry_is_noticed_at_any_depth():
    # an Optax/Flax-like tree of dicts and lists: replacing an array anywhere in it is an
    # error naming its path, as at the top, never a silent clip of the old array
    w, b, h = np.full(3, 2.0), np.full(2, 2.0), np.full(4, 2.0)
    tree = {"enc": {"w": w, "b": b}, "blocks": ([h],)}
    gs = gradclip.GradientSet(tree)
    norm = gs.total_norm()
    tree["enc"]["w"] = np.full(3, 9.0)
    with pytest.raises(ValueError, match=r"^grads\['enc'\]\['w'\] was replaced in the dict"):
        gs.clip_norm_(1.0)
    assert (b == 2.0).all() and (h == 2.0).all()  # nothing written
    tree["enc"]["w"] = w
    assert gs.total_norm() == norm  # put back: the set works again
    tree["blocks"][0][0] = np.full(4, 9.0)  # a list inside a tuple
    with pytest.raises(ValueError, match=r"^grads\['blocks'\]\[0\]\[0\] was replaced in the list"):
        gs.tensor_norms()
    tree["blocks"][0][0] = h
    tree["blocks"][0].append(np.ones(1))
    with pytest.raises(
        ValueError,
        match=r"^grads\['blocks'\]\[0\] \(a list in the tree the GradientSet was made from\) "
        r"has 2 entries now, 1 when",
    ):
        gs.clip_value_(1.0)


def test_a_set_made_from_a_tuple_watches_the_lists_inside():
    inner = [np.ones(3)]
    gs = gradclip.GradientSet((inner, np.ones(2)))
    inner[0] = np.ones(3)
    with pytest.raises(ValueError, match=r"^grads\[0\]\[0\] was replaced in the list"):
        gs.total_norm()
    inner.clear()
    with pytest.raises(ValueError, match=r"^grads\[0\] \(a list in the tree"):
        gs.total_norm()
