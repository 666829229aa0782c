"""Losses with their gradients: mean squared error and softmax cross-entropy.

A loss is a :class:`~arraynorm.nn.Module` whose ``forward(y, target)`` returns a 0-d array and
whose ``backward(dl=1.0)`` returns ∂(dl · L)/∂y; ``jvp(dy)`` is the directional derivative
⟨∂L/∂y, dy⟩ (0-d), so a loss closes a chain of layer JVPs. Both average as PyTorch's
``reduction="mean"``.
"""

from __future__ import annotations

import math
from typing import Any

from .._array_api import xp_check_floating, xp_device, xp_namespace
from .._typing import Array
from .functional import log_softmax
from .module import Module

__all__ = ["MSELoss", "CrossEntropyLoss"]


class MSELoss(Module):
    """L = mean((y − t)²) over every element (``torch.nn.MSELoss()``); ∂L/∂y = 2 (y − t)/n."""

    def forward(self, y: Array, target: Array) -> Array:
        """L = mean((y − target)²), a 0-d array; caches y − target."""
        fname = "MSELoss.forward"
        xp = xp_namespace(fname, y=y, target=target)
        xp_check_floating(fname, "y", y, xp)
        if tuple(target.shape) != tuple(y.shape):
            raise ValueError(f"{fname}: target must have y's shape {tuple(y.shape)}, got {tuple(target.shape)}")
        diff = y - xp.astype(target, y.dtype)
        self._save(diff=diff, n=math.prod(y.shape), xp=xp)
        return xp.mean(diff * diff)

    def backward(self, dl: Any = 1.0) -> Array:
        """∂L/∂y = dl · 2 (y − target)/n (``dl`` the loss's cotangent, default 1)."""
        c = self._saved()
        return c["diff"] * (2.0 / c["n"]) * dl

    def jvp(self, dy: Array) -> Array:
        """dL = Σ 2 (y − t) dy / n (the target is held fixed)."""
        c = self._saved("jvp")
        return c["xp"].sum(c["diff"] * dy) * (2.0 / c["n"])


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of logits z (..., K), classes on the last axis:
    L = mean over positions of [logsumexp(z) − z_t].

    ``target`` is either integer class indices of shape z.shape[:-1] — (N,) for (N, K)
    logits, (N, T) for sequence logits (N, T, V) — or class probabilities of z's shape (then
    L = −mean Σ_k t_k log softmax(z)_k). The mean is over every position (N·T for sequences):
    ``torch.nn.functional.cross_entropy(z.reshape(-1, V), t.reshape(-1))``. For (N, K) this is
    ``torch.nn.CrossEntropyLoss()``; unlike PyTorch, whose sequence logits are (N, V, T), the
    class axis is always the last one. The log-sum-exp is taken after subtracting each row's
    maximum (no overflow for any logits), in float32 at least.
    ∂L/∂z = (softmax(z) − t)/M over M positions (t one-hot for indices).
    """

    def forward(self, logits: Array, target: Array) -> Array:
        """L = mean over rows of −Σ_k t_k log softmax(z)_k, a 0-d array (targets: class
        indices or probabilities).
        """
        fname = "CrossEntropyLoss.forward"
        xp = xp_namespace(fname, logits=logits, target=target)
        xp_check_floating(fname, "logits", logits, xp)
        if logits.ndim < 2:
            raise ValueError(f"{fname}: logits must have shape (N, K) or (N, ..., K), got "
                             f"{tuple(logits.shape)}")
        lead, k = tuple(logits.shape[:-1]), logits.shape[-1]
        n = math.prod(lead)
        if xp.isdtype(target.dtype, "integral"):
            if tuple(target.shape) != lead:
                raise ValueError(f"{fname}: class-index target must have shape {lead} (the "
                                 f"logits' without the class axis), got {tuple(target.shape)}")
            classes = xp.reshape(xp.arange(k, dtype=target.dtype, device=xp_device(target)),
                                 (1,) * len(lead) + (k,))
            t = xp.astype(xp.reshape(target, lead + (1,)) == classes, logits.dtype)
        elif xp.isdtype(target.dtype, "real floating"):
            if tuple(target.shape) != lead + (k,):
                raise ValueError(f"{fname}: probability target must have shape {lead + (k,)}, "
                                 f"got {tuple(target.shape)}")
            t = xp.astype(target, logits.dtype)
        else:
            raise TypeError(f"{fname}: target must be integer class indices or float probabilities, got {target.dtype}")
        logp = log_softmax(xp, logits, axis=-1)
        self._save(logp=logp, t=t, n=n, xp=xp)
        return -xp.sum(t * logp) / n

    def _grad(self, c: dict[str, Any]) -> Array:
        xp, t = c["xp"], c["t"]
        # softmax(z) − t, written for a soft target whose rows sum to s: Σ_k t_k · (p − e_k)
        s = xp.sum(t, axis=-1, keepdims=True)
        return xp.exp(c["logp"]) * s - t

    def backward(self, dl: Any = 1.0) -> Array:
        """∂L/∂z = dl · (softmax(z) − t)/M, M the number of rows (``dl`` default 1)."""
        c = self._saved()
        return self._grad(c) * (dl / c["n"])

    def jvp(self, dz: Array) -> Array:
        """dL = Σ (softmax(z) − t) · dz / M (the target is held fixed)."""
        c = self._saved("jvp")
        return c["xp"].sum(self._grad(c) * dz) / c["n"]
