"""The RNN task of ``python -m gradclip demo``: exploding gradients tamed on the adding problem.

Trains a vanilla tanh RNN on the adding problem with plain NumPy and a hand-written
backpropagation through time, the kind of custom autograd code gradclip is for, and runs the
same seeds (same initialisation, same data) under several clipping rules:

- no clipping;
- global norm clipping, :func:`gradclip.clip_grad_norm_` (the rule the paper introduced);
- local, per-array norm clipping, :func:`gradclip.clip_grad_norm_per_tensor_`;
- element-wise value clipping, :func:`gradclip.clip_grad_value_`;
- adaptive clipping, :class:`gradclip.AutoClip` with its defaults (Seetharaman et al., 2020:
  the threshold is the 10th percentile of every gradient norm seen so far).

Other clippers (ZClip, say) are one more entry in :data:`ARMS` each.

The task and the failure mode are those of Pascanu, Mikolov and Bengio, "On the difficulty of
training recurrent neural networks", ICML 2013 (PMLR 28(3):1310-1318, arXiv:1211.5063): the
recurrent weights start with spectral radius above 1, the regime in which the loss surface
has "cliffs" where the gradient norm jumps by orders of magnitude; one unclipped step off such
a cliff throws the parameters far away. The adding problem (Hochreiter and Schmidhuber, 1997)
presents a sequence of (value, marker) pairs, values uniform on [0, 1], exactly two markers:
the first within the first 10% of the sequence, the second within the next 40%. The target is
the mean of the two marked values. Always answering 0.5 gives a mean squared error of 1/24
(about 0.042), the baseline to beat; a sequence counts as solved when its squared error is
below 0.04.

The three fixed-threshold arms bound the update by the same amount: with ``max_norm`` ``c``,
global clipping caps the total norm at ``c``; per-array clipping caps each of the ``k`` arrays
at ``c / sqrt(k)``; value clipping caps each of the ``n`` elements at ``c / sqrt(n)``. In each
of them the clipped gradient therefore has a total norm of at most ``c``, and the comparison
is about the direction each rule keeps, not about step size. AutoClip picks its own threshold
from the history of norms and ignores ``max_norm``.

Nothing in the printed table is fixed in advance: every number comes from the runs, and the
lines under it say whether, with the default settings, the unclipped runs blew up and the
globally clipped runs learned the task, as they are expected to.

Why these defaults (see :class:`DemoConfig`): SGD with momentum 0.9 at learning rate 0.05 and
``W_hh`` at spectral radius 1.2. In the sweeps behind them (8 seeds), the unclipped runs at
this rate blew up on 7: three within the first hundred steps, four after 1,600-3,100 steps
spent near the baseline, when gradient spikes of 10-20 times the usual norm appear; unclipped,
each spike kicks the weights further, and within a few dozen steps the norm passes 1e3. What
follows differs: in the default run (4 seeds) one run overflowed 33 steps after diverging,
one 424 steps after, and one never did (its loss stayed finite, at 1e14 and more, to the
end); the table says which, per seed. The globally clipped runs see the same spikes, cut
them to ``max_norm``, and learned the task on 6 of the 8 seeds (test MSE 0.001-0.005). A
smaller learning rate (0.03) lets most unclipped runs learn, slowly, with an occasional loss
spike: clipping is what makes the faster rate usable. Sequences of 40 rather than the paper's
50 or more keep the run within 90 seconds: at 50, half of the clipped runs were still at the
baseline after 5,000 steps.
"""

from __future__ import annotations

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
    common_cells,
    divergence_lines,
    expectation_lines,
    fmt,
    global_arm,
    markdown_table,
    no_clip_arm,
    per_tensor_arm,
    seeds_phrase,
    value_arm,
)
from .common import RunResult as _RunBase
from .runner import run_all

__all__ = [
    "ARMS",
    "BASELINE_MSE",
    "QUICK",
    "Arm",
    "DemoConfig",
    "RunResult",
    "adding_batch",
    "format_table",
    "header",
    "init_params",
    "loss_and_grads",
    "predict",
    "run_demo",
    "save_figure",
    "train",
    "train_many",
]

FloatArray = npt.NDArray[np.floating[Any]]

#: Mean squared error of always predicting 0.5: the variance of the mean of two U(0, 1).
BASELINE_MSE = 1.0 / 24.0
#: A test sequence is solved when its squared error is below this (as in the paper).
SOLVED_SQUARED_ERROR = 0.04
#: A seed has learned the task when its test MSE is below this, a quarter of the baseline.
LEARNED_MSE = 0.01
#: A training loss above this (100x the baseline) counts as a blow-up.
DIVERGED_LOSS = 100.0 * BASELINE_MSE
#: Names of the parameter (and gradient) arrays, in order.
PARAM_NAMES = ("W_xh", "W_hh", "b_h", "W_hy", "b_y")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run; every arm and seed uses the same ones.

    The defaults were chosen by experiment so that the unclipped runs blow up while the
    globally clipped runs learn the task, within 90 seconds on two cores (see the module
    docstring). ``max_norm`` is the bound on the clipped gradient's total norm in every
    clipping arm.
    """

    steps: int = 3000
    seeds: int = 4
    seq_len: int = 20
    hidden: int = 32
    batch: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    spectral_radius: float = 1.2
    max_norm: float = 0.5
    test_size: int = 2000
    #: Training steps between two progress reports.
    report_every: int = 50

    def check(self) -> None:
        """Raise ValueError when a setting is out of range."""
        for name in ("steps", "seeds", "hidden", "batch", "test_size", "report_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {self.seq_len}")
        for name in ("lr", "spectral_radius", "max_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


#: ``--quick``: a smoke run. Too short to learn the task or to reach the later blow-ups; seed 1
#: of the unclipped arm blows up within it.
QUICK = DemoConfig(steps=300, seeds=2, test_size=500)


# --------------------------------------------------------------------------- data and model


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


# --------------------------------------------------------------------------- the arms


def _autoclip(config: DemoConfig, like: Sequence[FloatArray]) -> ClipFn:
    # gradclip's defaults, which are the paper's: the 10th percentile of every norm so far
    clipper = gradclip.AutoClip()

    def clip(grads: list[FloatArray]) -> tuple[float, bool]:
        result = clipper(grads)
        return result.total_norm, result.clipped

    return clip


#: The arms, in table order. Another adaptive clipper (ZClip, say) is one more entry: its
#: ``make`` creates a fresh clipper per run, and its clip function returns the clipper's
#: pre-clip norm and whether it clipped.
ARMS: tuple[Arm, ...] = (
    no_clip_arm,
    global_arm,
    per_tensor_arm,
    value_arm,
    Arm("autoclip", "adaptive (AutoClip, 10th percentile)", _autoclip, lambda c, g: "10th pct."),
)
_ARM_BY_NAME = {arm.name: arm for arm in ARMS}


# --------------------------------------------------------------------------- training


@dataclass
class RunResult(_RunBase):
    """What one (arm, seed) training run of the RNN task did."""

    test_mse: float
    error_rate: float

    @property
    def outcome(self) -> str:
        """``diverged``, ``learned``, ``partly`` or ``baseline`` (no better than 0.5)."""
        if self.diverged:
            return "diverged"
        if self.test_mse < LEARNED_MSE:
            return "learned"
        if self.test_mse < 0.9 * BASELINE_MSE:
            return "partly"
        return "baseline"


def train(
    arm: Arm | str,
    seed: int,
    config: DemoConfig = DemoConfig(),
    report: Callable[[int], None] | None = None,
) -> RunResult:
    """Train one network with one clipping arm; SGD with momentum on fresh batches.

    Parameters
    ----------
    arm : Arm or str
        The clipping rule, or its name in :data:`ARMS`.
    seed : int
        Seeds the initialisation, the training batches and the test set, separately, so
        every arm sees the same network and the same data for a given seed.
    config : DemoConfig, optional
        Sizes, learning rate, threshold and number of steps.
    report : callable, optional
        Called with a number of steps done, every ``config.report_every`` steps.

    Returns
    -------
    RunResult
    """
    name = arm if isinstance(arm, str) else arm.name
    return train_many([(name, seed)], config, report)[0]


def train_many(
    runs: Sequence[tuple[str, int]],
    config: DemoConfig = DemoConfig(),
    report: Callable[[int], None] | None = None,
) -> list[RunResult]:
    """Train several (arm name, seed) runs side by side, as one stack of networks.

    Each step does the forward and backward pass of every run still going in one set of
    stacked array operations (the Python work of the 40-step recurrence is shared), then
    clips each run's gradients with its own arm. Every run's result is the same bits as
    :func:`train` alone gives: nothing in the arithmetic mixes the networks. ``report`` is
    called with a number of run-steps done.
    """
    config.check()
    arms = [_ARM_BY_NAME[name] for name, _ in runs]
    dtype = np.float32
    count = len(runs)
    inits = [
        init_params(np.random.default_rng([seed, 0]), config.hidden, config.spectral_radius, dtype)
        for _, seed in runs
    ]
    params = [np.stack([p[i] for p in inits]) for i in range(len(PARAM_NAMES))]
    velocity = [np.zeros_like(p) for p in params]
    clips = [arm.make(config, [v[r] for v in velocity]) for r, arm in enumerate(arms)]
    data = [np.random.default_rng([seed, 1]) for _, seed in runs]
    losses = np.full((count, config.steps), np.nan)
    norms = np.full((count, config.steps), np.nan)
    clipped = [0] * count
    diverged_at: list[int | None] = [None] * count
    steps_run = [config.steps] * count
    stopped = [False] * count
    final: list[list[FloatArray] | None] = [None] * count
    active = list(range(count))  # the runs still going, in stack order
    start = time.perf_counter()
    # An exploding run overflows float32 on purpose: divergence is detected below from the
    # loss and the norm, so NumPy's overflow warnings would only be noise.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for step in range(config.steps):
            if not active:
                break
            batches = [adding_batch(data[r], config.batch, config.seq_len, dtype) for r in active]
            x = np.stack([b[0] for b in batches])
            y = np.stack([b[1] for b in batches])
            step_losses, grads = _loss_and_grads(params, x, y)
            keep = []
            for row, r in enumerate(active):
                loss = float(step_losses[row])
                norm, fired = clips[r]([g[row] for g in grads])
                losses[r, step], norms[r, step] = loss, norm
                clipped[r] += fired
                if diverged_at[r] is None and not loss <= DIVERGED_LOSS:
                    diverged_at[r] = step
                if math.isfinite(loss) and math.isfinite(norm):
                    keep.append(row)
                else:  # a non-finite update would make every weight NaN: the run is over
                    stopped[r], steps_run[r] = True, step + 1
                    final[r] = [p[row].copy() for p in params]
            if len(keep) < len(active):
                active = [active[row] for row in keep]
                params, velocity, grads = (
                    [a[keep] for a in arrays] for arrays in (params, velocity, grads)
                )
            for p, g, v in zip(params, grads, velocity, strict=True):
                v *= config.momentum
                v += g
                p -= config.lr * v
            if report is not None and (step + 1) % config.report_every == 0:
                report(config.report_every * len(active))
        for row, r in enumerate(active):
            final[r] = [p[row] for p in params]
    seconds = (time.perf_counter() - start) / count
    results = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for r, (arm, (_, seed)) in enumerate(zip(arms, runs, strict=True)):
            weights = final[r]
            assert weights is not None
            x_test, y_test = adding_batch(
                np.random.default_rng([seed, 2]), config.test_size, config.seq_len, dtype
            )
            squared = (predict(weights, x_test).astype(np.float64) - y_test) ** 2
            results.append(
                RunResult(
                    arm=arm.name,
                    seed=seed,
                    loss=losses[r],
                    grad_norm=norms[r],
                    steps_run=steps_run[r],
                    clipped=int(clipped[r]),
                    diverged_at=diverged_at[r],
                    stopped=stopped[r],
                    test_mse=float(np.mean(squared)),
                    # NaN predictions count as errors: only a squared error below the bound
                    # solves
                    error_rate=float(np.mean(~(squared < SOLVED_SQUARED_ERROR))),
                    seconds=seconds,
                )
            )
    return results


def run_demo(
    config: DemoConfig = DemoConfig(),
    arms: Sequence[Arm] = ARMS,
    jobs: int | None = None,
    progress: bool = True,
) -> list[RunResult]:
    """Train every arm on every seed, in ``jobs`` worker processes.

    Parameters
    ----------
    config : DemoConfig, optional
        Settings shared by all runs; seeds ``0 .. config.seeds - 1`` are used.
    arms : sequence of Arm, optional
        The arms; they must be entries of :data:`ARMS` (workers look them up by name).
    jobs : int, optional
        Worker processes; 0 trains in this process. Default: the cores available, at most
        one per run.
    progress : bool, optional
        Show a progress bar (tqdm) on stderr.

    Returns
    -------
    list of RunResult
        Ordered by arm, then seed.
    """
    config.check()
    results = run_all(train_many, config, [arm.name for arm in arms], jobs, progress)
    return [results[arm.name, seed] for arm in arms for seed in range(config.seeds)]


# --------------------------------------------------------------------------- reporting


_seeds = seeds_phrase  # the name the command line used before the tasks shared it


def _arm_rows(
    results: Sequence[RunResult], arms: Sequence[Arm], config: DemoConfig
) -> list[list[str]]:
    probe = [np.empty(shape) for shape in _param_shapes(config.hidden)]
    rows = []
    for arm in arms:
        runs = [r for r in results if r.arm == arm.name]
        if not runs:
            continue
        outcomes = [r.outcome for r in runs]
        cells = common_cells(runs, arm)
        tally = ", ".join(
            f"{outcomes.count(kind)} {kind}"
            for kind in ("learned", "partly", "baseline", "diverged")
            if outcomes.count(kind)
        )
        test = np.array([r.test_mse for r in runs])
        rows.append(
            [
                arm.name,
                arm.threshold(config, probe),
                cells["diverged"],
                fmt(float(np.median(np.where(np.isnan(test), np.inf, test)))),
                f"{100 * float(np.median([r.error_rate for r in runs])):.1f}%",
                cells["clipped"],
                cells["peak |g|"],
                cells["time s"],
                tally,
            ]
        )
    return rows


def format_table(
    results: Sequence[RunResult], config: DemoConfig, arms: Sequence[Arm] = ARMS
) -> str:
    """The summary table of a demo run, plus what was expected and whether it happened."""
    header = [
        "arm",
        "clip at",
        "diverged",
        "test MSE",
        "error rate",
        "clipped",
        "peak |g|",
        "time s",
        "seeds",
    ]
    out = markdown_table(header, _arm_rows(results, arms, config))
    out += [
        "",
        f"test MSE and error rate: median over seeds, on {config.test_size} fresh sequences "
        f"(always answering 0.5: MSE 1/24 = {BASELINE_MSE:.3f}, error rate ~36%); "
        f"error = squared error >= {SOLVED_SQUARED_ERROR}",
        f"diverged: training loss non-finite or above {DIVERGED_LOSS:.2f} (100x the "
        "baseline) at some step; clipped: share of steps where clipping changed the "
        "gradient; peak |g|: largest total gradient norm before clipping; "
        f"seeds: learned = test MSE < {LEARNED_MSE}, partly = below 0.9x baseline",
        "autoclip: threshold = 10th percentile of all gradient norms so far (AutoClip's "
        "default), independent of max_norm",
        "",
        *_verdicts(results, config),
    ]
    return "\n".join(out)


def _verdicts(results: Sequence[RunResult], config: DemoConfig) -> list[str]:
    claims: list[Claim] = [
        ("none", "blew up", lambda r: r.diverged),
        ("global", "learned the task", lambda r: r.outcome == "learned"),
    ]
    checked = replace(config, seeds=DemoConfig().seeds) == DemoConfig()
    intro = (
        "expected with the default settings: no clipping blows up, global norm clipping "
        "learns the task"
    )
    return expectation_lines(results, claims, intro, checked) + divergence_lines(results)


def header(config: DemoConfig) -> str:
    """The line above the table: what was trained."""
    return (
        f"Adding problem (Pascanu, Mikolov & Bengio 2013): tanh RNN, {config.hidden} units, "
        f"sequences of {config.seq_len}, batch {config.batch}, SGD lr {config.lr} momentum "
        f"{config.momentum}, W_hh spectral radius {config.spectral_radius}; "
        f"{config.steps} steps x {seeds_phrase(config.seeds)} per arm"
    )


def save_figure(
    results: Sequence[RunResult],
    config: DemoConfig,
    path: Any,
    arms: Sequence[Arm] = ARMS,
) -> Any:
    """Save the RNN figure: training loss and gradient norm against step, one line per arm."""
    from .plot import FigureSpec, plot_runs

    spec = FigureSpec(
        steps=config.steps,
        suptitle=(
            f"gradclip demo: tanh RNN ({config.hidden} units), SGD lr {config.lr}, momentum "
            f"{config.momentum}; exact arithmetic: the same curves under any BLAS kernel, CPU "
            f"and thread count\nthick: median of {seeds_phrase(config.seeds)}, thin: each seed"
        ),
        loss_title=f"Training loss, adding problem with T = {config.seq_len}",
        loss_label="training loss (MSE",
        loss_ref=(BASELINE_MSE, "always answering 0.5"),
        loss_top=10.0,
        norm_ref=(config.max_norm, "max_norm"),
    )
    return plot_runs(results, path, arms=arms, spec=spec)
