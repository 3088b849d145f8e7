"""The compiled core's set-up at import (its bfloat16 lookup, the CPU target, the importing
thread's OpenMP team) and the functions that configure it: threads and CPU targets."""

from __future__ import annotations

import os
import warnings

import numpy as np

from . import _core
from ._inputs import as_array, loaded_bfloat16

__all__ = ["available_cpu_targets", "cpu_target", "get_num_threads", "set_num_threads"]

# bfloat16 is ml_dtypes' type, and the core learns its type number from loaded_bfloat16 when
# it first meets a dtype it does not know: importing ml_dtypes here would cost most of
# gradclip's import time, for users who may never have a bfloat16 array.
_core._init(loaded_bfloat16, as_array)


def _init_target() -> None:
    forced = os.environ.get("GRADCLIP_CPU_TARGET", "").strip()
    if not _core.init_cpu_target(forced):
        warnings.warn(
            f"GRADCLIP_CPU_TARGET={forced!r} is not a CPU target this build and CPU can run "
            f"(available: {', '.join(_core.available_cpu_targets())}); "
            f"using {_core.cpu_target()!r}",
            RuntimeWarning,
            stacklevel=4,  # the package import of _api, as before the split
        )


_init_target()
# The importing thread's large calls use an OpenMP team (created on the first one); calls on
# other threads run on their own thread unless set_num_threads is called there, which creates
# that thread's team at once: an OpenMP runtime that cannot create a team ends the process
# (docs/errors.md, "Out of memory").
_core.allow_team()


def set_num_threads(n: int) -> None:
    """Use up to ``n`` threads for large calls (small calls always run on one)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of threads a large call uses (``OMP_NUM_THREADS`` by default)."""
    return _core.get_num_threads()


def cpu_target() -> str:
    """The instruction set in use: ``'baseline'``, ``'avx2'`` or ``'avx512'`` on x86-64,
    ``'baseline'`` or ``'neon'`` on 64-bit ARM."""
    return _core.cpu_target()


def available_cpu_targets() -> list[str]:
    """The instruction sets compiled in and supported by this CPU, best last."""
    return _core.available_cpu_targets()


def _set_cpu_target(name: str) -> None:
    """Switch the kernel table (for tests and benchmarks; not thread-safe against calls)."""
    if not _core.set_cpu_target(name):
        raise ValueError(
            f"unknown or unsupported CPU target {name!r}; available: {available_cpu_targets()}"
        )
