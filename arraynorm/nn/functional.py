"""Softmax and log-softmax along an axis with their VJPs, stable and at least float32.

softmax(z)_i = exp(z_i − m) / Σ_j exp(z_j − m) with m = max_j z_j: subtracting the maximum
keeps every exponent ≤ 0, so nothing overflows and −inf entries (masked scores) give 0.
log_softmax(z) = z − m − log Σ exp(z − m) (the log-sum-exp trick).

VJPs, with p = softmax(z) and g the cotangent of the output:
softmax:      ∂L/∂z = p ⊙ (g − Σ g ⊙ p)
log_softmax:  ∂L/∂z = g − p · Σ g
"""

from __future__ import annotations


import numpy as np
from array_api_compat import is_numpy_array

from .._array_api import xp_in_compute_dtype
from .._kernels import numba_jit
from .._typing import Array, Namespace

__all__ = ["softmax", "softmax_backward", "log_softmax", "log_softmax_backward"]

# On NumPy the same operations, in the same order (so the same values, bit for bit), write into
# one new array instead of three: the attention scores of a (32, 4, 128, 128) float32 batch are
# 8 MiB, and each fresh array of that size is page-faulted in anew. The compiled sweeps of the
# [jit] extra (from SOFTMAX_MIN_BYTES, last axis) are not those bits: within float32's rounding.


def softmax(xp: Namespace, z: Array, axis: int = -1, *, scale: float = 1.0) -> Array:
    """Softmax of ``scale·z`` along ``axis`` (``scale`` a finite float, default 1; the product
    rounded to the compute dtype first), computed in float32 at least and cast back to
    ``z``'s dtype.

    A float32 C-order NumPy ``z`` of at least 64 KiB
    (:data:`~arraynorm._kernels.numba_jit.SOFTMAX_MIN_BYTES`), along its last axis, takes the
    compiled row sweep where the ``[jit]`` extra is installed
    (:func:`arraynorm._kernels.numba_jit.softmax`: each row read once, a vectorized expf
    within 1 ulp of the exact exp, so p within a few ulp of the recipe's); elsewhere NumPy's
    recipe, in the order written above. PyTorch's ``softmax`` has no scale: for float32 and
    float64 this is ``torch.softmax(scale * z, dim)`` (float16 z: the product rounded in
    float32 here, in float16 there)."""
    if is_numpy_array(z) and (axis == -1 or axis == z.ndim - 1):
        p = numba_jit.softmax(z, scale)
        if p is not None:
            return p
    zc = xp_in_compute_dtype(xp, z)
    if scale != 1.0:
        zc = zc * scale
    if is_numpy_array(zc):
        e = np.subtract(zc, np.max(zc, axis=axis, keepdims=True))
        np.exp(e, out=e)
        p = np.divide(e, np.sum(e, axis=axis, keepdims=True), out=e)
    else:
        e = xp.exp(zc - xp.max(zc, axis=axis, keepdims=True))
        p = e / xp.sum(e, axis=axis, keepdims=True)
    return xp.astype(p, z.dtype, copy=False)


def softmax_backward(xp: Namespace, g: Array, p: Array, axis: int = -1, *,
                     scale: float = 1.0) -> Array:
    """∂L/∂z = p ⊙ (g − Σ_axis g ⊙ p) for p = softmax(z), times ``scale`` (the cotangent of z
    for p = softmax(scale·z)). Same-dtype C-order NumPy g and p of 64 KiB or more, along the
    last axis, take one compiled sweep where the ``[jit]`` extra is installed (the sum in
    float64); elsewhere NumPy's passes."""
    if is_numpy_array(g) and is_numpy_array(p) and g.dtype == p.dtype and g.shape == p.shape:
        if axis == -1 or axis == g.ndim - 1:
            ds = numba_jit.softmax_backward(g, p, scale)
            if ds is not None:
                return ds
        t = np.multiply(g, p)
        s = np.sum(t, axis=axis, keepdims=True)
        out = np.multiply(p, np.subtract(g, s, out=t), out=t)
        return out if scale == 1.0 else np.multiply(out, out.dtype.type(scale), out=out)
    out = p * (g - xp.sum(g * p, axis=axis, keepdims=True))
    return out if scale == 1.0 else out * scale


def log_softmax(xp: Namespace, z: Array, axis: int = -1) -> Array:
    """log softmax along ``axis`` by the log-sum-exp trick (float32 at least, cast back)."""
    zc = xp_in_compute_dtype(xp, z)
    s = zc - xp.max(zc, axis=axis, keepdims=True)
    out = s - xp.log(xp.sum(xp.exp(s), axis=axis, keepdims=True))
    return xp.astype(out, z.dtype, copy=False)


def log_softmax_backward(xp: Namespace, g: Array, logp: Array, axis: int = -1) -> Array:
    """∂L/∂z = g − softmax(z) · Σ_axis g, from the forward's output ``logp``."""
    return g - xp.exp(logp) * xp.sum(g, axis=axis, keepdims=True)
