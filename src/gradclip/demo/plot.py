"""The demo's figure: training loss and gradient norm against step, one line per arm."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .rnn import ARMS, BASELINE_MSE, Arm, DemoConfig, RunResult, _seeds

__all__ = ["plot_runs"]


def _bin_edges(steps: int, bins: int = 100) -> npt.NDArray[np.intp]:
    """Step boundaries of ``bins`` equal windows (fewer when there are fewer steps)."""
    return np.unique(np.linspace(0, steps, min(bins, steps) + 1).astype(np.intp))


def _binned(
    values: npt.NDArray[np.float64], steps_run: int, edges: npt.NDArray[np.intp], reduce: str
) -> npt.NDArray[np.float64]:
    """Window means (or maxima) of one run's per-step values; NaN once non-finite."""
    ufunc = np.maximum if reduce == "max" else np.add
    with np.errstate(over="ignore", invalid="ignore"):
        out = ufunc.reduceat(values, edges[:-1])
        if reduce != "max":
            out = out / np.diff(edges)
    out[edges[1:] > steps_run] = np.nan  # windows the run did not finish
    out[~np.isfinite(out)] = np.nan
    return np.asarray(out, dtype=np.float64)


def plot_runs(
    results: Sequence[RunResult],
    config: DemoConfig,
    path: str | os.PathLike[str],
    arms: Sequence[Arm] = ARMS,
) -> Path:
    """Save training loss and pre-clip gradient norm against step, one line per arm.

    The thick line of each arm is the median over seeds (drawn while at least half the
    seeds are still running with finite values), the thin ones are single seeds; a cross
    marks the last finite point of a run that blew up. Losses are averaged and gradient
    norms maximised over windows of ``steps / 100`` steps, so spikes stay visible; both
    are drawn on a log scale.
    """
    from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edges = _bin_edges(config.steps)
    x = edges[1:]
    loss_top = 10.0  # the loss panel stops here: a blow-up leaves through the top
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    ax_loss, ax_norm = fig.subplots(1, 2)
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    lowest = loss_top
    for color, arm in zip(colors * 2, arms, strict=False):
        runs = [r for r in results if r.arm == arm.name]
        if not runs:
            continue
        for ax, attr, reduce in ((ax_loss, "loss", "mean"), (ax_norm, "grad_norm", "max")):
            curves = np.array([_binned(getattr(r, attr), r.steps_run, edges, reduce) for r in runs])
            for curve, run in zip(curves, runs, strict=True):
                ax.plot(x, curve, color=color, lw=0.6, alpha=0.4)
                raw = getattr(run, attr)[: run.steps_run]
                finite = np.flatnonzero(np.isfinite(raw))
                if run.stopped and finite.size:
                    # the last finite value; a loss beyond the panel sits at its top edge
                    y = float(raw[finite[-1]])
                    y = min(y, 0.8 * loss_top) if ax is ax_loss else y
                    ax.plot(finite[-1] + 1, y, "x", color=color, ms=8, mew=2)
            # a stopped run counts as +inf, so the median exists while most runs do
            median = np.median(np.where(np.isnan(curves), np.inf, curves), axis=0)
            median[~np.isfinite(median)] = np.nan
            ax.plot(x, median, color=color, lw=2.2, label=arm.title if ax is ax_loss else None)
            if ax is ax_loss and np.any(np.isfinite(curves)):
                lowest = min(lowest, float(np.nanmin(curves)))
    ax_loss.plot([], [], "x", color="black", ms=8, mew=2, label="run stopped: non-finite")
    ax_loss.axhline(BASELINE_MSE, color="gray", ls="--", lw=1, label="always answering 0.5")
    ax_norm.axhline(config.max_norm, color="gray", ls=":", lw=1, label="max_norm")
    ax_loss.set(
        yscale="log",
        xlim=(0, config.steps),
        ylim=(0.7 * lowest, loss_top),
        xlabel="step",
        ylabel=f"training loss (MSE, mean over {edges[1]} steps)",
        title=f"Training loss, adding problem with T = {config.seq_len}",
    )
    ax_norm.set(
        yscale="log",
        xlim=(0, config.steps),
        xlabel="step",
        ylabel=f"total gradient norm before clipping (max over {edges[1]} steps)",
        title="Gradient norm before clipping",
    )
    fig.suptitle(
        f"gradclip demo: tanh RNN ({config.hidden} units), SGD lr {config.lr}, momentum "
        f"{config.momentum}; thick: median of {_seeds(config.seeds)}, thin: each seed"
    )
    handles, labels = ax_loss.get_legend_handles_labels()
    extra_handles, extra_labels = ax_norm.get_legend_handles_labels()
    fig.legend(
        handles + extra_handles,
        labels + extra_labels,
        loc="outside lower center",
        ncols=3,
        fontsize=9,
        frameon=False,
    )
    fig.savefig(path, dpi=110)
    return path
