"""Symmetric-matrix functions with their exact backward passes, shared by whitening and
orthogonalization.

Every function here takes a stack of symmetric positive-definite matrices ``S`` of shape
(..., d, d) (and the eps that was added to it, a lower bound on its eigenvalues) and returns
``(W, pullback)``: a whitening matrix (W S Wᵀ = I, or a polynomial
approximation of it) and the vector–Jacobian product ``pullback(gW) -> gS``. ``gS`` is
returned *symmetric*, the unique symmetric matrix with ⟨gS, E⟩ = ⟨gW, dW[E]⟩ for every
symmetric perturbation E (S only ever varies in symmetric directions, so the gradient is
defined up to an antisymmetric part, and the symmetric representative is the one that
composes with ``S = X Xᵀ``).

The pullback is a :class:`Linearization`: calling it is the VJP, and its ``jvp(dS) -> dW``
is the forward-mode product at the same S, for a symmetric direction dS, reusing the
factorization (the transpose of the VJP: ⟨gW, jvp(dS)⟩ = ⟨pullback(gW), dS⟩).

:func:`whiten_rows` composes one of them with centring and the covariance, so that both the
whitening operations (rows = features, columns = samples) and the weight orthogonalizations
(rows = output units, columns = inputs) share one forward and one backward.

Only standard array-API functions are used (``matmul``, ``matrix_transpose``, ``eye``,
``tril``, ``linalg.eigh``, ``linalg.cholesky``, ``linalg.inv``), batched over leading axes;
nothing looks at array values, so Dask stays lazy (where the backend has the routine) and
CuPy never synchronizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import is_numpy_array

from ._array_api import xp_backend_name, xp_capabilities, xp_device
from ._statistics import centre, mean, pow2_scale
from ._typing import Array, Namespace

__all__ = [
    "Linearization",
    "require_linalg",
    "inv_sqrt_eigh",
    "pca_whitening_matrix",
    "cholesky_whitening_matrix",
    "newton_inv_sqrt",
    "RowWhitening",
    "whiten_rows",
]

Pullback = Callable[[Array], Array]


@dataclass(frozen=True)
class Linearization:
    """The derivative of a matrix function W(S) at one S, both ways: ``vjp(gW) -> gS`` (also
    what calling the object does, so it serves wherever a pullback is expected) and
    ``jvp(dS) -> dW`` for a symmetric direction dS."""

    vjp: Pullback
    jvp: Pullback

    def __call__(self, gw: Array) -> Array:
        return self.vjp(gw)


def require_linalg(fname: str, xp: Namespace, what: str, routines: tuple[str, ...], *,
                   instead: str = "IterNorm whitening (iter_norm, IterNormWhiten)") -> None:
    """Raise ``NotImplementedError`` when ``xp`` lacks the batched ``xp.linalg`` routines
    ``what`` needs, naming the matmul-only alternative ``instead``. Decided from the
    capability table (:func:`arraynorm._array_api.xp_capabilities`: Dask's linalg, for
    one in-memory chunk only, offers none), never by trying."""
    backend = xp_backend_name(xp)
    if not set(routines) <= xp_capabilities(xp).linalg:
        names = ", ".join(f"xp.linalg.{r}" for r in routines)
        raise NotImplementedError(
            f"{fname}: {what} needs batched {names}, which the {backend} backend does not "
            f"provide; {instead} needs only matmul and runs on {backend}"
        )


def _eye(xp: Namespace, a: Array) -> Array:
    """Identity of ``a``'s trailing matrix size, dtype and device."""
    return xp.eye(a.shape[-1], dtype=a.dtype, device=xp_device(a))


def _t(xp: Namespace, a: Array) -> Array:
    return xp.matrix_transpose(a)


def _sym(xp: Namespace, a: Array) -> Array:
    return 0.5 * (a + _t(xp, a))


def _diag_part(xp: Namespace, a: Array, eye: Array) -> Array:
    """Diagonal of each matrix as a vector (..., d); ``linalg.diagonal`` is an extension."""
    return xp.sum(a * eye, axis=-1)


def _conjugate(xp: Namespace, u: Array, m: Array) -> Array:
    """U M Uᵀ."""
    return xp.matmul(xp.matmul(u, m), _t(xp, u))


# --------------------------------------------------------------------------------------
# ZCA: S^{-1/2} by eigendecomposition
# --------------------------------------------------------------------------------------

def _floor(xp: Namespace, lam: Array, floor: Any) -> Array:
    """``floor`` (a Python float or an array broadcasting against the eigenvalues) as an array."""
    if hasattr(floor, "shape"):
        return xp.astype(floor, lam.dtype, copy=False)
    return xp.asarray(floor, dtype=lam.dtype, device=xp_device(lam))


def inv_sqrt_eigh(xp: Namespace, s: Array, floor: Any = 0.0) -> tuple[Array, Linearization]:
    """W = S^{-1/2} = U Λ^{-1/2} Uᵀ from ``S = U Λ Uᵀ`` (ZCA whitening matrix).

    Eigenvalues are clamped below at ``floor`` (pass the eps that was added to S, a float or
    an array of shape (..., 1): the exact eigenvalues are then >= floor, and the clamp only removes rounding that would make a
    float32 eigenvalue of a rank-deficient covariance negative and W NaN). The clamp is the
    identity in exact arithmetic, and the backward pass treats it so.

    Backward (Daleckii–Krein): for f(λ) = λ^{-1/2},

        gS = U (K ∘ (Uᵀ sym(gW) U)) Uᵀ,   K_ij = (f(λ_i) − f(λ_j)) / (λ_i − λ_j),

    and K_ii = f'(λ_i). With s = √λ the divided difference factorizes exactly,

        K_ij = −1 / (s_i s_j (s_i + s_j)),

    which needs no guard for near-equal eigenvalues: it has no cancellation, and at
    λ_i = λ_j it *is* f'(λ) = −λ^{-3/2}/2. This is the "replace the divided difference by
    f'(λ) when |λ_i − λ_j| is tiny" rule, applied continuously and without a threshold,
    so the gradient is exact (to rounding) for repeated eigenvalues too; S^{-1/2} is a
    smooth function of S there, unlike its eigenvectors.
    """
    lam, u = xp.linalg.eigh(s)
    lam = xp.maximum(lam, _floor(xp, lam, floor))
    r = xp.sqrt(lam)
    w = xp.matmul(u / r[..., None, :], _t(xp, u))

    def frechet(e: Array) -> Array:
        # the Fréchet derivative of S^{-1/2} in direction E, U (K ∘ Uᵀ E U) Uᵀ: a self-adjoint
        # map of E (K is symmetric), so the JVP (E = dS) and the VJP (E = sym(gW)) are one formula
        k = -1.0 / (r[..., :, None] * r[..., None, :] * (r[..., :, None] + r[..., None, :]))
        return _conjugate(xp, u, k * _conjugate(xp, _t(xp, u), e))

    return w, Linearization(lambda gw: frechet(_sym(xp, gw)), frechet)


# --------------------------------------------------------------------------------------
# PCA: Λ^{-1/2} Uᵀ, through the eigenvectors themselves
# --------------------------------------------------------------------------------------

def _eigh_vjp(xp: Namespace, lam: Array, u: Array, glam: Array, gu: Array, eye: Array) -> Array:
    """Symmetric gS for ``(λ, U) = eigh(S)`` given gλ (..., d) and gU (..., d, d).

        gS = sym(U (diag(gλ) + F ∘ (Uᵀ gU)) Uᵀ),   F_ij = 1 / (λ_j − λ_i),  F_ii = 0.

    Guard: F_ij is set to 0 where |λ_j − λ_i| <= d · ε_dtype · max|λ|, i.e. where the two
    eigenvalues are equal to working precision. There the eigenvectors are not determined
    by S (any rotation inside the eigenspace is as valid) and the true derivative does not
    exist; zeroing the term drops the rotation-within-the-eigenspace component of the
    gradient, as DBN implementations do (Chainer's sets 1/(λ_i − λ_j) to 0 for equal λ).
    The consequence: the gradient is finite, but for an output that depends on the basis
    of a degenerate eigenspace (PCA whitening) it is not the derivative of anything, and
    for eigenvalues close but above the threshold the exact 1/(λ_j − λ_i) terms are large —
    the instability of PCA whitening that Huang et al. (2018, §3) report and that made DBN
    choose ZCA.
    """
    inner = glam[..., None, :] * eye + _eigen_gaps(xp, lam) * xp.matmul(_t(xp, u), gu)
    return _sym(xp, _conjugate(xp, u, inner))


def _eigen_gaps(xp: Namespace, lam: Array) -> Array:
    """F_ij = 1/(λ_j − λ_i), zero on the diagonal and where the two eigenvalues are equal to
    working precision (the guard :func:`_eigh_vjp` describes)."""
    d = lam.shape[-1]
    tol = d * float(xp.finfo(lam.dtype).eps)
    diff = lam[..., None, :] - lam[..., :, None]  # λ_j − λ_i
    scale = xp.max(xp.abs(lam), axis=-1, keepdims=True)[..., None]
    tiny = xp.abs(diff) <= tol * scale
    return xp.where(tiny, xp.zeros_like(diff), 1.0 / xp.where(tiny, xp.ones_like(diff), diff))


def _eigh_jvp(xp: Namespace, lam: Array, u: Array, ds: Array, eye: Array) -> tuple[Array, Array]:
    """(dλ, dU) of ``(λ, U) = eigh(S)`` in a symmetric direction dS, the transpose of
    :func:`_eigh_vjp` with the same guard: with M = Uᵀ dS U,

        dλ_i = M_ii,   dU = U (F ∘ M),   F_ij = 1/(λ_j − λ_i) (0 for i = j).
    """
    m = _conjugate(xp, _t(xp, u), ds)
    return _diag_part(xp, m, eye), xp.matmul(u, _eigen_gaps(xp, lam) * m)


def pca_whitening_matrix(xp: Namespace, s: Array, floor: Any = 0.0) -> tuple[Array, Linearization]:
    """W = Λ^{-1/2} Uᵀ (PCA whitening matrix), eigenvalues in *descending* order.

    Eigenvectors are only defined up to sign; to make W the same on every backend (and
    running averages of W meaningful) each eigenvector is signed so that its entry of
    largest magnitude is positive (scikit-learn's ``svd_flip`` convention; a tie between
    +a and −a keeps the backend's sign). The order of eigenvectors with equal eigenvalues
    remains arbitrary. ``floor`` clamps the eigenvalues as in :func:`inv_sqrt_eigh`.

    Backward, with r = λ^{-1/2} and W_ij = r_i U_ji:
    gU = gWᵀ diag(r), gλ_i = −½ r_i³ (gW U)_ii, then the guarded eigh VJP
    (:func:`_eigh_vjp`, whose docstring states what the guard costs).
    """
    lam, u = xp.linalg.eigh(s)
    lam, u = xp.flip(lam, axis=-1), xp.flip(u, axis=-1)
    sign = xp.sign(xp.max(u, axis=-2, keepdims=True) + xp.min(u, axis=-2, keepdims=True))
    u = u * xp.where(sign == 0, xp.ones_like(sign), sign)
    lam = xp.maximum(lam, _floor(xp, lam, floor))
    r = 1.0 / xp.sqrt(lam)
    w = r[..., :, None] * _t(xp, u)

    def pullback(gw: Array) -> Array:
        eye = _eye(xp, gw)
        gu = _t(xp, gw) * r[..., None, :]
        glam = -0.5 * r ** 3 * _diag_part(xp, xp.matmul(gw, u), eye)
        return _eigh_vjp(xp, lam, u, glam, gu, eye)

    def jvp(ds: Array) -> Array:
        # dW = diag(dr) Uᵀ + diag(r) dUᵀ with dr = −½ r³ dλ
        dlam, du = _eigh_jvp(xp, lam, u, ds, _eye(xp, ds))
        return (-0.5 * r ** 3 * dlam)[..., :, None] * _t(xp, u) + r[..., :, None] * _t(xp, du)

    return w, Linearization(pullback, jvp)


# --------------------------------------------------------------------------------------
# Cholesky: L^{-1} with S = L Lᵀ
# --------------------------------------------------------------------------------------

def _inv_vjp(xp: Namespace, w: Array, gw: Array) -> Array:
    """gA for W = A^{-1}:  gA = −Wᵀ gW Wᵀ."""
    wt = _t(xp, w)
    return -xp.matmul(xp.matmul(wt, gw), wt)


def _cholesky_vjp(xp: Namespace, l: Array, linv: Array, gl: Array) -> Array:
    """Symmetric gS for L = cholesky(S) (Murray 2016; PyTorch's ``cholesky_backward``):

        P = tril(Lᵀ gL),   Φ = ½ (P + tril(P, −1)ᵀ),   gS = L^{-T} Φ L^{-1}.

    Only the lower triangle of gL matters (L varies only there), and tril(Lᵀ gL) already
    ignores the strict upper triangle of gL. ``linv`` = L^{-1} replaces the two triangular
    solves, which the array API standard does not have.
    """
    p = xp.tril(xp.matmul(_t(xp, l), gl))
    phi = 0.5 * (p + _t(xp, xp.tril(p, k=-1)))
    return xp.matmul(xp.matmul(_t(xp, linv), phi), linv)


def cholesky_whitening_matrix(xp: Namespace, s: Array, floor: Any = 0.0) -> tuple[Array, Linearization]:
    """W = L^{-1}, S = L Lᵀ (Cholesky whitening; W is lower triangular, so output feature
    k depends on input features 1..k only).

    The inverse of the triangular factor comes from ``xp.linalg.inv`` (the standard has no
    triangular solve; LU with partial pivoting is backward stable for this matrix).
    Backward: the inverse's VJP gL = −Wᵀ gW Wᵀ composed with :func:`_cholesky_vjp`.
    Forward mode: dL = L Φ(L^{-1} dS L^{-T}), Φ(A) = the lower triangle of A with its
    diagonal halved, so dW = −W dL W = −Φ(W dS Wᵀ) W.
    S must be numerically positive definite: with eps too small for ‖S‖ in float32 the
    backend's Cholesky raises (NumPy, PyTorch) or returns NaN (CuPy). ``floor`` is unused
    (the eps is already in S).
    """
    l = xp.linalg.cholesky(s)
    w = xp.linalg.inv(l)

    def pullback(gw: Array) -> Array:
        return _cholesky_vjp(xp, l, w, _inv_vjp(xp, w, gw))

    def jvp(ds: Array) -> Array:
        a = _conjugate(xp, w, ds)
        phi = 0.5 * (xp.tril(a) + xp.tril(a, k=-1))
        return -xp.matmul(phi, w)

    return w, Linearization(pullback, jvp)


# --------------------------------------------------------------------------------------
# Newton–Schulz iterations (IterNorm, ONI): matmul only
# --------------------------------------------------------------------------------------

def newton_inv_sqrt(xp: Namespace, s: Array, T: int, floor: Any = 0.0) -> tuple[Array, Linearization]:
    """W = P_T / sqrt(tr S), the Newton iteration for S^{-1/2} (Huang et al. 2019, IterNorm):

        S_N = S / tr(S),   P_0 = I,   P_{k+1} = 1.5 P_k − 0.5 P_k³ S_N.

    Each P_k is the polynomial p_k(S_N) with p_0 = 1, p_{k+1}(λ) = 1.5 p_k − 0.5 p_k³ λ,
    which converges to λ^{-1/2} for the eigenvalues of S_N in (0, 1] (the trace scaling puts
    them there); after T steps W S Wᵀ has eigenvalues λ p_T(λ)², not exactly 1.

    Keep T small (the papers use 5; a handful more at most). This uncoupled form is not
    numerically stable once converged: at the fixed point a rounding error E_ij in the
    eigenbasis is multiplied each step by 1 − (r + r²)/2 with r = sqrt(λ_j/λ_i), which
    exceeds 1 in magnitude for any condition number above about 2.4, so past convergence
    errors grow geometrically (for a 3 × 8 ONI example in float64, ‖W Wᵀ − I‖ is 1e-13 at
    T = 10, 2e-4 at T = 25 and 0.2 at T = 30). Use ZCA (eigh) for exact whitening.

    Backward: the iterations unrolled, each a product of matrices. With G = ∂L/∂P_{k+1} and
    M = −½G, the term −½ P P P S_N contributes

        ∂P_k += M (P² S_N)ᵀ + Pᵀ M (P S_N)ᵀ + (P²)ᵀ M S_Nᵀ,   ∂S_N += (P³)ᵀ M,

    and ∂P_k += 1.5 G; no symmetry or commutation of the computed P_k is assumed, so the
    VJP is that of the floating-point recurrence as run. Then through S_N = S/tr and
    W = P_T tr^{-1/2}, with ∂tr/∂S = I. ``floor`` is unused (the eps is already in S).
    """
    eye = _eye(xp, s)
    tr = xp.sum(s * eye, axis=(-2, -1), keepdims=True)
    sn = s / tr
    p = eye
    powers = []  # (P_k, P_k², P_k³) of each step, reused by the backward pass
    for _ in range(T):
        p2 = xp.matmul(p, p)
        p3 = xp.matmul(p2, p)
        powers.append((p, p2, p3))
        p = 1.5 * p - 0.5 * xp.matmul(p3, sn)
    rt = xp.sqrt(tr)
    w = p / rt

    def pullback(gw: Array) -> Array:
        g = gw / rt
        gtr = -0.5 * xp.sum(gw * p, axis=(-2, -1), keepdims=True) / (tr * rt)
        gsn = xp.zeros_like(sn)
        snt = _t(xp, sn)
        for pk, p2, p3 in reversed(powers):
            m = -0.5 * g
            gsn = gsn + xp.matmul(_t(xp, p3), m)
            g = (1.5 * g
                 + xp.matmul(m, _t(xp, xp.matmul(p2, sn)))
                 + xp.matmul(xp.matmul(_t(xp, pk), m), _t(xp, xp.matmul(pk, sn)))
                 + xp.matmul(xp.matmul(_t(xp, p2), m), snt))
        gtr = gtr - xp.sum(gsn * s, axis=(-2, -1), keepdims=True) / (tr * tr)
        return _sym(xp, gsn / tr + gtr * eye)

    def jvp(ds: Array) -> Array:
        # the recurrence differentiated forward, step by step, with the kept powers:
        # dP_{k+1} = 1.5 dP_k − 0.5 (d(P_k³) S_N + P_k³ dS_N), d(P²) = dP P + P dP,
        # d(P³) = d(P²) P + P² dP; dP_0 = 0, so the first step is −0.5 dS_N
        dtr = xp.sum(ds * eye, axis=(-2, -1), keepdims=True)
        dsn = ds / tr - sn * (dtr / tr)
        dp = None
        for pk, p2, p3 in powers:
            if dp is None:
                dp = -0.5 * xp.matmul(p3, dsn)
                continue
            dp2 = xp.matmul(dp, pk) + xp.matmul(pk, dp)
            dp3 = xp.matmul(dp2, pk) + xp.matmul(p2, dp)
            dp = 1.5 * dp - 0.5 * (xp.matmul(dp3, sn) + xp.matmul(p3, dsn))
        return dp / rt - (0.5 * dtr / tr) * w

    return w, Linearization(pullback, jvp)


# --------------------------------------------------------------------------------------
# centring ∘ covariance ∘ whitening matrix ∘ product
# --------------------------------------------------------------------------------------

def _column_blocks(z: Array) -> bool:
    """A NumPy stack whose (d, m) matrices are column-major: the (G, d, N) view of an (N, C)
    batch, whose products are best formed in that order (:func:`_products_in_order_of`)."""
    return bool(is_numpy_array(z) and z.ndim >= 2 and z.strides[-2] == z.itemsize != z.strides[-1])


def _products_in_order_of(z: np.ndarray, terms: tuple[tuple[np.ndarray, np.ndarray], ...]) -> np.ndarray:
    """Σ M X over ``terms`` ((M, X): M (..., d, d), X (..., d, m)) as a new array in the
    memory order of ``z`` (column-major blocks): each as (Σ M X)ᵀ = Σ Xᵀ Mᵀ, whose row-major
    blocks BLAS writes directly; a C-ordered result had to be transposed back after (8192×512
    float32, W_Z Z: 6.5 ms for the product and the output in place of 29.5 ms). For an (N, C)
    batch the result is in the batch's own order: dx comes back C-ordered, not as a
    transposed view a caller's reshape would copy."""
    out = np.empty_like(z, dtype=np.result_type(*(a for t in terms for a in t)))
    tr = np.swapaxes(out, -1, -2)
    for i, (m, x) in enumerate(terms):
        prod = np.matmul(np.swapaxes(x, -1, -2), np.swapaxes(m, -1, -2), out=tr if i == 0 else None)
        if i:
            np.add(tr, prod, out=tr)
    return out


@dataclass
class RowWhitening:
    """Whitening of the rows of each matrix in a stack, Y = W(S) X_c, with

        X_c = X − mean over the last axis (if centred),
        S = scale · X_c X_cᵀ + eps · I,     W = matrix(S).

    Built by :func:`whiten_rows`. ``x`` is (..., d, m): d rows to decorrelate, m columns
    (samples, or a weight's inputs). ``mean`` is (..., d, 1) (``None`` when not centring),
    ``w`` (..., d, d). :meth:`output` forms Y (callers that only want the statistics skip
    that product); :meth:`pullback` maps gY to gX and :meth:`jvp` tX to dY.

    Computed scaled: Z = X_c / c with c a power of two near max|X_c| per matrix, so Z Zᵀ
    neither overflows nor underflows (float32 values of 1e20 have squares past 3.4e38), and
    W_Z = matrix(scale·Z Zᵀ + (eps/c²)·I). Every whitening matrix here is homogeneous of
    degree −1 (S → c²S gives W → W/c), so W = W_Z / c and Y = W_Z Z exactly; the
    decomposition and its backward see O(1) numbers.

    Backward: gW_Z = gY Zᵀ and gZ = W_Zᵀ gY directly; gS_Z = the matrix function's
    pullback(gW_Z); through S_Z = scale·Z Zᵀ, gZ += scale (gS_Z + gS_Zᵀ) Z; gX_c = gZ / c
    (c is a piecewise-constant function of X, and Y does not depend on it); through centring,
    gX = gX_c − mean(gX_c) over the last axis. Centring and covariance are part of the graph,
    so the gradient is that of the whole map X -> Y, not of Y = W X_c with W fixed.
    """

    xp: Namespace
    z: Array
    mean: Array | None
    wz: Array
    matrix_pullback: Linearization
    scale: float
    c: Array

    @property
    def w(self) -> Array:
        """The whitening matrix of the unscaled covariance, W = W_Z / c."""
        return self.wz * (1.0 / self.c)

    def output(self) -> Array:
        z = self.z
        if _column_blocks(z):
            return _products_in_order_of(z, ((self.wz, z),))
        return self.xp.matmul(self.wz, z)

    def pullback(self, gy: Array) -> Array:
        xp, z = self.xp, self.z
        gs = self.matrix_pullback(xp.matmul(gy, _t(xp, z)))
        if _column_blocks(z):
            # the 1/m scale on the d × d matrix: no input-sized product is scaled
            gz = _products_in_order_of(z, ((_t(xp, self.wz), gy), (self.scale * (gs + _t(xp, gs)), z)))
        else:
            gz = xp.matmul(_t(xp, self.wz), gy) + self.scale * xp.matmul(gs + _t(xp, gs), z)
        if is_numpy_array(gz):
            # the same operations in place on gz, a new array (a whitening's (d, m) blocks
            # are the size of the input: each pass saved is one input-sized allocation)
            gxc = np.multiply(gz, 1.0 / self.c, out=gz)
            if self.mean is not None:
                np.subtract(gxc, mean(xp, gxc, (gxc.ndim - 1,)), out=gxc)
            return gxc
        gxc = gz * (1.0 / self.c)
        if self.mean is not None:
            gxc = gxc - mean(xp, gxc, (gxc.ndim - 1,))
        return gxc

    def jvp(self, tx: Array) -> Array:
        """The forward-mode product of X -> Y along tX (the transpose of :meth:`pullback`):

            dX_c = tX − mean(tX),   dZ = dX_c / c,   dS_Z = scale (dZ Zᵀ + Z dZᵀ),
            dW_Z = the matrix function's ``jvp(dS_Z)``,   dY = dW_Z Z + W_Z dZ
        (c is piecewise constant in X, so it has no tangent).
        """
        xp, z = self.xp, self.z
        if self.mean is not None:
            tx = tx - mean(xp, tx, (tx.ndim - 1,))
        tz = tx * (1.0 / self.c)
        a = xp.matmul(tz, _t(xp, z))
        dw = self.matrix_pullback.jvp(self.scale * (a + _t(xp, a)))
        if _column_blocks(z) and _column_blocks(tz):
            return _products_in_order_of(z, ((dw, z), (self.wz, tz)))
        return xp.matmul(dw, z) + xp.matmul(self.wz, tz)


def _scale_floor(eps: float) -> float:
    """Smallest scale c for a covariance with eps: eps/c² <= 2^18 stays finite (and the scaled
    problem is the same problem: W = W_Z/c holds for any c), 0 when eps = 0."""
    if eps <= 0.0:
        return 0.0
    return 2.0 ** (math.floor(math.log2(math.sqrt(eps))) - 8)


def whiten_rows(xp: Namespace, x: Array, matrix: Callable[[Any, Array, Array], tuple[Array, Linearization]],
                *, scale: float, eps: float, center: bool = True) -> RowWhitening:
    """Centre the rows of ``x`` (..., d, m) (shifted, :func:`arraynorm.operation.centre`, so
    an offset of 10⁴ in float32 costs nothing), scale them by a power of two per matrix,
    form S_Z = scale·Z Zᵀ + (eps/c²)·I and the whitening matrix
    ``matrix(xp, S_Z, floor) -> (W_Z, pullback)`` (``floor``, shape (..., 1), is the eps in
    S_Z); see :class:`RowWhitening`. Needs m >= 1 (the callers check). Costs one reduction
    (max|X_c|) and one elementwise pass (the scaling) more than the unscaled covariance."""
    last = x.ndim - 1
    mu, xc = centre(xp, x, (last,)) if center else (None, x)
    axes = (last - 1, last)
    if is_numpy_array(xc):
        # max|X_c| from the max and the min (no |X_c| array), and Z in place of X_c when
        # centring made X_c a new array. Each over the columns first, then the rows: on the
        # (G, d, N) view of an (N, C) batch one reduction over both axes takes 3.1 ms where the
        # two take 0.9 (8192×512 float32); the same values (max and min are exact)
        top = np.maximum(np.max(np.max(xc, axis=last, keepdims=True), axis=last - 1, keepdims=True),
                         -np.min(np.min(xc, axis=last, keepdims=True), axis=last - 1, keepdims=True))
        c = pow2_scale(xp, top, floor=_scale_floor(eps))
        z = np.multiply(xc, 1.0 / c, out=xc if center else None)
    else:
        c = pow2_scale(xp, xp.max(xp.abs(xc), axis=axes, keepdims=True), floor=_scale_floor(eps))
        z = xc * (1.0 / c)
    eps_z = (eps / c) / c
    eye = xp.eye(x.shape[-2], dtype=x.dtype, device=xp_device(x))
    s = scale * xp.matmul(z, _t(xp, z)) + eps_z * eye
    wz, matrix_pullback = matrix(xp, s, eps_z[..., 0])
    return RowWhitening(xp, z, mu, wz, matrix_pullback, scale, c)
