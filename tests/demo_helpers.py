# Shared helpers of the demo's tests (not a test module): one BLAS thread for the in-process
# runs, the command line run end to end, and a training snippet run in fresh processes under
# other BLAS kernels, NumPy SIMD paths and gradclip CPU targets.
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gradclip import demo as demo_package
from gradclip.demo.runner import WORKER_MALLOC

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS threads only slow down the demo's small products, and test workers may share
    the cores: one thread while the block runs (nothing when threadpoolctl is missing)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def run_command_line(args: Sequence[str], out_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``gradclip demo ARGS --out OUT_DIR --jobs 2`` in this process, as a user runs it (two
    worker processes); checks that it succeeded and that every figure it wrote is a PNG, and
    returns what it printed."""
    pytest.importorskip("matplotlib", exc_type=ImportError)
    pytest.importorskip("tqdm", exc_type=ImportError)
    code = demo_package.main(["demo", *args, "--out", str(out_dir), "--jobs", "2"])
    assert code == 0
    figures = sorted(out_dir.glob("*.png"))
    assert figures
    for figure in figures:
        assert figure.read_bytes()[:8] == PNG_MAGIC, figure
    return capsys.readouterr().out


def outputs_in_fresh_processes(code: str, settings: Sequence[dict[str, str]]) -> list[str]:
    """What ``python -c CODE`` prints under each setting: the environment without any
    OpenBLAS, NumPy or OpenMP variable, plus the setting's (they are read at import)."""
    prefixes = ("OPENBLAS", "NPY_", "OMP")
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    outputs = []
    for extra in settings:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**base, **extra},
            check=True,
            capture_output=True,
            text=True,
        )
        outputs.append(done.stdout.strip())
    return outputs


def worker_environment(group: list[tuple[str, int]], config: Any, report: Any) -> list[Any]:
    """A training function for ``gradclip.demo.runner.run_all`` that trains nothing: the
    environment variables the process running it sees, once per run."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", *WORKER_MALLOC)
    return [{name: os.environ.get(name) for name in names} for _ in group]
