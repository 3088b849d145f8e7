"""The demo's figures: training loss and gradient norm against step, one line per arm, for any
task (the task module says what to label and which reference lines to draw)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .common import Arm, RunResult

__all__ = ["FigureSpec", "plot_runs"]

#: One colour, line style and marker per arm, by name, the same in every task's figure.
#: Styles differ, so a line that runs on top of another (value clipping and AutoClip, both at
#: the RNN's baseline) still shows through its gaps, and each median carries its arm's marker
#: every tenth window, the arms' markers offset from each other, so that every arm stays
#: visible where lines coincide.
_STYLE_BY_ARM = {
    "none": ("#d62728", "-", "v"),
    "global": ("#1f77b4", "-", "o"),
    "per-tensor": ("#2ca02c", (0, (5, 2)), "s"),
    "value": ("#9467bd", (0, (1.5, 1.5)), "D"),
    "autoclip": ("#ff7f0e", (0, (6, 2, 1.5, 2)), "^"),
    "agc": ("#8c564b", (0, (3, 1)), "P"),
}
#: for an arm of another name
_OTHER_STYLE = ("#7f7f7f", (0, (4, 1, 1, 1)), "X")


@dataclass(frozen=True)
class FigureSpec:
    """What a task's figure says: its titles, labels and reference lines."""

    steps: int
    suptitle: str
    loss_title: str
    #: the loss axis label, to which ", mean over N steps)" is added
    loss_label: str
    #: a horizontal line on the loss panel (value, legend label), e.g. the baseline
    loss_ref: tuple[float, str] | None = None
    #: the loss panel stops here: a blow-up leaves through the top
    loss_top: float = 10.0
    #: a horizontal line on the gradient-norm panels (value, legend label), e.g. max_norm
    norm_ref: tuple[float, str] | None = None
    #: a test-accuracy panel (the results' ``eval_steps`` / ``eval_accuracy``), if titled
    accuracy_title: str | None = None
    accuracy_ref: tuple[float, str] | None = None


def figure_saver(
    spec_of: Callable[[Any], FigureSpec], default_arms: Sequence[Arm], what: str
) -> Callable[..., Path]:
    """A task's ``save_figure(results, config, path, arms=default_arms)``: :func:`plot_runs`
    with the figure ``spec_of(config)`` describes; returns the saved file's path."""

    def save_figure(
        results: Sequence[RunResult],
        config: Any,
        path: str | os.PathLike[str],
        arms: Sequence[Arm] = default_arms,
    ) -> Path:
        return plot_runs(results, path, arms=arms, spec=spec_of(config))

    save_figure.__doc__ = f"Save the {what} figure ({spec_of.__name__}(config)), one line per arm."
    return save_figure


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


def _median(curves: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # a stopped run counts as +inf, so the median exists while most runs do
    median = np.median(np.where(np.isnan(curves), np.inf, curves), axis=0)
    median[~np.isfinite(median)] = np.nan
    return np.asarray(median, dtype=np.float64)


def _zoom_top(results: Sequence[RunResult], edges: npt.NDArray[np.intp]) -> float:
    """The top of the linear gradient-norm panel: just above the largest windowed pre-clip
    norm of the clipped arms none of whose runs diverged (of all clipped runs when each arm
    had one that did), so their spikes fill the panel and the blow-ups leave through the top."""
    clipped = [r for r in results if r.arm != "none"]
    unstable = {r.arm for r in clipped if r.diverged}
    stable = [r for r in clipped if r.arm not in unstable] or clipped
    peaks = [
        float(np.nanmax(c))
        for r in stable
        for c in [_binned(r.grad_norm, r.steps_run, edges, "max")]
        if np.any(np.isfinite(c))
    ]
    return 1.1 * max(peaks) if peaks else 1.0


def plot_runs(
    results: Sequence[RunResult],
    path: str | os.PathLike[str],
    *,
    arms: Sequence[Arm],
    spec: FigureSpec,
) -> Path:
    """Save training loss and pre-clip gradient norm against step, one line per arm.

    Panels: the training loss (log scale); the pre-clip gradient norm on a log scale (every
    arm, the unclipped blow-ups included) and on a linear scale cut just above the largest
    spike of the clipped arms that never diverged (spikes the log panel squashes into a
    band); and, when
    ``spec.accuracy_title`` is set, the test accuracy at the results' evaluation steps (a run
    that stopped ends in a cross at its last evaluation, where it scores 0%). The
    thick line of each arm is the median over seeds (drawn while at least half the seeds are
    still running with finite values), the thin ones are single seeds. A circle marks the
    step at which a run diverged (its loss past the task's bound, at the top edge when beyond
    the panel); a cross marks the last finite point of a run that stopped on a non-finite
    value. Losses are averaged and gradient norms maximised over windows of ``steps / 100``
    steps, so spikes stay visible.
    """
    from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edges = _bin_edges(spec.steps)
    x = edges[1:]
    loss_top = spec.loss_top
    if spec.accuracy_title is not None:
        fig = Figure(figsize=(12, 9.5), layout="constrained")
        ax_loss, ax_norm, ax_zoom, ax_acc = fig.subplots(2, 2).ravel()
    else:
        fig = Figure(figsize=(16, 5.8), layout="constrained")
        ax_loss, ax_norm, ax_zoom = fig.subplots(1, 3)
    zoom_top = _zoom_top(results, edges)
    lowest = loss_top
    marker_seen = {"o": False, "x": False}
    for index, arm in enumerate(arms):
        color, style, marker = _STYLE_BY_ARM.get(arm.name, _OTHER_STYLE)
        median_style = {
            "color": color,
            "ls": style,
            "lw": 2.2,
            "marker": marker,
            "ms": 5,
            "markevery": (2 * index % 10, 10),
        }
        runs = [r for r in results if r.arm == arm.name]
        if not runs:
            continue
        panels: list[tuple[Any, str, str]] = [
            (ax_loss, "loss", "mean"),
            (ax_norm, "grad_norm", "max"),
            (ax_zoom, "grad_norm", "max"),
        ]
        for ax, attr, reduce in panels:
            curves = np.array([_binned(getattr(r, attr), r.steps_run, edges, reduce) for r in runs])
            for curve in curves:
                ax.plot(x, curve, color=color, ls=style, lw=0.6, alpha=0.45)
            label = arm.title if ax is ax_loss else None
            ax.plot(x, _median(curves), label=label, **median_style)
            if ax is ax_loss and np.any(np.isfinite(curves)):
                lowest = min(lowest, float(np.nanmin(curves)))
            top = 0.8 * loss_top if ax is ax_loss else 0.97 * zoom_top if ax is ax_zoom else None
            for run in runs:
                _mark(ax, run, getattr(run, attr), color, top, marker_seen)
        if spec.accuracy_title is not None:
            _accuracy_curves(ax_acc, runs, color, style, median_style, marker_seen)
    _references(ax_loss, (ax_norm, ax_zoom), spec, marker_seen)
    window = f"{edges[1]} steps"
    ax_loss.set(
        yscale="log",
        xlim=(0, spec.steps),
        ylim=(0.7 * lowest, loss_top),
        xlabel="step",
        ylabel=f"{spec.loss_label}, mean over {window})",
        title=spec.loss_title,
    )
    ax_norm.set(
        yscale="log",
        xlim=(0, spec.steps),
        xlabel="step",
        ylabel=f"total gradient norm before clipping (max over {window})",
        title="Gradient norm before clipping, log scale: every arm",
    )
    ax_zoom.set(
        xlim=(0, spec.steps),
        ylim=(0, zoom_top),
        xlabel="step",
        ylabel=f"total gradient norm before clipping (max over {window})",
        title="Gradient norm, linear scale: the clipped runs' spikes",
    )
    if spec.accuracy_title is not None:
        _accuracy_axes(ax_acc, spec, any(r.stopped for r in results))
    fig.suptitle(spec.suptitle)
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
    fig.savefig(path, dpi=100)
    return path


def _references(
    ax_loss: Any, norm_axes: tuple[Any, Any], spec: FigureSpec, seen: dict[str, bool]
) -> None:
    """The legend entries of the markers drawn, and the reference lines."""
    if seen["o"]:
        ax_loss.plot([], [], "o", color="black", mfc="none", ms=7, mew=1.5, label="run diverged")
    if seen["x"]:
        ax_loss.plot([], [], "x", color="black", ms=8, mew=2, label="run stopped: non-finite")
    if spec.loss_ref is not None:
        ax_loss.axhline(spec.loss_ref[0], color="gray", ls="--", lw=1, label=spec.loss_ref[1])
    if spec.norm_ref is not None:
        for ax in norm_axes:
            ax.axhline(
                spec.norm_ref[0],
                color="gray",
                ls=":",
                lw=1,
                label=spec.norm_ref[1] if ax is norm_axes[0] else None,
            )


def _accuracy_axes(ax: Any, spec: FigureSpec, any_stopped: bool) -> None:
    """The accuracy panel's reference line, note and axes."""
    if spec.accuracy_ref is not None:
        ax.axhline(100 * spec.accuracy_ref[0], color="gray", ls="--", lw=1)
        ax.annotate(
            spec.accuracy_ref[1],
            (spec.steps, 100 * spec.accuracy_ref[0]),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            color="gray",
            fontsize=9,
        )
    if any_stopped:
        ax.annotate(
            "x: a run that stopped on a non-finite value scores 0%",
            (spec.steps, 0),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            color="gray",
            fontsize=9,
        )
    ax.set(
        xlim=(0, spec.steps),
        # below 0 a margin, so that a run that stopped (scored 0%: its weights are not
        # finite) stays visible, its line and cross above the axis
        ylim=(-5, 101),
        xlabel="step",
        ylabel="test accuracy (%)",
        title=spec.accuracy_title,
    )


def _accuracy_curves(
    ax: Any,
    runs: Sequence[RunResult],
    color: str,
    style: Any,
    median_style: dict[str, Any],
    seen: dict[str, bool],
) -> None:
    """One arm's test accuracy: each seed's curve, a cross at the last evaluation of a run
    that stopped on a non-finite value, and the median over seeds on the evaluation steps
    of the longest run, drawn while at least half of the seeds were still running (a stopped
    run counts as the worst)."""
    evaluated: list[Any] = list(runs)  # a task with an accuracy panel records these
    for r in evaluated:
        ax.plot(r.eval_steps, 100 * r.eval_accuracy, color=color, ls=style, lw=0.6, alpha=0.45)
        if r.stopped and len(r.eval_steps):
            ax.plot(r.eval_steps[-1], 100 * r.eval_accuracy[-1], "x", color=color, ms=8, mew=2)
            seen["x"] = True
    grid = np.asarray(max(evaluated, key=lambda r: r.steps_run).eval_steps)
    acc = np.full((len(evaluated), len(grid)), -np.inf)
    for row, r in zip(acc, evaluated, strict=True):
        at = {int(step): value for step, value in zip(r.eval_steps, r.eval_accuracy, strict=True)}
        row[:] = [at.get(int(step), -np.inf) for step in grid]
    median = 100 * np.median(acc, axis=0)
    median[~np.isfinite(median)] = np.nan
    ax.plot(grid, median, **{**median_style, "markevery": 1})


def _mark(
    ax: Any,
    run: RunResult,
    values: npt.NDArray[np.float64],
    color: str,
    top: float | None,
    seen: dict[str, bool],
) -> None:
    """The divergence circle and the stop cross of one run on one panel."""
    raw = values[: run.steps_run]
    if run.diverged_at is not None:
        y = float(raw[run.diverged_at])
        if not math.isfinite(y) or (top is not None and y > top):
            y = top if top is not None else float(np.nanmax(raw[np.isfinite(raw)], initial=1.0))
        ax.plot(run.diverged_at + 1, y, "o", color=color, mfc="none", ms=7, mew=1.5)
        seen["o"] = True
    finite = np.flatnonzero(np.isfinite(raw))
    if run.stopped and finite.size:
        y = float(raw[finite[-1]])
        if top is not None:
            y = min(y, top)
        ax.plot(finite[-1] + 1, y, "x", color=color, ms=8, mew=2)
        seen["x"] = True
