"""Stage 3 of the survey's framework: representation recovery — what restores capacity.

One mechanism serves both recoveries of the survey (§3.3):

* per-feature affine, y = γ·ŷ + β with γ, β spanning the partition's ``param_axes``
  (the channel axis for BN/IN/GN, the normalized axes for LN/RMS);
* conditional affine (AdaIN, FiLM), where γ, β are themselves per-sample arrays computed
  from another input: the same formula with the batch axis among ``param_axes``.

Backward, with dy = ∂L/∂y and the sum over every axis not in ``param_axes``:
  ∂L/∂ŷ = γ·dy,   ∂L/∂γ = Σ dy·ŷ,   ∂L/∂β = Σ dy.
Forward mode, for tangents dŷ, dγ, dβ:  dy = γ·dŷ + dγ·ŷ + dβ.
"""

from __future__ import annotations

from typing import Any

from ._typing import Namespace

__all__ = ["broadcast_shape", "affine", "affine_backward", "affine_jvp"]


def broadcast_shape(shape: tuple[int, ...], param_axes: tuple[int, ...]) -> tuple[int, ...]:
    """Shape a parameter spanning ``param_axes`` is reshaped to for broadcasting."""
    return tuple(n if a in param_axes else 1 for a, n in enumerate(shape))


def _b(xp: Namespace, p: Any, shape: tuple[int, ...], param_axes: tuple[int, ...], dtype: Any) -> Any:
    p = xp.astype(p, dtype, copy=False)
    return xp.reshape(p, broadcast_shape(shape, param_axes))


def affine(xp: Namespace, yhat: Any, weight: Any | None, bias: Any | None,
           param_axes: tuple[int, ...]) -> Any:
    """y = γ·ŷ + β (either may be ``None``), parameters in ``yhat``'s dtype."""
    shape = tuple(yhat.shape)
    if weight is not None:
        yhat = yhat * _b(xp, weight, shape, param_axes, yhat.dtype)
    if bias is not None:
        yhat = yhat + _b(xp, bias, shape, param_axes, yhat.dtype)
    return yhat


def affine_backward(xp: Namespace, dy: Any, yhat: Any, weight: Any | None, bias: Any | None,
                    param_axes: tuple[int, ...]) -> tuple[Any, Any | None, Any | None]:
    """(∂L/∂ŷ, ∂L/∂γ, ∂L/∂β); the parameter cotangents in the parameters' own dtypes."""
    shape = tuple(dy.shape)
    axes = tuple(a for a in range(len(shape)) if a not in param_axes)
    pshape = tuple(shape[a] for a in param_axes)

    def reduce(t: Any, like: Any) -> Any:
        if axes:
            t = xp.sum(t, axis=axes)
        t = xp.reshape(t, pshape)
        return xp.astype(t, like.dtype, copy=False)

    dw = reduce(dy * yhat, weight) if weight is not None else None
    db = reduce(dy, bias) if bias is not None else None
    g = dy * _b(xp, weight, shape, param_axes, dy.dtype) if weight is not None else dy
    return g, dw, db


def affine_jvp(xp: Namespace, dyhat: Any | None, yhat: Any | None, weight: Any | None,
               param_axes: tuple[int, ...], shape: tuple[int, ...], dweight: Any | None = None,
               dbias: Any | None = None) -> Any:
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
        b = _b(xp, dbias, shape, param_axes, like.dtype)
        out = b + xp.zeros_like(like) if out is None else out + b
    if out is None:
        out = xp.zeros_like(yhat)
    return out
