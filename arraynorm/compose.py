"""Composition of the survey's three stages, run by an implementation: a :class:`Normalizer`
is Partition × Operation × Recovery × Implementation.

A normalizer is one method of the survey's taxonomy: ``Normalizer(Group(8), Standardize())``
is GroupNorm, ``Normalizer(Batch(), ZCAWhiten())`` is decorrelated BN,
``Normalizer(Instance(), Standardize(), recovery=ConditionalAffine())`` is AdaIN's
normalization. It owns the whole forward and backward pass and the forward-mode product
(JVP) — each delegated to the implementation the selector of :mod:`arraynorm._kernels`
chose for the input — so the named functions in :mod:`arraynorm.methods` are one line each,
and a user or the ``analysis`` package can build methods the survey only describes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _kernels
from ._array_api import (_NUMPY_XP, xp_check_cotangent, xp_check_eps, xp_check_floating,
                         xp_check_param_shape, xp_check_tangent, xp_namespace)
from ._context import Grads, Implementation, NormContext
from ._jvp import defjvp
from ._typing import Array, Namespace, Pullback, Pushforward
from ._vjp import defvjp
from .operation import Operation, Standardize
from .partition import Layout, Partition, layout_of
from .recovery import AFFINE, Recovery

__all__ = ["Normalizer", "NormContext", "normalize"]

#: input signatures a normalizer remembers (a layer sees one or two: training and eval shapes)
_MEMO_MAX = 16


def _signature(x: np.ndarray, weight: Any, bias: Any) -> tuple[Any, ...] | None:
    """What :meth:`Normalizer._prepare` and the selector look at in plain NumPy ``x``, γ, β
    (types, shapes, dtypes, strides) and the selector's settings
    (:func:`arraynorm._kernels.selection_settings`); ``None`` where γ or β is not a
    NumPy array (or None), whose checks then run every call."""
    ps: list[Any] = []
    for p in (weight, bias):
        if p is None:
            ps.append(None)
        elif type(p) is np.ndarray:
            ps.append((p.shape, p.dtype, p.strides))
        else:
            return None
    return x.shape, x.dtype, x.strides, ps[0], ps[1], _kernels.selection_settings()


@dataclass(frozen=True)
class Normalizer:
    """partition ∘ operation ∘ recovery, run by an implementation, with its exact backward
    pass and forward-mode product.

    Parameters
    ----------
    partition : which elements share statistics (:mod:`arraynorm.partition`).
    operation : what is done with them (:mod:`arraynorm.operation`).
    eps : added to the variance (or the clamp, for :class:`LpScale`); a Python float >= 0.
    name : used in error messages.
    recovery : what restores capacity (:mod:`arraynorm.recovery`): :class:`Affine` (default,
        γ and β optional), :class:`ConditionalAffine` (per-sample γ, β: AdaIN) or
        :class:`NoRecovery`.
    implementation : ``None`` (default): chosen per forward call by the selector of
        :mod:`arraynorm._kernels` (the NumPy block implementation for large NumPy inputs,
        the portable array-API code otherwise); or an implementation or its name
        (``"portable"``, ``"numpy_fused"``) to require one. With fast paths off
        (:func:`arraynorm.use_fast_paths`) the portable one always runs.
    repeated : the normalizer runs many times in this process (a model's layer: the layers of
        :mod:`arraynorm.nn` set it). The numba implementation then takes NumPy inputs of every
        size; otherwise from ``numba_jit.MIN_BYTES`` (128 KiB) only, because its first use
        costs the process numba's import and the cached loops' load (0.4 s measured), which a
        script normalizing a few small arrays would not repay and a layer repays in a few
        dozen calls (forward+backward of a (64, 256) BN: 197 µs portable, 92 µs compiled).

    Shapes: ``x`` has any shape the partition accepts; ``weight`` and ``bias`` have the
    recovery's parameter shape (``layout.param_shape`` for the affine: the channel count for
    BN/IN/GN/PN, the normalized axes' shape for LN/RMS; (N, *that) for the conditional
    affine). The output has ``x``'s shape, dtype, namespace and device. Statistics are taken
    in float32 at least (float16/bfloat16 inputs are promoted, the result cast back).
    """

    partition: Partition
    operation: Operation
    eps: float = 1e-5
    name: str = "normalize"
    recovery: Recovery = AFFINE
    implementation: Implementation | str | None = None
    repeated: bool = False
    #: (layout, implementation) per NumPy input signature (:func:`_signature`) already checked
    #: and selected: the checks and the selection are functions of types, shapes, dtypes,
    #: strides and the selector's settings only, and a layer's normalizer sees the same ones every
    #: step (a (64, 256) float32 BatchNorm layer's forward, with the layer's own remembered
    #: checks: 54–75 → 44–50 µs, 2-core Xeon, 2026-12-03). Not part of equality, copies or
    #: pickles.
    _memo: dict[Any, tuple[Layout, Implementation]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_memo"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["_memo"] = {}  # also for a normalizer pickled before it had one

    def _prepare(self, x: Array, weight: Array | None, bias: Array | None) -> tuple[Namespace, Layout]:
        fname = self.name
        held = self.operation.arrays()
        params = {"weight": weight, "bias": bias, **held}
        xp = xp_namespace(fname, x=x, **params)
        xp_check_floating(fname, "x", x, xp)
        for pname, p in params.items():
            if p is not None:
                xp_check_floating(fname, pname, p, xp)
        xp_check_eps(fname, self.eps)
        layout = layout_of(self.partition, fname, tuple(x.shape))
        if self.operation.uses_input_statistics:
            layout.check_many(fname)
        if self.operation.needs_feature_axis and layout.feature_axis is None:
            raise ValueError(
                f"{fname}: {type(self.operation).__name__} decorrelates features but the "
                f"{type(self.partition).__name__} partition has no feature axis"
            )
        self.recovery.check(fname, layout, weight, bias)
        for pname, p in held.items():
            xp_check_param_shape(fname, pname, p, layout.param_shape)
        return xp, layout

    def forward(self, x: Array, weight: Array | None = None,
                bias: Array | None = None) -> tuple[Array, NormContext]:
        """Return ``(y, ctx)``; ``ctx`` feeds :meth:`backward` and :meth:`jvp`."""
        key = None
        if type(x) is np.ndarray and not self.operation.arrays():
            key = _signature(x, weight, bias)
            hit = self._memo.get(key) if key is not None else None
            if hit is not None:
                return hit[1].forward(self, _NUMPY_XP, hit[0], x, weight, bias)
        xp, layout = self._prepare(x, weight, bias)
        # one selector (arraynorm._kernels) picks the implementation; ctx remembers it
        impl = _kernels.select(self.implementation, self, xp, layout, x, weight, bias)
        if key is not None and xp is _NUMPY_XP:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[key] = (layout, impl)
        return impl.forward(self, xp, layout, x, weight, bias)

    def backward(self, ctx: NormContext, dy: Array) -> Grads:
        """Return ``(dx, dweight, dbias)`` for the cotangent ``dy`` (``None`` for absent
        parameters), each in its input's dtype; answered by the implementation that ran the
        forward."""
        return (ctx.implementation or _kernels.PORTABLE).backward(self, ctx, dy)

    def jvp(self, ctx: NormContext, dx: Array | None, dweight: Array | None = None,
            dbias: Array | None = None) -> Array:
        """Forward-mode product at the point ``ctx`` was computed at (Jacobian–vector product):

            dy = γ · op.jvp(dx) + dγ · ŷ + dβ,

        with the operation's closed form (:mod:`arraynorm.operation`); the statistics move
        with x, so for a batch partition the tangent ``dx`` is the whole batch's and the
        product couples its samples. ``None`` is a zero tangent. ``ctx`` is not modified:
        any number of ``jvp`` and :meth:`backward` calls may follow one forward (they are a
        linear map and its adjoint). Returns dy in ``x``'s dtype; tangents have their
        primals' shapes.

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
        pshape = self.recovery.param_shape(layout)
        for name, t, shape in (("dx", dx, layout.shape), ("dweight", dweight, pshape),
                               ("dbias", dbias, pshape)):
            if t is not None:
                xp_check_tangent(fname, name, t, xp, shape, name[1:])
        return (ctx.implementation or _kernels.PORTABLE).jvp(self, ctx, dx, dweight, dbias)

    def __call__(self, x: Array, weight: Array | None = None, bias: Array | None = None) -> Array:
        return self.forward(x, weight, bias)[0]

    def vjp(self, x: Array, weight: Array | None = None,
            bias: Array | None = None) -> tuple[Array, Callable[[Array], Grads]]:
        """``(y, pullback)`` with ``pullback(dy) -> (dx, dweight, dbias)``; ``dy`` is checked
        as :func:`arraynorm.vjp` checks cotangents."""
        y, ctx = self.forward(x, weight, bias)

        def pullback(dy: Array) -> Grads:
            xp_check_cotangent(f"{self.name} pullback", "dy", dy, y)
            return self.backward(ctx, dy)

        return y, pullback


def normalize(x: Array, partition: Partition, operation: Operation | None = None,
              weight: Array | None = None, bias: Array | None = None, *, eps: float = 1e-5,
              recovery: Recovery = AFFINE) -> Array:
    """Normalize ``x`` with any composition of the survey's three stages.

    y = γ · op(x restricted to each partition) + β

    Parameters
    ----------
    x : array to normalize.
    partition : a :mod:`arraynorm.partition` object (``Batch()``, ``Layer()``, ``Group(8)`` …).
    operation : a :mod:`arraynorm.operation` object; default :class:`Standardize`.
    weight, bias : optional γ, β of the recovery's parameter shape.
    eps : numerical stabilizer, default 1e-5.
    recovery : a :mod:`arraynorm.recovery` object; default :class:`Affine`.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((4, 6, 5))
    >>> y = an.normalize(x, an.partition.Group(3), an.operation.RMSScale())  # "group RMS norm"
    >>> y.shape
    (4, 6, 5)
    """
    return _normalizer(partition, operation, eps, recovery)(x, weight, bias)


def _normalizer(partition: Partition, operation: Operation | None, eps: float,
                recovery: Recovery) -> Normalizer:
    return Normalizer(partition, operation or Standardize(), eps, "normalize", recovery)


@defvjp(normalize)
def _normalize_vjp(x: Array, partition: Partition, operation: Operation | None = None,
                   weight: Array | None = None, bias: Array | None = None, *, eps: float = 1e-5,
                   recovery: Recovery = AFFINE) -> tuple[Array, Pullback]:
    n = _normalizer(partition, operation, eps, recovery)
    y, ctx = n.forward(x, weight, bias)  # arraynorm.vjp checks the cotangent (not n.vjp again)

    def pullback(dy: Array) -> tuple[Array, ...]:
        dx, dw, db = n.backward(ctx, dy)
        return dx, None, None, dw, db

    return y, pullback


@defjvp(normalize)
def _normalize_jvp(x: Array, partition: Partition, operation: Operation | None = None,
                   weight: Array | None = None, bias: Array | None = None, *, eps: float = 1e-5,
                   recovery: Recovery = AFFINE) -> tuple[Array, Pushforward]:
    norm = _normalizer(partition, operation, eps, recovery)
    y, ctx = norm.forward(x, weight, bias)

    def pushforward(dx: Array | None = None, _p: None = None, _o: None = None,
                    dweight: Array | None = None, dbias: Array | None = None) -> Array:
        return norm.jvp(ctx, dx, dweight, dbias)

    return y, pushforward
