# Covers: "nothing modified on error" for memory errors. An allocation-failing shim
# (tests/fault/failalloc.c, built here with the machine's C compiler and loaded with
# LD_PRELOAD into a subprocess only, never into this process) makes the N-th heap allocation
# fail, for N swept over every allocation one call makes (all of them up to MAX_POINTS, a
# deterministic sample of the rest beyond; the report says which), for every writing call of
# the public API and of the C API in tests/fault/driver.py's scenario registry, small (the
# serial path) and over 1 MiB on 2 threads (the OpenMP path), in four modes: after a warm-up
# call, as the first call of the process, as the first call on a new thread started before
# the failure is armed, and on a thread started inside the armed window. Each point must
# either succeed with the bits of an unfailed call, or raise MemoryError with every array
# the call was given (and a stateful clipper's state) byte-identical to before; an abort, an
# exit, a hang, another exception or a partial write fails the test with the scenario, N and
# what happened. Skips, with the reason, off Linux/glibc or where the shim cannot be built.
from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent / "fault"
DRIVER = HERE / "driver.py"
SHIM_SOURCE = HERE / "failalloc.c"
# Every mode, every run. A process's first call and a thread's first call reach thread-local
# blocks (pybind11's per-thread call frame in _core, libstdc++'s exception globals and
# std::call_once state): _core is built with TLS descriptors so that the loader places both in
# the static TLS surplus, allocated with each thread at its creation, instead of on a thread's
# first access, where a failed allocation makes glibc abort ("cannot allocate memory for
# thread-local data"); test_thread_local_blocks_exist_before_a_threads_first_call checks it.
MODES = ("warm", "cold", "thread_pre", "thread_in")
# per scenario and mode: every N up to MAX_POINTS, a deterministic sample of the rest beyond
MAX_POINTS = {"small": 80, "big": 12}
# drivers run at once (each forks one point at a time); GRADCLIP_FAULT_JOBS overrides
JOBS = max(1, int(os.environ.get("GRADCLIP_FAULT_JOBS") or min(2, os.cpu_count() or 1)))
POINT_TIMEOUT = 15.0  # seconds for one point (a healthy one takes milliseconds)
DRIVER_TIMEOUT = 900  # seconds for a scenario's whole sweep


def _driver() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gradclip_fault_driver", DRIVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


SCENARIO_IDS: list[str] = list(_driver().BY_ID)
# The heavier half (arrays over 1 MiB, 2 threads) runs in the full suite only.
PARAMS = [
    pytest.param(
        sid, mode, id=f"{sid}-{mode}", marks=[pytest.mark.slow] if sid.endswith("-big") else []
    )
    for sid in SCENARIO_IDS
    for mode in MODES
]


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return f"the fault-injection shim needs Linux's LD_PRELOAD (this is {sys.platform})"
    if platform.libc_ver()[0] != "glibc":
        return "the fault-injection shim is written for glibc"
    if os.environ.get("LD_PRELOAD"):
        # under tools/sanitize.sh: ASan owns malloc, and a second interposer would fight it
        return (
            f"LD_PRELOAD is set already ({os.environ['LD_PRELOAD']}): the shim needs malloc to "
            "itself (under tools/sanitize.sh ASan owns it)"
        )
    return None


def _compiler() -> list[str] | None:
    for cc in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(shlex.split(cc)[0]):
            return shlex.split(cc)
    return None


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shim, built for this run."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler on PATH (CC, sysconfig's CC, cc, gcc, clang) to build the shim")
    out = tmp_path_factory.mktemp("failalloc") / "libfailalloc.so"
    cmd = [*cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(SHIM_SOURCE), "-ldl"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        pytest.skip(f"the shim does not build here ({shlex.join(cmd)}):\n{proc.stderr[-2000:]}")
    return out


def _env(shim: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_PRELOAD"] = str(shim)
    # the driver forks per point: no BLAS thread pool in it
    env.update(OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def test_the_sweep_covers_every_operation_that_writes_or_copies() -> None:
    """Each writing or copying operation of the registry (tests/operations.py), and each
    GradientSet method that writes, has a scenario in the driver: a new operation cannot
    miss the sweep."""
    from operations import operations

    named = {s.name.split("-", 1)[0] for s in _driver().SCENARIOS}
    wanted = {op.name for op in operations(access=("write", "copy"))}
    wanted |= {
        f"GradientSet.{op.gradient_set}"
        for op in operations(access=("write",))
        if op.gradient_set is not None
    }
    missing = sorted(wanted - named)
    assert not missing, f"tests/fault/driver.py has no scenario for {missing}"


def test_shim_fails_the_nth_allocation_once(shim: Path) -> None:
    """The shim itself: counting, exactly one failure at N, every interposed function."""
    script = textwrap.dedent(
        """
        import ctypes, json
        lib = ctypes.CDLL(None)
        lib.failalloc_count.restype = lib.failalloc_failed.restype = ctypes.c_long
        lib.failalloc_arm.argtypes = [ctypes.c_long]
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        for name in ("malloc", "valloc", "pvalloc"):
            getattr(lib, name).restype, getattr(lib, name).argtypes = vp, [sz]
        lib.calloc.restype, lib.calloc.argtypes = vp, [sz, sz]
        lib.realloc.restype, lib.realloc.argtypes = vp, [vp, sz]
        lib.aligned_alloc.restype, lib.aligned_alloc.argtypes = vp, [sz, sz]
        lib.memalign.restype, lib.memalign.argtypes = vp, [sz, sz]
        lib.posix_memalign.restype = ctypes.c_int
        lib.posix_memalign.argtypes = [ctypes.POINTER(vp), sz, sz]
        lib.free.argtypes = [vp]
        def pm():
            p = vp()
            return p.value if lib.posix_memalign(ctypes.byref(p), 64, 100) == 0 else None
        calls = {
            "malloc": lambda: lib.malloc(100), "calloc": lambda: lib.calloc(10, 10),
            "realloc": lambda: lib.realloc(None, 100),
            "aligned_alloc": lambda: lib.aligned_alloc(64, 128),
            "memalign": lambda: lib.memalign(64, 100), "valloc": lambda: lib.valloc(100),
            "pvalloc": lambda: lib.pvalloc(100), "posix_memalign": pm,
        }
        out = {}
        for name, f in calls.items():
            for n in (1, 3):
                lib.failalloc_arm(n)
                got = [f() for _ in range(5)]
                count, failed = lib.failalloc_count(), lib.failalloc_failed()
                lib.failalloc_arm(0)
                for p in got:
                    lib.free(p)
                out[f"{name}:{n}"] = [[p is None for p in got], count >= 5, failed]
        lib.failalloc_arm(0)
        p = lib.malloc(1000)
        out["count_only"] = [p is not None, lib.failalloc_count() >= 1, lib.failalloc_failed()]
        lib.free(p)
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(shim),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for name in (
        "malloc",
        "calloc",
        "realloc",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "posix_memalign",
    ):
        # ctypes may allocate between the calls, so the failure is at or before the N-th call
        for n in (1, 3):
            nulls, counted, failed = got[f"{name}:{n}"]
            assert failed == 1 and counted, (name, n, got[f"{name}:{n}"])
            assert sum(nulls) <= 1, (name, n, nulls)  # exactly once
        assert got[f"{name}:1"][0] == [True, False, False, False, False], (name, got[f"{name}:1"])
    assert got["count_only"] == [True, True, 0]


# Which of the call path's thread-local blocks a new thread has before its first gradclip
# call, read with dl_iterate_phdr (dlpi_tls_data is the calling thread's block of a module, or
# NULL while the loader has yet to allocate it, which it does on the thread's first access and
# aborts the process if that allocation fails). Run in a subprocess: what the test runner has
# loaded before (PyTorch, say) changes where the loader could place the blocks.
_TLS_PROBE = textwrap.dedent(
    """
    import ctypes, json, os, sys, threading
    class Info(ctypes.Structure):
        _fields_ = [("addr", ctypes.c_size_t), ("name", ctypes.c_char_p),
                    ("phdr", ctypes.c_void_p), ("phnum", ctypes.c_uint16),
                    ("adds", ctypes.c_ulonglong), ("subs", ctypes.c_ulonglong),
                    ("modid", ctypes.c_size_t), ("tls", ctypes.c_void_p)]
    CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Info), ctypes.c_size_t, ctypes.c_void_p)
    def probe():
        out = {}
        def each(info, size, _):
            if size >= ctypes.sizeof(Info) and info.contents.modid:
                name = os.path.basename((info.contents.name or b"").decode())
                out[name] = info.contents.tls is not None
            return 0
        ctypes.CDLL(None).dl_iterate_phdr(CB(each), None)
        return out
    if sys.argv[1] == "torch":
        import torch
    import numpy, gradclip
    gradclip.clip_grad_norm_([numpy.ones(10)], 1.0)  # a warm-up on the main thread
    got = {}
    t = threading.Thread(target=lambda: got.update(probe()))
    t.start()
    t.join()
    core = [k for k in got if k.startswith("_core.")]
    print(json.dumps({"core": [got[k] for k in core],
                      "libstdcxx": [v for k, v in got.items() if k.startswith("libstdc++")]}))
    """
)


@pytest.mark.parametrize("first", ["numpy", "torch"])
def test_thread_local_blocks_exist_before_a_threads_first_call(first: str) -> None:
    """A new thread's first call allocates no thread-local block: _core's (pybind11's call
    frame) is there from the thread's creation, and so is libstdc++'s unless another library
    made it dynamic before gradclip was loaded (PyTorch does: docs/errors.md, "Out of
    memory")."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("dl_iterate_phdr's dlpi_tls_data is glibc's")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("_core is built with TLS descriptors on x86-64 only")
    if first == "torch":
        pytest.importorskip("torch")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _TLS_PROBE, first],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    # pybind11's block, reached by every call (none where _core has no thread-local variable,
    # as with pybind11 2.x, which keeps its call frames in Python's thread state)
    assert all(got["core"]), got
    if first == "numpy":
        assert got["libstdcxx"] == [True], got  # exceptions, std::call_once


class _Reports:
    """The driver's reports, one subprocess per scenario (every mode), JOBS at a time, started
    for every scenario this session selected as soon as the first is asked for."""

    def __init__(self, shim: Path, sids: list[str]) -> None:
        self.shim, self.pending, self.running = shim, list(sids), {}
        self.done: dict[str, Any] = {}

    def _start(self, sid: str) -> None:
        cmd = [
            sys.executable,
            str(DRIVER),
            sid,
            "--modes",
            ",".join(MODES),
            "--timeout",
            str(POINT_TIMEOUT),
            "--max-points",
            str(MAX_POINTS[sid.rsplit("-", 1)[1]]),
        ]
        # closed by the matching wait(), after the driver has ended
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=_env(self.shim), stdout=out, stderr=err, text=True)
        self.running[sid] = (proc, out, err, time.monotonic())

    def _collect(self, sid: str) -> None:
        proc, out, err, t0 = self.running.pop(sid)
        try:
            proc.wait(timeout=max(1.0, DRIVER_TIMEOUT - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.done[sid] = f"{sid}: the driver did not finish in {DRIVER_TIMEOUT} s"
            return
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            self.done[sid] = f"{sid}: the driver failed ({proc.returncode}):\n{err.read()[-3000:]}"
        else:
            self.done[sid] = json.loads(out.read())
        out.close()
        err.close()

    def get(self, sid: str) -> dict[str, Any]:
        if sid not in self.done and sid not in self.running:
            self.pending.remove(sid)
            self.pending.insert(0, sid)
        while sid not in self.done:
            while self.pending and len(self.running) < JOBS:
                self._start(self.pending.pop(0))
            oldest = next(iter(self.running))
            self._collect(sid if sid in self.running else oldest)
        got = self.done[sid]
        if isinstance(got, str):
            pytest.fail(got)
        return got  # type: ignore[no-any-return]

    def close(self) -> None:
        for proc, out, err, _ in self.running.values():
            proc.kill()
            proc.wait()
            out.close()
            err.close()


@pytest.fixture(scope="module")
def reports(shim: Path, request: pytest.FixtureRequest) -> Iterator[_Reports]:
    selected = [
        item.callspec.params["sid"]
        for item in request.session.items
        if item.path == Path(__file__)
        and hasattr(item, "callspec")
        and "sid" in item.callspec.params
    ]
    r = _Reports(shim, list(dict.fromkeys(selected)))
    try:
        yield r
    finally:
        r.close()


@pytest.mark.parametrize(("sid", "mode"), PARAMS)
def test_memory_error_before_any_write(reports: _Reports, sid: str, mode: str) -> None:
    rep = reports.get(sid)["modes"][mode]
    sampled = " (sampled)" if rep["sampled"] else ""
    summary = (
        f"{sid}, {mode}: {rep['count']} allocations, {rep['swept']} failed in turn{sampled}, "
        f"outcomes {rep['outcomes']}"
    )
    failures = rep["failures"]
    assert not failures, (
        summary
        + "".join(f"\n  N={f['n']}: {f['what'][:600]}" for f in failures[:12])
        + (f"\n  ... and {len(failures) - 12} more" if len(failures) > 12 else "")
    )
    # the sweep exercised something: a call that allocates had failures injected (a warm call
    # of the C API's in-place functions may allocate nothing at all)
    assert rep["count"] == 0 or rep["injected"] > 0, summary
