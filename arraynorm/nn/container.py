"""Composition of layers: a chain (:class:`Sequential`) and a skip connection (:class:`Residual`).

Backward is the chain rule written out: ``Sequential`` calls its layers' ``backward`` in
reverse order; ``Residual`` adds the skip path's cotangent to the block's. Forward mode is
the same chain in the forward order: ``jvp`` pushes a tangent through the layers' ``jvp``.
"""

from __future__ import annotations

from collections.abc import Iterator

from .._array_api import xp_check_finite_scalar
from .._typing import Array
from .module import Module

__all__ = ["Sequential", "Residual"]


class Sequential(Module):
    """y = f_L(… f_2(f_1(x))); backward runs the layers' backward passes in reverse.

    Layers are named ``"0"``, ``"1"``, … in parameter names and state dicts (as
    ``torch.nn.Sequential``); ``seq[i]`` and ``len(seq)`` index them.

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import Sequential, Linear, BatchNorm, ReLU
    >>> model = Sequential(Linear(3, 4, rng=0), BatchNorm(4), ReLU(), Linear(4, 1, rng=1))
    >>> x = np.random.default_rng(2).standard_normal((8, 3))
    >>> y = model(x)
    >>> dx = model.backward(np.ones_like(y))
    >>> dx.shape, sorted(model.gradients())[:2]
    ((8, 3), ['0.bias', '0.weight'])
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be an arraynorm.nn Module, "
                                f"got {type(layer).__name__}")
            self._children[str(i)] = layer

    def __len__(self) -> int:
        return len(self._children)

    def __getitem__(self, i: int | slice) -> Module:
        layers = list(self._children.values())
        # a slice is a Sequential sharing the layers (e.g. the first k blocks of a deep stack)
        return Sequential(*layers[i]) if isinstance(i, slice) else layers[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self._children.values())

    def forward(self, x: Array) -> Array:
        """y = f_L(… f_1(x)): each layer's ``forward`` in order."""
        for layer in self._children.values():
            x = layer.forward(x)
        return x

    def backward(self, dy: Array) -> Array:
        """dx = J_1ᵀ ⋯ J_Lᵀ dy: each layer's ``backward`` in reverse order (setting their gradients)."""
        for layer in reversed(list(self._children.values())):
            dy = layer.backward(dy)
        return dy

    def jvp(self, dx: Array) -> Array:
        """J·dx = J_L ⋯ J_2 J_1 dx, each layer's ``jvp`` in the forward order."""
        for layer in self._children.values():
            dx = layer.jvp(dx)
        return dx


class Residual(Module):
    """y = shortcut(x) + scale · block(x) (He et al. 2016); the shortcut is the identity
    unless a layer (a projection) is given.

    Backward: ∂L/∂x = shortcutᵀ(dy) + block.backward(scale · dy). ``scale`` (default 1)
    is the residual branch multiplier of the signal-propagation literature (e.g. 1/√depth).
    """

    def __init__(self, block: Module, shortcut: Module | None = None, *, scale: float = 1.0) -> None:
        super().__init__()
        if not isinstance(block, Module):
            raise TypeError(f"Residual: block must be an arraynorm.nn Module, got {type(block).__name__}")
        self.block = block
        if shortcut is not None:
            self.shortcut = shortcut
        self.scale = xp_check_finite_scalar("Residual", "scale", scale)

    def forward(self, x: Array) -> Array:
        """y = shortcut(x) + scale · block(x)."""
        h = self.block.forward(x)
        s = self._children["shortcut"].forward(x) if "shortcut" in self._children else x
        if tuple(h.shape) != tuple(s.shape):
            raise ValueError(f"Residual.forward: the block maps {tuple(x.shape)} to "
                             f"{tuple(h.shape)} but the shortcut gives {tuple(s.shape)}; "
                             f"pass a shortcut projection")
        return s + h if self.scale == 1.0 else s + self.scale * h

    def backward(self, dy: Array) -> Array:
        """dx = shortcutᵀ(dy) + scale · blockᵀ(dy), setting both branches' gradients."""
        dblock = self.block.backward(dy if self.scale == 1.0 else self.scale * dy)
        dskip = self._children["shortcut"].backward(dy) if "shortcut" in self._children else dy
        return dskip + dblock

    def jvp(self, dx: Array) -> Array:
        """J·dx = shortcut.jvp(dx) + scale · block.jvp(dx)."""
        dh = self.block.jvp(dx)
        ds = self._children["shortcut"].jvp(dx) if "shortcut" in self._children else dx
        return ds + dh if self.scale == 1.0 else ds + self.scale * dh

    def extra_repr(self) -> str:
        return "" if self.scale == 1.0 else f"scale={self.scale}"
