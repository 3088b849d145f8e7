# Covers: the Cython API. A small downstream extension is built at test time, in a
# temporary directory, against the installed gradclip (cimport gradclip.cython_api, with
# gradclip's get_include() on Cython's include path, Cython and the C compiler of this
# environment), and then:
#   - its constants are the documented dtype codes, nonfinite modes and return codes;
#   - norm_* / sum_pow_* match the Python API bit for bit (one engine) on every CPU target and
#     thread count, and gradclip.reference within the norm contract;
#   - scale_* / clamp_* write what gradclip.reference writes (clamp bounds rounded once to the
#     dtype as clip_grad_value_ does, including doubles that round differently through float32,
#     and every float16 / bfloat16 rounding midpoint and its neighbours);
#   - total_norm / clip_grad_norm / clip_grads_with_norm over mixed-dtype buffers match the
#     Python API (norm bits and writes) and the reference, in every nonfinite mode;
#   - bad arguments give the documented negative codes, write nothing and leave outputs as
#     they were;
#   - several Python threads calling inside `with nogil:` at once, each on its own arrays, get
#     the results and writes of the same calls made serially.
# Every call goes through a `with nogil:` block in the downstream module. Skips, with the
# reason, when Cython, setuptools, a C compiler or the Python headers are missing, or when
# gradclip is imported from a source tree (in-place / editable build) without the .pxd or the
# compiled gradclip.cython_api.
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from gc_helpers import (
    DTYPE_PARAMS,
    HAVE_BF16,
    assert_norm_close,
    assert_same_values,
    assert_ulp_close,
    dtype_name,
    dtype_of,
    each_config,
    expected_scaled,
    needs_bf16,
    rounding_cases,
    snapshot,
    ulps_for,
)

import gradclip
from gradclip import reference as ref
from gradclip._include import get_include

MODULE = "gradclip_cython_downstream"
BUILD_TIMEOUT = 600  # seconds; a healthy build takes a few

DOWNSTREAM_PYX = '''
# cython: language_level=3
# A downstream extension as a user would write one: cimport gradclip's Cython API and call it
# on raw pointers inside `with nogil:`. Buffers come in as (address, length) from the tests.
from libc.stdint cimport uint16_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from gradclip.cython_api cimport (
    GRADCLIP_BF16, GRADCLIP_E_DTYPE, GRADCLIP_E_INTERNAL, GRADCLIP_E_NOMEM, GRADCLIP_E_NULL,
    GRADCLIP_E_OVERLAP, GRADCLIP_E_VALUE, GRADCLIP_F16, GRADCLIP_F32, GRADCLIP_F64,
    GRADCLIP_NONFINITE, GRADCLIP_OK, GRADCLIP_PROPAGATE, GRADCLIP_SKIP, GRADCLIP_ZERO,
    clamp_bf16, clamp_f16, clamp_f32, clamp_f64, clip_grad_norm, clip_grads_with_norm,
    error_message, norm_bf16, norm_f16, norm_f32, norm_f64, scale_bf16, scale_f16, scale_f32,
    scale_f64, sum_pow_bf16, sum_pow_f16, sum_pow_f32, sum_pow_f64, total_norm,
    unscale_clip_grad_norm,
)

CODES = {
    "OK": GRADCLIP_OK, "NONFINITE": GRADCLIP_NONFINITE, "E_DTYPE": GRADCLIP_E_DTYPE,
    "E_NULL": GRADCLIP_E_NULL, "E_VALUE": GRADCLIP_E_VALUE, "E_OVERLAP": GRADCLIP_E_OVERLAP,
    "E_NOMEM": GRADCLIP_E_NOMEM, "E_INTERNAL": GRADCLIP_E_INTERNAL,
}
DTYPES = {
    "float16": GRADCLIP_F16, "bfloat16": GRADCLIP_BF16, "float32": GRADCLIP_F32,
    "float64": GRADCLIP_F64,
}
MODES = {"propagate": GRADCLIP_PROPAGATE, "skip": GRADCLIP_SKIP, "zero": GRADCLIP_ZERO}


def message(int code):
    return error_message(code).decode()


cdef int _norm(int dt, const void* x, size_t n, double p, double* out, bint pw) noexcept nogil:
    if dt == GRADCLIP_F16:
        return sum_pow_f16(<const uint16_t*>x, n, p, out) if pw else norm_f16(
            <const uint16_t*>x, n, p, out)
    if dt == GRADCLIP_BF16:
        return sum_pow_bf16(<const uint16_t*>x, n, p, out) if pw else norm_bf16(
            <const uint16_t*>x, n, p, out)
    if dt == GRADCLIP_F32:
        return sum_pow_f32(<const float*>x, n, p, out) if pw else norm_f32(
            <const float*>x, n, p, out)
    return sum_pow_f64(<const double*>x, n, p, out) if pw else norm_f64(
        <const double*>x, n, p, out)


def norm(int dt, uintptr_t addr, size_t n, double p, bint pw=False, double out=-1.0):
    cdef int rc
    with nogil:
        rc = _norm(dt, <const void*>addr, n, p, &out, pw)
    return rc, out


def norm_null_out(int dt, uintptr_t addr, size_t n, double p, bint pw=False):
    cdef int rc
    with nogil:
        rc = _norm(dt, <const void*>addr, n, p, NULL, pw)
    return rc


def scale(int dt, uintptr_t addr, size_t n, double coef):
    cdef int rc
    cdef void* x = <void*>addr
    with nogil:
        if dt == GRADCLIP_F16:
            rc = scale_f16(<uint16_t*>x, n, coef)
        elif dt == GRADCLIP_BF16:
            rc = scale_bf16(<uint16_t*>x, n, coef)
        elif dt == GRADCLIP_F32:
            rc = scale_f32(<float*>x, n, coef)
        else:
            rc = scale_f64(<double*>x, n, coef)
    return rc


def clamp(int dt, uintptr_t addr, size_t n, double clip_value):
    cdef int rc
    cdef void* x = <void*>addr
    with nogil:
        if dt == GRADCLIP_F16:
            rc = clamp_f16(<uint16_t*>x, n, clip_value)
        elif dt == GRADCLIP_BF16:
            rc = clamp_bf16(<uint16_t*>x, n, clip_value)
        elif dt == GRADCLIP_F32:
            rc = clamp_f32(<float*>x, n, clip_value)
        else:
            rc = clamp_f64(<double*>x, n, clip_value)
    return rc


def clamp_bounds(int dt, uintptr_t addr, size_t n, uintptr_t src_addr, uintptr_t bounds_addr,
                 size_t n_bounds, uintptr_t out_addr):
    """For each bound i: copy the n-element buffer at src to addr, clamp it there, copy the
    result to the i-th n-element slot at out. Returns the first nonzero return code."""
    cdef size_t nbytes = n * (8 if dt == GRADCLIP_F64 else 4 if dt == GRADCLIP_F32 else 2)
    cdef const double* bounds = <const double*>bounds_addr
    cdef char* out = <char*>out_addr
    cdef size_t i
    cdef int rc = 0
    for i in range(n_bounds):
        memcpy(<void*>addr, <const void*>src_addr, nbytes)
        rc = clamp(dt, addr, n, bounds[i])
        if rc != 0:
            return rc
        memcpy(out + i * nbytes, <const void*>addr, nbytes)
    return rc


cdef class Buffers:
    """C arrays of pointers, lengths and dtype codes for the multi-buffer calls."""
    cdef void** ptrs
    cdef size_t* lens
    cdef int* dtypes
    cdef size_t n

    def __cinit__(self, list addrs, list lens, list dtypes):
        self.n = len(addrs)
        self.ptrs = <void**>malloc((self.n + 1) * sizeof(void*))
        self.lens = <size_t*>malloc((self.n + 1) * sizeof(size_t))
        self.dtypes = <int*>malloc((self.n + 1) * sizeof(int))
        if self.ptrs == NULL or self.lens == NULL or self.dtypes == NULL:
            raise MemoryError()
        cdef size_t i
        for i in range(self.n):
            self.ptrs[i] = <void*><uintptr_t>addrs[i]
            self.lens[i] = lens[i]
            self.dtypes[i] = dtypes[i]

    def __dealloc__(self):
        free(self.ptrs)
        free(self.lens)
        free(self.dtypes)

    def total_norm(self, double p, bint null_arrays=False, bint null_out=False):
        cdef double out = -1.0
        cdef int rc
        cdef void** ptrs = NULL if null_arrays else self.ptrs
        cdef double* o = NULL if null_out else &out
        with nogil:
            rc = total_norm(self.n, ptrs, self.lens, self.dtypes, p, o)
        return rc, out

    def clip_grad_norm(self, double max_norm, double p, double eps, int mode,
                       bint null_arrays=False, bint null_total=False):
        cdef double total = -1.0
        cdef int rc
        cdef void** ptrs = NULL if null_arrays else self.ptrs
        cdef double* t = NULL if null_total else &total
        with nogil:
            rc = clip_grad_norm(self.n, ptrs, self.lens, self.dtypes, max_norm, p, eps, mode, t)
        return rc, total

    def clip_grads_with_norm(self, double max_norm, double total, double eps):
        cdef int rc
        with nogil:
            rc = clip_grads_with_norm(self.n, self.ptrs, self.lens, self.dtypes, max_norm, total,
                                      eps)
        return rc

    def unscale_clip_grad_norm(self, double max_norm, double inv_scale, double p, double eps):
        cdef double total = -1.0, coef = -1.0
        cdef int rc
        with nogil:
            rc = unscale_clip_grad_norm(self.n, self.ptrs, self.lens, self.dtypes, max_norm,
                                        inv_scale, p, eps, &total, &coef)
        return rc, total, coef
'''

SETUP_PY = f'''
from Cython.Build import cythonize
from setuptools import Extension, setup

from gradclip._include import get_include

setup(
    name="{MODULE}",
    ext_modules=cythonize(
        [Extension("{MODULE}", ["{MODULE}.pyx"])],
        include_path=[get_include()],
        quiet=True,
    ),
)
'''


# ---------------------------------------------------------------------------------------------
# building the downstream extension
# ---------------------------------------------------------------------------------------------


def _skip_reason() -> str | None:
    """Why the downstream build cannot run here, or None."""
    pxd = Path(get_include()) / "gradclip" / "cython_api.pxd"
    source_tree = (Path(get_include()).parent / "pyproject.toml").is_file()
    if not pxd.is_file():
        return (
            f"gradclip is imported from {Path(gradclip.__file__).parent}, which has no "
            "cython_api.pxd (an in-place or editable build); install gradclip (pip install .) "
            "to test its Cython API"
        )
    if source_tree and importlib.util.find_spec("gradclip.cython_api") is None:
        return (
            "gradclip is imported from its source tree without the compiled gradclip.cython_api "
            "(an in-place or editable build); install gradclip (pip install .) to test its "
            "Cython API"
        )
    for module in ("Cython", "setuptools"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install gradclip[test] brings it)"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    if shutil.which(shlex.split(cc)[0]) is None:
        return f"no C compiler: {cc!r} is not on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "the Python headers (Python.h) are not installed"
    return None


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The downstream extension, built once for this module's tests."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    # An installed gradclip must have its Cython module: a missing one is a packaging bug.
    importlib.import_module("gradclip.cython_api")
    where = tmp_path_factory.mktemp("cython_downstream")
    (where / f"{MODULE}.pyx").write_text(textwrap.dedent(DOWNSTREAM_PYX))
    (where / "setup.py").write_text(textwrap.dedent(SETUP_PY))
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"building the downstream Cython extension failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    sys.path.insert(0, str(where))
    try:
        module = importlib.import_module(MODULE)
    finally:
        sys.path.remove(str(where))
    yield module
    sys.modules.pop(MODULE, None)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def code_of(ext: ModuleType, arr: np.ndarray) -> int:
    return int(ext.DTYPES[dtype_name(arr.dtype)])


def call_args(ext: ModuleType, arr: np.ndarray) -> tuple[int, int, int]:
    """(dtype code, address, length) of a dense array."""
    assert arr.flags.c_contiguous
    return code_of(ext, arr), arr.ctypes.data, arr.size


def buffers(ext: ModuleType, arrays: list[np.ndarray]) -> Any:
    return ext.Buffers(
        [a.ctypes.data for a in arrays], [a.size for a in arrays], [code_of(ext, a) for a in arrays]
    )


def values(seed: int, n: int, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n) * scale


def mixed_arrays(seed: int) -> list[np.ndarray]:
    names = ["float32", "float64", "float16"] + (["bfloat16"] if HAVE_BF16 else [])
    out = []
    for k, n in enumerate([0, 1, 17, 1000, 65, 40_001]):
        out.append(values(seed + k, n).astype(dtype_of(names[(seed + k) % len(names)])))
    return out


SIZES = [0, 1, 17, 64, 1000, 100_003]
P_VALUES = [1.0, 2.0, 3.0, 0.5, math.inf]


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def test_constants(ext: ModuleType) -> None:
    assert ext.DTYPES == {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}
    assert ext.MODES == {"propagate": 0, "skip": 1, "zero": 2}
    assert ext.CODES == {
        "OK": 0,
        "NONFINITE": 1,
        "E_DTYPE": -1,
        "E_NULL": -2,
        "E_VALUE": -3,
        "E_OVERLAP": -4,
        "E_NOMEM": -5,
        "E_INTERNAL": -6,
    }
    messages = {ext.message(c) for c in ext.CODES.values()}
    assert len(messages) == len(ext.CODES) and all(messages)
    assert "unknown" in ext.message(42)


@pytest.mark.parametrize("p", P_VALUES, ids=str)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_norm(ext: ModuleType, dtype: str, p: float) -> None:
    dt = dtype_of(dtype)
    for n in SIZES:
        arr = values(n, n).astype(dt)
        before = snapshot([arr])
        expected = ref.get_total_norm(arr, p)
        results = set()
        for _cfg in each_config():
            rc, got = ext.norm(*call_args(ext, arr), p)
            assert rc == 0
            # one engine behind both front doors: the same bits as the Python API
            assert got == gradclip.get_total_norm(arr, p), (n, _cfg)
            assert_norm_close(got, expected, p, f"n={n}")
            rc, s = ext.norm(*call_args(ext, arr), p, True)
            assert rc == 0
            if math.isinf(p) or p == 1.0:
                assert s == got
            else:
                assert s == pytest.approx(expected**p, rel=1e-12, abs=0.0)
            results.add((got, s))
        assert len(results) == 1, "results differ between CPU targets or thread counts"
        assert snapshot([arr]) == before, "a norm wrote to its input"


def test_norm_overflow_safe(ext: ModuleType) -> None:
    arr = np.full(1000, 1e300)
    rc, got = ext.norm(*call_args(ext, arr), 2.0)
    assert rc == 0 and got == pytest.approx(1e300 * math.sqrt(1000), rel=1e-14)
    rc, s = ext.norm(*call_args(ext, arr), 2.0, True)
    assert rc == 0 and s == math.inf  # sum |x|^2 itself overflows: documented
    tiny = np.full(10, 1e-200)
    rc, got = ext.norm(*call_args(ext, tiny), 2.0)
    assert rc == 0 and got == pytest.approx(1e-200 * math.sqrt(10), rel=1e-14)


@pytest.mark.parametrize("coef", [0.3, 1e-3, 1.0, 2.5, 0.0, -0.75])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_scale(ext: ModuleType, dtype: str, coef: float) -> None:
    dt = dtype_of(dtype)
    for n in SIZES:
        arr = values(n + 1, n).astype(dt)
        original = np.array(arr)
        before = snapshot([arr])
        assert ext.scale(*call_args(ext, arr), coef) == 0
        if coef == 1.0:
            assert snapshot([arr]) == before
            continue
        # the documented arithmetic (what the reference writes for this coefficient)
        with np.errstate(all="ignore"):
            if dt == np.float64:
                want = original * coef
            else:
                want = (original.astype(np.float32) * np.float32(coef)).astype(dt)
        assert_same_values(arr, want, f"n={n}")
        if 0.0 < coef < 1.0:  # the same write through the public API
            expected = np.array(original)
            ref.clip_grads_with_norm_(expected, coef, 1.0, eps=0.0)
            assert_same_values(arr, expected, f"n={n} vs reference")


@pytest.mark.parametrize(
    "clip_value",
    [
        0.0,
        0.1,
        1.0 / 3.0,
        2.0,
        1.0 + 2.0**-11 + 2.0**-40,  # float16 rounds it up in one step, down through float32
        1.0 + 2.0**-8 + 2.0**-30,  # likewise for bfloat16
        1.0039062509313226,  # the same for bfloat16 (ml_dtypes < 0.7 rounded it through float32)
        70000.0,  # beyond float16: the bound is inf
        1e300,  # beyond float32
    ],
    ids=repr,
)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_clamp(ext: ModuleType, dtype: str, clip_value: float) -> None:
    dt = dtype_of(dtype)
    base = np.concatenate([values(5, 1000), [np.nan, np.inf, -np.inf, 1.0005, -1.001, 0.0]])
    for n in [0, 1, 17, base.size]:
        arr = base[:n].astype(dt)
        expected = np.array(arr)
        compiled = np.array(arr)
        assert ext.clamp(*call_args(ext, arr), clip_value) == 0
        ref.clip_grad_value_(expected, clip_value)
        gradclip.clip_grad_value_(compiled, clip_value)
        assert_same_values(arr, expected, f"n={n} vs reference")
        assert arr.tobytes() == compiled.tobytes(), f"n={n} vs the Python API"


@pytest.mark.parametrize("dtype", ["float16", pytest.param("bfloat16", marks=needs_bf16)])
def test_clamp_bounds_at_every_midpoint(ext: ModuleType, dtype: str) -> None:
    # The C API rounds clip_value with the engine's one rule, as clip_grad_value_ does: every
    # float16 / bfloat16 rounding midpoint, and the doubles next to it, against the definition.
    dt = dtype_of(dtype)
    bounds, expected = rounding_cases(dtype)
    src = np.array([np.inf, -np.inf, 0.0], dtype=dt)
    work = np.empty_like(src)
    out = np.empty((bounds.size, src.size), dtype=dt)
    rc = ext.clamp_bounds(
        ext.DTYPES[dtype],
        work.ctypes.data,
        src.size,
        src.ctypes.data,
        bounds.ctypes.data,
        bounds.size,
        out.ctypes.data,
    )
    assert rc == 0
    got = out.astype(np.float64)
    bad = np.flatnonzero(got[:, 0] != expected)
    assert bad.size == 0, f"{bad.size} bounds, first {bounds[bad[:3]]!r} -> {got[bad[:3], 0]!r}"
    assert np.array_equal(got[:, 1], -expected)
    assert np.array_equal(got[:, 2], np.zeros(bounds.size))


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, math.inf], ids=str)
def test_multi_buffer(ext: ModuleType, p: float) -> None:
    for seed in range(4):
        arrays = mixed_arrays(seed)
        bufs = buffers(ext, arrays)
        rc, total = bufs.total_norm(p)
        assert rc == 0
        assert total == gradclip.get_total_norm(arrays, p)
        assert_norm_close(total, ref.get_total_norm(arrays, p), p)

        max_norm = total / 3.0
        originals = [np.array(a) for a in arrays]
        py_arrays = [np.array(a) for a in arrays]
        ref_arrays = [np.array(a) for a in arrays]
        rc, got = bufs.clip_grad_norm(max_norm, p, 1e-6, ext.MODES["propagate"])
        assert rc == 0
        assert got == gradclip.clip_grad_norm_(py_arrays, max_norm, p)
        assert_norm_close(got, ref.clip_grad_norm_(ref_arrays, max_norm, p), p)
        for a, b, r, o in zip(arrays, py_arrays, ref_arrays, originals, strict=True):
            assert a.tobytes() == b.tobytes(), "writes differ from the Python API"
            # the reference's write for this norm, and within ulps of its own clip
            assert_same_values(a, expected_scaled(o, max_norm, got), "vs reference")
            assert_ulp_close(a, r, a.dtype, ulps_for(a.dtype), "vs reference clip")

        # a second clip is a no-op: nothing written
        before = snapshot(arrays)
        rc, again = bufs.clip_grad_norm(total, p, 1e-6, ext.MODES["propagate"])
        assert rc == 0 and snapshot(arrays) == before

        # a norm computed elsewhere
        expected = [np.array(a) for a in arrays]
        assert bufs.clip_grads_with_norm(0.5, 7.0, 1e-6) == 0
        ref.clip_grads_with_norm_(expected, 0.5, 7.0)
        for a, e in zip(arrays, expected, strict=True):
            assert_same_values(a, e, "clip_grads_with_norm vs reference")


@pytest.mark.parametrize("inv_scale", [1 / 1024, 2.0, 1e30])
def test_unscale_clip_grad_norm(ext: ModuleType, inv_scale: float) -> None:
    # the same norm, coefficient and writes as the Python API, an overflow of the unscaled
    # values (float16 near its maximum, inv_scale > 1) included: nothing written, C_NONFINITE
    c = ext.CODES
    for arrays in (
        mixed_arrays(1),
        [np.array([60000.0, 1.0], np.float16), np.ones(3, np.float32)],
    ):
        py_arrays = [np.array(a) for a in arrays]
        before = snapshot(arrays)
        rc, total, coef = buffers(ext, arrays).unscale_clip_grad_norm(0.5, inv_scale, 2.0, 1e-6)
        r = gradclip.unscale_clip_grad_norm_(py_arrays, 0.5, inv_scale)
        assert (total, coef) == (r.total_norm, r.coef)
        assert rc == (c["NONFINITE"] if r.found_nonfinite else c["OK"])
        for a, b in zip(arrays, py_arrays, strict=True):
            assert a.tobytes() == b.tobytes()
        if r.found_nonfinite:
            assert snapshot(arrays) == before


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("mode", ["propagate", "skip", "zero"])
def test_nonfinite_modes(ext: ModuleType, mode: str, bad: float) -> None:
    arrays = mixed_arrays(1)
    arrays[3][5] = bad
    py_arrays = [np.array(a) for a in arrays]
    before = snapshot(arrays)
    rc, total = buffers(ext, arrays).clip_grad_norm(1.0, 2.0, 1e-6, ext.MODES[mode])
    got = gradclip.clip_grad_norm_(py_arrays, 1.0, nonfinite=mode)
    assert np.float64(total).tobytes() == np.float64(got).tobytes()
    assert rc == (ext.CODES["NONFINITE"] if mode == "skip" else 0)
    if mode == "skip":
        assert snapshot(arrays) == before
    for a, b in zip(arrays, py_arrays, strict=True):
        assert_same_values(a, b, f"{mode} writes vs the Python API")


def test_empty_and_null_total(ext: ModuleType) -> None:
    empty = ext.Buffers([], [], [])
    assert empty.total_norm(2.0) == (0, 0.0)
    assert empty.total_norm(2.0, null_arrays=True) == (0, 0.0)
    assert empty.clip_grad_norm(1.0, 2.0, 1e-6, 0, null_arrays=True) == (0, 0.0)
    # a zero-length buffer may have a NULL pointer
    assert ext.Buffers([0], [0], [2]).clip_grad_norm(1.0, 2.0, 1e-6, 0) == (0, 0.0)
    assert ext.norm(ext.DTYPES["float32"], 0, 0, 2.0) == (0, 0.0)
    # the total norm output is optional
    arr = np.full(4, 3.0)
    assert buffers(ext, [arr]).clip_grad_norm(1.0, 2.0, 0.0, 0, null_total=True) == (0, -1.0)
    assert_same_values(arr, np.full(4, 0.5))


def test_errors(ext: ModuleType) -> None:
    c = ext.CODES
    f32, f64 = ext.DTYPES["float32"], ext.DTYPES["float64"]
    x = values(0, 100).astype(np.float32)
    y = values(1, 50)
    before = snapshot([x, y])

    # one buffer; the output keeps its value (-1.0) on every error
    for p in [0.0, -1.0, np.nan, -np.inf]:
        assert ext.norm(f32, x.ctypes.data, x.size, p) == (c["E_VALUE"], -1.0)
        assert ext.norm(f32, x.ctypes.data, x.size, p, True) == (c["E_VALUE"], -1.0)
    assert ext.norm(f32, 0, 5, 2.0) == (c["E_NULL"], -1.0)
    for pw in [False, True]:
        assert ext.norm_null_out(f32, x.ctypes.data, x.size, 2.0, pw) == c["E_NULL"]
        assert ext.norm_null_out(f32, 0, 0, 2.0, pw) == c["E_NULL"]
    assert ext.scale(f32, 0, 5, 0.5) == c["E_NULL"]
    assert ext.clamp(f32, 0, 5, 1.0) == c["E_NULL"]
    for v in [-1.0, np.nan, np.inf, -np.inf]:
        assert ext.clamp(f32, x.ctypes.data, x.size, v) == c["E_VALUE"]
    assert ext.norm(f64, y.ctypes.data, 2**62, 2.0) == (c["E_VALUE"], -1.0)  # bytes overflow

    # many buffers
    good = buffers(ext, [x, y])
    for kwargs, want in [
        ({"max_norm": 0.0}, "E_VALUE"),
        ({"max_norm": -1.0}, "E_VALUE"),
        ({"max_norm": np.inf}, "E_VALUE"),
        ({"max_norm": np.nan}, "E_VALUE"),
        ({"p": 0.0}, "E_VALUE"),
        ({"p": np.nan}, "E_VALUE"),
        ({"eps": -1e-6}, "E_VALUE"),
        ({"eps": np.nan}, "E_VALUE"),
        ({"eps": np.inf}, "E_VALUE"),
        ({"mode": 3}, "E_VALUE"),
        ({"mode": -1}, "E_VALUE"),
        ({"null_arrays": True}, "E_NULL"),
    ]:
        args = {"max_norm": 1e-3, "p": 2.0, "eps": 1e-6, "mode": 0, **kwargs}
        assert good.clip_grad_norm(**args) == (c[want], -1.0), kwargs
    assert good.total_norm(-2.0) == (c["E_VALUE"], -1.0)
    assert good.total_norm(2.0, null_arrays=True) == (c["E_NULL"], -1.0)
    assert good.total_norm(2.0, null_out=True) == (c["E_NULL"], -1.0)
    assert good.clip_grads_with_norm(1e-3, -1.0, 1e-6) == c["E_VALUE"]
    assert good.clip_grads_with_norm(0.0, 1.0, 1e-6) == c["E_VALUE"]

    addr = [x.ctypes.data, y.ctypes.data]
    for bad in [4, -1, 99]:
        b = ext.Buffers(addr, [x.size, y.size], [f32, bad])
        assert b.clip_grad_norm(1e-3, 2.0, 1e-6, 0) == (c["E_DTYPE"], -1.0)
        assert b.total_norm(2.0) == (c["E_DTYPE"], -1.0)
    assert ext.Buffers([0, addr[1]], [3, y.size], [f32, f64]).total_norm(2.0) == (
        c["E_NULL"],
        -1.0,
    )
    assert ext.Buffers(addr, [x.size, 2**62], [f32, f64]).total_norm(2.0) == (c["E_VALUE"], -1.0)

    # the same memory twice, or overlapping buffers: rejected when writing, fine for a norm
    twice = ext.Buffers([addr[1], addr[1]], [y.size, y.size], [f64, f64])
    assert twice.clip_grad_norm(1e-3, 2.0, 1e-6, 0) == (c["E_OVERLAP"], -1.0)
    assert twice.clip_grads_with_norm(1e-3, 10.0, 1e-6) == c["E_OVERLAP"]
    rc, total = twice.total_norm(2.0)
    assert rc == 0 and total == pytest.approx(math.sqrt(2.0) * float(np.linalg.norm(y)))
    shifted = ext.Buffers([addr[1], addr[1] + 8 * 49], [49, 1], [f64, f64])  # adjacent: fine
    rc, _ = shifted.total_norm(2.0)
    assert rc == 0
    assert shifted.clip_grads_with_norm(1.0, 0.0, 1e-6) == 0  # coef 1: no write
    overlap = ext.Buffers([addr[1], addr[1] + 8 * 48], [49, 2], [f64, f64])
    assert overlap.clip_grad_norm(1e-3, 2.0, 1e-6, 0) == (c["E_OVERLAP"], -1.0)
    empty_inside = ext.Buffers([addr[1], addr[1] + 8], [y.size, 0], [f64, f64])
    assert empty_inside.clip_grad_norm(1e9, 2.0, 1e-6, 0)[0] == 0

    assert snapshot([x, y]) == before, "a rejected call wrote"


N_THREADS = 8
ROUNDS = 4


def workload(seed: int) -> list[np.ndarray]:
    """One thread's arrays; the last is above the engine's threshold for an OpenMP team."""
    arrays = mixed_arrays(seed)
    arrays.append(values(seed, 150_001).astype(np.float64))
    return arrays


def run_calls(ext: ModuleType, arrays: list[np.ndarray]) -> list[Any]:
    """A fixed sequence of calls, each reading the previous one's writes."""
    record: list[Any] = []
    bufs = buffers(ext, arrays)
    for r in range(ROUNDS):
        record.extend(ext.norm(*call_args(ext, a), 3.0) for a in arrays)
        record.append(bufs.total_norm(2.0))
        rc, total = bufs.total_norm(1.0)
        record.append(bufs.clip_grad_norm(total / 2.0 + 1e-3, 2.0, 1e-6, 0))
        for a in arrays:
            record.append(ext.scale(*call_args(ext, a), 1.5 + r))
            record.append(ext.clamp(*call_args(ext, a), 0.25 * (r + 1)))
    record.append([a.tobytes() for a in arrays])
    return record


def test_threads(ext: ModuleType, threads: int) -> None:
    serial = [run_calls(ext, workload(s)) for s in range(N_THREADS)]
    results: list[Any] = [None] * N_THREADS
    errors: list[BaseException] = []
    start = threading.Barrier(N_THREADS)

    def worker(i: int) -> None:
        try:
            arrays = workload(i)
            start.wait()
            results[i] = run_calls(ext, arrays)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(N_THREADS)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    for i in range(N_THREADS):
        assert results[i] == serial[i], f"thread {i} differs from the serial run"
