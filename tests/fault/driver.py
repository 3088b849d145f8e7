"""The driver of the fault-injection test (tests/test_fault_injection.py).

Run by that test in a subprocess with the failalloc shim (failalloc.c) in LD_PRELOAD:

    python driver.py SCENARIO [--modes warm,cold,thread_pre,thread_in] [--max-points N]

For each mode it counts the heap allocations of one call of the scenario, then, for N = 1 ..
count (all of them up to --max-points, a deterministic sample beyond), makes the N-th one fail
and checks what the call did: it either succeeded with the bits of an unfailed call, or raised
MemoryError with every array it was given byte-identical to before. Each point runs in a
child forked from this process (which imports gradclip but never calls it, and has no other
thread), so an abort, an exit or a hang costs one point, not the sweep, and every call is as
cold or as warm as its mode says:

    warm        a warm-up call on other arrays first, then the call, on the main thread
    cold        the call is the first gradclip call of the process
    thread_pre  warm-up on the main thread; the call is the first on a new thread (started
                with _thread.start_new_thread, as threading.Thread does), started before the
                failure is armed
    thread_in   the same, with the thread started inside the armed window (its creation can
                fail too: an error from starting it is accepted, the call never ran)

It prints one JSON report on stdout; the test asserts on it. The scenario registry (SCENARIOS)
is the one list of calls both sides read.
"""

from __future__ import annotations

import _thread
import argparse
import ctypes
import hashlib
import json
import os
import select
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

try:
    import ml_dtypes

    BF16: Any = ml_dtypes.bfloat16
except ImportError:  # bfloat16 leaves are left out
    BF16 = None

MODES = ("warm", "cold", "thread_pre", "thread_in")

# gradclip, imported by load(). gradclip registers a fork handler at import that makes a
# forked child run every call on its calling thread (libgomp's pool does not survive a
# fork), so for the OpenMP path ("big") each child imports gradclip itself, after the fork;
# for the serial path ("small") the parent imports it once, before forking.
gc: Any = None


def load() -> None:
    global gc  # noqa: PLW0603  (imported once, lazily: see the comment above)
    if gc is None:
        import gradclip

        gc = gradclip


# ---------------------------------------------------------------------------------------------
# the scenarios
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One call, ready to make: `call()` makes it; `watch` are the arrays owning every byte the
    call was given (inputs, params, outs: the bases of strided views); `state()` (optional)
    is the state of a stateful clipper, which an error must leave as it was too."""

    call: Callable[[], Any]
    watch: list[np.ndarray]
    state: Callable[[], Any] | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    build: Callable[[bool], Case]  # big -> a fresh Case
    sizes: tuple[str, ...] = ("small", "big")
    threads: dict[str, int] = field(default_factory=lambda: {"small": 1, "big": 2})

    def ids(self) -> list[str]:
        return [f"{self.name}-{size}" for size in self.sizes]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _leaves(big: bool, seed: int = 1, *, nan: bool = False) -> list[np.ndarray]:
    """Mixed-dtype gradients with a total norm well above 1: a few KiB, or over 1 MiB."""
    sizes = (300_000, 20_000, 5_000, 4_000) if big else (300, 77, 129, 33)
    rng = _rng(seed)
    dtypes = [np.float32, np.float64, np.float16, BF16 if BF16 is not None else np.float32]
    out = [(rng.standard_normal(n) * 2.0).astype(dt) for n, dt in zip(sizes, dtypes, strict=True)]
    out[0] = out[0].reshape(-1, 3) if sizes[0] % 3 == 0 else out[0]
    if nan:
        out[1][5] = np.nan
    return out


def _strided(big: bool, seed: int = 2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Leaves for the copying calls: one strided view (every other element of a buffer of
    512 KiB when big, past the 256 KiB where the copy is split across threads) and dense
    leaves; the second list holds the buffers that own them."""
    rng = _rng(seed)
    base = (rng.standard_normal(2 * (131_072 if big else 200)) * 2.0).astype(np.float32)
    dense = _leaves(big, seed + 1)
    return [base[::2], *dense], [base, *dense]


def _outs(leaves: list[np.ndarray]) -> list[np.ndarray]:
    return [np.full(a.shape, 7, dtype=a.dtype) for a in leaves]


def _grads_case(fn: Callable[[list[np.ndarray]], Any], *, nan: bool = False) -> Any:
    def build(big: bool) -> Case:
        g = _leaves(big, nan=nan)
        return Case(lambda: fn(g), g)

    return build


def _tiny_loss_scale(big: bool) -> Case:
    """A loss scale below 3e-39: inv_scale is above float32's largest value, so the engine
    applies it in exact power-of-two passes (two here), which must all follow every
    allocation of the call."""
    n = 300_000 if big else 300
    g = [np.full(n, 1e-43, np.float32), np.full(n // 3, 1e-300, np.float64)]
    return Case(lambda: gc.unscale_clip_grad_norm_(g, 1.0, 1e39), g)


def _rows(big: bool, kind: str) -> np.ndarray:
    """A matrix of many rows (more than one window of 4096 slices), clipped row by row."""
    rows, cols = (9_000, 32) if big else (9_000, 4)  # 3 windows; 1.1 MiB of float32 when big
    rng = _rng(3)
    if kind == "tiny":
        return rng.standard_normal((rows, cols)) * 1e-300  # float64: the rescaled pass
    x = (rng.standard_normal((rows, cols)) * 2.0).astype(np.float32)
    if kind == "zero_rows":
        x[::7] = 0.0  # all-zero rows, as in embedding gradients
    return x


def _by_norm_case(kind: str, **kwargs: Any) -> Callable[[bool], Case]:
    def build(big: bool) -> Case:
        x = _rows(big, kind)
        return Case(lambda: gc.clip_by_norm_(x, **kwargs), [x])

    return build


def _agc(big: bool) -> Case:
    rng = _rng(4)
    o, i = (512, 512) if big else (16, 8)
    w = [rng.standard_normal((o, i)).astype(np.float32), rng.standard_normal(o)]
    g = [(rng.standard_normal(a.shape) * 5.0).astype(a.dtype) for a in w]
    return Case(lambda: gc.adaptive_grad_clip_(g, w, 0.01, return_result=True), g + w)


def _per_example(per_layer: bool) -> Callable[[bool], Case]:
    def build(big: bool) -> Case:
        rng = _rng(5)
        batch = 64 if big else 8
        shapes = [(batch, 4096), (batch, 300), (batch,)] if big else [(batch, 30), (batch, 3)]
        g = [(rng.standard_normal(s) * 3.0).astype(np.float32) for s in shapes]
        return Case(lambda: gc.clip_per_example_(g, 1.0, per_layer=per_layer), g)

    return build


def _gradient_set(method: str, *args: Any) -> Callable[[bool], Case]:
    def build(big: bool) -> Case:
        g = _leaves(big)
        s = gc.GradientSet(g)
        return Case(lambda: getattr(s, method)(*args), g)

    return build


def _copying(fn_name: str, *args: Any, out: bool) -> Callable[[bool], Case]:
    def build(big: bool) -> Case:
        leaves, owners = _strided(big)
        fn = getattr(gc, fn_name)
        if out:
            o = _outs(leaves)
            return Case(lambda: fn(leaves, *args, out=o), owners + o)
        return Case(lambda: fn(leaves, *args), owners)

    return build


def _stateful(kind: str) -> Callable[[bool], Case]:
    def build(big: bool) -> Case:
        g = _leaves(big)
        if kind == "AutoClip":
            clipper: Any = gc.AutoClip(percentile=50.0)
            state = clipper.state_dict()
            state["history"] = [0.5, 1.0, 2.0]  # a threshold of 1.0: this call clips
            clipper.load_state_dict(state)
        else:
            clipper = gc.ZClip(warmup_steps=1, max_grad_norm=1.0)
        return Case(lambda: clipper(g), g, clipper.state_dict)

    return build


# -- gradclip's C ABI (the table the Cython API calls), through ctypes on its capsule
_GRADCLIP_E_NOMEM = -5
_CODES = {np.dtype(np.float16): 0, np.dtype(np.float32): 2, np.dtype(np.float64): 3}
if BF16 is not None:
    _CODES[np.dtype(BF16)] = 1


def _capi() -> Any:
    c_int, c_size, c_dbl, c_vp = ctypes.c_int, ctypes.c_size_t, ctypes.c_double, ctypes.c_void_p
    pd, pvp, psz, pint = (
        ctypes.POINTER(c_dbl),
        ctypes.POINTER(c_vp),
        ctypes.POINTER(c_size),
        ctypes.POINTER(c_int),
    )
    one = ctypes.CFUNCTYPE(c_int, c_int, c_vp, c_size, c_dbl, pd)
    inplace = ctypes.CFUNCTYPE(c_int, c_int, c_vp, c_size, c_dbl)

    class Table(ctypes.Structure):  # capi.h, revision 1
        _fields_ = [
            ("abi_version", c_int),
            ("norm", one),
            ("sum_pow", one),
            ("scale", inplace),
            ("clamp", inplace),
            ("total_norm", ctypes.CFUNCTYPE(c_int, c_size, pvp, psz, pint, c_dbl, pd)),
            (
                "clip_grad_norm",
                ctypes.CFUNCTYPE(c_int, c_size, pvp, psz, pint, c_dbl, c_dbl, c_dbl, c_int, pd),
            ),
            (
                "clip_grads_with_norm",
                ctypes.CFUNCTYPE(c_int, c_size, pvp, psz, pint, c_dbl, c_dbl, c_dbl),
            ),
        ]

    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = c_vp, [ctypes.py_object, ctypes.c_char_p]
    addr = get(gc._core._C_API, b"gradclip._core._C_API")
    return Table.from_address(addr)


def _checked(rc: int, *rest: Any) -> Any:
    """A C return code as the Python API would report it."""
    if rc == _GRADCLIP_E_NOMEM:
        raise MemoryError("GRADCLIP_E_NOMEM")
    if rc < 0:
        raise RuntimeError(f"gradclip C API returned {rc}")
    return (rc, *rest)


def _capi_case(fn: str) -> Callable[[bool], Case]:
    def build(big: bool) -> Case:
        api = _capi()
        g = [np.ascontiguousarray(a) for a in _leaves(big)]
        n = len(g)
        ptrs = (ctypes.c_void_p * n)(*[a.ctypes.data for a in g])
        lens = (ctypes.c_size_t * n)(*[a.size for a in g])
        codes = (ctypes.c_int * n)(*[_CODES[a.dtype] for a in g])
        total = ctypes.c_double(-1.0)
        x = g[0]
        calls: dict[str, Callable[[], Any]] = {
            "clip_grad_norm": lambda: _checked(
                api.clip_grad_norm(n, ptrs, lens, codes, 1.0, 2.0, 1e-6, 0, ctypes.byref(total)),
                total.value,
            ),
            "clip_grads_with_norm": lambda: _checked(
                api.clip_grads_with_norm(n, ptrs, lens, codes, 1.0, 50.0, 1e-6)
            ),
            "scale": lambda: _checked(api.scale(_CODES[x.dtype], x.ctypes.data, x.size, 0.5)),
            "clamp": lambda: _checked(api.clamp(_CODES[x.dtype], x.ctypes.data, x.size, 0.5)),
        }
        chosen = calls[fn]

        def call() -> Any:
            del g[:0]  # the closure owns the buffers its raw pointers point into
            return chosen()

        return Case(call, g)

    return build


SCENARIOS: list[Scenario] = [
    Scenario("clip_grad_norm_", _grads_case(lambda g: gc.clip_grad_norm_(g, 1.0))),
    Scenario(
        "clip_grad_norm_-per_tensor_norms",
        _grads_case(
            lambda g: gc.clip_grad_norm_(g, 1.0, return_result=True, per_tensor_norms=True)
        ),
    ),
    Scenario(
        "clip_grad_norm_-return_result",
        _grads_case(lambda g: gc.clip_grad_norm_(g, 1.0, return_result=True)),
    ),
    Scenario(
        "clip_grad_norm_-nonfinite_zero",
        _grads_case(lambda g: gc.clip_grad_norm_(g, 1.0, nonfinite="zero"), nan=True),
    ),
    Scenario(
        "clip_grads_with_norm_", _grads_case(lambda g: gc.clip_grads_with_norm_(g, 1.0, 50.0))
    ),
    Scenario("clip_grad_value_", _grads_case(lambda g: gc.clip_grad_value_(g, 0.5))),
    Scenario(
        "clip_grad_norm_per_tensor_", _grads_case(lambda g: gc.clip_grad_norm_per_tensor_(g, 1.0))
    ),
    Scenario("clip_by_norm_-whole", _by_norm_case("plain", max_norm=1.0)),
    Scenario("clip_by_norm_-rows_p2_zero_rows", _by_norm_case("zero_rows", max_norm=1.0, axis=1)),
    Scenario(
        "clip_by_norm_-rows_p0.5", _by_norm_case("plain", max_norm=1.0, axis=1, norm_type=0.5)
    ),
    Scenario("clip_by_norm_-rows_tiny", _by_norm_case("tiny", max_norm=1e-301, axis=1, eps=0.0)),
    Scenario("clip_by_block_rms_", _grads_case(lambda g: gc.clip_by_block_rms_(g, 0.1))),
    Scenario(
        "unscale_clip_grad_norm_-per_tensor_norms",
        _grads_case(lambda g: gc.unscale_clip_grad_norm_(g, 1.0, 0.5, per_tensor_norms=True)),
    ),
    Scenario("unscale_clip_grad_norm_-tiny_loss_scale", _tiny_loss_scale),
    Scenario("adaptive_grad_clip_", _agc),
    Scenario("clip_per_example_", _per_example(False)),
    Scenario("clip_per_example_-per_layer", _per_example(True)),
    Scenario("GradientSet.clip_norm_", _gradient_set("clip_norm_", 1.0)),
    Scenario("GradientSet.clip_norm_per_tensor_", _gradient_set("clip_norm_per_tensor_", 1.0)),
    Scenario("GradientSet.clip_value_", _gradient_set("clip_value_", 0.5)),
    Scenario("GradientSet.clip_with_norm_", _gradient_set("clip_with_norm_", 1.0, 50.0)),
    Scenario("clip_by_global_norm", _copying("clip_by_global_norm", 1.0, out=False)),
    Scenario("clip_by_global_norm-out", _copying("clip_by_global_norm", 1.0, out=True)),
    Scenario("clip_by_norm_per_tensor", _copying("clip_by_norm_per_tensor", 1.0, out=False)),
    Scenario("clip_by_norm_per_tensor-out", _copying("clip_by_norm_per_tensor", 1.0, out=True)),
    Scenario("clip_by_value", _copying("clip_by_value", 0.5, out=False)),
    Scenario("clip_by_value-out", _copying("clip_by_value", 0.5, out=True)),
    Scenario("AutoClip", _stateful("AutoClip")),
    Scenario("ZClip", _stateful("ZClip")),
    Scenario("capi.clip_grad_norm", _capi_case("clip_grad_norm")),
    Scenario("capi.clip_grads_with_norm", _capi_case("clip_grads_with_norm")),
    Scenario("capi.scale", _capi_case("scale")),
    Scenario("capi.clamp", _capi_case("clamp")),
]

BY_ID = {sid: (s, sid.rsplit("-", 1)[1]) for s in SCENARIOS for sid in s.ids()}


# ---------------------------------------------------------------------------------------------
# one point, in a forked child
# ---------------------------------------------------------------------------------------------


def digest(obj: Any) -> str:
    """A hash of a call's result: every array's bytes, every float's bits."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, bytes):
            h.update(o)
        elif o is None or isinstance(o, (bool, int, str)):
            h.update(repr(o).encode())
        elif isinstance(o, float):
            h.update(o.hex().encode())
        elif isinstance(o, (np.ndarray, np.generic)):
            a = np.asarray(o)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        elif isinstance(o, (list, tuple)):
            h.update(f"[{type(o).__name__}{len(o)}".encode())
            for x in o:
                walk(x)
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=repr):
                walk(k)
                walk(o[k])
        elif is_dataclass(o):
            h.update(type(o).__name__.encode())
            for f in fields(o):
                walk(getattr(o, f.name))
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()[:20]


class Shim:
    def __init__(self) -> None:
        lib = ctypes.CDLL(None)  # LD_PRELOAD puts the shim in the global scope
        try:
            self.arm, self.disarm = lib.failalloc_arm, lib.failalloc_disarm
            self.count, self.failed = lib.failalloc_count, lib.failalloc_failed
        except AttributeError:
            sys.exit("driver.py: the failalloc shim is not loaded (LD_PRELOAD)")
        self.arm.argtypes, self.arm.restype = [ctypes.c_long], None
        self.disarm.argtypes, self.disarm.restype = [], None
        self.count.argtypes, self.count.restype = [], ctypes.c_long
        self.failed.argtypes, self.failed.restype = [], ctypes.c_long


def run_point(sid: str, mode: str, n: int) -> dict[str, Any]:
    """Make the call with the n-th allocation failing (n = 0: none) and say what happened."""
    scenario, size = BY_ID[sid]
    big = size == "big"
    shim = Shim()
    load()
    gc.set_num_threads(scenario.threads[size])
    if gc.get_num_threads() != scenario.threads[size]:
        raise RuntimeError(
            f"gradclip runs {gc.get_num_threads()} threads here, not {scenario.threads[size]}"
        )
    if mode != "cold":
        warm = scenario.build(big)  # (kept alive: the C API's call holds raw pointers)
        warm.call()  # the warm-up, on other arrays
    case = scenario.build(big)
    before = [a.copy() for a in case.watch]
    state_before = digest(case.state()) if case.state else None
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            r = case.call()
        except BaseException as e:
            shim.disarm()
            box["exc"] = e
        else:
            shim.disarm()
            box["result"] = r

    if mode in ("warm", "cold"):
        shim.arm(n)
        call()
    else:
        # _thread rather than threading.Thread: threading's own Python bookkeeping, failing
        # under the same injected errors, can leave Thread.start() waiting forever for a
        # thread that died in _bootstrap_inner (CPython's, not gradclip's, behaviour)
        done = _thread.allocate_lock()
        done.acquire()

        def body() -> None:
            try:
                if mode == "thread_pre":
                    shim.arm(n)
                call()
            finally:
                done.release()

        if mode == "thread_pre":
            _thread.start_new_thread(body, ())
        else:  # thread_in: the thread's creation is inside the armed window
            shim.arm(n)
            try:
                _thread.start_new_thread(body, ())
            except BaseException as e:
                shim.disarm()
                box["start_exc"] = e
                done.release()
        done.acquire()
        shim.disarm()
    count, failed = int(shim.count()), int(shim.failed())
    changed = [
        i
        for i, (a, b) in enumerate(zip(case.watch, before, strict=True))
        if a.tobytes() != b.tobytes()
    ]
    state_changed = case.state is not None and digest(case.state()) != state_before
    out: dict[str, Any] = {"count": count, "failed": failed}
    if "start_exc" in box:
        e = box["start_exc"]
        out.update(status="start_failed", type=type(e).__name__, msg=str(e)[:200])
    elif "exc" in box:
        e = box["exc"]
        out.update(status="raised", type=type(e).__name__, msg=str(e)[:200])
    elif "result" in box:
        out.update(status="ok", result=digest(box["result"]))
    else:
        out.update(status="no_result")  # the thread ended without a result or an exception
    out.update(
        changed=changed,
        state_changed=state_changed,
        after=digest([a.tobytes() for a in case.watch]),
        state_after=digest(case.state()) if case.state else None,
    )
    return out


def fork_point(sid: str, mode: str, n: int, timeout: float, errfile: str) -> dict[str, Any]:
    """run_point in a forked child: its report, or how the child died."""
    rfd, wfd = os.pipe()
    errfd = os.open(errfile, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(rfd)
            os.dup2(errfd, 2)
            try:
                payload = json.dumps(run_point(sid, mode, n))
            except BaseException:
                payload = json.dumps({"status": "harness_error", "msg": traceback.format_exc()})
            data = payload.encode()
            while data:
                data = data[os.write(wfd, data) :]
        except BaseException:
            code = 70
        os._exit(code)
    os.close(wfd)
    os.close(errfd)
    chunks, deadline, hung = [], time.monotonic() + timeout, False
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([rfd], [], [], max(left, 0.0))
        if not ready:
            hung = True
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(rfd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    with open(errfile, errors="replace") as f:
        err = f.read()[-1500:]
    if hung:
        return {"status": "hang", "stderr": err, "timeout": timeout}
    if os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0 or not chunks:
        how = (
            f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            if os.WIFSIGNALED(status)
            else f"exit status {os.WEXITSTATUS(status)}"
        )
        return {"status": "died", "how": how, "stderr": err}
    report: dict[str, Any] = json.loads(b"".join(chunks))
    report["stderr"] = err
    return report


def points(count: int, max_points: int) -> tuple[list[int], bool]:
    """1 .. count, or, past max_points, the first half of the budget in full and an evenly
    spaced sample of the rest (the last allocation included): deterministic."""
    if count <= max_points:
        return list(range(1, count + 1)), False
    head = max_points // 2
    tail = np.linspace(head + 1, count, max_points - head).round().astype(int)
    return sorted({*range(1, head + 1), *map(int, tail)}), True


def judge(ref: dict[str, Any], got: dict[str, Any]) -> str | None:
    """None when the point kept the promise, else what went wrong."""
    status = got["status"]
    if status == "hang":
        return f"hang (no answer in {got['timeout']:.0f} s); stderr: {got['stderr'].strip()!r}"
    if status == "died":
        return f"process died ({got['how']}); stderr: {got['stderr'].strip()!r}"
    if status in ("harness_error", "no_result"):
        return f"{status}: {got.get('msg', '')}; stderr: {got['stderr'].strip()!r}"
    if status == "ok":
        if got["result"] != ref["result"] or got["after"] != ref["after"]:
            return "succeeded with a result or writes that differ from an unfailed call"
        if got["state_after"] != ref["state_after"]:
            return "succeeded, but the clipper's state differs from an unfailed call's"
        return None
    wrong = []
    if status == "raised" and got["type"] != "MemoryError":
        wrong.append(f"raised {got['type']} (not MemoryError): {got['msg']}")
    if got["changed"]:
        wrong.append(f"arrays {got['changed']} (of the watched ones) modified")
    if got["state_changed"]:
        wrong.append("the clipper's state changed")
    if not wrong:
        return None
    what = (
        f"{got['type']}: {got['msg']}" if status == "raised" else f"start_new_thread: {got['type']}"
    )
    return f"{what}; " + "; ".join(wrong)


def sweep(sid: str, mode: str, max_points: int, timeout: float, errfile: str) -> dict[str, Any]:
    ref = fork_point(sid, mode, 0, timeout, errfile)
    if ref["status"] != "ok":
        return {
            "count": 0,
            "swept": 0,
            "sampled": False,
            "outcomes": {},
            "failures": [
                {
                    "n": 0,
                    "what": "the unfailed call: "
                    + (
                        judge(ref, ref)
                        or f"{ref['status']} {ref.get('type', '')}: {ref.get('msg', '')}"
                    ),
                }
            ],
        }
    count = ref["count"]
    ns, sampled = points(count, max_points)
    outcomes: dict[str, int] = {}
    failures = []
    injected = 0
    for n in ns:
        got = fork_point(sid, mode, n, timeout, errfile)
        injected += int(got.get("failed", 0))
        key = got["status"] if got["status"] != "raised" else got["type"]
        outcomes[key] = outcomes.get(key, 0) + 1
        what = judge(ref, got)
        if what is not None:
            failures.append({"n": n, "what": what})
    return {
        "count": count,
        "swept": len(ns),
        "sampled": sampled,
        "injected": injected,
        "outcomes": outcomes,
        "failures": failures,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", nargs="?")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--max-points", type=int, default=80)
    ap.add_argument("--timeout", type=float, default=15.0)
    args = ap.parse_args()
    if args.list:
        print("\n".join(BY_ID))
        return
    if args.scenario not in BY_ID:
        sys.exit(f"driver.py: unknown scenario {args.scenario!r} (--list gives them)")
    if BY_ID[args.scenario][1] == "small":
        load()
    tasks = len(os.listdir("/proc/self/task"))
    # gradclip starts its OpenMP team at import; its fork handler makes the children serial,
    # so those idle threads are safe to fork over. Nothing else may have started threads.
    if gc is None and tasks != 1:
        # libgomp and other runtimes are not fork-safe once they have threads
        sys.exit(f"driver.py: {tasks} threads before the first fork (expected 1)")
    report: dict[str, Any] = {"scenario": args.scenario, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            t0 = time.monotonic()
            rep = sweep(args.scenario, mode, args.max_points, args.timeout, f"{tmp}/stderr")
            rep["seconds"] = round(time.monotonic() - t0, 2)
            report["modes"][mode] = rep
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
