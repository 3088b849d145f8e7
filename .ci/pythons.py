"""Print the oldest and newest CPython versions, of those named on stdin (one per line, as
``pyenv versions --bare`` lists them), that pyproject.toml's requires-python allows."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib
from packaging.specifiers import SpecifierSet
from packaging.version import Version

meta = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
spec = SpecifierSet(meta["project"]["requires-python"])
found = sorted(Version(s) for s in sys.stdin.read().split() if re.fullmatch(r"\d+\.\d+\.\d+", s))
ok = [v for v in found if v in spec]
print(f"{ok[0]} {ok[-1]}" if ok else "")
