"""``python -m gradclip demo``: gradient clipping shown on real training runs.

One module per task (:mod:`gradclip.demo.rnn`: a tanh RNN on the adding problem, the case
gradient norm clipping was introduced for), :mod:`gradclip.demo.runner` running a task's arms
and seeds in worker processes, :mod:`gradclip.demo.plot` for the figure and
:mod:`gradclip.demo.cli` for the ``gradclip demo`` command. A new task is a new module with its own
``train`` and table; it does not touch the others.
"""

from __future__ import annotations

from .._cli import main  # the command line: main(["demo", ...]) runs the demo
from . import rnn
from .plot import plot_runs
from .rnn import *  # noqa: F403  (the task's public names)
from .runner import default_jobs

__all__ = [*rnn.__all__, "default_jobs", "main", "plot_runs"]
