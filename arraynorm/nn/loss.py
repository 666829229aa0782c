"""Losses with their gradients: mean squared error and softmax cross-entropy.

A loss is a :class:`~arraynorm.nn.Module` whose ``forward(y, target)`` returns a 0-d array and
whose ``backward(dl=1.0)`` returns ∂(dl · L)/∂y. Both average over the batch as PyTorch's
``reduction="mean"``.
"""

from __future__ import annotations

import math
from typing import Any

from .._array_api import xp_check_floating, xp_device, xp_namespace
from .functional import log_softmax
from .module import Module

__all__ = ["MSELoss", "CrossEntropyLoss"]

Array = Any


class MSELoss(Module):
    """L = mean((y − t)²) over every element (``torch.nn.MSELoss()``); ∂L/∂y = 2 (y − t)/n."""

    def forward(self, y: Array, target: Array) -> Array:
        fname = "MSELoss.forward"
        xp = xp_namespace(fname, y=y, target=target)
        xp_check_floating(fname, "y", y, xp)
        if tuple(target.shape) != tuple(y.shape):
            raise ValueError(f"{fname}: target must have y's shape {tuple(y.shape)}, got {tuple(target.shape)}")
        diff = y - xp.astype(target, y.dtype)
        self._save(diff=diff, n=math.prod(y.shape))
        return xp.mean(diff * diff)

    def backward(self, dl: Any = 1.0) -> Array:
        c = self._saved()
        return c["diff"] * (2.0 / c["n"]) * dl


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of logits z (N, K): L = mean_n [logsumexp(z_n) − z_n,t_n].

    ``target`` is either integer class indices (N,) or class probabilities (N, K)
    (then L = −mean_n Σ_k t_nk log softmax(z_n)_k), as ``torch.nn.CrossEntropyLoss()``.
    The log-sum-exp is taken after subtracting each row's maximum (no overflow for any
    logits), in float32 at least. ∂L/∂z = (softmax(z) − t)/N (t one-hot for indices).
    """

    def forward(self, logits: Array, target: Array) -> Array:
        fname = "CrossEntropyLoss.forward"
        xp = xp_namespace(fname, logits=logits, target=target)
        xp_check_floating(fname, "logits", logits, xp)
        if logits.ndim != 2:
            raise ValueError(f"{fname}: logits must have shape (N, K), got {tuple(logits.shape)}")
        n, k = logits.shape
        if xp.isdtype(target.dtype, "integral"):
            if tuple(target.shape) != (n,):
                raise ValueError(f"{fname}: class-index target must have shape ({n},), got {tuple(target.shape)}")
            classes = xp.reshape(xp.arange(k, dtype=target.dtype, device=xp_device(target)), (1, k))
            t = xp.astype(xp.reshape(target, (n, 1)) == classes, logits.dtype)
        elif xp.isdtype(target.dtype, "real floating"):
            if tuple(target.shape) != (n, k):
                raise ValueError(f"{fname}: probability target must have shape ({n}, {k}), got {tuple(target.shape)}")
            t = xp.astype(target, logits.dtype)
        else:
            raise TypeError(f"{fname}: target must be integer class indices or float probabilities, got {target.dtype}")
        logp = log_softmax(xp, logits, axis=-1)
        self._save(logp=logp, t=t, n=n, xp=xp)
        return -xp.sum(t * logp) / n

    def backward(self, dl: Any = 1.0) -> Array:
        c = self._saved()
        xp, t = c["xp"], c["t"]
        # softmax(z) − t, written for a soft target whose rows sum to s: Σ_k t_k · (p − e_k)
        s = xp.sum(t, axis=-1, keepdims=True)
        return (xp.exp(c["logp"]) * s - t) * (dl / c["n"])
