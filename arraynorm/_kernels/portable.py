"""The portable implementation: the stages' own array-API code, on every backend.

It is the reference every other implementation is tested equal to, the one that runs when
fast paths are off, and the fallback the others use for what they do not cover (a cotangent
of another library, the forward-mode product).
"""

from __future__ import annotations

from .._array_api import xp_compute_dtype, xp_in_compute_dtype
from .._context import Grads, NormContext, Stages
from .._typing import Array, Namespace
from ..partition import Layout

__all__ = ["Portable", "PORTABLE"]


class Portable:
    """operation.forward on the partition's view, then recovery; backward and JVP the other
    way round, each stage's closed form (:mod:`arraynorm.operation`,
    :mod:`arraynorm.recovery`). Statistics in the compute dtype (float32 at least), results
    cast back to the input's dtype."""

    name = "portable"

    def supports(self, stages: Stages, xp: Namespace, layout: Layout, x: Array,
                 weight: Array | None, bias: Array | None) -> bool:
        return True

    def forward(self, stages: Stages, xp: Namespace, layout: Layout, x: Array,
                weight: Array | None, bias: Array | None) -> tuple[Array, NormContext]:
        xv = xp.reshape(xp_in_compute_dtype(xp, x), layout.view_shape)
        yv, state = stages.operation.forward(xp, xv, layout, stages.eps)
        yhat = xp.reshape(yv, layout.shape)
        y = stages.recovery.forward(xp, yhat, weight, bias, layout)
        return (xp.astype(y, x.dtype, copy=False),
                NormContext(xp, layout, state, yhat, weight, bias, x.dtype, self))

    def backward(self, stages: Stages, ctx: NormContext, dy: Array) -> Grads:
        xp, layout, yhat = ctx.xp, ctx.layout, ctx.yhat
        dy = xp.astype(dy, yhat.dtype, copy=False)
        g, dw, db = stages.recovery.backward(xp, dy, yhat, ctx.weight, ctx.bias, layout)
        dxv = stages.operation.backward(xp, xp.reshape(g, layout.view_shape), ctx.state)
        return xp.astype(xp.reshape(dxv, layout.shape), ctx.x_dtype, copy=False), dw, db

    def jvp(self, stages: Stages, ctx: NormContext, dx: Array | None, dweight: Array | None,
            dbias: Array | None) -> Array:
        xp, layout = ctx.xp, ctx.layout
        dyhat = None
        if dx is not None:
            t = xp.astype(dx, xp_compute_dtype(xp, ctx.x_dtype), copy=False)
            dyv = stages.operation.jvp(xp, xp.reshape(t, layout.view_shape), ctx.state)
            dyhat = xp.reshape(dyv, layout.shape)
        # ŷ is only needed for the γ tangent (implementations that keep x form it on demand)
        yhat = ctx.yhat if dweight is not None or dyhat is None else None
        dy = stages.recovery.jvp(xp, dyhat, yhat, ctx.weight, layout, dweight, dbias)
        return xp.astype(dy, ctx.x_dtype, copy=False)


PORTABLE = Portable()
