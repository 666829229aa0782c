"""The naive NumPy peer: textbook recipes, one NumPy call per step of the derivation.

This is what a NumPy user writes without a library: forward as mean, variance, subtract,
divide, affine; backward as the staged derivation of Ioffe & Szegedy (2015, §3) — dx̂, dσ²,
dμ, dx — with every intermediate a full-size temporary. It is a peer for speed, not an
oracle: the tests never compare against it. Each recipe returns ``(y, backward)`` with
``backward(dy)`` giving the cotangents of the array inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["norm", "rms_norm", "weight_norm", "spectral_norm", "iter_norm"]

Pullback = Callable[[np.ndarray], tuple[Any, ...]]


def norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, *, view: tuple[int, ...],
         axes: tuple[int, ...], pshape: tuple[int, ...], eps: float) -> tuple[np.ndarray, Pullback]:
    """Standardize ``x.reshape(view)`` over ``axes``, then y = x̂·w + b with w, b reshaped to
    ``pshape`` (broadcast over ``x.shape``): BN, LN, IN and GN by choice of view and axes."""
    xv = x.reshape(view)
    mean = xv.mean(axis=axes, keepdims=True)
    var = xv.var(axis=axes, keepdims=True)
    xmu = xv - mean
    std = np.sqrt(var + eps)
    xhat = (xmu / std).reshape(x.shape)
    wb, bb = w.reshape(pshape), b.reshape(pshape)
    y = xhat * wb + bb
    n = math.prod(view[a] for a in axes)
    paxes = tuple(i for i, p in enumerate(pshape) if p == 1)

    def backward(dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dw = (dy * xhat).sum(axis=paxes).reshape(w.shape)
        db = dy.sum(axis=paxes).reshape(b.shape)
        dxhat = (dy * wb).reshape(view)
        dvar = (dxhat * xmu).sum(axis=axes, keepdims=True) * -0.5 * std ** -3
        dmean = (-dxhat / std).sum(axis=axes, keepdims=True) + dvar * (-2.0 * xmu).mean(axis=axes, keepdims=True)
        dx = dxhat / std + dvar * 2.0 * xmu / n + dmean / n
        return dx.reshape(x.shape), dw, db

    return y, backward


def rms_norm(x: np.ndarray, w: np.ndarray, *, eps: float) -> tuple[np.ndarray, Pullback]:
    """y = x / sqrt(mean(x²) + eps) · w over the last axis."""
    ms = (x * x).mean(axis=-1, keepdims=True)
    r = np.sqrt(ms + eps)
    xhat = x / r
    y = xhat * w
    n = x.shape[-1]

    def backward(dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dw = (dy * xhat).reshape(-1, n).sum(axis=0)
        dxhat = dy * w
        dr = (dxhat * x * (-1.0 / r ** 2)).sum(axis=-1, keepdims=True)
        dx = dxhat / r + dr * x / (n * r)
        return dx, dw

    return y, backward


def weight_norm(v: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, Pullback]:
    """w = g · v / ‖v‖, one norm per row of a matrix ``v`` (dim 0)."""
    nrm = np.sqrt((v * v).sum(axis=1, keepdims=True))
    gb = g.reshape(-1, 1)
    w = gb * v / nrm

    def backward(dw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = (dw * v).sum(axis=1, keepdims=True)
        dg = (s / nrm).reshape(g.shape)
        dv = gb / nrm * dw - gb * s / nrm ** 3 * v
        return dv, dg

    return w, backward


def _unit(a: np.ndarray, eps: float) -> np.ndarray:
    return a / max(float(np.linalg.norm(a)), eps)


def spectral_norm(W: np.ndarray, u: np.ndarray, *, n_power_iterations: int = 1,
                  eps: float = 1e-12) -> tuple[np.ndarray, Pullback]:
    """w = W / σ̃ with σ̃ from power iteration started at ``u`` (PyTorch's parametrization)."""
    u = _unit(u, eps)
    for _ in range(n_power_iterations):
        v = _unit(W.T @ u, eps)
        u = _unit(W @ v, eps)
    v = _unit(W.T @ u, eps)
    sigma = u @ W @ v
    w = W / sigma

    def backward(dw: np.ndarray) -> tuple[np.ndarray]:
        return (dw / sigma - (dw * W).sum() / sigma ** 2 * np.outer(u, v),)

    return w, backward


def iter_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, *, num_groups: int, T: int,
              eps: float) -> tuple[np.ndarray, Pullback]:
    """IterNorm (Huang et al. 2019) of ``x`` (N, C): per group of C/G channels, Σ of the
    centred group, W = P_T/sqrt(tr Σ) with P_{k+1} = 1.5 P_k − 0.5 P_k³ Σ/trΣ, y = W x_c;
    then the per-channel affine. Backward by reversing the T Newton steps one by one."""
    n, c = x.shape
    d = c // num_groups
    xg = x.reshape(n, num_groups, d).transpose(1, 2, 0)          # (G, d, N)
    xc = xg - xg.mean(axis=2, keepdims=True)
    eye = np.eye(d, dtype=x.dtype)
    sigma = xc @ xc.transpose(0, 2, 1) / n + eps * eye
    tr = np.trace(sigma, axis1=1, axis2=2).reshape(-1, 1, 1)
    sn = sigma / tr
    Ps = [np.broadcast_to(eye, sigma.shape)]
    for _ in range(T):
        P = Ps[-1]
        Ps.append(1.5 * P - 0.5 * P @ P @ P @ sn)
    Wm = Ps[-1] / np.sqrt(tr)
    yg = Wm @ xc
    xhat = yg.transpose(2, 0, 1).reshape(n, c)
    y = xhat * w + b

    def backward(dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dw, db = (dy * xhat).sum(axis=0), dy.sum(axis=0)
        dyg = (dy * w).reshape(n, num_groups, d).transpose(1, 2, 0)
        dW = dyg @ xc.transpose(0, 2, 1)
        dxc = Wm.transpose(0, 2, 1) @ dyg
        dP = dW / np.sqrt(tr)
        dtr = -0.5 * tr ** -1.5 * (dW * Ps[-1]).sum(axis=(1, 2), keepdims=True)
        dsn = np.zeros_like(sigma)
        for k in range(T, 0, -1):
            P = Ps[k - 1]
            G = -0.5 * dP
            PP = P @ P
            dsn += (PP @ P).transpose(0, 2, 1) @ G
            dP = (1.5 * dP + G @ (PP @ sn).transpose(0, 2, 1)
                  + P.transpose(0, 2, 1) @ G @ (P @ sn).transpose(0, 2, 1)
                  + PP.transpose(0, 2, 1) @ G @ sn.transpose(0, 2, 1))
        dsigma = dsn / tr
        dtr = dtr - (dsn * sigma).sum(axis=(1, 2), keepdims=True) / tr ** 2
        dsigma = dsigma + dtr * eye
        dxc = dxc + (dsigma + dsigma.transpose(0, 2, 1)) @ xc / n
        dxg = dxc - dxc.mean(axis=2, keepdims=True)
        return dxg.transpose(2, 0, 1).reshape(n, c), dw, db

    return y, backward
