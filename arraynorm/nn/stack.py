"""Deep fully connected stacks for signal-propagation and gradient-flow studies.

:func:`deep_stack` builds the models of the survey's analysis (§5) and of the mean-field
literature in one call: depth, width, activation, which normalization (or none), whether it
comes before or after the activation, residual connections or not, and the initialization.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from .._array_api import xp_check_int
from .._typing import Namespace
from .activation import make_activation
from .container import Residual, Sequential
from .init import make_rng
from .linear import Linear
from .module import Module
from .registry import WEIGHT_NORMS, make_norm, names

__all__ = ["deep_stack", "NORMS"]

#: normalizations :func:`deep_stack` knows by name (:mod:`arraynorm.nn.registry`: activation
#: normalizations act on the (N, width) pre/post-activations; weight normalizations replace
#: the Linear layers)
NORMS = names("features", weight=True)


def deep_stack(depth: int, width: int, *, in_features: int | None = None,
               out_features: int | None = None, activation: Any = "relu",
               norm: str | Callable[[int], Module] | None = None, norm_position: str = "before",
               residual: bool = False, residual_scale: float = 1.0, init: str = "he",
               sigma_w: float | None = None, sigma_b: float | None = None, bias: bool = True,
               norm_kwargs: dict[str, Any] | None = None, rng: Any = None, xp: Namespace = None,
               dtype: Any = None, device: Any = None) -> Sequential:
    """A deep MLP of ``depth`` hidden blocks of ``width`` units, as a :class:`Sequential`.

    Each hidden block is ``Linear → norm → φ`` (``norm_position="before"``, the BN paper's
    placement) or ``Linear → φ → norm`` (``"after"``); with ``residual=True`` each block
    whose input and output widths agree becomes ``x + residual_scale · block(x)``.

    Parameters
    ----------
    depth : number of hidden blocks (>= 1).
    width : units per hidden block.
    in_features : input width (default ``width``); the first block maps it to ``width``
        (and is then not residual).
    out_features : if given, a final ``Linear(width, out_features)`` read-out (no norm, no φ).
    activation : ``"relu"``, ``"tanh"``, ``"gelu"``, ``"hardtanh"``, ``"identity"``.
    norm : ``None``/``"none"``, ``"batch"``, ``"batch_uncentered"`` (scale-only BN,
        :class:`UncenteredBatchNorm`), ``"layer"``, ``"group"``, ``"rms"``,
        ``"position"``, ``"batch_renorm"``, ``"dbn"`` (decorrelated BN), ``"iternorm"`` —
        a layer after each Linear — or ``"weight_norm"``, ``"spectral_norm"``,
        ``"weight_standardization"``, ``"centered_weight_norm"``, which reparameterize every
        hidden Linear instead; or a callable ``width -> Module``.
    norm_kwargs : keyword arguments of the normalization layer (``{"num_groups": 4}``,
        ``{"momentum": None}``…).
    init, sigma_w, sigma_b, bias : initialization of every Linear (``"gaussian"`` with
        ``sigma_w``, ``sigma_b`` gives the mean-field theory's N(0, σ_w²/fan_in), N(0, σ_b²)).
    rng : seed or ``numpy.random.Generator``; xp, dtype, device: where the model lives.

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import deep_stack
    >>> model = deep_stack(200, 256, norm="batch", rng=0)
    >>> x = np.random.default_rng(1).standard_normal((64, 256))
    >>> y = model(x)
    >>> dx = model.backward(np.ones_like(y))
    >>> len(model), dx.shape
    (200, (64, 256))
    """
    fname = "deep_stack"
    for name, n in (("depth", depth), ("width", width)):
        xp_check_int(fname, name, n)
    norm = "none" if norm is None else norm
    if isinstance(norm, str) and norm not in NORMS:
        raise ValueError(f"{fname}: norm must be one of {NORMS} or a callable, got {norm!r}")
    if norm_position not in ("before", "after"):
        raise ValueError(f"{fname}: norm_position must be 'before' or 'after' the activation, "
                         f"got {norm_position!r}")
    make_activation(activation)  # validate the name once, before building anything
    g = make_rng(rng)
    where = dict(xp=xp, dtype=dtype, device=device)
    lin_kw = dict(init=init, sigma_w=sigma_w, sigma_b=sigma_b, rng=g, **where)
    linear_cls = WEIGHT_NORMS.get(norm, Linear) if isinstance(norm, str) else Linear
    kw = dict(norm_kwargs or {})
    fan_in = width if in_features is None else in_features
    blocks: list[Module] = []
    for i in range(depth):
        n_in = fan_in if i == 0 else width
        layers: list[Module] = [linear_cls(n_in, width, bias, **lin_kw)]
        nl = make_norm(norm, width, kw, where)
        # a layer given as the activation is copied: each block caches its own input
        act = make_activation(copy.deepcopy(activation))
        if nl is None:
            layers.append(act)
        elif norm_position == "before":
            layers += [nl, act]
        else:
            layers += [act, nl]
        block: Module = Sequential(*layers)
        if residual and n_in == width:
            block = Residual(block, scale=residual_scale)
        blocks.append(block)
    if out_features is not None:
        blocks.append(Linear(width, out_features, bias, **lin_kw))
    return Sequential(*blocks)
