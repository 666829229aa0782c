"""Adaptive instance normalization as a composition: instance partition ∘ standardize ∘
conditional affine, the affine's γ, β being the style's statistics.

The content is normalized by ``Normalizer(Instance(), Standardize(),
recovery=ConditionalAffine())`` with γ = σ(style), β = μ(style) per sample and channel; those
come from the style's own instance standardization (no recovery), whose state holds μ and
1/σ. The only code here is the derivative of (μ, σ) with respect to the style — the
conditioning input's pullback and pushforward —, which the survey's framework leaves to
whatever computes the conditional parameters (a style encoder, FiLM's generator).
"""

from __future__ import annotations

from collections.abc import Callable

from ._array_api import xp_check_eps, xp_check_floating, xp_namespace
from ._jvp import defjvp
from ._statistics import mean
from ._typing import Array, Pullback, Pushforward
from ._vjp import defvjp
from .compose import Normalizer
from .operation import Standardize
from .partition import Instance
from .recovery import ConditionalAffine, NoRecovery

__all__ = ["adain", "adain_linearized"]


def adain_linearized(content: Array, style: Array, eps: float, axis: int
                     ) -> tuple[Array, Callable[[Array], tuple[Array, Array]], Callable[..., Array]]:
    """``(y, pullback, pushforward)`` of :func:`adain` from one forward pass:
    ``pullback(dy) -> (dcontent, dstyle)``, ``pushforward(dcontent, dstyle=None) -> dy``."""
    fname = "adain"
    xp = xp_namespace(fname, content=content, style=style)
    xp_check_floating(fname, "content", content, xp)
    xp_check_floating(fname, "style", style, xp)
    xp_check_eps(fname, eps)
    # the conditioning: μ and σ = sqrt(var + eps) of the style, per sample and channel
    s_norm = Normalizer(Instance(axis), Standardize(), eps, fname, NoRecovery())
    _, s_ctx = s_norm.forward(style)
    s_layout = s_ctx.layout
    norm = Normalizer(Instance(axis), Standardize(), eps, fname, ConditionalAffine())
    c_layout = Instance(axis).layout(fname, tuple(content.shape))
    pshape = norm.recovery.param_shape(c_layout)
    if (style.ndim != content.ndim or style.shape[0] != content.shape[0]
            or s_layout.param_shape != c_layout.param_shape):
        raise ValueError(
            f"{fname}: style must match content in batch size and channels, got content "
            f"{tuple(content.shape)} and style {tuple(style.shape)}"
        )
    gamma = xp.reshape(1.0 / s_ctx.state.rstd, pshape)
    beta = xp.reshape(s_ctx.state.mean, pshape)
    y, c_ctx = norm.forward(content, gamma, beta)
    s_hat = xp.reshape(s_ctx.yhat, s_layout.view_shape)

    def pullback(dy: Array) -> tuple[Array, Array]:
        dcontent, dgamma, dbeta = norm.backward(c_ctx, dy)
        # σ = sqrt(var + eps), μ = mean over the M spatial values:
        # ∂σ/∂s = ŝ/M and ∂μ/∂s = 1/M, so ∂L/∂s = (∂L/∂μ + ∂L/∂σ · ŝ)/M
        shape = s_layout.stats_shape
        dstyle = (xp.reshape(dbeta, shape) + xp.reshape(dgamma, shape) * s_hat) / s_layout.group_size
        return dcontent, xp.astype(xp.reshape(dstyle, s_layout.shape), style.dtype, copy=False)

    def pushforward(dcontent: Array | None, dstyle: Array | None = None) -> Array:
        # dγ = dσ = mean(ŝ·ds), dβ = dμ = mean(ds) per sample and channel (the transpose of
        # the style pullback above); the content's part is the normalizer's own JVP
        dgamma = dbeta = None
        if dstyle is not None:
            ds = xp.reshape(xp.astype(dstyle, s_hat.dtype, copy=False), s_layout.view_shape)
            axes = s_layout.reduce_axes
            dgamma = xp.reshape(mean(xp, s_hat * ds, axes), pshape)
            dbeta = xp.reshape(mean(xp, ds, axes), pshape)
        return norm.jvp(c_ctx, dcontent, dgamma, dbeta)

    return y, pullback, pushforward


def adain(content: Array, style: Array, *, eps: float = 1e-5, axis: int = 1) -> Array:
    """Adaptive instance normalization (Huang & Belongie 2017).

    ``axis`` is the *channel* axis, kept: statistics per sample and channel (default 1; one int).

        y = σ(s) · (c − μ(c)) / σ(c) + μ(s)

    where μ, σ are per sample and channel over the spatial axes, σ = sqrt(biased variance +
    eps) for both content and style.

    Shapes: ``content`` (N, C, *S) and ``style`` (N, C, *S') — spatial sizes may differ.
    The reference implementation of the paper uses the unbiased variance for σ; this one
    uses the biased variance (as instance norm does), so content and style are measured the
    same way. ``vjp(adain, c, s)`` gives cotangents for both content and style.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> rng = np.random.default_rng(0)
    >>> c, s = rng.standard_normal((2, 3, 4, 4)), 5 + 2 * rng.standard_normal((2, 3, 6, 6))
    >>> y = an.adain(c, s)
    >>> bool(np.allclose(y.mean(axis=(2, 3)), s.mean(axis=(2, 3))))
    True
    """
    return adain_linearized(content, style, eps, axis)[0]


@defvjp(adain)
def _adain_vjp(content: Array, style: Array, *, eps: float = 1e-5, axis: int = 1) -> tuple[Array, Pullback]:
    return adain_linearized(content, style, eps, axis)[:2]


@defjvp(adain)
def _adain_jvp(content: Array, style: Array, *, eps: float = 1e-5, axis: int = 1) -> tuple[Array, Pushforward]:
    y, _, pushforward = adain_linearized(content, style, eps, axis)
    return y, pushforward
