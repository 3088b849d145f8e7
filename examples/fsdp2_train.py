"""Train a small torch model under FSDP2 on 2 CPU ranks, with gradclip clipping the sharded
gradients.

    python examples/fsdp2_train.py [--steps N] [--ranks 2] [--store PATH]

The script starts its ranks itself (torch.multiprocessing, the gloo backend, a file store).
Every rank holds a shard of each parameter (``fully_shard`` over ``init_device_mesh("cpu",
(ranks,))``) and draws its own part of each batch; FSDP2 averages the gradients into
sharded DTensors, and ``gradclip.torch.clip_grad_norm_`` takes their global norm (one
all-gather of 8 bytes per rank) and scales every rank's shards in place. At the end every
rank gathers the full parameters; the script checks that they are the same on every rank
and match a single process trained on the whole batches with the same clipping, and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gradclip.torch as gt

FEATURES, HIDDEN, BATCH, MAX_NORM, LR = 6, 16, 24, 0.5, 0.1


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1)
    ).double()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of step ``step`` (the same on every rank; each rank takes its part)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(BATCH, FEATURES, generator=g, dtype=torch.float64)
    return x, (x.sum(dim=1, keepdim=True) * 3.0).sin() * 5.0


def train_rank(rank: int, ranks: int, store: str, steps: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=ranks,
        timeout=timedelta(seconds=60),
    )
    mesh = init_device_mesh("cpu", (ranks,))
    model = make_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    reference = make_model() if rank == 0 else None  # one process, the whole batches
    ref_opt = torch.optim.SGD(reference.parameters(), lr=LR) if reference is not None else None
    clipped = 0
    for step in range(steps):
        x, y = batch(step)
        part = slice(rank * BATCH // ranks, (rank + 1) * BATCH // ranks)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[part]), y[part]).backward()
        norm = gt.clip_grad_norm_(model.parameters(), MAX_NORM)  # a replicated DTensor
        clipped += bool(norm.to_local() > MAX_NORM)
        opt.step()
        if reference is not None and ref_opt is not None:
            ref_opt.zero_grad()
            torch.nn.functional.mse_loss(reference(x), y).backward()
            ref_norm = gt.clip_grad_norm_(reference.parameters(), MAX_NORM)
            assert abs(float(ref_norm) - float(norm.to_local())) <= 1e-10 * float(ref_norm)
            ref_opt.step()

    full = torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()])
    every = [torch.empty_like(full) for _ in range(ranks)]
    dist.all_gather(every, full)
    if rank == 0:
        assert reference is not None
        same = all(torch.equal(e, every[0]) for e in every)
        ref = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
        err = float((every[0] - ref).abs().max() / ref.abs().max())
        print(
            f"{steps} steps on {ranks} ranks, clipped on {clipped}; largest parameter "
            f"difference from one process: {err:.2e} (relative)"
        )
        if not same:
            raise SystemExit("the ranks ended with different parameters")
        if err > 1e-10:
            raise SystemExit("the sharded run differs from the single-process run")
        print("every rank ends with the same parameters")
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--store", help="the file store's path (default: in a temporary folder)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or os.path.join(tmp, "store")
        mp.spawn(train_rank, args=(args.ranks, store, args.steps), nprocs=args.ranks, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
