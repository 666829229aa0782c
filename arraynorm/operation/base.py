"""The protocol every stage-2 operation follows (see :mod:`arraynorm.operation`)."""

from __future__ import annotations

from typing import Any

from .._typing import Array, Namespace
from ..partition import Layout

__all__ = ["Operation"]


class Operation:
    """Base class of normalization operations.

    An operation works on the partition's *view* of the input, already in the compute
    dtype, and has three methods: ``forward(xp, xv, layout, eps) -> (yv, state)``,
    ``backward(xp, gv, state) -> dxv`` (the exact VJP) and ``jvp(xp, tv, state) -> dyv``
    (the exact forward-mode product at the same point, the transpose of ``backward``).
    """

    #: whether the operation needs ``layout.feature_axis`` (whitening does)
    needs_feature_axis: bool = False
    #: whether statistics are computed from the input (False for given statistics)
    uses_input_statistics: bool = True

    def arrays(self) -> dict[str, Array]:
        """Arrays the operation holds (given statistics), by argument name: the normalizer
        checks they share the input's namespace and device, are floating and have the
        partition's parameter shape."""
        return {}

    def forward(self, xp: Namespace, xv: Array, layout: Layout,
                eps: float) -> tuple[Array, Any]:  # pragma: no cover - abstract
        """``(yv, state)``: the operation on the partition's view ``xv`` (compute dtype), with the
        statistics it took in ``state`` for the backward and forward-mode products.
        """
        raise NotImplementedError

    def backward(self, xp: Namespace, gv: Array, state: Any) -> Array:  # pragma: no cover
        """∂L/∂xv from ∂L/∂yv = ``gv``: the exact closed-form VJP at the point of ``state``."""
        raise NotImplementedError

    def jvp(self, xp: Namespace, tv: Array, state: Any) -> Array:
        """Forward-mode product J·tv at the point ``state`` was computed at."""
        raise NotImplementedError(f"{type(self).__name__} has no forward-mode product (jvp)")
