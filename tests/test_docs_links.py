# Covers: the README and the documentation pages name only files the project contains. Every
# relative Markdown link ([text](path), ![alt](path), with or without #anchor) resolves to a
# file of the checkout, and its anchor to a heading of that page; every path of the source
# tree written as inline code (`tests/test_x.py`, `cpp/src/kernels.cpp`,
# `tests/test_x.py::test_name`) names a file or folder that exists, and a test named after
# `::` is defined in that file. Sphinx checks the {doc} and {func} references of the site;
# this checks what it does not see: the README (not part of the site), the files named in
# prose, and links into the source tree.
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HAVE_DOCS = (DOCS / "conf.py").exists()

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\]\n]|\n(?!\n))*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`]+)`")
# a project document named without its folder (`CONTRIBUTING.md`): a bare `train.py` is the
# reader's own script, a bare `agc.py` a peer's file, so only these are checked
BARE_DOC = re.compile(r"^[A-Z][A-Z0-9_-]*(\.(md|txt|rst))?$")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    """The Markdown a reader meets: the README, the site's pages, and the benchmarks page the
    site includes. CHANGELOG.md is history: it may name files since renamed."""
    found = [ROOT / "README.md", ROOT / "bench" / "README.md"]
    found += sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
    return [p for p in found if p.exists()]


def page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def prose(text: str) -> str:
    """The text outside fenced blocks, line count kept."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def slug(heading: str) -> str:
    """The anchor GitHub and MyST give a heading: lower case, markup and punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"`|\*|\{[a-z:]+\}", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(prose(path.read_text(encoding="utf-8")))}


def ignored(relative: str) -> bool:
    """Whether .gitignore leaves the path out (build/, docs/_build/, ...): what a build
    makes is not a file of the project, and a page may name it."""
    patterns = [
        line.strip().rstrip("/")
        for line in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pat) or fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], pat)
        for prefix in prefixes
        for pat in patterns
    )


def source_roots() -> set[str]:
    """The top-level names of the source tree."""
    return {p.name for p in ROOT.iterdir() if p.name != ".git" and not ignored(p.name)}


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def test_the_pages_are_found() -> None:
    if not HAVE_DOCS:
        pytest.skip("docs/ is not next to the tests")
    names = {page_id(p) for p in pages()}
    assert {"README.md", "docs/index.md", "docs/numerics.md", "bench/README.md"} <= names
    assert {"tests", "docs", "src", "cpp", "bench"} <= source_roots()
    assert "build" not in source_roots()


@pytest.mark.parametrize("path", pages() if HAVE_DOCS else [], ids=page_id)
def test_relative_links_resolve(path: Path) -> None:
    text = prose(path.read_text(encoding="utf-8"))
    broken = []
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        where = f"{page_id(path)}:{line_of(text, m.start())}"
        if not dest.exists():
            broken.append(f"{where}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where}: {target} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("path", pages() if HAVE_DOCS else [], ids=page_id)
def test_source_paths_in_prose_exist(path: Path) -> None:
    text = prose(path.read_text(encoding="utf-8"))
    roots = source_roots()
    top_level = {p.name for p in ROOT.iterdir()}
    missing = []
    last_file: Path | None = None  # `::test_b` after `tests/test_x.py::test_a` is in test_x.py
    for m in CODE.finditer(text):
        for token in " ".join(m.group(1).split()).replace(":: ", "::").split(" "):
            token = token.strip(",;()")
            if token.startswith("::") and last_file is not None:
                file, test = last_file, token[2:]
            else:
                name, _, test = token.partition("::")
                if any(c in name for c in "*<>{}$") or "..." in name:
                    continue
                if "/" not in name and BARE_DOC.match(name) and "." in name:
                    if name not in top_level:
                        where = f"{page_id(path)}:{line_of(text, m.start())}"
                        missing.append(f"{where}: {name} (the project has no such file)")
                    continue
                if re.fullmatch(r"test_\w+\.py", name):
                    # a test file named without its folder (the tables of differences, the
                    # benchmarks page)
                    found = sorted((ROOT / "tests").rglob(name)) + sorted(
                        (ROOT / "bench").rglob(name)
                    )
                    file = found[0] if found else ROOT / "tests" / name
                elif name.split("/")[0] not in roots or ignored(name):
                    continue
                else:
                    file = ROOT / name
            where = f"{page_id(path)}:{line_of(text, m.start())}"
            if not file.exists():
                missing.append(f"{where}: {token} (no such file)")
                continue
            if not file.is_file():
                continue
            last_file = file
            test = test.split("[")[0]
            if test and not re.search(
                rf"^\s*(def|class)\s+{re.escape(test.split('::')[-1])}\b",
                file.read_text(encoding="utf-8"),
                re.M,
            ):
                missing.append(f"{where}: {token} (no {test} in {file.name})")
    assert not missing, "\n".join(missing)
