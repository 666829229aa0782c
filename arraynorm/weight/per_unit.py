"""Per-unit weight normalizations: weight normalization, centred weight normalization and
weight standardization (see :mod:`arraynorm.weight`).

An *output unit* is one index along ``dim`` (default 0, PyTorch's (out, in, *kernel) layout);
the statistics are taken over every other axis (the unit's fan-in). Per-unit statistics are
the layer partition of stage 1 over the fan-in axes, so WN, centred WN and WS reuse the
core's :class:`~arraynorm.Normalizer` (with :class:`~arraynorm.operation.LpScale` and
:class:`~arraynorm.operation.Standardize`) and its closed-form backward pass; the per-unit
scale g is stage 3's affine along the unit axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from array_api_compat import is_dask_array, is_numpy_array

from .._array_api import (xp_check_eps, xp_check_floating, xp_compute_dtype, xp_namespace,
                          xp_normalize_axis)
from .._kernels import numba_jit
from .._statistics import sum_of_squares
from .._typing import Array, Dtype, Namespace, Pullback
from .._vjp import defvjp
from ..compose import Normalizer
from ..operation import LpScale, Operation, Standardize
from ..partition import Layer
from ..recovery import affine, affine_backward

__all__ = ["weight_norm", "centered_weight_norm", "weight_standardization", "unit_axis",
           "per_unit"]


# ---------------------------------------------------------------------------------------------
# shared pieces: per-unit operation, per-unit scale g, argument checks

def unit_axis(fname: str, dim: int | None, a: Array, name: str) -> int | None:
    """The output-unit axis in [0, ndim), or None for "the whole tensor is one unit"."""
    if a.ndim == 0:
        raise ValueError(f"{fname}: {name} must have at least 1 dimension, got a 0-d array")
    return None if dim is None else xp_normalize_axis(fname, dim, a.ndim, "dim")


def per_unit(fname: str, xp: Namespace, v: Array, keep: int | None, operation: Operation,
              eps: float, ct: Dtype) -> tuple[Array, Callable[[Array], Array]]:
    """Apply ``operation`` to each output unit of ``v`` (layer partition over the fan-in).

    Returns v̂ in the compute dtype ``ct`` and the pullback dv̂ ↦ dv (in ``v``'s dtype).
    """
    # a trailing axis of size one gives the partition an axis to reduce over even when the
    # unit has no fan-in (a 1-D v with dim=0: each element is its own unit, as in PyTorch)
    view = tuple(v.shape) + (1,)
    axes = tuple(a for a in range(len(view)) if a != keep)
    norm = Normalizer(Layer(axes), operation, eps, fname)
    vc = xp.astype(v, ct, copy=False)
    _, ctx = norm.forward(xp.reshape(vc, view))
    vhat = xp.reshape(ctx.yhat, tuple(v.shape))

    def pullback(dvhat: Array) -> Array:
        dv = xp.reshape(norm.backward(ctx, xp.reshape(dvhat, view))[0], tuple(v.shape))
        return xp.astype(dv, v.dtype, copy=False)

    return vhat, pullback


def _check_g(fname: str, g: Array, shape: tuple[int, ...], keep: int | None) -> tuple[int, ...]:
    """Validate g's shape; return the flat shape g is seen as ((n,) or ())."""
    if keep is None:
        accepted = [(), (1,) * len(shape)]
        flat: tuple[int, ...] = ()
    else:
        n = shape[keep]
        accepted = [tuple(n if a == keep else 1 for a in range(len(shape))), (n,)]
        flat = (n,)
    if tuple(g.shape) not in accepted:
        raise ValueError(
            f"{fname}: g must have shape {accepted[0]} (one scale per output unit along "
            f"dim={keep}, PyTorch's shape) or {accepted[1]}, for v of shape {shape}; "
            f"got {tuple(g.shape)}"
        )
    return flat


def _scale_units(xp: Namespace, vhat: Array, g: Array, keep: int | None,
                 flat: tuple[int, ...]) -> tuple[Array, Callable[[Array], tuple[Array, Array]]]:
    """w = g ⊙ v̂, g broadcast along the unit axis (stage 3's affine with param_axes=(dim,));
    pullback dw ↦ (dv̂, dg) with dg = Σ_fan-in dw · v̂ in g's shape and dtype."""
    axes = () if keep is None else (keep,)
    gf = xp.reshape(g, flat)
    w = affine(xp, vhat, gf, None, axes)

    def pullback(dw: Array) -> tuple[Array, Array]:
        dvhat, dg, _ = affine_backward(xp, dw, vhat, gf, None, axes)
        return dvhat, xp.reshape(dg, tuple(g.shape))

    return w, pullback




# ---------------------------------------------------------------------------------------------
# weight normalization

def _row_dot(xp: Namespace, a: Array, b: Array) -> Array:
    """Σ a·b along the last axis of two (n, m) arrays, as (n, 1): one BLAS-backed pass where
    the namespace has ``vecdot`` (NumPy, PyTorch, CuPy), a product and a sum otherwise."""
    vecdot = getattr(xp, "vecdot", None)
    if vecdot is not None and not is_dask_array(a):
        return xp.reshape(vecdot(a, b, axis=-1), (a.shape[0], 1))
    return xp.sum(a * b, axis=-1, keepdims=True)


def _unit_norms(xp: Namespace, v2: Array) -> Array:
    """‖v_i‖₂ of the rows of ``v2`` (n, m), as (n, 1), for any finite v.

    On NumPy the squares are summed in the compute dtype by BLAS (one pass, no copy); a row
    whose sum overflows or falls below 2⁻¹⁰² (float32) / 2⁻⁹⁶⁰ (float64) — values beyond
    ~1e19 or below ~1e-19 in float32 — is redone by :func:`sum_of_squares` (float64 squares
    for float32, power-of-two scaling for float64), which every other backend uses directly
    (no data-dependent branch on lazy or device arrays)."""
    if is_numpy_array(v2):
        with np.errstate(over="ignore", under="ignore"):  # such rows are redone below
            ss = _row_dot(xp, v2, v2)
        lo = 2.0 ** (-102 if v2.dtype == np.float32 else -960)
        if bool(np.all((ss >= lo) & (ss < np.inf))):
            return xp.sqrt(ss)
    s, ss = sum_of_squares(xp, v2, (1,))
    norm = xp.sqrt(ss) if s is None else s * xp.sqrt(ss)
    return xp.astype(norm, v2.dtype, copy=False)


def _weight_norm_units(xp: Namespace, v: Array, g: Array, ct: Dtype,
                       out_dtype: Dtype) -> tuple[Array, Pullback]:
    """The direct path of weight normalization per output unit along axis 0 (PyTorch's
    default, ``dim=0``): v seen as (n, m), one norm per row.

    Forward: ‖v_i‖ (one pass, :func:`_unit_norms`), w = v·(g/‖v‖) (one pass). Backward, with
    u = Σ dw·v̂ = (Σ dw·v)/‖v‖: dg = u, dv = (g/‖v‖)·(dw − v·(u/‖v‖)) — the general path's
    closed form (:class:`~arraynorm.operation.LpScale` then the affine), grouped so that no
    per-row factor overflows for float32 values from 1e-23 to 1e20; on NumPy in place, three
    passes and one temporary. Against the general path's normalizer round trip (layout, ŷ
    kept, separate affine and LpScale backward)."""
    n = v.shape[0]
    m = math.prod(v.shape[1:])
    v2 = xp.reshape(xp.astype(v, ct, copy=False), (n, m))
    gf = xp.reshape(xp.astype(g, ct, copy=False), (n, 1))
    if is_numpy_array(v2) and v.dtype == ct == out_dtype:
        fused = numba_jit.unit_scale(v2, xp.reshape(gf, (n,)))
        if fused is not None:
            return _weight_norm_units_fused(xp, v, g, v2, gf, *fused)
    norm = _unit_norms(xp, v2)
    r = gf / norm
    w = xp.astype(xp.reshape(v2 * r, tuple(v.shape)), out_dtype, copy=False)

    def pullback(dw: Array) -> tuple[Array, Array, None]:
        dw2 = xp.reshape(xp.astype(dw, ct, copy=False), (n, m))
        u = _row_dot(xp, dw2, v2) / norm
        c = u / norm
        if is_numpy_array(dw2):
            t = np.multiply(v2, c)
            np.subtract(dw2, t, out=t)
            dv = np.multiply(t, r, out=t)
        else:
            dv = r * (dw2 - v2 * c)
        return (xp.astype(xp.reshape(dv, tuple(v.shape)), v.dtype, copy=False),
                xp.astype(xp.reshape(u, tuple(g.shape)), g.dtype, copy=False), None)

    return w, pullback


def _weight_norm_units_fused(xp: Namespace, v: Array, g: Array, v2: np.ndarray, gf: np.ndarray,
                             w2: np.ndarray, ss: np.ndarray) -> tuple[Array, Pullback]:
    """:func:`_weight_norm_units` where the numba loops answered the forward
    (:func:`arraynorm._kernels.numba_jit.unit_scale`): the backward is theirs too (the
    cotangent is a NumPy array, as ``vjp`` checks)."""
    g1 = gf.reshape(v2.shape[0])

    def pullback(dw: Array) -> tuple[Array, Array, None]:
        dw2 = np.reshape(np.asarray(dw, dtype=v2.dtype), v2.shape)
        dv2, dg = numba_jit.unit_scale_backward(dw2, v2, g1, ss)
        return (np.reshape(dv2, tuple(v.shape)),
                np.reshape(dg, tuple(g.shape)).astype(g.dtype, copy=False), None)

    return xp.reshape(w2, tuple(v.shape)), pullback


def _weight_norm(v: Array, g: Array, dim: int | None, *, direct: bool = True) -> tuple[Array, Pullback]:
    fname = "weight_norm"
    xp = xp_namespace(fname, v=v, g=g)
    xp_check_floating(fname, "v", v, xp)
    xp_check_floating(fname, "g", g, xp)
    keep = unit_axis(fname, dim, v, "v")
    flat = _check_g(fname, g, tuple(v.shape), keep)
    out_dtype = xp.result_type(v.dtype, g.dtype)
    ct = xp_compute_dtype(xp, out_dtype)
    if direct and keep == 0 and v.ndim >= 2 and math.prod(v.shape) > 0:
        # the common case (units along axis 0, p = 2): the direct path, equal to the general
        # one below (tests/test_weight.py) with fewer passes
        return _weight_norm_units(xp, v, g, ct, out_dtype)
    # v̂ = v / ‖v‖: LpScale(2) with eps = 0 is exactly PyTorch's norm_except_dim (no clamp)
    vhat, pb_unit = per_unit(fname, xp, v, keep, LpScale(2.0), 0.0, ct)
    w, pb_scale = _scale_units(xp, vhat, g, keep, flat)

    def pullback(dw: Array) -> tuple[Array, Array, None]:
        dvhat, dg = pb_scale(xp.astype(dw, ct, copy=False))
        return pb_unit(dvhat), dg, None

    return xp.astype(w, out_dtype, copy=False), pullback


def weight_norm(v: Array, g: Array, dim: int | None = 0) -> Array:
    """Weight normalization: w = g · v / ‖v‖₂, one norm per output unit (Salimans & Kingma 2016).

    ‖v‖ is taken over every axis except ``dim`` (``dim=None``: over the whole tensor, one
    unit), as ``torch._weight_norm`` / ``torch.nn.utils.parametrizations.weight_norm``.

    Shapes: ``v`` any shape of rank >= 1; ``g`` either PyTorch's shape — ``v``'s shape with
    ones everywhere except ``v.shape[dim]`` at ``dim`` (``()`` or all ones for ``dim=None``) —
    or the flat ``(v.shape[dim],)``; both are accepted so that a PyTorch ``weight_g`` and a
    plain per-unit vector both work, and ``dg`` comes back in the shape ``g`` was given in.
    Output: ``v``'s shape, dtype ``result_type(v, g)``, computed in float32 at least.

    ``vjp(weight_norm, v, g, dim)`` pulls back to ``(dv, dg, None)``:
    dg = Σ dw·v/‖v‖ and dv = (g/‖v‖)·(dw − v̂·Σ dw·v̂), sums over each unit's fan-in.

    Differences from PyTorch: ``dim`` is an ordinary axis, so ``dim=-1`` is the *last* axis;
    PyTorch's ``_weight_norm`` reads ``dim=-1`` as "whole tensor", which here is
    ``dim=None``. As in PyTorch there is no eps: a unit with v = 0 gives a non-finite output
    (checking would need the values, see DESIGN.md §3.4).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> v = np.arange(1.0, 7.0).reshape(2, 3)
    >>> w = an.weight_norm(v, np.array([1.0, 2.0]))
    >>> np.round(np.linalg.norm(w, axis=1), 12)
    array([1., 2.])
    """
    return _weight_norm(v, g, dim)[0]


@defvjp(weight_norm)
def _weight_norm_vjp(v: Array, g: Array, dim: int | None = 0) -> tuple[Array, Pullback]:
    return _weight_norm(v, g, dim)


def _centered_weight_norm(v: Array, g: Array | None, dim: int | None,
                          eps: float) -> tuple[Array, Pullback]:
    fname = "centered_weight_norm"
    xp = xp_namespace(fname, v=v, g=g)
    xp_check_floating(fname, "v", v, xp)
    if g is not None:
        xp_check_floating(fname, "g", g, xp)
    eps = xp_check_eps(fname, eps)
    keep = unit_axis(fname, dim, v, "v")
    flat = _check_g(fname, g, tuple(v.shape), keep) if g is not None else ()
    out_dtype = v.dtype if g is None else xp.result_type(v.dtype, g.dtype)
    ct = xp_compute_dtype(xp, out_dtype)
    n = math.prod(v.shape) // (1 if keep is None else v.shape[keep])
    # (v − μ)/sqrt(‖v − μ‖² + eps) = Standardize(v; eps/n) / sqrt(n): centred WN is the
    # standardization of the fan-in rescaled, so the core's two-pass moments and its
    # closed-form backward serve here too
    inv_sqrt_n = 1.0 / math.sqrt(n)
    std, pb_unit = per_unit(fname, xp, v, keep, Standardize(), eps / n, ct)
    vhat = std * inv_sqrt_n
    if g is None:
        w, pb_scale = vhat, None
    else:
        w, pb_scale = _scale_units(xp, vhat, g, keep, flat)

    def pullback(dw: Array) -> tuple[Array, Array | None, None]:
        dw = xp.astype(dw, ct, copy=False)
        dvhat, dg = (dw, None) if pb_scale is None else pb_scale(dw)
        return pb_unit(dvhat * inv_sqrt_n), dg, None

    return xp.astype(w, out_dtype, copy=False), pullback


def centered_weight_norm(v: Array, g: Array | None = None, dim: int | None = 0, *,
                         eps: float = 0.0) -> Array:
    """Centred weight normalization: w = g · (v − μ) / sqrt(‖v − μ‖² + eps) per output unit.

    Huang, Liu, Lang & Tao, *Centered Weight Normalization in Accelerating Training of Deep
    Neural Networks* (ICCV 2017): each output unit's weight vector is centred (μ its mean
    over the fan-in) and scaled to unit L2 norm, so the unit's pre-activation is invariant to
    a shift of its input and has controlled scale. ``g`` (optional) is the learnable
    per-unit scale of the paper; without it the output rows have unit norm.

    Shapes and ``dim``: as :func:`weight_norm` (unit axis ``dim``, default 0; ``dim=None``
    treats the tensor as one unit; ``g`` of PyTorch's keepdims shape or ``(v.shape[dim],)``).
    ``eps`` (default 0.0, the paper's formula) is added to the squared norm; pass eps > 0
    to keep a constant unit (‖v − μ‖ = 0) finite. Equivalently, centred WN is weight
    standardization divided by sqrt(fan-in) with eps/fan-in.

    ``vjp(centered_weight_norm, v, g, dim)`` pulls back to ``(dv, dg, None)`` (``dg`` is
    ``None`` when ``g`` is). There is no PyTorch counterpart.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> v = np.random.default_rng(0).standard_normal((3, 5))
    >>> w = an.centered_weight_norm(v)
    >>> bool(np.allclose(w.sum(axis=1), 0) and np.allclose(np.linalg.norm(w, axis=1), 1))
    True
    """
    return _centered_weight_norm(v, g, dim, eps)[0]


@defvjp(centered_weight_norm)
def _centered_weight_norm_vjp(v: Array, g: Array | None = None, dim: int | None = 0, *,
                              eps: float = 0.0) -> tuple[Array, Pullback]:
    return _centered_weight_norm(v, g, dim, eps)


def _weight_standardization(w: Array, eps: float) -> tuple[Array, Pullback]:
    fname = "weight_standardization"
    xp = xp_namespace(fname, w=w)
    xp_check_floating(fname, "w", w, xp)
    eps = xp_check_eps(fname, eps)
    if w.ndim < 2:
        raise ValueError(
            f"{fname}: w must have at least 2 dimensions (output channels, fan-in …), got "
            f"shape {tuple(w.shape)}"
        )
    ct = xp_compute_dtype(xp, w.dtype)
    what, pb_unit = per_unit(fname, xp, w, 0, Standardize(), eps, ct)

    def pullback(dy: Array) -> tuple[Array]:
        return (pb_unit(xp.astype(dy, ct, copy=False)),)

    return xp.astype(what, w.dtype, copy=False), pullback


def weight_standardization(w: Array, *, eps: float = 1e-5) -> Array:
    """Weight standardization: ŵ = (w − μ) / sqrt(σ² + eps) per output channel (Qiao et al. 2019).

    μ and the *biased* variance σ² are taken over the fan-in, every axis but 0 of ``w``
    (PyTorch's (out, in, *kernel) layout; at least 2-D). Output: ``w``'s shape and dtype.

    Convention chosen: the biased variance with eps inside the square root — the
    formula the library's standardization uses everywhere (BN/LN/GN), and the one of
    timm's ``StdConv2d`` (BiT). The paper's released code divides by the *unbiased* std
    plus eps outside the root, (w − μ)/(std_unbiased + eps); the two differ by a factor
    sqrt(n/(n−1)) for fan-in n (about 1/(2n) relative) and in eps's effect. eps inside the
    root keeps the map smooth for a constant channel (output 0, finite gradient), whereas
    sqrt at zero variance has an infinite derivative.

    ``vjp(weight_standardization, w)`` pulls back to ``(dw,)``, the standardization's
    closed-form backward rstd·(g − mean(g) − ŵ·mean(g·ŵ)).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)) * 0.1 + 0.05
    >>> ws = an.weight_standardization(w)
    >>> bool(np.allclose(ws.mean(axis=(1, 2, 3)), 0) and np.allclose(ws.var(axis=(1, 2, 3)), 1, atol=1e-2))
    True
    """
    return _weight_standardization(w, eps)[0]


@defvjp(weight_standardization)
def _weight_standardization_vjp(w: Array, *, eps: float = 1e-5) -> tuple[Array, Pullback]:
    return _weight_standardization(w, eps)


