# What an install gives before any gradient is clipped: one version everywhere, a command
# line that says what it has and what an absent extra would install, and an `import gradclip`
# that loads neither ml_dtypes nor the demo's packages, while bfloat16 still works once a
# caller has ml_dtypes. Each check runs in a fresh interpreter (this one has imported
# everything the suite needs). And the tests' registry of operations (tests/operations.py)
# names every public name: each is an operation the "for each operation" tests run, or is
# listed with the reason it is none.
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from operations import NOT_OPERATIONS, OPERATIONS, operations

import gradclip
from gradclip import _cli
from gradclip import reference as ref

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], check=check, capture_output=True, text=True
    )


def _gradclip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gradclip", *args], check=False, capture_output=True, text=True
    )


def _needs(name: str) -> pytest.MarkDecorator:
    # find_spec, not an import: this interpreter's modules must not decide the outcome
    return pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"no {name}")


def test_one_version_everywhere() -> None:
    done = _gradclip("--version")
    assert done.returncode == 0, done.stderr
    # the last line: an editable install that rebuilds on import may print before it
    assert done.stdout.splitlines()[-1] == f"gradclip {gradclip.__version__}"
    assert gradclip.__version__ == importlib.metadata.version("gradclip")
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", gradclip.__version__)


def test_changelog_names_the_version() -> None:
    changelog = ROOT / "CHANGELOG.md"
    if not changelog.is_file():
        pytest.skip("CHANGELOG.md is not next to the tests")
    releases = re.findall(r"^## \[(\d[^\]]*)\]", changelog.read_text(encoding="utf-8"), re.M)
    assert releases, "CHANGELOG.md has no release heading (## [X.Y.Z] - date)"
    assert releases[0] == gradclip.__version__, "the newest CHANGELOG.md entry is another version"


def test_help_lists_every_command() -> None:
    done = _gradclip("--help")
    assert done.returncode == 0, done.stderr
    assert "--version" in done.stdout
    for name, module_name in _cli.COMMANDS.items():
        help_line = " ".join(importlib.import_module(module_name).HELP.split())
        assert re.search(rf"^\s+{name}\s", done.stdout, re.M), done.stdout
        assert help_line in " ".join(done.stdout.split())
    # no command: the same overview, as an error
    bare = _gradclip()
    assert bare.returncode == 2
    assert all(name in bare.stderr for name in _cli.COMMANDS)


@pytest.mark.parametrize(
    ("hidden", "options"),
    [
        ("matplotlib", []),
        ("tqdm", []),
        ("matplotlib", ["--no-progress"]),
        ("sklearn", ["--task", "vision"]),
        ("sklearn", ["--task", "all", "--no-progress"]),
    ],
    ids=["no-matplotlib", "no-tqdm", "no-matplotlib-no-progress", "no-sklearn", "no-sklearn-all"],
)
def test_demo_without_its_extra_says_what_installs_it(hidden: str, options: list[str]) -> None:
    # `python -m gradclip demo` on an install without the demo extra, simulated by making
    # the package unimportable (None in sys.modules) before the command line runs
    code = (
        f"import sys, runpy; sys.modules[{hidden!r}] = None; "
        "sys.argv = ['gradclip', 'demo', '--quick', *sys.argv[1:]]; "
        "runpy.run_module('gradclip', run_name='__main__', alter_sys=True)"
    )
    done = _python(code, *options, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    shown = {"sklearn": "scikit-learn"}.get(hidden, hidden)  # the name pip installs
    assert f"gradclip demo needs {shown}," in done.stderr
    assert 'pip install "gradclip[demo]"' in done.stderr
    assert "Adding problem" not in done.stdout  # refused before the training starts
    assert "Handwritten digits" not in done.stdout


def test_import_loads_neither_ml_dtypes_nor_the_demo_packages() -> None:
    code = (
        "import sys, numpy as np, gradclip, gradclip.reference, gradclip.demo, gradclip._cli\n"
        "g = [np.ones(3, np.float32), np.ones(2, np.float16)]\n"
        "assert gradclip.get_total_norm(g) == gradclip.reference.get_total_norm(g)\n"
        # refusing a dtype it does not know asks whether ml_dtypes is loaded, never imports it
        "for f in (gradclip.get_total_norm, gradclip.reference.get_total_norm):\n"
        "    try:\n"
        "        f(np.ones(3, np.int32))\n"
        "    except TypeError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError('int32 accepted')\n"
        "loaded = {'ml_dtypes', 'matplotlib', 'tqdm', 'sklearn'} & set(sys.modules)\n"
        "assert not loaded, sorted(loaded)\n"
    )
    _python(code)


@_needs("ml_dtypes")
def test_bfloat16_works_once_ml_dtypes_is_imported() -> None:
    # the core learns bfloat16's type number on first sight, after an unknown dtype was
    # refused while ml_dtypes was not yet loaded
    code = (
        "import math, sys, numpy as np, gradclip\n"
        "from gradclip import reference\n"
        "try:\n"
        "    gradclip.get_total_norm(np.ones(3, np.int16))\n"
        "except TypeError:\n"
        "    pass\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        "import ml_dtypes\n"
        "bf16 = ml_dtypes.bfloat16\n"
        "for lib in (gradclip, reference):\n"
        "    g = [np.full(4, 3.0, bf16), np.full(4, 4.0, np.float32)]\n"
        "    assert lib.get_total_norm(g) == 10.0\n"
        "    assert lib.clip_grad_norm_(g, 5.0) == 10.0\n"
        "    assert g[0].dtype == bf16 and float(g[0][0]) == 1.5, g\n"
        "    lib.clip_grad_value_(g, 1.0)\n"
        "    assert float(g[0][0]) == 1.0\n"
        "    assert lib.GradientSet(g).total_norm() == lib.get_total_norm(g)\n"
        "x = np.full((2, 3), 2.0, bf16)\n"
        "assert list(gradclip.clip_by_norm_(x, 1.0, axis=1)) == [math.sqrt(12)] * 2\n"
    )
    _python(code)


@_needs("torch")
@_needs("ml_dtypes")
def test_a_torch_bfloat16_tensor_imports_ml_dtypes_itself() -> None:
    # a torch tensor is bfloat16 without ml_dtypes: viewing it as NumPy imports ml_dtypes
    code = (
        "import sys, torch, gradclip\n"
        "from gradclip import reference\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        "for lib in (reference, gradclip):\n"
        "    t = torch.full((4,), 3.0, dtype=torch.bfloat16)\n"
        "    assert lib.clip_grad_norm_(t, 3.0) == 6.0\n"
        "    assert t.tolist() == [1.5] * 4, t\n"
    )
    _python(code)


def test_operations_registry_covers_the_public_surface() -> None:
    names = [op.name for op in OPERATIONS]
    assert len(set(names)) == len(names), "an operation is registered twice"
    public = set(gradclip.__all__)
    missing = public - set(names) - set(NOT_OPERATIONS)
    assert not missing, f"public names in neither OPERATIONS nor NOT_OPERATIONS: {sorted(missing)}"
    both = set(names) & set(NOT_OPERATIONS)
    assert not both, f"both an operation and not one: {sorted(both)}"
    stale = (set(names) | set(NOT_OPERATIONS)) - public
    assert not stale, f"registered names that are not public: {sorted(stale)}"
    assert all(NOT_OPERATIONS.values()), "every exclusion gives its reason"
    methods = {m for m in dir(gradclip.GradientSet) if not m.startswith("_")} - {"arrays"}
    assert {op.gradient_set for op in OPERATIONS if op.gradient_set} == methods
    for op in OPERATIONS:
        assert op.access in ("read", "write", "copy") and op.shapes in ("any", "batched", "single")
        assert hasattr(ref, op.name), f"gradclip.reference has no {op.name}"


def test_operations_registry_attributes_hold() -> None:
    """What the registry says of each operation is what it does: a "write" operation changes
    its input, "read" and "copy" ones leave it alone (and accept read-only memory)."""
    for op in OPERATIONS:
        rng = np.random.default_rng(0)
        shape = (6, 5) if op.shapes != "single" else (4, 5)
        grads = (rng.standard_normal(shape) * 10).astype(np.float32)
        arg = grads if op.shapes == "single" else [grads]
        before = grads.copy()
        op.call(gradclip, arg)
        changed = not np.array_equal(grads, before)
        assert changed == (op.access == "write"), f"{op.name}: changed={changed}, {op.access}"
        if op.access != "write":
            grads.flags.writeable = False
            op.call(gradclip, arg)
    assert {op.name for op in operations(access=["read"])} == {"get_total_norm", "tensor_norms"}
