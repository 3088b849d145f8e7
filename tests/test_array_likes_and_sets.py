# Reading and copying calls take any array-like NumPy can read (numbers, NumPy scalars, nested
# lists of numbers are leaves of a tree; a copy is fine since nothing is written back); writing
# calls keep refusing them, and only their callers are told of the copying functions.
# Disjoint views of one buffer are decided exactly, and only when their memory bounds
# intersect: separate arrays never reach numpy.shares_memory.
# GradientSet holds the arrays it was made with: replacing, adding or removing an entry of
# the list or dict it was made from is an error naming the position, never a silent miss.
from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from operations import Operation, operations

import gradclip
from gradclip import reference as ref

MODULES = [pytest.param(gradclip, id="compiled"), pytest.param(ref, id="reference")]


@pytest.mark.parametrize("m", MODULES)
def test_reading_and_copying_calls_read_numbers(m: Any) -> None:
    assert m.get_total_norm([3.0, 4.0]) == 5.0
    np.testing.assert_array_equal(m.tensor_norms([3.0, np.float32(-4.0)]), [3.0, 4.0])
    clipped, norm = m.clip_by_global_norm([3.0, 4.0], 1.0, eps=0.0)
    assert norm == 5.0
    np.testing.assert_allclose([float(c) for c in clipped], [0.6, 0.8])
    assert [float(c) for c in m.clip_by_value([3.0, -4.0], 1.0)] == [1.0, -1.0]


def test_writing_calls_refuse_numbers_and_name_the_copying_call() -> None:
    with pytest.raises(TypeError, match=r"grads\[0\] is a float .*clip_by_global_norm"):
        gradclip.clip_grad_norm_([3.0, 4.0], 1.0)


def test_a_copying_call_is_never_told_to_use_itself() -> None:
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only") as info:
        gradclip.clip_by_global_norm([np.ones(3)], 1.0, out=[ro])
    assert (
        str(info.value)
        == "out[0] is read-only; gradclip writes in place and needs a writeable array"
    )
    with pytest.raises(TypeError) as info2:
        gradclip.clip_by_global_norm([np.ones(3)], 1.0, out=[1.0])
    assert "clip_by_global_norm" not in str(info2.value)
    with pytest.raises(TypeError) as info3:
        gradclip.clip_by_global_norm([np.ones(3), object()], 1.0)
    assert "clip_by_global_norm" not in str(info3.value)


def test_name_array_pairs_get_the_dict_hint() -> None:
    params = {"w": np.ones(3), "b": np.ones(2)}
    with pytest.raises(TypeError, match=r"grads\[0\]\[0\] is a str \('w'\).*dict\(pairs\)"):
        gradclip.clip_grad_norm_(list(params.items()), 1.0)
    with pytest.raises(TypeError, match=r"grads\[0\] is a str \('w'\).*dict key"):
        gradclip.clip_grad_norm_(list(params), 1.0)


def test_a_replaced_list_entry_is_an_error_naming_it() -> None:
    grads = [np.ones(3), np.ones(4)]
    gs = gradclip.GradientSet(grads)
    assert gs.total_norm() == pytest.approx(np.sqrt(7))
    grads[0][...] = 2.0  # writing into the arrays is how a set is meant to be used
    assert gs.total_norm() == pytest.approx(np.sqrt(16))
    old = grads[1]
    grads[1] = np.full(4, 5.0)
    with pytest.raises(ValueError, match=r"grads\[1\] was replaced in the list"):
        gs.total_norm()
    with pytest.raises(ValueError, match=r"grads\[1\] was replaced in the list"):
        gs.clip_norm_(1.0)
    grads[1] = old  # put back: the set works again
    assert gs.total_norm() == pytest.approx(np.sqrt(16))
    grads.append(np.ones(2))
    with pytest.raises(ValueError, match=r"has 3 entries now, 2 when the set was made"):
        gs.clip_value_(1.0)


def test_a_replaced_dict_value_is_an_error_naming_its_key() -> None:
    grads = {"w": np.ones(3), "b": np.ones(2)}
    gs = gradclip.GradientSet(grads)
    grads["b"] = np.zeros(2)
    with pytest.raises(ValueError, match=r"grads\['b'\] was replaced in the dict"):
        gs.tensor_norms()
    del grads["b"]
    with pytest.raises(ValueError, match=r"has 1 entries now, 2 when the set was made"):
        gs.tensor_norms()


def test_a_set_from_a_tuple_or_a_generator_has_nothing_to_watch() -> None:
    a, b = np.ones(3), np.ones(4)
    assert gradclip.GradientSet((a, b)).total_norm() == pytest.approx(np.sqrt(7))
    assert gradclip.GradientSet(x for x in (a, b)).total_norm() == pytest.approx(np.sqrt(7))


# -- the copying alternative is named to callers of writing functions, and only to them


def _awkward_leaves() -> dict[str, Any]:
    """Leaves a writing call must refuse and a reading or copying call may read."""
    ro = np.ones(3)
    ro.flags.writeable = False
    leaves: dict[str, Any] = {"read-only": ro, "float": 3.0, "object": object()}
    try:
        import jax.numpy as jnp
    except ImportError:
        return leaves
    else:  # JAX arrays: read-only, and bfloat16 ones NumPy can only copy
        leaves["jax-float32"] = jnp.ones(3, jnp.float32)
        leaves["jax-bfloat16"] = jnp.ones(3, jnp.bfloat16)
    return leaves


COPY_HINT = re.compile(r"clip_by_global_norm|clipped copies")


def _single(op: Operation, leaf: Any) -> Any:
    return leaf if op.shapes == "single" else [leaf]


@pytest.mark.parametrize("op", operations(), ids=repr)
def test_only_writing_calls_name_the_copying_call(op: Operation) -> None:
    for kind, leaf in _awkward_leaves().items():
        grads = _single(op, leaf)
        if op.shapes == "batched" and kind == "float":
            continue  # a number has no batch axis: that error comes first
        if op.access == "write":
            with pytest.raises((TypeError, ValueError)) as info:
                op.call(gradclip, grads)
            assert COPY_HINT.search(str(info.value)), f"{op.name}, {kind} leaf: {info.value}"
            continue
        try:  # a reading or copying call reads the leaf, or says why not
            op.call(gradclip, grads)
        except (TypeError, ValueError) as exc:
            message = str(exc)
        else:
            continue
        assert not COPY_HINT.search(message), f"{op.name}, {kind} leaf: {message}"


@pytest.mark.parametrize("op", [o for o in operations() if o.gradient_set], ids=repr)
def test_gradient_set_methods_name_the_copying_call_only_when_writing(op: Operation) -> None:
    ro = np.ones(3)
    ro.flags.writeable = False
    gs = gradclip.GradientSet([ro])
    method = getattr(gs, op.gradient_set)  # type: ignore[arg-type]
    args = {"clip_norm_": (0.5,), "clip_with_norm_": (0.5, 100.0), "clip_value_": (0.01,)}
    args |= {"clip_norm_per_tensor_": (0.5,)}
    if op.access == "read":
        method()
        return
    with pytest.raises(ValueError, match="read-only") as info:
        method(*args[op.gradient_set])
    assert COPY_HINT.search(str(info.value))


# -- the exact overlap check is off the common path


def _count_shares_memory(body: str) -> list[int]:
    """Runs ``body`` in a fresh interpreter whose numpy.shares_memory counts its calls (the
    compiled core looks it up once, on first need, so this must precede any gradclip call);
    ``body`` prints the count after each step with ``mark()``."""
    code = (
        "import numpy as np\n"
        "calls = [0]\n"
        "real = np.shares_memory\n"
        "def counting(*a, **k):\n"
        "    calls[0] += 1\n"
        "    return real(*a, **k)\n"
        "np.shares_memory = counting\n"
        "import gradclip\n"
        "def mark():\n"
        "    print(calls[0])\n" + body
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    return [int(line) for line in out.stdout.split()]


def test_exact_overlap_is_off_the_common_path() -> None:
    counts = _count_shares_memory(
        "rng = np.random.default_rng(0)\n"
        # W4-like: 100 separate small arrays, then the rows of one buffer (adjacent, disjoint
        # bounds): only the bounds check runs
        "grads = [rng.standard_normal((10, 10)).astype(np.float32) for _ in range(100)]\n"
        "for _ in range(3):\n"
        "    gradclip.clip_grad_norm_(grads, 1.0)\n"
        "    gradclip.clip_grad_value_(grads, 0.01)\n"
        "gs = gradclip.GradientSet(grads)\n"
        "gs.clip_norm_(1.0)\n"
        "buf = np.ones((100, 10), np.float32)\n"
        "gradclip.clip_grad_norm_([buf[i] for i in range(100)], 1.0)\n"
        "gradclip.clip_grad_norm_([buf[:50], buf[50:]], 1.0)\n"
        "mark()\n"
        # views whose bounds intersect: now the exact check runs (the counter works)
        "qkv = np.ones((16, 96), np.float32)\n"
        "gradclip.clip_grad_norm_([qkv[:, :32], qkv[:, 32:64], qkv[:, 64:]], 1.0)\n"
        "mark()\n"
    )
    assert counts[0] == 0, f"numpy.shares_memory ran {counts[0]} times for separate arrays"
    assert counts[1] >= 2  # each intersecting pair of the split: q-k, k-v (and q-v)


# -- gradclip.torch: a reading call's message speaks of no lost update


def test_torch_reading_call_does_not_speak_of_a_lost_update() -> None:
    torch = pytest.importorskip("torch")
    import gradclip.torch as gct

    neg = torch.ones(4)._neg_view()  # torch's numpy() refuses a tensor with its negative bit
    with pytest.raises(TypeError, match=r"tensors\[1\] cannot be viewed") as info:
        gct.get_total_norm([torch.ones(2), neg])
    assert "update" not in str(info.value)
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.ones(4)._neg_view()
    with pytest.raises(TypeError, match=r"parameters\[0\]\.grad .*lose the update"):
        gct.clip_grad_norm_([p], 1.0)


def test_torch_single_tensor_by_keyword_is_named_without_an_index() -> None:
    torch = pytest.importorskip("torch")
    import gradclip.torch as gct

    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(1).expand(3)  # stride 0: refused by a writing call
    for call in (
        lambda: gct.clip_grad_norm_(parameters=p, max_norm=1.0),
        lambda: gct.clip_grad_value_(parameters=p, clip_value=1.0),
        lambda: gct.clip_grads_with_norm_(parameters=p, max_norm=1.0, total_norm=10.0),
    ):
        with pytest.raises(ValueError, match=r"^parameters\.grad has elements that share"):
            call()
