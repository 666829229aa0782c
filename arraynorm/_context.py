"""What a normalizer and its implementation exchange: the context a forward pass keeps and the
protocol every implementation follows.

This module sits below both :mod:`arraynorm.compose` (the :class:`~arraynorm.Normalizer`)
and :mod:`arraynorm._kernels` (the implementations and their selector), so neither imports
the other's internals and there is no cycle (DESIGN.md §4, docs/architecture.md).

An *implementation* runs one normalizer on one input: the portable array-API code, the NumPy
block recipe, and later a numba JIT or CuPy fused kernels. It owns its forward, its backward
and its forward-mode product; the selector picks one per forward call and the context
records which, so the backward and the JVP are the same implementation's — no type test on
the context. Every implementation's context carries the portable path's view of the
forward (``state`` of the operation, ``yhat``), formed on demand where the implementation
keeps something cheaper, so the portable backward and JVP can always serve as a fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ._typing import Array, Dtype, Namespace
from .operation import Operation
from .partition import Layout, Partition
from .recovery import Recovery

__all__ = ["Stages", "NormContext", "Implementation", "Grads"]

#: ``(dx, dweight, dbias)``, ``None`` for absent parameters
Grads = tuple[Array, Array | None, Array | None]


class Stages(Protocol):
    """The parts of a normalizer an implementation reads (:class:`arraynorm.Normalizer`)."""

    @property
    def partition(self) -> Partition: ...
    @property
    def operation(self) -> Operation: ...
    @property
    def recovery(self) -> Recovery: ...
    @property
    def eps(self) -> float: ...
    @property
    def name(self) -> str: ...
    @property
    def repeated(self) -> bool: ...


class NormContext:
    """What a forward pass keeps for its backward pass and forward-mode product.

    Attributes
    ----------
    xp, layout : the namespace and the partition's layout of the input.
    state : the operation's state (``state.mean``, ``state.var`` in ``layout.stats_shape``
        for the standardize family, ``state.whitening_matrix`` for whitening): what running
        statistics are updated from.
    yhat : ŷ, the normalized input before recovery, in the compute dtype and the input's
        shape (formed on first access where the implementation did not keep it).
    weight, bias : the recovery's parameters the forward used.
    x_dtype : the input's dtype (outputs and cotangents are cast back to it).
    implementation : the :class:`Implementation` that ran the forward and answers the
        backward and JVP (``None``: the portable one).
    saved : what that implementation keeps for itself (the NumPy block plan, the input);
        no other code reads it.
    """

    def __init__(self, xp: Namespace, layout: Layout, state: Any, yhat: Array | None,
                 weight: Array | None, bias: Array | None, x_dtype: Dtype,
                 implementation: Implementation | None = None, *, saved: Any = None,
                 compute_yhat: Callable[[], Array] | None = None) -> None:
        self.xp, self.layout, self.state = xp, layout, state
        self.weight, self.bias, self.x_dtype = weight, bias, x_dtype
        self.implementation, self.saved = implementation, saved
        self._yhat, self._compute_yhat = yhat, compute_yhat

    @property
    def yhat(self) -> Array:
        """ŷ, the operation's output before the recovery (formed on first use where the
        implementation kept less).
        """
        if self._yhat is None and self._compute_yhat is not None:
            self._yhat = self._compute_yhat()
        return self._yhat

    def __repr__(self) -> str:
        impl = getattr(self.implementation, "name", "portable")
        return f"NormContext(shape={self.layout.shape}, implementation={impl!r})"


class Implementation(Protocol):
    """One way to run a normalizer, chosen per forward call by
    :func:`arraynorm._kernels.select`; it owns the three products of that call.

    ``supports`` is the selection rule (backend, operation, recovery, dtype, size — the
    measured thresholds live in the implementation's module); it looks at shapes, dtypes and
    types only. ``forward`` returns the output and a :class:`NormContext` whose
    ``implementation`` is ``self``; ``backward`` and ``jvp`` receive that context. Outputs
    and cotangents have their primals' dtypes; ``backward`` returns ``(dx, dweight,
    dbias)`` with ``None`` for absent parameters; ``jvp`` takes ``None`` for zero tangents
    and leaves the context as it was.
    """

    @property
    def name(self) -> str: ...

    def supports(self, stages: Stages, xp: Namespace, layout: Layout, x: Array,
                 weight: Array | None, bias: Array | None) -> bool: ...

    def forward(self, stages: Stages, xp: Namespace, layout: Layout, x: Array,
                weight: Array | None, bias: Array | None) -> tuple[Array, NormContext]: ...

    def backward(self, stages: Stages, ctx: NormContext, dy: Array) -> Grads: ...

    def jvp(self, stages: Stages, ctx: NormContext, dx: Array | None, dweight: Array | None,
            dbias: Array | None) -> Array: ...
