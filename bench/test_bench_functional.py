"""Functional clipping (clipped copies, inputs untouched): ``gradclip.clip_by_global_norm``
against Optax's ``clip_by_global_norm`` (``jax.jit``-compiled, on the CPU) and the NumPy loop.

Each reads the inputs for the norm (N bytes) and writes new outputs from them (N read + N
written): 3N bytes at the least. Peers on the same values:

- ``gradclip``: ``gradclip.clip_by_global_norm(grads, m, out=outs)`` on read-only NumPy
  arrays, into output arrays made (and touched) once
- ``gradclip-new``: the same without ``out``: new arrays every call
- ``numpy``: ``sqrt(sum(vdot(g, g)))``, then ``np.multiply(g, coef, out=o)`` for every array
  into the same kind of outputs
- ``optax``: ``jax.jit(lambda g: optax.clip_by_global_norm(m).update(g, None)[0])`` on JAX
  arrays, results blocked on (``block_until_ready``)

Fresh outputs cost page faults, which on this kind of virtual machine vary tenfold from call
to call (for NumPy as much as for gradclip), so the comparison of the passes themselves uses
outputs made once; ``gradclip-new`` shows the cost with allocation. Groups
``<workload> functional <threads>t``. Optax's threads are XLA's own (not set here), so
its rows are the same in both groups.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import get_workload, record

import gradclip

PEERS = ["gradclip", "gradclip-new", "numpy", "optax"]


def numpy_copy(grads, outs, max_norm):
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    coef = np.float32(min(max_norm / (total + 1e-6), 1.0))
    for g, o in zip(grads, outs, strict=True):
        np.multiply(g, coef, out=o)
    return outs, total


def peer_fn(peer, grads, max_norm):
    outs = [np.ones_like(g) for g in grads]
    if peer == "gradclip":
        return lambda: gradclip.clip_by_global_norm(grads, max_norm, out=outs)
    if peer == "gradclip-new":
        return lambda: gradclip.clip_by_global_norm(grads, max_norm)
    if peer == "numpy":
        return lambda: numpy_copy(grads, outs, max_norm)
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jgrads = [jax.numpy.asarray(g) for g in grads]
    tx = optax.clip_by_global_norm(max_norm)
    step = jax.jit(lambda g: tx.update(g, None)[0])

    def run():
        out = step(jgrads)
        jax.block_until_ready(out)
        return out, None

    return run


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("wl", ["W2", "W4"])
def test_functional(benchmark, request, wl, nthreads, peer):
    threads = request.getfixturevalue(f"threads_{nthreads}")
    w = get_workload(wl)
    w.restore()
    grads = [g.copy() for g in w.grads]
    for g in grads:
        g.flags.writeable = False
    max_norm = gradclip.get_total_norm(grads) / 10
    fn = peer_fn(peer, grads, max_norm)
    got, _ = fn()
    want, _ = gradclip.clip_by_global_norm(grads, max_norm)
    # every peer writes the same clipped values (float32 accumulation of the peers' norms)
    for a, b in zip(list(got)[:3], want[:3], strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-3, atol=1e-12)
    benchmark.group = f"{wl} functional {threads}t"
    benchmark.pedantic(fn, rounds=7, iterations=3 if wl == "W4" else 1, warmup_rounds=1)
    record(
        benchmark, workload=wl, case="functional", threads=threads, peer=peer, nbytes=3 * w.nbytes
    )
