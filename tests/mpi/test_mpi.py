# Global-norm clipping across MPI ranks (run under mpiexec -n 2 and -n 3): sharded norms and
# clipped values against the single-process result on all the arrays, for p = 1, 2, inf,
# float32 and bfloat16, an empty shard, a non-finite value on one rank only (every rank
# raises or skips, none writes), bad input on one rank only (every rank raises, no hang),
# unscale_clip_grad_norm_ and GradientSet.
import math
import os

import numpy as np
import pytest

import gradclip

ml_dtypes = pytest.importorskip("ml_dtypes", exc_type=ImportError)
DTYPES = [np.float32, ml_dtypes.bfloat16]
NORMS = [1.0, 2.0, math.inf]


# CI sets GRADCLIP_REQUIRE_MPI=1 under mpiexec: a missing mpi4py or a single rank (an
# mpiexec that does not match mpi4py's MPI) then fails instead of skipping every test.
REQUIRE_MPI = os.environ.get("GRADCLIP_REQUIRE_MPI") == "1"


@pytest.fixture(scope="module")
def comm():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        if REQUIRE_MPI:
            pytest.fail(f"GRADCLIP_REQUIRE_MPI=1 but mpi4py does not import: {exc}")
        pytest.skip(f"could not import 'mpi4py': {exc}")
    c = MPI.COMM_WORLD
    if c.Get_size() < 2:
        if REQUIRE_MPI:
            pytest.fail("GRADCLIP_REQUIRE_MPI=1 but this run has one MPI process")
        pytest.skip("needs at least 2 MPI processes")
    return c


def full_list(dtype, seed=0):
    """The whole model's gradients, the same on every rank (same seed)."""
    rng = np.random.default_rng(seed)
    shapes = [(300, 17), (17,), (1000,), (4, 4, 3), (), (2049,), (5, 0)]
    return [np.asarray(rng.standard_normal(s) * 3).astype(dtype) for s in shapes]


def shard_by_arrays(arrays, rank, size, empty_rank=None):
    if rank == empty_rank:
        return []
    owners = [r for r in range(size) if r != empty_rank]
    return arrays[owners.index(rank) :: len(owners)]


def check_written(local, single_run, idx):
    for a, i in zip(local, idx, strict=True):
        np.testing.assert_allclose(
            a.astype(np.float64), single_run[i].astype(np.float64), rtol=2.0**-6, atol=0
        )


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("empty_rank", [None, 0])
def test_sharded_by_arrays(comm, p, dtype, empty_rank):
    rank, size = comm.Get_rank(), comm.Get_size()
    everything = full_list(dtype)
    single = [a.copy() for a in everything]
    want = gradclip.clip_grad_norm_(single, 1.0, p)
    idx = shard_by_arrays(list(range(len(everything))), rank, size, empty_rank)
    local = [everything[i] for i in idx]
    got = gradclip.clip_grad_norm_(local, 1.0, p, comm=comm)
    assert got == pytest.approx(want, rel=1e-14)
    # the same bits on every rank
    assert len(set(comm.allgather(got))) == 1
    check_written(local, single, idx)
    # get_total_norm agrees too, on the clipped arrays
    after = gradclip.get_total_norm(local, p, comm=comm)
    assert after == pytest.approx(gradclip.get_total_norm(single, p), rel=1e-14)


@pytest.mark.parametrize("p", NORMS)
def test_sharded_slices_of_one_array(comm, p):
    rank, size = comm.Get_rank(), comm.Get_size()
    big = np.random.default_rng(1).standard_normal(100_003).astype(np.float32)
    bounds = np.linspace(0, big.size, size + 1).astype(int)  # uneven when size = 3
    mine = big[bounds[rank] : bounds[rank + 1]].copy()
    single = big.copy()
    want = gradclip.clip_grad_norm_(single, 0.5, p)
    got = gradclip.clip_grad_norm_(mine, 0.5, p, comm=comm)
    assert got == pytest.approx(want, rel=1e-14)
    np.testing.assert_allclose(mine, single[bounds[rank] : bounds[rank + 1]], rtol=2.0**-22)


@pytest.mark.parametrize("mode", ["raise", "skip", "zero", "propagate"])
def test_nonfinite_on_one_rank_only(comm, mode):
    rank = comm.Get_rank()
    local = [np.ones(1000, np.float32) * (rank + 1), np.ones(10, np.float32)]
    if rank == 1:
        local[0][500] = np.nan
    before = [a.copy() for a in local]
    if mode == "raise":
        with pytest.raises(gradclip.NonFiniteNormError):
            gradclip.clip_grad_norm_(local, 1.0, nonfinite="raise", comm=comm)
        for a, b in zip(local, before, strict=True):
            assert a.tobytes() == b.tobytes()
        return
    got = gradclip.clip_grad_norm_(local, 1.0, nonfinite=mode, comm=comm)
    assert math.isnan(got)
    if mode == "skip":
        for a, b in zip(local, before, strict=True):
            assert a.tobytes() == b.tobytes()
    elif mode == "zero":
        assert all(not a.any() for a in local)
    else:  # PyTorch's arithmetic: a NaN norm makes every element NaN, on every rank
        assert all(np.isnan(a).all() for a in local)


def test_bad_input_on_one_rank_raises_everywhere(comm):
    rank = comm.Get_rank()
    local = [np.ones(100, np.float32)]
    if rank == 0:
        local.append(np.ones(3, np.int32))  # a TypeError on rank 0 only
    before = [a.tobytes() for a in local]
    with pytest.raises(TypeError):
        gradclip.clip_grad_norm_(local, 1e-3, comm=comm)
    assert [a.tobytes() for a in local] == before
    comm.Barrier()  # every rank got here: nobody is stuck in a collective


# Scalar arguments are checked inside the collective, and every rank must give the same: a
# bad or different max_norm, norm_type, nonfinite, eps or inv_scale on one rank makes every
# rank raise (none waits in a collective, none writes).
clip, total, unscale = (
    gradclip.clip_grad_norm_,
    gradclip.get_total_norm,
    gradclip.unscale_clip_grad_norm_,
)
BAD_SCALAR_CALLS = {  # (error, call(grads, comm, rank))
    "max_norm bad": (ValueError, lambda g, c, r: clip(g, -1.0 if r == 0 else 1.0, comm=c)),
    "max_norm differs": (ValueError, lambda g, c, r: clip(g, 1.0 + r, comm=c)),
    "norm_type differs": (ValueError, lambda g, c, r: clip(g, 1e-3, 2.0 + r, comm=c)),
    "nonfinite differs": (
        ValueError,
        lambda g, c, r: clip(g, 1e-3, nonfinite="skip" if r else "zero", comm=c),
    ),
    "eps differs": (ValueError, lambda g, c, r: clip(g, 1e-3, eps=1e-6 * (r + 1), comm=c)),
    "total norm_type bad": (TypeError, lambda g, c, r: total(g, "l7" if r == 0 else 2.0, comm=c)),
    "total flag differs": (ValueError, lambda g, c, r: total(g, error_if_nonfinite=r > 0, comm=c)),
    "set max_norm bad": (
        ValueError,
        lambda g, c, r: gradclip.GradientSet(g).clip_norm_(math.nan if r == 0 else 1e-3, comm=c),
    ),
    "set norm_type differs": (
        ValueError,
        lambda g, c, r: gradclip.GradientSet(g).total_norm(1.0 + r, comm=c),
    ),
    "unscale inv_scale differs": (
        ValueError,
        lambda g, c, r: unscale(g, 1e-3, inv_scale=1.0 / (r + 1), comm=c),
    ),
    "unscale inv_scale bad": (
        ValueError,
        lambda g, c, r: unscale(g, 1e-3, inv_scale=0.0 if r else 1.0, comm=c),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SCALAR_CALLS))
def test_bad_or_different_scalar_on_one_rank_raises_everywhere(comm, case):
    rank = comm.Get_rank()
    error, call = BAD_SCALAR_CALLS[case]
    local = [np.full(100, 2.0, np.float32)]
    before = [a.tobytes() for a in local]
    with pytest.raises(error):
        call(local, comm, rank)
    assert [a.tobytes() for a in local] == before, "a rank wrote"
    comm.Barrier()  # every rank got here: nobody is stuck in a collective


def test_unscale_and_gradient_set(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    everything = [np.asarray(a * np.float32(1024)) for a in full_list(np.float32, seed=3)]
    single = [a.copy() for a in everything]
    want = gradclip.unscale_clip_grad_norm_(single, 1.0, 1 / 1024)
    idx = shard_by_arrays(list(range(len(everything))), rank, size)
    local = [everything[i] for i in idx]
    got = gradclip.unscale_clip_grad_norm_(local, 1.0, 1 / 1024, comm=comm)
    assert got.total_norm == pytest.approx(want.total_norm, rel=1e-14)
    assert got.clipped == want.clipped and not got.found_nonfinite
    check_written(local, single, idx)

    everything = full_list(np.float32, seed=4)
    single = [a.copy() for a in everything]
    want_norm = gradclip.clip_grad_norm_(single, 2.0)
    local = [everything[i] for i in idx]
    gs = gradclip.GradientSet(local)
    assert gs.total_norm(comm=comm) == pytest.approx(want_norm, rel=1e-14)
    assert gs.clip_norm_(2.0, comm=comm) == pytest.approx(want_norm, rel=1e-14)
    check_written(local, single, idx)


def test_data_parallel_needs_no_comm(comm):
    # replicated layout: after the user's own gradient all-reduce every rank holds the
    # global gradients, so the plain call (no comm) already clips by the global norm
    from mpi4py import MPI

    rank = comm.Get_rank()
    mine = np.random.default_rng(rank).standard_normal(1000)
    summed = np.empty_like(mine)
    comm.Allreduce(mine, summed, op=MPI.SUM)
    summed /= comm.Get_size()
    norm = gradclip.clip_grad_norm_(summed, 1.0)
    assert len(set(comm.allgather(norm))) == 1
    assert len({a.tobytes() for a in comm.allgather(summed)}) == 1


@pytest.mark.parametrize("sharded", [False, True])
def test_example_trains_with_identical_parameters_on_every_rank(comm, sharded):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[2] / "examples" / "mpi_data_parallel.py"
    spec = importlib.util.spec_from_file_location("mpi_data_parallel", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    before = gradclip.get_num_threads()
    try:
        # main() returns 0 only when the parameters are the same bits on every rank
        assert mod.main(["--steps", "60"] + (["--sharded"] if sharded else [])) == 0
    finally:
        gradclip.set_num_threads(before)  # the example runs one thread per rank


def test_per_tensor_norms_with_comm_are_this_ranks(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    everything = full_list(np.float32, seed=6)
    idx = shard_by_arrays(list(range(len(everything))), rank, size)
    local = [everything[i].copy() for i in idx]
    want_each = gradclip.tensor_norms(local)
    r = gradclip.clip_grad_norm_(local, 1.0, comm=comm, per_tensor_norms=True)
    np.testing.assert_array_equal(r.tensor_norms, want_each)
    assert r.total_norm == pytest.approx(gradclip.get_total_norm(everything), rel=1e-14)
    scaled = [np.array(everything[i] * np.float32(8)) for i in idx]
    u = gradclip.unscale_clip_grad_norm_(scaled, 1.0, 1 / 8, comm=comm, per_tensor_norms=True)
    np.testing.assert_allclose(u.tensor_norms, want_each, rtol=1e-12)


def test_any_exception_on_one_rank_raises_everywhere(comm):
    """Not only the validation errors: whatever ``local()`` raises on one rank is sent to the
    others (a rank that raised before the collective left them waiting in it), and a value
    every rank must give alike is checked in the same collective."""
    from gradclip._dist import global_norm

    rank = comm.Get_rank()

    def local():
        if rank == 1:
            raise KeyError("only on rank 1")
        return 1.0

    with pytest.raises((KeyError, RuntimeError)) as info:
        global_norm(comm, local, 2.0)
    if rank == 1:
        assert info.type is KeyError
    else:
        assert info.type is RuntimeError
        assert str(info.value) == (
            "rank 1 rejected its input, so no rank writes: KeyError: 'only on rank 1'"
        )
    comm.Barrier()  # every rank got here: nobody is stuck in a collective
    with pytest.raises(ValueError, match=r"the ranks were given different max_norm \(rank 0: 1"):
        global_norm(comm, lambda: 1.0, 2.0, [("max_norm", lambda: 1.0 + (rank == 1))])
    assert global_norm(comm, lambda: 3.0, 2.0, [("max_norm", lambda: math.nan)]) == pytest.approx(
        3.0 * math.sqrt(comm.Get_size())
    )
    comm.Barrier()
