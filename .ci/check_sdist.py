"""Check the file list of an sdist: exactly what a build and the tests need, nothing else.

Usage: python .ci/check_sdist.py dist/gradclip-X.Y.Z.tar.gz   (from a git checkout)

The sdist must hold every tracked file that KEEP names and no other file (besides the
PKG-INFO the build backend writes): no untracked file (a build directory, a demo figure, a
virtualenv, a tool's cache), no maintainers' tooling, no benchmark results. Exits 1 with the
unexpected and the missing files. pyproject.toml's [tool.scikit-build] sdist.exclude and
sdist.include make the sdist; this is the independent statement of what it should be.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What the sdist is for, as paths relative to the project root (a trailing / is a directory).
KEEP = (
    # the build: the extension's sources and how to build them
    "pyproject.toml",
    "CMakeLists.txt",
    "cpp/",
    "src/",
    # the tests, and what they read outside tests/
    "tests/",
    "docs/errors.md",  # tests/test_error_messages.py checks every message against it
    "examples/",  # tests/mpi runs examples/mpi_data_parallel.py
    ".ci/smoke_wheel.py",  # the cibuildwheel test command, which may build from this sdist
    # what a redistributor must ship and a user reads
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
)
GENERATED = {"PKG-INFO"}

# Never in an sdist, tracked or not; named separately for a clearer message.
NEVER = re.compile(
    r"(^|/)(build|dist|\.git|\.venv[^/]*|venv|__pycache__|\.pytest_cache|\.hypothesis|"
    r"\.mypy_cache|\.ruff_cache|\.benchmarks|gradclip-demo-output|[^/]+\.egg-info)(/|$)"
    r"|\.(png|so|pyd|dylib|dll|o|a|pyc|whl)$"
)


def kept(path: str) -> bool:
    return any(path == k or (k.endswith("/") and path.startswith(k)) for k in KEEP)


def tracked_files() -> set[str]:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True, text=True
    ).stdout
    return {p for p in out.split("\0") if p}


def sdist_files(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1:
        sys.exit(f"{path}: expected one top-level directory, found {sorted(tops)}")
    return {n.split("/", 1)[1] for n in names}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.exit("usage: python .ci/check_sdist.py SDIST.tar.gz")
    sdist = Path(argv[0])
    have = sdist_files(sdist)
    want = {p for p in tracked_files() if kept(p)} | GENERATED
    never = sorted(p for p in have if NEVER.search(p))
    unexpected = sorted(have - want - set(never))
    missing = sorted(want - have)
    for label, paths in (
        ("must never be in an sdist", never),
        ("unexpected (untracked, or not needed to build and test)", unexpected),
        ("missing", missing),
    ):
        for p in paths:
            print(f"{sdist.name}: {label}: {p}")
    if never or unexpected or missing:
        return 1
    print(f"{sdist.name}: {len(have)} files, as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
