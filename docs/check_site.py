"""Check a built site: every public name is in the API reference, every page is there.

    python docs/check_site.py BUILD_DIR      # after sphinx-build -b html docs BUILD_DIR

Reads the site's object inventory (``objects.inv``, which Sphinx writes for every object a
page documents and every page it built) and fails, listing what is missing, unless it has

- every name of ``gradclip.__all__``, ``gradclip.torch.__all__`` and
  ``gradclip.reference.__all__`` as a documented object under its public module;
- the pages a user looks for (getting started, each guide, the demos, the reference pages,
  differences, errors, numerics, benchmarks, changelog).

``tests/test_readme.py`` checks the directives in ``docs/api/*.md``; this checks what the
build made of them (a directive under the wrong ``currentmodule`` documents another name).
CI's docs leg runs it after the build.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

PAGES = [
    "getting-started",
    "demo",
    "demo-sweep",
    "from-pytorch",
    "from-jax",
    "from-numpy",
    "training-loops",
    "mixed-precision",
    "adaptive",
    "per-example",
    "distributed",
    "pytrees",
    "cython",
    "threads",
    "api/index",
    "api/gradclip",
    "api/torch",
    "api/reference",
    "differences",
    "errors",
    "numerics",
    "benchmarks",
    "development",
    "changelog",
]


def inventory(path: Path) -> dict[str, set[str]]:
    """{role: names} of a Sphinx objects.inv (version 2: four header lines, then zlib)."""
    data = path.read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    assert data.startswith(b"# Sphinx inventory version 2"), "not a Sphinx inventory"
    found: dict[str, set[str]] = {}
    for line in zlib.decompress(data[header_end:]).decode().splitlines():
        name, role = line.split(" ", 2)[:2]
        found.setdefault(role, set()).add(name)
    return found


def main(build: Path) -> int:
    import gradclip
    import gradclip.reference
    import gradclip.torch

    found = inventory(build / "objects.inv")
    objects = set().union(*(names for role, names in found.items() if role.startswith("py:")))
    missing = []
    for module in (gradclip, gradclip.torch, gradclip.reference):
        for name in module.__all__:
            full = f"{module.__name__}.{name}"
            if full not in objects:
                missing.append(f"{full} is not in the API reference")
    docs = found.get("std:doc", set())
    missing += [f"page {page} was not built" for page in PAGES if page not in docs]
    for line in missing:
        print(f"check_site: {line}", file=sys.stderr)
    if not missing:
        count = sum(len(m.__all__) for m in (gradclip, gradclip.torch, gradclip.reference))
        print(f"check_site: {count} public names documented, {len(PAGES)} pages built")
    return 1 if missing else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
