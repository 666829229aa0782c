"""Stage 2 of the survey's framework: the normalization operation — what is done with the
statistics of each partition.

An operation works on the partition's *view* of the input (already promoted to the compute
dtype, see ``_array_api.xp_compute_dtype``) and has two methods:

``forward(xp, xv, layout, eps) -> (yv, state)``
    the normalized view and whatever the backward pass needs;
``backward(xp, gv, state) -> dxv``
    the exact vector–Jacobian product for a cotangent ``gv`` of the output;
``jvp(xp, tv, state) -> dyv``
    the exact Jacobian–vector product for a tangent ``tv`` of the input, at the same point
    (the statistics move with x; the transpose of ``backward``).

Operations never branch on array values (DESIGN.md §3.4). Whitening operations (ZCA, PCA,
Cholesky, IterNorm) implement the same two methods and use ``layout.feature_axis``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

from ._typing import Namespace
from ._array_api import xp_accumulation_dtype, xp_device
from .partition import Layout

__all__ = ["Operation", "Standardize", "RMSScale", "LpScale", "GivenStatistics", "StandardizeState"]


class Operation:
    """Base class of normalization operations."""

    #: whether the operation needs ``layout.feature_axis`` (whitening does)
    needs_feature_axis: bool = False
    #: whether statistics are computed from the input (False for given statistics)
    uses_input_statistics: bool = True

    def arrays(self) -> dict[str, Any]:
        """Arrays the operation holds (given statistics), by argument name: the normalizer
        checks they share the input's namespace and device, are floating and have the
        partition's parameter shape."""
        return {}

    def forward(self, xp: Namespace, xv: Any, layout: Layout, eps: float) -> tuple[Any, Any]:  # pragma: no cover
        raise NotImplementedError

    def backward(self, xp: Namespace, gv: Any, state: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def jvp(self, xp: Namespace, tv: Any, state: Any) -> Any:
        """Forward-mode product J·tv at the point ``state`` was computed at."""
        raise NotImplementedError(f"{type(self).__name__} has no forward-mode product (jvp)")


@dataclass
class StandardizeState:
    """What centring-and-scaling keeps for backward: the normalized view ``y``, the
    statistics (``mean``, biased ``var``, ``rstd = 1/sqrt(var + eps)``, all of
    ``layout.stats_shape``) and the reduction axes."""

    y: Any
    mean: Any
    var: Any
    rstd: Any
    axes: tuple[int, ...]


def _count(a: Any, axes: tuple[int, ...]) -> int:
    return math.prod(a.shape[i] for i in axes)


def _accumulated_sum(xp: Namespace, a: Any, axes: tuple[int, ...]) -> Any:
    """Σ over ``axes`` (keepdims) in ``a``'s dtype, accumulated as :func:`mean` does."""
    acc = xp_accumulation_dtype(xp, a)
    if acc == a.dtype:
        return xp.sum(a, axis=axes, keepdims=True)
    return xp.astype(xp.sum(a, axis=axes, keepdims=True, dtype=acc), a.dtype)


def mean(xp: Namespace, a: Any, axes: tuple[int, ...]) -> Any:
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


def _exponent_range(xp: Namespace, dtype: Any) -> tuple[int, int]:
    """(emin, emax) of a floating dtype: 2**e is a normal number for emin <= e < emax."""
    fi = xp.finfo(dtype)
    return math.frexp(float(fi.smallest_normal))[1] - 1, math.frexp(float(fi.max))[1]


def pow2_scale(xp: Namespace, m: Any, *, floor: float = 0.0) -> Any:
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


def sum_of_squares(xp: Namespace, a: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
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


def scaled_mean_square(xp: Namespace, a: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
    """``(s, ms)`` with mean(a²) = s²·ms over ``axes`` (see :func:`sum_of_squares`); the mean
    of no values is NaN."""
    s, ss = sum_of_squares(xp, a, axes)
    n = _count(a, axes)
    return s, (ss / n if n else ss * float("nan"))


def unscale(xp: Namespace, s: Any, ms: Any, dtype: Any) -> Any:
    """s²·ms in ``dtype``: inf where it is not representable there (a float32 variance of
    values beyond 1.8e19 is), never a wrong finite number. Formed as (s·ms)·s: s² alone
    may overflow where s²·ms does not (ms >= 1/(4n): the largest value counts)."""
    v = ms if s is None else (s * ms) * s
    return xp.astype(v, dtype, copy=False)


def inv_root(xp: Namespace, s: Any, ms: Any, eps: float, dtype: Any) -> Any:
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


def centre(xp: Namespace, xv: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
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
    return shift + mean_s, xs - mean_s


def statistics(xp: Namespace, xv: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any, Any, Any]:
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


def moments(xp: Namespace, xv: Any, axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """Mean, biased variance and centred input over ``axes`` (keepdims); see
    :func:`statistics`."""
    mu, var, _, xc = statistics(xp, xv, axes, 0.0)
    return mu, var, xc


class Standardize(Operation):
    """Centre and scale: ŷ = (x − μ) / sqrt(σ² + eps), μ and σ² (biased) over the partition.

    Backward (the formula of PyTorch's BN/LN/GN kernels, valid for every partition),
    with n elements per statistic and g = ∂L/∂ŷ:

        ∂L/∂x = rstd · (g − mean(g) − ŷ · mean(g · ŷ))
    """

    def forward(self, xp: Namespace, xv: Any, layout: Layout, eps: float) -> tuple[Any, StandardizeState]:
        axes = layout.reduce_axes
        mean, var, rstd, xc = statistics(xp, xv, axes, eps)
        y = xc * rstd
        return y, StandardizeState(y, mean, var, rstd, axes)

    def backward(self, xp: Namespace, gv: Any, state: StandardizeState) -> Any:
        axes, y = state.axes, state.y
        g_mean = mean(xp, gv, axes)
        gy_mean = mean(xp, gv * y, axes)
        return state.rstd * (gv - g_mean - y * gy_mean)

    def jvp(self, xp: Namespace, tv: Any, state: StandardizeState) -> Any:
        """Forward mode: on each partition of n elements the Jacobian is

            J = rstd · (I − 11ᵀ/n − ŷŷᵀ/n),

        a symmetric matrix (centring is an orthogonal projection, and the scale's derivative
        −rstd·ŷŷᵀ/n is symmetric because ∂rstd/∂x ∝ ŷ). So J·t = Jᵀ·t: the JVP is the
        backward formula applied to the tangent, rstd · (t − mean(t) − ŷ · mean(t · ŷ)).
        """
        # this class's formula, not a subclass's backward (batch renorm scales it)
        return Standardize.backward(self, xp, tv, state)


class RMSScale(Operation):
    """Scale only (RMSNorm, Zhang & Sennrich 2019): ŷ = x / sqrt(mean(x²) + eps).

    Backward with g = ∂L/∂ŷ:  ∂L/∂x = rstd · (g − ŷ · mean(g · ŷ)).
    """

    def forward(self, xp: Namespace, xv: Any, layout: Layout, eps: float) -> tuple[Any, StandardizeState]:
        axes = layout.reduce_axes
        s, ms = scaled_mean_square(xp, xv, axes)  # mean(x²) without overflow or underflow
        rstd = inv_root(xp, s, ms, eps, xv.dtype)
        y = xv * rstd
        return y, StandardizeState(y, None, unscale(xp, s, ms, xv.dtype), rstd, axes)

    def backward(self, xp: Namespace, gv: Any, state: StandardizeState) -> Any:
        gy_mean = mean(xp, gv * state.y, state.axes)
        return state.rstd * (gv - state.y * gy_mean)

    def jvp(self, xp: Namespace, tv: Any, state: StandardizeState) -> Any:
        """Forward mode: J = rstd · (I − ŷŷᵀ/n) per partition is symmetric, so the JVP is the
        backward formula, rstd · (t − ŷ · mean(t · ŷ))."""
        return RMSScale.backward(self, xp, tv, state)


def lp_norm(xp: Namespace, a: Any, p: float, axes: tuple[int, ...]) -> Any:
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
    root = _accumulated_sum(xp, r if p == 1.0 else r ** p, axes)
    if p != 1.0:
        root = root ** (1.0 / p)
    return xp.where(ok, scale * root, m)


@dataclass
class _LpState:
    x: Any
    norm: Any
    denom: Any
    axes: tuple[int, ...]


@dataclass(frozen=True)
class LpScale(Operation):
    """Divide by the clamped L_p norm (``torch.nn.functional.normalize``):
    ŷ = x / max(‖x‖_p, eps), the norm over the partition's reduction axes.

    ``p`` is a finite number >= 1 or ``inf``. Backward, where ‖x‖_p > eps, with u = x/‖x‖_p,
    s = Σ g·u and ∂‖x‖_p/∂x = sign(u)|u|^{p−1}:

        ∂L/∂x = (g − s · sign(u)|u|^{p−1}) / ‖x‖_p,

    and ∂L/∂x = g / eps where the clamp is active (the denominator is then a constant). For
    p = inf the norm's subgradient is split equally between tied maxima, as PyTorch does.
    The norm is computed scaled (:func:`lp_norm`) and the backward only forms quantities of
    the order of u, so neither overflows for finite inputs (PyTorch's float32 norm is inf
    above ~1e19 and the output 0). Over an empty axis the norm is 0 and the output empty
    (PyTorch raises for p = inf there).
    """

    p: float = 2.0

    def forward(self, xp: Namespace, xv: Any, layout: Layout, eps: float) -> tuple[Any, _LpState]:
        norm = lp_norm(xp, xv, self.p, layout.reduce_axes)
        denom = xp.maximum(norm, xp.asarray(eps, dtype=xv.dtype, device=xp_device(xv)))
        return xv / denom, _LpState(xv, norm, denom, layout.reduce_axes)

    def backward(self, xp: Namespace, gv: Any, st: _LpState) -> Any:
        p, x, norm, axes = self.p, st.x, st.norm, st.axes
        # Where the clamp is active the denominator is the constant eps and dx = g/eps; the
        # switch acts on the per-statistic coefficient, so the full-size work is one
        # expression, not two branches merged by a full-size where.
        active = norm >= st.denom
        safe = xp.where(active, norm, xp.ones_like(norm))
        u = x / safe  # |u| <= 1 where active: no product below overflows
        s = xp.where(active, xp.sum(gv * u, axis=axes, keepdims=True), xp.zeros_like(norm))
        if p == 2.0:
            return gv / st.denom - (s / safe) * u
        if p == float("inf"):
            hit = xp.astype(xp.abs(x) == norm, x.dtype)
            dnorm = xp.sign(x) * hit / xp.sum(hit, axis=axes, keepdims=True)
        elif p == 1.0:
            dnorm = xp.sign(x)
        else:
            dnorm = xp.sign(u) * xp.abs(u) ** (p - 1.0)
        return gv / st.denom - (s / safe) * dnorm

    def jvp(self, xp: Namespace, tv: Any, st: _LpState) -> Any:
        """Forward mode, the transpose of :meth:`backward`: where ‖x‖_p > eps,

            dŷ = t / ‖x‖_p − x · ⟨∂‖x‖_p/∂x, t⟩ / ‖x‖_p²,

        and dŷ = t / eps where the clamp is active. Not symmetric for p ≠ 2 (∂‖x‖_p/∂x is
        not parallel to x), so it is not the backward formula.
        """
        p, x, norm, axes = self.p, st.x, st.norm, st.axes
        active = norm >= st.denom
        safe = xp.where(active, norm, xp.ones_like(norm))
        if p == 2.0:
            dn = xp.sum(x * tv, axis=axes, keepdims=True) / safe
        elif p == float("inf"):
            hit = xp.astype(xp.abs(x) == norm, x.dtype)
            dn = (xp.sum(xp.sign(x) * hit * tv, axis=axes, keepdims=True)
                  / xp.sum(hit, axis=axes, keepdims=True))
        elif p == 1.0:
            dn = xp.sum(xp.sign(x) * tv, axis=axes, keepdims=True)
        else:
            dn = xp.sum(xp.sign(x) * xp.abs(x) ** (p - 1.0) * tv, axis=axes,
                        keepdims=True) * safe ** (1.0 - p)
        coef = xp.where(active, dn / (safe * safe), xp.zeros_like(dn))
        return tv / st.denom - coef * x


class GivenStatistics(Operation):
    """Standardize with statistics given by the caller (inference-mode BN):
    ŷ = (x − mean) / sqrt(var + eps), ``mean``/``var`` of the partition's parameter shape.

    Backward: ∂L/∂x = g · rstd (the statistics are inputs, not functions of x). An inf
    variance (the running variance of values whose variance overflowed its dtype, see
    :func:`statistics`) gives NaN, not the 0 that (x − mean)/inf would: the variance is unknown,
    not infinite.
    """

    uses_input_statistics = False

    def __init__(self, mean: Any, var: Any) -> None:
        self.mean, self.var = mean, var

    def arrays(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var}

    def forward(self, xp: Namespace, xv: Any, layout: Layout, eps: float) -> tuple[Any, StandardizeState]:
        shape = layout.stats_shape
        mean = xp.reshape(xp.astype(self.mean, xv.dtype), shape)
        var = xp.reshape(xp.astype(self.var, xv.dtype), shape)
        rstd = 1.0 / xp.sqrt(var + eps)
        rstd = xp.where(xp.isinf(var), xp.asarray(float("nan"), dtype=rstd.dtype, device=xp_device(rstd)), rstd)
        y = (xv - mean) * rstd
        return y, StandardizeState(y, mean, var, rstd, layout.reduce_axes)

    def backward(self, xp: Namespace, gv: Any, state: StandardizeState) -> Any:
        return gv * state.rstd

    def jvp(self, xp: Namespace, tv: Any, state: StandardizeState) -> Any:
        """Forward mode: the Jacobian is diagonal, J·t = rstd · t."""
        return tv * state.rstd
