# gradclip.torch takes max_norm, clip_value and norm_type as torch.nn.utils converts them
# (float(): True, "1.0", " 2 "), and names every tensor in its errors as parameters[i].grad
# (tensors[i] for get_total_norm), the errors of gradclip's core included.
from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
gct = pytest.importorskip("gradclip.torch")


def param(*values: float, grad: Any = None) -> Any:
    p = torch.nn.Parameter(torch.zeros(len(values)))
    p.grad = torch.tensor(values) if grad is None else grad
    return p


@pytest.mark.parametrize("max_norm", [True, "1.0", " 2 ", b"1", "inf"])
def test_max_norm_converted_as_torch_does(max_norm: Any) -> None:
    ours, theirs = param(3.0, 4.0), param(3.0, 4.0)
    n1 = gct.clip_grad_norm_([ours], max_norm)
    n2 = torch.nn.utils.clip_grad_norm_([theirs], max_norm)
    assert float(n1) == pytest.approx(float(n2))
    torch.testing.assert_close(ours.grad, theirs.grad)


@pytest.mark.parametrize("norm_type", [True, "2", "inf", 3])
def test_norm_type_converted_as_torch_does(norm_type: Any) -> None:
    ours, theirs = param(3.0, -4.0), param(3.0, -4.0)
    n1 = gct.clip_grad_norm_([ours], 1.0, norm_type)
    n2 = torch.nn.utils.clip_grad_norm_([theirs], 1.0, norm_type)
    assert float(n1) == pytest.approx(float(n2))
    torch.testing.assert_close(ours.grad, theirs.grad)


@pytest.mark.parametrize("clip_value", [True, "0.5"])
def test_clip_value_converted_as_torch_does(clip_value: Any) -> None:
    ours, theirs = param(3.0, -0.25), param(3.0, -0.25)
    gct.clip_grad_value_([ours], clip_value)
    torch.nn.utils.clip_grad_value_([theirs], clip_value)
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_unconvertible_bounds_are_still_refused() -> None:
    with pytest.raises(TypeError, match="max_norm must be a real number, not str"):
        gct.clip_grad_norm_([param(1.0)], "abc")
    with pytest.raises(ValueError, match="max_norm must be finite and > 0, got 0.0"):
        gct.clip_grad_norm_([param(1.0)], False)  # float(False) is 0: torch zeroes, we refuse


def test_core_errors_name_parameters_grad() -> None:
    expanded = param(0.0, 0.0, 0.0, grad=torch.ones(1).expand(3))
    with pytest.raises(ValueError, match=r"^parameters\[1\]\.grad has elements that share"):
        gct.clip_grad_norm_([param(1.0), expanded], 1.0)
    with pytest.raises(ValueError, match=r"^parameters\.grad has elements that share"):
        gct.clip_grad_norm_(expanded, 1.0)
    with pytest.raises(ValueError, match=r"^parameters\[1\]\.grad has elements that share"):
        gct.GradClipper([param(1.0), expanded]).clip_grad_value_(1.0)
    buf = torch.zeros(12)
    six, four = (0.0,) * 6, (0.0,) * 4
    a, b, c = param(*six, grad=buf[0::2]), param(*six, grad=buf[1::2]), param(*four, grad=buf[:4])
    gct.clip_grad_norm_([a, b], 1.0)  # disjoint views of one buffer
    with pytest.raises(
        ValueError, match=r"^parameters\[0\]\.grad and parameters\[2\]\.grad overlap"
    ):
        gct.clip_grads_with_norm_([a, b, c], 1.0, 10.0)
