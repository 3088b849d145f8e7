"""Smoke test of an installed gradclip: CI's wheel leg and cibuildwheel's test command.

Run it with the interpreter that has the wheel installed, from a directory outside the source
tree (it refuses to test a gradclip imported from this checkout):

    python /path/to/.ci/smoke_wheel.py [--require-openmp]

It checks what a wheel can get wrong that a build in the source tree does not: the package
imports from site-packages with its compiled modules (and, in a repaired wheel, its vendored
OpenMP runtime), the metadata carries the package's version and licence, `import gradclip`
loads nothing beyond NumPy, and on every CPU target the wheel can run each public function
gives what gradclip.reference gives on the same arrays (norms within 1e-12, writes within
2 units in the last place), norms with the same bits on every target. bfloat16 is tested too
when ml_dtypes is installed. With --require-openmp, a build without OpenMP fails.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

SOURCE_TREE = Path(__file__).resolve().parent.parent
# the public names that compute nothing (every other one is called on every target)
NOT_COMPUTING = {
    "ClipResult",
    "NonFiniteNormError",
    "available_cpu_targets",
    "cpu_target",
    "get_include",
    "get_num_threads",
    "reference",
    "set_num_threads",
}
# the unit in the last place at 1.0 of each narrow type (float64 arrays: 1e-12 relative)
ULP = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}


def check_install(require_openmp: bool) -> None:
    lean = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, gradclip; "
            "print(sorted({'ml_dtypes', 'matplotlib', 'tqdm'} & set(sys.modules)))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert lean == "[]", f"import gradclip loaded {lean}"

    import gradclip
    from gradclip import cython_api  # compiled, and finds the core's capsule

    where = Path(gradclip.__file__).resolve().parent
    assert SOURCE_TREE not in where.parents, f"gradclip imported from the source tree: {where}"
    assert gradclip.__version__ == importlib.metadata.version("gradclip")
    meta = importlib.metadata.metadata("gradclip")
    files = [str(f) for f in importlib.metadata.files("gradclip") or ()]
    assert any(".dist-info" in f and Path(f).name == "LICENSE" for f in files), "no LICENSE"
    assert meta["License"] == "BSD-3-Clause" or meta["License-Expression"] == "BSD-3-Clause"
    assert (Path(gradclip.get_include()) / "gradclip" / "cython_api.pxd").is_file()
    assert Path(cython_api.__file__).parent == where
    openmp = gradclip._core.have_openmp()
    print(
        f"gradclip {gradclip.__version__} from {where}; targets "
        f"{gradclip.available_cpu_targets()}; OpenMP {openmp}, {gradclip.get_num_threads()} "
        "threads"
    )
    assert openmp or not require_openmp, "built without OpenMP"


def sample(rng: np.random.Generator, bf16: Any) -> list[np.ndarray]:
    # over 256 KiB in all (the threaded path), several dtypes, and a tail of odd length
    grads = [
        rng.standard_normal((300, 257)).astype(np.float32),
        rng.standard_normal(1000),
        rng.standard_normal(33).astype(np.float16),
        rng.standard_normal(70001).astype(np.float32),
    ]
    if bf16 is not None:
        grads.append(rng.standard_normal(129).astype(bf16))
    return grads


def close(actual: Any, expected: Any, what: str) -> None:
    """Norms within 1e-12 relative; written arrays within 2 ulps of their dtype."""
    if isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), what
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            close(a, e, f"{what}[{i}]")
        return
    if isinstance(expected, np.ndarray) and expected.dtype.name in ULP:
        assert isinstance(actual, np.ndarray) and actual.dtype == expected.dtype, what
        a, e = actual.astype(np.float64), expected.astype(np.float64)
        bound = 2 * ULP[expected.dtype.name] * np.maximum(np.abs(a), np.abs(e))
        assert np.all(np.abs(a - e) <= bound), f"{what}: writes differ from the reference"
        return
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == e.shape, what
    assert np.all(np.abs(a - e) <= 1e-12 * np.abs(e)), f"{what}: {a} vs {e}"


def every_function(lib: Any, grads: list[np.ndarray], rng_seed: int) -> dict[str, Any]:
    """One call of each public function of ``lib`` (gradclip or gradclip.reference) on
    copies of ``grads``: what each returned and wrote."""
    out: dict[str, Any] = {}
    g = copy.deepcopy(grads)
    out["get_total_norm"] = [lib.get_total_norm(grads, p) for p in (2.0, 1.0, 3.0, float("inf"))]
    out["tensor_norms"] = lib.tensor_norms(grads)
    out["clip_grad_norm_"] = lib.clip_grad_norm_(g, 10.0), g

    g = copy.deepcopy(grads)
    lib.clip_grads_with_norm_(g, 1.0, 50.0)
    out["clip_grads_with_norm_"] = g
    g = copy.deepcopy(grads)
    lib.clip_grad_value_(g, 0.5)
    h = copy.deepcopy(grads)
    lib.clip_grad_value_(h, min=-0.25, max=1.0)
    out["clip_grad_value_"] = g, h
    g = copy.deepcopy(grads)
    out["clip_by_block_rms_"] = lib.clip_by_block_rms_(g, 0.5), g
    # the functional copies: new arrays, the inputs untouched
    out["clip_by_global_norm"] = lib.clip_by_global_norm(grads, 10.0)
    out["clip_by_norm_per_tensor"] = lib.clip_by_norm_per_tensor(grads, 5.0)
    out["clip_by_value"] = lib.clip_by_value(grads, min=-0.25, max=1.0)
    g = copy.deepcopy(grads)
    out["clip_grad_norm_per_tensor_"] = lib.clip_grad_norm_per_tensor_(g, 5.0), g
    x = grads[0].copy()
    out["clip_by_norm_"] = lib.clip_by_norm_(x, 3.0, axis=1), x

    g = copy.deepcopy(grads)
    r = lib.unscale_clip_grad_norm_(g, 10.0, inv_scale=0.25)
    out["unscale_clip_grad_norm_"] = [r.total_norm, r.coef], g
    batch = [a.reshape(10, -1).copy() for a in (grads[0][:290], grads[1])]
    sums, n_clipped = lib.clip_per_example_(batch, 2.0)
    out["clip_per_example_"] = sums, float(n_clipped)
    params = [np.random.default_rng(rng_seed).standard_normal(a.shape) for a in grads[:2]]
    g = copy.deepcopy(grads[:2])
    lib.adaptive_grad_clip_(g, params, 0.01)
    out["adaptive_grad_clip_"] = g

    gs_arrays = copy.deepcopy(grads)
    gs = lib.GradientSet(gs_arrays)
    out["GradientSet"] = [gs.total_norm(), gs.clip_norm_(10.0)], gs_arrays
    for name, clipper in (("AutoClip", lib.AutoClip()), ("ZClip", lib.ZClip(warmup_steps=2))):
        g = copy.deepcopy(grads)
        thresholds = []
        for step in range(4):
            for a in g:
                a *= 1.0 + step  # a growing norm, so the clippers clip
            thresholds.append(clipper(g).threshold)
        out[name] = thresholds, g
    return out


def main(argv: list[str]) -> int:
    require_openmp = "--require-openmp" in argv
    check_install(require_openmp)

    import gradclip
    from gradclip import reference

    bf16 = None
    if importlib.util.find_spec("ml_dtypes") is not None:
        import ml_dtypes

        bf16 = ml_dtypes.bfloat16
    grads = sample(np.random.default_rng(17), bf16)
    pristine = copy.deepcopy(grads)
    expected = every_function(reference, grads, 1)
    untested = set(gradclip.__all__) - NOT_COMPUTING - set(expected)
    assert not untested, f"public names this smoke test does not call: {sorted(untested)}"
    bits: dict[str, list[float]] = {}
    for threads in (1, 2):
        gradclip.set_num_threads(threads)
        for target in gradclip.available_cpu_targets():
            gradclip._set_cpu_target(target)
            assert gradclip.cpu_target() == target
            got = every_function(gradclip, grads, 1)
            for name, want in expected.items():
                close(got[name], want, f"{name} on {target}, {threads} threads")
            bits[f"{target}/{threads}"] = got["get_total_norm"]
    assert len({tuple(v) for v in bits.values()}) == 1, f"norms differ across targets: {bits}"
    assert all(np.array_equal(a, b) for a, b in zip(grads, pristine, strict=True)), "inputs written"
    dtypes = sorted({str(a.dtype) for a in grads})
    print(f"smoke test passed: {len(expected)} functions x {sorted(bits)}, dtypes {dtypes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
