"""W4 (100 arrays of 100 float32) per call, against NumPy and PyTorch, rounds interleaved.

    python bench/cpu_time_w4.py [rounds]          # one thread, CPU time of the calling thread

For a shared machine, as bench/cpu_time_w1.py: every peer runs on the calling thread, so its
CPU time (``time.thread_time()``) leaves out the time other processes hold the core. Each
round times a batch of calls per peer (CPU time per call), the peers one after another; the
medians over the rounds and their same-run ratios are printed. Cases, on the workload of
bench/conftest.py (the same seeds): ``noclip`` (max_norm = 10 x norm: one read pass) and
``clip`` (max_norm = norm / 10: the arrays are restored, untimed, before every call, so every
call clips, each call timed alone, less the timer's own cost).
Peers: ``gradclip.clip_grad_norm_`` (the function), a ``GradientSet``'s
``clip_norm_``, the NumPy loop of bench/test_bench_clip.py, and
``torch.nn.utils.clip_grad_norm_`` (foreach on) when torch is installed. Also printed: the
function's cost beyond the GradientSet call, per array.
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import numpy as np

import gradclip

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


def workload() -> list[np.ndarray]:
    # bench/conftest.py's W4: _make([(100,)] * 100, float32, seed 4)
    rng = np.random.default_rng(4)
    return [(rng.standard_normal((100,), dtype=np.float32) * 1e-3) for _ in range(100)]


def numpy_clip(grads: list[np.ndarray], max_norm: float) -> float:
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    coef = min(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef
    return total


def time_peers(peers, rounds, restore):
    """CPU time per call of each peer, one list of rounds each. With ``restore``, each call
    is timed alone between restores (the clip case); the "timer" peer then measures the
    timer's own cost per call, which the caller subtracts."""
    calls = {"gradclip": 400, "gradclip-set": 400, "numpy": 20, "torch-foreach": 20}
    times: dict[str, list[float]] = {k: [] for k in peers}
    for r in range(rounds + 1):  # round 0 warms up
        for k, f in peers.items():
            n = calls.get(k, 400)
            if restore is None:
                t0 = time.thread_time()
                for _ in range(n):
                    f()
                total = time.thread_time() - t0
            else:
                total = 0.0
                for _ in range(n):
                    restore()
                    t0 = time.thread_time()
                    f()
                    total += time.thread_time() - t0
            if r:
                times[k].append(total / n)
    return times


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 11
    gradclip.set_num_threads(1)
    if torch is not None:
        torch.set_num_threads(1)
    grads = workload()
    orig = [g.copy() for g in grads]
    norm = gradclip.get_total_norm(grads)
    gs = gradclip.GradientSet(grads)
    params = []
    if torch is not None:
        for g in grads:
            p = torch.nn.Parameter(torch.empty(g.shape))
            p.grad = torch.from_numpy(g)
            params.append(p)

    def restore() -> None:
        for g, o in zip(grads, orig, strict=True):
            np.copyto(g, o)

    for case, max_norm in (("noclip", 10 * norm), ("clip", norm / 10)):
        peers = {
            "gradclip": lambda m=max_norm: gradclip.clip_grad_norm_(grads, m),
            "gradclip-set": lambda m=max_norm: gs.clip_norm_(m),
            "numpy": lambda m=max_norm: numpy_clip(grads, m),
        }
        if params:
            peers["torch-foreach"] = lambda m=max_norm: torch.nn.utils.clip_grad_norm_(
                params, m, foreach=True
            )
        peers["timer"] = lambda: None
        times = time_peers(peers, rounds, restore if case == "clip" else None)
        timer = statistics.median(times.pop("timer"))
        m = {k: statistics.median(v) - timer for k, v in times.items()}
        print(f"W4 {case}, target {gradclip.cpu_target()}, 1 thread, medians of {rounds} rounds")
        for k, v in m.items():
            print(f"  {k:14} {v * 1e6:8.2f} us  {v / m['gradclip']:6.1f}x gradclip")
        extra = (m["gradclip"] - m["gradclip-set"]) / len(grads)
        print(f"  function beyond the GradientSet call: {extra * 1e9:.1f} ns per array")


if __name__ == "__main__":
    main()
