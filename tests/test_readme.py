# Covers: every Python example of the README and of the documentation pages (docs/*.md) runs
# as written, and prints what its comments say. Each page's examples run in order in one
# namespace (a later block may use what an earlier one defined); a page that imports an
# optional library (torch, jax, ...) skips when it is not installed. The rules for writing an
# example, checked here:
#   - a ```python block runs; a block that cannot run here (it needs mpiexec, or is a piece of
#     a larger program) is written ```{code-block} python with the option `:class: not-run`
#     on its first line, and any other way of marking Python code is an error;
#   - a line `print(...)  # text` must print output that starts with `text` (up to a first
#     ": ", after which the comment may explain), whitespace runs compared as one space;
#   - every print carries its output so;
#   - an example's lines fit the page (88 columns).
# Also here: the API reference names every public name; the docstring examples run; the
# Cython guide's module builds and clips as the Python API does; what the pages say of where
# the first example's clipped norm lands holds over the seeds they name.
from __future__ import annotations

import builtins
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# the sdist ships docs/errors.md alone (a test reads it): the site is there only in a checkout
HAVE_DOCS = (DOCS / "conf.py").exists()
# the optional libraries an example may import (the page skips without them)
OPTIONAL = ("torch", "jax", "mpi4py", "ml_dtypes", "Cython", "matplotlib")

RUN = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"^```\{code-block\} python\n:class: not-run\n", re.M)
ANY_PYTHON = re.compile(r"^```\s*(\{code-block\}\s*)?(python3?|py|pycon|ipython)\b", re.M)
PRINTED = re.compile(r"^\s*print\(.*\)\s+#\s?(?P<out>.+)$")


def pages() -> list[Path]:
    found = [README] if README.exists() else []
    if HAVE_DOCS:
        found += sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
    return found


def page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def blocks(text: str) -> list[tuple[int, str]]:
    """(first line number in the file, code) of each block that runs."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in RUN.finditer(text)]


def needs(code: str) -> list[str]:
    return [lib for lib in OPTIONAL if re.search(rf"^\s*(import|from)\s+{lib}\b", code, re.M)]


@pytest.mark.parametrize("path", pages(), ids=page_id)
def test_every_python_block_runs_or_says_why_not(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    marked = len(ANY_PYTHON.findall(text))
    runnable, not_run = len(blocks(text)), len(NOT_RUN.findall(text))
    assert marked == runnable + not_run, (
        f"{page_id(path)}: {marked - runnable - not_run} Python block(s) neither run "
        "(```python) nor marked ```{code-block} python + :class: not-run"
    )


@pytest.mark.parametrize("path", pages(), ids=page_id)
def test_examples_run_and_print_what_they_say(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    found = blocks(text)
    if not found:
        pytest.skip("no runnable example on this page")
    for lib in needs("\n".join(code for _, code in found)):
        pytest.importorskip(lib)
    printed: dict[int, list[str]] = {}
    name = str(path)

    def recording_print(*args: object, sep: str | None = " ", **kw: object) -> None:
        frame = sys._getframe(1)
        if frame.f_code.co_filename == name:
            printed.setdefault(frame.f_lineno, []).append((sep or " ").join(map(str, args)))
        builtins.print(*args, sep=sep, **kw)  # type: ignore[call-overload]

    namespace: dict[str, object] = {"print": recording_print, "__name__": "__docs__"}
    for first, code in found:
        # blank lines in front, so a traceback names the line of the Markdown file
        exec(compile("\n" * (first - 1) + code, name, "exec"), namespace)
        for i, line in enumerate(code.splitlines(), start=first):
            m = PRINTED.match(line)
            if not m:
                continue
            want = " ".join(m["out"].split(": ")[0].split())
            assert i in printed, f"{page_id(path)}:{i}: this print never ran"
            got = " ".join(printed[i][0].split())
            assert got.startswith(want), f"{page_id(path)}:{i}: printed {got!r}, says {want!r}"


def test_the_examples_are_found() -> None:
    """The collection above could pass by finding nothing: the README and the guides for
    users of each peer must each have an example that runs."""
    if not (README.exists() and HAVE_DOCS):
        pytest.skip("README.md and docs/ are not next to the tests")
    for path in (README, DOCS / "from-pytorch.md", DOCS / "from-jax.md", DOCS / "from-numpy.md"):
        assert blocks(path.read_text(encoding="utf-8")), f"{page_id(path)} has no example"


def test_the_api_reference_lists_every_public_name() -> None:
    """docs/api/*.md name every public name of gradclip, gradclip.torch and
    gradclip.reference in an autodoc directive (a name added to __all__ without a place in
    the reference fails here, not silently in the built site)."""
    if not HAVE_DOCS:
        pytest.skip("docs/ is not next to the tests")
    import gradclip
    from gradclip import reference

    modules = {"gradclip": gradclip.__all__, "reference": reference.__all__}
    if importlib.util.find_spec("torch") is not None:
        import gradclip.torch

        modules["torch"] = gradclip.torch.__all__
    kinds = r"(?:auto|py:)?(?:function|class|exception|module)"
    directive = re.compile(rf"^\.\. {kinds}::\s+(\S+)", re.M)
    for page, names in modules.items():
        text = (DOCS / "api" / f"{page}.md").read_text(encoding="utf-8")
        documented = {n.rsplit(".", 1)[-1] for n in directive.findall(text)}
        missing = sorted(set(names) - documented - {"reference"})
        assert not missing, f"docs/api/{page}.md does not document {missing}"


def test_docstring_examples_of_the_api_reference() -> None:
    """The examples in the docstrings the API reference shows: every module that defines a
    public name of gradclip or gradclip.reference (gradclip.torch's run in
    test_torch_dropin.py)."""
    import doctest

    import gradclip
    from gradclip import reference

    names = [(gradclip, n) for n in gradclip.__all__ if n != "reference"]
    names += [(reference, n) for n in reference.__all__]
    modules = {getattr(mod, n).__module__ for mod, n in names} | {"gradclip.reference"}
    attempted = 0
    for name in sorted(modules):
        result = doctest.testmod(sys.modules[name], optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, f"{name}: {result.failed} docstring example(s) failed"
        attempted += result.attempted
    assert attempted >= 100, f"only {attempted} docstring examples found"


# "with seeds 0 to 19 this example lands above 1.0 on 9 seeds and below on 11, from
# 0.99999996 to 1.00000003": what the README, getting started and numerics say of the first
# example's clipped norm
LANDS = re.compile(
    r"seeds 0 to (?P<last>\d+),? (?:this example )?lands above 1\.0 on (?P<above>\d+) seeds "
    r"and below on (?P<below>\d+), from (?P<low>[\d.]+) to (?P<high>\d+\.\d+)"
)


def test_the_clipped_norm_lands_where_the_pages_say() -> None:
    """The first example of the README (and of getting started), run for each seed the pages
    name: the clipped norm lands above and below 1.0 as often, and within the range, they say
    (a NumPy that changed its random stream, or a change of the clipping arithmetic, fails
    here as the examples' own printed values would)."""
    if not HAVE_DOCS:
        pytest.skip("docs/ is not next to the tests")
    import gradclip

    claims = {}
    for path in (README, DOCS / "getting-started.md", DOCS / "numerics.md"):
        found = LANDS.search(" ".join(path.read_text(encoding="utf-8").split()))
        assert found, f"{page_id(path)} no longer says where the clipped norm lands"
        claims[page_id(path)] = found.groupdict()
    assert len({tuple(c.values()) for c in claims.values()}) == 1, claims
    claim = claims["README.md"]
    code = blocks(README.read_text(encoding="utf-8"))[0][1]
    assert "default_rng(0)" in code, "the README's first example no longer uses seed 0"
    norms = []
    for seed in range(int(claim["last"]) + 1):
        namespace: dict[str, object] = {"print": lambda *a, **k: None}
        exec(code.replace("default_rng(0)", f"default_rng({seed})"), namespace)
        norms.append(gradclip.get_total_norm(namespace["grads"]))
    assert sum(n > 1.0 for n in norms) == int(claim["above"]), norms
    assert sum(n < 1.0 for n in norms) == int(claim["below"]), norms
    assert f"{min(norms):.8f}" == claim["low"], norms
    assert f"{max(norms):.8f}" == claim["high"], norms


# furo shows about 90 columns of code at a desktop width and cuts the rest (the reader must
# scroll sideways to see it): an example's lines fit in 88. Printed output (a fence without a
# language: the demo's tables) may be wider.
CODE_FENCE = re.compile(
    r"^```\s*(?:\{code-block\}\s*)?(python|bash|cython|console)\b.*?\n(.*?)^```", re.S | re.M
)
WIDTH = 88


@pytest.mark.parametrize("path", pages(), ids=page_id)
def test_code_examples_fit_the_page(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    wide = []
    for m in CODE_FENCE.finditer(text):
        first = text.count("\n", 0, m.start(2)) + 1
        for i, line in enumerate(m.group(2).splitlines(), start=first):
            if len(line) > WIDTH:
                wide.append(f"{page_id(path)}:{i}: {len(line)} columns")
    assert not wide, "\n".join(wide)


CYTHON = re.compile(r"^```cython\n(.*?)^```", re.S | re.M)


def test_the_cython_guide_example_builds_and_clips(tmp_path: Path) -> None:
    """docs/cython.md's module, built as the page says (cythonize with gradclip.get_include()
    on the include path) and called: it clips a float32 and a float16 array together, as
    gradclip.clip_grad_norm_ does."""
    if not HAVE_DOCS:
        pytest.skip("docs/ is not next to the tests")
    pytest.importorskip("Cython")
    pytest.importorskip("setuptools")
    import subprocess
    import sysconfig

    import numpy as np

    import gradclip

    if not (Path(gradclip.get_include()) / "gradclip" / "cython_api.pxd").is_file():
        pytest.skip("gradclip is imported from a build without its .pxd (an editable install)")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        pytest.skip("the Python headers (Python.h) are not installed")
    page = (DOCS / "cython.md").read_text(encoding="utf-8")
    (source,) = CYTHON.findall(page)
    assert "# mymod.pyx" in source and 'cythonize("mymod.pyx"' in page
    (tmp_path / "mymod.pyx").write_text("# cython: language_level=3\n" + source)
    (tmp_path / "setup.py").write_text(
        "import gradclip\n"
        "from Cython.Build import cythonize\n"
        "from setuptools import setup\n"
        'setup(ext_modules=cythonize("mymod.pyx", include_path=[gradclip.get_include()],'
        " quiet=True))\n"
    )
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sys.path.insert(0, str(tmp_path))
    try:
        mymod = importlib.import_module("mymod")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mymod", None)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(1000).astype(np.float32)
    b = rng.standard_normal(100).astype(np.float16)
    want_w, want_b = w.copy(), b.copy()
    want = gradclip.clip_grad_norm_([want_w, want_b], max_norm=1.0)
    total = mymod.clip_pair(w, b.view(np.uint16), 1.0)
    assert total == want
    assert np.array_equal(w, want_w) and np.array_equal(b, want_b)


def test_the_readme_set_up_commands_are_the_ones_ci_runs() -> None:
    """The README's install and test commands, each alone in a bash block: the install one
    as getting started gives it, the test one as .ci/run runs it verbatim (so CI runs exactly
    what a reader copies)."""
    if not HAVE_DOCS:
        pytest.skip("docs/ and .ci/ are not next to the tests")
    fences = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    commands = [line.split("#")[0].strip() for block in fences for line in block.splitlines()]
    install, test = "pip install .", 'pip install ".[test]" && python -m pytest'
    assert install in commands and test in commands, commands
    started = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(install)}\s+#", started, re.M)
    assert re.search(rf"^{re.escape(test)}$", started, re.M)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"^\s*{re.escape(test)} \|\| exit 1$", ci, re.M), ".ci/run runs another"


def test_the_benchmarks_summary_is_the_latest_run() -> None:
    """docs/benchmarks.md's summary table quotes bench/results/latest.md: gradclip's time and
    the peers' "x gradclip" of each workload, clipping at two threads (a new run that is
    not carried into the summary fails here)."""
    if not HAVE_DOCS:
        pytest.skip("docs/ and bench/ are not next to the tests")
    latest = (ROOT / "bench" / "results" / "latest.md").read_text(encoding="utf-8")
    rows = {}
    for line in latest.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 9 and cells[1] == "clip" and cells[2] == "2":
            rows[cells[0], cells[3]] = cells
    page = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    summary = re.findall(r"^\| (\w+): [^|]+\|(.*)\|$", page, re.M)
    assert len(summary) >= 5, summary
    for workload, rest in summary:
        time, numpy_x, torch_x = (c.strip() for c in rest.split("|"))
        assert rows[workload, "gradclip"][4] == time, (workload, rows[workload, "gradclip"])
        for peer, quoted in (("numpy", numpy_x), ("torch-foreach", torch_x)):
            measured = rows.get((workload, peer))
            assert quoted == (f"{measured[8]}x" if measured else "-"), (workload, peer)


def test_the_readme_stays_short() -> None:
    """The README is the way in (what gradclip is, install, an example, the demo, the tests,
    links into the documentation), not the documentation itself."""
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move the detail into docs/"


@pytest.mark.parametrize("path", pages(), ids=page_id)
def test_every_print_says_what_it_prints(path: Path) -> None:
    """A print in an example carries its output as a comment (checked above), so an example
    whose output changed fails instead of showing the reader something else."""
    silent = [
        f"{page_id(path)}:{i}"
        for first, code in blocks(path.read_text(encoding="utf-8"))
        for i, line in enumerate(code.splitlines(), start=first)
        if re.match(r"^\s*print\(", line) and not PRINTED.match(line)
    ]
    assert not silent, f"print(...) without '# output' at {silent}"
