# Covers: gradclip.torch against torch.nn.utils (skipped cleanly without torch):
#   - the four drop-ins have torch.nn.utils' signatures (names, kinds, defaults, annotations),
#     and the module's docstring examples run;
#     `import gradclip` does not import torch, and `import gradclip.torch` without torch says
#     `pip install torch`;
#   - on real models (an LSTM with a Linear head, a small CNN) after a real backward pass, in
#     float32, float64, float16 and bfloat16, for norm types 2, 1, inf, 3 and "inf", clipping
#     and not: the returned norm (value, dtype, shape, device) and the clipped gradients match
#     torch's within the dtype's tolerance, and a float64 recomputation within the rounding of
#     the dtype; not clipping leaves the gradients bit for bit as torch does; clip_grad_value_
#     matches bit for bit; foreach True/False/None are the same;
#   - parameters without gradients (a frozen layer, a None grad), tied weights, the same
#     parameter twice (refused by the norm-based writes, clamped once by clip_grad_value_),
#     single tensors, generators, empty inputs (dtype of the returned zero), mixed dtypes;
#   - non-finite gradients (NaN, inf): error_if_nonfinite raises a RuntimeError with nothing
#     modified, else the same NaN pattern as torch;
#   - the deliberate differences of gradclip.torch's docstring and docs/differences.md, each
#     pinned: bounds <= 0 and NaN refused, max_norm / clip_value inf accepted as in torch,
#     float16 norms beyond 65504 clipped by the true norm, None entries in get_total_norm,
#     clip_grad_value_ of nothing, "fro" and a number total_norm, version counters;
#   - errors naming the tensor: other devices (meta), sparse, complex and integer tensors,
#     non-tensors, bfloat16 without ml_dtypes;
#   - GradClipper: over training steps with zero_grad() (new gradient tensors every step) and
#     zero_grad(set_to_none=False) (the same ones), it clips the live gradients, keeps a
#     GradientSet only over unchanged ones (builds counter), never holds gradient memory,
#     and notices a gradient re-pointed in place.
from __future__ import annotations

import copy
import functools
import inspect
import math
import subprocess
import sys
import textwrap
import types
import typing
import warnings
import weakref
from typing import Any

import numpy as np
import pytest
from gc_helpers import HAVE_BF16

import gradclip

torch = pytest.importorskip("torch", exc_type=ImportError)
import gradclip.torch as gt  # noqa: E402

tu = torch.nn.utils

INF = math.inf
DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    pytest.param(
        torch.bfloat16, marks=pytest.mark.skipif(not HAVE_BF16, reason="ml_dtypes is needed")
    ),
]
NORM_TYPES = [2.0, 1.0, INF, 3.0, "inf"]
# gradclip against torch, which accumulates in the gradients' dtype
TORCH_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# gradclip against a float64 recomputation: the returned norm is the float64 norm rounded once
# to the dtype (half an ulp); a clipped value is rounded at most twice (the coefficient, then
# the product)
HALF_ULP = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11}
HALF_ULP[torch.bfloat16] = 2.0**-8
TINY = {torch.float64: 0.0, torch.float32: 1e-44, torch.float16: 6e-8, torch.bfloat16: 1e-38}


# ---------------------------------------------------------------- models and helpers


class LSTMHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: Any) -> Any:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def small_cnn() -> Any:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 10),
    )


def model_input(kind: str, dtype: Any, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    shape = (3, 5, 8) if kind == "lstm" else (2, 3, 8, 8)
    return torch.randn(shape, generator=g).to(dtype)


def backward(model: Any, kind: str, dtype: Any, seed: int) -> None:
    model(model_input(kind, dtype, seed)).square().sum().backward()


@functools.cache
def _trained(kind: str, dtype: Any, frozen: bool) -> Any:
    torch.manual_seed(0)
    model = (LSTMHead() if kind == "lstm" else small_cnn()).to(dtype)
    if frozen:  # a frozen first layer: its parameters get no gradient
        first = model.lstm if kind == "lstm" else model[0]
        first.requires_grad_(False)
    backward(model, kind, dtype, seed=1)
    return model


def model_pair(kind: str, dtype: Any, frozen: bool = False) -> tuple[Any, Any]:
    """Two copies of a model with the same gradients, from a real backward pass."""
    base = _trained(kind, dtype, frozen)
    return twin(base), twin(base)


def twin(model: Any) -> Any:
    other = copy.deepcopy(model)
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.clone()
    return other


def grads(model: Any) -> list[Any]:
    return [p.grad for p in model.parameters()]


def bits(t: Any) -> Any:
    return t.detach().clone().reshape(-1).view(torch.uint8)


def snapshot(model: Any) -> list[Any]:
    return [None if g is None else bits(g) for g in grads(model)]


def assert_unchanged(model: Any, before: list[Any]) -> None:
    for g, b in zip(grads(model), before, strict=True):
        assert (g is None) == (b is None)
        if g is not None:
            assert torch.equal(bits(g), b)


def norm64(tensors: list[Any], p: float) -> float:
    """The norm in float64 by torch (an independent recomputation)."""
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors if t is not None])
    return float(torch.linalg.vector_norm(flat, p))


def assert_close(ours: list[Any], theirs: list[Any], rtol: float, atol: float) -> None:
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_allclose(
                a.to(torch.float64).numpy(),
                b.to(torch.float64).numpy(),
                rtol=rtol,
                atol=atol,
                equal_nan=True,
            )


def assert_same_values(ours: list[Any], theirs: list[Any]) -> None:
    """Equal values, zeros of the same sign, NaN where NaN."""
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            a64, b64 = a.to(torch.float64), b.to(torch.float64)
            assert torch.equal(a64.isnan(), b64.isnan())
            ok = ~a64.isnan()
            assert torch.equal(a64[ok], b64[ok])
            assert torch.equal(a64[ok].signbit(), b64[ok].signbit())


def assert_norm_tensor(ours: Any, theirs: Any, rtol: float) -> None:
    assert isinstance(ours, torch.Tensor)
    assert ours.shape == theirs.shape == ()
    assert ours.dtype == theirs.dtype and ours.device == theirs.device
    assert not ours.requires_grad
    np.testing.assert_allclose(float(ours), float(theirs), rtol=rtol, equal_nan=True)


# ---------------------------------------------------------------- signatures and import


def _normalized(annotation: Any) -> Any:
    """An annotation with typing's aliases (``typing.Iterable``, ``Union``) replaced by what
    they stand for, so ``Union[Tensor, typing.Iterable[Tensor]]`` equals
    ``Tensor | collections.abc.Iterable[Tensor]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is None:
        return annotation
    if origin in (typing.Union, types.UnionType):
        return frozenset(_normalized(a) for a in args)
    return (origin, tuple(_normalized(a) for a in args))


@pytest.mark.parametrize(
    "name", ["clip_grad_norm_", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_"]
)
def test_signatures_are_torchs(name: str) -> None:
    ours = inspect.signature(getattr(gt, name), eval_str=True)
    theirs = inspect.signature(getattr(tu, name))
    # gradclip's one addition (docs/differences.md): a keyword-only group= for hand-sharded
    # tensors, on the functions whose norm spans ranks; the rest is torch's signature
    group = ours.parameters.get("group")
    if name == "clip_grad_value_":
        assert group is None
    else:
        assert group is not None and group.kind is group.KEYWORD_ONLY and group.default is None
        ours = ours.replace(parameters=[p for p in ours.parameters.values() if p.name != "group"])
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]
    assert [_normalized(p.annotation) for p in ours.parameters.values()] == [
        _normalized(p.annotation) for p in theirs.parameters.values()
    ]
    assert ours.return_annotation == theirs.return_annotation


def test_docstring_examples() -> None:
    import doctest

    result = doctest.testmod(gt, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 20 and result.failed == 0


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )


def test_import_gradclip_does_not_import_torch() -> None:
    done = run_python(
        """
        import sys
        import gradclip
        assert "torch" not in sys.modules, "import gradclip imported torch"
        import gradclip.torch
        import torch
        assert gradclip.torch.torch is sys.modules["torch"]
        assert sys.modules["gradclip.torch"] is not sys.modules["torch"]
        print("ok")
        """
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_import_without_torch_says_how_to_install_it() -> None:
    done = run_python(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch'", name="torch")
        sys.meta_path.insert(0, Block())
        import numpy as np
        import gradclip
        assert gradclip.get_total_norm(np.array([3.0, 4.0])) == 5.0
        try:
            import gradclip.torch
        except ImportError as exc:
            assert "pip install torch" in str(exc), str(exc)
        else:
            raise AssertionError("no ImportError")
        print("ok")
        """
    )
    assert done.stdout.strip() == "ok", done.stderr


# ---------------------------------------------------------------- real models against torch


@pytest.mark.parametrize("clip", ["clips", "noop"])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_clip_grad_norm_real_models(kind: str, dtype: Any, norm_type: Any, clip: str) -> None:
    ours, theirs = model_pair(kind, dtype)
    p = float(norm_type)
    ref = norm64(grads(ours), p)
    max_norm = 0.3 * ref if clip == "clips" else 2.0 * ref
    before = [g.to(torch.float64, copy=True) for g in grads(ours)]

    got = gt.clip_grad_norm_(ours.parameters(), max_norm, norm_type)
    expected = tu.clip_grad_norm_(theirs.parameters(), max_norm, norm_type)

    assert_norm_tensor(got, expected, TORCH_RTOL[dtype])
    assert abs(float(got) - ref) <= (HALF_ULP[dtype] + 1e-14) * ref
    if clip == "noop":  # torch multiplies by 1.0, gradclip writes nothing: the same bits
        for g, t in zip(grads(ours), grads(theirs), strict=True):
            assert torch.equal(bits(g), bits(t))
        return
    assert_close(grads(ours), grads(theirs), TORCH_RTOL[dtype], TINY[dtype])
    coef = max_norm / (ref + 1e-6)
    for g, b in zip(grads(ours), before, strict=True):
        np.testing.assert_allclose(
            g.to(torch.float64).numpy(),
            (b * coef).numpy(),
            rtol=2.02 * HALF_ULP[dtype] + 1e-14,
            atol=TINY[dtype],
        )


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_get_total_norm_real_models(kind: str, dtype: Any, norm_type: Any) -> None:
    model, _ = model_pair(kind, dtype)
    before = snapshot(model)
    got = gt.get_total_norm(grads(model), norm_type)
    expected = tu.get_total_norm(grads(model), norm_type)
    assert_norm_tensor(got, expected, TORCH_RTOL[dtype])
    ref = norm64(grads(model), float(norm_type))
    assert abs(float(got) - ref) <= (HALF_ULP[dtype] + 1e-14) * ref
    assert_unchanged(model, before)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_clip_grads_with_norm_real_models(kind: str, dtype: Any) -> None:
    ours, theirs = model_pair(kind, dtype)
    total = tu.get_total_norm(grads(theirs))  # a norm computed elsewhere, as a tensor
    max_norm = 0.25 * float(total)
    assert gt.clip_grads_with_norm_(ours.parameters(), max_norm, total) is None
    tu.clip_grads_with_norm_(theirs.parameters(), max_norm, total)
    assert_close(grads(ours), grads(theirs), TORCH_RTOL[dtype], TINY[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_clip_grad_value_real_models_bit_for_bit(kind: str, dtype: Any) -> None:
    ours, theirs = model_pair(kind, dtype)
    largest = max(float(g.abs().max()) for g in grads(ours))
    clip_value = 2.0 ** round(math.log2(largest / 4))  # exact in every dtype: no bound rounding
    assert gt.clip_grad_value_(ours.parameters(), clip_value) is None
    tu.clip_grad_value_(theirs.parameters(), clip_value)
    assert_same_values(grads(ours), grads(theirs))
    assert max(float(g.abs().max()) for g in grads(ours)) == clip_value


@pytest.mark.parametrize("foreach", [None, True, False])
def test_foreach_is_accepted_and_changes_nothing(foreach: Any) -> None:
    ours, theirs = model_pair("cnn", torch.float32)
    norm = gt.clip_grad_norm_(ours.parameters(), 0.5, foreach=foreach)
    expected = gt.clip_grad_norm_(theirs.parameters(), 0.5)
    assert torch.equal(norm, expected)
    assert_same_values(grads(ours), grads(theirs))
    assert torch.equal(
        gt.get_total_norm(grads(ours), foreach=foreach), gt.get_total_norm(grads(theirs))
    )
    gt.clip_grads_with_norm_(ours.parameters(), 0.1, norm, foreach=foreach)
    gt.clip_grads_with_norm_(theirs.parameters(), 0.1, norm)
    gt.clip_grad_value_(ours.parameters(), 1e-3, foreach=foreach)
    gt.clip_grad_value_(theirs.parameters(), 1e-3)
    assert_same_values(grads(ours), grads(theirs))


# ---------------------------------------------------------------- what the parameters hold


@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_parameters_without_gradients_are_skipped(kind: str) -> None:
    ours, theirs = model_pair(kind, torch.float32, frozen=True)
    # a second kind: a parameter that takes part but whose gradient was dropped
    for m in (ours, theirs):
        list(m.parameters())[-1].grad = None
    assert sum(g is None for g in grads(ours)) > 1
    got = gt.clip_grad_norm_(ours.parameters(), 0.01)
    expected = tu.clip_grad_norm_(theirs.parameters(), 0.01)
    assert_norm_tensor(got, expected, 1e-5)
    assert_close(grads(ours), grads(theirs), 1e-5, 0.0)  # the None ones stay None
    gt.clip_grad_value_(ours.parameters(), 1e-4)
    tu.clip_grad_value_(theirs.parameters(), 1e-4)
    assert_close(grads(ours), grads(theirs), 1e-5, 0.0)


def test_tied_weights_count_once_as_in_torch() -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(11, 6)
            self.out = torch.nn.Linear(6, 11, bias=False)
            self.out.weight = self.embed.weight  # the decoder shares the embedding

        def forward(self, x: Any) -> Any:
            return self.out(self.embed(x))

    torch.manual_seed(3)
    model = Tied()
    model(torch.tensor([[1, 2, 3], [4, 5, 1]])).square().sum().backward()
    assert len(list(model.parameters())) == 1  # parameters() yields a shared one once
    ours, theirs = twin(model), twin(model)
    got = gt.clip_grad_norm_(ours.parameters(), 0.1)
    expected = tu.clip_grad_norm_(theirs.parameters(), 0.1)
    assert_norm_tensor(got, expected, 1e-5)
    assert_close(grads(ours), grads(theirs), 1e-5, 0.0)


def test_the_same_parameter_twice() -> None:
    ours, theirs = model_pair("cnn", torch.float32)
    p, q = next(ours.parameters()), next(theirs.parameters())
    before = snapshot(ours)
    # torch counts it twice in the norm and scales it twice (by the square of the coefficient):
    # a careful user wants neither, so the norm-based writes refuse it, naming both positions
    single = float(tu.get_total_norm([q.grad]))
    assert float(tu.clip_grad_norm_([q, q], INF)) == pytest.approx(math.sqrt(2) * single)
    with pytest.raises(ValueError, match=r"parameters\[0\].grad and parameters\[2\].grad"):
        gt.clip_grad_norm_([p, next(iter(list(ours.parameters())[1:])), p], 0.1)
    with pytest.raises(ValueError, match="same parameter twice"):
        gt.clip_grads_with_norm_([p, p], 0.1, torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"parameters\[0\] and parameters\[1\] are the same"):
        gt.GradClipper([p, p])
    assert_unchanged(ours, before)
    # clamping twice is clamping once: torch's result, which clip_grad_value_ gives
    gt.clip_grad_value_([p, p], 1e-3)
    tu.clip_grad_value_([q, q], 1e-3)
    assert_same_values([p.grad], [q.grad])


def test_get_total_norm_counts_a_tensor_twice_as_torch() -> None:
    model, _ = model_pair("cnn", torch.float32)
    g = grads(model)
    got = gt.get_total_norm([g[0], g[1], g[0]])
    expected = tu.get_total_norm([g[0], g[1], g[0]])
    assert_norm_tensor(got, expected, 1e-5)


def test_single_tensor_and_generator() -> None:
    ours, theirs = model_pair("lstm", torch.float32)
    p, q = ours.head.weight, theirs.head.weight
    gt.clip_grad_value_(p, 2.0**-10)
    tu.clip_grad_value_(q, 2.0**-10)
    assert_same_values([p.grad], [q.grad])
    assert_norm_tensor(gt.clip_grad_norm_(p, 1e-3), tu.clip_grad_norm_(q, 1e-3), 1e-5)
    assert_close([p.grad], [q.grad], 1e-5, 0.0)
    assert_norm_tensor(gt.get_total_norm(p.grad, 1.0), tu.get_total_norm(q.grad, 1.0), 1e-5)
    gt.clip_grads_with_norm_(p, 1e-6, torch.tensor(1.0))
    tu.clip_grads_with_norm_(q, 1e-6, torch.tensor(1.0))
    assert_close([p.grad], [q.grad], 1e-5, 0.0)
    # a parameter's weights are read by get_total_norm, as torch does (a weight norm)
    assert_norm_tensor(gt.get_total_norm(p), tu.get_total_norm(q), 1e-5)
    # generators are consumed once, whole
    gen = (t for t in grads(ours))
    assert_norm_tensor(gt.get_total_norm(gen), tu.get_total_norm(grads(theirs)), 1e-5)
    got = gt.clip_grad_norm_((x for x in ours.parameters()), 1e-4)
    expected = tu.clip_grad_norm_((x for x in theirs.parameters()), 1e-4)
    assert_norm_tensor(got, expected, 1e-5)
    assert_close(grads(ours), grads(theirs), 1e-5, 0.0)


def test_empty_inputs_as_torch() -> None:
    no_grad = torch.nn.Parameter(torch.ones(3))
    for args in ([], [no_grad]):
        got, expected = gt.clip_grad_norm_(args, 1.0), tu.clip_grad_norm_(args, 1.0)
        assert torch.equal(got, expected) and got.dtype == expected.dtype == torch.float32
        gt.clip_grads_with_norm_(args, 1.0, torch.tensor(2.0))
    assert torch.equal(gt.get_total_norm([]), tu.get_total_norm([]))
    gt.clip_grad_value_([no_grad], 1.0)
    # torch 2.13 raises on clip_grad_value_ of no gradients; gradclip does nothing
    with pytest.raises(RuntimeError):
        tu.clip_grad_value_([], 1.0)
    gt.clip_grad_value_([], 1.0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:  # the returned zero is in the default dtype, as torch's torch.tensor(0.0)
        assert gt.clip_grad_norm_([], 1.0).dtype == tu.clip_grad_norm_([], 1.0).dtype
        assert gt.get_total_norm([]).dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)


def test_empty_generator_warns_as_torch() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gt.clip_grad_norm_((p for p in []), 1.0)
        tu.clip_grad_norm_((p for p in []), 1.0)
    assert [w.category for w in caught] == [UserWarning, UserWarning]
    assert str(caught[0].message) == str(caught[1].message)
    assert caught[0].filename == __file__  # attributed to the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty list is no reason to warn, in either
        gt.clip_grad_norm_([], 1.0)
        tu.clip_grad_norm_([], 1.0)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (torch.float16, torch.float32),
        (torch.float32, torch.float64),
        pytest.param(
            torch.float16,
            torch.bfloat16,
            marks=pytest.mark.skipif(not HAVE_BF16, reason="ml_dtypes is needed"),
        ),
    ],
    ids=str,
)
def test_mixed_dtypes_return_torchs_promoted_dtype(a: Any, b: Any) -> None:
    def params() -> list[Any]:
        out = []
        for i, dtype in enumerate((a, b, a)):
            p = torch.nn.Parameter(torch.zeros(5, dtype=dtype))
            p.grad = torch.linspace(-1, 1 + i, 5).to(dtype)
            out.append(p)
        return out

    ours, theirs = params(), params()
    got, expected = gt.clip_grad_norm_(ours, 0.5), tu.clip_grad_norm_(theirs, 0.5)
    assert_norm_tensor(got, expected, 4e-3)
    assert_close([p.grad for p in ours], [p.grad for p in theirs], 4e-3, 6e-8)
    total = gt.get_total_norm([p.grad for p in ours])
    assert total.dtype == tu.get_total_norm([p.grad for p in theirs]).dtype


# ---------------------------------------------------------------- non-finite gradients


@pytest.mark.parametrize("norm_type", [2.0, 1.0, INF], ids=str)
@pytest.mark.parametrize("special", ["nan", "inf", "-inf", "nan+inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nonfinite_gradients_as_torch(dtype: Any, special: str, norm_type: float) -> None:
    ours, theirs = model_pair("lstm", dtype)
    for m in (ours, theirs):
        w = m.lstm.weight_hh_l1.grad
        if special in ("nan", "nan+inf"):
            w[3, 2] = math.nan
        if special != "nan":
            w[0, 5] = -INF if special == "-inf" else INF
        m.head.bias.grad[1] = -0.0
    before = snapshot(ours)
    with pytest.raises(RuntimeError) as theirs_error:
        tu.clip_grad_norm_(theirs.parameters(), 1.0, norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as ours_error:
        gt.clip_grad_norm_(ours.parameters(), 1.0, norm_type, error_if_nonfinite=True)
    assert isinstance(ours_error.value, gradclip.NonFiniteNormError)
    assert str(ours_error.value).startswith(f"The total norm of order {norm_type}")
    assert str(theirs_error.value).startswith(f"The total norm of order {norm_type}")
    assert_unchanged(ours, before)
    with pytest.raises(RuntimeError):
        gt.get_total_norm(grads(ours), norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        tu.get_total_norm(grads(theirs), norm_type, error_if_nonfinite=True)
    # propagate, torch's arithmetic: a NaN norm makes everything NaN, an infinite one makes
    # finite values zeros (of their sign) and infinite ones NaN
    got = gt.clip_grad_norm_(ours.parameters(), 1.0, norm_type)
    expected = tu.clip_grad_norm_(theirs.parameters(), 1.0, norm_type)
    assert_norm_tensor(got, expected, 0.0)
    assert not math.isfinite(float(got))
    assert_same_values(grads(ours), grads(theirs))


# ---------------------------------------------------------------- errors and differences


def param_with(grad: Any) -> Any:
    """A parameter (of the gradient's dtype and device) whose .grad is ``grad``."""
    dtype = grad.dtype
    p = torch.nn.Parameter(
        torch.zeros(grad.shape, dtype=dtype, device=grad.device),
        requires_grad=dtype.is_floating_point or dtype.is_complex,
    )
    p.grad = grad
    return p


def test_other_devices_are_refused_naming_the_device() -> None:
    cpu = param_with(torch.arange(4.0))
    meta = param_with(torch.empty(3, device="meta"))
    for call in (
        lambda: gt.clip_grad_norm_([cpu, meta], 1.0),
        lambda: gt.clip_grad_value_([cpu, meta], 1.0),
        lambda: gt.clip_grads_with_norm_([cpu, meta], 1.0, torch.tensor(4.0)),
        lambda: gt.GradClipper([cpu, meta]).clip_grad_norm_(1.0),
    ):
        with pytest.raises(TypeError, match=r"parameters\[1\].grad is on device 'meta'"):
            call()
    with pytest.raises(TypeError, match=r"tensors\[1\] is on device 'meta'"):
        gt.get_total_norm([cpu.grad, meta.grad])
    assert torch.equal(cpu.grad, torch.arange(4.0))  # nothing was written


@pytest.mark.parametrize(
    ("grad", "match"),
    [
        (torch.ones(3).to_sparse(), "sparse_coo tensor"),
        (torch.ones(3, dtype=torch.complex64), r"torch.complex64 \(complex\)"),
        (torch.ones(3, dtype=torch.int32), "torch.int32"),
        (torch.ones(3)._neg_view(), "without a copy"),
    ],
    ids=["sparse", "complex", "int32", "neg-bit"],
)
def test_unsupported_tensors_are_refused(grad: Any, match: str) -> None:
    good, bad = param_with(torch.arange(4.0)), param_with(grad)
    with pytest.raises(TypeError, match=r"parameters\[1\].grad .*" + match):
        gt.clip_grad_norm_([good, bad], 1.0)
    # a reading call loses no update by copying, so its message does not speak of copies
    read_match = "cannot be viewed as a NumPy array" if match == "without a copy" else match
    with pytest.raises(TypeError, match=r"tensors\[0\] .*" + read_match):
        gt.get_total_norm([grad])
    assert torch.equal(good.grad, torch.arange(4.0))


def test_non_tensors_are_refused() -> None:
    model = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"parameters\[0\] is a tuple.*named_parameters"):
        gt.clip_grad_norm_(model.named_parameters(), 1.0)
    with pytest.raises(TypeError, match=r"parameters\[1\] is a NoneType"):
        gt.clip_grad_value_([model.weight, None], 1.0)
    with pytest.raises(TypeError, match=r"parameters must be a torch\.Tensor or an iterable"):
        gt.clip_grad_norm_(3.0, 1.0)
    with pytest.raises(TypeError, match=r"tensors must be a torch\.Tensor or an iterable"):
        gt.get_total_norm(None)
    with pytest.raises(TypeError, match=r"tensors\[0\] is a ndarray"):
        gt.get_total_norm([np.ones(3)])


def test_bfloat16_without_ml_dtypes_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gt._convert, "_BF16", None)
    p = param_with(torch.ones(3, dtype=torch.bfloat16))
    with pytest.raises(
        ImportError, match=r"parameters\[0\].grad is bfloat16.*pip install ml_dtypes"
    ):
        gt.clip_grad_norm_([p], 1.0)
    assert float(gt.clip_grad_norm_([param_with(torch.ones(4))], 1.0)) == 2.0  # others work


def test_bounds_torch_accepts_and_gradclip_refuses() -> None:
    ours, theirs = model_pair("cnn", torch.float32)
    before = snapshot(ours)
    for bad in (0.0, -1.0, math.nan, -INF):
        with pytest.raises(ValueError, match="max_norm"):
            gt.clip_grad_norm_(ours.parameters(), bad)
        with pytest.raises(ValueError, match="max_norm"):
            gt.clip_grads_with_norm_(ours.parameters(), bad, torch.tensor(1.0))
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="clip_value"):
            gt.clip_grad_value_(ours.parameters(), bad)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="norm_type"):
            gt.clip_grad_norm_(ours.parameters(), 1.0, bad)
    with pytest.raises(ValueError, match="total_norm"):
        gt.clip_grads_with_norm_(ours.parameters(), 1.0, torch.tensor(-1.0))
    with pytest.raises(TypeError, match="one-element tensor"):
        gt.clip_grads_with_norm_(ours.parameters(), 1.0, torch.ones(2))
    assert_unchanged(ours, before)
    # what torch does with two of them: max_norm 0 zeroes every gradient, a negative
    # clip_value sets every element to it
    tu.clip_grad_norm_(theirs.parameters(), 0.0)
    assert all(float(g.abs().max()) == 0.0 for g in grads(theirs))
    tu.clip_grad_value_(theirs.parameters(), -1.0)
    assert all(bool((g == -1.0).all()) for g in grads(theirs))


def test_infinite_bounds_never_clip_as_in_torch() -> None:
    ours, theirs = model_pair("lstm", torch.float32)
    got = gt.clip_grad_norm_(ours.parameters(), INF)  # the norm only: torch's idiom
    expected = tu.clip_grad_norm_(theirs.parameters(), INF)
    assert_norm_tensor(got, expected, 1e-5)
    gt.clip_grad_value_(ours.parameters(), INF)
    tu.clip_grad_value_(theirs.parameters(), INF)
    gt.clip_grads_with_norm_(ours.parameters(), INF, got)
    tu.clip_grads_with_norm_(theirs.parameters(), INF, expected)
    for g, t in zip(grads(ours), grads(theirs), strict=True):
        assert torch.equal(bits(g), bits(t))
    # with a non-finite norm, inf / inf is NaN in torch's arithmetic: every element NaN
    for m in (ours, theirs):
        m.head.weight.grad[0, 0] = INF
    got = gt.clip_grad_norm_(ours.parameters(), INF)
    expected = tu.clip_grad_norm_(theirs.parameters(), INF)
    assert float(got) == float(expected) == INF
    assert all(bool(g.isnan().all()) for g in grads(theirs))
    assert_same_values(grads(ours), grads(theirs))


def test_get_total_norm_skips_none_entries() -> None:
    model, _ = model_pair("cnn", torch.float32, frozen=True)
    g = grads(model)
    assert g[0] is None and g[-1] is not None
    with pytest.raises((AttributeError, RuntimeError)):  # torch: a None entry is an error
        tu.get_total_norm(g)
    expected = tu.get_total_norm([t for t in g if t is not None])
    assert_norm_tensor(gt.get_total_norm(g), expected, 1e-5)


def test_version_counters_do_not_move() -> None:
    # gradclip writes through NumPy views, which autograd does not see; torch's in-place
    # multiplication counts as a modification of the gradient
    ours, theirs = model_pair("cnn", torch.float32)
    mine, its = ours[0].weight.grad, theirs[0].weight.grad
    v_mine, v_its = mine._version, its._version
    gt.clip_grad_norm_(ours.parameters(), 1e-4)
    tu.clip_grad_norm_(theirs.parameters(), 1e-4)
    assert_close([mine], [its], 1e-5, 0.0)
    assert mine._version == v_mine and its._version > v_its


def test_fro_and_number_total_norm_are_accepted() -> None:
    ours, theirs = model_pair("cnn", torch.float32)
    assert torch.equal(gt.get_total_norm(grads(ours), "fro"), gt.get_total_norm(grads(ours)))
    with pytest.raises(ValueError, match="fro"):  # torch converts norm_type with float()
        tu.get_total_norm(grads(theirs), "fro")
    gt.clip_grads_with_norm_(ours.parameters(), 1e-3, 2.5)  # a number as well as a tensor
    tu.clip_grads_with_norm_(theirs.parameters(), 1e-3, torch.tensor(2.5))
    assert_close(grads(ours), grads(theirs), 1e-6, 0.0)


def test_float16_norm_beyond_its_range() -> None:
    def params() -> list[Any]:
        return [param_with(torch.full((4,), 60000.0, dtype=torch.float16))]

    ours, theirs = params(), params()
    got = gt.clip_grad_norm_(ours, 1.0)
    expected = tu.clip_grad_norm_(theirs, 1.0)
    # both return inf in float16 (the true norm, 120000, is beyond 65504); torch's infinite
    # norm zeroed the gradients, gradclip clipped them by the true norm
    assert got.dtype == expected.dtype == torch.float16
    assert float(got) == float(expected) == INF
    assert float(theirs[0].grad.abs().max()) == 0.0
    np.testing.assert_allclose(ours[0].grad.to(torch.float64).numpy(), 0.5, rtol=1e-3)
    # error_if_nonfinite raises as torch does, since the norm it would return is inf
    ours, theirs = params(), params()
    with pytest.raises(gradclip.NonFiniteNormError, match="beyond its range"):
        gt.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        tu.clip_grad_norm_(theirs, 1.0, error_if_nonfinite=True)
    assert bool((ours[0].grad == 60000.0).all())
    with pytest.raises(gradclip.NonFiniteNormError):
        gt.get_total_norm([ours[0].grad], error_if_nonfinite=True)


def test_float32_norm_beyond_its_range_is_inf() -> None:
    g = torch.full((4,), 3e38)
    assert float(gt.get_total_norm(g)) == float(tu.get_total_norm(g)) == INF
    p = param_with(g.clone())
    got = gt.clip_grad_norm_([p], 1.0)
    assert got.dtype == torch.float32 and float(got) == INF
    np.testing.assert_allclose(p.grad.numpy(), 0.5, rtol=1e-6)  # clipped by the true norm


# ---------------------------------------------------------------- GradClipper


@pytest.mark.parametrize("set_to_none", [True, False])
def test_clipper_clips_the_live_gradients_over_training_steps(set_to_none: bool) -> None:
    torch.manual_seed(5)
    model = LSTMHead()
    reference = copy.deepcopy(model)  # trained in lockstep with torch.nn.utils
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    clipper = gt.GradClipper(model.parameters())
    assert len(clipper) == len(list(model.parameters())) and clipper.builds == 0
    max_norm, previous = 0.05, None
    for step in range(6):
        opt.zero_grad(set_to_none=set_to_none)
        ref_opt.zero_grad(set_to_none=set_to_none)
        if previous is not None:  # the tensors of the last step: replaced, or kept
            assert all((r() is None) == set_to_none for r in previous)
        backward(model, "lstm", torch.float32, seed=10 + step)
        backward(reference, "lstm", torch.float32, seed=10 + step)
        live = norm64(grads(model), 2.0)
        assert live > 2 * max_norm  # every step clips
        norm = clipper.clip_grad_norm_(max_norm)
        expected = tu.clip_grad_norm_(reference.parameters(), max_norm)
        assert_norm_tensor(norm, expected, 1e-5)
        assert float(norm) == pytest.approx(live, rel=1e-6)
        assert norm64(grads(model), 2.0) <= max_norm * (1 + 1e-6)  # the live ones, clipped
        previous = storages(model)
        opt.step()
        ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-7)
    if set_to_none:  # new tensors every step: nothing kept, nothing built
        assert clipper.builds == 0 and not clipper.cached
    else:  # the same tensors: one set, built at the second step and reused since
        assert clipper.builds == 1 and clipper.cached


def storages(model: Any) -> list[Any]:
    """Weak references to the memory of the model's gradients (a NumPy view keeps the memory
    alive through a tensor of its own, so the gradient tensors' own references do not tell)."""
    return [weakref.ref(g.untyped_storage()) for g in grads(model)]


def test_clipper_never_holds_gradient_memory() -> None:
    model, _ = model_pair("cnn", torch.float32)
    clipper = gt.GradClipper(model.parameters())
    first = storages(model)
    clipper.get_total_norm()
    for p in model.parameters():  # a call that sees gradients once keeps nothing
        p.grad = p.grad.clone()
    assert all(r() is None for r in first)
    clipper.get_total_norm()
    clipper.get_total_norm()  # the same tensors twice in a row: kept from here on
    assert clipper.cached and clipper.builds == 1
    kept = storages(model)
    model.zero_grad(set_to_none=True)
    assert all(r() is None for r in kept)  # the kept set borrows the memory, never holds it
    backward(model, "cnn", torch.float32, seed=7)
    expected = norm64(grads(model), 2.0)
    assert float(clipper.clip_grad_norm_(1e-3)) == pytest.approx(expected, rel=1e-6)
    assert not clipper.cached


@pytest.mark.parametrize("size", [3, 10_000])
def test_kept_gradients_resized_in_place_are_noticed(size: int) -> None:
    # the compiled record exports nothing to NumPy, so torch lets a kept gradient be resized
    # in place (fewer elements over the same pointer, or more over new memory): the next
    # call sees the new size and clips the live elements only
    model, _ = model_pair("cnn", torch.float32)
    clipper = gt.GradClipper(model.parameters())
    clipper.get_total_norm()
    clipper.get_total_norm()
    assert clipper.cached
    g = model[0].bias.grad
    ptr = g.data_ptr()
    g.resize_(size).fill_(5.0)
    assert (g.data_ptr() == ptr) == (size == 3)
    expected = norm64(grads(model), 2.0)
    assert float(clipper.clip_grad_norm_(1e-3)) == pytest.approx(expected, rel=1e-6)
    assert norm64(grads(model), 2.0) <= 1e-3 * (1 + 1e-6)
    assert not clipper.cached  # the same tensors, other memory: seen once again


@pytest.mark.parametrize(
    "change", ["data", "set_", "as_strided_", "view", "dropped", "added", "resize_"]
)
def test_clipper_notices_a_changed_gradient(change: str) -> None:
    model, _ = model_pair("cnn", torch.float32)
    clipper = gt.GradClipper(model.parameters())
    # kept (two calls with the same gradients), or for resize_ only seen once (torch refuses
    # to resize memory that a kept set views)
    for _ in range(1 if change == "resize_" else 3):
        clipper.clip_grad_norm_(10.0)  # nothing clipped
    assert clipper.cached == (change != "resize_")
    g = model[0].weight.grad
    if change == "data":  # the same tensor object on new memory
        g.data = torch.full_like(g, 5.0)
    elif change == "set_":
        g.set_(torch.full((g.numel() * 2,), 5.0)[: g.numel()].view(g.shape))
    elif change == "as_strided_":  # the same memory and shape, other strides
        g.as_strided_(g.shape, tuple(reversed(torch.empty(g.shape[::-1]).stride()))).fill_(5.0)
    elif change == "resize_":  # the same memory pointer and strides, fewer elements
        model[0].bias.grad.resize_(3).fill_(5.0)
    elif change == "view":  # another tensor object on the same memory
        model[0].weight.grad = g.view(g.shape).fill_(5.0)
    elif change == "dropped":
        model[0].weight.grad = None
    else:
        model[-1].bias.grad = None
        clipper.clip_grad_norm_(10.0)
        clipper.clip_grad_norm_(10.0)
        model[-1].bias.grad = torch.full_like(model[-1].bias, 5.0)
    expected = norm64(grads(model), 2.0)
    norm = clipper.clip_grad_norm_(1e-3)
    assert float(norm) == pytest.approx(expected, rel=1e-6)
    assert norm64(grads(model), 2.0) <= 1e-3 * (1 + 1e-6)
    # the changed gradients are seen once: nothing kept yet (resize_: the same tensor
    # objects as the one call before, which kept nothing, so a set is kept over them now,
    # built from their current memory)
    assert clipper.cached == (change == "resize_")
    clipper.clip_grad_norm_(1e-3)
    assert clipper.cached
    live = norm64(grads(model), 2.0)  # through the kept set: the live gradients' norm
    assert float(clipper.get_total_norm()) == pytest.approx(live, rel=1e-6)


def test_clipper_notices_a_dtype_changed_in_place() -> None:
    model, _ = model_pair("cnn", torch.float32)
    clipper = gt.GradClipper(model.parameters())
    clipper.get_total_norm()
    clipper.get_total_norm()
    assert clipper.cached
    g = model[0].weight.grad
    ptr, shape, stride = g.data_ptr(), g.shape, g.stride()
    g.data = g.view(torch.int32)  # the same memory, shape and strides, another dtype
    assert (g.data_ptr(), g.shape, g.stride()) == (ptr, shape, stride)
    with pytest.raises(TypeError, match=r"parameters\[0\].grad has dtype torch.int32"):
        clipper.clip_grad_norm_(1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clipper_methods_match_torch(dtype: Any) -> None:
    ours, theirs = model_pair("lstm", dtype, frozen=True)
    clipper = gt.GradClipper(ours.parameters())
    assert repr(clipper) == f"GradClipper({len(clipper)} parameters)"
    assert clipper.parameters == tuple(ours.parameters())
    for _ in range(2):  # a one-shot call, then through the kept set
        for p in (2.0, INF):
            expected = tu.get_total_norm([g for g in grads(theirs) if g is not None], p)
            assert_norm_tensor(clipper.get_total_norm(p), expected, TORCH_RTOL[dtype])
    assert clipper.cached
    largest = max(float(g.abs().max()) for g in grads(ours) if g is not None)
    clip_value = 2.0 ** round(math.log2(largest / 2))
    clipper.clip_grad_value_(clip_value)
    tu.clip_grad_value_(theirs.parameters(), clip_value)
    assert_same_values(grads(ours), grads(theirs))
    total = tu.get_total_norm([g for g in grads(theirs) if g is not None])
    clipper.clip_grads_with_norm_(0.5 * float(total), total)
    tu.clip_grads_with_norm_(theirs.parameters(), 0.5 * float(total), total)
    assert_close(grads(ours), grads(theirs), TORCH_RTOL[dtype], TINY[dtype])
    got = clipper.clip_grad_norm_(0.1, 3.0)
    expected = tu.clip_grad_norm_(theirs.parameters(), 0.1, 3.0)
    assert_norm_tensor(got, expected, TORCH_RTOL[dtype])
    assert_close(grads(ours), grads(theirs), TORCH_RTOL[dtype], TINY[dtype])
    for m in (ours, theirs):
        m.head.weight.grad[0, 0] = math.nan
    before = snapshot(ours)
    with pytest.raises(gradclip.NonFiniteNormError):
        clipper.clip_grad_norm_(0.1, error_if_nonfinite=True)
    with pytest.raises(gradclip.NonFiniteNormError):
        clipper.get_total_norm(error_if_nonfinite=True)
    assert_unchanged(ours, before)
    assert clipper.builds == 1  # the same gradients all along


def test_clipper_of_no_gradients() -> None:
    model = torch.nn.Linear(3, 2)
    clipper = gt.GradClipper(p for p in model.parameters())  # a generator, consumed once
    assert len(clipper) == 2
    assert torch.equal(clipper.clip_grad_norm_(1.0), tu.clip_grad_norm_(model.parameters(), 1.0))
    clipper.clip_grad_value_(1.0)
    clipper.clip_grads_with_norm_(1.0, 2.0)
    assert float(clipper.get_total_norm()) == 0.0
    with pytest.raises(TypeError, match=r"parameters\[1\] is a str"):
        gt.GradClipper([model.weight, "bias"])
