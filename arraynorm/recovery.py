"""Stage 3 of the survey's framework: representation recovery — what restores capacity.

One mechanism serves both recoveries of the survey (§3.3):

* per-feature affine, y = γ·ŷ + β with γ, β spanning the partition's ``param_axes``
  (the channel axis for BN/IN/GN, the normalized axes for LN/RMS);
* conditional affine (AdaIN, FiLM), where γ, β are themselves per-sample arrays computed
  from another input: the same formula with the batch axis among ``param_axes``.

Backward, with dy = ∂L/∂y and the sum over every axis not in ``param_axes``:
  ∂L/∂ŷ = γ·dy,   ∂L/∂γ = Σ dy·ŷ,   ∂L/∂β = Σ dy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["broadcast_shape", "affine", "affine_backward"]


def broadcast_shape(shape: tuple[int, ...], param_axes: tuple[int, ...]) -> tuple[int, ...]:
    """Shape a parameter spanning ``param_axes`` is reshaped to for broadcasting."""
    return tuple(n if a in param_axes else 1 for a, n in enumerate(shape))


def _b(xp: Any, p: Any, shape: tuple[int, ...], param_axes: tuple[int, ...], dtype: Any) -> Any:
    p = p if p.dtype == dtype else xp.astype(p, dtype)
    return xp.reshape(p, broadcast_shape(shape, param_axes))


def affine(xp: Any, yhat: Any, weight: Any | None, bias: Any | None,
           param_axes: tuple[int, ...]) -> Any:
    """y = γ·ŷ + β (either may be ``None``), parameters in ``yhat``'s dtype."""
    shape = tuple(yhat.shape)
    if weight is not None:
        yhat = yhat * _b(xp, weight, shape, param_axes, yhat.dtype)
    if bias is not None:
        yhat = yhat + _b(xp, bias, shape, param_axes, yhat.dtype)
    return yhat


def affine_backward(xp: Any, dy: Any, yhat: Any, weight: Any | None, bias: Any | None,
                    param_axes: tuple[int, ...]) -> tuple[Any, Any | None, Any | None]:
    """(∂L/∂ŷ, ∂L/∂γ, ∂L/∂β); the parameter cotangents in the parameters' own dtypes."""
    shape = tuple(dy.shape)
    axes = tuple(a for a in range(len(shape)) if a not in param_axes)
    pshape = tuple(shape[a] for a in param_axes)

    def reduce(t: Any, like: Any) -> Any:
        if axes:
            t = xp.sum(t, axis=axes)
        t = xp.reshape(t, pshape)
        return t if t.dtype == like.dtype else xp.astype(t, like.dtype)

    dw = reduce(dy * yhat, weight) if weight is not None else None
    db = reduce(dy, bias) if bias is not None else None
    g = dy * _b(xp, weight, shape, param_axes, dy.dtype) if weight is not None else dy
    return g, dw, db
