"""L_p scaling: divide each partition by its clamped L_p norm (``l2_normalize``, the per-unit
norm of weight normalization)."""

from __future__ import annotations

from dataclasses import dataclass

from .._array_api import xp_device
from .._statistics import lp_norm, lp_norm_gradient
from .._typing import Array, Namespace
from ..partition import Layout
from .base import Operation

__all__ = ["LpScale", "LpState"]


@dataclass
class LpState:
    """What :class:`LpScale` keeps: the input view ``x``, its norm, the clamped denominator
    max(‖x‖_p, eps) and the reduction axes."""

    x: Array
    norm: Array
    denom: Array
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
    The norm is computed scaled (:func:`arraynorm._statistics.lp_norm`) and the backward only forms quantities of
    the order of u, so neither overflows for finite inputs (PyTorch's float32 norm is inf
    above ~1e19 and the output 0). Over an empty axis the norm is 0 and the output empty
    (PyTorch raises for p = inf there).
    """

    p: float = 2.0

    def forward(self, xp: Namespace, xv: Array, layout: Layout, eps: float) -> tuple[Array, LpState]:
        """ŷ = x / max(‖x‖_p, eps) over the layout's reduced axes (the norm computed scaled)."""
        norm = lp_norm(xp, xv, self.p, layout.reduce_axes)
        denom = xp.maximum(norm, xp.asarray(eps, dtype=xv.dtype, device=xp_device(xv)))
        return xv / denom, LpState(xv, norm, denom, layout.reduce_axes)

    def _linear_parts(self, xp: Namespace, st: LpState) -> tuple[Array, Array, Array, Array]:
        """(active, ‖x‖ where active else 1, u = x/that, ∂‖x‖/∂x) shared by both products.
        Where the clamp is active the denominator is the constant eps; the switch acts on the
        per-statistic coefficients, so the full-size work is one expression, not two
        branches merged by a full-size ``where``. |u| <= 1 where active: nothing overflows."""
        active = st.norm >= st.denom
        safe = xp.where(active, st.norm, xp.ones_like(st.norm))
        u = st.x / safe
        return active, safe, u, lp_norm_gradient(xp, self.p, st.x, u, st.norm, st.axes)

    def backward(self, xp: Namespace, gv: Array, st: LpState) -> Array:
        """dx = g/‖x‖_p − ⟨g, ŷ⟩·∇‖x‖_p/‖x‖_p where ‖x‖_p > eps; dx = g/eps where the clamp is
        active (sums over the reduced axes)."""
        active, safe, u, dnorm = self._linear_parts(xp, st)
        s = xp.where(active, xp.sum(gv * u, axis=st.axes, keepdims=True), xp.zeros_like(safe))
        return gv / st.denom - (s / safe) * dnorm

    def jvp(self, xp: Namespace, tv: Array, st: LpState) -> Array:
        """Forward mode, the transpose of :meth:`backward`: where ‖x‖_p > eps,

            dŷ = t / ‖x‖_p − u · ⟨∂‖x‖_p/∂x, t⟩ / ‖x‖_p,

        and dŷ = t / eps where the clamp is active. Not symmetric for p ≠ 2 (∂‖x‖_p/∂x is
        not parallel to x), so it is not the backward formula: the two pair the same
        gradient of the norm (:func:`arraynorm._statistics.lp_norm_gradient`) with u the
        other way round.
        """
        active, safe, u, dnorm = self._linear_parts(xp, st)
        dn = xp.where(active, xp.sum(dnorm * tv, axis=st.axes, keepdims=True), xp.zeros_like(safe))
        return tv / st.denom - (dn / safe) * u
