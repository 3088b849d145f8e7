"""The RNN task's settings, its clipping arms and its training loop: SGD with momentum, every
(arm, seed) run of a worker side by side as one stack of networks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

import gradclip

from ..common import (
    Arm,
    ClipFn,
    check_settings,
    global_arm,
    no_clip_arm,
    per_tensor_arm,
    value_arm,
)
from ..common import RunResult as _RunBase
from ..runner import run_all
from .model import (
    BASELINE_MSE,
    PARAM_NAMES,
    FloatArray,
    _loss_and_grads,
    adding_batch,
    init_params,
    predict,
)

__all__ = [
    "ARMS",
    "DIVERGED_LOSS",
    "LEARNED_MSE",
    "QUICK",
    "SOLVED_SQUARED_ERROR",
    "DemoConfig",
    "RunResult",
    "run_demo",
    "train",
    "train_many",
]

#: A test sequence is solved when its squared error is below this (as in the paper).
SOLVED_SQUARED_ERROR = 0.04
#: A seed has learned the task when its test MSE is below this, a quarter of the baseline.
LEARNED_MSE = 0.01
#: A training loss above this (100x the baseline) counts as a blow-up.
DIVERGED_LOSS = 100.0 * BASELINE_MSE


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run; every arm and seed uses the same ones.

    The defaults were chosen by experiment so that the unclipped runs blow up while the
    globally clipped runs learn the task, within a minute on two cores (see the package
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
        counts = ("steps", "seeds", "hidden", "batch", "test_size", "report_every")
        check_settings(self, counts, ("lr", "spectral_radius", "max_norm"))
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {self.seq_len}")


#: ``--quick``: a smoke run. Too short to learn the task or to reach the later blow-ups; seed 1
#: of the unclipped arm blows up within it.
QUICK = DemoConfig(steps=300, seeds=2, test_size=500)


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
