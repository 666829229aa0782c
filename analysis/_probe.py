"""Per-layer probes of a stack of blocks: activation, input-gradient and weight-gradient norms
from one forward and one backward pass.

A deep model here is a :class:`arraynorm.nn.Sequential` of blocks (``deep_stack``'s hidden
blocks, Transformer encoder blocks, a final LayerNorm). :func:`probe_stack` walks the blocks
forward, recording h_ℓ (h₀ = x, h_ℓ = block_ℓ(h_{ℓ−1})), then backward from the cotangent
g_L = ∂L/∂h_L, calling each block's own closed-form ``backward`` in reverse order and recording
g_{ℓ−1} = ∂L/∂h_{ℓ−1} and the block's weight gradient ∂L/∂W_ℓ. The loss is linear in the
output, L = ⟨C, h_L⟩, so the cotangent C is given directly.

Norms are taken on the host in float64, scaled by the largest entry first, so that exploding
stacks (10¹⁵⁰ and more) give finite norms wherever the arrays themselves are finite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import Backend

__all__ = ["StackProbe", "probe_stack", "safe_norm", "first_matrix_parameter"]


def safe_norm(a: Any, backend: Backend | None = None) -> float:
    """Frobenius norm of an array of any backend, in float64, without overflow in the squares
    (``inf`` where an entry is infinite, ``nan`` where one is NaN)."""
    h = (backend or Backend()).to_numpy(a).ravel()
    if h.size == 0:
        return 0.0
    m = float(np.max(np.abs(h)))
    if not np.isfinite(m) or m == 0.0:
        return m
    return m * float(np.sqrt(np.sum((h / m) ** 2)))


def first_matrix_parameter(block: Any) -> str | None:
    """Qualified name of a block's first 2-D parameter (its Linear's weight, or the proxy
    weight ``weight_v``/``weight_orig`` of a reparameterized Linear); ``None`` if it has none."""
    for name, a in block.named_parameters():
        if getattr(a, "ndim", 0) == 2:
            return name
    return None


@dataclass
class StackProbe:
    """Per-layer norms of one forward/backward pass through ``L`` blocks.

    Attributes
    ----------
    activation_rms : (L + 1,) RMS of h_ℓ, ‖h_ℓ‖_F / √size, ℓ = 0 … L (h₀ the input).
    grad_norm : (L + 1,) ‖∂L/∂h_ℓ‖_F, ℓ = 0 … L (ℓ = L is the cotangent).
    weight_grad_norm : (L,) ‖∂L/∂W_ℓ‖_F of block ℓ = 1 … L (NaN where a block has none).
    """

    activation_rms: np.ndarray
    grad_norm: np.ndarray
    weight_grad_norm: np.ndarray

    @property
    def depth(self) -> int:
        return len(self.weight_grad_norm)


def probe_stack(blocks: Sequence[Any], x: Any, cotangent: Any | Callable[[Any], Any], *,
                backend: Backend | None = None,
                weight: str | Callable[[Any], str | None] = first_matrix_parameter) -> StackProbe:
    """Run ``blocks`` forward on ``x`` and backward from ``cotangent`` (an array shaped like the
    output, or ``output -> array``), recording the norms of :class:`StackProbe`.

    ``weight`` names the parameter whose gradient is recorded in each block (a qualified name
    such as ``"linear2.weight"``, or a function of the block); by default its first matrix.
    The blocks must be in training mode with gradients enabled (their caches are used).

    >>> import numpy as np, arraynorm as an
    >>> model = an.nn.deep_stack(30, 64, norm="batch", bias=False, rng=0)
    >>> rng = np.random.default_rng(1)
    >>> p = probe_stack(list(model), rng.standard_normal((16, 64)), rng.standard_normal((16, 64)))
    >>> p.depth, p.grad_norm.shape, bool(p.grad_norm[0] > 100 * p.grad_norm[-1])
    (30, (31,), True)
    """
    b = backend or Backend()
    blocks = list(blocks)
    h = x
    rms = [safe_norm(h, b) / np.sqrt(max(1, int(np.prod(tuple(h.shape)))))]
    for block in blocks:
        h = block.forward(h)
        rms.append(safe_norm(h, b) / np.sqrt(max(1, int(np.prod(tuple(h.shape))))))
    g = cotangent(h) if callable(cotangent) else cotangent
    if tuple(g.shape) != tuple(h.shape):
        raise ValueError(f"probe_stack: cotangent must have the output's shape {tuple(h.shape)}, "
                         f"got {tuple(g.shape)}")
    grads = [safe_norm(g, b)]
    wgrads = []
    for block in reversed(blocks):
        g = block.backward(g)
        grads.append(safe_norm(g, b))
        name = weight(block) if callable(weight) else weight
        dw = block.gradients().get(name) if name is not None else None
        wgrads.append(safe_norm(dw, b) if dw is not None else np.nan)
    return StackProbe(np.asarray(rms), np.asarray(grads[::-1]), np.asarray(wgrads[::-1]))
