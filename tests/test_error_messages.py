# Covers: error messages readable by people. One case per row of the table
# in docs/errors.md: the call raises the documented exception class, nothing is written, the
# message names the argument (and the list position), says what was expected and what was
# found, and appears in the table verbatim (a documented message ending in "…" is a prefix:
# NumPy's own explanation follows). Every message in the table is produced by some case, so
# the table and the code cannot drift apart silently. gradclip.reference raises the same
# classes for the same calls (its wording may differ).
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from gc_helpers import snapshot
from numpy.exceptions import AxisError
from numpy.lib.stride_tricks import as_strided

import gradclip
from gradclip import NonFiniteNormError
from gradclip import reference as ref

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def g() -> np.ndarray:
    return np.ones(3, np.float32)


def readonly() -> np.ndarray:
    a = np.ones(3, np.float32)
    a.flags.writeable = False
    return a


class Param:
    """A parameter of a NumPy autograd library (as mygrad's Tensor): data plus a ``.grad``."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.grad = np.zeros_like(data)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.data


@dataclass
class Case:
    call: Callable[[ModuleType, dict[str, Any]], Any]
    exc: type[BaseException]
    must_name: tuple[str, ...]  # the argument/position, what was expected, what was found
    reference: bool = True  # gradclip.reference has this function and this check


class Unreadable:
    """An object whose array conversion fails (np.asarray raises)."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("no array here")


def _hard_pair() -> list[np.ndarray]:
    # two 5-d views whose overlap numpy.shares_memory cannot decide within max_work=65536
    base = np.zeros(200_000, np.float32)
    x = as_strided(base, (3, 4, 10, 9, 5), tuple(4 * v for v in (9684, 2421, 242, 27, 5)))
    y = as_strided(base[6:], (9, 11, 5, 6, 7), tuple(4 * v for v in (6658, 605, 121, 20, 3)))
    return [x, y]


def _replaced_entry(m: ModuleType, s: dict[str, Any]) -> Any:
    grads = [s["g"]]
    gs = m.GradientSet(grads)
    grads[0] = s["h"]
    return gs.total_norm()


def _added_entry(m: ModuleType, s: dict[str, Any]) -> Any:
    grads = [s["g"]]
    gs = m.GradientSet(grads)
    grads.append(s["h"])
    return gs.total_norm()


def _added_nested_entry(m: ModuleType, s: dict[str, Any]) -> Any:
    grads = [s["g"]]
    gs = m.GradientSet({"k": grads})
    grads.append(s["h"])
    return gs.total_norm()


def _resized_set(m: ModuleType, s: dict[str, Any]) -> Any:
    gs = m.GradientSet([s["a"]])
    s["a"].resize(8, refcheck=False)
    return gs.total_norm()


CASES: dict[str, Case] = {
    "grads-none": Case(lambda m, s: m.get_total_norm(None), TypeError, ("grads", "None")),
    "grads-number": Case(lambda m, s: m.get_total_norm(3.0), TypeError, ("grads", "float")),
    "not-viewable": Case(
        lambda m, s: m.clip_grad_norm_([s["g"], object()], 1.0), TypeError, ("grads[1]", "object")
    ),
    "number-leaf": Case(
        lambda m, s: m.clip_grad_norm_([s["g"], [1.0, 2.0]], 1.0),
        TypeError,
        ("grads[1][0]", "float", "not an array"),
        reference=True,
    ),
    "numpy-scalar": Case(
        lambda m, s: m.clip_grad_norm_({"w": s["g"], "b": np.float32(1.0)}, 1.0),
        TypeError,
        ("grads['b']", "NumPy scalar", "float32"),
    ),
    "key-leaf": Case(
        lambda m, s: m.clip_grad_norm_(list({"w": s["g"]}.items()), 1.0),
        TypeError,
        ("grads[0][0]", "str", "'w'", "dict(pairs)", ".values()"),
    ),
    "dict-key": Case(
        lambda m, s: m.clip_grad_norm_(list({"w": s["g"]}), 1.0),
        TypeError,
        ("grads[0]", "str", "'w'", "dict itself"),
    ),
    "read-object": Case(
        lambda m, s: m.get_total_norm([s["g"], object()]), TypeError, ("grads[1]", "object")
    ),
    "read-unreadable": Case(
        lambda m, s: m.get_total_norm([s["g"], Unreadable()]),
        TypeError,
        ("grads[1]", "Unreadable", "np.asarray"),
        reference=False,  # the reference lets NumPy's TypeError through
    ),
    "out-readonly": Case(
        lambda m, s: m.clip_by_global_norm([s["g"]], 1.0, out=[s["ro"]]),
        ValueError,
        ("out[0]", "read-only"),
        reference=False,  # the reference has its own out checks
    ),
    "overlap-undecided": Case(
        lambda m, s: m.clip_grad_value_(_hard_pair(), 0.0),
        ValueError,
        ("grads[0]", "grads[1]", "may overlap", "max_work"),
        reference=False,  # the reference decides without a work bound
    ),
    "replaced-entry": Case(
        _replaced_entry, ValueError, ("grads[0]", "replaced", "GradientSet"), reference=False
    ),
    "added-entry": Case(
        _added_entry, ValueError, ("grads", "2 entries", "1 when"), reference=False
    ),
    "added-nested-entry": Case(
        _added_nested_entry,
        ValueError,
        ("grads['k']", "in the tree", "2 entries", "1 when"),
        reference=False,
    ),
    "masked": Case(
        lambda m, s: m.clip_grad_norm_([s["g"], np.ma.masked_array(np.ones(3), [0, 1, 0])], 1.0),
        TypeError,
        ("grads[1]", "masked"),
    ),
    "parameter": Case(
        lambda m, s: m.clip_grad_norm_([s["g"], Param(np.ones(3))], 1.0),
        TypeError,
        ("grads[1]", ".grad", "p.grad"),
    ),
    "max_norm-bool": Case(
        lambda m, s: m.clip_grad_norm_(s["g"], True), TypeError, ("max_norm", "bool")
    ),
    "dtype": Case(
        lambda m, s: m.get_total_norm([s["g"], np.arange(3, dtype=np.int32)]),
        TypeError,
        ("grads[1]", "int32", "expected"),
    ),
    "dtype-single": Case(
        lambda m, s: m.get_total_norm(np.ones(3, np.complex64)),
        TypeError,
        ("grads", "complex64", "expected"),
    ),
    "object": Case(
        lambda m, s: m.get_total_norm([s["g"], np.array([1.0, None])]),
        TypeError,
        ("grads[1]", "object"),
    ),
    "byte-order": Case(
        lambda m, s: m.get_total_norm([np.ones(3, ">f4")]),
        TypeError,
        ("grads[0]", ">f4", "expected native"),
    ),
    "max_norm-type": Case(
        lambda m, s: m.clip_grad_norm_(s["g"], "1"), TypeError, ("max_norm", "real", "str")
    ),
    "norm_type-type": Case(
        lambda m, s: m.get_total_norm(s["g"], None), TypeError, ("norm_type", "real", "None")
    ),
    "norm_type-name": Case(
        lambda m, s: m.get_total_norm(s["g"], "l2"), TypeError, ("norm_type", "'fro'", "'l2'")
    ),
    "value-both": Case(
        lambda m, s: m.clip_grad_value_(s["g"], 1.0, min=0.0), TypeError, ("clip_value", "min")
    ),
    "value-none": Case(
        lambda m, s: m.clip_grad_value_(s["g"]), TypeError, ("clip_value", "min", "max")
    ),
    "value-min-max": Case(
        lambda m, s: m.clip_grad_value_(s["g"], min=1.0, max=-1.0),
        ValueError,
        ("min", "max", "1.0", "-1.0"),
    ),
    "value-bound-nan": Case(
        lambda m, s: m.clip_grad_value_(s["g"], min=math.nan), ValueError, ("min", "nan")
    ),
    "slice-bounds": Case(
        lambda m, s: m.clip_by_norm_(np.ones((2, 3)), np.ones(3), axis=1),
        ValueError,
        ("max_norm", "(3,)", "(2,)"),
    ),
    "noise": Case(
        lambda m, s: m.clip_per_example_([np.ones((2, 3))], 1.0, noise_multiplier=-1.0),
        ValueError,
        ("noise_multiplier", ">= 0", "-1.0"),
    ),
    "rng": Case(
        lambda m, s: m.clip_per_example_([np.ones((2, 3))], 1.0, noise_multiplier=1.0, rng=0),
        TypeError,
        ("rng", "Generator", "int"),
    ),
    "x-list": Case(lambda m, s: m.clip_by_norm_([s["g"]], 1.0), TypeError, ("x", "list")),
    "x-dtype": Case(
        lambda m, s: m.clip_by_norm_(np.arange(3, dtype=np.int32), 1.0),
        TypeError,
        ("x", "int32", "expected"),
    ),
    "axis-bool": Case(
        lambda m, s: m.clip_by_norm_(np.ones((2, 3)), 1.0, axis=True), TypeError, ("axis",)
    ),
    "threads-type": Case(
        lambda m, s: m.set_num_threads("2"), TypeError, ("n", "int", "str"), reference=False
    ),
    "readonly": Case(
        lambda m, s: m.clip_grad_norm_([s["g"], s["ro"]], 1.0),
        ValueError,
        ("grads[1]", "read-only", "writeable"),
    ),
    "readonly-single": Case(
        lambda m, s: m.clip_grad_norm_(s["ro"], 1.0), ValueError, ("grads", "read-only")
    ),
    "x-readonly": Case(lambda m, s: m.clip_by_norm_(s["ro"], 1.0), ValueError, ("x", "read-only")),
    "same-twice": Case(
        lambda m, s: m.clip_grad_norm_([s["g"], s["h"], s["g"]], 1.0),
        ValueError,
        ("grads[0]", "grads[2]"),
    ),
    "overlap": Case(
        lambda m, s: m.clip_grad_norm_([s["buf"][:6], s["buf"][4:]], 1.0),
        ValueError,
        ("grads[0]", "grads[1]", "overlap"),
    ),
    "self-overlap": Case(
        lambda m, s: m.clip_grad_norm_([as_strided(s["buf"], (4,), (0,), writeable=True)], 1.0),
        ValueError,
        ("grads[0]", "share memory"),
        reference=False,  # see tests/test_fuzz.py::test_reference_rejects_self_overlap
    ),
    "max_norm-nan": Case(
        lambda m, s: m.clip_grad_norm_(s["g"], math.nan), ValueError, ("max_norm", "> 0", "nan")
    ),
    "max_norm-zero": Case(
        lambda m, s: m.clip_grad_norm_(s["g"], 0.0), ValueError, ("max_norm", "> 0", "0.0")
    ),
    "norm_type-zero": Case(
        lambda m, s: m.get_total_norm(s["g"], 0), ValueError, ("norm_type", "> 0", "0.0")
    ),
    "norm_type-nan": Case(
        lambda m, s: m.get_total_norm(s["g"], math.nan), ValueError, ("norm_type", "nan")
    ),
    "eps": Case(
        lambda m, s: m.clip_grad_norm_(s["g"], 1.0, eps=-1.0), ValueError, ("eps", ">= 0", "-1.0")
    ),
    "clip_value": Case(
        lambda m, s: m.clip_grad_value_(s["g"], -1.0), ValueError, ("clip_value", ">= 0", "-1.0")
    ),
    "total_norm": Case(
        lambda m, s: m.clip_grads_with_norm_(s["g"], 1.0, -1.0),
        ValueError,
        ("total_norm", ">= 0", "-1.0"),
    ),
    "nonfinite": Case(
        lambda m, s: m.clip_grad_norm_(s["g"], 1.0, nonfinite="ignore"),
        ValueError,
        ("nonfinite", "propagate", "ignore"),
    ),
    "conflict": Case(
        lambda m, s: m.clip_grad_norm_(s["g"], 1.0, error_if_nonfinite=True, nonfinite="skip"),
        ValueError,
        ("error_if_nonfinite", "skip"),
    ),
    "axis-range": Case(
        lambda m, s: m.clip_by_norm_(np.ones((2, 3)), 1.0, axis=2), AxisError, ("axis", "2")
    ),
    "axis-repeated": Case(
        lambda m, s: m.clip_by_norm_(np.ones((2, 3)), 1.0, axis=(1, 1)), ValueError, ("axis",)
    ),
    "resized": Case(_resized_set, ValueError, ("grads[0]", "resized"), reference=False),
    "threads-value": Case(
        lambda m, s: m.set_num_threads(0), ValueError, ("n", ">= 1", "0"), reference=False
    ),
    "nonfinite-raise": Case(
        lambda m, s: m.clip_grad_norm_([np.array([np.nan])], 1.0, nonfinite="raise"),
        NonFiniteNormError,
        ("non-finite", "nan"),
    ),
    "error_if_nonfinite": Case(
        lambda m, s: m.get_total_norm([np.array([np.inf])], error_if_nonfinite=True),
        NonFiniteNormError,
        ("non-finite", "inf"),
    ),
    "per-tensor-raise": Case(
        lambda m, s: m.clip_grad_norm_per_tensor_(
            [s["g"], np.array([np.nan])], 1.0, nonfinite="raise"
        ),
        NonFiniteNormError,
        ("non-finite", "nan"),
    ),
}


def documented_messages() -> list[str]:
    """The last column of every row of the table in docs/errors.md."""
    if not DOC.exists():  # an installed copy of the tests without the docs
        pytest.skip("docs/errors.md is not next to the tests")
    out = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `") or line.startswith("| ---"):
            continue
        cell = line.rstrip().rstrip("|").rsplit(" | ", 1)[1].strip()
        out.append(re.sub(r"^`+ ?|`+$", "", cell).rstrip())
    return out


def fresh_state() -> dict[str, Any]:
    return {"g": g(), "h": g(), "ro": readonly(), "buf": np.ones(10), "a": np.ones(4)}


def raise_case(module: ModuleType, case: Case) -> BaseException:
    state = fresh_state()
    before = snapshot(list(state.values()))
    with pytest.raises(case.exc) as info:
        case.call(module, state)
    if case.call is not _resized_set:  # that case resizes an array on purpose
        assert snapshot(list(state.values())) == before, "an array changed, yet the call raised"
    return info.value


@pytest.mark.parametrize("name", CASES)
def test_message(name: str) -> None:
    case = CASES[name]
    exc = raise_case(gradclip, case)
    assert type(exc) is case.exc, f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    for part in case.must_name:
        assert part in msg, f"{msg!r} does not mention {part!r}"
    documented = documented_messages()
    assert any(
        msg == d or (d.endswith("…") and msg.startswith(d[:-1].rstrip())) for d in documented
    ), f"message not in docs/errors.md (update the table): {msg!r}"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.reference])
def test_reference_raises_the_same_class(name: str) -> None:
    exc = raise_case(ref, CASES[name])
    assert isinstance(exc, CASES[name].exc)


def test_every_documented_message_is_tested() -> None:
    produced = []
    for case in CASES.values():
        state = fresh_state()
        try:
            case.call(gradclip, state)
        except Exception as exc:
            produced.append(str(exc))
    for d in documented_messages():
        hit = any(p == d or (d.endswith("…") and p.startswith(d[:-1].rstrip())) for p in produced)
        assert hit, f"docs/errors.md documents a message no case produces: {d!r}"
