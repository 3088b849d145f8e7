"""The vision task of ``python -m gradclip demo``: a residual CNN without normalisation layers.

Brock, De, Smith and Simonyan, "High-Performance Large-Scale Image Recognition Without
Normalization", ICML 2021 (PMLR 139:1059-1071, arXiv:2102.06171), train residual networks with
no batch normalisation at large learning rates and batch sizes, and adaptive gradient
clipping (AGC) is what keeps those runs stable. This task is that setting at the size of a
demo: a small residual network written in NumPy with a hand-written backward pass
(convolutions as im2col plus one matmul), trained on real images that need no download,
scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797 grey 8x8
images of the digits 0-9), under the same clipping rules as the RNN task plus AGC:

- no clipping;
- global norm clipping, :func:`gradclip.clip_grad_norm_`;
- adaptive gradient clipping, :func:`gradclip.adaptive_grad_clip_`, with the NFNet / timm
  defaults (clipping 0.01, eps 1e-3, unit-wise norms: each output channel of a convolution
  is one unit, each bias vector is one unit, as timm's and the authors' unit-wise norm treat
  a 1-d parameter); the final linear layer is not clipped, as in the paper (sec. 4.1: "we
  find it is also beneficial to not clip the final linear layer");
- per-array norm clipping, :func:`gradclip.clip_grad_norm_per_tensor_`;
- value clipping, :func:`gradclip.clip_grad_value_`.

The three fixed-threshold arms bound the clipped gradient's total norm by the same
``max_norm`` (see :mod:`gradclip.demo.common`); AGC's bound follows the weights instead.

The network: a 3x3 convolution from 1 to ``width`` channels (the stem), then ``blocks``
residual blocks ``h <- h + alpha * conv(relu(conv(relu(h))))`` (3x3, ``width`` channels, with
biases; ``alpha`` = 0.2 keeps the variance growth of the residual stream small, as the
NF-ResNets' ``alpha`` does), global average pooling of ``relu(h)`` and a linear layer to the
10 classes, trained on softmax cross-entropy with SGD and momentum 0.9. No normalisation
layer of any kind (no batch norm); every convolution uses scaled weight standardisation (a
learnable gain per output channel), as the NF-ResNets and NFNets do, in every arm, so that
AGC is tried in its published setting and the arms differ in the clipping rule only. The
train/test split is fixed (a permutation seeded by :data:`SPLIT_SEED`: 1,500 training
images, 297 test images); each seed fixes the initial weights and the order of the training
batches, the same for every arm.

The arithmetic is the same bits on every machine: every product goes through
:mod:`gradclip.demo.exact` (integer-exact, whatever the BLAS kernel or its thread count),
softmax's exp and log are correctly rounded, and the rest is element-wise IEEE arithmetic
and sums in an order fixed by the arrays' shapes.

Why these defaults (:class:`VisionConfig`): 8 channels, batch 128 and 200 steps (17 epochs)
keep the 15 runs under a minute on two cores; at learning rate 1.6 the unclipped network
overflows on every seed (at 3.2 and 6.4 too, on every seed tried, within 40 steps), while
global norm clipping at 1.6 learns on every seed (at 3.2 it did not: 31% on the one seed
tried).

The task's parts, one module per job: :mod:`.data` (the digits and their split),
:mod:`.network` (the network, its weight standardisation and its backward pass),
:mod:`.training` (the settings, the arms and the training loop) and :mod:`.report` (the table
and the figure); their public names are re-exported here.
"""

from __future__ import annotations

from .data import SPLIT_SEED, load_data
from .data import TEST_SIZE as TEST_SIZE
from .network import ALPHA as ALPHA
from .network import RELU_GAIN as RELU_GAIN
from .network import init_params, logits, loss_and_grads, param_names
from .network import standardise as standardise
from .network import standardise_backward as standardise_backward
from .report import CLAIMS, format_table, header, save_figure
from .training import (
    ARMS,
    CHANCE_LOSS,
    QUICK,
    VisionConfig,
    VisionResult,
    run_demo,
    train,
    train_many,
)

__all__ = [
    "ARMS",
    "CHANCE_LOSS",
    "CLAIMS",
    "QUICK",
    "SPLIT_SEED",
    "VisionConfig",
    "VisionResult",
    "format_table",
    "header",
    "init_params",
    "load_data",
    "logits",
    "loss_and_grads",
    "param_names",
    "run_demo",
    "save_figure",
    "train",
    "train_many",
]
