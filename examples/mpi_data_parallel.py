"""Data-parallel training of the demo's RNN on the adding problem, with MPI and gradclip.

    mpiexec -n 2 python examples/mpi_data_parallel.py [--steps N] [--sharded]

Every rank holds the whole model and draws its own half of each batch; the gradients are
averaged with one mpi4py ``Allreduce`` per array, after which every rank holds the global
gradients, so ``gradclip.clip_grad_norm_`` needs no ``comm`` (the data-parallel layout of the
README). A second, sharded variant (``--sharded``) has each rank clip only the arrays it
owns and pass ``comm`` so that the global norm is taken across ranks. Both end with the
same parameters on every rank; the script checks it and says so.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from mpi4py import MPI

import gradclip
from gradclip import demo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=demo.DemoConfig().steps)
    ap.add_argument("--sharded", action="store_true", help="clip with comm= on owned arrays")
    args = ap.parse_args(argv)

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    # one thread per rank: several ranks share the machine's cores
    gradclip.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    cfg = demo.DemoConfig()
    # same initial weights everywhere (same seed), different data per rank
    params = demo.init_params(np.random.default_rng(0), cfg.hidden, cfg.spectral_radius)
    velocity = [np.zeros_like(p) for p in params]
    data_rng = np.random.default_rng(1000 + rank)
    local_batch = max(1, cfg.batch // size)
    clipped = 0
    for _ in range(args.steps):
        x, y = demo.adding_batch(data_rng, local_batch, cfg.seq_len)
        with np.errstate(all="ignore"):
            _loss, grads = demo.loss_and_grads(params, x, y)
        for g in grads:  # average the gradients over the ranks
            comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
            g /= size
        if args.sharded:
            # each rank clips the arrays it owns; comm gives every rank the global norm
            mine = [g for i, g in enumerate(grads) if i % size == rank]
            norm = gradclip.clip_grad_norm_(mine, cfg.max_norm, comm=comm)
            for i, g in enumerate(grads):  # owners send their clipped arrays to all
                comm.Bcast(g, root=i % size)
        else:
            norm = gradclip.clip_grad_norm_(grads, cfg.max_norm)
        clipped += norm > cfg.max_norm
        for p, v, g in zip(params, velocity, grads, strict=True):
            v *= cfg.momentum
            v -= cfg.lr * g
            p += v
    x, y = demo.adding_batch(np.random.default_rng(99), 2000, cfg.seq_len)
    mse = float(np.mean((demo.predict(params, x) - y) ** 2))
    same = all(len({a.tobytes() for a in comm.allgather(p)}) == 1 for p in params)
    if rank == 0:
        layout = "sharded (comm=)" if args.sharded else "data-parallel (no comm)"
        print(f"{size} ranks, {layout}: {args.steps} steps, clipping fired on {clipped}")
        print(f"test MSE {mse:.4f} (predicting 0.5 always: {1 / 24:.4f})")
        print("parameters identical on every rank" if same else "PARAMETERS DIFFER ACROSS RANKS")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
