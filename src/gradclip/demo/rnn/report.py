"""The RNN task's report: the summary table, what was expected and whether it happened, the
line above the table and the figure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..common import (
    Arm,
    Claim,
    divergence_lines,
    expectation_lines,
    fmt,
    seeds_phrase,
    summary_table,
)
from ..plot import FigureSpec, figure_saver
from .model import BASELINE_MSE, _param_shapes
from .training import (
    ARMS,
    DIVERGED_LOSS,
    LEARNED_MSE,
    SOLVED_SQUARED_ERROR,
    DemoConfig,
    RunResult,
)

__all__ = ["figure_spec", "format_table", "header", "save_figure"]


def _median_mse(runs: Sequence[RunResult]) -> str:
    test = np.array([r.test_mse for r in runs])
    return fmt(float(np.median(np.where(np.isnan(test), np.inf, test))))


def _median_error(runs: Sequence[RunResult]) -> str:
    return f"{100 * float(np.median([r.error_rate for r in runs])):.1f}%"


def format_table(
    results: Sequence[RunResult], config: DemoConfig, arms: Sequence[Arm] = ARMS
) -> str:
    """The summary table of a demo run, plus what was expected and whether it happened."""
    like = [np.empty(shape) for shape in _param_shapes(config.hidden)]
    columns = [("test MSE", _median_mse), ("error rate", _median_error)]
    kinds = ("learned", "partly", "baseline", "diverged")
    out = summary_table(results, arms, config, like, columns, kinds)
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


def figure_spec(config: DemoConfig) -> FigureSpec:
    """The RNN figure: training loss and gradient norm against step, one line per arm."""
    return FigureSpec(
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


save_figure = figure_saver(figure_spec, ARMS, "RNN")
