"""The RNN task of ``python -m gradclip demo``: exploding gradients tamed on the adding problem.

Trains a vanilla tanh RNN on the adding problem with plain NumPy and a hand-written
backpropagation through time, the kind of custom autograd code gradclip is for, and runs the
same seeds (same initialisation, same data) under several clipping rules:

- no clipping;
- global norm clipping, :func:`gradclip.clip_grad_norm_` (the rule the paper introduced);
- local, per-array norm clipping, :func:`gradclip.clip_grad_norm_per_tensor_`;
- element-wise value clipping, :func:`gradclip.clip_grad_value_`;
- adaptive clipping, :class:`gradclip.AutoClip` with its defaults (Seetharaman et al., 2020:
  the threshold is the 10th percentile of every gradient norm seen so far).

Other clippers (ZClip, say) are one more entry in :data:`ARMS` each.

The task and the failure mode are those of Pascanu, Mikolov and Bengio, "On the difficulty of
training recurrent neural networks", ICML 2013 (PMLR 28(3):1310-1318, arXiv:1211.5063): the
recurrent weights start with spectral radius above 1, the regime in which the loss surface
has "cliffs" where the gradient norm jumps by orders of magnitude; one unclipped step off such
a cliff throws the parameters far away. The adding problem (Hochreiter and Schmidhuber, 1997)
presents a sequence of (value, marker) pairs, values uniform on [0, 1], exactly two markers:
the first within the first 10% of the sequence, the second within the next 40%. The target is
the mean of the two marked values. Always answering 0.5 gives a mean squared error of 1/24
(about 0.042), the baseline to beat; a sequence counts as solved when its squared error is
below 0.04.

The three fixed-threshold arms bound the update by the same amount: with ``max_norm`` ``c``,
global clipping caps the total norm at ``c``; per-array clipping caps each of the ``k`` arrays
at ``c / sqrt(k)``; value clipping caps each of the ``n`` elements at ``c / sqrt(n)``. In each
of them the clipped gradient therefore has a total norm of at most ``c``, and the comparison
is about the direction each rule keeps, not about step size. AutoClip picks its own threshold
from the history of norms and ignores ``max_norm``.

Nothing in the printed table is fixed in advance: every number comes from the runs, and the
lines under it say whether, with the default settings, the unclipped runs blew up and the
globally clipped runs learned the task, as they are expected to.

Why these defaults (see :class:`DemoConfig`): SGD with momentum 0.9 at learning rate 0.1,
``W_hh`` at spectral radius 1.2, sequences of 20 (shorter than the paper's 50 or more, so that
a task runs within a minute on two cores). In the default run (4 seeds; the project's
``docs/demo.md``) every unclipped seed blows up, three within the first 20 steps and one after
831, each overflowing some 30 to 110 steps later; the globally clipped runs see spikes of the
same size, cut them to ``max_norm``, and learn the task on every seed. The arithmetic is the
same bits on every machine (:mod:`gradclip.demo.exact`), so these are facts about the
settings, not about the machine.

The task's parts, one module per job: :mod:`.model` (the data, the network and its
backpropagation through time), :mod:`.training` (the settings, the arms and the training
loop) and :mod:`.report` (the table and the figure); their public names are re-exported here.
"""

from __future__ import annotations

from ..common import Arm
from .model import BASELINE_MSE, adding_batch, init_params, loss_and_grads, predict
from .model import PARAM_NAMES as PARAM_NAMES  # the tests' names of the gradients
from .report import format_table, header, save_figure
from .training import ARMS, QUICK, DemoConfig, RunResult, run_demo, train, train_many

__all__ = [
    "ARMS",
    "BASELINE_MSE",
    "QUICK",
    "Arm",
    "DemoConfig",
    "RunResult",
    "adding_batch",
    "format_table",
    "header",
    "init_params",
    "loss_and_grads",
    "predict",
    "run_demo",
    "save_figure",
    "train",
    "train_many",
]
