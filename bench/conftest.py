"""Benchmark fixtures: the workloads, thread settings, and the results table.

Every timed case records the bytes the minimal algorithm must move; the session ends by
writing ``bench/results/latest.json`` (and printing a table) with GB/s per case, the ratio to
the machine's own read / read+write ceiling measured in the same run, and gradclip's
speed-up over each peer. ``python bench/report.py`` turns that file into the markdown table
and the PNG plot.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The NumPy peer runs as on a user's machine: OpenBLAS picks its kernel for this CPU and its
# cache sizes itself. OPENBLAS_* variables (a CI image may pin a core type) are dropped for
# this process only, before NumPy loads OpenBLAS; the tests and CI keep theirs. The report
# names the BLAS kernel in use (threadpoolctl).
DROPPED_BLAS_VARS = sorted(k for k in os.environ if k.startswith("OPENBLAS_"))
_BLAS_LOADED_BEFORE = "numpy" in sys.modules
for _k in DROPPED_BLAS_VARS:
    del os.environ[_k]

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import gradclip  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None


def bert_base_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of BERT-base (110M parameters): embeddings, 12 encoder layers, pooler."""
    h, inter, layers = 768, 3072, 12
    shapes: list[tuple[int, ...]] = [(30522, h), (512, h), (2, h), (h,), (h,)]
    for _ in range(layers):
        for _ in range(4):  # query, key, value, attention output
            shapes += [(h, h), (h,)]
        shapes += [(h,), (h,)]  # attention layer norm
        shapes += [(h, inter), (inter,), (inter, h), (h,)]
        shapes += [(h,), (h,)]  # output layer norm
    shapes += [(h, h), (h,)]  # pooler
    return shapes


def torch_model_shapes() -> list[tuple[int, ...]]:
    """A model of 9.97M parameters in 50 tensors: a 1000x512 embedding, three transformer
    layers of width 512 (attention, a 2048-wide feed-forward, layer norms), a final norm."""
    h, inter = 512, 2048
    shapes: list[tuple[int, ...]] = [(1000, h)]
    for _ in range(3):
        for _ in range(4):  # query, key, value, attention output
            shapes += [(h, h), (h,)]
        shapes += [(h, inter), (inter,), (inter, h), (h,)]
        shapes += [(h,), (h,), (h,), (h,)]  # two layer norms
    shapes += [(h,)]  # final layer norm
    return shapes


def _make(shapes: list[tuple[int, ...]], dtype: np.dtype, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # filled (so every page is touched before timing), values like gradients: small, signed
    return [(rng.standard_normal(s, dtype=np.float32) * 1e-3).astype(dtype) for s in shapes]


WORKLOADS = {
    "W1": lambda: _make([(64 * 1024 * 1024,)], np.dtype(np.float32), 1),
    "W2": lambda: _make(bert_base_shapes(), np.dtype(np.float32), 2),
    "W3": lambda: _make([(1000,)] * 10_000, np.dtype(np.float32), 3),
    "W4": lambda: _make([(100,)] * 100, np.dtype(np.float32), 4),
    "W5-bf16": lambda: _make(bert_base_shapes(), BF16, 5),
    "W5-f16": lambda: _make(bert_base_shapes(), np.dtype(np.float16), 6),
    "T10M": lambda: _make(torch_model_shapes(), np.dtype(np.float32), 7),
}


class Workload:
    """A workload's arrays, a pristine copy to restore them from, and a flat buffer of
    the same bytes for the ceiling."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.grads = WORKLOADS[name]()
        self.orig = [g.copy() for g in self.grads]
        self.nbytes = sum(g.nbytes for g in self.grads)
        self.flat = np.ones(self.nbytes // 8, dtype=np.uint64)
        self._flat32 = None
        self._torch = None

    def flat32(self) -> np.ndarray:
        """A float32 buffer of the same bytes (ones: normal numbers, unchanged by x *= 1)."""
        if self._flat32 is None:
            self._flat32 = np.ones(self.nbytes // 4, dtype=np.float32)
        return self._flat32

    def restore(self) -> None:
        for g, o in zip(self.grads, self.orig, strict=True):
            np.copyto(g, o)

    def torch_params(self):
        """torch Parameters whose .grad shares memory with self.grads (zero copy)."""
        if self._torch is None:
            import torch

            params = []
            for g in self.grads:
                if g.dtype == BF16:
                    t = torch.from_numpy(g.view(np.int16)).view(torch.bfloat16)
                else:
                    t = torch.from_numpy(g)
                p = torch.nn.Parameter(torch.empty(t.shape, dtype=t.dtype), requires_grad=True)
                p.grad = t
                params.append(p)
            self._torch = params
        return self._torch


_CACHE: dict[str, Workload] = {}


def get_workload(name: str) -> Workload:
    # One workload alive at a time keeps peak memory near 1 GiB.
    if name not in _CACHE:
        _CACHE.clear()
        _CACHE[name] = Workload(name)
    return _CACHE[name]


# ------------------------------------------------------------------ ceilings
# Two ceilings for the same bytes, both timed in the same run: the engine's own probes
# (probe_read: XOR of every 64-bit word, software prefetch; probe_rw: read and write back)
# and the simplest compiled float32 loops (bench/plain_ceiling.c: a sum of squares, x *= c),
# built here with the machine's C compiler. Ratios are to the faster of the two.
CEILINGS = ["ceiling-read", "ceiling-rw", "ceiling-read-plain", "ceiling-rw-plain"]
_PLAIN: list = []


def plain_ceiling_lib():
    """bench/plain_ceiling.c compiled and loaded, or None without a C compiler."""
    if not _PLAIN:
        lib = None
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if cc:
            out = Path(tempfile.mkdtemp(prefix="gradclip-bench-")) / "plain_ceiling.so"
            src = Path(__file__).with_name("plain_ceiling.c")
            flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
            done = subprocess.run(
                [cc, *flags, str(src), "-o", str(out)], capture_output=True, check=False
            )
            if done.returncode == 0:
                lib = ctypes.CDLL(str(out))
                lib.plain_sum_sq.restype = ctypes.c_double
                lib.plain_sum_sq.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                lib.plain_scale.restype = None
                lib.plain_scale.argtypes = [
                    ctypes.c_void_p,
                    ctypes.c_size_t,
                    ctypes.c_float,
                    ctypes.c_int,
                ]
        _PLAIN.append(lib)
    return _PLAIN[0]


def ceiling_fn(w: Workload, peer: str):
    """The timed call of ceiling `peer` over a flat buffer of the workload's bytes, and the
    bytes it moves; pytest.skip for the plain loops without a C compiler."""
    nbytes = w.nbytes if "read" in peer else 2 * w.nbytes
    nt = gradclip.get_num_threads()
    if peer == "ceiling-read":
        return (lambda: gradclip._core.probe_read(w.flat)), nbytes
    if peer == "ceiling-rw":
        return (lambda: gradclip._core.probe_rw(w.flat)), nbytes
    lib = plain_ceiling_lib()
    if lib is None:
        pytest.skip("no C compiler for bench/plain_ceiling.c")
    flat = w.flat32()
    ptr, n = flat.ctypes.data, flat.size
    if peer == "ceiling-read-plain":
        return (lambda: lib.plain_sum_sq(ptr, n, nt)), nbytes
    return (lambda: lib.plain_scale(ptr, n, 1.0, nt)), nbytes


def _threads(n):
    from threadpoolctl import threadpool_limits

    before = gradclip.get_num_threads()
    gradclip.set_num_threads(n)
    torch_before = None
    try:
        import torch

        torch_before = torch.get_num_threads()
        torch.set_num_threads(n)
    except ImportError:
        pass
    with threadpool_limits(n):
        yield n
    gradclip.set_num_threads(before)
    if torch_before is not None:
        import torch

        torch.set_num_threads(torch_before)


@pytest.fixture
def threads_1():
    yield from _threads(1)


@pytest.fixture
def threads_2():
    yield from _threads(2)


# ------------------------------------------------------------------ results
_RESULTS: list[dict] = []


def record(benchmark, *, workload: str, case: str, threads: int, peer: str, nbytes: int) -> None:
    """Remember a finished benchmark's median for the summary."""
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        workload=workload,
        case=case,
        threads=threads,
        peer=peer,
        bytes=nbytes,
        gbps=nbytes / median / 1e9,
    )
    _RESULTS.append(
        {
            "workload": workload,
            "case": case,
            "threads": threads,
            "peer": peer,
            "bytes": nbytes,
            "median": median,
        }
    )


def summarize(results: list[dict]) -> list[dict]:
    """One row per (workload, case, threads, peer) with GB/s, ratio to the ceiling of the
    same run and gradclip's speed-up over the peer."""
    ceil = {}
    for r in results:
        if r["peer"].startswith("ceiling"):
            ceil[(r["workload"], r["threads"], r["peer"])] = r["median"]
    base = {}
    for r in results:
        if r["peer"] == "gradclip":
            base[(r["workload"], r["case"], r["threads"])] = r["median"]
    rows = []
    for r in results:
        if r["peer"].startswith("ceiling"):
            continue
        k = (r["workload"], r["threads"])
        # the faster of the engine's probe and the plain compiled loop
        reads = [ceil.get((*k, p)) for p in ("ceiling-read", "ceiling-read-plain")]
        rws = [ceil.get((*k, p)) for p in ("ceiling-rw", "ceiling-rw-plain")]
        t_read = min((t for t in reads if t), default=None)
        t_rw = min((t for t in rws if t), default=None)
        if r["case"] in ("clip", "unscale"):  # one read pass + one read/write pass
            t_ceiling = (t_read + t_rw) if (t_read and t_rw) else None
        else:
            t_ceiling = t_read
        g = base.get((r["workload"], r["case"], r["threads"]))
        rows.append(
            dict(
                r,
                gbps=r["bytes"] / r["median"] / 1e9,
                ceiling_gbps=(r["bytes"] / t_ceiling / 1e9) if t_ceiling else None,
                ratio=(t_ceiling / r["median"]) if t_ceiling else None,
                gradclip_speedup=(r["median"] / g) if g else None,
            )
        )
    return rows


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas_info() -> str:
    """NumPy's BLAS as threadpoolctl reports it: library, version and the kernel in use."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    text = "; ".join(
        f"{i.get('internal_api')} {i.get('version')}, kernel {i.get('architecture', '?')}"
        for i in infos
    )
    if _BLAS_LOADED_BEFORE and DROPPED_BLAS_VARS:
        text += " (loaded before the OPENBLAS_* variables were dropped: they may apply)"
    return text or "none found"


def _ceiling_summary(results: list[dict]) -> dict:
    """GB/s of each ceiling per (workload, threads), to show which of the two was higher."""
    out: dict = {}
    for r in results:
        if r["peer"] in CEILINGS:
            key = f"{r['workload']} {r['threads']}t"
            out.setdefault(key, {})[r["peer"]] = round(r["bytes"] / r["median"] / 1e9, 2)
    return out


def pytest_sessionfinish(session, exitstatus):
    if not _RESULTS:
        return
    rows = summarize(_RESULTS)
    meta = {
        "date": _dt.date.today().isoformat(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "cpu_target": gradclip.cpu_target(),
        "gradclip": gradclip.__version__,
        "numpy": np.__version__,
        "blas": _blas_info(),
        "dropped_env": DROPPED_BLAS_VARS,
    }
    meta["ceilings"] = _ceiling_summary(_RESULTS)
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:
        pass
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / "latest.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    from report import markdown_table  # bench/report.py

    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("")
        tr.write_line(markdown_table(meta, rows))
        tr.write_line(f"results written to {out}")
