"""Local response normalization (Krizhevsky et al. 2012), with PyTorch's parameters."""

from __future__ import annotations

from collections.abc import Callable

from ._array_api import (
    xp_accumulation_dtype,
    xp_check_channel_axis,
    xp_check_finite_scalar,
    xp_check_floating,
    xp_check_int,
    xp_compute_dtype,
    xp_device,
    xp_namespace,
)
from ._jvp import defjvp
from ._typing import Array, Namespace, Pullback, Pushforward
from ._vjp import defvjp

__all__ = ["local_response_norm", "lrn_linearized"]


def _window_sum(xp: Namespace, a: Array, axis: int, before: int, after: int) -> Array:
    """Σ_{k=c−before}^{c+after} a_k along ``axis``, zeros outside: before + after + 1 shifted
    slices of a zero-padded copy (the window is a handful of channels, so this beats a
    cumulative sum, which would also cancel catastrophically in float32)."""
    n = a.shape[axis]
    zshape = list(a.shape)

    def zeros(k: int) -> Array:
        zshape[axis] = k
        return xp.zeros(tuple(zshape), dtype=a.dtype, device=xp_device(a))

    parts = ([zeros(before)] if before else []) + [a] + ([zeros(after)] if after else [])
    padded = xp.concat(parts, axis=axis) if len(parts) > 1 else a
    idx = [slice(None)] * a.ndim
    out = None
    for k in range(before + after + 1):
        idx[axis] = slice(k, k + n)
        term = padded[tuple(idx)]
        out = term if out is None else out + term
    return out


def lrn_linearized(x: Array, size: int, alpha: float, beta: float, k: float, axis: int
                   ) -> tuple[Array, Callable[[Array], tuple[Array, None]], Callable[[Array], Array]]:
    """``(y, pullback, pushforward)`` of :func:`local_response_norm` from one forward pass
    (the layer keeps both)."""
    fname = "local_response_norm"
    xp = xp_namespace(fname, x=x)
    xp_check_floating(fname, "x", x, xp)
    size = xp_check_int(fname, "size", size)
    alpha = xp_check_finite_scalar(fname, "alpha", alpha)
    beta = xp_check_finite_scalar(fname, "beta", beta)
    k = xp_check_finite_scalar(fname, "k", k, minimum=0.0, strict=True)
    if x.ndim < 3:
        raise ValueError(
            f"{fname}: x must have at least 3 dimensions (batch, channel, spatial), got shape "
            f"{tuple(x.shape)}"
        )
    ax = xp_check_channel_axis(fname, axis, x.ndim)
    # float32 (and half) inputs are computed in float64 where the backend has it: squares of
    # float32 values neither overflow nor underflow there, so every finite input gets its
    # result (in float32 x ~ 1e20 has x² = inf and y = 0; with β = 2 the backward's
    # s^{−β−1} underflows from x ~ 1e10). float64 squares overflow beyond ~1e154: s is then
    # inf and y is set to NaN rather than the wrong 0.
    ct = xp_compute_dtype(xp, x.dtype)
    xc = xp.astype(x, ct, copy=False)
    wt = xp_accumulation_dtype(xp, xc)
    xw = xc if wt == ct else xp.astype(xc, wt)
    lo, hi = size // 2, (size - 1) // 2
    # s_c = k + α/size · Σ_{window(c)} x², window(c) = [c − size//2, c + (size−1)//2]
    s = k + (alpha / size) * _window_sum(xp, xw * xw, ax, lo, hi)
    s_pow = s ** (-beta)
    if wt == ct:  # no wider dtype: an overflowed s (or an inf neighbour) gives NaN, not 0
        nan = xp.asarray(float("nan"), dtype=wt, device=xp_device(xw))
        s_pow = xp.where(xp.isinf(s) & xp.isfinite(xw), nan, s_pow)
    yw = xw * s_pow
    y = xp.astype(yw, x.dtype, copy=False)

    def pullback(dy: Array) -> tuple[Array, None]:
        g = xp.astype(dy, wt, copy=False)
        # ∂L/∂x_j = g_j s_j^{−β} − (2αβ/size) x_j Σ_{c : j ∈ window(c)} g_c y_c / s_c;
        # the transposed window is [j − (size−1)//2, j + size//2]. y/s, not x·s^{−β}/s:
        # no intermediate smaller than the terms themselves.
        t = _window_sum(xp, g * (yw / s), ax, hi, lo)
        dx = g * s_pow - (2.0 * alpha * beta / size) * xw * t
        return (xp.astype(dx, x.dtype, copy=False)), None

    def pushforward(tx: Array) -> Array:
        # dy_c = t_c s_c^{−β} − β x_c s_c^{−β−1} ds_c,  ds_c = (2α/size) Σ_{window(c)} x t
        t = xp.astype(tx, ct, copy=False)
        ds = (2.0 * alpha / size) * _window_sum(xp, xc * t, ax, lo, hi)
        dy = t * s_pow - beta * (xc * s_pow / s) * ds
        return xp.astype(dy, x.dtype, copy=False)

    return y, pullback, pushforward


def local_response_norm(x: Array, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0, *, axis: int = 1) -> Array:
    """Local response normalization across channels.

    ``axis`` is the *channel* axis the window runs along (default 1; one int; PyTorch fixes it
    at 1; it cannot be 0, the batch axis).

        y_c = x_c / (k + α/size · Σ_{c'=c−⌊size/2⌋}^{c+⌊(size−1)/2⌋} x_{c'}²)^β

    with zeros beyond the first and last channel. Same parameters, defaults and window as
    ``torch.nn.functional.local_response_norm`` (which divides α by ``size``, unlike the
    original AlexNet formula). ``x`` is (N, C, *S) with at least one spatial axis.

    Range: float32 and half inputs are computed in float64 where the backend has it (all but
    JAX without x64 and Apple's MPS), so every finite input gives its correctly rounded
    result, where PyTorch's float32 LRN returns 0 for |x| ≳ 1e19. float64 inputs whose
    squares overflow (|x| ≳ 1e154 in a window) give NaN, never a wrong finite value (so does
    a finite value next to an inf one in float64). Empty
    inputs give empty results, as in PyTorch.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.ones((1, 3, 1, 1))
    >>> an.local_response_norm(x, size=3, alpha=3.0, beta=1.0, k=1.0)[0, :, 0, 0]   # 1/(1 + Σx²)
    array([0.33333333, 0.25      , 0.33333333])
    """
    return lrn_linearized(x, size, alpha, beta, k, axis)[0]


@defvjp(local_response_norm)
def _lrn_vjp(x: Array, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *,
             axis: int = 1) -> tuple[Array, Pullback]:
    y, pb, _ = lrn_linearized(x, size, alpha, beta, k, axis)
    return y, lambda dy: pb(dy) + (None, None, None)


@defjvp(local_response_norm)
def _lrn_jvp(x: Array, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *,
             axis: int = 1) -> tuple[Array, Pushforward]:
    y, _, push = lrn_linearized(x, size, alpha, beta, k, axis)

    def pushforward(tx: Array = None, *hyperparameters: None) -> Array:
        return push(tx) if tx is not None else xp_namespace("local_response_norm", y=y).zeros_like(y)

    return y, pushforward
