"""The normalizations the model builders know by name: one registry for
:func:`~arraynorm.nn.deep_stack`, :func:`~arraynorm.nn.cnn_stack` and
:func:`~arraynorm.nn.transformer_stack` (and :class:`~arraynorm.nn.TransformerEncoderBlock`).

Each entry says how the name becomes a layer on *features* — (N, width) activations, or the
trailing axis of (N, T, D) tokens — and on *maps* — (N, C, H, W), channel axis 1 —, and
whether it subtracts a per-channel mean (a bias just before it is then cancelled, so
``cnn_stack`` drops the conv bias). Two names change meaning on maps, following Wu & He
(2018): ``"layer"`` is GroupNorm with one group (statistics over (C, H, W), γ, β per
channel) and ``"instance"`` is InstanceNorm with a per-channel affine. The weight
normalizations replace a builder's Linear layers instead (:data:`WEIGHT_NORMS`).

Adding a normalization to every builder is one entry here (docs/architecture.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .linear import Linear, ReparamLinear, SpectralNormLinear, WeightNormLinear
from .module import Module
from .norm import (BatchNorm, BatchRenorm, GroupNorm, InstanceNorm, LayerNorm, PositionNorm,
                   RMSNorm, UncenteredBatchNorm)
from .whiten import DecorrelatedBatchNorm, IterNorm

__all__ = ["NormSpec", "NORM_LAYERS", "WEIGHT_NORMS", "make_norm", "names"]

#: ``(width or channels, layer keyword arguments) -> layer``
Factory = Callable[[int, dict[str, Any]], Module]


@dataclass(frozen=True)
class NormSpec:
    """How one named normalization becomes a layer: on features, on feature maps (``None``:
    not offered there), and whether it centres each channel."""

    features: Factory | None
    maps: Factory | None
    centres_channels: bool


def _groups(width: int) -> int:
    """The default group count: the largest <= 8 that divides the width (GN needs a divisor)."""
    return max(g for g in range(1, min(8, width) + 1) if width % g == 0)


def _group_norm(width: int, kw: dict[str, Any]) -> Module:
    kw = dict(kw)
    return GroupNorm(kw.pop("num_groups", _groups(width)), width, **kw)


def _same(cls: Callable[..., Module]) -> Factory:
    return lambda width, kw: cls(width, **kw)


#: activation normalizations by name (the builders' ``norm=``); "none" is no layer
NORM_LAYERS: dict[str, NormSpec] = {
    "batch": NormSpec(_same(BatchNorm), _same(BatchNorm), True),
    "batch_uncentered": NormSpec(_same(UncenteredBatchNorm), None, False),
    "layer": NormSpec(_same(LayerNorm), lambda c, kw: GroupNorm(1, c, **kw), True),
    "group": NormSpec(_group_norm, _group_norm, True),
    "rms": NormSpec(_same(RMSNorm), None, False),
    "position": NormSpec(_same(PositionNorm), _same(PositionNorm), False),
    "batch_renorm": NormSpec(_same(BatchRenorm), _same(BatchRenorm), True),
    "instance": NormSpec(None, lambda c, kw: InstanceNorm(c, **{"affine": True, **kw}), True),
    "dbn": NormSpec(_same(DecorrelatedBatchNorm), _same(DecorrelatedBatchNorm), True),
    "iternorm": NormSpec(_same(IterNorm), _same(IterNorm), True),
}

#: weight normalizations by name: the Linear layer class that replaces ``Linear``
WEIGHT_NORMS: dict[str, Callable[..., Module]] = {
    "weight_norm": WeightNormLinear,
    "spectral_norm": SpectralNormLinear,
    "weight_standardization": functools.partial(ReparamLinear, reparam="weight_standardization"),
    "centered_weight_norm": functools.partial(ReparamLinear, reparam="centered_weight_norm"),
}


def names(on: str, *, weight: bool = False) -> tuple[str, ...]:
    """``("none", …)``: the names offered on ``"features"`` or ``"maps"`` (with the weight
    normalizations when ``weight``), in registry order."""
    act = tuple(n for n, spec in NORM_LAYERS.items() if getattr(spec, on) is not None)
    return ("none",) + act + (tuple(WEIGHT_NORMS) if weight else ())


def make_norm(norm: str | Callable[[int], Module], width: int, kw: dict[str, Any],
              where: dict[str, Any], *, on: str = "features",
              fname: str = "deep_stack") -> Module | None:
    """The normalization layer ``norm`` for ``width`` features (or channels, ``on="maps"``),
    with keyword arguments ``kw`` and the placement ``where`` (xp, dtype, device); ``None``
    for "none" and for weight normalizations (they act on the Linear layers). A callable
    ``width -> Module`` is called (``TypeError`` unless it returns a Module)."""
    if callable(norm) and not isinstance(norm, str):
        layer = norm(width)
        if not isinstance(layer, Module):
            raise TypeError(f"{fname}: norm(width) must return a Module, got {type(layer).__name__}")
        return layer
    spec = NORM_LAYERS.get(norm)
    factory = None if spec is None else getattr(spec, on)
    return None if factory is None else factory(width, {**kw, **where})
