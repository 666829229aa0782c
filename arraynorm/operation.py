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

    def forward(self, xp: Any, xv: Any, layout: Layout, eps: float) -> tuple[Any, Any]:  # pragma: no cover
        raise NotImplementedError

    def backward(self, xp: Any, gv: Any, state: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def jvp(self, xp: Any, tv: Any, state: Any) -> Any:
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


def mean(xp: Any, a: Any, axes: tuple[int, ...]) -> Any:
    """Mean over ``axes`` (keepdims) in ``a``'s dtype, the sum accumulated in
    :func:`~arraynorm._array_api.xp_accumulation_dtype` (float64 for float32 data where
    available: NumPy's strided sums are not pairwise)."""
    acc = xp_accumulation_dtype(xp, a)
    if acc == a.dtype:
        return xp.mean(a, axis=axes, keepdims=True)
    n = math.prod(a.shape[i] for i in axes)
    return xp.astype(xp.sum(a, axis=axes, keepdims=True, dtype=acc) / n, a.dtype)


def moments(xp: Any, xv: Any, axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """Mean, biased variance and centred input over ``axes`` (keepdims).

    Shifted two-pass: the first value of each partition is subtracted before the mean is
    taken, then the variance is the mean of squared deviations from the mean — never
    E[x²] − E[x]², which loses every significant digit once |mean| ≫ std. The shift keeps the
    summands O(std) even for inputs offset by 10⁴; the sums are accumulated in float64 for
    float32 data (:func:`mean`), since NumPy adds a strided axis one element at a time. The
    centred input is returned because every caller needs it next.
    """
    first = tuple(slice(0, 1) if a in axes else slice(None) for a in range(xv.ndim))
    shift = xv[first]
    xs = xv - shift
    mean_s = mean(xp, xs, axes)
    xc = xs - mean_s
    var = mean(xp, xc * xc, axes)
    return shift + mean_s, var, xc


class Standardize(Operation):
    """Centre and scale: ŷ = (x − μ) / sqrt(σ² + eps), μ and σ² (biased) over the partition.

    Backward (the formula of PyTorch's BN/LN/GN kernels, valid for every partition),
    with n elements per statistic and g = ∂L/∂ŷ:

        ∂L/∂x = rstd · (g − mean(g) − ŷ · mean(g · ŷ))
    """

    def forward(self, xp: Any, xv: Any, layout: Layout, eps: float) -> tuple[Any, StandardizeState]:
        axes = layout.reduce_axes
        mean, var, xc = moments(xp, xv, axes)
        rstd = 1.0 / xp.sqrt(var + eps)
        y = xc * rstd
        return y, StandardizeState(y, mean, var, rstd, axes)

    def backward(self, xp: Any, gv: Any, state: StandardizeState) -> Any:
        axes, y = state.axes, state.y
        g_mean = mean(xp, gv, axes)
        gy_mean = mean(xp, gv * y, axes)
        return state.rstd * (gv - g_mean - y * gy_mean)

    def jvp(self, xp: Any, tv: Any, state: StandardizeState) -> Any:
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

    def forward(self, xp: Any, xv: Any, layout: Layout, eps: float) -> tuple[Any, StandardizeState]:
        axes = layout.reduce_axes
        ms = mean(xp, xv * xv, axes)
        rstd = 1.0 / xp.sqrt(ms + eps)
        y = xv * rstd
        return y, StandardizeState(y, None, ms, rstd, axes)

    def backward(self, xp: Any, gv: Any, state: StandardizeState) -> Any:
        gy_mean = mean(xp, gv * state.y, state.axes)
        return state.rstd * (gv - state.y * gy_mean)

    def jvp(self, xp: Any, tv: Any, state: StandardizeState) -> Any:
        """Forward mode: J = rstd · (I − ŷŷᵀ/n) per partition is symmetric, so the JVP is the
        backward formula, rstd · (t − ŷ · mean(t · ŷ))."""
        return RMSScale.backward(self, xp, tv, state)


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

    ``p`` is a finite number >= 1 or ``inf``. Backward, where ‖x‖_p > eps, with
    s = Σ g·x and ∂‖x‖_p/∂x = sign(x)|x|^{p−1} ‖x‖_p^{1−p}:

        ∂L/∂x = g / ‖x‖_p − s / ‖x‖_p² · ∂‖x‖_p/∂x,

    and ∂L/∂x = g / eps where the clamp is active (the denominator is then a constant). For
    p = inf the norm's subgradient is split equally between tied maxima, as PyTorch does.
    """

    p: float = 2.0

    def forward(self, xp: Any, xv: Any, layout: Layout, eps: float) -> tuple[Any, _LpState]:
        axes, p = layout.reduce_axes, self.p
        if p == 2.0:
            norm = xp.sqrt(xp.sum(xv * xv, axis=axes, keepdims=True))
        elif p == float("inf"):
            norm = xp.max(xp.abs(xv), axis=axes, keepdims=True)
        elif p == 1.0:
            norm = xp.sum(xp.abs(xv), axis=axes, keepdims=True)
        else:
            norm = xp.sum(xp.abs(xv) ** p, axis=axes, keepdims=True) ** (1.0 / p)
        denom = xp.maximum(norm, xp.asarray(eps, dtype=xv.dtype, device=xp_device(xv)))
        return xv / denom, _LpState(xv, norm, denom, axes)

    def backward(self, xp: Any, gv: Any, st: _LpState) -> Any:
        p, x, norm, axes = self.p, st.x, st.norm, st.axes
        # Where the clamp is active the denominator is the constant eps and dx = g/eps; the
        # switch acts on the per-statistic coefficient, so the full-size work is one
        # expression, not two branches merged by a full-size where.
        active = norm >= st.denom
        safe = xp.where(active, norm, xp.ones_like(norm))
        s = xp.sum(gv * x, axis=axes, keepdims=True)
        coef = xp.where(active, s / (safe * safe), xp.zeros_like(s))
        if p == 2.0:
            return gv / st.denom - (coef / safe) * x
        if p == float("inf"):
            hit = xp.astype(xp.abs(x) == norm, x.dtype)
            dnorm = xp.sign(x) * hit / xp.sum(hit, axis=axes, keepdims=True)
        elif p == 1.0:
            dnorm = xp.sign(x)
        else:
            dnorm = xp.sign(x) * xp.abs(x) ** (p - 1.0) * safe ** (1.0 - p)
        return gv / st.denom - coef * dnorm

    def jvp(self, xp: Any, tv: Any, st: _LpState) -> Any:
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

    Backward: ∂L/∂x = g · rstd (the statistics are inputs, not functions of x).
    """

    uses_input_statistics = False

    def __init__(self, mean: Any, var: Any) -> None:
        self.mean, self.var = mean, var

    def arrays(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var}

    def forward(self, xp: Any, xv: Any, layout: Layout, eps: float) -> tuple[Any, StandardizeState]:
        shape = layout.stats_shape
        mean = xp.reshape(xp.astype(self.mean, xv.dtype), shape)
        var = xp.reshape(xp.astype(self.var, xv.dtype), shape)
        rstd = 1.0 / xp.sqrt(var + eps)
        y = (xv - mean) * rstd
        return y, StandardizeState(y, mean, var, rstd, layout.reduce_axes)

    def backward(self, xp: Any, gv: Any, state: StandardizeState) -> Any:
        return gv * state.rstd

    def jvp(self, xp: Any, tv: Any, state: StandardizeState) -> Any:
        """Forward mode: the Jacobian is diagonal, J·t = rstd · t."""
        return tv * state.rstd
