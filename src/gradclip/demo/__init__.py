"""``python -m gradclip demo``: gradient clipping shown on real training runs.

One package per task, each split by job into its model (or network and data), training and
report modules (:mod:`gradclip.demo.rnn`: a tanh RNN on the adding problem, the case gradient
norm clipping was introduced for; :mod:`gradclip.demo.vision`: a residual CNN without
normalisation on handwritten digits, the case adaptive gradient clipping was introduced for),
:mod:`gradclip.demo.common` for what they share (the fixed-threshold arms, the run record, the
table's layout), :mod:`gradclip.demo.runner` running a task's arms and seeds in worker
processes, :mod:`gradclip.demo.plot` for the figures and :mod:`gradclip.demo.cli` for the
``gradclip demo`` command. A new task is a new module or package with its own ``train``,
``run_demo``, ``format_table``, ``save_figure`` and ``header``, and one entry in
``cli.TASKS``; it does not touch the others. The RNN task's names are re-exported here.
"""

from __future__ import annotations

from .._cli import main  # the command line: main(["demo", ...]) runs the demo
from . import rnn, vision
from .plot import FigureSpec, plot_runs
from .rnn import *  # noqa: F403  (the task's public names)
from .runner import default_jobs

__all__ = [*rnn.__all__, "FigureSpec", "default_jobs", "main", "plot_runs", "vision"]
