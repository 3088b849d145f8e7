# Covers: the objects of the libraries users come from, real ones
# where installed: torch parameters and mygrad tensors refused by every writing function
# (nothing modified, no message that leads to clipping the weights), their gradients clipped in
# place; JAX arrays read by the reading calls and refused, with the copying alternative named,
# by the writing ones.
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gradclip
from gradclip import reference as ref

WRITERS = {
    "clip_grad_norm_": lambda m, g: m.clip_grad_norm_(g, 1e-3),
    "clip_grads_with_norm_": lambda m, g: m.clip_grads_with_norm_(g, 1e-3, 10.0),
    "clip_grad_value_": lambda m, g: m.clip_grad_value_(g, 1e-3),
    "clip_grad_norm_per_tensor_": lambda m, g: m.clip_grad_norm_per_tensor_(g, 1e-3),
    "clip_by_block_rms_": lambda m, g: m.clip_by_block_rms_(g, 1e-3),
    "unscale_clip_grad_norm_": lambda m, g: m.unscale_clip_grad_norm_(g, 1e-3, 0.5),
    "clip_per_example_": lambda m, g: m.clip_per_example_(g, 1e-3),
    "GradientSet": lambda m, g: m.GradientSet(g),
    "AutoClip": lambda m, g: m.AutoClip()(g),
}


def check_refused(params: list[Any], data: list[np.ndarray]) -> None:
    before = [d.copy() for d in data]
    for name, call in WRITERS.items():
        for module in (gradclip, ref):
            with pytest.raises(TypeError) as info:
                call(module, params)
            msg = str(info.value)
            assert "detach" not in msg, msg
            if module is gradclip:
                assert "p.grad" in msg and "gradclip.torch" in msg, (name, msg)
            for d, b in zip(data, before, strict=True):
                np.testing.assert_array_equal(d, b, err_msg=f"{name} changed a weight")


def test_torch_parameters_refused_gradients_clipped() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model(torch.randn(16, 4)).pow(2).sum().backward()
    params = list(model.parameters())
    check_refused(params, [p.detach().numpy() for p in params])
    # a single parameter, and a parameter inside a dict
    with pytest.raises(TypeError, match="requires_grad"):
        gradclip.clip_grad_norm_(params[0], 1.0)
    with pytest.raises(TypeError, match=r"grads\['w'\]"):
        gradclip.clip_grad_value_({"w": params[0]}, 1.0)
    # the hint in the message works: the gradients are clipped in place
    grads = [p.grad for p in params]
    want = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    total = gradclip.clip_grad_norm_(grads, 1e-3)
    assert total == pytest.approx(float(want), rel=1e-5)
    after = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])))
    assert after == pytest.approx(1e-3, rel=1e-4)
    # a reading call reads parameters (a weight norm), through the same memory
    weights = gradclip.get_total_norm(params)
    assert weights == pytest.approx(
        float(torch.cat([p.detach().flatten() for p in params]).norm()), rel=1e-5
    )
    assert gradclip.tensor_norms(params)[0] == pytest.approx(
        float(params[0].detach().norm()), rel=1e-5
    )


def test_mygrad_tensors_refused_gradients_clipped() -> None:
    mg = pytest.importorskip("mygrad")
    w = mg.tensor(np.linspace(-1.0, 1.0, 12).reshape(3, 4))
    b = mg.tensor(np.ones(3))
    x = np.arange(8.0).reshape(4, 2)
    (mg.matmul(w, x).sum() + b.sum()).backward()
    assert w.grad is not None and b.grad is not None
    check_refused([w, b], [w.data, b.data])
    grads = [w.grad, b.grad]
    before = gradclip.get_total_norm(grads)
    assert gradclip.clip_grad_norm_(grads, 1.0) == before
    assert gradclip.get_total_norm([w.grad, b.grad]) == pytest.approx(1.0, rel=1e-5)


def test_jax_arrays_read_and_copying_alternative_named() -> None:
    jnp = pytest.importorskip("jax.numpy")
    grads = {"w": jnp.ones((3, 4)), "b": [jnp.full((2,), 2.0)]}
    assert gradclip.get_total_norm(grads) == pytest.approx(20**0.5, rel=1e-7)
    assert gradclip.tensor_norms(grads).tolist() == pytest.approx([12**0.5, 8**0.5])
    assert ref.get_total_norm(grads) == pytest.approx(20**0.5, rel=1e-7)
    with pytest.raises(ValueError, match=r"grads\['w'\] is read-only.*clip_by_global_norm"):
        gradclip.clip_grad_norm_(grads, 1.0)
