"""The numerics every statistic of the package is computed with: means accumulated in at
least float32 (float64 where the backend has it), shifted two-pass moments, sums of squares
scaled by powers of two so that they neither overflow nor underflow, L_p norms and their
gradient.

DESIGN.md §3.3 is enforced here. The operations of stage 2 (:mod:`arraynorm.operation`), the
NumPy fast path (:mod:`arraynorm._kernels`), the matrix functions (:mod:`arraynorm._linalg`)
and the weight and gradient families all take their statistics from this module, so that
one formula serves every caller; everything works on a view and a tuple of reduction axes,
never on array values (no Python ``if`` on data: Dask stays lazy, CuPy never synchronizes).
"""

from __future__ import annotations

import math

import numpy as np

from ._array_api import xp_accumulation_dtype, xp_device
from ._typing import Array, Dtype, Namespace

__all__ = ["mean", "accumulated_sum", "centre", "statistics", "moments", "pow2_scale",
           "merged_sum_of_squares", "sum_of_squares", "scaled_mean_square", "unscale", "inv_root", "lp_norm",
           "lp_norm_gradient"]


def _count(a: Array, axes: tuple[int, ...]) -> int:
    return math.prod(a.shape[i] for i in axes)


def accumulated_sum(xp: Namespace, a: Array, axes: tuple[int, ...]) -> Array:
    """Σ over ``axes`` (keepdims) in ``a``'s dtype, accumulated as :func:`mean` does."""
    acc = xp_accumulation_dtype(xp, a)
    if acc == a.dtype:
        return xp.sum(a, axis=axes, keepdims=True)
    return xp.astype(xp.sum(a, axis=axes, keepdims=True, dtype=acc), a.dtype)


def mean(xp: Namespace, a: Array, axes: tuple[int, ...]) -> Array:
    """Mean over ``axes`` (keepdims) in ``a``'s dtype, the sum accumulated in
    :func:`~arraynorm._array_api.xp_accumulation_dtype` (float64 for float32 data where
    available: NumPy's strided sums are not pairwise). The mean of no values is NaN (0/0,
    without NumPy's warning)."""
    acc = xp_accumulation_dtype(xp, a)
    n = _count(a, axes)
    if n == 0:
        return xp.sum(a, axis=axes, keepdims=True) * float("nan")
    if acc == a.dtype:
        return xp.mean(a, axis=axes, keepdims=True)
    return xp.astype(xp.sum(a, axis=axes, keepdims=True, dtype=acc) / n, a.dtype)


def _exponent_range(xp: Namespace, dtype: Dtype) -> tuple[int, int]:
    """(emin, emax) of a floating dtype: 2**e is a normal number for emin <= e < emax."""
    fi = xp.finfo(dtype)
    return math.frexp(float(fi.smallest_normal))[1] - 1, math.frexp(float(fi.max))[1]


def pow2_scale(xp: Namespace, m: Array, *, floor: float = 0.0) -> Array:
    """A power of two 2**e with e = floor(log2 m), per statistic, to divide values of
    magnitude up to ``m`` by before squaring them: the quotients are below 2, so their squares
    neither overflow nor, for the values that matter, underflow.

    e is kept where 2**e and 2**-e are both normal numbers of ``m``'s dtype; where ``m`` is 0,
    inf or NaN the scale is 1 (nothing to scale, or nothing a scale can save). ``floor``
    (a Python float) is a lower bound on the scale (whitening: eps/scale² must stay finite).
    Only elementwise work on the per-statistic array ``m``.
    """
    emin, emax = _exponent_range(xp, m.dtype)
    ok = xp.isfinite(m) & (m > 0)
    one = xp.ones_like(m)
    e = xp.clip(xp.floor(xp.log2(xp.where(ok, m, one))), min=emin + 1, max=emax - 2)
    s = xp.where(ok, 2.0 ** e, one)
    if floor > 0.0:
        s = xp.maximum(s, xp.asarray(floor, dtype=s.dtype, device=xp_device(s)))
    return s


def merged_sum_of_squares(xp: Namespace, s: Array, ss: Array, axes: tuple[int, ...],
                          dev: Array | None = None, w: Array | None = None) -> tuple[Array, Array]:
    """Chan's merge of parts' scaled moments over ``axes`` (keepdims): ``(S, m2)`` with
    Σ_k s_k²·ss_k + Σ_k w_k·dev_k² = S²·m2, every term divided by the common power of two S
    before squaring (``dev``, ``w``: the parts' mean deviations and counts; absent for RMS).

    S is the largest scale of the parts that have spread (ss > 0) and :func:`pow2_scale` of
    the largest |dev| where that is not 0; 1 where neither. A spread-free part (constant, or
    empty) has the neutral scale 1, and so has a zero spread of the means: kept in the
    maximum, either would swamp parts of tiny values (2^-700), whose scaled squares then
    underflow; such a part adds no term (its (s/S)² may overflow, times 0). Used by the NumPy
    fast path and the Dask implementation; the JIT's ``channels_merge`` does the same in
    its loop.
    """
    spread_free = ss == 0
    zero = xp.zeros_like(s)
    S = xp.max(xp.where(spread_free, zero, s), axis=axes, keepdims=True)
    if dev is not None:
        top = xp.max(xp.abs(dev), axis=axes, keepdims=True)
        S = xp.where(top > 0, xp.maximum(S, pow2_scale(xp, top)), S)
    S = xp.where(S > 0, S, xp.ones_like(S))
    r = s / S
    m2 = xp.sum(xp.where(spread_free, zero, r * r * ss), axis=axes, keepdims=True)
    if dev is not None:
        assert w is not None, "dev needs the parts' counts w"
        d = dev / S
        m2 = m2 + xp.sum(w * d * d, axis=axes, keepdims=True)
    return S, m2


def sum_of_squares(xp: Namespace, a: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
    """``(s, ss)`` with Σ a² = s²·ss over ``axes`` (keepdims), for any finite ``a``.

    Squares of float32 values neither overflow (|a| > 1.8e19) nor underflow (|a| < 1e-19)
    in float64, so where the accumulation dtype is wider (float32 data on every backend but
    JAX without x64 and MPS) ``a`` is promoted, ``ss`` is Σ a² in float64 and ``s`` is
    ``None`` (1): one more elementwise pass (the cast), no reduction. Otherwise (float64
    data) ``s`` is :func:`pow2_scale` of max|a| per statistic and ``ss`` = Σ (a/s)² in
    ``a``'s dtype: one more reduction (the max) and one more elementwise pass.
    """
    acc = xp_accumulation_dtype(xp, a)
    if acc != a.dtype:
        w = xp.astype(a, acc)
        return None, xp.sum(w * w, axis=axes, keepdims=True)
    if _count(a, axes) == 0:
        z = xp.sum(a, axis=axes, keepdims=True)
        return xp.ones_like(z), z
    s = pow2_scale(xp, xp.max(xp.abs(a), axis=axes, keepdims=True))
    t = a * (1.0 / s)
    return s, xp.sum(t * t, axis=axes, keepdims=True)


def scaled_mean_square(xp: Namespace, a: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
    """``(s, ms)`` with mean(a²) = s²·ms over ``axes`` (see :func:`sum_of_squares`); the mean
    of no values is NaN."""
    s, ss = sum_of_squares(xp, a, axes)
    n = _count(a, axes)
    return s, (ss / n if n else ss * float("nan"))


def unscale(xp: Namespace, s: Array, ms: Array, dtype: Dtype) -> Array:
    """s²·ms in ``dtype``: inf where it is not representable there (a float32 variance of
    values beyond 1.8e19 is), never a wrong finite number. Formed as (s·ms)·s: s² alone
    may overflow where s²·ms does not (ms >= 1/(4n): the largest value counts)."""
    v = ms if s is None else (s * ms) * s
    return xp.astype(v, dtype, copy=False)


def inv_root(xp: Namespace, s: Array, ms: Array, eps: float, dtype: Dtype) -> Array:
    """1/sqrt(s²·ms + eps) in ``dtype``, without forming s²·ms: 1/hypot(s·sqrt(ms), sqrt(eps)),
    so a variance that overflows (or underflows) its dtype still gives the right finite
    rstd. Per-statistic work only. inf where s²·ms + eps is 0 (eps = 0 on a constant input),
    as 1/sqrt(0)."""
    a = xp.sqrt(ms) if s is None else s * xp.sqrt(ms)
    b = math.sqrt(eps)
    hi = xp.maximum(a, xp.asarray(b, dtype=a.dtype, device=xp_device(a)))
    lo = xp.minimum(a, xp.asarray(b, dtype=a.dtype, device=xp_device(a)))
    r = lo / xp.where(hi > 0, hi, xp.ones_like(hi))
    out = 1.0 / (hi * xp.sqrt(1.0 + r * r))
    return xp.astype(out, dtype, copy=False)


def centre(xp: Namespace, xv: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
    """``(mean, x − mean)`` over ``axes`` (keepdims), the centred values accurate whatever
    the offset.

    Shifted: the first value of each partition is subtracted before the mean is taken, so
    the summands are O(spread) even for inputs offset by 10⁴ (float32) or 10¹⁰ (float64),
    and ``x − mean`` is formed as (x − shift) − mean(x − shift), never from the rounded
    mean. A non-finite first value is not used as the shift (inf − inf would turn an inf mean
    into NaN); the shift is then 0.
    """
    # slice(0, 0) on an empty axis: the standard leaves out-of-bounds slices unspecified
    first = tuple(slice(0, min(1, xv.shape[a])) if a in axes else slice(None) for a in range(xv.ndim))
    shift = xv[first]
    shift = xp.where(xp.isfinite(shift), shift, xp.zeros_like(shift))
    xs = xv - shift
    mean_s = mean(xp, xs, axes)
    if isinstance(xs, np.ndarray):  # xs is this function's own new array: centred in place
        return shift + mean_s, np.subtract(xs, mean_s, out=xs)
    return shift + mean_s, xs - mean_s


def statistics(xp: Namespace, xv: Array, axes: tuple[int, ...], eps: float) -> tuple[Array, Array, Array, Array]:
    """Mean, biased variance, rstd = 1/sqrt(var + eps) and centred input over ``axes``
    (keepdims): the statistics of :class:`Standardize`.

    Two-pass on shifted values (:func:`centre`), never E[x²] − E[x]², which loses every
    significant digit once |mean| ≫ std. The sum of squared deviations is accumulated in
    float64 for float32 data and scaled by a power of two for float64 data
    (:func:`sum_of_squares`), so it neither overflows nor underflows for any finite input;
    rstd comes from the scaled sum (:func:`inv_root`). ``var`` is inf where the variance
    itself is not representable in the dtype. The centred input is returned because every
    caller needs it next.
    """
    mu, xc = centre(xp, xv, axes)
    s, ms = scaled_mean_square(xp, xc, axes)
    return mu, unscale(xp, s, ms, xv.dtype), inv_root(xp, s, ms, eps, xv.dtype), xc


def moments(xp: Namespace, xv: Array, axes: tuple[int, ...]) -> tuple[Array, Array, Array]:
    """Mean, biased variance and centred input over ``axes`` (keepdims); see
    :func:`statistics`."""
    mu, var, _, xc = statistics(xp, xv, axes, 0.0)
    return mu, var, xc



def lp_norm(xp: Namespace, a: Array, p: float, axes: tuple[int, ...]) -> Array:
    """‖a‖_p over ``axes`` (keepdims), in ``a``'s dtype, without overflow or underflow for
    any finite ``a``; 0 over no values (the empty sum, and the max of nothing non-negative).

    p = 2: :func:`sum_of_squares`. p = inf: max|a|. Other p: m·(Σ(|a|/m)^p)^(1/p) with
    m = max|a|, so the p-th powers are at most 1 (one more reduction). inf/NaN entries make
    the norm inf/NaN, as ``vector_norm``.
    """
    if _count(a, axes) == 0:
        return xp.sum(a, axis=axes, keepdims=True)
    if p == 2.0:
        s, ss = sum_of_squares(xp, a, axes)
        r = xp.sqrt(ss) if s is None else s * xp.sqrt(ss)
        return xp.astype(r, a.dtype, copy=False)
    mag = xp.abs(a)
    m = xp.max(mag, axis=axes, keepdims=True)
    if p == math.inf:
        return m
    ok = xp.isfinite(m) & (m > 0)
    scale = xp.where(ok, m, xp.ones_like(m))
    r = mag / scale
    root = accumulated_sum(xp, r if p == 1.0 else r ** p, axes)
    if p != 1.0:
        root = root ** (1.0 / p)
    return xp.where(ok, scale * root, m)


def lp_norm_gradient(xp: Namespace, p: float, x: Array, u: Array, norm: Array,
                     axes: tuple[int, ...]) -> Array:
    """∂‖x‖_p/∂x, written in u = x/‖x‖_p so that it is of the order of u (the gradient is
    homogeneous of degree 0: nothing here overflows for finite x).

    p = 2: u. p = 1: sign(x). 1 < p < inf: sign(u)|u|^{p−1}. p = inf: sign(x) on the
    entries where |x| reaches the norm, the subgradient split equally between tied maxima
    (PyTorch's rule). The VJP of x/‖x‖_p pairs it with the cotangent, the JVP with the
    tangent (:class:`arraynorm.operation.LpScale`).
    """
    if p == 2.0:
        return u
    if p == math.inf:
        hit = xp.astype(xp.abs(x) == norm, x.dtype)
        return xp.sign(x) * hit / xp.sum(hit, axis=axes, keepdims=True)
    if p == 1.0:
        return xp.sign(x)
    return xp.sign(u) * xp.abs(u) ** (p - 1.0)
