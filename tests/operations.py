# The registry of gradclip's gradient operations (not a test module): every public function or
# class of `gradclip.__all__` that takes gradients is one Operation here, and every "for each
# public function" test reads this table instead of keeping its own list. test_package.py
# checks the table against `gradclip.__all__`: a new public name must be added here, or to
# NOT_OPERATIONS with the reason it is no gradient operation, before the suite passes.
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np


def params_for(grads: Any) -> Any:
    """Parameters for AGC in the structure of ``grads``: ones of each float array's shape and
    dtype, in memory of their own (AGC refuses parameters that share memory with the
    gradients); anything else passed through, so a bad entry stays bad."""
    import gradclip

    if isinstance(grads, gradclip.GradientSet):
        return [params_for(a) for a in grads.arrays]
    if isinstance(grads, dict):
        return {k: params_for(v) for k, v in grads.items()}
    if isinstance(grads, (list, tuple)):
        items = [params_for(v) for v in grads]
        return type(grads)(*items) if hasattr(grads, "_fields") else type(grads)(items)
    if isinstance(grads, np.ndarray) and (
        grads.dtype.kind == "f" or grads.dtype.name == "bfloat16"
    ):
        # ones as a read-only stride-0 view: parameters are only read, and a view costs little
        # memory (the memory tests trace the call)
        try:
            one = np.ones(1, grads.dtype)
        except TypeError:  # a dtype NumPy cannot make ones of (float8): stays a bad entry
            return grads
        return np.broadcast_to(one.reshape((1,) * grads.ndim), grads.shape)
    return grads


@dataclass(frozen=True)
class Operation:
    """One public gradient operation, called the same way on gradclip and gradclip.reference.

    call(module, grads) runs it with arguments that make it write where it can (a max_norm
    or bound below what the test arrays hold). access: "read" (only reads grads: accepts
    read-only memory and the same array twice), "write" (writes grads in place: refuses
    both), "copy" (the functional forms: read grads, return new arrays). shapes: "any" (a
    pytree of arrays of any shapes), "batched" (axis 0 of every array is one batch: equal
    lengths along it), "single" (one array, not a pytree). gradient_set: the GradientSet
    method doing the same, if any. fuzz_args: the arguments test_fuzz.py draws for it (its
    argument strategies know these names); empty where the fuzzer does not cover it.
    """

    name: str
    call: Callable[[ModuleType, Any], Any]
    access: str
    shapes: str = "any"
    gradient_set: str | None = None
    fuzz_args: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the test ids
        return self.name


def _autoclip(m: ModuleType, g: Any) -> Any:
    # a fresh clipper whose history holds one tiny norm: its threshold clips this step
    clipper = m.AutoClip(percentile=10.0)
    clipper.load_state_dict({**clipper.state_dict(), "history": [1e-3]})
    return clipper(g)


_NORM_CLIP_ARGS = ("max_norm", "norm_type", "error_if_nonfinite", "nonfinite", "eps")

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get_total_norm",
        lambda m, g: m.get_total_norm(g),
        "read",
        gradient_set="total_norm",
        fuzz_args=("norm_type", "error_if_nonfinite"),
    ),
    Operation(
        "clip_grad_norm_",
        lambda m, g: m.clip_grad_norm_(g, 0.5),
        "write",
        gradient_set="clip_norm_",
        fuzz_args=_NORM_CLIP_ARGS,
    ),
    Operation(
        "clip_grads_with_norm_",
        lambda m, g: m.clip_grads_with_norm_(g, 0.5, 100.0),
        "write",
        gradient_set="clip_with_norm_",
        fuzz_args=("max_norm", "total_norm", "eps"),
    ),
    Operation(
        "clip_grad_value_",
        lambda m, g: m.clip_grad_value_(g, 0.01),
        "write",
        gradient_set="clip_value_",
        fuzz_args=("clip_value",),
    ),
    Operation(
        "tensor_norms",
        lambda m, g: m.tensor_norms(g),
        "read",
        gradient_set="tensor_norms",
        fuzz_args=("norm_type",),
    ),
    Operation(
        "clip_grad_norm_per_tensor_",
        lambda m, g: m.clip_grad_norm_per_tensor_(g, 0.5),
        "write",
        gradient_set="clip_norm_per_tensor_",
        fuzz_args=_NORM_CLIP_ARGS,
    ),
    Operation(
        "clip_by_norm_",
        lambda m, g: m.clip_by_norm_(g, 0.5),
        "write",
        shapes="single",
        fuzz_args=("max_norm", "axis", "norm_type", "eps"),
    ),
    Operation("clip_by_block_rms_", lambda m, g: m.clip_by_block_rms_(g, 0.01), "write"),
    Operation(
        "unscale_clip_grad_norm_", lambda m, g: m.unscale_clip_grad_norm_(g, 0.5, 0.5), "write"
    ),
    Operation(
        "clip_per_example_", lambda m, g: m.clip_per_example_(g, 0.5), "write", shapes="batched"
    ),
    # the gradients stand in for the parameters too: unit-wise ratios of 1, far above 0.01
    Operation(
        "adaptive_grad_clip_", lambda m, g: m.adaptive_grad_clip_(g, params_for(g), 0.01), "write"
    ),
    Operation("AutoClip", _autoclip, "write"),
    # a fresh ZClip is in its warm-up, where it clips at max_grad_norm
    Operation("ZClip", lambda m, g: m.ZClip(max_grad_norm=0.5)(g), "write"),
    Operation("clip_by_global_norm", lambda m, g: m.clip_by_global_norm(g, 0.5), "copy"),
    Operation("clip_by_norm_per_tensor", lambda m, g: m.clip_by_norm_per_tensor(g, 0.5), "copy"),
    Operation("clip_by_value", lambda m, g: m.clip_by_value(g, 0.01), "copy"),
)

# Public names that are no gradient operation, and why.
NOT_OPERATIONS: dict[str, str] = {
    "ClipResult": "the record some operations return",
    "GradientSet": "holds buffers; its methods are the operations' gradient_set entries",
    "NonFiniteNormError": "the exception of a non-finite norm",
    "available_cpu_targets": "configuration: the CPU targets built and runnable",
    "cpu_target": "configuration: the CPU target in use",
    "get_include": "the directory of the Cython declarations",
    "get_num_threads": "configuration: the thread count",
    "set_num_threads": "configuration: the thread count",
    "reference": "the pure-NumPy twin module, itself called through every Operation",
}

BY_NAME: dict[str, Operation] = {op.name: op for op in OPERATIONS}


def operations(
    access: Iterable[str] = ("read", "write", "copy"),
    shapes: Iterable[str] = ("any", "batched", "single"),
) -> list[Operation]:
    """The operations with one of these accesses and one of these shape rules."""
    access, shapes = tuple(access), tuple(shapes)
    return [op for op in OPERATIONS if op.access in access and op.shapes in shapes]


def outcome(result: Any) -> list[np.ndarray]:
    """A result of any operation as a flat list of float64 arrays, for comparisons: numbers,
    arrays, None (as an empty array), ClipResults (their fields), tuples, lists and dicts (in
    iteration order)."""
    out: list[np.ndarray] = []

    def walk(x: Any) -> None:
        if x is None:
            out.append(np.zeros(0))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif hasattr(x, "total_norm") and hasattr(x, "coef"):  # a ClipResult
            walk([x.total_norm, x.coef, float(x.clipped), float(x.found_nonfinite)])
            walk(x.tensor_norms)
        else:
            out.append(np.asarray(x).astype(np.float64))

    walk(result)
    return out


def assert_same_outcome(a: Any, b: Any, rtol: float = 0.0) -> None:
    """Two results of one operation agree (exactly, or within rtol)."""
    oa, ob = outcome(a), outcome(b)
    assert len(oa) == len(ob), f"{len(oa)} parts vs {len(ob)}"
    for x, y in zip(oa, ob, strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=0.0)
