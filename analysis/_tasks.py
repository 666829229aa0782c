"""Fixed synthetic training tasks, the models that learn them, and one training step — shared
by the studies that train (``scale-invariance``, ``convergence``).

Tasks (host NumPy data, drawn from a seed, the same on every backend):

* ``"spirals"`` — two interleaved spirals in 2-D, two classes (the generator of
  :func:`arraynorm.data.spirals`, reused as it is); softmax cross-entropy.
* ``"teacher"`` — teacher–student regression: x ~ N(0, I_d), y = f(x) for a fixed random
  tanh network f (two hidden layers of 32, N(0, 1.5²/fan_in) weights, the chaotic-edge gain
  of the mean-field literature, so the target is not nearly linear), standardized to mean 0,
  variance 1; mean squared error, so R² = 1 − loss.
* ``"sequence"`` — majority token: sequences of ``length`` tokens from ``vocab`` symbols,
  the label is the most frequent symbol (ties to the smallest); one-hot tokens, a linear
  embedding plus fixed sinusoidal positions, a stack of
  :class:`~arraynorm.nn.TransformerEncoderBlock` (Pre-LN), mean over positions, a linear
  read-out; softmax cross-entropy.

Models are :func:`arraynorm.nn.deep_stack` MLPs (Linear → norm → ReLU blocks, He
initialization) for the first two, Transformer stacks for the third; ``norm`` is any name
:func:`deep_stack` knows (the Transformer accepts ``"none"``, ``"batch"``, ``"layer"``,
``"rms"``: :data:`SEQUENCE_NORMS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import arraynorm as an
from arraynorm._array_api import xp_from_host
from arraynorm.data import spirals

from ._backend import Backend

__all__ = ["TASKS", "SEQUENCE_NORMS", "Task", "make_task", "build_model", "scale_invariant_groups",
           "set_norm_eps", "minibatches", "loss_and_backward", "evaluate"]

TASKS = ("spirals", "teacher", "sequence")
#: normalizations the Transformer blocks of the sequence task can carry
SEQUENCE_NORMS = ("none", "batch", "layer", "rms")


@dataclass(frozen=True)
class Task:
    """A fixed data set (host arrays) and how it is scored."""

    name: str
    x: np.ndarray
    y: np.ndarray          # float targets (regression) or int classes
    classes: int           # 0 for regression
    in_features: int
    out_features: int

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def arrays(self, b: Backend, idx: np.ndarray | None = None) -> tuple[Any, Any]:
        """``(x, y)`` (all samples, or the rows ``idx``) on the backend: x in its dtype, y in
        its dtype (regression) or int64 (classes)."""
        x = self.x if idx is None else self.x[idx]
        y = self.y if idx is None else self.y[idx]
        if self.classes:
            return b.asarray(x), xp_from_host(np.asarray(y, dtype=np.int64), b.xp, dtype=b.xp.int64)
        return b.asarray(x), b.asarray(y)

    def loss(self) -> an.nn.Module:
        return an.nn.CrossEntropyLoss() if self.classes else an.nn.MSELoss()


def teacher_regression(n: int, d_in: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: x ~ N(0, I_d) (n, d), y (n, 1) a fixed random tanh network of x, standardized."""
    x = rng.standard_normal((n, d_in))
    teacher = an.nn.deep_stack(2, 32, in_features=d_in, out_features=1, activation="tanh",
                               init="gaussian", sigma_w=1.5, bias=False, rng=rng)
    teacher.requires_grad_(False)
    y = np.asarray(teacher(x), dtype=np.float64)
    return x, (y - y.mean()) / y.std()


def majority_sequences(n: int, length: int, vocab: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(one_hot, label)``: (n, length, vocab) one-hot tokens and the most frequent token of
    each sequence (ties broken toward the smallest token)."""
    tokens = rng.integers(0, vocab, (n, length))
    one_hot = np.eye(vocab)[tokens]
    return one_hot, np.argmax(one_hot.sum(axis=1), axis=1)


def make_task(name: str, n: int, rng: np.random.Generator, *, d_in: int = 8, length: int = 8,
              vocab: int = 4) -> Task:
    """The task ``name`` (:data:`TASKS`) with ``n`` samples drawn from ``rng``."""
    if name == "spirals":
        x, y = spirals(n, seed=int(rng.integers(2**31)))
        return Task(name, x, y, 2, 2, 2)
    if name == "teacher":
        x, y = teacher_regression(n, d_in, rng)
        return Task(name, x, y, 0, d_in, 1)
    if name == "sequence":
        x, y = majority_sequences(n, length, vocab, rng)
        return Task(name, x, y, vocab, vocab, vocab)
    raise ValueError(f"make_task: task must be one of {TASKS}, got {name!r}")


# ----------------------------------------------------------------- sequence-model pieces
class _AddConstant(an.nn.Module):
    """y = x + P for a fixed (not trained) array P broadcast over the batch."""

    def __init__(self, p: Any) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Any) -> Any:
        return x + self.p

    def backward(self, dy: Any) -> Any:
        return dy


class _MeanOverPositions(an.nn.Module):
    """(N, T, D) → (N, D), the mean over positions; backward spreads dy/T over them."""

    def forward(self, x: Any) -> Any:
        from array_api_compat import array_namespace
        xp = array_namespace(x)
        self._save(xp=xp, shape=tuple(x.shape))
        return xp.mean(x, axis=1)

    def backward(self, dy: Any) -> Any:
        c = self._saved()
        xp, shape = c["xp"], c["shape"]
        return xp.broadcast_to(xp.expand_dims(dy / shape[1], axis=1), shape)


def _sinusoidal(length: int, d: int) -> np.ndarray:
    """Vaswani et al.'s fixed positional encoding (length, d)."""
    pos = np.arange(length)[:, None]
    freq = np.exp(-math.log(10000.0) * (np.arange(0, d, 2) / d))
    p = np.zeros((length, d))
    p[:, 0::2], p[:, 1::2] = np.sin(pos * freq), np.cos(pos * freq[: d // 2])
    return p


def _sequence_model(task: Task, norm: str, depth: int, width: int, rng: np.random.Generator,
                    b: Backend) -> an.nn.Sequential:
    where = dict(xp=b.xp, dtype=b.dtype)
    blocks = []
    for _ in range(depth):
        blk = an.nn.TransformerEncoderBlock(width, 2, 2 * width, norm_first=True,
                                            norm="rms" if norm == "rms" else "layer", rng=rng,
                                            **where)
        if norm == "none":
            blk.norm1, blk.norm2 = an.nn.Identity(), an.nn.Identity()
        elif norm == "batch":  # statistics over batch and positions, per channel (last axis)
            blk.norm1, blk.norm2 = (an.nn.BatchNorm(width, axis=-1, **where),
                                    an.nn.BatchNorm(width, axis=-1, **where))
        blocks.append(blk)
    length = task.x.shape[1]
    return an.nn.Sequential(
        an.nn.Linear(task.in_features, width, False, init="gaussian", rng=rng, **where),
        _AddConstant(b.asarray(_sinusoidal(length, width))),
        *blocks, _MeanOverPositions(),
        an.nn.Linear(width, task.out_features, rng=rng, **where))


def build_model(task: Task, norm: str, *, depth: int, width: int, rng: np.random.Generator,
                b: Backend, bias: bool = True, init: str = "he",
                norm_kwargs: dict[str, Any] | None = None) -> an.nn.Sequential:
    """The model of ``task`` with normalization ``norm``: a :func:`deep_stack` MLP (ReLU,
    ``init``) with a linear read-out, or for ``"sequence"`` a Pre-LN Transformer stack."""
    if task.name == "sequence":
        if norm not in SEQUENCE_NORMS:
            raise ValueError(f"build_model: the sequence task's Transformer takes norm in "
                             f"{SEQUENCE_NORMS}, got {norm!r}")
        return _sequence_model(task, norm, depth, width, rng, b)
    return an.nn.deep_stack(depth, width, in_features=task.in_features,
                            out_features=task.out_features, norm=norm, activation="relu",
                            init=init, bias=bias, norm_kwargs=norm_kwargs, rng=rng, xp=b.xp,
                            dtype=b.dtype)


#: the scale-invariant parameter of each weight-normalizing Linear (its direction only counts)
_PROXY = {"WeightNormLinear": "weight_v", "ReparamLinear": "weight_v",
          "SpectralNormLinear": "weight_orig"}


def scale_invariant_groups(model: an.nn.Sequential, *, strict: bool = True
                           ) -> list[tuple[an.nn.Module, str]]:
    """``(module, key)`` of the weight of every hidden block of a :func:`deep_stack` whose loss
    is invariant to scaling it: the Linear feeding an activation normalization (no bias, or
    the bias would have to be scaled with it: ``strict`` refuses a bias, ``strict=False``
    returns the weight anyway), or the proxy weight of a weight-normalizing Linear. Plain
    blocks (no normalization) contribute nothing."""
    out = []
    for block in model:
        if not isinstance(block, an.nn.Sequential):
            continue  # the read-out
        lin = block[0]
        kind = type(lin).__name__
        if kind in _PROXY:
            out.append((lin, _PROXY[kind]))
        elif any(isinstance(m, an.nn.Normalization) for m in block):
            if strict and "bias" in lin.params:
                raise ValueError("scale_invariant_groups: a Linear with a bias before a "
                                 "normalization is not scale-invariant alone; build with bias=False")
            out.append((lin, "weight"))
    return out


def set_norm_eps(model: an.nn.Module, eps: float | None) -> None:
    """Set ``eps`` of every activation normalization in ``model`` (``None``: leave them)."""
    if eps is None:
        return
    for _, m in model.named_modules():
        if isinstance(m, an.nn.Normalization):
            m.eps = float(eps)


def minibatches(rng: np.random.Generator, n: int, batch: int, steps: int) -> np.ndarray:
    """(steps, batch) sample indices, drawn with replacement (the demo's sampling)."""
    return rng.integers(0, n, (steps, batch))


def loss_and_backward(model: an.nn.Module, loss: an.nn.Module, x: Any, y: Any) -> float:
    """Forward, loss and backward (sets the gradients); returns the loss as a Python float."""
    value = loss(model(x), y)
    model.backward(loss.backward())
    return float(value)


def evaluate(model: an.nn.Module, task: Task, b: Backend) -> tuple[float, float]:
    """``(loss, score)`` on the whole data set, in training mode (batch statistics over the
    whole set): score is the accuracy (classes) or R² = 1 − MSE/var(y) (regression)."""
    x, y = task.arrays(b)
    loss = task.loss()
    out = model(x)
    value = float(loss(out, y))
    if task.classes:
        pred = np.argmax(Backend.to_numpy(out), axis=1)
        return value, float(np.mean(pred == task.y))
    return value, 1.0 - value / float(np.var(task.y))
