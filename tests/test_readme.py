# Covers: the README's examples for users coming from PyTorch, JAX / Optax and NumPy autograd
# code run as written; each skips when its library is not installed.
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS = {"torch": "torch", "jax": "jax", "numpy": "numpy"}


def examples() -> dict[str, str]:
    if not README.exists():  # an installed copy of the tests without the README
        return {}
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n# readme-example: (\w+)\n(.*?)```", text, re.S)
    return dict(blocks)


def test_every_library_has_an_example() -> None:
    if not README.exists():
        pytest.skip("README.md is not next to the tests")
    assert set(examples()) == set(NEEDS)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_example_runs(name: str) -> None:
    code = examples().get(name)
    if code is None:
        pytest.skip("README.md is not next to the tests")
    pytest.importorskip(NEEDS[name])
    if name == "torch":
        pytest.importorskip("gradclip.torch")
    exec(compile(code, f"README.md ({name} example)", "exec"), {})
