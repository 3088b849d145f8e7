# Reading and copying calls take any array-like NumPy can read (numbers, NumPy scalars, nested
# lists of numbers are leaves of a tree; a copy is fine since nothing is written back); writing
# calls keep refusing them, and only their callers are told of the copying functions.
# GradientSet holds the arrays it was made with: replacing, adding or removing an entry of
# the list or dict it was made from is an error naming the position, never a silent miss.
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

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
    with pytest.raises(ValueError) as info:
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
