"""Small convolutional networks with any normalization, for the batch-size and feature-map
studies (Wu & He 2018's comparison of BN, GN, LN, IN on CNNs).

:func:`cnn_stack` is :func:`~arraynorm.nn.deep_stack` for NCHW maps: conv–norm–activation
blocks, optional residual connections, pooling between stages, global average pooling and a
linear head. Normalizations are made by name through the registry ``deep_stack`` uses
(:mod:`arraynorm.nn.registry`); the two whose meaning changes on feature maps are:

* ``"layer"``: statistics per sample over (C, H, W) — :class:`GroupNorm` with one group
  (Wu & He 2018 §3.1, GN with G = 1), γ and β per channel. PyTorch users often write
  ``nn.LayerNorm([C, H, W])`` instead, which has the same statistics but a γ, β per element
  and ties the layer to one spatial size;
* ``"instance"``: statistics per sample and channel over (H, W) — :class:`InstanceNorm`
  with a per-channel affine by default (GN with G = C, as in Wu & He's comparison).
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from .._typing import Namespace
from .activation import make_activation
from .container import Residual, Sequential
from .conv import Conv2d
from .init import make_rng
from .linear import Linear
from .module import Module
from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .registry import NORM_LAYERS, make_norm, names

__all__ = ["cnn_stack", "CNN_NORMS"]

#: normalizations :func:`cnn_stack` knows by name (:mod:`arraynorm.nn.registry`, the ones
#: offered on (N, C, H, W) maps with channel axis 1)
CNN_NORMS = names("maps")

_POOLS = {"max": MaxPool2d, "avg": AvgPool2d}


def cnn_stack(channels: Sequence[int] = (16, 32, 64), *, in_channels: int = 1,
              num_classes: int | None = 10, kernel_size: int = 3,
              norm: str | Callable[[int], Module] | None = "batch",
              norm_kwargs: dict[str, Any] | None = None, activation: Any = "relu",
              residual: bool = False, residual_scale: float = 1.0, pool: str | None = "max",
              bias: bool | None = None, init: str = "he", sigma_w: float | None = None,
              sigma_b: float | None = None, rng: Any = None, xp: Namespace = None, dtype: Any = None,
              device: Any = None) -> Sequential:
    """A small CNN, as a :class:`Sequential`: one conv–norm–φ block per entry of ``channels``,
    a 2×2 pooling (stride 2) between blocks, global average pooling, a linear head.

    Block i is ``Conv2d(c_{i−1}, c_i, kernel_size, padding="same") → norm(c_i) → φ``. With
    ``residual=True`` it becomes ``shortcut(x) + residual_scale · block(x)``, the shortcut
    being the identity when the channel counts agree and a bias-free 1×1 ``Conv2d``
    projection otherwise (He et al. 2016, option B, without the projection's BN).

    Parameters
    ----------
    channels : output channels of the blocks (default (16, 32, 64)).
    in_channels : channels of the input images (default 1).
    num_classes : outputs of the linear head; ``None`` ends at the pooled (N, C) features.
    kernel_size : of every block's convolution (default 3, "same" padding).
    norm : ``"batch"`` (default), ``"group"``, ``"layer"`` (GN with one group, see the module
        docstring), ``"instance"`` (per-channel affine), ``"batch_renorm"``, ``"position"``,
        ``"dbn"``, ``"iternorm"``, ``"none"``/``None``, or a callable ``channels -> Module``.
        Weight normalizations (``deep_stack``'s ``"weight_norm"`` …) are not offered for
        convolutions.
    norm_kwargs : keyword arguments of the normalization (``{"num_groups": 4}`` for GN; the
        default group count is the largest divisor of the channels up to 8, as ``deep_stack``).
    activation : ``"relu"`` (default), ``"tanh"``, ``"gelu"``, ``"hardtanh"``, ``"identity"``
        or a layer (copied for each block).
    pool : ``"max"`` (default), ``"avg"`` or ``None`` (no downsampling between blocks).
    bias : conv biases; default (``None``): only where the normalization does not subtract a
        per-channel mean (``"none"``, ``"position"``, a callable), since a bias before BN, GN,
        LN, IN or whitening is cancelled (PyTorch's ResNets also drop it).
    init, sigma_w, sigma_b : initialization of every Conv2d and the head (:class:`Conv2d`).
    rng : seed or ``numpy.random.Generator``; xp, dtype, device: where the model lives.

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import cnn_stack
    >>> model = cnn_stack((8, 16), in_channels=1, num_classes=10, norm="group", rng=0)
    >>> x = np.random.default_rng(1).standard_normal((4, 1, 8, 8))
    >>> logits = model(x)
    >>> dx = model.backward(np.ones_like(logits))
    >>> logits.shape, dx.shape
    ((4, 10), (4, 1, 8, 8))
    """
    fname = "cnn_stack"
    try:
        chans = tuple(channels)
    except TypeError:
        chans = ()
    if not chans or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1
                        for c in chans):
        raise ValueError(f"{fname}: channels must be a non-empty sequence of positive ints, "
                         f"got {channels!r}")
    norm = "none" if norm is None else norm
    if isinstance(norm, str) and norm not in CNN_NORMS:
        raise ValueError(f"{fname}: norm must be one of {CNN_NORMS} or a callable, got {norm!r}")
    pool = "none" if pool is None else pool
    if pool != "none" and pool not in _POOLS:
        raise ValueError(f"{fname}: pool must be 'max', 'avg' or None, got {pool!r}")
    make_activation(activation)  # validate the name once, before building anything
    if bias is None:
        bias = not (isinstance(norm, str) and norm in NORM_LAYERS
                    and NORM_LAYERS[norm].centres_channels)
    g = make_rng(rng)
    where = dict(xp=xp, dtype=dtype, device=device)
    conv_kw = dict(init=init, sigma_w=sigma_w, sigma_b=sigma_b, rng=g, **where)
    kw = dict(norm_kwargs or {})
    layers: list[Module] = []
    c_in = in_channels
    for i, c in enumerate(chans):
        block_layers: list[Module] = [Conv2d(c_in, c, kernel_size, padding="same", bias=bias, **conv_kw)]
        nl = make_norm(norm, c, kw, where, on="maps", fname=fname)
        if nl is not None:
            block_layers.append(nl)
        block_layers.append(make_activation(copy.deepcopy(activation)))
        block: Module = Sequential(*block_layers)
        if residual:
            shortcut = None if c == c_in else Conv2d(c_in, c, 1, bias=False, **conv_kw)
            block = Residual(block, shortcut, scale=residual_scale)
        layers.append(block)
        if pool != "none" and i < len(chans) - 1:
            layers.append(_POOLS[pool](2))
        c_in = c
    layers.append(GlobalAvgPool2d())
    if num_classes is not None:
        layers.append(Linear(c_in, num_classes, init=init, sigma_w=sigma_w, sigma_b=sigma_b,
                             rng=g, **where))
    return Sequential(*layers)
