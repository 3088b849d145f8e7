"""gradclip.torch against torch.nn.utils.clip_grad_norm_ on a model's gradients.

Run: ``python -m pytest bench/test_bench_torch.py`` (pytest-benchmark, into the results
table), or ``python bench/test_bench_torch.py`` for the same comparison with the peers
alternated round by round (timeit-style medians of many rounds, less exposed to a machine
whose load drifts during the run), printed as a table.

Workloads: ``T10M``, the float32 gradients of a 9.97M-parameter model in 50 tensors (a 1000x512
embedding, three transformer layers of width 512, layer norms); ``T2K``, 12.7M parameters in
2,000 tensors (500 x (768x16, 16x768, 768, 64), adapter-like blocks); ``T20K``, 10.6M
parameters in 20,000 tensors (5,000 x (64x16, 16x64, 64, 16), a LoRA- or MoE-like count of
small tensors). Their tensors are torch Parameters whose ``.grad`` shares memory with the
workload's arrays. Groups are ``<workload> <case> <threads>t``; each times, on the same
gradients:

- ``gradclip``: ``gradclip.torch.clip_grad_norm_(params, max_norm)``, the drop-in (from the
  third round on through the views it keeps: the gradients are the same tensors every call);
- ``gradclip-clipper``: ``gradclip.torch.GradClipper(params).clip_grad_norm_(max_norm)``, the
  clipper warmed up so that it keeps its GradientSet;
- ``gradclip-numpy``: ``gradclip.clip_grad_norm_`` on NumPy views of the gradients (what the
  drop-in costs over gradclip's own call);
- ``gradclip-set``: ``gradclip.GradientSet`` over those views (gradclip's floor: no per-array
  work in Python or in parsing);
- ``torch`` / ``torch-foreach``: ``torch.nn.utils.clip_grad_norm_`` with foreach off / on;

(the script adds ``gradclip-before`` and ``gradclip-clipper-before``, the same calls with
the compiled record switched off, and a ``fresh`` case: new gradient tensors every call) and
the machine's read / read+write ceilings over a flat buffer of the same bytes. Cases and
threads as in ``test_bench_clip.py``: ``clip`` (max_norm = norm / 10, gradients restored
before each round, untimed) and ``noclip`` (max_norm = 10 * norm), at 1 and 2 threads (both
gradclip's and torch's).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # conftest, when run as a script
from conftest import (
    CEILINGS,
    WORKLOADS,
    _make,
    ceiling_fn,
    get_workload,
    record,
)

import gradclip

torch = pytest.importorskip("torch")
import gradclip.torch as gt  # noqa: E402

F32 = np.dtype(np.float32)
WORKLOADS.setdefault("T2K", lambda: _make([(768, 16), (16, 768), (768,), (64,)] * 500, F32, 8))
WORKLOADS.setdefault("T20K", lambda: _make([(64, 16), (16, 64), (64,), (16,)] * 5000, F32, 9))
TORCH_WORKLOADS = ["T10M", "T2K", "T20K"]
ROUNDS = 30
PEERS = [
    "gradclip",
    "gradclip-clipper",
    "gradclip-numpy",
    "gradclip-set",
    "torch",
    "torch-foreach",
]


def peer_fn(peer: str, w: Any, max_norm: float) -> Any:
    params = w.torch_params()
    if peer == "gradclip":
        return lambda: gt.clip_grad_norm_(params, max_norm)
    if peer == "gradclip-clipper":
        clipper = gt.GradClipper(params)
        clipper.get_total_norm()
        clipper.get_total_norm()  # the same gradients twice: the set is kept
        assert clipper.cached
        return lambda: clipper.clip_grad_norm_(max_norm)
    if peer == "gradclip-numpy":
        return lambda: gradclip.clip_grad_norm_(w.grads, max_norm)
    if peer == "gradclip-set":
        gs = gradclip.GradientSet(w.grads)
        return lambda: gs.clip_norm_(max_norm)
    foreach = peer == "torch-foreach"
    return lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=foreach)


def max_norm_for(w: Any, case: str) -> float:
    w.restore()
    norm = gradclip.get_total_norm(w.grads)
    return norm / 10 if case == "clip" else norm * 10


_CHECKED: set[tuple[str, str]] = set()


def check_agreement(w: Any, case: str, max_norm: float) -> None:
    """Every peer returns gradclip's norm and writes its clipped values (within torch's
    float32 accumulation error on 10M elements), once per case."""
    if (w.name, case) in _CHECKED:
        return
    results = {}
    for peer in PEERS:
        w.restore()
        norm = float(peer_fn(peer, w, max_norm)())
        results[peer] = (norm, [g.copy() for g in w.grads])
    w.restore()
    norm, values = results["gradclip-numpy"]
    assert norm == pytest.approx(gradclip.reference.get_total_norm(w.grads), rel=1e-12)
    for peer in ("gradclip", "gradclip-clipper"):  # the float64 norm, rounded to float32
        assert results[peer][0] == float(np.float32(norm)), peer
    for peer, (n, vals) in results.items():
        assert n == pytest.approx(norm, rel=1e-4), peer
        for a, b in zip(vals, values, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    _CHECKED.add((w.name, case))


def _cases() -> Any:
    for name in TORCH_WORKLOADS:
        for nt in (1, 2):
            for peer in CEILINGS:
                yield pytest.param(name, nt, "-", peer, id=f"{name}-{nt}t-{peer}")
            for case in ("clip", "noclip"):
                for peer in PEERS:
                    yield pytest.param(name, nt, case, peer, id=f"{name}-{nt}t-{case}-{peer}")


@pytest.mark.parametrize(("name", "nthreads", "case", "peer"), list(_cases()))
def test_torch_dropin(
    benchmark: Any, request: Any, name: str, nthreads: int, case: str, peer: str
) -> None:
    threads = request.getfixturevalue("threads_" + str(nthreads))
    w = get_workload(name)
    if peer.startswith("ceiling"):
        benchmark.group = f"{name} ceiling {threads}t"
        fn, nbytes = ceiling_fn(w, peer)
        benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
        record(benchmark, workload=name, case="-", threads=threads, peer=peer, nbytes=nbytes)
        return
    max_norm = max_norm_for(w, case)
    check_agreement(w, case, max_norm)
    fn = peer_fn(peer, w, max_norm)
    benchmark.group = f"{name} {case} {threads}t"
    setup = w.restore if case == "clip" else None
    benchmark.pedantic(fn, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    nbytes = 3 * w.nbytes if case == "clip" else w.nbytes
    record(benchmark, workload=name, case=case, threads=threads, peer=peer, nbytes=nbytes)


# ---------------------------------------------------------------- alternated, as a script
# The script also times the drop-in and the clipper with the compiled record switched off
# (``-before``: every per-tensor read in Python, through kept NumPy views, as gradclip.torch
# did before the record), on Parameters of their own whose ``.grad`` are the same tensors,
# and a third case, ``fresh``: clipping, with new gradient tensors over the same memory
# before every call (``zero_grad(set_to_none=True)`` then a backward: nothing can be kept).
# Before every call of every case the gradients are restored from a copy, which also evicts
# their metadata from the caches, as a backward pass does.
BEFORE = ["gradclip-before", "gradclip-clipper-before"]


class _PythonViews(gt._cache.ViewCache):
    """The drop-ins' cache without the compiled record: the Python path of views."""

    def lease(self, items: Any, grads: bool) -> None:
        return None


def _twins(w: Any) -> list[Any]:
    """Parameters of their own whose ``.grad`` are the workload's gradient tensors."""
    twins = []
    for p in w.torch_params():
        q = torch.nn.Parameter(torch.empty(0, dtype=p.dtype), requires_grad=True)
        q.data = torch.empty(p.shape, dtype=p.dtype)
        q.grad = p.grad
        twins.append(q)
    return twins


def script_fns(w: Any, max_norm: float) -> dict[str, Any]:
    fns = {peer: peer_fn(peer, w, max_norm) for peer in PEERS}
    twins = _twins(w)
    gt._cache._CACHES[(len(twins), id(twins[0]))] = _PythonViews()
    fns["gradclip-before"] = lambda: gt.clip_grad_norm_(twins, max_norm)
    clipper = gt.GradClipper(twins)
    clipper._cache = _PythonViews()
    fns["gradclip-clipper-before"] = lambda: clipper.clip_grad_norm_(max_norm)
    fns["_twins"] = twins
    return fns


def _renew(params: list[Any]) -> None:
    """New gradient tensors over the same memory (what the next backward allocates)."""
    for p in params:
        p.grad = torch.from_numpy(p.grad.numpy())


def alternated(w: Any, case: str, rounds: int) -> dict[str, float]:
    """Median time of each peer over ``rounds`` rounds; each round runs every peer once, in an
    order that rotates from round to round, restoring the gradients (untimed) before each."""
    max_norm = max_norm_for(w, "clip" if case == "fresh" else case)
    fns = script_fns(w, max_norm)
    twins = fns.pop("_twins")
    peers = PEERS + BEFORE
    times: dict[str, list[float]] = {peer: [] for peer in peers}
    for r in range(rounds + 1):
        for k in range(len(peers)):
            peer = peers[(r + k) % len(peers)]
            if case == "fresh":
                _renew(twins if peer in BEFORE else w.torch_params())
            w.restore()
            t0 = time.perf_counter()
            fns[peer]()
            elapsed = time.perf_counter() - t0
            if r:  # the first round warms up
                times[peer].append(elapsed)
    return {peer: statistics.median(ts) for peer, ts in times.items()}


def main(
    names: list[str],
    rounds: int = 60,
    threads: tuple[int, ...] = (1, 2),
    cases: tuple[str, ...] = ("clip", "noclip", "fresh"),
) -> None:
    before = gradclip.get_num_threads(), torch.get_num_threads()
    print(
        f"medians of {rounds} alternated rounds; gradclip {gradclip.__version__} "
        f"({gradclip.cpu_target()}), torch {torch.__version__}\n"
    )
    print(
        "| workload | case | threads | peer | median | x torch | x torch-foreach "
        "| / gradclip-numpy | / gradclip-set |"
    )
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    try:
        for name in names:
            w = get_workload(name)
            label = f"{name} ({sum(g.size for g in w.grads) / 1e6:.1f}M in {len(w.grads)})"
            for case in cases:
                for nt in threads:
                    gradclip.set_num_threads(nt)
                    torch.set_num_threads(nt)
                    if case != "fresh":
                        check_agreement(w, case, max_norm_for(w, case))
                    med = alternated(w, case, rounds)
                    for peer in PEERS + BEFORE:
                        t = med[peer]
                        print(
                            f"| {label} | {case} | {nt} | {peer} | {t * 1e3:.2f} ms | "
                            f"{med['torch'] / t:.2f} | {med['torch-foreach'] / t:.2f} | "
                            f"{t / med['gradclip-numpy']:.2f} | {t / med['gradclip-set']:.2f} |"
                        )
    finally:
        gradclip.set_num_threads(before[0])
        torch.set_num_threads(before[1])


if __name__ == "__main__":
    # python bench/test_bench_torch.py [workload ...] [--rounds N] [--threads 1,2]
    #     [--cases clip,noclip,fresh]
    args = sys.argv[1:]
    opts = {"--rounds": "60", "--threads": "1,2", "--cases": "clip,noclip,fresh"}
    for flag in opts:
        if flag in args:
            k = args.index(flag)
            opts[flag] = args[k + 1]
            del args[k : k + 2]
    main(
        args or TORCH_WORKLOADS,
        int(opts["--rounds"]),
        tuple(int(n) for n in opts["--threads"].split(",")),
        tuple(opts["--cases"].split(",")),
    )
