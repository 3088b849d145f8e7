"""The vision task's network: a residual CNN without normalisation layers, its scaled weight
standardisation, its convolutions (im2col and one product) and its hand-written backward pass.
Every product goes through :mod:`gradclip.demo.exact`."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import exact
from .data import IntArray

__all__ = [
    "ALPHA",
    "CLASSES",
    "RELU_GAIN",
    "WS_EPS",
    "init_params",
    "logits",
    "loss_and_grads",
    "param_names",
    "standardise",
    "standardise_backward",
]

FloatArray = npt.NDArray[np.floating[Any]]

CLASSES = 10
#: Residual branch scale.
ALPHA = 0.2
#: Images per forward/backward pass; larger batches are done in chunks of this many.
_CHUNK = 16


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
