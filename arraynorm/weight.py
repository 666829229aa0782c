"""Weight normalization family: reparameterizations of a layer's weight, each with its exact VJP.

The survey (Huang et al., arXiv 2009.12836, §4) lists these as the second family: instead of
the activations, the *weight* is normalized, per output unit, before the layer uses it.

=======================  ==========================================  ===========================
function                 w = …                                       reference
=======================  ==========================================  ===========================
weight_norm              g · v / ‖v‖                                 Salimans & Kingma 2016
centered_weight_norm     g · (v − μ) / ‖v − μ‖                       Huang et al. 2017
weight_standardization   (w − μ) / sqrt(σ² + eps)                    Qiao et al. 2019
spectral_norm            W / σ̃, σ̃ from power iteration              Miyato et al. 2018
spectral_norm_exact      W / σ_max(W), σ_max from an SVD             —
=======================  ==========================================  ===========================

An *output unit* is one index along ``dim`` (default 0, PyTorch's (out, in, *kernel) layout);
the statistics are taken over every other axis (the unit's fan-in). Per-unit statistics are
the layer partition of stage 1 over the fan-in axes, so WN, centred WN and WS reuse the
core's :class:`~arraynorm.compose.Normalizer` (with :class:`~arraynorm.operation.LpScale` and
:class:`~arraynorm.operation.Standardize`) and its closed-form backward pass.

Every function keeps the weight's namespace, device and dtype (float16/bfloat16 computed in
float32), never branches on values, and registers its pullback with :func:`~arraynorm.defvjp`.
Norms and variances are computed scaled (:func:`arraynorm.operation.lp_norm`,
:func:`arraynorm.operation.statistics`), so finite weights of any magnitude — float32 values
of 1e20 or 1e-23, where PyTorch's norm overflows or underflows — give the right result. Empty
weights (a size-0 axis) give empty results.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from ._typing import Array, Namespace
from ._array_api import (
    xp_backend_name,
    xp_check_eps,
    xp_check_floating,
    xp_check_int,
    xp_compute_dtype,
    xp_device,
    xp_namespace,
    xp_normalize_axis,
)
from ._vjp import defvjp
from .compose import Normalizer
from ._statistics import lp_norm
from .operation import LpScale, Operation, Standardize
from .partition import Layer
from .recovery import affine, affine_backward

__all__ = [
    "weight_norm", "centered_weight_norm", "weight_standardization",
    "spectral_norm", "spectral_norm_exact", "spectral_norm_init_u",
]


# ---------------------------------------------------------------------------------------------
# shared pieces: per-unit operation, per-unit scale g, argument checks

def _unit_axis(fname: str, dim: int | None, a: Array, name: str) -> int | None:
    """The output-unit axis in [0, ndim), or None for "the whole tensor is one unit"."""
    if a.ndim == 0:
        raise ValueError(f"{fname}: {name} must have at least 1 dimension, got a 0-d array")
    return None if dim is None else xp_normalize_axis(fname, dim, a.ndim, "dim")


def _per_unit(fname: str, xp: Namespace, v: Array, keep: int | None, operation: Operation,
              eps: float, ct: Any) -> tuple[Array, Callable[[Array], Array]]:
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

def _weight_norm(v: Array, g: Array, dim: int | None):
    fname = "weight_norm"
    xp = xp_namespace(fname, v=v, g=g)
    xp_check_floating(fname, "v", v, xp)
    xp_check_floating(fname, "g", g, xp)
    keep = _unit_axis(fname, dim, v, "v")
    flat = _check_g(fname, g, tuple(v.shape), keep)
    out_dtype = xp.result_type(v.dtype, g.dtype)
    ct = xp_compute_dtype(xp, out_dtype)
    # v̂ = v / ‖v‖: LpScale(2) with eps = 0 is exactly PyTorch's norm_except_dim (no clamp)
    vhat, pb_unit = _per_unit(fname, xp, v, keep, LpScale(2.0), 0.0, ct)
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
def _weight_norm_vjp(v: Array, g: Array, dim: int | None = 0) -> tuple[Array, Callable]:
    return _weight_norm(v, g, dim)


def _centered_weight_norm(v: Array, g: Array | None, dim: int | None, eps: float):
    fname = "centered_weight_norm"
    xp = xp_namespace(fname, v=v, g=g)
    xp_check_floating(fname, "v", v, xp)
    if g is not None:
        xp_check_floating(fname, "g", g, xp)
    eps = xp_check_eps(fname, eps)
    keep = _unit_axis(fname, dim, v, "v")
    flat = _check_g(fname, g, tuple(v.shape), keep) if g is not None else ()
    out_dtype = v.dtype if g is None else xp.result_type(v.dtype, g.dtype)
    ct = xp_compute_dtype(xp, out_dtype)
    n = math.prod(v.shape) // (1 if keep is None else v.shape[keep])
    # (v − μ)/sqrt(‖v − μ‖² + eps) = Standardize(v; eps/n) / sqrt(n): centred WN is the
    # standardization of the fan-in rescaled, so the core's two-pass moments and its
    # closed-form backward serve here too
    inv_sqrt_n = 1.0 / math.sqrt(n)
    std, pb_unit = _per_unit(fname, xp, v, keep, Standardize(), eps / n, ct)
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
    """
    return _centered_weight_norm(v, g, dim, eps)[0]


@defvjp(centered_weight_norm)
def _centered_weight_norm_vjp(v: Array, g: Array | None = None, dim: int | None = 0, *,
                              eps: float = 0.0) -> tuple[Array, Callable]:
    return _centered_weight_norm(v, g, dim, eps)


def _weight_standardization(w: Array, eps: float):
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
    what, pb_unit = _per_unit(fname, xp, w, 0, Standardize(), eps, ct)

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
    """
    return _weight_standardization(w, eps)[0]


@defvjp(weight_standardization)
def _weight_standardization_vjp(w: Array, *, eps: float = 1e-5) -> tuple[Array, Callable]:
    return _weight_standardization(w, eps)


# ---------------------------------------------------------------------------------------------
# spectral normalization

def _as_matrix(xp: Namespace, w: Array, d: int) -> Array:
    """``w`` as a (w.shape[d], rest) matrix, ``d`` moved first (PyTorch's reshape)."""
    if d != 0:
        w = xp.permute_dims(w, (d,) + tuple(a for a in range(w.ndim) if a != d))
    return xp.reshape(w, (w.shape[0], -1))


def _outer_in_layout(xp: Namespace, u: Array, v: Array, shape: tuple[int, ...], d: int) -> Array:
    """The matrix u vᵀ laid out like the weight (inverse of :func:`_as_matrix`), by
    broadcasting u along ``d`` against v shaped as the other axes: no transpose copy."""
    ub = xp.reshape(u, tuple(n if a == d else 1 for a, n in enumerate(shape)))
    vb = xp.expand_dims(xp.reshape(v, tuple(n for a, n in enumerate(shape) if a != d)), axis=d)
    return ub * vb


def _l2_normalize(xp: Namespace, x: Array, eps: float) -> Array:
    """x / max(‖x‖₂, eps), ``torch.nn.functional.normalize`` of a vector; the norm without
    overflow or underflow (:func:`arraynorm.operation.lp_norm`)."""
    norm = lp_norm(xp, x, 2.0, (0,))
    return x / xp.maximum(norm, xp.asarray(eps, dtype=x.dtype, device=xp_device(x)))


def _divide_by_sigma(xp: Namespace, wc: Array, sigma: Array, u: Array, v: Array, d: int,
                     dtype: Any) -> tuple[Array, Callable[[Array], Array]]:
    """w/σ and the pullback dw ↦ dW for σ = uᵀ W v with u, v held constant:
    ∂σ/∂W = u vᵀ, so dW = dw/σ − (Σ dw·W/σ)/σ · u vᵀ (never σ², which overflows in float32
    for σ beyond ~1e19)."""
    shape = tuple(wc.shape)
    w = wc / sigma

    def pullback(dw: Array) -> Array:
        dw = xp.astype(dw, wc.dtype, copy=False)
        c = xp.sum(dw * w) / sigma
        dweight = dw / sigma - c * _outer_in_layout(xp, u, v, shape, d)
        return xp.astype(dweight, dtype, copy=False)

    return xp.astype(w, dtype, copy=False), pullback


def _power_iteration_args(fname: str, weight: Array, u: Array | None, n_power_iterations: Any,
                          eps: Any, dim: Any) -> tuple[Any, int, float, int]:
    """Validated (xp, iterations, eps, unit axis) of the power-iteration functions."""
    xp = xp_namespace(fname, weight=weight, u=u)
    xp_check_floating(fname, "weight", weight, xp)
    n_it = xp_check_int(fname, "n_power_iterations", n_power_iterations, minimum=0,
                        strict_type=True)
    eps = xp_check_eps(fname, eps)
    d = _unit_axis(fname, dim, weight, "weight")
    if d is None:
        raise TypeError(f"{fname}: dim must be an int, got None")
    return xp, n_it, eps, d


def _spectral_norm(weight: Array, u: Array | None, n_power_iterations: int, eps: float,
                   dim: int):
    fname = "spectral_norm"
    xp, n_it, eps, d = _power_iteration_args(fname, weight, u, n_power_iterations, eps, dim)
    ct = xp_compute_dtype(xp, weight.dtype)
    if weight.ndim == 1:
        # PyTorch: a vector's spectral norm is its L2 norm, no power iteration, no u
        what, pb_unit = _per_unit(fname, xp, weight, None, LpScale(2.0), eps, ct)

        def pullback_vec(dy: tuple[Array, Any]) -> tuple[Array, None]:
            dw = dy[0]
            return (pb_unit(xp.astype(dw, ct, copy=False)) if dw is not None else xp.zeros_like(weight)), None

        return (xp.astype(what, weight.dtype, copy=False), u), pullback_vec
    if u is None:
        raise TypeError(
            f"{fname}: u must be an array of shape ({weight.shape[d]},) for a weight of rank "
            f"{weight.ndim}; create one with spectral_norm_init_u(weight, seed, dim={dim})"
        )
    xp_check_floating(fname, "u", u, xp)
    if tuple(u.shape) != (weight.shape[d],):
        raise ValueError(
            f"{fname}: u must have shape ({weight.shape[d]},) (weight.shape[dim], dim={d}), "
            f"got {tuple(u.shape)}"
        )
    if math.prod(weight.shape) == 0:
        # an empty weight (a layer with no inputs or no outputs): an empty result and u
        # unchanged, as PyTorch's parametrization returns the empty weight
        return (xp.asarray(weight, copy=True), u), lambda dy: (xp.zeros_like(weight), None)
    wc = xp.astype(weight, ct, copy=False)
    mat = _as_matrix(xp, wc, d)
    # only u's direction is state: a u off the unit sphere (a caller's own draw) would
    # otherwise scale σ̃ when n_power_iterations=0
    uc = _l2_normalize(xp, xp.astype(u, ct, copy=False), eps)
    for _ in range(n_it):
        vc = _l2_normalize(xp, xp.matmul(uc, mat), eps)
        uc = _l2_normalize(xp, xp.matmul(mat, vc), eps)
    # a last v from the final u, as parametrizations.spectral_norm ends each call with
    # v ← normalize(Wᵀu): then n_power_iterations=0 is its eval mode, σ = ‖Wᵀu‖
    vc = _l2_normalize(xp, xp.matmul(uc, mat), eps)
    sigma = xp.sum(uc * xp.matmul(mat, vc))
    w_sn, pb = _divide_by_sigma(xp, wc, sigma, uc, vc, d, weight.dtype)

    def pullback(dy: tuple[Array, Any]) -> tuple[Array, None]:
        dw = dy[0]
        return (pb(dw) if dw is not None else xp.zeros_like(weight)), None

    u_new = u if n_it == 0 else xp.astype(uc, u.dtype, copy=False)
    return (w_sn, u_new), pullback


def spectral_norm(weight: Array, u: Array | None, *, n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int = 0) -> tuple[Array, Array | None]:
    """Spectral normalization by power iteration: w_sn = weight / σ̃ (Miyato et al. 2018).

    The semantics of ``torch.nn.utils.parametrizations.spectral_norm``, written functionally:
    ``weight`` is seen as the matrix W of shape (weight.shape[dim], rest) (``dim`` moved
    first, the other axes flattened in order), and from the caller's persistent vector ``u``

        repeat n_power_iterations times:  v ← N(Wᵀu),  u ← N(W v)
        then  v ← N(Wᵀu),  σ̃ = uᵀ W v,  w_sn = weight / σ̃

    with N(x) = x / max(‖x‖₂, eps) (``u`` is normalized first: only its direction is state,
    PyTorch's buffer is always unit). Returns ``(w_sn, u_new)``; keep ``u_new`` for the next
    call (PyTorch's ``_u`` buffer). σ̃ = ‖Wᵀu‖ ≤ σ_max(W) and converges to it as
    (σ₂/σ₁)^(4k) for k iterations (u's direction as (σ₂/σ₁)^(2k)).

    Shapes: ``weight`` rank >= 1; ``u`` (weight.shape[dim],), see
    :func:`spectral_norm_init_u`. A 1-D ``weight`` is normalized exactly, weight / max(‖weight‖,
    eps), as PyTorch does; ``u`` is then unused (may be ``None``) and returned unchanged.
    ``u_new`` has ``u``'s dtype, ``w_sn`` the weight's; float16/bfloat16 compute in float32.
    An empty weight (a layer with no inputs or no outputs) gives an empty ``w_sn``, ``u``
    unchanged and a zero cotangent, as PyTorch's parametrization returns the empty weight.

    Backward, as PyTorch's autograd of the parametrization: u and v are constants (they
    come from buffers computed without gradient), so with ∂σ̃/∂W = u vᵀ,
    ``vjp(spectral_norm, weight, u)`` pulls ``(dw, None)`` back to
    ``(dw/σ̃ − (Σ dw·W/σ̃²)·u vᵀ, None)``.

    Differences from PyTorch: the state is ``u`` alone; PyTorch also keeps ``_v`` from the
    previous call (computed with the previous weights) and starts from it, while here the
    starting v is N(Wᵀu) with the current weights. The two coincide whenever PyTorch's
    ``_v`` equals N(Wᵀ_u) — after its construction, or with unchanged weights — and then
    ``u_new``, ``w_sn`` and the gradient agree exactly. ``n_power_iterations=0`` is allowed
    (PyTorch's eval mode: u is not updated). Differs from the older
    ``torch.nn.utils.spectral_norm``, which uses σ̃ = uᵀW v with the v of the last iteration.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> w = np.diag([3.0, 1.0])
    >>> u = an.spectral_norm_init_u(w, seed=0)
    >>> w_sn, u = an.spectral_norm(w, u, n_power_iterations=20)
    >>> np.round(np.diag(w_sn), 6)
    array([1.      , 0.333333])
    """
    return _spectral_norm(weight, u, n_power_iterations, eps, dim)[0]


@defvjp(spectral_norm)
def _spectral_norm_vjp(weight: Array, u: Array | None, *, n_power_iterations: int = 1,
                       eps: float = 1e-12, dim: int = 0) -> tuple[Any, Callable]:
    return _spectral_norm(weight, u, n_power_iterations, eps, dim)


def _no_exact_mode(fname: str, xp: Namespace, why: str) -> NotImplementedError:
    return NotImplementedError(
        f"{fname}: the {xp_backend_name(xp)} backend cannot compute the singular value "
        f"decomposition this needs ({why}); use spectral_norm (power iteration) or convert "
        f"the weight to another backend"
    )


def _top_singular(fname: str, xp: Namespace, mat: Array, vectors: bool):
    """σ_max of ``mat`` and, when ``vectors``, its singular vectors u₁, v₁."""
    linalg = getattr(xp, "linalg", None)
    if linalg is None or not hasattr(linalg, "svd"):
        raise _no_exact_mode(fname, xp, "it has no linalg.svd")
    try:
        if not vectors and hasattr(linalg, "svdvals"):
            try:
                return linalg.svdvals(mat)[0], None, None
            except (NotImplementedError, ValueError):
                pass  # e.g. Dask's svdvals wrapper; the full SVD may still work
        u, s, vh = linalg.svd(mat, full_matrices=False)
    except (NotImplementedError, ValueError) as e:
        # Dask's SVD exists only for matrices chunked along one dimension
        raise _no_exact_mode(fname, xp, str(e).splitlines()[0]) from e
    return s[0], u[:, 0], vh[0, :]


def _spectral_norm_exact(weight: Array, dim: int, vectors: bool):
    fname = "spectral_norm_exact"
    xp = xp_namespace(fname, weight=weight)
    xp_check_floating(fname, "weight", weight, xp)
    d = _unit_axis(fname, dim, weight, "weight")
    if d is None:
        raise TypeError(f"{fname}: dim must be an int, got None")
    ct = xp_compute_dtype(xp, weight.dtype)
    if math.prod(weight.shape) == 0:  # σ of an empty matrix is 0 and w/0 is empty: say so
        empty = xp.asarray(weight, copy=True)
        return empty, (lambda dw: (xp.zeros_like(weight),)) if vectors else None
    wc = xp.astype(weight, ct, copy=False)
    sigma, u1, v1 = _top_singular(fname, xp, _as_matrix(xp, wc, d), vectors)
    if not vectors:
        return xp.astype(wc / sigma, weight.dtype, copy=False), None
    w_sn, pb = _divide_by_sigma(xp, wc, sigma, u1, v1, d, weight.dtype)
    return w_sn, lambda dw: (pb(dw),)


def spectral_norm_exact(weight: Array, *, dim: int = 0) -> Array:
    """Exact spectral normalization: w = weight / σ_max(W), σ_max from a singular value decomposition.

    W is ``weight`` as the (weight.shape[dim], rest) matrix of :func:`spectral_norm`; σ_max
    comes from ``xp.linalg.svdvals`` (forward) or ``xp.linalg.svd`` (with ``vjp``), computed
    in float32 at least. A 1-D weight is the (n, 1) matrix, so σ_max = ‖weight‖₂.

    Backward: ∂σ_max/∂W = u₁ v₁ᵀ (the top singular pair; its sign ambiguity cancels), so
    ``vjp(spectral_norm_exact, weight)`` pulls dw back to ``(dw/σ − (Σ dw·W/σ²)·u₁v₁ᵀ,)``.
    Where σ₁ = σ₂ the derivative does not exist and the one returned belongs to whichever
    pair the SVD routine reports.

    An empty weight gives an empty result (σ_max of an empty matrix is 0).

    Backends: needs the linalg extension. Dask's SVD handles only matrices chunked along one
    dimension (tall-and-skinny / short-and-fat); otherwise — and on any backend without an
    SVD — this raises ``NotImplementedError`` naming the backend. PyTorch has no equivalent
    (its spectral norm is power iteration only).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> w_sn = an.spectral_norm_exact(np.array([[3.0, 0.0], [0.0, -6.0]]))
    >>> float(np.linalg.norm(w_sn, 2))
    1.0
    """
    return _spectral_norm_exact(weight, dim, False)[0]


@defvjp(spectral_norm_exact)
def _spectral_norm_exact_vjp(weight: Array, *, dim: int = 0) -> tuple[Array, Callable]:
    return _spectral_norm_exact(weight, dim, True)


def spectral_norm_init_u(weight: Array, seed: int | np.random.Generator, *, dim: int = 0,
                         eps: float = 1e-12, n_power_iterations: int = 0) -> Array:
    """A starting vector u for :func:`spectral_norm`: N(z), z ~ Normal(0, 1)^(weight.shape[dim]).

    As PyTorch's ``normal_(0, 1)`` followed by ``F.normalize(·, eps)``, but drawn from NumPy's
    generator so that it is reproducible on every backend: ``seed`` is an int or a
    ``numpy.random.Generator`` (required — the array API has no random numbers). The vector
    is moved to ``weight``'s namespace, device and dtype.

    ``n_power_iterations`` warm-up iterations are then run on ``weight`` (PyTorch's
    parametrization runs 15 at construction; pass 15 to match it). Shape: (weight.shape[dim],).
    """
    fname = "spectral_norm_init_u"
    xp, n_it, eps, d = _power_iteration_args(fname, weight, None, n_power_iterations, eps, dim)
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.random.Generator)):
        raise TypeError(
            f"{fname}: seed must be an int or a numpy.random.Generator, got {type(seed).__name__}"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
    z = rng.standard_normal(weight.shape[d])
    z = z / max(float(np.linalg.norm(z)), eps)
    u = xp.asarray(z, device=xp_device(weight))
    u = xp.astype(u, weight.dtype, copy=False)
    if n_it and weight.ndim > 1:
        u = spectral_norm(weight, u, n_power_iterations=n_it, eps=eps, dim=d)[1]
    return u
