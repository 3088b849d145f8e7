"""The vision task's settings, its clipping arms (the fixed-threshold ones and AGC) and its
training loop: SGD with momentum on shuffled batches, one run at a time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

import gradclip

from ..common import (
    Arm,
    ClipFn,
    RunResult,
    check_settings,
    global_arm,
    no_clip_arm,
    per_tensor_arm,
    value_arm,
)
from ..runner import run_all
from .data import TEST_SIZE, IntArray, load_data
from .network import CLASSES, FloatArray, _cross_entropy, init_params, logits, loss_and_grads

__all__ = [
    "ARMS",
    "CHANCE_LOSS",
    "DIVERGED_LOSS",
    "QUICK",
    "VisionConfig",
    "VisionResult",
    "run_demo",
    "train",
    "train_many",
]

#: Cross-entropy of a uniform guess over the 10 classes, ln 10.
CHANCE_LOSS = math.log(CLASSES)
#: A training loss above this (10x chance: the network is confidently wrong) or a non-finite
#: one counts as a blow-up.
DIVERGED_LOSS = 10 * CHANCE_LOSS


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
        counts = ("steps", "seeds", "width", "batch", "eval_every", "report_every")
        check_settings(self, counts, ("lr", "max_norm", "clipping", "agc_eps"))
        if self.blocks < 0:
            raise ValueError(f"blocks must be at least 0, got {self.blocks}")
        if self.batch > 1797 - TEST_SIZE:
            raise ValueError(f"batch must be at most {1797 - TEST_SIZE}, got {self.batch}")


#: ``--quick``: a smoke run.
QUICK = VisionConfig(steps=45, seeds=2, eval_every=15, report_every=15)

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
