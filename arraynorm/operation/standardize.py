"""Standardization and scaling: the operations whose statistics are one mean and one
variance (or second moment) per partition, and their state.

=====================  ==============================================  ====================
operation              ŷ                                               used by
=====================  ==============================================  ====================
Standardize            (x − μ)/sqrt(σ² + eps)                          BN, LN, IN, GN, PN
RMSScale               x/sqrt(mean(x²) + eps)                          RMSNorm, scale-only BN
GivenStatistics        (x − mean)/sqrt(var + eps), statistics given    inference-mode BN
Renormalize            r·(x − μ_B)/σ_B + d, r, d from running stats    batch renormalization
=====================  ==============================================  ====================

The statistics come from :mod:`arraynorm._statistics` (shifted two-pass, scaled sums of
squares, at least float32).
"""

from __future__ import annotations

from collections.abc import Callable

from .._array_api import xp_device
from .._statistics import inv_root, mean, scaled_mean_square, statistics, unscale
from .._typing import Array, Namespace
from ..partition import Layout
from .base import Operation

__all__ = ["StandardizeState", "RenormalizeState", "Standardize", "RMSScale", "GivenStatistics",
           "Renormalize"]


class StandardizeState:
    """What centring-and-scaling keeps for backward: the normalized view ``y``, the
    statistics (``mean`` — ``None`` for RMS —, biased ``var`` or mean square,
    ``rstd = 1/sqrt(var + eps)``, all of ``layout.stats_shape``) and the reduction axes.

    Every implementation of a normalizer (:mod:`arraynorm._kernels`) gives this state, so
    the portable backward and JVP can always read it. An implementation that keeps the input
    rather than ŷ (the NumPy fast path) passes ``compute_y``: ``y`` is then formed on first
    access.
    """

    def __init__(self, y: Array | None, mean: Array | None, var: Array, rstd: Array,
                 axes: tuple[int, ...], *, compute_y: Callable[[], Array] | None = None) -> None:
        self._y, self._compute_y = y, compute_y
        self.mean, self.var, self.rstd, self.axes = mean, var, rstd, axes

    @property
    def y(self) -> Array:
        """ŷ = (x − μ)·rstd, the standardized view (formed on first use where it was not kept)."""
        if self._y is None and self._compute_y is not None:
            self._y = self._compute_y()
        return self._y

    def __repr__(self) -> str:
        return f"{type(self).__name__}(axes={self.axes})"


class RenormalizeState(StandardizeState):
    """:class:`StandardizeState` of the batch statistics, plus batch renormalization's
    correction ``r`` (constant in the backward pass)."""

    def __init__(self, st: StandardizeState, r: Array) -> None:
        super().__init__(st.y, st.mean, st.var, st.rstd, st.axes)
        self.r = r


class Standardize(Operation):
    """Centre and scale: ŷ = (x − μ) / sqrt(σ² + eps), μ and σ² (biased) over the partition.

    Backward (the formula of PyTorch's BN/LN/GN kernels, valid for every partition),
    with n elements per statistic and g = ∂L/∂ŷ:

        ∂L/∂x = rstd · (g − mean(g) − ŷ · mean(g · ŷ))
    """

    def forward(self, xp: Namespace, xv: Array, layout: Layout, eps: float) -> tuple[Array, StandardizeState]:
        """ŷ = (x − μ)/sqrt(σ² + eps), μ and the biased σ² over the layout's reduced axes."""
        axes = layout.reduce_axes
        mean, var, rstd, xc = statistics(xp, xv, axes, eps)
        y = xc * rstd
        return y, StandardizeState(y, mean, var, rstd, axes)

    def backward(self, xp: Namespace, gv: Array, state: StandardizeState) -> Array:
        """dx = rstd·(g − mean(g) − ŷ·mean(g·ŷ)), the means over the reduced axes."""
        axes, y = state.axes, state.y
        g_mean = mean(xp, gv, axes)
        gy_mean = mean(xp, gv * y, axes)
        return state.rstd * (gv - g_mean - y * gy_mean)

    def jvp(self, xp: Namespace, tv: Array, state: StandardizeState) -> Array:
        """Forward mode: on each partition of n elements the Jacobian is

            J = rstd · (I − 11ᵀ/n − ŷŷᵀ/n),

        a symmetric matrix (centring is an orthogonal projection, and the scale's derivative
        −rstd·ŷŷᵀ/n is symmetric because ∂rstd/∂x ∝ ŷ). So J·t = Jᵀ·t: the JVP is the
        backward formula applied to the tangent, rstd · (t − mean(t) − ŷ · mean(t · ŷ)).
        """
        return self.backward(xp, tv, state)


class RMSScale(Operation):
    """Scale only (RMSNorm, Zhang & Sennrich 2019): ŷ = x / sqrt(mean(x²) + eps).

    Backward with g = ∂L/∂ŷ:  ∂L/∂x = rstd · (g − ŷ · mean(g · ŷ)).
    """

    def forward(self, xp: Namespace, xv: Array, layout: Layout, eps: float) -> tuple[Array, StandardizeState]:
        """ŷ = x / sqrt(mean(x²) + eps) over the layout's reduced axes (no centring)."""
        axes = layout.reduce_axes
        s, ms = scaled_mean_square(xp, xv, axes)  # mean(x²) without overflow or underflow
        rstd = inv_root(xp, s, ms, eps, xv.dtype)
        y = xv * rstd
        return y, StandardizeState(y, None, unscale(xp, s, ms, xv.dtype), rstd, axes)

    def backward(self, xp: Namespace, gv: Array, state: StandardizeState) -> Array:
        """dx = rstd·(g − ŷ·mean(g·ŷ)), the mean over the reduced axes."""
        gy_mean = mean(xp, gv * state.y, state.axes)
        return state.rstd * (gv - state.y * gy_mean)

    def jvp(self, xp: Namespace, tv: Array, state: StandardizeState) -> Array:
        """Forward mode: J = rstd · (I − ŷŷᵀ/n) per partition is symmetric, so the JVP is the
        backward formula, rstd · (t − ŷ · mean(t · ŷ))."""
        return self.backward(xp, tv, state)


class GivenStatistics(Operation):
    """Standardize with statistics given by the caller (inference-mode BN):
    ŷ = (x − mean) / sqrt(var + eps), ``mean``/``var`` of the partition's parameter shape.

    Backward: ∂L/∂x = g · rstd (the statistics are inputs, not functions of x). An inf
    variance (the running variance of values whose variance overflowed its dtype, see
    :func:`statistics`) gives NaN, not the 0 that (x − mean)/inf would: the variance is unknown,
    not infinite.
    """

    uses_input_statistics = False

    def __init__(self, mean: Array, var: Array) -> None:
        self.mean, self.var = mean, var

    def arrays(self) -> dict[str, Array]:
        return {"mean": self.mean, "var": self.var}

    def forward(self, xp: Namespace, xv: Array, layout: Layout, eps: float) -> tuple[Array, StandardizeState]:
        """ŷ = (x − μ)/sqrt(σ² + eps) with the given μ, σ² (inference: nothing taken from x)."""
        shape = layout.stats_shape
        mean = xp.reshape(xp.astype(self.mean, xv.dtype), shape)
        var = xp.reshape(xp.astype(self.var, xv.dtype), shape)
        rstd = 1.0 / xp.sqrt(var + eps)
        rstd = xp.where(xp.isinf(var), xp.asarray(float("nan"), dtype=rstd.dtype, device=xp_device(rstd)), rstd)
        y = (xv - mean) * rstd
        return y, StandardizeState(y, mean, var, rstd, layout.reduce_axes)

    def backward(self, xp: Namespace, gv: Array, state: StandardizeState) -> Array:
        """dx = g/sqrt(σ² + eps): the statistics are constants."""
        return gv * state.rstd

    def jvp(self, xp: Namespace, tv: Array, state: StandardizeState) -> Array:
        """Forward mode: the Jacobian is diagonal, J·t = rstd · t."""
        return tv * state.rstd


class Renormalize(Operation):
    """Batch renormalization's operation (Ioffe 2017): standardize with the batch statistics,
    then correct towards the running ones, ŷ' = ŷ·r + d with

        r = clip(σ_B / σ, 1/rmax, rmax),   d = clip((μ_B − μ) / σ, −dmax, dmax),

    σ_B = sqrt(var_B + eps), σ = sqrt(running_var + eps). r and d are treated as constants in
    the backward pass (the paper's stop-gradient): ∂L/∂x = BN-backward(r · g). Its state is
    the standardization's with ``r`` added (:class:`RenormalizeState`), so layers read the
    batch statistics as they read BN's.
    """

    def __init__(self, running_mean: Array, running_var: Array, rmax: float, dmax: float) -> None:
        self.running_mean, self.running_var = running_mean, running_var
        self.rmax, self.dmax = rmax, dmax

    def arrays(self) -> dict[str, Array]:
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def forward(self, xp: Namespace, xv: Array, layout: Layout, eps: float) -> tuple[Array, RenormalizeState]:
        """ŷ = r·(x − μ_B)/σ_B + d with r, d from the batch and the running statistics (clipped)."""
        y, st = _STANDARDIZE.forward(xp, xv, layout, eps)
        shape = layout.stats_shape
        mu = xp.reshape(xp.astype(self.running_mean, xv.dtype), shape)
        sigma = xp.sqrt(xp.reshape(xp.astype(self.running_var, xv.dtype), shape) + eps)
        r = xp.clip(1.0 / (st.rstd * sigma), 1.0 / self.rmax, self.rmax)
        d = xp.clip((st.mean - mu) / sigma, -self.dmax, self.dmax)
        return y * r + d, RenormalizeState(st, r)

    def backward(self, xp: Namespace, gv: Array, state: RenormalizeState) -> Array:
        """The standardization's VJP scaled by r, with r and d held constant (the paper's stop-gradient)."""
        return _STANDARDIZE.backward(xp, gv * state.r, state)

    def jvp(self, xp: Namespace, tv: Array, state: RenormalizeState) -> Array:
        """Forward mode with the same stop-gradient as :meth:`backward` (r, d constant):
        r · (the standardization JVP), the transpose of the backward, so that the two
        together are one linear map and its adjoint. Where r and d clip (or with rmax = 1,
        dmax = 0) this is the exact derivative of the forward."""
        return _STANDARDIZE.jvp(xp, tv, state) * state.r


_STANDARDIZE = Standardize()  # the batch statistics Renormalize corrects
