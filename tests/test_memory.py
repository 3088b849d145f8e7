# Covers: memory. No path allocates memory proportional to the data: the
# clip is in place and only per-chunk partial sums (one double per chunk of 64 KiB or more)
# are allocated.
#   - tracemalloc (every NumPy allocation is traced) stays below 64 KiB during each function
#     on a 16 MiB input, for dense, F-order, reversed, strided and many-array inputs: no
#     temporary copy, no float64 conversion, nothing Python-side per element;
#   - the peak RSS of a fresh process (VmHWM after resetting it through
#     /proc/self/clear_refs, so C++ allocations count too) grows by less than 4 MiB during
#     each function on a 128 MiB input (1 and 2 threads, dense and strided);
#   - clip_by_norm_ over many small slices (a (1M, 2) array, a norm per row) grows the peak
#     RSS by less than the norms it returns plus 4 MiB (1 and 2 threads): its per-slice
#     bookkeeping is made a window of slices at a time, not for every slice at once.
# The RSS checks run in a subprocess (a clean heap: memory freed by earlier tests cannot hide
# a new allocation) and are skipped where /proc/self/clear_refs is missing and under
# AddressSanitizer (its shadow memory and quarantine are not the library's).
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from operations import Operation, operations

import gradclip

MiB = 1 << 20


# name -> call on a list of arrays; each would touch every element: every operation that works
# in place or only reads (tests/operations.py; the functional forms return new arrays, memory
# proportional to the data by design), and a few variants.
def on_list(op: Operation) -> Callable[[Any], Any]:
    return lambda g: op.call(gradclip, g[0] if op.shapes == "single" else g)


CALLS: dict[str, Callable[[Any], Any]] = {
    op.name: on_list(op) for op in operations(access=["read", "write"])
}
CALLS.update(
    {
        "get_total_norm_p3": lambda g: gradclip.get_total_norm(g, 3.0),
        "clip_by_norm_cols": lambda g: gradclip.clip_by_norm_(g[0], 1e-3, axis=0),
        "GradientSet": lambda g: gradclip.GradientSet(g).clip_norm_(1e-3),
    }
)


def inputs(total_bytes: int, layout: str) -> list[np.ndarray]:
    """float32 data of about ``total_bytes`` in ``layout`` (2-D, so per-column clips work)."""
    n = total_bytes // 4
    if layout == "many":  # 1000 arrays: per-array bookkeeping, but nothing per element
        return [np.full((n // 1000 // 64, 64), 0.5, np.float32) for _ in range(1000)]
    a = np.full((n // 256, 256), 0.5, np.float32, order="F" if layout == "F" else "C")
    if layout == "reversed":
        a = a[::-1, ::-1]
    elif layout == "strided":
        a = np.full((n // 256, 512), 0.5, np.float32)[:, ::2]  # twice the memory, half read
    return [a]


@pytest.mark.parametrize("layout", ["C", "F", "reversed", "strided", "many"])
@pytest.mark.parametrize("name", CALLS)
def test_tracemalloc_peak(name: str, layout: str) -> None:
    grads = inputs(16 * MiB, layout)
    if name.startswith("clip_by_norm_") and layout == "many":
        grads = grads[:1]
    CALLS[name](grads)  # warm up: thread pool, per-thread scratch
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        CALLS[name](grads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the outputs are a few hundred doubles at most (clip_by_norm_ over axis 0: 256 norms)
    limit = 64 * 1024
    if name == "clip_per_example_":
        # a norm and a coefficient per example, and the returned per-array sums over the
        # batch (one example's worth per array, in float64 and in the array's dtype: both are
        # made before the in-place write, so they are alive together): 24 bytes an example
        # and 3 KiB an array of headroom over what it keeps (about 20 bytes and 2 KiB)
        limit += 24 * grads[0].shape[0] + 3072 * len(grads)
    elif name == "adaptive_grad_clip_":
        # a few values per array (about 90 bytes on 1000 arrays), and the parameters the
        # registry makes for the call (a stride-0 view of ones per array, about 1 KiB)
        limit += 1536 * len(grads)
    assert peak < limit, f"{name} on {layout}: {peak} bytes traced at peak"


RSS_SCRIPT = """
    import json, re, sys
    import numpy as np
    import gradclip

    def status(key):
        with open("/proc/self/status") as f:
            return int(re.search(key + r":\\s+(\\d+) kB", f.read()).group(1)) * 1024

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def make(n, layout):
        if layout == "strided":
            return np.full((n // 256, 512), 0.5, np.float32)[:, ::2]
        if layout == "slices":  # many small slices: (n/2, 2) with a norm per row
            return np.full((n // 2, 2), 0.5, np.float32)
        return np.full((n // 256, 256), 0.5, np.float32)

    calls = {
        "get_total_norm": lambda x: gradclip.get_total_norm(x),
        "clip_grad_norm_": lambda x: gradclip.clip_grad_norm_(x, 1e-3),
        "clip_grad_value_": lambda x: gradclip.clip_grad_value_(x, 0.25),
        "tensor_norms": lambda x: gradclip.tensor_norms([x]),
        "clip_grad_norm_per_tensor_": lambda x: gradclip.clip_grad_norm_per_tensor_([x], 1e-3),
        "clip_by_norm_": lambda x: gradclip.clip_by_norm_(x, 1e-3),
        "clip_by_norm_rows": lambda x: gradclip.clip_by_norm_(x, 1e-3, axis=1),
    }
    gradclip.set_num_threads(int(sys.argv[1]))
    x = make(int(sys.argv[2]), sys.argv[3])
    # Warm-up on a small input (1 MiB: above the threshold for threads): it starts the OpenMP
    # team and sizes nothing after the big one, so memory a call on x allocates, even memory
    # a previous call freed, shows up as new pages.
    small = make(1 << 18, sys.argv[3])
    out = {}
    for name in sys.argv[4].split(","):
        calls[name](small)
        reset_peak()
        before = status("VmRSS")
        result = calls[name](x)
        grown = status("VmHWM") - before
        out[name] = {"grown": grown, "data": x.nbytes,
                     "returned": getattr(result, "nbytes", 0)}
    print(json.dumps(out))
"""


def rss_growth(threads: int, elements: int, layout: str, names: list[str]) -> dict[str, Any]:
    if not os.path.exists("/proc/self/clear_refs") or not os.access(
        "/proc/self/clear_refs", os.W_OK
    ):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    with open("/proc/self/maps") as f:
        if "libasan" in f.read():
            pytest.skip("AddressSanitizer's shadow memory and quarantine distort RSS")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(RSS_SCRIPT),
            str(threads),
            str(elements),
            layout,
            ",".join(names),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


RSS_NAMES = [
    "get_total_norm",
    "clip_grad_norm_",
    "clip_grad_value_",
    "tensor_norms",
    "clip_grad_norm_per_tensor_",
    "clip_by_norm_",
]


@pytest.mark.parametrize("layout", ["C", "strided"])
@pytest.mark.parametrize("threads", [1, 2])
def test_peak_rss_whole_call(threads: int, layout: str) -> None:
    growth = rss_growth(threads, 32 * MiB, layout, RSS_NAMES)  # 128 MiB of float32
    for name, g in growth.items():
        assert g["grown"] < 4 * MiB, (
            f"{name}: peak RSS grew by {g['grown'] / MiB:.1f} MiB on {g['data'] / MiB:.0f} MiB"
        )


@pytest.mark.parametrize("threads", [1, 2])
def test_peak_rss_clip_by_norm_many_slices(threads: int) -> None:
    growth = rss_growth(threads, 2 * MiB, "slices", ["clip_by_norm_rows"])["clip_by_norm_rows"]
    # The returned norms (8 bytes per slice) are the answer; anything beyond them should be
    # bounded, not another several bytes per element of the input.
    assert growth["grown"] < growth["returned"] + 4 * MiB, (
        f"peak RSS grew by {growth['grown'] / MiB:.0f} MiB for {growth['data'] / MiB:.0f} MiB "
        f"of data and {growth['returned'] / MiB:.0f} MiB of returned norms"
    )
