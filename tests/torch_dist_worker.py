"""One rank of the torch.distributed tests (tests/test_torch_distributed.py starts the ranks).

    python tests/torch_dist_worker.py RANK WORLD_SIZE INIT_FILE OUT_FILE [SCENARIO,...]

Runs every scenario below on a gloo process group over the CPU and writes what it saw, per
scenario, as JSON to OUT_FILE; the test compares the ranks' reports. A scenario that raises
unexpectedly is reported as such (and the other ranks, waiting in a collective, time out).
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

import gradclip
import gradclip.torch as gt


def f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy().ravel()


def full_grads(model: torch.nn.Module) -> list[np.ndarray]:
    """Every gradient, unsharded (the same on every rank), in float64."""
    out = []
    for p in model.parameters():
        g = p.grad
        out.append(f64(g.full_tensor() if isinstance(g, DTensor) else g))
    return out


def norm64(arrays: list[np.ndarray], p: float = 2.0) -> float:
    flat = np.concatenate(arrays)
    if p == math.inf:
        return float(np.max(np.abs(flat)))
    return float(np.sum(np.abs(flat) ** p) ** (1.0 / p))


def norm_report(norm: torch.Tensor) -> dict:
    local = norm.to_local() if isinstance(norm, DTensor) else norm
    return {
        "type": type(norm).__name__,
        "placements": [str(pl) for pl in getattr(norm, "placements", ())],
        "shape": list(norm.shape),
        "dtype": str(local.dtype),
        "value": float(local),
        "hex": float(local.to(torch.float64)).hex(),
    }


def fsdp_model(mesh, offload: bool, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    # 7 and 3 rows do not divide among 2 or 3 ranks: uneven shards (the last may be empty)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3), torch.nn.Linear(3, 1)
    ).to(dtype)
    kw = {"offload_policy": CPUOffloadPolicy(pin_memory=False)} if offload else {}
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh, **kw)
    fully_shard(model, mesh=mesh, **kw)
    torch.manual_seed(1)
    x = torch.randn(16, 5, dtype=dtype) * 10.0
    (model(x) ** 2).sum().backward()
    return model


def scenario_fsdp(mesh, offload: bool, p: float = 2.0, dtype=torch.float32) -> dict:
    model = fsdp_model(mesh, offload, dtype)
    params = list(model.parameters())
    before = full_grads(model)
    ptrs = [q.grad.to_local().data_ptr() for q in params]
    ref = norm64(before, p)
    max_norm = ref / 10.0  # clips: every gradient is scaled by about 0.1
    norm = gt.clip_grad_norm_(model.parameters(), max_norm, norm_type=p)
    after = full_grads(model)
    coef = max_norm / (ref + 1e-6)
    err = max(
        float(np.max(np.abs(a - b * coef))) / (abs(coef) * max(1e-30, float(np.max(np.abs(b)))))
        for a, b in zip(after, before, strict=True)
    )
    return {
        "norm": norm_report(norm),
        "ref": ref,
        "clip_rel_err": err,
        "same_storage": [q.grad.to_local().data_ptr() for q in params] == ptrs,
        "local_devices": sorted({str(q.grad.to_local().device) for q in params}),
        "again": norm_report(gt.get_total_norm([q.grad for q in params], p)),
        "again_ref": norm64(after, p),
    }


def scenario_placements(mesh, rank: int, n: int) -> dict:
    """A replicated and a sharded DTensor: the replica counts once, not once per rank."""
    torch.manual_seed(2)
    full_a, full_b = torch.randn(11, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    a = torch.nn.Parameter(
        distribute_tensor(torch.zeros(11, 3, dtype=torch.float64), mesh, [Shard(0)])
    )
    b = torch.nn.Parameter(
        distribute_tensor(torch.zeros(4, dtype=torch.float64), mesh, [Replicate()])
    )
    a.grad = distribute_tensor(full_a.clone(), mesh, [Shard(0)])
    b.grad = distribute_tensor(full_b.clone(), mesh, [Replicate()])
    ref = norm64([full_a.numpy().ravel(), full_b.numpy().ravel()])
    got = gt.get_total_norm([a.grad, b.grad])
    clipper = gt.GradClipper([a, b])
    norm = clipper.clip_grad_norm_(1.0)
    coef = 1.0 / (ref + 1e-6)
    a_ok = bool(torch.allclose(a.grad.full_tensor(), full_a * coef, rtol=1e-15, atol=0))
    b_ok = bool(torch.allclose(b.grad.to_local(), full_b * coef, rtol=1e-15, atol=0))
    # clip_grads_with_norm_ with the replicated DTensor norm get_total_norm returns
    total = gt.get_total_norm([a.grad, b.grad])
    gt.clip_grads_with_norm_([a, b], 0.5, total)
    coef2 = 0.5 / (float(total.to_local()) + 1e-6)
    with_norm_ok = bool(
        torch.allclose(a.grad.full_tensor(), full_a * coef * coef2, rtol=1e-14, atol=0)
        and torch.allclose(b.grad.to_local(), full_b * coef * coef2, rtol=1e-14, atol=0)
    )
    # clip_grad_value_ on DTensor gradients: element-wise on the local shards
    bound = float(a.grad.full_tensor().abs().max()) / 2
    want = a.grad.full_tensor().clamp(-bound, bound)
    gt.clip_grad_value_([a, b], bound)
    clipper.clip_grad_value_(bound)
    value_ok = bool(torch.equal(a.grad.full_tensor(), want))
    return {
        "with_norm_ok": with_norm_ok,
        "value_ok": value_ok,
        "norm": norm_report(got),
        "clipper_norm": norm_report(norm),
        "ref": ref,
        "a_ok": a_ok,
        "b_ok": b_ok,
    }


def scenario_mesh2d(n: int) -> dict:
    """2-D meshes (n, 1) and (1, n): replicated along one dimension, sharded along the
    other, and the other way round; the norms are gathered along each dimension in turn."""
    out = {}
    for shape in ((n, 1), (1, n)):
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=("rep", "shard"))
        torch.manual_seed(4)
        full_a = torch.randn(9, 2, dtype=torch.float64)
        full_b = torch.randn(5, dtype=torch.float64)
        a = distribute_tensor(full_a.clone(), mesh, [Replicate(), Shard(0)])
        b = distribute_tensor(full_b.clone(), mesh, [Shard(0), Replicate()])
        out[f"norm{shape}"] = norm_report(gt.get_total_norm([a, b]))
        out[f"ref{shape}"] = norm64([full_a.numpy().ravel(), full_b.numpy().ravel()])
    return out


def scenario_huge(mesh, n: int) -> dict:
    """Shards of 1e200 (float64): the global norm is finite (1e200 * sqrt(elements)), as
    every rank's local norm is, though the sum of squares is not (an all-reduce of the
    ranks' sums of |g|^2, torch's own way, overflows to inf)."""
    full = torch.full((5 * n, 2), 1e200, dtype=torch.float64)
    g = distribute_tensor(full.clone(), mesh, [Shard(0)])
    w = torch.nn.Parameter(
        distribute_tensor(torch.zeros(5 * n, 2, dtype=torch.float64), mesh, [Shard(0)])
    )
    w.grad = g
    norm = gt.clip_grad_norm_([w], 1e200, error_if_nonfinite=True)
    theirs = torch.nn.utils.get_total_norm([g.clone()])
    return {
        "norm": norm_report(norm),
        "ref": 1e200 * math.sqrt(full.numel()),
        "torch": float(theirs.full_tensor()),
        "clipped_max": float(w.grad.full_tensor().abs().max()),
    }


def scenario_hsdp(rank: int, n: int) -> dict:
    """FSDP2 over a 2-D mesh (2, n // 2): HSDP's (Replicate, Shard(0)) gradients, against
    one process's float64 gradients of the same loss."""
    mesh = init_device_mesh("cpu", (2, n // 2), mesh_dim_names=("replicate", "shard"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)
    ).double()
    whole = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)
    ).double()
    whole.load_state_dict(model.state_dict())
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    torch.manual_seed(1)
    x = torch.randn(8 * n, 5, dtype=torch.float64)
    (model(x[8 * rank : 8 * (rank + 1)]) ** 2).mean().backward()
    # FSDP2 averages the ranks' gradients: the mean of the ranks' mean losses
    (sum((whole(x[8 * r : 8 * (r + 1)]) ** 2).mean() for r in range(n)) / n).backward()
    ref = norm64([f64(q.grad) for q in whole.parameters()])
    params = list(model.parameters())
    return {
        "placements": sorted({str(q.grad.placements) for q in params}),
        "norm": norm_report(gt.clip_grad_norm_(params, ref / 10)),
        "ref": ref,
        "after": norm_report(gt.GradClipper(params).get_total_norm()),
    }


def hand_shards(rank: int, n: int, dtype=torch.float32):
    """Rank ``rank``'s slices of two seeded full arrays, and the full arrays."""
    g = torch.Generator().manual_seed(3)
    full = [
        torch.randn(1000, generator=g, dtype=dtype) * 1e3,
        torch.randn(5, 7, generator=g, dtype=dtype),
    ]
    mine = [f.reshape(-1).tensor_split(n)[rank].clone() for f in full]
    return mine, full


def scenario_group(rank: int, n: int) -> dict:
    mine, full = hand_shards(rank, n)
    ref = norm64([f64(f) for f in full])
    params = []
    for t in mine:
        q = torch.nn.Parameter(torch.zeros_like(t))
        q.grad = t
        params.append(q)
    norm = gt.clip_grad_norm_(params, 1.0, group=dist.group.WORLD)
    gathered = []
    for q in params:
        parts = [None] * n
        dist.all_gather_object(parts, q.grad.numpy().tolist())
        gathered.append(np.concatenate([np.asarray(x, dtype=np.float64) for x in parts]))
    coef = 1.0 / (ref + 1e-6)
    want = np.concatenate([f64(f) * coef for f in full])
    inf_norm = gt.get_total_norm(mine, "inf", group=dist.group.WORLD)
    return {
        "norm": norm_report(norm),
        "ref": ref,
        "clip_rel_err": float(
            np.max(np.abs(np.concatenate(gathered) - want)) / np.max(np.abs(want))
        ),
        "inf": norm_report(inf_norm),
        "inf_ref": norm64([f64(f) * coef for f in full], math.inf),
        **scenario_group_clipper(rank, n),
    }


def scenario_group_clipper(rank: int, n: int) -> dict:
    """GradClipper(group=) and get_total_norm + clip_grads_with_norm_ with group=, on
    float64 hand shards (the mesh given as a DeviceMesh for the clipper)."""
    mine, full = hand_shards(rank, n, torch.float64)
    ref = norm64([f64(f) for f in full])
    params = [_param(t) for t in mine]
    clipper = gt.GradClipper(params, group=init_device_mesh("cpu", (n,)))
    norm = clipper.clip_grad_norm_(ref / 4)
    coef = (ref / 4) / (ref + 1e-6)
    clipper_ok = all(
        bool(torch.allclose(q.grad, t * coef, rtol=1e-15, atol=0))
        for q, t in zip(params, hand_shards(rank, n, torch.float64)[0], strict=True)
    )
    total = gt.get_total_norm([q.grad for q in params], group=dist.group.WORLD)
    gt.clip_grads_with_norm_(params, ref / 8, total, group=dist.group.WORLD)
    after = clipper.get_total_norm()
    return {
        "clipper_norm": norm_report(norm),
        "clipper_ref": ref,
        "clipper_ok": clipper_ok,
        "total": norm_report(total),
        "after_with_norm": norm_report(after),
    }


def expect_error(fn) -> dict:
    try:
        fn()
    except Exception as exc:  # reported to the test, which checks the type and the message
        return {
            "raised": type(exc).__name__,
            "message": str(exc),
            "nonfinite": isinstance(exc, gradclip.NonFiniteNormError),
        }
    return {"raised": None}


def scenario_errors(mesh, rank: int, n: int) -> dict:
    out = {}
    # non-finite on the last rank only, error_if_nonfinite=True: every rank raises, none writes
    mine, _ = hand_shards(rank, n)
    if rank == n - 1:
        mine[1][0] = math.inf
    saved = [t.clone() for t in mine]
    params = []
    for t in mine:
        q = torch.nn.Parameter(torch.zeros_like(t))
        q.grad = t
        params.append(q)
    out["nonfinite"] = expect_error(
        lambda: gt.clip_grad_norm_(params, 1.0, error_if_nonfinite=True, group=dist.group.WORLD)
    )
    out["nonfinite_untouched"] = all(
        bool(torch.equal(a, b)) for a, b in zip(mine, saved, strict=True)
    )
    # an integer tensor on rank 0 only: every rank raises a TypeError
    mine, _ = hand_shards(rank, n)
    saved = [t.clone() for t in mine]
    bad = mine if rank != 0 else [mine[0], mine[1].to(torch.int32)]
    out["bad_dtype"] = expect_error(lambda: gt.get_total_norm(bad, group=dist.group.WORLD))
    # the same parameter twice on rank 0 only: every rank raises a ValueError, none writes
    params = [_param(t) for t in mine]
    twice = params if rank != 0 else [params[0], params[1], params[0]]
    out["twice"] = expect_error(lambda: gt.clip_grad_norm_(twice, 1e-3, group=dist.group.WORLD))
    out["twice_untouched"] = all(bool(torch.equal(a, b)) for a, b in zip(mine, saved, strict=True))
    # a bad max_norm on the last rank only
    out["bad_max_norm"] = expect_error(
        lambda: gt.clip_grad_norm_(
            [_param(t) for t in mine], -1.0 if rank == n - 1 else 1e-3, group=dist.group.WORLD
        )
    )
    out["bad_max_norm_untouched"] = all(
        bool(torch.equal(a, b)) for a, b in zip(mine, saved, strict=True)
    )
    # FSDP2 gradients, one of them NaN on rank 0's shard
    model = fsdp_model(mesh, offload=False)
    if rank == 0:
        next(model.parameters()).grad.to_local()[0, 0] = math.nan
    before = full_grads(model)
    out["fsdp_nonfinite"] = expect_error(
        lambda: gt.clip_grad_norm_(model.parameters(), 1e-3, error_if_nonfinite=True)
    )
    out["fsdp_untouched"] = all(
        np.array_equal(a, b, equal_nan=True) for a, b in zip(full_grads(model), before, strict=True)
    )
    # a Partial placement on every rank
    w = torch.nn.Parameter(torch.zeros(3))
    w.grad = DTensor.from_local(torch.ones(3), mesh, [Partial()], run_check=False)
    out["partial"] = expect_error(lambda: gt.clip_grad_norm_([w], 1.0))
    # two meshes in one list
    other = init_device_mesh("cpu", (n,), mesh_dim_names=("other",))
    u = torch.nn.Parameter(torch.zeros(n))
    u.grad = distribute_tensor(torch.ones(n), mesh, [Shard(0)])
    v = torch.nn.Parameter(torch.zeros(n))
    v.grad = distribute_tensor(torch.ones(n), other, [Shard(0)])
    out["two_meshes"] = expect_error(lambda: gt.clip_grad_norm_([u, v], 1.0))
    # a DTensor and a plain tensor in one list
    out["mixed"] = expect_error(lambda: gt.clip_grad_norm_([u, _param(torch.ones(2))], 1.0))
    # group= with DTensor gradients
    out["group_and_dtensor"] = expect_error(
        lambda: gt.clip_grad_norm_([u], 1.0, group=dist.group.WORLD)
    )
    # and the ranks are still in step afterwards
    out["after"] = norm_report(gt.get_total_norm([u.grad]))
    return out


def _untouched(tensors, saved) -> bool:
    return all(bool(torch.equal(a, b)) for a, b in zip(tensors, saved, strict=True))


def scenario_one_rank(mesh, rank: int, n: int) -> dict:
    """What one rank does differently from the others: every rank raises (none writes, none
    waits, and the next call still pairs every rank's collective with the same call), or,
    for a rank without gradients, every rank gets the same norm."""
    out = {}
    model = fsdp_model(mesh, offload=False)
    params = list(model.parameters())
    saved = [q.grad.to_local().clone() for q in params]
    # an exception that is not a TypeError/ValueError/MemoryError, on rank 1 only (a meta
    # tensor's float() is a RuntimeError)
    bad = torch.tensor(1e-3, device="meta") if rank == 1 else 1e-3
    out["runtime"] = expect_error(lambda: gt.clip_grad_norm_(params, bad))
    out["runtime_untouched"] = _untouched([q.grad.to_local() for q in params], saved)
    out["runtime_next"] = norm_report(gt.get_total_norm([q.grad for q in params]))
    # valid but different arguments on the last rank: every rank raises, none writes
    last = rank == n - 1
    out["max_norm_differs"] = expect_error(
        lambda: gt.clip_grad_norm_(params, 2e-3 if last else 1e-3)
    )
    out["norm_type_differs"] = expect_error(
        lambda: gt.clip_grad_norm_(params, 1e-3, 3.0 if last else 2.0)
    )
    out["flag_differs"] = expect_error(
        lambda: gt.clip_grad_norm_(params, 1e-3, error_if_nonfinite=last)
    )
    total = gt.get_total_norm([q.grad for q in params])
    out["total_norm_differs"] = expect_error(
        lambda: gt.clip_grads_with_norm_(params, 1e-3, total * 2 if last else total)
    )
    out["differs_untouched"] = _untouched([q.grad.to_local() for q in params], saved)
    # a norm_type given as torch converts it (float()) on rank 0 only: the same value
    out["norm_type_text"] = norm_report(
        gt.get_total_norm([q.grad for q in params], "2" if rank == 0 else 2.0)
    )
    # overlapping views on rank 0 only, with group=: a reading pass accepts them, the write
    # refuses them, so the refusal must come before the collective (before, rank 0 raised
    # after the other ranks had written)
    buf = torch.ones(10) * (rank + 1)
    views = [buf[:6], buf[4:]] if rank == 0 else [buf[:5], buf[5:]]
    overlapping = [_param(v) for v in views]
    out["overlap"] = expect_error(
        lambda: gt.clip_grad_norm_(overlapping, 1e-3, group=dist.group.WORLD)
    )
    out["overlap_with_norm"] = expect_error(
        lambda: gt.clip_grads_with_norm_(overlapping, 1e-3, 10.0, group=dist.group.WORLD)
    )
    out["overlap_untouched"] = bool(torch.equal(buf, torch.ones(10) * (rank + 1)))
    # a plain tensor before the first DTensor: the error names both
    u = torch.nn.Parameter(torch.zeros(n))
    u.grad = distribute_tensor(torch.ones(n), mesh, [Shard(0)])
    out["plain_first"] = expect_error(lambda: gt.clip_grad_norm_([_param(torch.ones(2)), u], 1.0))
    # FSDP2 parameters whose gradients are all None on rank 0 (float64): rank 0 takes part
    # with nothing to count, and every rank returns the same norm, in the same dtype
    model = fsdp_model(mesh, offload=False, dtype=torch.float64)
    params = list(model.parameters())
    out["own_sumsq"] = 0.0
    if rank == 0:
        for q in params:
            q.grad = None
    else:
        out["own_sumsq"] = float(
            sum(f64(q.grad.to_local()) @ f64(q.grad.to_local()) for q in params)
        )
    out["no_grads"] = norm_report(gt.clip_grad_norm_(params, math.inf))
    out["no_grads_clipper"] = norm_report(gt.GradClipper(params).get_total_norm())
    # group=: rank 0 holds no tensors, the others float64 ones
    mine = [] if rank == 0 else [torch.ones(4, dtype=torch.float64) * rank]
    out["empty_rank_group"] = norm_report(gt.get_total_norm(mine, group=dist.group.WORLD))
    return out


def _param(t: torch.Tensor) -> torch.nn.Parameter:
    q = torch.nn.Parameter(torch.zeros(t.shape, dtype=t.dtype))
    q.grad = t
    return q


def main() -> None:
    rank, n, init_file, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=n,
        timeout=timedelta(seconds=60),
    )
    mesh = init_device_mesh("cpu", (n,))
    scenarios = {
        "fsdp": lambda: scenario_fsdp(mesh, offload=False),
        "fsdp_offload": lambda: scenario_fsdp(mesh, offload=True),
        "fsdp_f64": lambda: scenario_fsdp(mesh, offload=False, dtype=torch.float64),
        "fsdp_offload_f64": lambda: scenario_fsdp(mesh, offload=True, dtype=torch.float64),
        "fsdp_p3": lambda: scenario_fsdp(mesh, offload=False, p=3.0),
        "fsdp_inf": lambda: scenario_fsdp(mesh, offload=False, p=math.inf),
        "placements": lambda: scenario_placements(mesh, rank, n),
        "group": lambda: scenario_group(rank, n),
        "mesh2d": lambda: scenario_mesh2d(n),
        "huge": lambda: scenario_huge(mesh, n),
        "errors": lambda: scenario_errors(mesh, rank, n),
        "one_rank": lambda: scenario_one_rank(mesh, rank, n),
    }
    if len(sys.argv) > 5:  # only the scenarios named, hsdp (4 ranks) among them
        scenarios["hsdp"] = lambda: scenario_hsdp(rank, n)
        scenarios = {k: scenarios[k] for k in sys.argv[5].split(",")}
    report = {}
    for name, run in scenarios.items():
        try:
            report[name] = run()
        except Exception:
            report[name] = {"crashed": traceback.format_exc()}
            break  # the other ranks may be out of step now
    with open(out_file, "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
