# The pytree rule has one home, the compiled parse: gradclip._tree flattens through it
# (_core.tree_flatten), and every error names a position the same way, by its path through
# the containers (grads['enc'][0]), whichever layer raises it.
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import pytest

import gradclip
from gradclip import _core, _tree


class Pair(NamedTuple):
    w: object
    b: object


def nested():
    rng = np.random.default_rng(0)
    od = OrderedDict([("z", rng.standard_normal(2)), ("a", rng.standard_normal(3))])
    od.move_to_end("z")  # its own order, not the dict storage's
    return {
        "enc": [rng.standard_normal(4), None, (rng.standard_normal(1),)],
        "dec": Pair(rng.standard_normal((2, 2)), rng.standard_normal(2)),
        "od": od,
    }


def test_flatten_gives_the_parse_order():
    t = nested()
    leaves, _spec = _tree.flatten(t)
    parsed = gradclip.GradientSet(t).arrays
    assert len(leaves) == len(parsed) == 7
    for a, b in zip(leaves, parsed, strict=True):
        assert a is b
    assert [leaf.shape for leaf in leaves[-2:]] == [(3,), (2,)]  # OrderedDict order: a, then z


def test_unflatten_rebuilds_the_containers():
    t = nested()
    leaves, spec = _tree.flatten(t)
    back = _tree.unflatten(spec, leaves)
    assert isinstance(back["dec"], Pair) and isinstance(back["enc"][2], tuple)
    assert isinstance(back["od"], OrderedDict) and list(back["od"]) == ["a", "z"]
    assert back["enc"][1] is None and back["enc"][0] is t["enc"][0]


def test_a_leaf_root_has_no_structure():
    x = np.ones(3)
    leaves, spec = _core.tree_flatten(x)
    assert leaves == [x] and spec is None


def test_depth_limit_is_the_parse_limit():
    deep: list = [np.ones(1)]
    for _ in range(250):
        deep = [deep]
    with pytest.raises(TypeError, match="nested more than 200 levels"):
        _tree.flatten(deep)
    with pytest.raises(TypeError, match="nested more than 200 levels"):
        gradclip.get_total_norm(deep)


def test_per_tensor_nonfinite_names_the_path():
    t = {"enc": [np.ones(2), np.array([np.inf])]}
    with pytest.raises(gradclip.NonFiniteNormError, match=r"grads\['enc'\]\[1\]"):
        gradclip.clip_grad_norm_per_tensor_(t, 1.0, nonfinite="raise")


def test_agc_layout_error_names_the_path():
    t = {"w": [np.ones((2, 2, 2))]}
    p = {"w": [np.ones((2, 2, 2))]}
    with pytest.raises(ValueError, match=r"grads\['w'\]\[0\]"):
        gradclip.adaptive_grad_clip_(t, p, axis=3)
