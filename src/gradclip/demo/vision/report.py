"""The vision task's report: the line above the table, the summary table, what was expected
and whether it happened, and the figure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..common import (
    Arm,
    Claim,
    divergence_lines,
    expectation_lines,
    seeds_phrase,
    summary_table,
)
from ..plot import FigureSpec, figure_saver
from .data import TEST_SIZE
from .network import init_params
from .training import ARMS, CHANCE_LOSS, DIVERGED_LOSS, VisionConfig, VisionResult

__all__ = ["CLAIMS", "figure_spec", "format_table", "header", "save_figure"]


def header(config: VisionConfig) -> str:
    """The line above the table: what was trained."""
    return (
        f"Handwritten digits (scikit-learn load_digits, 8x8, 1500 train / {TEST_SIZE} test): "
        f"residual CNN without normalisation, {config.width} channels, {config.blocks} "
        f"blocks, batch {config.batch}, SGD lr {config.lr} momentum {config.momentum}; "
        f"{config.steps} steps x {seeds_phrase(config.seeds)} per arm"
    )


def _median_accuracy(runs: Sequence[VisionResult]) -> str:
    return f"{100 * float(np.median([r.test_accuracy for r in runs])):.1f}%"


def format_table(
    results: Sequence[VisionResult], config: VisionConfig, arms: Sequence[Arm] = ARMS
) -> str:
    """The summary table of a vision-demo run, and what each arm did."""
    like = init_params(np.random.default_rng(0), config.width, config.blocks, ws=config.ws)
    kinds = ("learned", "partly", "chance", "diverged")
    out = summary_table(results, arms, config, like, [("test acc.", _median_accuracy)], kinds)
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


def figure_spec(config: VisionConfig) -> FigureSpec:
    """The vision figure: loss, gradient norm and test accuracy against step, one line per arm."""
    return FigureSpec(
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


save_figure = figure_saver(figure_spec, ARMS, "vision")
