"""W1 (64M float32) against NumPy, PyTorch and the plain compiled loops, rounds interleaved.

    python bench/cpu_time_w1.py [rounds]          # one thread, CPU time of the calling thread
    NT=2 python bench/cpu_time_w1.py [rounds]     # NT threads, wall time

For a shared machine: at one thread every peer runs on the calling thread, so its CPU time
(``time.thread_time()``) leaves out the time other processes hold the core, where wall time
moves by 2x between rounds. Prints medians and same-run ratios: gradclip's read pass
(``get_total_norm``) against the plain float32 sum of squares (bench/plain_ceiling.c) and
NumPy's ``vdot``; clipping (``clip_grad_norm_`` with max_norm = norm / 10, the array restored
untimed before each round) against the plain loops (sum of squares, then ``x *= c``), the
NumPy loop and ``torch.nn.utils.clip_grad_norm_``. Needs a C compiler; torch is optional.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import gradclip

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


def main() -> None:
    nt = int(os.environ.get("NT", "1"))
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    clock = time.thread_time if nt == 1 else time.perf_counter
    gradclip.set_num_threads(nt)
    so = Path(tempfile.mkdtemp(prefix="gradclip-bench-")) / "plain_ceiling.so"
    src = Path(__file__).with_name("plain_ceiling.c")
    cc = os.environ.get("CC", "cc")
    flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
    subprocess.run([cc, *flags, str(src), "-o", str(so)], check=True)
    lib = ctypes.CDLL(str(so))
    lib.plain_sum_sq.restype = ctypes.c_double
    lib.plain_sum_sq.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.plain_scale.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_float, ctypes.c_int]

    n = 64 * 1024 * 1024
    g = np.random.default_rng(1).standard_normal(n, dtype=np.float32) * np.float32(1e-3)
    orig = g.copy()
    flat = np.ones(n, dtype=np.float32)
    max_norm = gradclip.get_total_norm(g) / 10

    def numpy_clip():
        total = float(np.sqrt(np.vdot(g, g)))
        g.__imul__(min(max_norm / (total + 1e-6), 1.0))

    cases = {
        "plain-read": lambda: lib.plain_sum_sq(flat.ctypes.data, n, nt),
        "plain-rw": lambda: lib.plain_scale(flat.ctypes.data, n, 1.0, nt),
        "gradclip-read": lambda: gradclip.get_total_norm(g),
        "numpy-read": lambda: np.vdot(g, g),
        "gradclip-clip": lambda: gradclip.clip_grad_norm_(g, max_norm),
        "numpy-clip": numpy_clip,
    }
    if torch is not None:
        torch.set_num_threads(nt)
        p = torch.nn.Parameter(torch.empty(n))
        p.grad = torch.from_numpy(g)
        cases["torch-clip"] = lambda: torch.nn.utils.clip_grad_norm_([p], max_norm, foreach=False)
    times: dict[str, list[float]] = {k: [] for k in cases}
    with threadpool_limits(nt):
        for r in range(rounds + 1):  # round 0 warms up
            for k, f in cases.items():
                if k.endswith("clip"):
                    np.copyto(g, orig)
                t0 = clock()
                f()
                if r:
                    times[k].append(clock() - t0)
    m = {k: statistics.median(v) for k, v in times.items()}
    kind = "CPU time" if nt == 1 else "wall time"
    print(f"target {gradclip.cpu_target()}, {nt} thread(s), medians of {rounds} rounds ({kind})")
    for k, v in m.items():
        print(f"  {k:14} {v * 1e3:8.2f} ms")
    ceiling_clip = m["plain-read"] + m["plain-rw"]
    print(f"  read pass: {m['plain-read'] / m['gradclip-read']:.3f} of the plain loop")
    line = f"  clipping: {ceiling_clip / m['gradclip-clip']:.3f} of the plain loops, "
    line += f"{m['numpy-clip'] / m['gradclip-clip']:.2f}x NumPy"
    if "torch-clip" in m:
        line += f", {m['torch-clip'] / m['gradclip-clip']:.2f}x PyTorch"
    print(line)
    print(f"  plain loops: read {4 * n / m['plain-read'] / 1e9:.1f} GB/s, ", end="")
    print(f"read+write {8 * n / m['plain-rw'] / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
