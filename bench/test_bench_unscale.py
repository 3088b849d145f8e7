"""Mixed precision: gradclip's fused unscale+clip (two passes) against the three-pass way.

The three-pass way is what a training loop does without a fused call: unscale every
gradient (read+write), compute the norm (read), clip (read+write): 5N bytes. The fused
call reads once (norm of the unscaled gradients, non-finite check) and reads+writes once
(multiply by inv_scale * coef): 3N bytes. Peers on the same arrays:

- ``gradclip``: ``gradclip.unscale_clip_grad_norm_``
- ``numpy``: ``g *= inv_scale``, ``sqrt(sum(vdot))``, ``g *= coef``
- ``torch``: ``torch._amp_foreach_non_finite_check_and_unscale_`` (what
  ``torch.amp.GradScaler.unscale_`` runs) then ``clip_grad_norm_(foreach=True)``

Groups ``<workload> unscale <threads>t``; the ratio column compares with the read +
read/write ceiling of the same run (bench/test_bench_clip.py measures it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import get_workload, record

import gradclip

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

INV = 2.0**-12
PEERS = ["gradclip", "numpy", "torch"]


def numpy_three_pass(grads, max_norm):
    for g in grads:
        g *= INV
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    coef = min(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef
    return total


def peer_fn(peer, w, max_norm):
    if peer == "gradclip":
        return lambda: gradclip.unscale_clip_grad_norm_(w.grads, max_norm, INV).total_norm
    if peer == "numpy":
        return lambda: numpy_three_pass(w.grads, max_norm)
    if torch is None:
        pytest.skip("torch is not installed")
    params = w.torch_params()
    grads = [p.grad for p in params]
    found_inf = torch.zeros(1)
    inv = torch.full((1,), INV)

    def run():
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv)
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))

    return run


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("wl", ["W1", "W2"])
def test_unscale(benchmark, request, wl, nthreads, peer):
    threads = request.getfixturevalue(f"threads_{nthreads}")
    w = get_workload(wl)
    w.restore()
    max_norm = gradclip.get_total_norm(w.grads) * INV / 10
    # every peer agrees on the unscaled norm and on the written values
    fn = peer_fn(peer, w, max_norm)
    got = fn()
    head = w.grads[0].ravel()[:1000].copy()
    w.restore()
    exp = gradclip.reference.get_total_norm([w.grads[0]]) if wl == "W1" else None
    ref_fn = peer_fn("gradclip", w, max_norm)
    want = ref_fn()
    want_head = w.grads[0].ravel()[:1000].copy()
    # float32 accumulation is off by up to ~1e-3 (NumPy's vdot) and ~6e-3 (torch's norm)
    # relative on 64M elements; gradclip accumulates in float64
    assert got == pytest.approx(want, rel=1e-2)
    np.testing.assert_allclose(head, want_head, rtol=1e-2, atol=1e-12)
    if exp is not None:
        assert want == pytest.approx(exp * INV, rel=1e-12)
    benchmark.group = f"{wl} unscale {threads}t"
    benchmark.pedantic(fn, setup=w.restore, rounds=7, iterations=1, warmup_rounds=1)
    record(benchmark, workload=wl, case="unscale", threads=threads, peer=peer, nbytes=3 * w.nbytes)
