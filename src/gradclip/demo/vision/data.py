"""The vision task's data: scikit-learn's bundled handwritten digits, split and standardised
the same way on every call."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["SPLIT_SEED", "TEST_SIZE", "bundled_digits_file", "load_data"]

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.intp]

#: Seeds the permutation that makes the fixed train/test split.
SPLIT_SEED = 0
#: Images held out for testing; the other 1,500 of the 1,797 are for training.
TEST_SIZE = 297


def bundled_digits_file() -> Path | None:
    """scikit-learn's own copy of the digits (``sklearn/datasets/data/digits.csv.gz``, the
    file ``load_digits`` reads), found without importing scikit-learn, or None.

    Importing scikit-learn (and SciPy with it) costs about a second of CPU per process, more
    than a quick run's table and figure; the parent and every worker process would pay it
    for a 58 KB file.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package, does not run it
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[npt.NDArray[np.float64], IntArray]:
    path = bundled_digits_file()
    if path is not None:
        # what load_digits does with it: one image per row, 64 pixels then the label
        table = np.loadtxt(path, delimiter=",")
        images, labels = table[:, :-1], table[:, -1]
    else:  # another layout of scikit-learn: its own loader (`import gradclip.demo` needs none)
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
    return np.asarray(images, dtype=np.float64), np.asarray(labels, dtype=np.intp)


def load_data(
    dtype: npt.DTypeLike = np.float32,
) -> tuple[FloatArray, IntArray, FloatArray, IntArray]:
    """The digits, split and standardised: ``x_train, y_train, x_test, y_test``.

    Images are (N, 8, 8, 1), channels last, standardised with the training set's mean and
    standard deviation of pixel values; labels are 0-9. The split is the same on every call
    (a permutation seeded by :data:`SPLIT_SEED`).
    """
    images, labels = _digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    test, train_ = order[:TEST_SIZE], order[TEST_SIZE:]
    x = images.reshape(-1, 8, 8, 1)
    mean, std = x[train_].mean(), x[train_].std()
    x = ((x - mean) / std).astype(dtype)
    return x[train_], labels[train_], x[test], labels[test]
