"""What the demo's tasks share: the clipping arms that need only the gradients, the record of
one training run, and the summary table's layout and common columns.

A task module (:mod:`gradclip.demo.rnn`, :mod:`gradclip.demo.vision`) builds its arms from
these, adds its own (AGC needs the parameters too, AutoClip keeps a history), subclasses
:class:`RunResult` with its test metrics and adds its own columns to the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

import gradclip

__all__ = [
    "CLIP_EPS",
    "Arm",
    "Claim",
    "ClipFn",
    "Column",
    "RunResult",
    "check_settings",
    "divergence_lines",
    "expectation_lines",
    "fmt",
    "global_arm",
    "markdown_table",
    "no_clip_arm",
    "per_tensor_arm",
    "per_tensor_limit",
    "seeds_phrase",
    "summary_table",
    "value_arm",
    "value_limit",
]

FloatArray = npt.NDArray[np.floating[Any]]

#: The ``eps`` gradclip adds to a norm before dividing (its default).
CLIP_EPS = 1e-6

#: A clipping rule for one run: clips ``grads`` in place and returns the total 2-norm before
#: clipping and whether it changed anything.
ClipFn = Callable[[list[FloatArray]], tuple[float, bool]]


@dataclass(frozen=True)
class Arm:
    """One way of treating the gradients before the update.

    ``make(config, params)`` builds the clipping function of one run from the settings and the
    run's parameter arrays (shaped like the gradients, and updated in place by the run, so a
    rule that reads them, such as AGC, sees their current values); a stateful clipper starts
    afresh in every run. ``threshold(config, like)`` describes the threshold for the table,
    from arrays shaped like the gradients.
    """

    name: str
    title: str
    make: Callable[[Any, Sequence[FloatArray]], ClipFn]
    threshold: Callable[[Any, Sequence[FloatArray]], str]


def _no_clip(config: Any, params: Sequence[FloatArray]) -> ClipFn:
    def clip(grads: list[FloatArray]) -> tuple[float, bool]:
        return gradclip.get_total_norm(grads), False

    return clip


def _global_norm(config: Any, params: Sequence[FloatArray]) -> ClipFn:
    limit = config.max_norm

    def clip(grads: list[FloatArray]) -> tuple[float, bool]:
        norm = gradclip.clip_grad_norm_(grads, limit)
        return norm, not norm + CLIP_EPS <= limit

    return clip


def per_tensor_limit(config: Any, grads: Sequence[FloatArray]) -> float:
    """The per-array bound whose ``len(grads)`` arrays together have norm ``max_norm``."""
    return float(config.max_norm / math.sqrt(len(grads)))


def _per_tensor_norm(config: Any, params: Sequence[FloatArray]) -> ClipFn:
    limit = per_tensor_limit(config, params)

    def clip(grads: list[FloatArray]) -> tuple[float, bool]:
        norms = gradclip.clip_grad_norm_per_tensor_(grads, limit)
        return math.hypot(*norms.tolist()), not bool(np.all(norms + CLIP_EPS <= limit))

    return clip


def value_limit(config: Any, grads: Sequence[FloatArray]) -> float:
    """The element bound whose elements, all at the bound, have total norm ``max_norm``."""
    return float(config.max_norm / math.sqrt(sum(g.size for g in grads)))


def _value(config: Any, params: Sequence[FloatArray]) -> ClipFn:
    limit = value_limit(config, params)

    def clip(grads: list[FloatArray]) -> tuple[float, bool]:
        norm = gradclip.get_total_norm(grads)
        largest = gradclip.get_total_norm(grads, norm_type=math.inf)
        gradclip.clip_grad_value_(grads, limit)
        return norm, not largest <= limit

    return clip


# The fixed-threshold arms bound the update by the same amount: with ``max_norm`` ``c``, global
# clipping caps the total norm at ``c``; per-array clipping caps each of the ``k`` arrays at
# ``c / sqrt(k)``; value clipping caps each of the ``n`` elements at ``c / sqrt(n)``. In each,
# the clipped gradient has a total norm of at most ``c``: the arms differ in the direction
# they keep, not in the step size they allow.
no_clip_arm = Arm("none", "no clipping", _no_clip, lambda c, g: "-")
global_arm = Arm(
    "global", "global norm (clip_grad_norm_)", _global_norm, lambda c, g: f"norm {c.max_norm:.3g}"
)
per_tensor_arm = Arm(
    "per-tensor",
    "per-array norm (clip_grad_norm_per_tensor_)",
    _per_tensor_norm,
    lambda c, g: f"norm {per_tensor_limit(c, g):.3g} each",
)
value_arm = Arm(
    "value", "value (clip_grad_value_)", _value, lambda c, g: f"|g| {value_limit(c, g):.2g}"
)


@dataclass
class RunResult:
    """What one (arm, seed) training run did; a task's subclass adds its test metrics."""

    arm: str
    seed: int
    #: Training loss per step (float64); NaN after the run stopped.
    loss: npt.NDArray[np.float64]
    #: Total gradient 2-norm before clipping, per step; NaN after the run stopped.
    grad_norm: npt.NDArray[np.float64]
    steps_run: int
    #: Steps at which clipping changed the gradient.
    clipped: int
    #: First step whose loss was non-finite or above the task's divergence bound, else None.
    diverged_at: int | None
    #: True when the run stopped early on a non-finite loss or gradient.
    stopped: bool
    seconds: float

    @property
    def diverged(self) -> bool:
        """Whether the loss blew up (non-finite, or above the task's bound) at some step."""
        return self.diverged_at is not None


def check_settings(config: Any, counts: Sequence[str], positive: Sequence[str]) -> None:
    """The checks every task's settings share: ValueError unless each of ``counts`` is at
    least 1, each of ``positive`` finite and > 0, and ``momentum`` in [0, 1)."""
    for name in counts:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in positive:
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value}")
    if not 0 <= config.momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {config.momentum}")


# --------------------------------------------------------------------------- the table


def seeds_phrase(n: int) -> str:
    """``1 seed``, ``4 seeds``."""
    return f"{n} seed" if n == 1 else f"{n} seeds"


def fmt(value: float) -> str:
    """Two significant digits: 0.0013, 0.042, 12, 7e+21."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.2g}".replace("e+0", "e+").replace("e-0", "e-")


def _common_cells(runs: Sequence[RunResult], arm: Arm) -> dict[str, str]:
    """The columns every task's table has, for one arm's runs: ``diverged`` (count of seeds),
    ``clipped`` (share of steps), ``peak |g|`` (largest pre-clip norm) and ``time s``."""
    steps = sum(r.steps_run for r in runs)
    seen = np.concatenate([r.grad_norm[: r.steps_run] for r in runs])
    peak = float(np.max(seen)) if np.all(np.isfinite(seen)) else math.inf
    return {
        "diverged": f"{sum(r.diverged for r in runs)}/{len(runs)}",
        "clipped": "-"
        if arm.name == "none"
        else f"{100 * sum(r.clipped for r in runs) / steps:.0f}%",
        "peak |g|": fmt(peak),
        "time s": f"{sum(r.seconds for r in runs):.1f}",
    }


#: A column a task adds to the summary table: its header, and its cell from one arm's runs.
Column = tuple[str, Callable[[Sequence[Any]], str]]


def summary_table(
    results: Sequence[Any],
    arms: Sequence[Arm],
    config: Any,
    like: Sequence[FloatArray],
    columns: Sequence[Column],
    outcomes: Sequence[str],
) -> list[str]:
    """The summary table of a task's runs, as lines: one row per arm that has runs, with the
    arm, its threshold (described from ``like``, arrays shaped like the gradients), how many
    seeds diverged, the task's own ``columns``, the share of steps clipped, the peak norm,
    the time, and how many seeds had each of the ``outcomes`` (a run's ``outcome``)."""
    head = ["arm", "clip at", "diverged", *(h for h, _ in columns)]
    head += ["clipped", "peak |g|", "time s", "seeds"]
    rows = []
    for arm in arms:
        runs = [r for r in results if r.arm == arm.name]
        if not runs:
            continue
        seen = [r.outcome for r in runs]
        cells = _common_cells(runs, arm)
        tally = ", ".join(f"{seen.count(k)} {k}" for k in outcomes if seen.count(k))
        rows.append(
            [
                arm.name,
                arm.threshold(config, like),
                cells["diverged"],
                *(cell(runs) for _, cell in columns),
                cells["clipped"],
                cells["peak |g|"],
                cells["time s"],
                tally,
            ]
        )
    return markdown_table(head, rows)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table with padded columns, as lines."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [line(header), rule, *(line(row) for row in rows)]


def divergence_lines(results: Sequence[RunResult]) -> list[str]:
    """One line per arm with diverged runs: when each diverged, and whether and when its
    values then overflowed (the run stopped) or stayed finite to the end."""
    lines = []
    for name in dict.fromkeys(r.arm for r in results):
        parts = []
        for r in results:
            if r.arm != name or r.diverged_at is None:
                continue
            part = f"seed {r.seed} at step {r.diverged_at + 1}"
            if r.stopped:
                later = r.steps_run - 1 - r.diverged_at
                part += ", non-finite " + ("at once" if later == 0 else f"{later} steps later")
            else:
                part += ", finite to the end"
            parts.append(part)
        if parts:
            lines.append(f"{name}: diverged: " + "; ".join(parts))
    return lines


#: One claim of a task: (arm name, what happened, whether it happened in a run).
Claim = tuple[str, str, Callable[[Any], bool]]


def expectation_lines(
    results: Sequence[RunResult], claims: Sequence[Claim], intro: str, checked: bool
) -> list[str]:
    """The expectation check under a table: for each claim, on how many seeds it held and,
    when the settings are the defaults the claims were made for (``checked``), whether it
    held on a majority of them ("as expected" / "NOT as expected")."""
    lines = [intro + ("" if checked else " (not checked: the settings differ)")]
    for name, what, happened in claims:
        runs = [r for r in results if r.arm == name]
        if not runs:
            continue
        hits = sum(bool(happened(r)) for r in runs)
        line = f"{name}: {what} on {hits}/{len(runs)} seeds"
        if checked:
            line += ": as expected" if 2 * hits > len(runs) else ": NOT as expected"
        lines.append(line)
    return lines
