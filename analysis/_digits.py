"""The image data and the CNN training loop shared by the convolutional studies
(``batch-size``, ``style``): scikit-learn's bundled 8×8 digits (no download), a fixed
train/test split, and SGD on a :func:`arraynorm.nn.cnn_stack` classifier.

The digits are the 1797 8×8 grey-level images (values 0–16) of UCI's handwritten digits that
ship inside scikit-learn (``sklearn.datasets.load_digits`` reads them from the installed
package). They are scaled to [0, 1], then standardized with the training set's pixel mean and
standard deviation (two scalars), as an (N, 1, 8, 8) NCHW array. The split is one fixed
permutation — drawn from a constant seed, not the study's — so every seed, normalization and
batch size of a study is scored on the same test images.

The training loop is the one the synthetic-task studies use (:mod:`._tasks`: a :class:`Task`
holding the host arrays, :func:`minibatches` drawn with replacement,
:func:`loss_and_backward`), with :class:`arraynorm.optim.SGD`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

import arraynorm as an
from arraynorm.optim import SGD

from ._backend import Backend, point_rng
from ._tasks import Task, loss_and_backward, minibatches

__all__ = ["INSTALL_HINT", "require_sklearn", "digits_images", "digits_split", "train_classifier",
           "classification_error"]

INSTALL_HINT = 'pip install "arraynorm[applications]"'
#: images in the bundled data set
N_DIGITS = 1797


def require_sklearn() -> Any:
    """``sklearn.datasets``, or an ImportError that says what to install."""
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError("the digits data set ships with scikit-learn, which is not installed: "
                          f"{INSTALL_HINT} (or pip install scikit-learn)") from None
    return datasets


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    d = require_sklearn().load_digits()
    return np.asarray(d.images, dtype=np.float64) / 16.0, np.asarray(d.target, dtype=np.int64)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) in [0, 1], labels (1797,))`` of scikit-learn's digits (copies)."""
    x, y = _load()
    return x.copy(), y.copy()


def digits_split(test: int) -> tuple[Task, Task]:
    """``(train, test)`` tasks: the fixed permutation's first ``test`` images are the test set;
    x (n, 1, 8, 8) standardized with the training pixels' mean and standard deviation."""
    if not 10 <= test <= N_DIGITS - 10:
        raise ValueError(f"digits_split: test must be in [10, {N_DIGITS - 10}], got {test}")
    x, y = _load()
    perm = point_rng(0, "digits-split").permutation(len(x))
    te, tr = perm[:test], perm[test:]
    mu, sd = x[tr].mean(), x[tr].std()
    z = ((x - mu) / sd)[:, None, :, :]
    return (Task("digits-train", z[tr], y[tr], 10, 1, 10),
            Task("digits-test", z[te], y[te], 10, 1, 10))


def train_classifier(model: an.nn.Module, task: Task, b: Backend, *, batch: int, lr: float,
                     momentum: float, samples: int, rng: np.random.Generator) -> tuple[list[float], bool]:
    """SGD with momentum on ``task`` for ``samples // batch`` steps of ``batch`` images drawn
    with replacement; returns the minibatch losses and whether training diverged (a loss that
    is not finite stops it)."""
    model.train()
    loss = task.loss()
    opt = SGD(model, lr, momentum)
    losses: list[float] = []
    with np.errstate(all="ignore"):
        for idx in minibatches(rng, task.n, batch, max(samples // batch, 1)):
            xb, yb = task.arrays(b, idx)
            losses.append(loss_and_backward(model, loss, xb, yb))
            if not math.isfinite(losses[-1]):
                return losses, True
            opt.step()
    return losses, False


def classification_error(model: an.nn.Module, task: Task, b: Backend, *,
                         chunks: int = 1) -> float:
    """Error rate of ``model`` on ``task`` in its current mode, the images fed in ``chunks``
    consecutive batches (sizes differing by at most one): with batch statistics, each chunk
    is normalized by its own."""
    wrong = 0
    with np.errstate(all="ignore"):
        for idx in np.array_split(np.arange(task.n), chunks):
            x, _ = task.arrays(b, idx)
            pred = np.argmax(Backend.to_numpy(model(x)), axis=1)
            wrong += int(np.sum(pred != task.y[idx]))
    return wrong / task.n
