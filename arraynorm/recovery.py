"""Stage 3 of the survey's framework: representation recovery — what restores capacity.

A recovery is an object passed to :class:`~arraynorm.Normalizer` like a partition and an
operation (the third of its four parts). One mechanism serves the survey's recoveries (§3.3):

=======================  ==================================  ================================
recovery                 y =                                 γ, β span
=======================  ==================================  ================================
:class:`Affine`          γ·ŷ + β (either may be absent)      the partition's ``param_axes``:
                                                             channel (BN/IN/GN), normalized
                                                             axes (LN/RMS)
:class:`ConditionalAffine`  γ·ŷ + β, γ, β computed from       the batch axis and the
                         another input (AdaIN, FiLM)         partition's ``param_axes``
:class:`NoRecovery`      ŷ (PONO, L2 normalization)          — (takes no parameters)
=======================  ==================================  ================================

Backward, with dy = ∂L/∂y and the sum over every axis not in the parameter axes:
  ∂L/∂ŷ = γ·dy,   ∂L/∂γ = Σ dy·ŷ,   ∂L/∂β = Σ dy.
Forward mode, for tangents dŷ, dγ, dβ:  dy = γ·dŷ + dγ·ŷ + dβ.
The functions :func:`affine`, :func:`affine_backward` and :func:`affine_jvp` are those
formulas for any parameter axes; the weight family uses them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._array_api import xp_check_param_shape
from ._typing import Array, Dtype, Namespace, Shape
from .partition import Layout

__all__ = ["Recovery", "Affine", "ConditionalAffine", "NoRecovery", "broadcast_shape", "affine",
           "affine_backward", "affine_jvp"]


def broadcast_shape(shape: tuple[int, ...], param_axes: tuple[int, ...]) -> tuple[int, ...]:
    """Shape a parameter spanning ``param_axes`` is reshaped to for broadcasting."""
    return tuple(n if a in param_axes else 1 for a, n in enumerate(shape))


def _b(xp: Namespace, p: Array, shape: tuple[int, ...], param_axes: tuple[int, ...], dtype: Dtype) -> Array:
    p = xp.astype(p, dtype, copy=False)
    return xp.reshape(p, broadcast_shape(shape, param_axes))


def affine(xp: Namespace, yhat: Array, weight: Array | None, bias: Array | None,
           param_axes: tuple[int, ...]) -> Array:
    """y = γ·ŷ + β (either may be ``None``), parameters in ``yhat``'s dtype."""
    shape = tuple(yhat.shape)
    if weight is not None:
        yhat = yhat * _b(xp, weight, shape, param_axes, yhat.dtype)
    if bias is not None:
        yhat = yhat + _b(xp, bias, shape, param_axes, yhat.dtype)
    return yhat


def affine_backward(xp: Namespace, dy: Array, yhat: Array, weight: Array | None, bias: Array | None,
                    param_axes: tuple[int, ...]) -> tuple[Array, Array | None, Array | None]:
    """(∂L/∂ŷ, ∂L/∂γ, ∂L/∂β); the parameter cotangents in the parameters' own dtypes."""
    shape = tuple(dy.shape)
    axes = tuple(a for a in range(len(shape)) if a not in param_axes)
    pshape = tuple(shape[a] for a in param_axes)

    def reduce(t: Array, like: Array) -> Array:
        if axes:
            t = xp.sum(t, axis=axes)
        t = xp.reshape(t, pshape)
        return xp.astype(t, like.dtype, copy=False)

    dw = reduce(dy * yhat, weight) if weight is not None else None
    db = reduce(dy, bias) if bias is not None else None
    g = dy * _b(xp, weight, shape, param_axes, dy.dtype) if weight is not None else dy
    return g, dw, db


def affine_jvp(xp: Namespace, dyhat: Array | None, yhat: Array | None, weight: Array | None,
               param_axes: tuple[int, ...], shape: tuple[int, ...], dweight: Array | None = None,
               dbias: Array | None = None) -> Array:
    """dy = γ·dŷ + dγ·ŷ + dβ, each term present only where its tangent is (``None`` is a zero
    tangent; γ absent means γ = 1). ``yhat`` is only read when ``dweight`` is given; ``shape``
    is the output's, used when every tangent is zero. The result has ``dyhat``'s dtype (or
    ``yhat``'s)."""
    out = None if dyhat is None else affine(xp, dyhat, weight, None, param_axes)
    if dweight is not None:
        term = affine(xp, yhat, dweight, None, param_axes)
        out = term if out is None else out + term
    if dbias is not None:
        like = yhat if out is None else out
        assert like is not None, "affine_jvp: with only a β tangent, ŷ gives the output's dtype"
        b = _b(xp, dbias, shape, param_axes, like.dtype)
        out = b + xp.zeros_like(like) if out is None else out + b
    if out is None:
        out = xp.zeros_like(yhat)
    return out


# --------------------------------------------------------------------------------------
# the recovery objects
# --------------------------------------------------------------------------------------

class Recovery:
    """Base of the stage-3 objects. ŷ is the operation's output (compute dtype, the input's
    shape); γ (``weight``) and β (``bias``) span :meth:`param_axes` of the input. The
    default methods are the affine formulas; subclasses choose the axes or refuse
    parameters."""

    def param_axes(self, layout: Layout) -> tuple[int, ...]:
        """Axes of the input that γ and β span."""
        return layout.param_axes

    def param_shape(self, layout: Layout) -> Shape:
        """Shape of γ and β: the input's sizes along :meth:`param_axes`."""
        return tuple(layout.shape[a] for a in self.param_axes(layout))

    def check(self, fname: str, layout: Layout, weight: Array | None, bias: Array | None) -> None:
        """Raise ``ValueError`` naming ``fname`` when γ or β does not have :meth:`param_shape`."""
        shape = self.param_shape(layout)
        xp_check_param_shape(fname, "weight", weight, shape)
        xp_check_param_shape(fname, "bias", bias, shape)

    def forward(self, xp: Namespace, yhat: Array, weight: Array | None, bias: Array | None,
                layout: Layout) -> Array:
        """y = γ·ŷ + β (``None`` parameters are 1 and 0)."""
        return affine(xp, yhat, weight, bias, self.param_axes(layout))

    def backward(self, xp: Namespace, dy: Array, yhat: Array, weight: Array | None,
                 bias: Array | None, layout: Layout) -> tuple[Array, Array | None, Array | None]:
        """(∂L/∂ŷ, ∂L/∂γ, ∂L/∂β); ``None`` for an absent parameter."""
        return affine_backward(xp, dy, yhat, weight, bias, self.param_axes(layout))

    def jvp(self, xp: Namespace, dyhat: Array | None, yhat: Array | None, weight: Array | None,
            layout: Layout, dweight: Array | None = None, dbias: Array | None = None) -> Array:
        """dy = γ·dŷ + dγ·ŷ + dβ (``None`` tangents are zero)."""
        return affine_jvp(xp, dyhat, yhat, weight, self.param_axes(layout), layout.shape,
                          dweight, dbias)


@dataclass(frozen=True)
class Affine(Recovery):
    """Per-feature affine y = γ·ŷ + β (Ioffe & Szegedy 2015), γ, β of the partition's
    ``param_shape``; either may be ``None``. The default recovery of every Normalizer."""


@dataclass(frozen=True)
class ConditionalAffine(Recovery):
    """Conditional affine y = γ·ŷ + β with γ, β per *sample* and feature, of shape
    (N, *param_shape): computed by the caller from another input (AdaIN's style statistics,
    FiLM's generator), so their cotangents flow back into that input.

    Needs a partition whose parameter axes leave the batch axis free (BN/IN/GN/PN, LN over
    non-batch axes).
    """

    def param_axes(self, layout: Layout) -> tuple[int, ...]:
        if 0 in layout.param_axes:
            raise ValueError(
                f"ConditionalAffine: the partition's parameters already span the batch axis "
                f"(param_axes {layout.param_axes}); conditional γ, β need it free"
            )
        return (0,) + layout.param_axes


@dataclass(frozen=True)
class NoRecovery(Recovery):
    """No stage 3: y = ŷ (PONO without affine, L2 normalization). Refuses γ and β."""

    def check(self, fname: str, layout: Layout, weight: Array | None, bias: Array | None) -> None:
        for name, p in (("weight", weight), ("bias", bias)):
            if p is not None:
                raise ValueError(f"{fname}: the normalization has no recovery (NoRecovery) and "
                                 f"takes no {name}, got an array of shape {tuple(p.shape)}")

    def forward(self, xp: Namespace, yhat: Array, weight: Array | None, bias: Array | None,
                layout: Layout) -> Array:
        """y = ŷ."""
        return yhat

    def backward(self, xp: Namespace, dy: Array, yhat: Array, weight: Array | None,
                 bias: Array | None, layout: Layout) -> tuple[Array, Array | None, Array | None]:
        """(dy, None, None): ∂L/∂ŷ = dy and no parameters."""
        return dy, None, None


AFFINE = Affine()
