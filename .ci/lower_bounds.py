"""Check that .ci/constraints-oldest.txt pins exactly the lower bounds of pyproject.toml.

Every requirement of the build system, the core and the test and demo extras that has a
lower bound (``>=``) must appear as ``name==bound``; nothing else may, and a package named
twice must have the same bound both times. Exits 1 with the differences.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_bounds() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [
        *meta["build-system"]["requires"],
        *meta["project"]["dependencies"],
        *meta["project"]["optional-dependencies"]["test"],
        *meta["project"]["optional-dependencies"]["demo"],
    ]
    out: dict[str, str] = {}
    for req in reqs:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", req)
        if m is None:
            sys.exit(f"pyproject.toml: {req!r} has no plain lower bound (name>=version)")
        name, bound = canonical(m[1]), m[2]
        if out.get(name, bound) != bound:
            sys.exit(f"pyproject.toml: {name} has two lower bounds ({out[name]}, {bound})")
        out[name] = bound
    return out


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / ".ci" / "constraints-oldest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonical(name)] = version.strip()
    return out


def main() -> int:
    want, have = lower_bounds(), pins()
    if want == have:
        print(
            "constraints-oldest.txt pins the lower bounds of pyproject.toml:", len(want), "packages"
        )
        return 0
    for name in sorted(want.keys() | have.keys()):
        if want.get(name) != have.get(name):
            print(f"{name}: pyproject.toml >= {want.get(name)}, pinned == {have.get(name)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
