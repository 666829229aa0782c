"""Composition of the three stages: partition ∘ operation ∘ recovery.

A :class:`Normalizer` is one method of the survey's taxonomy: ``Normalizer(Group(8),
Standardize())`` is GroupNorm, ``Normalizer(Batch(), ZCAWhiten())`` is decorrelated BN.
It owns the whole forward and backward pass and the forward-mode product (JVP), so the named
functions in :mod:`methods` are one line each, and a user or the ``analysis`` package can
build methods the survey only describes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._typing import Namespace
from . import _kernels
from ._array_api import (
    xp_check_cotangent,
    xp_check_eps,
    xp_check_floating,
    xp_check_param_shape,
    xp_check_tangent,
    xp_compute_dtype,
    xp_namespace,
)
from ._jvp import defjvp
from ._vjp import defvjp
from .operation import Operation, Standardize
from .partition import Layout, Partition
from .recovery import affine, affine_backward, affine_jvp

__all__ = ["Normalizer", "NormContext", "normalize"]


@dataclass
class NormContext:
    """What a forward pass keeps for its backward pass.

    ``state`` is the operation's (it carries the statistics: ``state.mean``, ``state.var``
    in ``layout.stats_shape``, useful to update running statistics); ``yhat`` is the
    normalized input before recovery, in the compute dtype and the input's shape.
    """

    xp: Namespace
    layout: Layout
    state: Any
    yhat: Any
    weight: Any
    bias: Any
    x_dtype: Any


@dataclass(frozen=True)
class Normalizer:
    """partition ∘ operation ∘ per-feature affine, with its exact backward pass.

    Parameters
    ----------
    partition : which elements share statistics (:mod:`arraynorm.partition`).
    operation : what is done with them (:mod:`arraynorm.operation`).
    eps : added to the variance (or the clamp, for :class:`LpScale`); a Python float >= 0.
    name : used in error messages.

    Shapes: ``x`` has any shape the partition accepts; ``weight`` and ``bias`` have
    ``layout.param_shape`` (the channel count for BN/IN/GN/PN, the normalized axes' shape for
    LN/RMS). The output has ``x``'s shape, dtype, namespace and device. Statistics are taken in
    float32 at least (float16/bfloat16 inputs are promoted, the result cast back).
    """

    partition: Partition
    operation: Operation
    eps: float = 1e-5
    name: str = "normalize"

    def _prepare(self, x: Any, weight: Any, bias: Any) -> tuple[Any, Layout]:
        fname = self.name
        held = self.operation.arrays()
        params = {"weight": weight, "bias": bias, **held}
        xp = xp_namespace(fname, x=x, **params)
        xp_check_floating(fname, "x", x, xp)
        for pname, p in params.items():
            if p is not None:
                xp_check_floating(fname, pname, p, xp)
        xp_check_eps(fname, self.eps)
        layout = self.partition.layout(fname, tuple(x.shape))
        if self.operation.uses_input_statistics:
            layout.check_many(fname)
        if self.operation.needs_feature_axis and layout.feature_axis is None:
            raise ValueError(
                f"{fname}: {type(self.operation).__name__} decorrelates features but the "
                f"{type(self.partition).__name__} partition has no feature axis"
            )
        for pname, p in params.items():
            xp_check_param_shape(fname, pname, p, layout.param_shape)
        return xp, layout

    def forward(self, x: Any, weight: Any = None, bias: Any = None) -> tuple[Any, NormContext]:
        """Return ``(y, ctx)``; ``ctx`` feeds :meth:`backward`."""
        xp, layout = self._prepare(x, weight, bias)
        # a backend fast path (arraynorm._kernels, proven equal in tests/test_kernels.py) if one
        # applies; the portable path below otherwise, and always with set_fast_paths(False)
        fused = _kernels.normalizer_forward(self, xp, layout, x, weight, bias)
        if fused is not None:
            return fused
        ct = xp_compute_dtype(xp, x.dtype)
        xc = xp.astype(x, ct, copy=False)
        yv, state = self.operation.forward(xp, xp.reshape(xc, layout.view_shape), layout, self.eps)
        yhat = xp.reshape(yv, layout.shape)
        y = affine(xp, yhat, weight, bias, layout.param_axes)
        if y.dtype != x.dtype:
            y = xp.astype(y, x.dtype)
        return y, NormContext(xp, layout, state, yhat, weight, bias, x.dtype)

    def backward(self, ctx: NormContext, dy: Any) -> tuple[Any, Any, Any]:
        """Return ``(dx, dweight, dbias)`` for the cotangent ``dy`` (``None`` for absent
        parameters), each in its input's dtype."""
        fused = _kernels.normalizer_backward(self, ctx, dy)  # the fast path that made ctx
        if fused is not None:
            return fused
        xp, layout = ctx.xp, ctx.layout
        dy = xp.astype(dy, ctx.yhat.dtype, copy=False)
        g, dw, db = affine_backward(xp, dy, ctx.yhat, ctx.weight, ctx.bias, layout.param_axes)
        dxv = self.operation.backward(xp, xp.reshape(g, layout.view_shape), ctx.state)
        dx = xp.reshape(dxv, layout.shape)
        if dx.dtype != ctx.x_dtype:
            dx = xp.astype(dx, ctx.x_dtype)
        return dx, dw, db

    def jvp(self, ctx: NormContext, dx: Any, dweight: Any = None, dbias: Any = None) -> Any:
        """Forward-mode product at the point ``ctx`` was computed at (Jacobian–vector product):

            dy = γ · op.jvp(dx) + dγ · ŷ + dβ,

        with the operation's closed form (:mod:`arraynorm.operation`,
        :mod:`arraynorm.whitening`); the statistics move with x, so for a batch partition the
        tangent ``dx`` is the whole batch's and the product couples its samples. ``None`` is a
        zero tangent. ``ctx`` is not modified: any number of ``jvp`` and :meth:`backward`
        calls may follow one forward (they are a linear map and its adjoint). Returns dy in
        ``x``'s dtype; tangents have their primals' shapes.

        Examples
        --------
        >>> import numpy as np, arraynorm as an
        >>> norm = an.Normalizer(an.partition.Layer(), an.operation.Standardize())
        >>> x = np.random.default_rng(0).standard_normal((2, 5))
        >>> y, ctx = norm.forward(x)
        >>> bool(np.allclose(norm.jvp(ctx, np.ones_like(x)), 0.0))  # a shift does not move y
        True
        """
        xp, layout, fname = ctx.xp, ctx.layout, f"{self.name}.jvp"
        for name, t, shape in (("dx", dx, layout.shape), ("dweight", dweight, layout.param_shape),
                               ("dbias", dbias, layout.param_shape)):
            if t is not None:
                xp_check_tangent(fname, name, t, xp, shape, name[1:])
        ct = xp_compute_dtype(xp, ctx.x_dtype)
        dyhat = None
        if dx is not None:
            t = xp.astype(dx, ct, copy=False)
            dyv = self.operation.jvp(xp, xp.reshape(t, layout.view_shape), ctx.state)
            dyhat = xp.reshape(dyv, layout.shape)
        # ŷ is only needed for the γ tangent (the fast path forms it on demand)
        yhat = ctx.yhat if dweight is not None or dyhat is None else None
        dy = affine_jvp(xp, dyhat, yhat, ctx.weight, layout.param_axes, layout.shape,
                        dweight, dbias)
        return xp.astype(dy, ctx.x_dtype, copy=False)

    def __call__(self, x: Any, weight: Any = None, bias: Any = None) -> Any:
        return self.forward(x, weight, bias)[0]

    def vjp(self, x: Any, weight: Any = None, bias: Any = None) -> tuple[Any, Callable[[Any], tuple[Any, Any, Any]]]:
        """``(y, pullback)`` with ``pullback(dy) -> (dx, dweight, dbias)``; ``dy`` is checked
        as :func:`arraynorm.vjp` checks cotangents."""
        y, ctx = self.forward(x, weight, bias)

        def pullback(dy: Any) -> tuple[Any, Any, Any]:
            xp_check_cotangent(f"{self.name} pullback", "dy", dy, y)
            return self.backward(ctx, dy)

        return y, pullback


def normalize(x: Any, partition: Partition, operation: Operation | None = None,
              weight: Any = None, bias: Any = None, *, eps: float = 1e-5) -> Any:
    """Normalize ``x`` with any composition of the survey's three stages.

    y = γ · op(x restricted to each partition) + β

    Parameters
    ----------
    x : array to normalize.
    partition : a :mod:`arraynorm.partition` object (``Batch()``, ``Layer()``, ``Group(8)`` …).
    operation : a :mod:`arraynorm.operation` object; default :class:`Standardize`.
    weight, bias : optional γ, β of the partition's parameter shape.
    eps : numerical stabilizer, default 1e-5.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((4, 6, 5))
    >>> y = an.normalize(x, an.partition.Group(3), an.operation.RMSScale())  # "group RMS norm"
    >>> y.shape
    (4, 6, 5)
    """
    return Normalizer(partition, operation or Standardize(), eps, "normalize")(x, weight, bias)


@defvjp(normalize)
def _normalize_vjp(x: Any, partition: Partition, operation: Operation | None = None,
                   weight: Any = None, bias: Any = None, *, eps: float = 1e-5) -> tuple[Any, Any]:
    y, pb = Normalizer(partition, operation or Standardize(), eps, "normalize").vjp(x, weight, bias)

    def pullback(dy: Any) -> tuple[Any, ...]:
        dx, dw, db = pb(dy)
        return dx, None, None, dw, db

    return y, pullback


@defjvp(normalize)
def _normalize_jvp(x: Any, partition: Partition, operation: Operation | None = None,
                   weight: Any = None, bias: Any = None, *, eps: float = 1e-5) -> tuple[Any, Any]:
    norm = Normalizer(partition, operation or Standardize(), eps, "normalize")
    y, ctx = norm.forward(x, weight, bias)

    def pushforward(dx: Any = None, _p: Any = None, _o: Any = None, dweight: Any = None,
                    dbias: Any = None) -> Any:
        return norm.jvp(ctx, dx, dweight, dbias)

    return y, pushforward
