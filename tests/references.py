"""Float64 NumPy references written independently of arraynorm: explicit loops over the
statistics' groups and ``np.var`` (no reshape tricks shared with the implementation)."""

from __future__ import annotations

import itertools

import numpy as np


def _standardize(v, eps):
    v = np.asarray(v, np.float64)
    return (v - v.mean()) / np.sqrt(v.var() + eps)


def batch_norm(x, w=None, b=None, eps=1e-5, axis=1, mean=None, var=None):
    x = np.moveaxis(np.asarray(x, np.float64), axis, 0)
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        if mean is None:
            out[c] = _standardize(x[c], eps)
        else:
            out[c] = (x[c] - mean[c]) / np.sqrt(var[c] + eps)
        if w is not None:
            out[c] *= w[c]
        if b is not None:
            out[c] += b[c]
    return np.moveaxis(out, 0, axis)


def layer_norm(x, w=None, b=None, eps=1e-5, axes=(-1,)):
    x = np.asarray(x, np.float64)
    axes = tuple(sorted(a % x.ndim for a in axes))
    keep = [a for a in range(x.ndim) if a not in axes]
    out = np.empty_like(x)
    for idx in itertools.product(*(range(x.shape[a]) for a in keep)):
        sl = [slice(None)] * x.ndim
        for a, i in zip(keep, idx):
            sl[a] = i
        sl = tuple(sl)
        out[sl] = _standardize(x[sl], eps)
    if w is not None:
        shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
        out = out * np.reshape(w, shape)
    if b is not None:
        shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
        out = out + np.reshape(b, shape)
    return out


def instance_norm(x, w=None, b=None, eps=1e-5, axis=1):
    x = np.moveaxis(np.asarray(x, np.float64), axis, 1)
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[n, c] = _standardize(x[n, c], eps)
            out[n, c] *= 1.0 if w is None else w[c]
            out[n, c] += 0.0 if b is None else b[c]
    return np.moveaxis(out, 1, axis)


def group_norm(x, g, w=None, b=None, eps=1e-5, axis=1):
    x = np.moveaxis(np.asarray(x, np.float64), axis, 1)
    out = np.empty_like(x)
    cpg = x.shape[1] // g
    for n in range(x.shape[0]):
        for k in range(g):
            out[n, k * cpg:(k + 1) * cpg] = _standardize(x[n, k * cpg:(k + 1) * cpg], eps)
    for c in range(x.shape[1]):
        out[:, c] *= 1.0 if w is None else w[c]
        out[:, c] += 0.0 if b is None else b[c]
    return np.moveaxis(out, 1, axis)


def rms_norm(x, w=None, eps=None, axes=(-1,)):
    x = np.asarray(x, np.float64)
    axes = tuple(a % x.ndim for a in axes)
    ms = np.mean(x ** 2, axis=axes, keepdims=True)
    out = x / np.sqrt(ms + eps)
    if w is not None:
        out = out * np.reshape(w, [x.shape[a] if a in axes else 1 for a in range(x.ndim)])
    return out


def position_norm(x, w=None, b=None, eps=1e-5, axis=1):
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        out[idx] = _standardize(x[idx], eps)
    if w is not None:
        out = out * w
    if b is not None:
        out = out + b
    return np.moveaxis(out, -1, axis)


def ghost_batch_norm(x, k, w=None, b=None, eps=1e-5, axis=1):
    x = np.asarray(x, np.float64)
    return np.concatenate([batch_norm(x[i:i + k], w, b, eps, axis) for i in range(0, x.shape[0], k)])


def batch_renorm(x, w, b, rmean, rvar, rmax, dmax, eps=1e-5, axis=1):
    x = np.moveaxis(np.asarray(x, np.float64), axis, 0)
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        mu, sd = x[c].mean(), np.sqrt(x[c].var() + eps)
        sigma = np.sqrt(rvar[c] + eps)
        r = np.clip(sd / sigma, 1 / rmax, rmax)
        d = np.clip((mu - rmean[c]) / sigma, -dmax, dmax)
        out[c] = ((x[c] - mu) / sd * r + d) * w[c] + b[c]
    return np.moveaxis(out, 0, axis)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    C = x.shape[1]
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
        s = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        out[:, c] = x[:, c] / (k + alpha / size * s) ** beta
    return out


def l2_normalize(x, p=2.0, axis=1, eps=1e-12):
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(np.moveaxis(x, axis, -1), ord=p, axis=-1)
    return x / np.expand_dims(np.maximum(n, eps), axis)


def adain(c, s, eps=1e-5):
    c, s = np.asarray(c, np.float64), np.asarray(s, np.float64)
    out = np.empty_like(c)
    for n in range(c.shape[0]):
        for ch in range(c.shape[1]):
            out[n, ch] = _standardize(c[n, ch], eps) * np.sqrt(s[n, ch].var() + eps) + s[n, ch].mean()
    return out
