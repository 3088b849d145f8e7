# Covers: gradclip.reference has a twin of every public name of gradclip that computes
# something, with the same parameters (names, kinds, defaults, in order), `comm=` aside (the
# reference runs on one process), and so do the public methods of the classes. Fails when a
# public function, class, method or option is added to the compiled path without its twin.
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
from gc_helpers import assert_norm_close, assert_norms_close

import gradclip
from gradclip import reference as ref

# Names with no twin on purpose: machine settings of the compiled path, the Cython include
# directory, the exception type and the reference module itself (shared, not twinned).
NO_TWIN = {
    "available_cpu_targets",
    "cpu_target",
    "get_include",
    "get_num_threads",
    "set_num_threads",
    "reference",
}
SHARED = {"ClipResult", "NonFiniteNormError"}  # the same object in both
DEFAULT_CONSTRUCTIBLE = {"AutoClip", "ZClip"}


def parameters(fn: Any) -> list[tuple[str, Any, Any]]:
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.name != "comm"
    ]


def public_methods(cls: type) -> list[str]:
    """Public methods, inherited ones included, and __init__ / __call__."""
    return sorted(
        name
        for name in dir(cls)
        if (not name.startswith("_") or name in ("__init__", "__call__"))
        and callable(getattr(cls, name))
        and not isinstance(getattr(cls, name), type)
    )


TWINNED = sorted(set(gradclip.__all__) - NO_TWIN - SHARED)


def test_every_public_name_is_twinned_or_exempt() -> None:
    missing = [name for name in TWINNED if not hasattr(ref, name)]
    assert not missing, f"gradclip.reference lacks twins of {missing}"
    assert set(ref.__all__) >= set(TWINNED) | SHARED


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_types_are_the_same_objects(name: str) -> None:
    assert getattr(ref, name) is getattr(gradclip, name)


@pytest.mark.parametrize("name", TWINNED)
def test_twin_has_the_same_parameters(name: str) -> None:
    ours, twin = getattr(gradclip, name), getattr(ref, name)
    if isinstance(ours, type):
        assert isinstance(twin, type), name
        assert public_methods(twin) == public_methods(ours), name
        for method in public_methods(ours):
            assert parameters(getattr(twin, method)) == parameters(getattr(ours, method)), (
                f"{name}.{method}"
            )
        if name in DEFAULT_CONSTRUCTIBLE:  # public attributes, on default instances
            b = twin()
            for attr in dir(ours):  # settings and statistics: read-only attributes
                if not attr.startswith("_") and not callable(getattr(ours, attr)):
                    assert hasattr(b, attr), f"{name}.{attr}"
                    want, got = getattr(ours(), attr), getattr(b, attr)
                    if isinstance(want, tuple):  # a read-only view of a list the twin keeps
                        want, got = list(want), list(got)
                    assert got == want, f"{name}.{attr}"
    else:
        assert parameters(twin) == parameters(ours), name


@pytest.mark.parametrize("mode", ["propagate", "skip", "zero"])
@pytest.mark.parametrize("per_tensor_norms", [False, True])
@pytest.mark.parametrize("bad", [False, True])
def test_clip_result_options_agree(mode: str, per_tensor_norms: bool, bad: bool) -> None:
    rng = np.random.default_rng(5)

    def make() -> list[Any]:
        g = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (7,), (2, 2, 2)]]
        if bad:
            g[1][3] = np.inf
        return [g[0], None, g[1], g[2]]

    ours = make()
    rng = np.random.default_rng(5)
    theirs = make()
    kw = {"nonfinite": mode, "return_result": True, "per_tensor_norms": per_tensor_norms}
    a = gradclip.clip_grad_norm_(ours, 0.5, **kw)
    b = ref.clip_grad_norm_(theirs, 0.5, **kw)
    assert_norm_close(a.total_norm, b.total_norm, 2.0)
    assert (a.clipped, a.found_nonfinite) == (b.clipped, b.found_nonfinite)
    assert a.coef == pytest.approx(b.coef, rel=1e-12, nan_ok=True)
    if per_tensor_norms:
        assert_norms_close(a.tensor_norms, b.tensor_norms, 2.0)
    else:
        assert a.tensor_norms is None and b.tensor_norms is None
    for x, y in zip(ours, theirs, strict=True):
        if x is not None:
            np.testing.assert_allclose(x, y, rtol=1e-6)


def test_gradient_set_twin_behaves_like_the_set() -> None:
    def make() -> list[np.ndarray]:
        return [np.array([3.0, 4.0]), np.full(4, 0.5, np.float32)]

    ours, theirs = gradclip.GradientSet(make()), ref.GradientSet(make())
    assert len(ours) == len(theirs) == 2
    assert ours.total_norm() == pytest.approx(theirs.total_norm(), rel=1e-12)
    assert ours.clip_norm_(1.0) == pytest.approx(theirs.clip_norm_(1.0), rel=1e-12)
    np.testing.assert_allclose(ours.tensor_norms(), theirs.tensor_norms(), rtol=1e-12)
    ours.clip_value_(0.1)
    theirs.clip_value_(0.1)
    for x, y in zip(ours.arrays, theirs.arrays, strict=True):
        np.testing.assert_array_equal(x, y)


def test_package_works_without_the_compiled_core() -> None:
    # the documented fallback: `import gradclip` still works, gradclip.reference computes, and
    # a compiled name raises ImportError saying so
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "gradclip._core":
                    raise ImportError("blocked by the test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        import gradclip
        assert gradclip.reference.get_total_norm(np.array([3.0, 4.0])) == 5.0
        try:
            gradclip.clip_grad_norm_
        except ImportError as exc:
            assert "blocked by the test" in str(exc) and "gradclip.reference" in str(exc)
        else:
            raise AssertionError("no ImportError")
        try:
            gradclip.no_such_name
        except AttributeError:
            pass
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr
