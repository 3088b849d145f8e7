# The tests in this folder need several MPI processes: run them with
#   mpiexec -n 2 python -m pytest tests/mpi -p no:cacheprovider
# (and -n 3). Under a plain `pytest` run they are skipped without importing mpi4py.
import os

import pytest

_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def _launched_by_mpiexec() -> bool:
    return any(int(os.environ.get(v, "1") or 1) > 1 for v in _SIZE_VARS)


def pytest_collection_modifyitems(config, items):
    # GRADCLIP_REQUIRE_MPI=1 (CI): never skip; the comm fixture fails on a single process
    if _launched_by_mpiexec() or os.environ.get("GRADCLIP_REQUIRE_MPI") == "1":
        return
    skip = pytest.mark.skip(reason="MPI tests: run under `mpiexec -n 2 python -m pytest tests/mpi`")
    for item in items:
        if "tests/mpi" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
