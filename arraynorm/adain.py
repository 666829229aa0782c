"""Adaptive instance normalization: instance partition ∘ standardize ∘ conditional affine."""

from __future__ import annotations

from collections.abc import Callable

from ._typing import Array
from ._array_api import xp_check_eps, xp_check_floating, xp_compute_dtype, xp_namespace
from ._jvp import defjvp
from ._vjp import defvjp
from .compose import Normalizer
from .operation import Standardize, mean
from .partition import Instance
from .recovery import affine, affine_backward, affine_jvp

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
    norm = Normalizer(Instance(axis), Standardize(), eps, fname)
    chat, cctx = norm.forward(content)
    s_layout = Instance(axis).layout(fname, tuple(style.shape))
    s_layout.check_many(fname)
    c_layout = cctx.layout
    if (style.ndim != content.ndim or style.shape[0] != content.shape[0]
            or s_layout.param_shape != c_layout.param_shape):
        raise ValueError(
            f"{fname}: style must match content in batch size and channels, got content "
            f"{tuple(content.shape)} and style {tuple(style.shape)}"
        )
    ct = xp_compute_dtype(xp, style.dtype)
    sv = xp.astype(style, ct, copy=False)
    s_hat, s_state = Standardize().forward(xp, sv, s_layout, eps)
    # conditional affine: γ = σ(style), β = μ(style), one per sample and channel
    cond_axes = (0, c_layout.param_axes[0])
    pshape = tuple(content.shape[a] for a in cond_axes)
    gamma = xp.reshape(1.0 / s_state.rstd, pshape)
    beta = xp.reshape(s_state.mean, pshape)
    chat_ct = cctx.yhat
    y = affine(xp, chat_ct, gamma, beta, cond_axes)
    y = xp.astype(y, content.dtype, copy=False)

    def pullback(dy: Array) -> tuple[Array, Array]:
        dy = xp.astype(dy, chat_ct.dtype, copy=False)
        g, dgamma, dbeta = affine_backward(xp, dy, chat_ct, gamma, beta, cond_axes)
        dcontent = norm.backward(cctx, g)[0]
        # σ = sqrt(var + eps), μ = mean over the M spatial values:
        # ∂σ/∂s = ŝ/M and ∂μ/∂s = 1/M, so ∂L/∂s = (∂L/∂μ + ∂L/∂σ · ŝ)/M
        m = s_layout.group_size
        shape = s_layout.stats_shape
        dstyle = (xp.reshape(dbeta, shape) + xp.reshape(dgamma, shape) * s_hat) / m
        if dstyle.dtype != style.dtype:
            dstyle = xp.astype(dstyle, style.dtype)
        return dcontent, dstyle

    def pushforward(dcontent: Array | None, dstyle: Array | None = None) -> Array:
        # dy = σ(s)·dĉ + dσ(s)·ĉ + dμ(s), with dμ = mean(ds) and dσ = mean(ŝ·ds) per sample and
        # channel (the transpose of the style pullback above); dĉ = the standardization JVP
        dchat = None if dcontent is None else norm.jvp(cctx, dcontent)
        if dchat is not None and dchat.dtype != chat_ct.dtype:
            dchat = xp.astype(dchat, chat_ct.dtype)
        dgamma = dbeta = None
        if dstyle is not None:
            ds = xp.astype(dstyle, ct, copy=False)
            axes = s_layout.reduce_axes
            dgamma = xp.reshape(mean(xp, s_hat * ds, axes), pshape)
            dbeta = xp.reshape(mean(xp, ds, axes), pshape)
        dy = affine_jvp(xp, dchat, chat_ct, gamma, cond_axes, tuple(content.shape), dgamma, dbeta)
        return xp.astype(dy, content.dtype, copy=False)

    return y, pullback, pushforward


def adain(content: Array, style: Array, *, eps: float = 1e-5, axis: int = 1) -> Array:
    """Adaptive instance normalization (Huang & Belongie 2017).

    y = σ(s) · (c − μ(c)) / σ(c) + μ(s), where μ, σ are per sample and channel over the
    spatial axes, σ = sqrt(biased variance + eps) for both content and style.

    Shapes: ``content`` (N, C, *S) and ``style`` (N, C, *S') — spatial sizes may differ.
    The reference implementation of the paper uses the unbiased variance for σ; this one
    uses the biased variance (as instance norm does), so content and style are measured the
    same way. ``vjp(adain, c, s)`` gives cotangents for both content and style.
    """
    return adain_linearized(content, style, eps, axis)[0]


@defvjp(adain)
def _adain_vjp(content: Array, style: Array, *, eps: float = 1e-5, axis: int = 1) -> tuple[Array, Callable]:
    return adain_linearized(content, style, eps, axis)[:2]


@defjvp(adain)
def _adain_jvp(content: Array, style: Array, *, eps: float = 1e-5, axis: int = 1) -> tuple[Array, Callable]:
    y, _, pushforward = adain_linearized(content, style, eps, axis)
    return y, pushforward
