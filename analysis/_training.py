"""What the training studies share: the synthetic task, the divergence test and the mean of
a run's summary over independent repetitions.

The task is the demo's two interleaved spirals (:func:`arraynorm.data.spirals`, 2-D inputs,
2 classes) and a ``deep_stack`` MLP with a linear read-out. Repetition ``rep`` draws its data
and its Linear weights from the study's seed and ``rep`` alone — not from the normalization —
so every normalization of a repetition starts from the same weights and sees the same data (a
paired comparison); the normalization layers themselves start at γ = 1, β = 0.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

import arraynorm as an
from arraynorm.data import spirals

from ._backend import Backend, point_rng

__all__ = ["spirals_data", "make_task", "diverging", "mean_over_seeds"]


def spirals_data(seed: int, rep: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Repetition ``rep``'s data set on the host: points (samples, 2) and classes (samples,)."""
    return spirals(samples, seed=int(point_rng(seed, "spirals", rep).integers(2 ** 31)))


def make_task(backend: Backend, *, seed: int, rep: int = 0, samples: int, depth: int,
              width: int, norm: Any, activation: str, loss: str) -> tuple[Any, Any, Any, Any]:
    """``(model, loss module, x, target)`` of the spirals task on ``backend``: ``norm`` is a
    ``deep_stack`` norm name or a callable ``width -> Module``; ``loss`` is "mse" (on one-hot
    targets) or "cross_entropy" (integer classes)."""
    xh, yh = spirals_data(seed, rep, samples)
    model = an.nn.deep_stack(depth, width, in_features=2, out_features=2, norm=norm,
                             activation=activation, init="he", rng=point_rng(seed, "weights", rep),
                             xp=backend.xp, dtype=backend.dtype)
    x = backend.asarray(xh)
    if loss == "mse":
        return model, an.nn.MSELoss(), x, backend.asarray(np.eye(2)[yh])
    return model, an.nn.CrossEntropyLoss(), x, backend.xp.asarray(yh.astype(np.int64))


def diverging(value: float, initial: float) -> bool:
    """Whether training has diverged: a loss that is not finite or above 10⁴ × its initial
    value (with a saturating activation the loss of a diverging run can stay finite while the
    read-out weights grow without bound)."""
    return not np.isfinite(value) or value > 1e4 * max(initial, 1e-300)


def mean_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary from the summaries of several repetitions: every real scalar (booleans
    excepted: any) becomes its mean over the repetitions, with the values kept under
    ``per_seed``; curves, spectra and other nested values are the first repetition's (the
    figure shows one run)."""
    out = dict(runs[0])
    per_seed: dict[str, list[Any]] = {}
    for key, value in runs[0].items():
        if isinstance(value, (bool, np.bool_)):
            out[key] = any(bool(r[key]) for r in runs)
        elif isinstance(value, numbers.Real):
            vals = [float(r[key]) for r in runs]
            out[key] = float(np.mean(vals))
            per_seed[key] = vals
    if len(runs) > 1:
        out["per_seed"] = per_seed
    return out
