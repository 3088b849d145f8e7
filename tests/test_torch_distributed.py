"""gradclip.torch on sharded gradients: 2 and 3 gloo ranks on the CPU.

Each world size starts its ranks once (tests/torch_dist_worker.py runs every scenario, a
file store in a temporary directory rendezvouses them) and every test reads the ranks'
reports. The ranks are bounded in time: a rank stuck in a collective fails the tests
instead of hanging the run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch.distributed tests need PyTorch")
if not torch.distributed.is_available():  # pragma: no cover - builds without distributed
    pytest.skip("this PyTorch build has no torch.distributed", allow_module_level=True)

WORKER = Path(__file__).with_name("torch_dist_worker.py")
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 150  # seconds for one world size, all scenarios (about 10 s when nothing hangs)


def run_ranks(n: int, tmp: Path, only: str | None = None) -> list[dict]:
    """Every rank's report: every scenario, or those named in ``only`` (comma-separated)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs, outs = [], []
    for rank in range(n):
        out = tmp / f"rank{rank}.json"
        log = open(tmp / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        cmd = [sys.executable, str(WORKER), str(rank), str(n), str(tmp / "store"), str(out)]
        cmd += [only] if only else []
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        outs.append(out)
    failed = []
    for rank, (proc, log) in enumerate(procs):
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
            proc.wait()
            failed.append(f"rank {rank} timed out after {TIMEOUT} s (a hang in a collective?)")
        log.close()
        if proc.returncode != 0 and not failed:
            failed.append(f"rank {rank} exited with {proc.returncode}")
    if failed:
        logs = "\n".join((tmp / f"rank{r}.log").read_text()[-3000:] for r in range(n))
        pytest.fail("; ".join(failed) + "\n" + logs)
    return [json.loads(o.read_text()) for o in outs]


@pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks"])
def reports(request, tmp_path_factory):
    return run_ranks(request.param, tmp_path_factory.mktemp(f"ranks{request.param}"))


def scenario(reports: list[dict], name: str) -> list[dict]:
    got = [r.get(name, {"crashed": "not reached"}) for r in reports]
    for rank, r in enumerate(got):
        assert "crashed" not in r, f"rank {rank}, scenario {name}:\n{r['crashed']}"
    return got


def same_on_every_rank(rs: list[dict], key: str) -> dict:
    first = rs[0][key]
    for rank, r in enumerate(rs):
        assert r[key] == first, f"rank {rank} differs from rank 0 in {key}: {r[key]} != {first}"
    return first


@pytest.mark.parametrize(
    "name", ["fsdp", "fsdp_offload", "fsdp_f64", "fsdp_offload_f64", "fsdp_p3", "fsdp_inf"]
)
def test_fsdp2_norm_and_clip(reports, name):
    rs = scenario(reports, name)
    norm = same_on_every_rank(rs, "norm")  # value, dtype and bits
    ref = rs[0]["ref"]  # the float64 norm of the unsharded gradients
    assert norm["type"] == "DTensor" and norm["placements"] == ["R"] and norm["shape"] == []
    if norm["dtype"] == "torch.float64":
        assert abs(norm["value"] - ref) <= 1e-12 * ref
    else:  # the float64 norm rounded once to float32, as the gradients are
        assert norm["dtype"] == "torch.float32"
        assert norm["value"] == float(np.float32(ref))
    for r in rs:
        assert r["same_storage"], "the gradients were replaced instead of written in place"
        assert r["local_devices"] == ["cpu"]
        # every element scaled by max_norm / (norm + eps): the write reached the DTensors
        assert r["clip_rel_err"] <= (1e-15 if norm["dtype"] == "torch.float64" else 1e-6)
    again = same_on_every_rank(rs, "again")
    assert abs(again["value"] - rs[0]["again_ref"]) <= 1e-6 * rs[0]["again_ref"]


def test_replicate_counts_once(reports):
    rs = scenario(reports, "placements")
    norm = same_on_every_rank(rs, "norm")
    assert abs(norm["value"] - rs[0]["ref"]) <= 1e-12 * rs[0]["ref"]
    assert same_on_every_rank(rs, "clipper_norm") == norm  # GradClipper: the same
    assert all(r["a_ok"] and r["b_ok"] for r in rs)
    assert all(r["with_norm_ok"] for r in rs)  # clip_grads_with_norm_, a DTensor norm
    assert all(r["value_ok"] for r in rs)  # clip_grad_value_, element-wise on the shards


@pytest.mark.parametrize("shape", ["(n, 1)", "(1, n)"])
def test_two_dimensional_mesh(reports, shape):
    rs = scenario(reports, "mesh2d")
    key = shape.replace("n", str(len(rs)))
    norm = same_on_every_rank(rs, f"norm{key}")
    assert norm["placements"] == ["R", "R"]
    assert abs(norm["value"] - rs[0][f"ref{key}"]) <= 1e-12 * rs[0][f"ref{key}"]


def test_huge_shards_do_not_overflow(reports):
    """Why every rank's norm is gathered, not an all-reduce of their sums of squares: with
    shards of 1e200 the sum of squares overflows (torch's own norm is inf), the norm does
    not; clipping to 1e200 then gives elements of 1e200 / sqrt(elements)."""
    rs = scenario(reports, "huge")
    norm = same_on_every_rank(rs, "norm")
    assert math.isfinite(norm["value"])
    assert abs(norm["value"] - rs[0]["ref"]) <= 1e-12 * rs[0]["ref"]
    assert rs[0]["torch"] == math.inf  # the overflow an all-reduce of |g|^2 meets
    for r in rs:
        assert math.isclose(r["clipped_max"], 1e200 * (1e200 / r["ref"]), rel_tol=1e-12)


def test_hsdp_two_by_two_mesh(tmp_path):
    """4 ranks, FSDP2 over a (2, 2) mesh (HSDP: Replicate, then Shard(0)): both dimensions
    gathered, the replica counted once, the same bits on every rank, within 1e-12 of one
    process's float64 gradients."""
    rs = run_ranks(4, tmp_path, only="hsdp")
    rs = scenario(rs, "hsdp")
    assert rs[0]["placements"] == ["(Replicate(), Shard(dim=0))"]
    norm = same_on_every_rank(rs, "norm")
    assert norm["placements"] == ["R", "R"] and norm["dtype"] == "torch.float64"
    assert abs(norm["value"] - rs[0]["ref"]) <= 1e-12 * rs[0]["ref"]
    after = same_on_every_rank(rs, "after")  # clipped to ref / 10 (by PyTorch's eps rule)
    ref = rs[0]["ref"]
    assert math.isclose(after["value"], ref * (ref / 10) / (ref + 1e-6), rel_tol=1e-9)


def test_group_for_hand_sharded_tensors(reports):
    rs = scenario(reports, "group")
    norm = same_on_every_rank(rs, "norm")
    assert norm["type"] == "Tensor" and norm["shape"] == [] and norm["dtype"] == "torch.float32"
    assert norm["value"] == float(np.float32(rs[0]["ref"]))
    assert rs[0]["clip_rel_err"] <= 1e-6
    inf = same_on_every_rank(rs, "inf")
    assert math.isclose(inf["value"], rs[0]["inf_ref"], rel_tol=1e-6)


def test_group_with_the_clipper_and_a_norm_from_elsewhere(reports):
    """GradClipper(group=a DeviceMesh) and get_total_norm + clip_grads_with_norm_ with
    group=, float64 hand shards: every rank the same bits, within 1e-12 of one process."""
    rs = scenario(reports, "group")
    ref = rs[0]["clipper_ref"]
    norm = same_on_every_rank(rs, "clipper_norm")
    assert norm["type"] == "Tensor" and norm["dtype"] == "torch.float64"
    assert abs(norm["value"] - ref) <= 1e-12 * ref
    assert all(r["clipper_ok"] for r in rs)
    total = same_on_every_rank(rs, "total")["value"]  # after the clipper: ref / 4
    assert math.isclose(total, ref * (ref / 4) / (ref + 1e-6), rel_tol=1e-12)
    after = same_on_every_rank(rs, "after_with_norm")["value"]
    assert math.isclose(after, total * (ref / 8) / (total + 1e-6), rel_tol=1e-12)


@pytest.mark.parametrize(
    ("case", "kind", "text"),
    [
        ("nonfinite", "NonFiniteNormError", "non-finite (inf)"),
        ("fsdp_nonfinite", "NonFiniteNormError", "non-finite (nan)"),
        ("bad_dtype", "TypeError", "tensors[1] has dtype torch.int32"),
        ("twice", "ValueError", "parameters[0].grad and parameters[2].grad are the same"),
        ("bad_max_norm", "ValueError", "max_norm must be finite and > 0"),
        ("partial", "ValueError", "parameters[0].grad has a Partial placement"),
        ("two_meshes", "ValueError", "parameters[1].grad is on device mesh"),
        ("mixed", "TypeError", "parameters[1].grad is a Tensor while parameters[0].grad"),
        ("group_and_dtensor", "ValueError", "parameters[0].grad is a DTensor: pass group=None"),
    ],
)
def test_errors_raise_on_every_rank(reports, case, kind, text):
    rs = scenario(reports, "errors")
    for rank, r in enumerate(rs):
        assert r[case]["raised"] == kind, f"rank {rank}: {r[case]}"
        assert text in r[case]["message"]
        untouched = {
            "nonfinite": "nonfinite_untouched",
            "fsdp_nonfinite": "fsdp_untouched",
            "twice": "twice_untouched",
            "bad_max_norm": "bad_max_norm_untouched",
        }
        if case in untouched:
            assert r[untouched[case]], f"rank {rank} wrote after {case}"
    if case in ("bad_dtype", "twice", "bad_max_norm"):  # bad on one rank: the others say which
        others = [r[case]["message"] for r in rs if r[case]["message"].startswith("rank ")]
        assert len(others) == len(rs) - 1


def test_ranks_in_step_after_errors(reports):
    rs = scenario(reports, "errors")
    assert math.isclose(same_on_every_rank(rs, "after")["value"], math.sqrt(len(rs)), rel_tol=1e-7)


def test_other_exception_on_one_rank_raises_on_every_rank(reports):
    """A RuntimeError (not a validation error) on rank 1: rank 1 raises it, the others a
    RuntimeError naming it; nothing is written, and the next call's collective is the same
    call on every rank (before, the other ranks paired this call with rank 1's next one)."""
    rs = scenario(reports, "one_rank")
    for rank, r in enumerate(rs):
        assert r["runtime"]["raised"] == "RuntimeError", f"rank {rank}: {r['runtime']}"
        assert "cannot be called on meta tensors" in r["runtime"]["message"]
        if rank != 1:
            assert r["runtime"]["message"].startswith("rank 1 rejected its input")
        assert r["runtime_untouched"], f"rank {rank} wrote"
    same_on_every_rank(rs, "runtime_next")
    same_on_every_rank(rs, "norm_type_text")


@pytest.mark.parametrize(
    ("case", "name"),
    [
        ("max_norm_differs", "max_norm"),
        ("norm_type_differs", "norm_type"),
        ("flag_differs", "error_if_nonfinite"),
        ("total_norm_differs", "total_norm"),
    ],
)
def test_different_arguments_raise_on_every_rank(reports, case, name):
    """Valid arguments that differ on the last rank would scale the ranks' parts by
    different coefficients (replicas drift apart): every rank raises, none writes."""
    rs = scenario(reports, "one_rank")
    for rank, r in enumerate(rs):
        assert r[case]["raised"] == "ValueError", f"rank {rank}: {r[case]}"
        assert f"the ranks were given different {name} (rank 0: " in r[case]["message"]
        assert r["differs_untouched"], f"rank {rank} wrote"


@pytest.mark.parametrize("case", ["overlap", "overlap_with_norm"])
def test_overlapping_views_on_one_rank_refused_before_any_write(reports, case):
    rs = scenario(reports, "one_rank")
    for rank, r in enumerate(rs):
        assert r[case]["raised"] == "ValueError", f"rank {rank}: {r[case]}"
        assert "parameters[0].grad and parameters[1].grad overlap" in r[case]["message"]
        assert r[case]["message"].startswith("rank 0 rejected") == (rank != 0)
        assert r["overlap_untouched"], f"rank {rank} wrote"


def test_plain_tensor_before_the_first_dtensor_named(reports):
    for r in scenario(reports, "one_rank"):
        assert r["plain_first"]["raised"] == "TypeError"
        assert r["plain_first"]["message"].startswith(
            "parameters[0].grad is a Tensor while parameters[1].grad is a DTensor:"
        )


def test_rank_without_gradients_takes_part(reports):
    """FSDP2 parameters with no gradients on rank 0 (before, rank 0 returned 0 at once and
    the others waited in the collective), and group= with an empty list on rank 0: every
    rank returns the same norm, in the gradients' dtype."""
    rs = scenario(reports, "one_rank")
    want = math.sqrt(sum(r["own_sumsq"] for r in rs))
    for key in ("no_grads", "no_grads_clipper"):
        norm = same_on_every_rank(rs, key)
        assert norm["type"] == "DTensor" and norm["dtype"] == "torch.float64"
        assert math.isclose(norm["value"], want, rel_tol=1e-12)
    norm = same_on_every_rank(rs, "empty_rank_group")
    assert norm["dtype"] == "torch.float64"
    assert math.isclose(norm["value"], 2 * math.sqrt(sum(r * r for r in range(len(rs)))))


def test_fsdp2_example_trains_in_step(tmp_path):
    """examples/fsdp2_train.py, quick setting: 2 ranks end with the same parameters, equal to
    a single process trained on the whole batches with the same clipping."""
    script = ROOT / "examples" / "fsdp2_train.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(script), "--steps", "5", "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every rank ends with the same parameters" in done.stdout


def test_group_must_be_a_process_group():
    import gradclip.torch as gt

    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.ones(2)
    if not torch.distributed.is_initialized():
        with pytest.raises(RuntimeError, match=r"needs torch\.distributed initialised"):
            gt.clip_grad_norm_([w], 1.0, group=object())
    with pytest.raises(TypeError, match=r"group must be a torch\.distributed ProcessGroup"):
        gt._sharded._groups_of(object())
    assert torch.equal(w.grad, torch.ones(2))
