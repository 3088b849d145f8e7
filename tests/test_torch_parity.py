# Covers: parity with PyTorch (skipped cleanly when torch is not installed) on the same data:
#   - torch.nn.utils.clip_grad_norm_ vs gradclip.clip_grad_norm_ (norm and written values) for
#     float32, float64, float16, bfloat16, p in {1, 2, inf, 3, 0.5}, clipping and not;
#   - torch.nn.utils.get_total_norm (torch >= 2.6) vs gradclip.get_total_norm, incl. mixed
#     dtypes, and clip_grads_with_norm_;
#   - torch.nn.utils.clip_grad_value_ vs gradclip.clip_grad_value_ (NaN stays NaN);
#   - non-finite behaviour: NaN / inf gradients under PyTorch's default arithmetic, and
#     error_if_nonfinite=True raising (a RuntimeError in both) with nothing modified;
#   - None gradients, empty input and the empty-generator warning;
#   - gradclip applied directly to torch CPU tensors (.grad), in place.
# Tolerances are per dtype: torch accumulates the norm in the gradients' dtype (float32,
# float16, bfloat16), gradclip in float64.
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from gc_helpers import BF16, HAVE_BF16, assert_same_values, cast, snapshot

import gradclip

torch = pytest.importorskip("torch", exc_type=ImportError)
tu = torch.nn.utils

INF = math.inf
needs_get_total_norm = pytest.mark.skipif(
    not hasattr(tu, "get_total_norm"), reason="torch.nn.utils.get_total_norm needs torch >= 2.6"
)
needs_with_norm = pytest.mark.skipif(
    not hasattr(tu, "clip_grads_with_norm_"), reason="needs torch >= 2.6"
)

DTYPES = [
    "float32",
    "float64",
    "float16",
    pytest.param("bfloat16", marks=pytest.mark.skipif(not HAVE_BF16, reason="no ml_dtypes")),
]
# Relative tolerance on norms and scaled values, per dtype (torch's own rounding dominates).
RTOL = {"float64": 1e-12, "float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}
SHAPES = [(33,), (4, 17), (1000,), (), (0,), (3, 5, 7), (65,)]


def np_dtype(name: str) -> np.dtype[Any]:
    return BF16 if name == "bfloat16" else np.dtype(name)  # type: ignore[return-value]


def to_torch(a: np.ndarray) -> Any:
    """A torch tensor with a copy of a's values (bit for bit)."""
    a = np.array(a, order="C", copy=True)  # (np.ascontiguousarray would make 0-d 1-d)
    if BF16 is not None and a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def t64(t: Any) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def tbytes(t: Any) -> bytes:
    return bytes(t.detach().reshape(-1).view(torch.uint8).numpy().tobytes())


def compare_pairs(grads: list[np.ndarray], params: list[Any]) -> list[tuple[np.ndarray, Any]]:
    """(our array, torch's gradient) pairs, leaving out the zero-size arrays torch did not get."""
    return [(g, prm.grad) for g, prm in zip(grads, params, strict=False) if g.size]


def make_data(name: str, seed: int, scale: float = 3.0) -> list[np.ndarray]:
    """Arrays of SHAPES. float16 values are small: torch computes float16 norms in float16,
    which overflows above 65504 (e.g. the 0.5-norm of 1000 values of magnitude 3)."""
    rng = np.random.default_rng(seed)
    if name == "float16":
        scale = min(scale, 0.01)
    return [cast(rng.standard_normal(s) * scale, np_dtype(name)) for s in SHAPES]


def params_for(grads: list[np.ndarray | None]) -> list[Any]:
    """Parameters whose .grad holds a copy of each array; zero-size arrays get no gradient
    (torch cannot take the inf-norm of an empty tensor; gradclip counts them as nothing)."""
    params = []
    for g in grads:
        grad = None if g is None or g.size == 0 else to_torch(g)
        p = torch.nn.Parameter(torch.zeros(1) if grad is None else torch.zeros_like(grad))
        p.grad = grad
        params.append(p)
    return params


def param_with_grad(grad: Any) -> Any:
    p = torch.nn.Parameter(torch.zeros(grad.shape, dtype=grad.dtype))
    p.grad = grad
    return p


def assert_close_values(got: np.ndarray, expected: np.ndarray, name: str) -> None:
    got64, exp64 = got.astype(np.float64), np.asarray(expected, dtype=np.float64)
    tiny = {"float64": 0.0, "float32": 1e-38, "float16": 6e-5, "bfloat16": 1e-38}[name]
    np.testing.assert_allclose(got64, exp64, rtol=RTOL[name], atol=tiny, equal_nan=True)


@pytest.mark.parametrize("clip", ["clips", "noop"])
@pytest.mark.parametrize("p", [2.0, 1.0, INF, 3.0, 0.5], ids=str)
@pytest.mark.parametrize("name", DTYPES)
def test_clip_grad_norm_parity(name: str, p: float, clip: str) -> None:
    grads = make_data(name, 1)
    params = params_for([*grads, None])
    norm = gradclip.get_total_norm(grads, p)
    max_norm = 0.3 * norm if clip == "clips" else 2.0 * norm
    got = gradclip.clip_grad_norm_(grads, max_norm, p)
    expected = tu.clip_grad_norm_(params, max_norm, p)
    assert got == pytest.approx(float(expected), rel=RTOL[name])
    for g, t in compare_pairs(grads, params):
        if clip == "noop":  # torch multiplies by 1, gradclip leaves them: the same values
            assert_same_values(g, t64(t))
        else:
            assert_close_values(g, t64(t), name)
    assert params[-1].grad is None


@pytest.mark.parametrize("p", [2.0, 1.0, INF], ids=str)
@pytest.mark.parametrize("special", [math.nan, INF, -INF], ids=str)
@pytest.mark.parametrize("name", DTYPES)
def test_nonfinite_parity(name: str, special: float, p: float) -> None:
    grads = make_data(name, 2)
    grads[2][17] = special
    grads[0][5] = -0.0
    params = params_for(grads)
    got = gradclip.clip_grad_norm_(grads, 1.0, p)
    expected = float(tu.clip_grad_norm_(params, 1.0, p))
    assert math.isnan(got) == math.isnan(expected) and (math.isnan(got) or got == expected == INF)
    for g, t in compare_pairs(grads, params):
        # Coefficient NaN (all NaN) or exactly 0 (finite -> signed zero, inf -> NaN).
        assert_same_values(g, t64(t))


@pytest.mark.parametrize("special", [math.nan, INF], ids=str)
@pytest.mark.parametrize("name", DTYPES)
def test_error_if_nonfinite_parity(name: str, special: float) -> None:
    grads = make_data(name, 3)
    grads[1][0, 3] = special
    params = params_for(grads)
    before = snapshot(grads)
    torch_before = [None if prm.grad is None else prm.grad.clone() for prm in params]
    with pytest.raises(RuntimeError):
        tu.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as info:
        gradclip.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    assert isinstance(info.value, gradclip.NonFiniteNormError)
    assert snapshot(grads) == before
    for prm, old in zip(params, torch_before, strict=True):
        if old is not None:
            assert tbytes(prm.grad) == tbytes(old)


@needs_get_total_norm
@pytest.mark.parametrize("p", [2.0, 1.0, INF, 3.0, 0.5], ids=str)
@pytest.mark.parametrize("name", [*DTYPES, "mixed"])
def test_get_total_norm_parity(name: str, p: float) -> None:
    if name == "mixed":
        grads = [cast(a, np.float32) for a in make_data("float64", 4)]
        grads[1] = grads[1].astype(np.float64)
        rtol = RTOL["float32"]
    else:
        grads = make_data(name, 4)
        rtol = RTOL[name]
    tensors = [to_torch(g) for g in grads if g.size]
    got = gradclip.get_total_norm(grads, p)
    assert got == pytest.approx(float(tu.get_total_norm(tensors, p)), rel=rtol)
    grads[0][0] = math.nan
    tensors = [to_torch(g) for g in grads if g.size]
    assert math.isnan(gradclip.get_total_norm(grads, p))
    assert math.isnan(float(tu.get_total_norm(tensors, p)))
    with pytest.raises(RuntimeError):
        tu.get_total_norm(tensors, p, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        gradclip.get_total_norm(grads, p, error_if_nonfinite=True)


@needs_with_norm
@pytest.mark.parametrize("total", [10.0, 0.5, math.nan, INF], ids=str)
@pytest.mark.parametrize("name", DTYPES)
def test_clip_grads_with_norm_parity(name: str, total: float) -> None:
    grads = make_data(name, 5)
    params = params_for(grads)
    gradclip.clip_grads_with_norm_(grads, 1.0, total)
    tu.clip_grads_with_norm_(params, 1.0, torch.tensor(total, dtype=torch.float64))
    for g, t in compare_pairs(grads, params):
        if math.isnan(total) or math.isinf(total) or total < 1.0:
            assert_same_values(g, t64(t))  # coefficient NaN, 0 or clamped to 1
        else:
            assert_close_values(g, t64(t), name)


@pytest.mark.parametrize("clip_value", [0.0, 0.1, 1.0, 2.5, 1e4], ids=str)
@pytest.mark.parametrize("name", DTYPES)
def test_clip_grad_value_parity(name: str, clip_value: float) -> None:
    grads = make_data(name, 6)
    grads[0][[1, 2, 3]] = [math.nan, INF, -INF]
    params = params_for(grads)
    gradclip.clip_grad_value_(grads, clip_value)
    tu.clip_grad_value_(params, clip_value)
    for g, t in compare_pairs(grads, params):
        got, expected = g.astype(np.float64), t64(t)
        if name in ("float32", "float64") and clip_value != 0.0:
            assert_same_values(got, expected)
        else:
            # torch may round the bound through float32 first (one ulp in float16/bfloat16);
            # at 0 the sign of a clamped zero is unspecified.
            np.testing.assert_allclose(got, expected, rtol=RTOL[name], atol=0, equal_nan=True)


def test_empty_and_none_parity() -> None:
    assert gradclip.clip_grad_norm_([], 1.0) == float(tu.clip_grad_norm_([], 1.0)) == 0.0
    params = params_for([None, None])
    assert gradclip.clip_grad_norm_([None, None], 1.0) == float(tu.clip_grad_norm_(params, 1.0))
    with pytest.warns(UserWarning, match="empty generator"):
        tu.clip_grad_norm_((p for p in []), 1.0)
    with pytest.warns(UserWarning, match="empty generator"):
        assert gradclip.clip_grad_norm_((g for g in []), 1.0) == 0.0


@pytest.mark.parametrize("p", [2.0, INF], ids=str)
@pytest.mark.parametrize("name", DTYPES)
def test_gradclip_on_torch_grads_in_place(name: str, p: float) -> None:
    """gradclip clips torch's .grad tensors directly, as torch would."""
    grads = make_data(name, 7)
    ours = params_for(grads)
    theirs = params_for(grads)
    strided = to_torch(cast(np.linspace(-50, 50, 200), np_dtype(name)))
    theirs_strided = strided.clone()
    ours.append(param_with_grad(strided[::3]))  # a non-contiguous view, modified in place
    theirs.append(param_with_grad(theirs_strided[::3]))
    got = gradclip.clip_grad_norm_([prm.grad for prm in ours], 1.0, p)
    expected = tu.clip_grad_norm_(theirs, 1.0, p)
    assert got == pytest.approx(float(expected), rel=RTOL[name])
    for a, b in zip(ours, theirs, strict=True):
        if a.grad is not None:
            assert_close_values(t64(a.grad), t64(b.grad), name)
    assert torch.equal(strided[1::3], theirs_strided[1::3])  # the gaps: untouched
