"""Where does a second thread start to pay? Times get_total_norm and a clipping call on one
float32 array of growing size at 1 and 2 threads (medians of many runs), and prints the
ratio; the engine's serial threshold (kSerialBytes in cpp/src/engine_impl.hpp) is set from this.

    python bench/threshold.py
"""

from __future__ import annotations

import time

import numpy as np

import gradclip


def median_time(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def main() -> None:
    before = gradclip.get_num_threads()
    print(f"{'bytes':>10} {'op':>6} {'1 thread':>10} {'2 threads':>10} {'2t/1t':>7}")
    for kib in [32, 64, 128, 192, 256, 384, 512, 1024, 2048, 4096, 16384]:
        n = kib * 1024 // 4
        x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        repeat = max(50, 200_000 // kib)
        for op, fn in [
            ("norm", lambda x=x: gradclip.get_total_norm(x)),
            ("scale", lambda x=x: gradclip.clip_grads_with_norm_(x, 1.0, 1.0 + 1e-6, eps=0.0)),
        ]:
            t = {}
            for nt in (1, 2):
                gradclip.set_num_threads(nt)
                fn()
                t[nt] = median_time(fn, repeat)
            print(
                f"{kib * 1024:>10} {op:>6} {t[1] * 1e6:>8.1f}us {t[2] * 1e6:>8.1f}us "
                f"{t[2] / t[1]:>7.2f}"
            )
    gradclip.set_num_threads(before)


if __name__ == "__main__":
    main()
