"""The vision task of ``python -m gradclip demo``: a residual CNN without normalisation layers.

Brock, De, Smith and Simonyan, "High-Performance Large-Scale Image Recognition Without
Normalization", ICML 2021 (PMLR 139:1059-1071, arXiv:2102.06171), train residual networks with
no batch normalisation at large learning rates and batch sizes, and adaptive gradient
clipping (AGC) is what keeps those runs stable. This task is that setting at the size of a
demo: a small residual network written in NumPy with a hand-written backward pass
(convolutions as im2col plus one matmul), trained on real images that need no download,
scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797 grey 8x8
images of the digits 0-9), under the same clipping rules as the RNN task plus AGC:

- no clipping;
- global norm clipping, :func:`gradclip.clip_grad_norm_`;
- adaptive gradient clipping, :func:`gradclip.adaptive_grad_clip_`, with the NFNet / timm
  defaults (clipping 0.01, eps 1e-3, unit-wise norms: each output channel of a convolution
  is one unit, each bias vector is one unit, as timm's and the authors' unit-wise norm treat
  a 1-d parameter); the final linear layer is not clipped, as in the paper (sec. 4.1: "we
  find it is also beneficial to not clip the final linear layer");
- per-array norm clipping, :func:`gradclip.clip_grad_norm_per_tensor_`;
- value clipping, :func:`gradclip.clip_grad_value_`.

The three fixed-threshold arms bound the clipped gradient's total norm by the same
``max_norm`` (see :mod:`gradclip.demo.common`); AGC's bound follows the weights instead.

The network: a 3x3 convolution from 1 to ``width`` channels (the stem), then ``blocks``
residual blocks ``h <- h + alpha * conv(relu(conv(relu(h))))`` (3x3, ``width`` channels, with
biases; ``alpha`` = 0.2 keeps the variance growth of the residual stream small, as the
NF-ResNets' ``alpha`` does), global average pooling of ``relu(h)`` and a linear layer to the
10 classes, trained on softmax cross-entropy with SGD and momentum 0.9. No normalisation
layer of any kind (no batch norm); every convolution uses scaled weight standardisation (a
learnable gain per output channel), as the NF-ResNets and NFNets do, in every arm, so that
AGC is tried in its published setting and the arms differ in the clipping rule only. The
train/test split is fixed (a permutation seeded by :data:`SPLIT_SEED`: 1,500 training
images, 297 test images); each seed fixes the initial weights and the order of the training
batches, the same for every arm.

The arithmetic is the same bits on every machine: every product goes through
:mod:`gradclip.demo.exact` (integer-exact, whatever the BLAS kernel or its thread count),
softmax's exp and log are correctly rounded, and the rest is element-wise IEEE arithmetic
and sums in an order fixed by the arrays' shapes.

Why these defaults (:class:`VisionConfig`): 8 channels, batch 128 and 200 steps (17 epochs)
keep the 15 runs under a minute on two cores; at learning rate 1.6 the unclipped network
overflows on every seed (at 3.2 and 6.4 too, on every seed tried, within 40 steps), while
global norm clipping at 1.6 learns on every seed (at 3.2 it did not: 31% on the one seed
tried).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

import gradclip

from . import exact
from .common import (
    Arm,
    Claim,
    ClipFn,
    RunResult,
    common_cells,
    divergence_lines,
    expectation_lines,
    global_arm,
    markdown_table,
    no_clip_arm,
    per_tensor_arm,
    seeds_phrase,
    value_arm,
)
from .runner import run_all

__all__ = [
    "ARMS",
    "CHANCE_LOSS",
    "CLAIMS",
    "QUICK",
    "SPLIT_SEED",
    "VisionConfig",
    "VisionResult",
    "format_table",
    "header",
    "init_params",
    "load_data",
    "logits",
    "loss_and_grads",
    "param_names",
    "run_demo",
    "save_figure",
    "train",
    "train_many",
]

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.intp]

CLASSES = 10
#: Cross-entropy of a uniform guess over the 10 classes, ln 10.
CHANCE_LOSS = math.log(CLASSES)
#: A training loss above this (10x chance: the network is confidently wrong) or a non-finite
#: one counts as a blow-up.
DIVERGED_LOSS = 10 * CHANCE_LOSS
#: Seeds the permutation that makes the fixed train/test split.
SPLIT_SEED = 0
#: Images held out for testing; the other 1,500 of the 1,797 are for training.
TEST_SIZE = 297
#: Residual branch scale.
ALPHA = 0.2
#: Images per forward/backward pass; larger batches are done in chunks of this many.
_CHUNK = 16


@dataclass(frozen=True)
class VisionConfig:
    """Settings of one vision-demo run; every arm and seed uses the same ones.

    ``max_norm`` is the bound on the clipped gradient's total norm in the fixed-threshold
    arms; ``clipping`` and ``agc_eps`` are AGC's (timm's and the NFNet paper's defaults).
    """

    steps: int = 200
    seeds: int = 3
    width: int = 8
    blocks: int = 2
    batch: int = 128
    lr: float = 1.6
    momentum: float = 0.9
    max_norm: float = 1.0
    clipping: float = 0.01
    agc_eps: float = 1e-3
    #: scaled weight standardisation in every convolution (NF-ResNets, NFNets)
    ws: bool = True
    #: Steps between two evaluations on the test set (the figure's accuracy curve).
    eval_every: int = 25
    #: Training steps between two progress reports.
    report_every: int = 25

    def check(self) -> None:
        """Raise ValueError when a setting is out of range."""
        for name in ("steps", "seeds", "width", "batch", "eval_every", "report_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.blocks < 0:
            raise ValueError(f"blocks must be at least 0, got {self.blocks}")
        if self.batch > 1797 - TEST_SIZE:
            raise ValueError(f"batch must be at most {1797 - TEST_SIZE}, got {self.batch}")
        for name in ("lr", "max_norm", "clipping", "agc_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


#: ``--quick``: a smoke run.
QUICK = VisionConfig(steps=45, seeds=2, eval_every=15, report_every=15)


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[npt.NDArray[np.float64], IntArray]:
    from sklearn.datasets import load_digits  # here: `import gradclip.demo` needs no sklearn

    images, labels = load_digits(return_X_y=True)
    return np.asarray(images, dtype=np.float64), np.asarray(labels, dtype=np.intp)


def load_data(
    dtype: npt.DTypeLike = np.float32,
) -> tuple[FloatArray, IntArray, FloatArray, IntArray]:
    """The digits, split and standardised: ``x_train, y_train, x_test, y_test``.

    Images are (N, 8, 8, 1), channels last, standardised with the training set's mean and
    standard deviation of pixel values; labels are 0-9. The split is the same on every call
    (a permutation seeded by :data:`SPLIT_SEED`).
    """
    images, labels = _digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    test, train_ = order[:TEST_SIZE], order[TEST_SIZE:]
    x = images.reshape(-1, 8, 8, 1)
    mean, std = x[train_].mean(), x[train_].std()
    x = ((x - mean) / std).astype(dtype)
    return x[train_], labels[train_], x[test], labels[test]


# --------------------------------------------------------------------------- the network


def param_names(blocks: int, ws: bool = True) -> list[str]:
    """Names of the parameter (and gradient) arrays, in order: each convolution's weight,
    bias and, with scaled weight standardisation (``ws``), its gain."""
    parts = ("w", "b", "gain") if ws else ("w", "b")
    convs = ["stem"] + [f"block{k}.conv{i}" for k in range(blocks) for i in (1, 2)]
    return [f"{conv}.{part}" for conv in convs for part in parts] + ["fc.w", "fc.b"]


def init_params(
    rng: np.random.Generator,
    width: int,
    blocks: int,
    dtype: npt.DTypeLike = np.float32,
    ws: bool = False,
) -> list[FloatArray]:
    """Initial weights: He-normal convolutions, stored ``(out, 3, 3, in)`` (so each slice
    along axis 0, one output channel, is a unit for AGC's ``layout="OI"``), zero biases,
    gains of 1 (with ``ws``), and a final layer ``(10, width)`` with standard deviation
    ``1 / sqrt(width)``."""

    def conv(cin: int, cout: int) -> list[FloatArray]:
        w = rng.standard_normal((cout, 3, 3, cin)) * math.sqrt(2.0 / (9 * cin))
        out: list[FloatArray] = [w, np.zeros(cout)]
        return out + ([np.ones(cout)] if ws else [])

    params = conv(1, width)
    for _ in range(blocks):
        params += conv(width, width) + conv(width, width)
    params += [rng.standard_normal((CLASSES, width)) / math.sqrt(width), np.zeros(CLASSES)]
    return [np.ascontiguousarray(p, dtype=dtype) for p in params]


def _has_ws(params: Sequence[Any]) -> bool:
    # 2 + 4 * blocks + 2 arrays without standardisation, 3 + 6 * blocks + 2 with it
    return len(params) % 2 == 1


# --------------------------------------------------------------------------- weight standardisation

#: The gain of ReLU: the factor that restores unit variance after ``relu`` of a unit
#: Gaussian, sqrt(2 / (1 - 1/pi)) (Brock, De and Smith, "Characterizing signal propagation to
#: close the performance gap in unnormalized ResNets", ICLR 2021, arXiv:2101.08692, sec. 4).
RELU_GAIN = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))
#: The floor under ``fan_in * variance`` of a weight's unit, as in the NFNet authors' code.
WS_EPS = 1e-4


def standardise(w: FloatArray, gain: FloatArray) -> tuple[FloatArray, Any]:
    """Scaled weight standardisation of a convolution's weight ``(out, 3, 3, in)``.

    ``W_hat = gain * RELU_GAIN * (W - mean) / sqrt(max(fan_in * var, WS_EPS))``, mean and
    (biased) variance over each output channel's ``fan_in = 9 * in`` weights: Brock, De and
    Smith 2021 (sec. 4) and Brock, De, Smith and Simonyan 2021 (sec. 3), with a learnable
    gain per output channel. Returns ``W_hat`` and what :func:`standardise_backward` needs.
    """
    cout = w.shape[0]
    flat = w.reshape(cout, -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    scale = 1.0 / np.sqrt(np.maximum((centred * centred).sum(axis=1, keepdims=True), WS_EPS))
    unit = centred * scale  # each row of unit norm (unless floored)
    w_hat = (gain[:, None] * RELU_GAIN) * unit
    return w_hat.reshape(w.shape).astype(w.dtype), (unit, scale, gain)


def standardise_backward(
    g_hat: FloatArray, saved: Any, floored_ok: bool = True
) -> tuple[FloatArray, FloatArray]:
    """Gradients of the weight and the gain from the gradient of ``W_hat``.

    With ``u = c / s``, ``c = W - mean(W)``, ``s = sqrt(sum(c**2))``:
    ``dL/dgain = RELU_GAIN * sum(G * u)``; ``dL/dc = (a / s) (G - u sum(G * u))`` with
    ``a = gain * RELU_GAIN`` (``a / s * G`` where the floor holds ``s`` fixed); and
    ``dL/dW = dL/dc - mean(dL/dc)``, per output channel.
    """
    unit, scale, gain = saved
    cout = unit.shape[0]
    g = g_hat.reshape(cout, -1)
    along = (g * unit).sum(axis=1, keepdims=True)
    g_gain = RELU_GAIN * along[:, 0]
    floored = scale >= 1.0 / math.sqrt(WS_EPS)
    d_c = (gain[:, None] * RELU_GAIN) * scale * (g - np.where(floored, 0.0, unit * along))
    d_w = d_c - d_c.mean(axis=1, keepdims=True)
    return d_w.reshape(g_hat.shape).astype(g_hat.dtype), g_gain.astype(g_hat.dtype)


# --------------------------------------------------------------------------- convolutions

#: Bits kept of every activation, gradient and weight that enters a product (float32
#: operands; :mod:`gradclip.demo.exact`): 20 + 20 bits over sums of up to 2**13 terms (the
#: weight gradient of a chunk of up to 128 images of 8x8) and 20 + 22 over the 9 * width terms of a
#: convolution stay below 2**53.
_ACT_BITS = 20
_WEIGHT_BITS = 22


def _im2col(x: Any) -> Any:
    """(B, H, W, C) -> (B*H*W, 9*C): each row the 3x3 neighbourhood of one pixel, zero-padded,
    ordered (row, column, channel) like a flattened ``(out, 3, 3, in)`` kernel. A
    :class:`~gradclip.demo.exact.Prepared` tensor gives a prepared matrix (the same scale)."""
    if isinstance(x, exact.Prepared):
        return exact.Prepared.of(_im2col(x.q), x.scale, x.bits)
    b, h, w, c = x.shape
    padded = np.zeros((b, (h + 2) * (w + 2), c), dtype=x.dtype)
    padded.reshape(b, h + 2, w + 2, c)[:, 1:-1, 1:-1] = x
    # one gather along the pixel axis: a third faster than concatenating nine shifted
    # views at a chunk of 16 images, and twice as fast at 64 (measured, AMD EPYC Zen 4)
    return np.take(padded, _neighbours(h, w), axis=1).reshape(b * h * w, 9 * c)


@functools.cache
def _neighbours(h: int, w: int) -> IntArray:
    """Indices into a zero-padded (h + 2) x (w + 2) image, flattened: the 3x3 neighbourhood
    of each pixel, pixel by pixel."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    di, dj = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    index = (rows[..., None, None] + di) * (w + 2) + cols[..., None, None] + dj
    return np.ascontiguousarray(index.reshape(-1), dtype=np.intp)


def _operand(x: FloatArray, bits: int) -> Any:
    """``x`` rounded for the exact products, one scale for the whole tensor (float32), or
    ``x`` itself (float64)."""
    if x.dtype != np.float32:
        return x
    flat = exact.prepare(x.reshape(-1, x.shape[-1]), bits=bits)
    return exact.Prepared.of(flat.q.reshape(x.shape), flat.scale, bits)


def _t(x: Any) -> Any:
    return x.T


def _conv(cols: Any, w: FloatArray, b: FloatArray, shape: tuple[int, ...]) -> FloatArray:
    kernel = _operand(w.reshape(w.shape[0], -1), _WEIGHT_BITS)
    out: FloatArray = (exact.matmul(cols, _t(kernel)) + b).reshape(*shape[:3], w.shape[0])
    return out


def _conv_backward(
    d_out: FloatArray, cols: Any, w: FloatArray, need_input: bool = True
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Gradients of a 3x3 'same' convolution: weight, bias, and input."""
    cout = w.shape[0]
    d_q = _operand(d_out, _ACT_BITS)
    if isinstance(d_q, exact.Prepared):
        d2: Any = exact.Prepared.of(d_q.q.reshape(-1, cout), d_q.scale, d_q.bits)
    else:
        d2 = d_out.reshape(-1, cout)
    g_w = exact.matmul(_t(d2), cols).reshape(w.shape)
    g_b = d_out.reshape(-1, cout).sum(axis=0)
    if not need_input:
        return g_w, g_b, None
    # the input's gradient is the output's gradient convolved with the kernel flipped in
    # space and transposed (in <-> out): one more im2col and product, cheaper than col2im
    flipped = w[:, ::-1, ::-1, :].transpose(3, 1, 2, 0).reshape(w.shape[3], -1)
    kernel = _operand(np.ascontiguousarray(flipped), _WEIGHT_BITS)
    d_in = exact.matmul(_im2col(d_q), _t(kernel)).reshape(*d_out.shape[:3], w.shape[3])
    return g_w, g_b, d_in


def _layers(params: Sequence[FloatArray]) -> tuple[list[tuple[FloatArray, FloatArray]], list[Any]]:
    """Each convolution's (weight used, bias) and what the standardisation's backward pass
    needs (None without it)."""
    per = 3 if _has_ws(params) else 2
    convs, saved = [], []
    for i in range(0, len(params) - 2, per):
        w, b = params[i], params[i + 1]
        if per == 3:
            w, keep = standardise(w, params[i + 2])
            saved.append(keep)
        else:
            saved.append(None)
        convs.append((w, b))
    return convs, saved


def _forward(
    params: Sequence[FloatArray],
    x: FloatArray,
    convs: list[tuple[FloatArray, FloatArray]] | None = None,
) -> tuple[FloatArray, FloatArray, list[Any]]:
    """Logits, the pooled features and what the backward pass needs."""
    if convs is None:
        convs = _layers(params)[0]
    blocks = (len(convs) - 1) // 2
    cols = _im2col(_operand(x, _ACT_BITS))
    h = _conv(cols, convs[0][0], convs[0][1], x.shape)
    cache: list[Any] = [cols]
    for k in range(blocks):
        (w1, b1), (w2, b2) = convs[1 + 2 * k], convs[2 + 2 * k]
        cols1 = _im2col(_operand(np.maximum(h, 0), _ACT_BITS))
        u = _conv(cols1, w1, b1, h.shape)
        cols2 = _im2col(_operand(np.maximum(u, 0), _ACT_BITS))
        h_next = h + ALPHA * _conv(cols2, w2, b2, h.shape)
        cache.append((h, cols1, u, cols2))
        h = h_next
    relu_h = np.maximum(h, 0)
    pooled = relu_h.mean(axis=(1, 2))
    out: FloatArray = exact.matmul(pooled, params[-2].T) + params[-1]
    cache.append(h)
    return out, pooled, cache


def logits(params: Sequence[FloatArray], x: FloatArray) -> FloatArray:
    """The network's class scores for images ``x`` (N, H, W, 1), shape (N, 10)."""
    convs = _layers(params)[0]
    parts = [_forward(params, x[i : i + _CHUNK], convs)[0] for i in range(0, len(x), _CHUNK)]
    return np.concatenate(parts) if parts else _forward(params, x, convs)[0]


def _cross_entropy(z: FloatArray, y: IntArray) -> tuple[float, FloatArray]:
    """Mean softmax cross-entropy and the softmax probabilities."""
    shifted = z - z.max(axis=1, keepdims=True)
    expd = exact.exp(shifted)
    total = expd.sum(axis=1, keepdims=True)
    prob = expd / total
    loss = float(np.mean(exact.log(total[:, 0]) - shifted[np.arange(len(y)), y]))
    return loss, prob


def loss_and_grads(
    params: Sequence[FloatArray], x: FloatArray, y: IntArray
) -> tuple[float, list[FloatArray]]:
    """Mean softmax cross-entropy and its gradient by a hand-written backward pass.

    Parameters
    ----------
    params : sequence of ndarray
        As from :func:`init_params` (names: :func:`param_names`).
    x : ndarray, shape (batch, H, W, 1)
        Images, channels last.
    y : ndarray of int, shape (batch,)
        Labels 0-9.

    Returns
    -------
    loss : float
    grads : list of ndarray
        Gradients of ``loss``, same shapes and order as ``params``: the list gradclip clips
        in place.
    """
    convs, saved = _layers(params)
    if len(y) > _CHUNK:
        # in chunks of 16 images, whose im2col buffers stay in the CPU's cache: 1.5x as fast
        # at a batch of 256 as chunks of 64 (AMD EPYC Zen 4); the same sums, in another order
        total = 0.0
        sums: list[FloatArray] = []
        for start in range(0, len(y), _CHUNK):
            part = slice(start, start + _CHUNK)
            loss, grads = _loss_and_grads(params, x[part], y[part], len(y), convs)
            total += loss
            sums = grads if not sums else [a + g for a, g in zip(sums, grads, strict=True)]
    else:
        total, sums = _loss_and_grads(params, x, y, len(y), convs)
    return total, _through_standardisation(params, sums, saved)


def _through_standardisation(
    params: Sequence[FloatArray], grads: list[FloatArray], saved: list[Any]
) -> list[FloatArray]:
    """The gradients of the raw weights and gains from those of the weights used."""
    if not _has_ws(params):
        return grads
    out = []
    for i, keep in enumerate(saved):
        g_w, g_b = grads[2 * i], grads[2 * i + 1]
        d_w, d_gain = standardise_backward(g_w, keep)
        out += [d_w, g_b, d_gain]
    return [*out, grads[-2], grads[-1]]


def _loss_and_grads(
    params: Sequence[FloatArray],
    x: FloatArray,
    y: IntArray,
    batch: int,
    convs: list[tuple[FloatArray, FloatArray]],
) -> tuple[float, list[FloatArray]]:
    """The sum of the cross-entropy over ``x`` divided by ``batch``, and its gradient with
    respect to the weights used (standardised or not): two arrays per convolution, then the
    final layer's two."""
    blocks = (len(convs) - 1) // 2
    z, pooled, cache = _forward(params, x, convs)
    loss, prob = _cross_entropy(z, y)
    loss *= len(y) / batch
    d_z = prob
    d_z[np.arange(len(y)), y] -= 1
    d_z /= batch
    grads: list[FloatArray | None] = [None] * (2 * len(convs) + 2)
    grads[-2] = exact.matmul(d_z.T, pooled)
    grads[-1] = d_z.sum(axis=0)
    h = cache[-1]
    hw = h.shape[1] * h.shape[2]
    d_h = exact.matmul(d_z, params[-2])[:, None, None, :] * (h > 0) * (1.0 / hw)
    for k in range(blocks - 1, -1, -1):
        h_in, cols1, u, cols2 = cache[1 + k]
        w1, w2 = convs[1 + 2 * k][0], convs[2 + 2 * k][0]
        g_w2, g_b2, d_v = _conv_backward(ALPHA * d_h, cols2, w2)
        assert d_v is not None
        g_w1, g_b1, d_r = _conv_backward(d_v * (u > 0), cols1, w1)
        assert d_r is not None
        grads[2 + 4 * k : 6 + 4 * k] = [g_w1, g_b1, g_w2, g_b2]
        d_h = d_h + d_r * (h_in > 0)
    grads[0], grads[1], _ = _conv_backward(d_h, cache[0], convs[0][0], need_input=False)
    out = [np.asarray(g, dtype=x.dtype) for g in grads]
    return loss, out


# --------------------------------------------------------------------------- the arms


def _agc(config: VisionConfig, params: Sequence[FloatArray]) -> ClipFn:
    # Brock et al. 2021, sec. 4.1: every parameter clipped unit-wise, except the final linear
    # layer (its weight and bias, the last two arrays). layout="OI" makes each output channel
    # of an (out, 3, 3, in) kernel a unit and each bias vector one unit, timm's rule; eps
    # floors the weight norm, so the zero-initialised biases may still move.
    body = list(params[:-2])

    def clip(grads: list[FloatArray]) -> tuple[float, bool]:
        norm = gradclip.get_total_norm(grads)
        result = gradclip.adaptive_grad_clip_(
            grads[:-2], body, config.clipping, config.agc_eps, return_result=True
        )
        assert result is not None
        return norm, result.clipped

    return clip


#: The arms, in table order.
ARMS: tuple[Arm, ...] = (
    no_clip_arm,
    global_arm,
    Arm(
        "agc",
        "adaptive (adaptive_grad_clip_, 0.01 per unit, final layer unclipped)",
        _agc,
        lambda c, g: f"{c.clipping:g} |w| per unit",
    ),
    per_tensor_arm,
    value_arm,
)
_ARM_BY_NAME = {arm.name: arm for arm in ARMS}


# --------------------------------------------------------------------------- training


@dataclass
class VisionResult(RunResult):
    """What one (arm, seed) run of the vision task did."""

    #: Accuracy and mean cross-entropy on the test images after the last step (NaN logits
    #: count as wrong).
    test_accuracy: float
    test_loss: float
    #: Total norm of the gradient after clipping, the one the update uses, per step.
    clipped_norm: npt.NDArray[np.float64]
    #: Steps after which the test set was evaluated, and the accuracy there.
    eval_steps: npt.NDArray[np.intp]
    eval_accuracy: npt.NDArray[np.float64]

    @property
    def outcome(self) -> str:
        """``diverged``, ``learned`` (test accuracy >= 90%), ``partly`` or ``chance``
        (below 20%)."""
        if self.diverged:
            return "diverged"
        if self.test_accuracy >= 0.9:
            return "learned"
        if self.test_accuracy >= 0.2:
            return "partly"
        return "chance"


def _batches(rng: np.random.Generator, n: int, batch: int) -> Any:
    """Index batches: epochs of a fresh permutation each, the last partial batch dropped."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch + 1, batch):
            yield order[start : start + batch]


def _evaluate(params: Sequence[FloatArray], x: FloatArray, y: IntArray) -> tuple[float, float]:
    z = logits(params, x)
    accuracy = float(np.mean(np.argmax(z, axis=1) == y)) if np.all(np.isfinite(z)) else 0.0
    if not np.all(np.isfinite(z)):
        return 0.0, math.nan
    return accuracy, _cross_entropy(z.astype(np.float64), y)[0]


def train(
    arm: Arm | str,
    seed: int,
    config: VisionConfig = VisionConfig(),
    report: Callable[[int], None] | None = None,
) -> VisionResult:
    """Train one network with one clipping arm; SGD with momentum on shuffled batches.

    ``seed`` fixes the initial weights and the batch order (separately), the same for every
    arm; the train/test split is the same for every seed. ``report`` is called with a number
    of steps done, every ``config.report_every`` steps.
    """
    if isinstance(arm, str):
        arm = _ARM_BY_NAME[arm]
    config.check()
    dtype = np.float32
    x_train, y_train, x_test, y_test = load_data(dtype)
    params = init_params(
        np.random.default_rng([seed, 0]), config.width, config.blocks, dtype, ws=config.ws
    )
    velocity = [np.zeros_like(p) for p in params]
    clip = arm.make(config, params)
    batches = _batches(np.random.default_rng([seed, 1]), len(y_train), config.batch)
    losses = np.full(config.steps, np.nan)
    norms = np.full(config.steps, np.nan)
    after = np.full(config.steps, np.nan)
    eval_steps: list[int] = []
    eval_accuracy: list[float] = []
    clipped = 0
    diverged_at: int | None = None
    stopped = False
    step = 0
    start = time.perf_counter()
    # a blow-up overflows float32 on purpose: it is detected from the loss and the norm
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for step in range(config.steps):
            index = next(batches)
            loss, grads = loss_and_grads(params, x_train[index], y_train[index])
            norm, fired = clip(grads)
            losses[step], norms[step] = loss, norm
            after[step] = gradclip.get_total_norm(grads) if fired else norm
            clipped += fired
            if diverged_at is None and not loss <= DIVERGED_LOSS:
                diverged_at = step
            if not (math.isfinite(loss) and math.isfinite(norm)):
                stopped = True  # a non-finite update would make every weight NaN
                break
            for p, g, v in zip(params, grads, velocity, strict=True):
                v *= config.momentum
                v += g
                p -= config.lr * v
            if (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
                eval_steps.append(step + 1)
                eval_accuracy.append(_evaluate(params, x_test, y_test)[0])
            if report is not None and (step + 1) % config.report_every == 0:
                report(config.report_every)
        accuracy, test_loss = _evaluate(params, x_test, y_test)
    eval_steps.append(step + 1)
    eval_accuracy.append(accuracy)
    return VisionResult(
        arm=arm.name,
        seed=seed,
        loss=losses,
        grad_norm=norms,
        clipped_norm=after,
        steps_run=step + 1,
        clipped=int(clipped),
        diverged_at=diverged_at,
        stopped=stopped,
        seconds=time.perf_counter() - start,
        test_accuracy=accuracy,
        test_loss=test_loss,
        eval_steps=np.array(eval_steps, dtype=np.intp),
        eval_accuracy=np.array(eval_accuracy, dtype=np.float64),
    )


def train_many(
    runs: Sequence[tuple[str, int]],
    config: VisionConfig = VisionConfig(),
    report: Callable[[int], None] | None = None,
) -> list[VisionResult]:
    """:func:`train` for each (arm name, seed), one after the other (the convolutions are
    large enough that stacking runs would gain nothing)."""
    return [train(arm, seed, config, report) for arm, seed in runs]


def run_demo(
    config: VisionConfig = VisionConfig(),
    arms: Sequence[Arm] = ARMS,
    jobs: int | None = None,
    progress: bool = True,
) -> list[VisionResult]:
    """Train every arm on every seed (``0 .. config.seeds - 1``) in ``jobs`` worker processes
    (0: in this process); the results ordered by arm, then seed."""
    config.check()
    load_data()  # fail here, before any worker starts, if scikit-learn is missing
    names = [arm.name for arm in arms]
    results = run_all(train_many, config, names, jobs, progress, group_size=1)
    return [results[arm.name, seed] for arm in arms for seed in range(config.seeds)]


# --------------------------------------------------------------------------- reporting


def header(config: VisionConfig) -> str:
    """The line above the table: what was trained."""
    return (
        f"Handwritten digits (scikit-learn load_digits, 8x8, 1500 train / {TEST_SIZE} test): "
        f"residual CNN without normalisation, {config.width} channels, {config.blocks} "
        f"blocks, batch {config.batch}, SGD lr {config.lr} momentum {config.momentum}; "
        f"{config.steps} steps x {seeds_phrase(config.seeds)} per arm"
    )


def _arm_rows(
    results: Sequence[VisionResult], arms: Sequence[Arm], config: VisionConfig
) -> list[list[str]]:
    probe = init_params(np.random.default_rng(0), config.width, config.blocks, ws=config.ws)
    rows = []
    for arm in arms:
        runs = [r for r in results if r.arm == arm.name]
        if not runs:
            continue
        outcomes = [r.outcome for r in runs]
        cells = common_cells(runs, arm)
        tally = ", ".join(
            f"{outcomes.count(kind)} {kind}"
            for kind in ("learned", "partly", "chance", "diverged")
            if outcomes.count(kind)
        )
        rows.append(
            [
                arm.name,
                arm.threshold(config, probe),
                cells["diverged"],
                f"{100 * float(np.median([r.test_accuracy for r in runs])):.1f}%",
                cells["clipped"],
                cells["peak |g|"],
                cells["time s"],
                tally,
            ]
        )
    return rows


def format_table(
    results: Sequence[VisionResult], config: VisionConfig, arms: Sequence[Arm] = ARMS
) -> str:
    """The summary table of a vision-demo run, and what each arm did."""
    head = ["arm", "clip at", "diverged", "test acc.", "clipped", "peak |g|", "time s", "seeds"]
    out = markdown_table(head, _arm_rows(results, arms, config))
    out += [
        "",
        f"test acc.: median over seeds, on the {TEST_SIZE} held-out images (chance: 10%); "
        f"diverged: training loss non-finite or above {DIVERGED_LOSS:.1f} (10x chance, "
        "ln 10) at some step; clipped: share of steps where clipping changed the gradient; "
        "peak |g|: largest total gradient norm before clipping; seeds: learned = test "
        "accuracy >= 90%, partly = 20-90%, chance = below 20%",
        f"agc: each unit's gradient norm capped at {config.clipping:g} x max(|w_unit|, "
        f"{config.agc_eps:g}); units: output channels of each convolution, each bias vector; "
        "the final linear layer is not clipped (Brock et al. 2021)",
        "",
        *_summary(results, config),
    ]
    return "\n".join(out)


#: What the demo claims at its default settings: (arm, what happened, test of one run).
CLAIMS: tuple[Claim, ...] = (
    ("none", "blew up", lambda r: r.diverged),
    ("global", "learned (test accuracy >= 90%)", lambda r: r.outcome == "learned"),
)


def _summary(results: Sequence[VisionResult], config: VisionConfig) -> list[str]:
    lines = []
    for name in dict.fromkeys(r.arm for r in results):
        runs = [r for r in results if r.arm == name]
        accuracy = sorted(100 * r.test_accuracy for r in runs)
        collapsed = sum(not r.diverged and r.outcome == "chance" for r in runs)
        line = f"{name}: test accuracy per seed " + ", ".join(f"{a:.1f}%" for a in accuracy)
        if collapsed:
            line += f"; {collapsed} collapsed to chance without diverging"
        lines.append(line)
    checked = replace(config, seeds=VisionConfig().seeds) == VisionConfig()
    intro = "expected with the default settings: no clipping blows up, global norm clipping learns"
    return [
        *lines,
        "",
        *expectation_lines(results, CLAIMS, intro, checked),
        *divergence_lines(results),
    ]


def save_figure(
    results: Sequence[VisionResult],
    config: VisionConfig,
    path: Any,
    arms: Sequence[Arm] = ARMS,
) -> Any:
    """Save the vision figure (loss, gradient norm, test accuracy against step)."""
    from .plot import FigureSpec, plot_runs

    spec = FigureSpec(
        steps=config.steps,
        suptitle=(
            f"gradclip demo: residual CNN without normalisation ({config.width} channels, "
            f"{config.blocks} blocks) on 8x8 digits, batch {config.batch}, SGD lr {config.lr}, "
            f"momentum {config.momentum}\nexact arithmetic: the same curves under any BLAS "
            f"kernel, CPU and thread count; thick: median of {seeds_phrase(config.seeds)}, "
            "thin: each seed"
        ),
        loss_title="Training loss, digits",
        loss_label="training loss (cross-entropy",
        loss_ref=(CHANCE_LOSS, "uniform guess (ln 10)"),
        loss_top=1e5,
        norm_ref=(config.max_norm, "max_norm"),
        accuracy_title="Test accuracy (297 held-out images)",
        accuracy_ref=(0.1, "chance"),
    )
    return plot_runs(results, path, arms=arms, spec=spec)
