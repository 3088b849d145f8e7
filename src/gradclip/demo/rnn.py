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

from .common import (
    Arm,
    ClipFn,
    common_cells,
    divergence_lines,
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

    steps: int = 5000
    seeds: int = 4
    seq_len: int = 40
    hidden: int = 64
    batch: int = 50
    lr: float = 0.05
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
    w_hh *= spectral_radius / np.max(np.abs(np.linalg.eigvals(w_hh)))
    w_xh = rng.standard_normal((hidden, 2))
    w_hy = rng.standard_normal((1, hidden)) / math.sqrt(hidden)
    params = [w_xh, w_hh, np.zeros(hidden), w_hy, np.zeros(1)]
    return [np.ascontiguousarray(p, dtype=dtype) for p in params]


def _param_shapes(hidden: int) -> list[tuple[int, ...]]:
    return [(hidden, 2), (hidden, hidden), (hidden,), (1, hidden), (1,)]


def _forward(params: Sequence[FloatArray], x: FloatArray) -> FloatArray:
    """Hidden states ``h[0..T]`` (``h[0] = 0``), shape (T + 1, batch, hidden)."""
    w_xh, w_hh, b_h = params[0], params[1], params[2]
    seq_len, batch, _ = x.shape
    h = np.empty((seq_len + 1, batch, w_hh.shape[0]), dtype=x.dtype)
    h[0] = 0
    # the input projection of all steps in one matmul; only the recurrence is sequential
    np.matmul(x, w_xh.T, out=h[1:])
    h[1:] += b_h
    w_hh_t = w_hh.T
    for t in range(seq_len):
        h[t + 1] += h[t] @ w_hh_t
        np.tanh(h[t + 1], out=h[t + 1])
    return h


def predict(params: Sequence[FloatArray], x: FloatArray) -> FloatArray:
    """The network's outputs for inputs ``x`` (seq_len, batch, 2), shape (batch, 1).

    Keeps one hidden state at a time, so large test batches need little memory.
    """
    w_xh, w_hh, b_h, w_hy, b_y = params
    h = np.zeros((x.shape[1], w_hh.shape[0]), dtype=x.dtype)
    for t in range(x.shape[0]):
        h = np.tanh(x[t] @ w_xh.T + b_h + h @ w_hh.T)
    out: FloatArray = h @ w_hy.T + b_y
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
    w_hh, w_hy = params[1], params[3]
    seq_len, batch, _ = x.shape
    hidden = w_hh.shape[0]
    h = _forward(params, x)
    err = h[seq_len] @ w_hy.T + params[4] - y
    loss = float(np.mean(err * err))

    d_out = err * (2.0 / batch)
    g_w_hy = d_out.T @ h[seq_len]
    g_b_y = d_out.sum(axis=0)
    # d_pre[t] = dL/d(pre-activation at step t+1); start from tanh' = 1 - h^2 for all steps
    d_pre = h[1:] * h[1:]
    np.subtract(1, d_pre, out=d_pre)
    d_h = d_out @ w_hy
    # Gradients that fade through saturated units end up as subnormal floats, and arithmetic
    # on those is many times slower on x86: flush them to zero, as torch.set_flush_denormal
    # does. Anything this small cannot change a sum of normal-sized terms.
    tiny = np.finfo(x.dtype).tiny * 2.0**16
    magnitude = np.empty_like(d_h)
    is_tiny = np.empty(d_h.shape, dtype=bool)
    for t in range(seq_len - 1, -1, -1):
        d_pre[t] *= d_h
        if t:
            np.matmul(d_pre[t], w_hh, out=d_h)
            np.abs(d_h, out=magnitude)
            np.less(magnitude, tiny, out=is_tiny)
            np.copyto(d_h, 0, where=is_tiny)
    # the weight gradients sum over all steps: one matmul each instead of one per step
    flat = d_pre.reshape(-1, hidden)
    g_w_hh = flat.T @ h[:seq_len].reshape(-1, hidden)
    g_w_xh = flat.T @ x.reshape(-1, x.shape[2])
    g_b_h = flat.sum(axis=0)
    return loss, [g_w_xh, g_w_hh, g_b_h, g_w_hy, g_b_y]


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
    if isinstance(arm, str):
        arm = _ARM_BY_NAME[arm]
    config.check()
    dtype = np.float32
    params = init_params(
        np.random.default_rng([seed, 0]), config.hidden, config.spectral_radius, dtype
    )
    velocity = [np.zeros_like(p) for p in params]
    clip = arm.make(config, velocity)  # velocity is shaped like the gradients
    data = np.random.default_rng([seed, 1])
    losses = np.full(config.steps, np.nan)
    norms = np.full(config.steps, np.nan)
    clipped = 0
    diverged_at: int | None = None
    stopped = False
    step = 0
    start = time.perf_counter()
    # An exploding run overflows float32 on purpose: divergence is detected below from the
    # loss and the norm, so NumPy's overflow warnings would only be noise.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for step in range(config.steps):
            x, y = adding_batch(data, config.batch, config.seq_len, dtype)
            loss, grads = loss_and_grads(params, x, y)
            norm, fired = clip(grads)
            losses[step], norms[step] = loss, norm
            clipped += fired
            if diverged_at is None and not loss <= DIVERGED_LOSS:
                diverged_at = step
            if not (math.isfinite(loss) and math.isfinite(norm)):
                # a non-finite update would make every weight NaN: the run is over
                stopped = True
                break
            for p, g, v in zip(params, grads, velocity, strict=True):
                v *= config.momentum
                v += g
                p -= config.lr * v
            if report is not None and (step + 1) % config.report_every == 0:
                report(config.report_every)
        x_test, y_test = adding_batch(
            np.random.default_rng([seed, 2]), config.test_size, config.seq_len, dtype
        )
        squared = (predict(params, x_test).astype(np.float64) - y_test) ** 2
    seconds = time.perf_counter() - start
    return RunResult(
        arm=arm.name,
        seed=seed,
        loss=losses,
        grad_norm=norms,
        steps_run=step + 1,
        clipped=int(clipped),
        diverged_at=diverged_at,
        stopped=stopped,
        test_mse=float(np.mean(squared)),
        # NaN predictions count as errors: only a squared error below the bound solves
        error_rate=float(np.mean(~(squared < SOLVED_SQUARED_ERROR))),
        seconds=seconds,
    )


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
    results = run_all(train, config, [arm.name for arm in arms], jobs, progress)
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
    claims: list[tuple[str, str, Callable[[RunResult], bool]]] = [
        ("none", "blew up", lambda r: r.diverged),
        ("global", "learned the task", lambda r: r.outcome == "learned"),
    ]
    checked = replace(config, seeds=DemoConfig().seeds) == DemoConfig()
    lines = [
        "expected with the default settings: no clipping blows up, global norm clipping "
        "learns the task" + ("" if checked else " (not checked: the settings differ)")
    ]
    for name, what, happened in claims:
        runs = [r for r in results if r.arm == name]
        if not runs:
            continue
        hits = sum(happened(r) for r in runs)
        line = f"{name}: {what} on {hits}/{len(runs)} seeds"
        if checked:
            line += ": as expected" if 2 * hits > len(runs) else ": NOT as expected"
        lines.append(line)
    return lines + divergence_lines(results)


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
            f"{config.momentum}\nthick: median of {seeds_phrase(config.seeds)}, thin: each seed"
        ),
        loss_title=f"Training loss, adding problem with T = {config.seq_len}",
        loss_label="training loss (MSE",
        loss_ref=(BASELINE_MSE, "always answering 0.5"),
        loss_top=10.0,
        norm_ref=(config.max_norm, "max_norm"),
    )
    return plot_runs(results, path, arms=arms, spec=spec)
