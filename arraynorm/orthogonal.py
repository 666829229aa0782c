"""Orthogonalization of weights (the survey's weight-normalization family, §3.4): OWN and ONI.

Both reparameterize a proxy weight V (out, in) — a convolution's (out, in, *k) is flattened
to (out, in·∏k) and the result reshaped back — into W with orthonormal rows, W Wᵀ ≈ I:

* OWN (Huang et al. 2018):  W = (V_c V_cᵀ + eps·I)^{-1/2} V_c, by eigendecomposition;
* ONI (Huang et al. 2020):  W = p_T(S_N) V_c / sqrt(tr S), S = V_c V_cᵀ + eps·I, by T Newton
  iterations (matmul only).

V_c is V with each row centred (mean over the inputs), as both papers do. They are the
whitening machinery of :mod:`arraynorm.whitening` applied to the *rows of the weight*
(rows = output units as features, inputs as samples, no 1/m), and share its exact backward
passes (:mod:`arraynorm._linalg`): ``vjp(oni, v)`` returns ``(dv,)``.

Centring removes one dimension: the rows of V_c lie in the (in − 1)-dimensional space
orthogonal to the all-ones vector, so orthonormal rows need out <= in − 1 (out <= in with
``center=False``, where OWN is the orthogonal polar factor of V). Larger ``out`` raises
``ValueError`` rather than returning a W with a zero singular value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from . import _linalg
from ._array_api import (xp_check_bool, xp_check_eps, xp_check_floating, xp_check_int,
                         xp_compute_dtype, xp_namespace)
from ._typing import Array, Pullback
from ._vjp import defvjp

__all__ = ["orthogonal_weight_norm", "oni"]


def _orthogonalize(fname: str, v: Array, eps: float, center: bool,
                   matrix: Callable[..., Any], routines: tuple[str, ...],
                   what: str) -> tuple[Array, Callable[[Array], tuple[Array]]]:
    xp = xp_namespace(fname, v=v)
    xp_check_floating(fname, "v", v, xp)
    eps = xp_check_eps(fname, eps)
    xp_check_bool(fname, "center", center)
    if v.ndim < 2:
        raise ValueError(
            f"{fname}: v must have at least 2 dimensions (out, in, *kernel), got shape "
            f"{tuple(v.shape)}"
        )
    out, fan_in = v.shape[0], math.prod(v.shape[1:])
    rank = fan_in - 1 if center else fan_in
    if out > rank:
        why = " (centring each row leaves in − 1 dimensions)" if center else ""
        raise ValueError(
            f"{fname}: orthonormal rows need out <= {'in − 1' if center else 'in'}{why}, got "
            f"v of shape {tuple(v.shape)}: {out} rows of length {fan_in}"
        )
    if routines:
        _linalg.require_linalg(fname, xp, what, routines, instead="ONI (oni)")
    ct = xp_compute_dtype(xp, v.dtype)
    x = xp.reshape(xp.astype(v, ct, copy=False), (out, fan_in))
    rw = _linalg.whiten_rows(xp, x, matrix, scale=1.0, eps=eps, center=center)
    w = xp.reshape(rw.output(), tuple(v.shape))
    w = xp.astype(w, v.dtype, copy=False)

    def pullback(dw: Array) -> tuple[Array]:
        g = xp.reshape(xp.astype(dw, ct, copy=False), (out, fan_in))
        dv = xp.reshape(rw.pullback(g), tuple(v.shape))
        return (xp.astype(dv, v.dtype, copy=False),)

    return w, pullback


def _own(v: Array, eps: float, center: bool) -> tuple[Array, Callable[[Array], tuple[Array]]]:
    return _orthogonalize("orthogonal_weight_norm", v, eps, center,
                          _linalg.inv_sqrt_eigh, ("eigh",),
                          "orthogonal weight normalization")


def _oni(v: Array, T: int, eps: float, center: bool) -> tuple[Array, Callable[[Array], tuple[Array]]]:
    T = xp_check_int("oni", "T", T)
    return _orthogonalize("oni", v, eps, center,
                          lambda xp, s, floor: _linalg.newton_inv_sqrt(xp, s, T), (), "ONI")


def orthogonal_weight_norm(v: Array, *, eps: float = 1e-5, center: bool = True) -> Array:
    """Orthogonal weight normalization (OWN, Huang et al. 2018): W = (V_c V_cᵀ + eps·I)^{-1/2} V_c.

    V_c is ``v`` with each row centred (``center=True``, the paper's choice) and the Gram
    matrix V_c V_cᵀ is *not* divided by anything, so ``eps`` (default 1e-5) is absolute:
    it is negligible next to squared row norms of order one and keeps the inverse square
    root finite for rank-deficient V; pass ``eps=0`` for the paper's exact W. Rows of W are
    orthonormal up to eps: W Wᵀ = G (G + eps·I)^{-1} with G = V_c V_cᵀ.

    Shapes: ``v`` (out, in) or (out, in, *kernel), flattened to (out, in·∏kernel); requires
    out <= in·∏kernel − 1 (out <= in·∏kernel without centring). The result has ``v``'s shape
    and dtype (computed in float32 at least). ``vjp(orthogonal_weight_norm, v)`` gives
    ``(dv,)``, the backward through the eigendecomposition (exact for repeated eigenvalues,
    see :func:`arraynorm._linalg.inv_sqrt_eigh`). Needs ``xp.linalg.eigh``: Dask raises
    ``NotImplementedError`` (use :func:`oni`). PyTorch has no equivalent
    (``torch.nn.utils.parametrizations.orthogonal`` uses the matrix exponential / Cayley map).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> w = an.orthogonal_weight_norm(np.random.default_rng(0).standard_normal((3, 8)), eps=0.0)
    >>> bool(np.allclose(w @ w.T, np.eye(3)))
    True
    """
    return _own(v, eps, center)[0]


@defvjp(orthogonal_weight_norm)
def _own_vjp(v: Array, *, eps: float = 1e-5, center: bool = True) -> tuple[Array, Pullback]:
    return _own(v, eps, center)


def oni(v: Array, *, T: int = 5, eps: float = 1e-5, center: bool = True) -> Array:
    """Orthogonalization by Newton's iteration (ONI, Huang et al. 2020).

    Z = V_c (rows centred), S = Z Zᵀ + eps·I, S_N = S / tr(S), B_0 = I,
    B_{k+1} = 1.5 B_k − 0.5 B_k³ S_N, and W = B_T Z / sqrt(tr S).

    With eps = 0 this is the paper's Algorithm 1 exactly (V = Z/‖Z‖_F, S = V Vᵀ, W = B_T V,
    since tr(Z Zᵀ) = ‖Z‖_F²); eps (default 1e-5, as the reference code) keeps W finite for
    an all-constant V. Normalizing by the trace puts S_N's eigenvalues in (0, 1], where the
    iteration converges: W Wᵀ has eigenvalues p_T(λ)²(λ − eps/tr S) for the eigenvalues λ
    of S_N (p_0 = 1, p_{k+1} = 1.5 p_k − 0.5 p_k³ λ), approaching 1 as T grows; T controls
    the degree of orthogonality, which the paper uses deliberately (default T = 5). Keep T
    small: past convergence the iteration amplifies rounding errors (see
    :func:`arraynorm._linalg.newton_inv_sqrt`); use :func:`orthogonal_weight_norm` for
    exactly orthonormal rows.

    Shapes and ``center`` as :func:`orthogonal_weight_norm`. Only matmuls: runs on every
    backend, Dask (lazily) included. ``vjp(oni, v)`` gives ``(dv,)`` through the unrolled
    iterations.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> v = np.random.default_rng(0).standard_normal((4, 3, 3, 3))   # a conv weight
    >>> w, pullback = an.vjp(an.oni, v, T=7)
    >>> wm = w.reshape(4, -1)
    >>> bool(np.abs(wm @ wm.T - np.eye(4)).max() < 1e-3)
    True
    >>> pullback(np.ones_like(w))[0].shape
    (4, 3, 3, 3)
    """
    return _oni(v, T, eps, center)[0]


@defvjp(oni)
def _oni_vjp(v: Array, *, T: int = 5, eps: float = 1e-5,
             center: bool = True) -> tuple[Array, Pullback]:
    return _oni(v, T, eps, center)
