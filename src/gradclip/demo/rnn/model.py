"""The RNN task's data and network: the adding problem, a tanh RNN, its forward pass and its
hand-written backpropagation through time, for one network or a stack of them. Every product
and tanh is :mod:`gradclip.demo.exact`'s, so the float32 results are the same bits on every
machine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import exact

__all__ = [
    "BASELINE_MSE",
    "PARAM_NAMES",
    "adding_batch",
    "init_params",
    "loss_and_grads",
    "predict",
]

FloatArray = npt.NDArray[np.floating[Any]]

#: Mean squared error of always predicting 0.5: the variance of the mean of two U(0, 1).
BASELINE_MSE = 1.0 / 24.0
#: Names of the parameter (and gradient) arrays, in order.
PARAM_NAMES = ("W_xh", "W_hh", "b_h", "W_hy", "b_y")


def adding_batch(
    rng: np.random.Generator, batch: int, seq_len: int, dtype: npt.DTypeLike = np.float32
) -> tuple[FloatArray, FloatArray]:
    """Draw a batch of the adding problem.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    batch, seq_len : int
        Number of sequences and their length (at least 2).
    dtype : dtype, optional
        Floating-point type of the arrays.

    Returns
    -------
    x : ndarray, shape (seq_len, batch, 2)
        Time-major inputs: ``x[t, b] = (value, marker)``.
    y : ndarray, shape (batch, 1)
        Targets: the mean of the two marked values.

    Examples
    --------
    >>> x, y = adding_batch(np.random.default_rng(0), 3, 10)
    >>> x.shape, y.shape, x[:, :, 1].sum(axis=0).tolist()
    ((10, 3, 2), (3, 1), [2.0, 2.0, 2.0])
    """
    first_end = max(1, seq_len // 10)  # first marker in the first 10%
    second_end = max(first_end + 1, seq_len // 2)  # second one in the next 40%
    values = rng.random((batch, seq_len))
    rows = np.arange(batch)
    first = rng.integers(0, first_end, batch)
    second = rng.integers(first_end, second_end, batch)
    x = np.zeros((seq_len, batch, 2), dtype=dtype)
    x[:, :, 0] = values.T
    x[first, rows, 1] = 1
    x[second, rows, 1] = 1
    y = 0.5 * (values[rows, first] + values[rows, second])
    return x, y[:, None].astype(dtype)


def init_params(
    rng: np.random.Generator,
    hidden: int,
    spectral_radius: float,
    dtype: npt.DTypeLike = np.float32,
) -> list[FloatArray]:
    """Initial weights ``[W_xh, W_hh, b_h, W_hy, b_y]`` of a tanh RNN with two inputs.

    ``W_hh`` is Gaussian, rescaled so that its spectral radius is exactly
    ``spectral_radius``: above 1 is the exploding regime of Pascanu et al. (2013).
    """
    w_hh = rng.standard_normal((hidden, hidden))
    # The eigenvalues come from LAPACK, whose last bits follow the BLAS kernel: the radius is
    # rounded to 20 significant bits before use, so the weights are the same on every
    # machine unless LAPACK's error (~1e-15) reaches a rounding boundary (odds ~1e-8 a seed).
    mantissa, exponent = math.frexp(float(np.max(np.abs(np.linalg.eigvals(w_hh)))))
    radius = math.ldexp(round(math.ldexp(mantissa, 20)), exponent - 20)
    w_hh *= spectral_radius / radius
    w_xh = rng.standard_normal((hidden, 2))
    w_hy = rng.standard_normal((1, hidden)) / math.sqrt(hidden)
    params = [w_xh, w_hh, np.zeros(hidden), w_hy, np.zeros(1)]
    return [np.ascontiguousarray(p, dtype=dtype) for p in params]


def _param_shapes(hidden: int) -> list[tuple[int, ...]]:
    return [(hidden, 2), (hidden, hidden), (hidden,), (1, hidden), (1,)]


def _forward(params: Sequence[FloatArray], x: FloatArray) -> FloatArray:
    """Hidden states ``h[:, 0..T]`` (``h[:, 0] = 0``) of a stack of R networks, each on its
    own batch: parameters ``(R, ...)``, ``x`` (R, T, batch, 2); shape (R, T + 1, batch,
    hidden). The products and tanh are :mod:`gradclip.demo.exact`'s."""
    w_xh, w_hh, b_h = params[0], params[1], params[2]
    runs, seq_len, batch, _ = x.shape
    hidden = w_hh.shape[-1]
    h = np.empty((runs, seq_len + 1, batch, hidden), dtype=x.dtype)
    h[:, 0] = 0
    # the input projection of all steps in one product; only the recurrence is sequential
    proj = exact.matmul(x.reshape(runs, seq_len * batch, 2), w_xh.transpose(0, 2, 1))
    proj = proj.reshape(runs, seq_len, batch, hidden) + b_h[:, None, None, :]
    # the recurrent weights are rounded for the exact product once, not once per step
    w_hh_t: Any = w_hh.transpose(0, 2, 1)
    if x.dtype == np.float32:
        w_hh_t = exact.prepare(w_hh_t, hidden)
    for t in range(seq_len):
        state: Any = h[:, t]
        if x.dtype == np.float32:
            state = exact.prepare(state, hidden, bound=1.0)  # tanh outputs: |h| <= 1
        h[:, t + 1] = exact.tanh(proj[:, t] + exact.matmul(state, w_hh_t))
    return h


def _stacked(params: Sequence[FloatArray]) -> list[FloatArray]:
    return [p[None] for p in params]


def predict(params: Sequence[FloatArray], x: FloatArray) -> FloatArray:
    """The network's outputs for inputs ``x`` (seq_len, batch, 2), shape (batch, 1).

    Keeps one hidden state at a time, so large test batches need little memory.
    """
    w_xh, w_hh, b_h, w_hy, b_y = params
    w_hh_t: Any = w_hh.T
    if x.dtype == np.float32:
        w_hh_t = exact.prepare(w_hh_t, w_hh.shape[0])
    h = np.zeros((x.shape[1], w_hh.shape[0]), dtype=x.dtype)
    for t in range(x.shape[0]):
        h = exact.tanh(exact.matmul(x[t], w_xh.T) + b_h + exact.matmul(h, w_hh_t))
    out: FloatArray = exact.matmul(h, w_hy.T) + b_y
    return out


def loss_and_grads(
    params: Sequence[FloatArray], x: FloatArray, y: FloatArray
) -> tuple[float, list[FloatArray]]:
    """Mean squared error and its gradient by backpropagation through time.

    The network reads the whole sequence, ``h[t] = tanh(W_xh x[t] + W_hh h[t-1] + b_h)``
    from ``h[0] = 0``, then predicts ``W_hy h[T] + b_y``.

    Parameters
    ----------
    params : sequence of ndarray
        ``[W_xh (H, 2), W_hh (H, H), b_h (H,), W_hy (1, H), b_y (1,)]``.
    x : ndarray, shape (T, batch, 2)
        Inputs, as from :func:`adding_batch`.
    y : ndarray, shape (batch, 1)
        Targets.

    Returns
    -------
    loss : float
        ``mean((prediction - y) ** 2)``.
    grads : list of ndarray
        Gradients of ``loss``, same shapes and order as ``params``: the list gradclip
        clips in place.
    """
    losses, grads = _loss_and_grads(_stacked(params), x[None], y[None])
    return float(losses[0]), [g[0] for g in grads]


def _loss_and_grads(
    params: Sequence[FloatArray], x: FloatArray, y: FloatArray
) -> tuple[npt.NDArray[np.float64], list[FloatArray]]:
    """:func:`loss_and_grads` of a stack of R networks (parameters ``(R, ...)``), each on its
    own batch (``x`` (R, T, batch, 2), ``y`` (R, batch, 1)): the R losses and the gradients,
    stacked the same way. Nothing mixes the networks: each one's result is the same bits
    whatever else is in the stack."""
    w_hh, w_hy = params[1], params[3]
    runs, seq_len, batch, _ = x.shape
    hidden = w_hh.shape[-1]
    h = _forward(params, x)
    err = exact.matmul(h[:, seq_len], w_hy.transpose(0, 2, 1)) + params[4][:, None, :] - y
    err64 = err.astype(np.float64)
    losses = np.mean(err64 * err64, axis=(1, 2))

    d_out = err * (2.0 / batch)
    g_w_hy = exact.matmul(d_out.transpose(0, 2, 1), h[:, seq_len])
    g_b_y = d_out.sum(axis=1)
    # d_pre[:, t] = dL/d(pre-activation at step t+1); start from tanh' = 1 - h^2
    d_pre = h[:, 1:] * h[:, 1:]
    np.subtract(1, d_pre, out=d_pre)
    d_h = d_out * w_hy  # (R, batch, 1) x (R, 1, H): one product per element, no sum
    w_hh_p: Any = exact.prepare(w_hh, hidden) if x.dtype == np.float32 else w_hh
    # Gradients that fade through saturated units end up as subnormal floats, and arithmetic
    # on those is many times slower on x86: flush them to zero, as torch.set_flush_denormal
    # does. Anything this small cannot change a sum of normal-sized terms.
    tiny = np.finfo(x.dtype).tiny * 2.0**16
    for t in range(seq_len - 1, -1, -1):
        d_pre[:, t] *= d_h
        if t:
            d_h = exact.matmul(d_pre[:, t], w_hh_p)
            np.copyto(d_h, 0, where=np.abs(d_h) < tiny)
    # the weight gradients sum over all steps: one product each instead of one per step
    flat_t: Any = d_pre.reshape(runs, -1, hidden).transpose(0, 2, 1)
    states: Any = h[:, :seq_len].reshape(runs, -1, hidden)
    inputs: Any = x.reshape(runs, -1, x.shape[3])
    if x.dtype == np.float32:
        k = states.shape[1]
        flat_t = exact.prepare(flat_t, k)  # once for both products
        states = exact.prepare(states, k, bound=1.0)  # tanh outputs
        inputs = exact.prepare(inputs, k, bound=1.0)  # values in [0, 1) and markers
    g_w_hh = exact.matmul(flat_t, states)
    g_w_xh = exact.matmul(flat_t, inputs)
    g_b_h = d_pre.sum(axis=(1, 2))
    grads = [g_w_xh, g_w_hh, g_b_h, g_w_hy, g_b_y]
    return losses, [np.ascontiguousarray(g, dtype=x.dtype) for g in grads]
