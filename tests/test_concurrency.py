# Covers: gradclip under concurrency.
#   - many Python threads calling every operation at once on their own arrays (small calls on
#     the calling thread and large ones on an OpenMP team per caller, 1 and 2 OpenMP threads)
#     give bit-for-bit the results and writes of the same calls made serially;
#   - threads reading the same arrays at once (norms only) agree;
#   - the GIL is released inside a call: another Python thread runs while it is in progress;
#   - a call from inside another OpenMP parallel region (libgomp's GOMP_parallel driven
#     through ctypes, nested parallelism off and on) finishes and gives the serial result;
#   - os.fork(): a child process can call gradclip when the parent has not used an OpenMP team
#     yet, and after it has for calls small enough to run on the calling thread, or once the
#     child has called set_num_threads(1); a large call in the child after the parent used a
#     team no longer deadlocks: gradclip's at-fork handler makes the child run serially.
# Anything that could hang runs in a subprocess with a deadline, so a deadlock fails the test
# instead of hanging the suite.
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from gc_helpers import HAVE_BF16, dtype_of
from operations import OPERATIONS, Operation, outcome

import gradclip

N_THREADS = 8
ROUNDS = 6
DEADLINE = 120  # seconds for a whole subprocess; a healthy one takes about one


# ---------------------------------------------------------------------------------------------
# many Python threads
# ---------------------------------------------------------------------------------------------


def workload(seed: int) -> list[np.ndarray]:
    """Arrays of one thread: small ones (calling thread) and one above the 256 KiB threshold."""
    rng = np.random.default_rng(seed)
    names = ["float32", "float64", "float16"] + (["bfloat16"] if HAVE_BF16 else [])
    out = []
    for k, n in enumerate([1, 17, 1000, 3001, 150_001]):
        name = names[(seed + k) % len(names)]
        values = rng.standard_normal(n) * 10.0 ** rng.uniform(-1, 2)
        out.append(values.astype(dtype_of(name)))
    out.append(rng.standard_normal((301, 257)).astype(np.float32)[:, ::2])  # strided
    return out


def op_grads(op: Operation, arrays: list[np.ndarray]) -> Any:
    """What ``op`` takes of a thread's arrays: all of them, or the last (strided) one alone
    where it takes one array, or as the only array of a batch."""
    if op.shapes == "single":
        return arrays[-1]
    return [arrays[-1]] if op.shapes == "batched" else arrays


def run_ops(arrays: list[np.ndarray]) -> list[bytes]:
    """Every operation once (tests/operations.py), in an order where each reads the previous
    one's writes, then a GradientSet."""
    record: list[bytes] = []
    for op in OPERATIONS:
        record += [x.tobytes() for x in outcome(op.call(gradclip, op_grads(op, arrays)))]
    gs = gradclip.GradientSet(arrays)
    record.append(np.float64(gs.clip_norm_(0.01, 1.0)).tobytes())
    record += [a.tobytes() for a in arrays]
    return record


def test_threads_match_serial(threads: int) -> None:
    templates = [workload(seed) for seed in range(N_THREADS)]
    serial = [run_ops(fresh(t)) for t in templates]

    barrier = threading.Barrier(N_THREADS)
    results: dict[int, list[list[bytes]]] = {i: [] for i in range(N_THREADS)}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(ROUNDS):
                arrays = fresh(templates[i])
                barrier.wait()  # every round starts all threads together
                results[i].append(run_ops(arrays))
        except BaseException as exc:  # reported below: an exception in a thread is lost
            errors.append(exc)
            barrier.abort()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(N_THREADS)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    for i in range(N_THREADS):
        assert len(results[i]) == ROUNDS
        for r, got in enumerate(results[i]):
            assert got == serial[i], f"thread {i}, round {r}: differs from the serial calls"


def fresh(template: list[np.ndarray]) -> list[np.ndarray]:
    """Copies of ``template`` in the same layouts (the last one strided)."""
    out = [a.copy() for a in template[:-1]]
    s = template[-1]
    base = np.zeros((s.shape[0], 2 * s.shape[1]), s.dtype)
    base[:, ::2] = s
    out.append(base[:, ::2])
    return out


def test_concurrent_reads_of_shared_arrays(threads: int) -> None:
    arrays = workload(99)
    before = [a.tobytes() for a in arrays]
    expected = (gradclip.get_total_norm(arrays), gradclip.tensor_norms(arrays).tobytes())
    seen: list[Any] = []
    barrier = threading.Barrier(N_THREADS)

    def worker() -> None:
        barrier.wait()
        for _ in range(ROUNDS):
            seen.append((gradclip.get_total_norm(arrays), gradclip.tensor_norms(arrays).tobytes()))

    pool = [threading.Thread(target=worker) for _ in range(N_THREADS)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(seen) == N_THREADS * ROUNDS
    assert all(s == expected for s in seen)
    assert [a.tobytes() for a in arrays] == before


# every operation (tests/operations.py) and a GradientSet method
def on_arrays(op: Operation) -> Callable[[list[np.ndarray]], Any]:
    return lambda g: op.call(gradclip, op_grads(op, g))


GIL_CALLS: dict[str, Callable[[list[np.ndarray]], Any]] = {
    op.name: on_arrays(op) for op in OPERATIONS
}
GIL_CALLS["GradientSet.total_norm"] = lambda g: gradclip.GradientSet(g).total_norm()


@pytest.mark.parametrize("name", GIL_CALLS)
def test_gil_released_during_call(name: str) -> None:
    # With a huge switch interval a thread holding the GIL keeps it until it blocks or releases
    # it explicitly, so the main thread can only run while the worker is inside the call if
    # the call released the GIL (a pure-Python loop in its place gives False however often it
    # is tried). Up to ten attempts, stopping at the first that shows it: on a loaded machine
    # (CI runs two legs at once) the OS can take longer to wake the main thread than a call
    # takes.
    big = [np.ones(1 << 22, np.float32), np.ones(1 << 20)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        ran = any(ran_during_call(lambda: GIL_CALLS[name](big)) for _ in range(10))
    finally:
        sys.setswitchinterval(old)
    assert ran, f"the main thread never ran while {name} was running"


def ran_during_call(call: Callable[[], Any]) -> bool:
    started = threading.Event()
    state = {"done": False}

    def worker() -> None:
        started.set()
        call()
        state["done"] = True

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    running = not state["done"]
    t.join()
    assert state["done"]
    return running


# ---------------------------------------------------------------------------------------------
# other OpenMP regions and fork: in subprocesses with a deadline
# ---------------------------------------------------------------------------------------------


def run_script(
    code: str, env: dict[str, str] | None = None, args: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *(args or [])],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=full_env,
        check=False,
    )


def openmp_runtime() -> str | None:
    """The OpenMP runtime the compiled core loaded (it exports GOMP_parallel), if any."""
    if not gradclip._core.have_openmp() or not os.path.exists("/proc/self/maps"):
        return None
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            name = os.path.basename(path)
            if name.startswith(("libgomp", "libomp", "libiomp")):
                return path
    return None


NESTED_SCRIPT = """
    import ctypes, sys
    import numpy as np
    import gradclip

    lib = ctypes.CDLL({lib!r})
    lib.omp_set_max_active_levels(int(sys.argv[1]))
    lib.omp_get_thread_num.restype = ctypes.c_int
    arrays = [np.random.default_rng(i).standard_normal(400_000).astype(np.float32)
              for i in range(4)]
    serial = [gradclip.get_total_norm(a) for a in arrays]
    got = {{}}
    errors = []

    CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    def body(_):
        try:  # ctypes would only print an exception raised here
            t = lib.omp_get_thread_num()
            for _ in range(3):
                copy = arrays[t].copy()
                got[t] = (gradclip.get_total_norm(arrays[t]),
                          gradclip.clip_grad_norm_(copy, 1.0))
        except BaseException as exc:
            errors.append(repr(exc))

    callback = CALLBACK(body)
    lib.GOMP_parallel.argtypes = [CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.GOMP_parallel(callback, None, 4, 0)
    assert not errors, errors
    assert sorted(got) == [0, 1, 2, 3], got
    for t, (norm, clipped) in got.items():
        assert norm == serial[t] and clipped == serial[t], (t, norm, clipped, serial[t])
    print("ok")
"""


@pytest.mark.parametrize("levels", [1, 2], ids=["nesting-off", "nesting-on"])
def test_call_inside_openmp_region(levels: int) -> None:
    lib = openmp_runtime()
    if lib is None:
        pytest.skip("the compiled core does not use a GNU-compatible OpenMP runtime")
    out = run_script(NESTED_SCRIPT.format(lib=lib), args=[str(levels)])
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# The child gets SIGALRM after a few seconds: a deadlocked child dies instead of hanging (the
# call itself takes milliseconds). The parent reports how the child ended.
FORK_SCRIPT = """
    import os, signal
    import numpy as np
    import gradclip

    big = np.random.default_rng(0).standard_normal(2_000_000).astype(np.float32)
    small = big[:1000].copy()
    expected = gradclip.get_total_norm(big.copy()) if {parent_team} else None
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)
        {child_setup}
        norm = gradclip.get_total_norm({child_input})
        ok = {child_input} is small or expected is None or norm == expected
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        print("child killed by signal", os.WTERMSIG(status), "(deadlock)")
    else:
        print("child exit", os.WEXITSTATUS(status))
    # the parent is unaffected either way
    assert gradclip.get_total_norm(big) == gradclip.get_total_norm(big.copy())
"""


def fork_child(parent_team: bool, child_setup: str, child_input: str) -> str:
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    code = FORK_SCRIPT.format(
        parent_team=parent_team, child_setup=child_setup or "pass", child_input=child_input
    )
    out = run_script(code, env={"OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_fork_before_any_team() -> None:
    assert fork_child(False, "", "big") == "child exit 0"


def test_fork_after_team_small_call() -> None:
    assert fork_child(True, "", "small") == "child exit 0"


def test_fork_after_team_single_threaded_child() -> None:
    assert fork_child(True, "gradclip.set_num_threads(1)", "big") == "child exit 0"


@pytest.mark.skipif(
    openmp_runtime() is None or "libgomp" not in (openmp_runtime() or ""),
    reason="the deadlock is libgomp's; other runtimes reset their pool at fork",
)
def test_fork_after_team_threaded_call() -> None:
    assert fork_child(True, "", "big") == "child exit 0"
