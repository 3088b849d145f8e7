"""Global-norm clipping against NumPy and PyTorch, next to the machine's own bandwidth.

Run: ``python -m pytest bench/`` (see bench/README.md). Groups are
``<workload> <case> <threads>t``; each times, on the same arrays:

- ``gradclip``: ``gradclip.clip_grad_norm_(grads, max_norm)``
- ``gradclip-set``: the same through a ``GradientSet`` built once
- ``numpy``: the naive loop, ``sqrt(sum(vdot(g, g)))`` then ``g *= coef`` for every array
- ``torch`` / ``torch-foreach``: ``torch.nn.utils.clip_grad_norm_`` (foreach off / on)
  on tensors sharing the arrays' memory, when torch is installed

and the ceiling: one read pass (``ceiling-read``) and one read+write pass
(``ceiling-rw``) over a flat buffer of the same bytes, same thread count.

Cases: ``clip`` (max_norm = norm / 10: one read pass plus one read+write pass, 3N bytes at
the least) and ``noclip`` (max_norm = 10 * norm: one read pass, N bytes). In the clip
case the arrays are restored from a copy before each round (untimed), so every round clips.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import BF16, CEILINGS, ceiling_fn, get_workload, record

import gradclip

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

WORKLOAD_NAMES = ["W1", "W2", "W3", "W4", "W5-bf16", "W5-f16"]
ROUNDS = {"W1": 9, "W2": 9, "W3": 25, "W4": 400, "W5-bf16": 9, "W5-f16": 9}
PEERS = ["gradclip", "gradclip-set", "numpy", "torch", "torch-foreach"]


def numpy_clip(grads, max_norm):
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    coef = min(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef
    return total


def peer_fn(peer, w, max_norm):
    if peer == "gradclip":
        return lambda: gradclip.clip_grad_norm_(w.grads, max_norm)
    if peer == "gradclip-set":
        gs = gradclip.GradientSet(w.grads)
        return lambda: gs.clip_norm_(max_norm)
    if peer == "numpy":
        if w.grads[0].dtype == BF16:
            pytest.skip(
                "NumPy has no fast bfloat16 dot product (ml_dtypes falls back to a slow loop)"
            )
        return lambda: numpy_clip(w.grads, max_norm)
    if torch is None:
        pytest.skip("torch is not installed")
    params = w.torch_params()
    foreach = peer == "torch-foreach"
    return lambda: float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=foreach))


def _tol(dtype):
    # the peers accumulate in float32 (NumPy's vdot) or in the gradients' own precision
    # (torch): on 64M-110M elements they are off by up to ~6e-3 relative
    return 2e-2 if dtype.itemsize == 2 else 1e-2


_CHECKED: set = set()


def check_agreement(w, case, max_norm):
    """All peers agree with gradclip on the norm and on the clipped values (once per case)."""
    key = (w.name, case)
    if key in _CHECKED:
        return
    w.restore()
    ref_norm = gradclip.reference.get_total_norm(w.grads) if w.nbytes < 50e6 else None
    got = {}
    arrays = {}
    for peer in PEERS:
        w.restore()
        try:
            fn = peer_fn(peer, w, max_norm)
        except pytest.skip.Exception:
            continue
        got[peer] = float(fn())
        arrays[peer] = [g.astype(np.float32) for g in w.grads[:50]] + [
            w.grads[-1].astype(np.float32)
        ]
    w.restore()
    tol = _tol(w.grads[0].dtype)
    g = got["gradclip"]
    if ref_norm is not None:
        assert g == pytest.approx(ref_norm, rel=1e-12)
    for peer, v in got.items():
        assert v == pytest.approx(g, rel=tol), (peer, v, g)
        for a, b in zip(arrays[peer], arrays["gradclip"], strict=True):
            scale = float(np.abs(b).max()) or 1.0
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=peer)
    _CHECKED.add(key)


def _cases():
    for wl in WORKLOAD_NAMES:
        for nt in (1, 2):
            for peer in CEILINGS:
                yield pytest.param(wl, nt, "-", peer, id=f"{wl}-{nt}t-{peer}")
            for case in ("clip", "noclip"):
                for peer in PEERS:
                    yield pytest.param(wl, nt, case, peer, id=f"{wl}-{nt}t-{case}-{peer}")


@pytest.mark.parametrize(("wl", "nthreads", "case", "peer"), list(_cases()))
def test_clip(benchmark, request, wl, nthreads, case, peer):
    if wl.startswith("W5") and BF16 is None:
        pytest.skip("ml_dtypes is not installed")
    threads = request.getfixturevalue("threads_" + str(nthreads))
    w = get_workload(wl)
    rounds = ROUNDS[wl]
    if peer.startswith("ceiling"):
        benchmark.group = f"{wl} ceiling {threads}t"
        fn, nbytes = ceiling_fn(w, peer)
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
        record(benchmark, workload=wl, case="-", threads=threads, peer=peer, nbytes=nbytes)
        return

    w.restore()
    norm = gradclip.get_total_norm(w.grads)
    max_norm = norm / 10 if case == "clip" else norm * 10
    check_agreement(w, case, max_norm)
    fn = peer_fn(peer, w, max_norm)
    benchmark.group = f"{wl} {case} {threads}t"
    if case == "clip":
        benchmark.pedantic(fn, setup=w.restore, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    nbytes = 3 * w.nbytes if case == "clip" else w.nbytes
    record(benchmark, workload=wl, case=case, threads=threads, peer=peer, nbytes=nbytes)
