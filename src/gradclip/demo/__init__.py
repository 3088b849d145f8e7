"""``python -m gradclip demo``: gradient clipping shown on real training runs.

One module per task (:mod:`gradclip.demo.rnn`: a tanh RNN on the adding problem, the case
gradient norm clipping was introduced for), :mod:`gradclip.demo.runner` running a task's arms
and seeds in worker processes, :mod:`gradclip.demo.plot` for the figure and
:mod:`gradclip.demo.cli` for the command line. A new task is a new module with its own
``train`` and table; it does not touch the others.
"""

from __future__ import annotations

from .cli import main
from .plot import plot_runs
from .rnn import (
    ARMS,
    BASELINE_MSE,
    QUICK,
    Arm,
    DemoConfig,
    RunResult,
    adding_batch,
    format_table,
    init_params,
    loss_and_grads,
    predict,
    run_demo,
    train,
)
from .runner import default_jobs

__all__ = [
    "ARMS",
    "BASELINE_MSE",
    "QUICK",
    "Arm",
    "DemoConfig",
    "RunResult",
    "adding_batch",
    "default_jobs",
    "format_table",
    "init_params",
    "loss_and_grads",
    "main",
    "plot_runs",
    "predict",
    "run_demo",
    "train",
]
