"""Whitening operations (ZCA, PCA, Cholesky, IterNorm) and the methods composed from them:
decorrelated BN, IterNorm, group whitening.

Oracles, all float64 and written here from the formulas, not from the code under test:
scipy.linalg.sqrtm (ZCA: W = sqrtm(Σ)^{-1}), scipy.linalg.eigh (PCA; IterNorm's polynomial
in the eigenbasis), scipy.linalg.cholesky + solve_triangular (Cholesky), NumPy loops over
channel groups / samples, SciPy finite differences of the forward pass (directional by
``scipy.differentiate.derivative``, full gradient by ``scipy.optimize.approx_fprime``) and
PyTorch autograd through ``torch.linalg.eigh`` / ``cholesky`` where torch is installed.

Backends: every test taking ``xp`` runs on numpy, array_api_strict, dask, torch (and cupy on
a GPU). ZCA, PCA and Cholesky are not available on Dask: there the same tests assert the
``NotImplementedError`` instead; IterNorm runs on Dask and is checked to stay lazy.
"""

from __future__ import annotations


import numpy as np
import pytest
import scipy.linalg as sla
from scipy.differentiate import derivative
from scipy.optimize import approx_fprime

import arraynorm as an
from arraynorm.compose import Normalizer
from arraynorm.partition import Batch, BatchGroups, Group, Layer
from arraynorm.whitening import (
    CholeskyWhiten,
    GivenWhitening,
    IterNormWhiten,
    PCAWhiten,
    ZCAWhiten,
)
from _helpers import (DaskComputeCounter, ErrorTable, assert_close, backend_name, from_numpy,
                      has_linalg, to_numpy)
from arraynorm.operation import WHITENING_METHODS

METHODS = ["zca", "pca", "cholesky", "iternorm"]
EXACT = ["zca", "pca", "cholesky"]
OPS = {"zca": ZCAWhiten, "pca": PCAWhiten, "cholesky": CholeskyWhiten, "iternorm": IterNormWhiten}

# largest relative error max|got − ref| / max|ref| per (what, method, dtype), printed on
# teardown: ``python -m pytest -q -s tests/test_whitening.py`` shows the table
_ERRORS = ErrorTable("whitening: max|got - ref| / max|ref| against the oracle (* : |<J^T dy,v> - <dy,Jv>| / (|dy| |v|))", (34, 10, 9))


@pytest.fixture(scope="module", autouse=True)
def _print_error_table():
    yield
    _ERRORS.print()


def _record(what: str, method: str, got, ref) -> None:
    _ERRORS.record((what, method), got, ref)


def _note(key: tuple[str, str, str], err: float) -> None:
    _ERRORS.note(key, err)


# --------------------------------------------------------------------------------------
# float64 references
# --------------------------------------------------------------------------------------

def newton_polynomial(lam: np.ndarray, T: int) -> np.ndarray:
    """p_T(λ) with p_0 = 1, p_{k+1} = 1.5 p_k − 0.5 p_k³ λ (IterNorm / ONI)."""
    p = np.ones_like(lam)
    for _ in range(T):
        p = 1.5 * p - 0.5 * p ** 3 * lam
    return p


def ref_matrix(sigma: np.ndarray, method: str, T: int = 5) -> np.ndarray:
    """Whitening matrix of one covariance, from SciPy."""
    if method == "zca":
        return np.linalg.inv(np.real(sla.sqrtm(sigma)))
    if method == "pca":
        lam, u = sla.eigh(sigma)
        lam, u = lam[::-1], u[:, ::-1]
        big = u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])]
        u = u * np.sign(big)
        return np.diag(lam ** -0.5) @ u.T
    if method == "cholesky":
        l = sla.cholesky(sigma, lower=True)
        return sla.solve_triangular(l, np.eye(len(sigma)), lower=True)
    tr = np.trace(sigma)
    lam, u = sla.eigh(sigma / tr)
    return u @ np.diag(newton_polynomial(lam, T) / np.sqrt(tr)) @ u.T


def ref_whiten(xb: np.ndarray, method: str, eps: float, T: int = 5):
    """(Y, mean, W) for one (d, m) block: Y = W (X − μ), Σ = X_c X_cᵀ/m + eps·I."""
    mean = xb.mean(axis=1, keepdims=True)
    xc = xb - mean
    sigma = xc @ xc.T / xb.shape[1] + eps * np.eye(len(xb))
    w = ref_matrix(sigma, method, T)
    return w @ xc, mean[:, 0], w


def ref_dbn(x: np.ndarray, num_groups: int, method: str, eps: float, T: int = 5):
    """DBN by a loop over channel groups of an NCHW input: (y, mean (C,), W (G, d, d))."""
    n, c = x.shape[:2]
    d = c // num_groups
    y = np.empty_like(x)
    means, ws = [], []
    for g in range(num_groups):
        xg = x[:, g * d:(g + 1) * d]
        xb = np.moveaxis(xg, 1, 0).reshape(d, -1)
        yb, mu, w = ref_whiten(xb, method, eps, T)
        y[:, g * d:(g + 1) * d] = np.moveaxis(yb.reshape((d, n) + x.shape[2:]), 0, 1)
        means.append(mu)
        ws.append(w)
    return y, np.concatenate(means), np.stack(ws)


def ref_group_whitening(x: np.ndarray, num_groups: int, method: str, eps: float):
    """Group whitening by a loop over samples: each sample's G groups are the features."""
    y = np.empty_like(x)
    for i in range(x.shape[0]):
        xb = x[i].reshape(num_groups, -1)
        y[i] = ref_whiten(xb, method, eps)[0].reshape(x.shape[1:])
    return y


def correlated(rng: np.random.Generator, shape: tuple[int, ...], offset: float = 0.5) -> np.ndarray:
    """NCHW data whose channels are correlated, with distinct covariance eigenvalues."""
    c = shape[1]
    mix = np.eye(c) + 0.5 * rng.standard_normal((c, c))
    z = rng.standard_normal(shape)
    return np.einsum("ij,nj...->ni...", mix, z) + offset * np.arange(c).reshape((c,) + (1,) * (len(shape) - 2))


def unavailable(xp, method: str) -> bool:
    """The method needs batched linalg routines the backend lacks (the capability table)."""
    return not has_linalg(xp, *WHITENING_METHODS[method].routines)


def expect_not_implemented(xp, call) -> None:
    with pytest.raises(NotImplementedError, match=r"dask.*IterNorm"):
        call()


# --------------------------------------------------------------------------------------
# forward: whiteness and the SciPy references
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("num_groups", [1, 2])
def test_whitened_output_has_identity_covariance_per_group(xp, method, num_groups):
    rng = np.random.default_rng(1)
    x = correlated(rng, (16, 4, 3))
    xa = from_numpy(xp, x)
    if unavailable(xp, method):
        return expect_not_implemented(
            xp, lambda: an.decorrelated_batch_norm(xa, num_groups=num_groups, method=method))
    y = to_numpy(an.decorrelated_batch_norm(xa, num_groups=num_groups, method=method, eps=0.0))
    d = 4 // num_groups
    for g in range(num_groups):
        yb = np.moveaxis(y[:, g * d:(g + 1) * d], 1, 0).reshape(d, -1)
        assert np.allclose(yb.mean(axis=1), 0.0, atol=1e-12)
        np.testing.assert_allclose(yb @ yb.T / yb.shape[1], np.eye(d), atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_dbn_matches_scipy_reference(xp, dtype_name, method):
    rng = np.random.default_rng(2)
    x = correlated(rng, (8, 6, 2, 2)).astype(dtype_name)
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    xa, wa, ba = (from_numpy(xp, a, dtype_name) for a in (x, w, b))
    if unavailable(xp, method):
        return expect_not_implemented(
            xp, lambda: an.decorrelated_batch_norm(xa, wa, ba, num_groups=2, method=method))
    eps = 1e-3
    y_ref, mean_ref, w_ref = ref_dbn(x.astype(np.float64), 2, method, eps)
    y_ref = y_ref * w.reshape(1, 6, 1, 1) + b.reshape(1, 6, 1, 1)
    tol = {} if dtype_name == "float64" else dict(rtol=2e-4, atol=2e-4)
    y = an.decorrelated_batch_norm(xa, wa, ba, num_groups=2, method=method, eps=eps)
    assert_close(y, y_ref, xp=xp, dtype=xa.dtype, **tol)
    mean, wm = an.whitening_moments(xa, num_groups=2, method=method, eps=eps)
    _record("forward y vs scipy", method, to_numpy(y).astype(dtype_name), y_ref)
    _record("W vs scipy", method, to_numpy(wm).astype(dtype_name), w_ref)
    assert_close(mean, mean_ref, xp=xp, dtype=xa.dtype, **tol)
    assert_close(wm, w_ref, xp=xp, dtype=xa.dtype, **tol)


@pytest.mark.parametrize("T", [1, 3, 5])
def test_iternorm_whitens_by_its_polynomial_exactly(xp, T):
    """Eigenvalues of W Σ Wᵀ are λ p_T(λ)² for the eigenvalues λ of Σ/tr(Σ): the degree of
    whitening IterNorm promises, not "close to I"."""
    rng = np.random.default_rng(3)
    x = correlated(rng, (20, 4))
    eps = 1e-3
    mean, w = an.whitening_moments(from_numpy(xp, x), method="iternorm", T=T, eps=eps)
    w = to_numpy(w)[0]
    xc = (x - x.mean(0)).T
    sigma = xc @ xc.T / 20 + eps * np.eye(4)
    lam = sla.eigh(sigma / np.trace(sigma), eigvals_only=True)
    got = sla.eigh(w @ sigma @ w.T, eigvals_only=True)
    np.testing.assert_allclose(got, np.sort(lam * newton_polynomial(lam, T) ** 2), rtol=1e-10)
    np.testing.assert_allclose(to_numpy(mean), x.mean(0), rtol=1e-12)
    # more iterations whiten more: the spread of the eigenvalues around 1 shrinks with T
    spread = np.abs(lam * newton_polynomial(lam, T) ** 2 - 1).max()
    assert spread < np.abs(lam * newton_polynomial(lam, T - 1) ** 2 - 1).max()


def test_iter_norm_equals_iternorm_method_of_dbn(xp):
    rng = np.random.default_rng(4)
    x = from_numpy(xp, correlated(rng, (10, 4, 3)))
    a = to_numpy(an.iter_norm(x, num_groups=2, T=5))
    b = to_numpy(an.decorrelated_batch_norm(x, num_groups=2, method="iternorm"))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a, ref_dbn(to_numpy(x), 2, "iternorm", 1e-5)[0], rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------
# the framework: partitions x whitening
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_group_whitening_is_per_sample_whitening_of_channel_groups(xp, method):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 4)) + np.arange(6).reshape(1, 6, 1)
    xa = from_numpy(xp, x)
    if unavailable(xp, method):
        return expect_not_implemented(xp, lambda: an.group_whitening(xa, 3, method=method))
    y = an.group_whitening(xa, 3, method=method, eps=1e-3)
    assert_close(y, ref_group_whitening(x, 3, method, 1e-3), xp=xp, dtype=xa.dtype)
    # it is the framework's Group partition (GroupNorm's) with a whitening operation
    y2 = Normalizer(Group(3), OPS[method](), 1e-3)(xa)
    np.testing.assert_array_equal(to_numpy(y2), to_numpy(y))


def test_group_whitening_with_one_group_is_layer_norm_over_channels_and_space(xp):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 5))
    y = to_numpy(an.group_whitening(from_numpy(xp, x), 1, method="iternorm", eps=1e-5))
    xc = x - x.mean(axis=(1, 2), keepdims=True)
    ref = xc / np.sqrt(xc.var(axis=(1, 2), keepdims=True) + 1e-5)
    # one feature: Σ is 1×1, Σ_N = 1 and p_T(1) = 1 exactly, so even IterNorm is exact
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_batch_groups_whitens_each_channel_group_separately(xp):
    rng = np.random.default_rng(7)
    x = correlated(rng, (6, 6, 3))
    xa = from_numpy(xp, x)
    y = to_numpy(an.iter_norm(xa, num_groups=3))
    for g in range(3):
        part = from_numpy(xp, x[:, 2 * g:2 * g + 2])
        np.testing.assert_allclose(y[:, 2 * g:2 * g + 2], to_numpy(an.iter_norm(part)),
                                   rtol=1e-12, atol=1e-12)


def test_batch_partition_is_batch_groups_with_one_group_and_any_channel_axis(xp):
    rng = np.random.default_rng(8)
    x = correlated(rng, (5, 3, 2, 2))
    y = to_numpy(Normalizer(Batch(), IterNormWhiten(3))(from_numpy(xp, x)))
    np.testing.assert_allclose(y, to_numpy(an.iter_norm(from_numpy(xp, x), T=3)), rtol=1e-12)
    x_last = np.moveaxis(x, 1, -1)
    y_last = to_numpy(an.iter_norm(from_numpy(xp, x_last), T=3, axis=-1))
    np.testing.assert_allclose(np.moveaxis(y_last, -1, 1), y, rtol=1e-12, atol=1e-12)


def test_inference_uses_given_mean_and_whitening_matrix(xp):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 4, 3))
    mean = rng.standard_normal(4)
    wm = rng.standard_normal((2, 2, 2))
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    args = [from_numpy(xp, a) for a in (x, w, b)]
    y, pullback = an.vjp(an.decorrelated_batch_norm, *args, num_groups=2,
                         mean=from_numpy(xp, mean), whitening_matrix=from_numpy(xp, wm))
    ref = np.empty_like(x)
    for g in range(2):
        xg = x[:, 2 * g:2 * g + 2] - mean[2 * g:2 * g + 2].reshape(1, 2, 1)
        ref[:, 2 * g:2 * g + 2] = np.einsum("ij,njs->nis", wm[g], xg)
    assert_close(y, ref * w.reshape(1, 4, 1) + b.reshape(1, 4, 1), xp=xp, dtype=args[0].dtype)
    dy = rng.standard_normal(x.shape)
    dx, dw, db = pullback(from_numpy(xp, dy))
    dref = np.empty_like(x)
    g_hat = dy * w.reshape(1, 4, 1)
    for g in range(2):  # the map is linear in x: dx = Wᵀ (γ dy)
        dref[:, 2 * g:2 * g + 2] = np.einsum("ji,njs->nis", wm[g], g_hat[:, 2 * g:2 * g + 2])
    assert_close(dx, dref, xp=xp)
    assert_close(dw, np.sum(dy * ref, axis=(0, 2)), xp=xp)
    assert_close(db, np.sum(dy, axis=(0, 2)), xp=xp)


@pytest.mark.parametrize("method", METHODS)
def test_running_statistics_fold_and_feed_inference(xp, method):
    """Batch moments folded with PyTorch's momentum rule; with momentum 1 the running values
    are the batch's, and inference with them reproduces training."""
    rng = np.random.default_rng(10)
    x = from_numpy(xp, correlated(rng, (8, 4, 3)))
    if unavailable(xp, method):
        return expect_not_implemented(xp, lambda: an.whitening_moments(x, method=method))
    mean, wm = an.whitening_moments(x, num_groups=2, method=method)
    m = 0.1
    r_mean = (1 - m) * xp.zeros_like(mean) + m * mean
    r_w = (1 - m) * xp.zeros_like(wm) + m * wm
    ref_mean, ref_w = to_numpy(mean), to_numpy(wm)
    np.testing.assert_allclose(to_numpy(r_mean), m * ref_mean, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(r_w), m * ref_w, rtol=1e-12)
    train = to_numpy(an.decorrelated_batch_norm(x, num_groups=2, method=method))
    infer = to_numpy(an.decorrelated_batch_norm(x, num_groups=2, mean=mean, whitening_matrix=wm))
    np.testing.assert_allclose(infer, train, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------
# backward: SciPy finite differences and PyTorch autograd
# --------------------------------------------------------------------------------------

def _directional_fd(f, x: np.ndarray, v: np.ndarray, step: float = 1e-2) -> float:
    """d/dt f(x + t v) at t = 0 by scipy.differentiate.derivative (order-8 central)."""
    g = np.vectorize(lambda t: f(x + t * v))
    res = derivative(g, 0.0, initial_step=step, tolerances=dict(rtol=1e-12, atol=1e-14))
    return float(res.df)


GRAD_CASES = [("dbn", (6, 4, 2)), ("gw", (3, 6, 2))]  # (method, x shape)


def _op_call(kind: str, method: str):
    """(x, w, b) -> (y, pullback(dy) -> (dx, dw, db)) for DBN with 2 groups or GW with 3."""
    if kind == "dbn":
        return lambda x, w, b: an.vjp(an.decorrelated_batch_norm, x, w, b, num_groups=2,
                                      method=method, eps=1e-3)

    def gw(x, w, b):
        y, pullback = an.vjp(an.group_whitening, x, 3, w, b, method=method, eps=1e-3)
        return y, lambda dy: tuple(g for g in pullback(dy) if g is not None)

    return gw


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind,shape", GRAD_CASES)
def test_backward_matches_scipy_finite_differences(xp, method, kind, shape):
    rng = np.random.default_rng(11)
    x = correlated(rng, shape)
    c = shape[1]
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    call = _op_call(kind, method)
    if unavailable(xp, method):
        return expect_not_implemented(xp, lambda: call(*(from_numpy(xp, a) for a in (x, w, b))))
    y, pullback = call(*(from_numpy(xp, a) for a in (x, w, b)))
    dy = rng.standard_normal(y.shape)
    dx, dw, db = (to_numpy(g) for g in pullback(from_numpy(xp, dy)))

    def loss(xn, wn=w, bn=b):
        return float(np.sum(dy * to_numpy(call(xn, wn, bn)[0])))

    # (a) directional: ⟨Jᵀdy, v⟩ = ⟨dy, J v⟩ for x, weight and bias together
    vx, vw, vb = rng.standard_normal(x.shape), rng.standard_normal(c), rng.standard_normal(c)
    flat = np.concatenate([x.ravel(), w, b])
    vflat = np.concatenate([vx.ravel(), vw, vb])
    split = lambda z: (z[:x.size].reshape(x.shape), z[x.size:x.size + c], z[x.size + c:])
    fd = _directional_fd(lambda z: loss(*split(z)), flat, vflat)
    got = np.sum(dx * vx) + np.sum(dw * vw) + np.sum(db * vb)
    scale = np.linalg.norm(dy) * np.linalg.norm(vflat)
    _note((f"<J^T dy,v> vs derivative {kind} *", method, str(dx.dtype)), abs(got - fd) / scale)
    assert abs(got - fd) <= 1e-7 * abs(fd) + 1e-9 * np.linalg.norm(dy) * np.linalg.norm(vflat)
    # (b) full gradient with respect to x (forward differences, NumPy evaluations)
    if backend_name(xp) == "numpy":
        gfd = approx_fprime(x.ravel(), lambda z: loss(z.reshape(x.shape)), 1e-7)
        _record(f"dx vs approx_fprime {kind}", method, dx.ravel(), gfd)
        np.testing.assert_allclose(dx.ravel(), gfd, rtol=1e-4, atol=1e-5 * np.abs(gfd).max())


def _orthonormal_rows_orthogonal_to_ones(rng, d: int, m: int) -> np.ndarray:
    z = rng.standard_normal((m, d))
    q, _ = np.linalg.qr(z - z.mean(axis=0))
    return q.T


def test_zca_backward_is_exact_at_repeated_eigenvalues():
    """Σ = c·I: every eigenvalue repeated. Σ^{-1/2} is smooth there and its exact divided
    difference is f'(λ); the closed form must match finite differences, no NaN."""
    rng = np.random.default_rng(12)
    x = np.sqrt(10.0) * _orthonormal_rows_orthogonal_to_ones(rng, 3, 10).T  # (10, 3): Σ = I
    assert np.allclose(np.cov(x.T, bias=True), np.eye(3), atol=1e-13)
    y, pullback = an.vjp(an.decorrelated_batch_norm, x, method="zca", eps=1e-3)
    dy = rng.standard_normal(y.shape)
    dx = pullback(dy)[0]
    v = rng.standard_normal(x.shape)
    _record("dx at Sigma=I vs approx_fprime", "zca", dx.ravel(), approx_fprime(
        x.ravel(), lambda z: float(np.sum(dy * an.decorrelated_batch_norm(
            z.reshape(x.shape), eps=1e-3))), 1e-7))
    fd = _directional_fd(lambda z: float(np.sum(dy * an.decorrelated_batch_norm(z, eps=1e-3))),
                         x, v, step=1e-3)
    assert abs(np.sum(dx * v) - fd) <= 1e-8 * abs(fd) + 1e-10
    gfd = approx_fprime(x.ravel(), lambda z: float(np.sum(
        dy * an.decorrelated_batch_norm(z.reshape(x.shape), eps=1e-3))), 1e-7)
    np.testing.assert_allclose(dx.ravel(), gfd, rtol=1e-4, atol=1e-5 * np.abs(gfd).max())


def test_pca_backward_is_finite_at_repeated_eigenvalues(xp):
    """PCA's 1/(λ_i − λ_j) terms are guarded: equal eigenvalues give a finite gradient."""
    if unavailable(xp, "pca"):
        return expect_not_implemented(
            xp, lambda: an.decorrelated_batch_norm(from_numpy(xp, np.ones((4, 2))), method="pca"))
    rng = np.random.default_rng(13)
    x = np.sqrt(10.0) * _orthonormal_rows_orthogonal_to_ones(rng, 3, 10).T
    y, pullback = an.vjp(an.decorrelated_batch_norm, from_numpy(xp, x), method="pca")
    dx = to_numpy(pullback(from_numpy(xp, rng.standard_normal(x.shape)))[0])
    assert np.all(np.isfinite(dx))
    assert np.all(np.isfinite(to_numpy(y)))


@pytest.mark.parametrize("method", METHODS)
def test_backward_matches_torch_autograd(method):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(14)
    x = correlated(rng, (12, 4))
    dy = rng.standard_normal(x.shape)
    eps = 1e-3
    t = torch.tensor(x, requires_grad=True)
    xc = (t - t.mean(0)).T
    sigma = xc @ xc.T / 12 + eps * torch.eye(4, dtype=t.dtype)
    if method == "zca":
        lam, u = torch.linalg.eigh(sigma)
        w = u @ torch.diag(lam.rsqrt()) @ u.T
    elif method == "pca":
        lam, u = torch.linalg.eigh(sigma)
        lam, u = lam.flip(0), u.flip(1)
        sign = torch.sign(u.detach()[u.detach().abs().argmax(0), torch.arange(4)])
        w = torch.diag(lam.rsqrt()) @ (u * sign).T
    elif method == "cholesky":
        l = torch.linalg.cholesky(sigma)
        w = torch.linalg.solve_triangular(l, torch.eye(4, dtype=t.dtype), upper=False)
    else:
        tr = torch.trace(sigma)
        p = torch.eye(4, dtype=t.dtype)
        for _ in range(5):
            p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ (sigma / tr)
        w = p / tr.sqrt()
    y_t = (w @ xc).T
    (y_t * torch.tensor(dy)).sum().backward()
    y, pullback = an.vjp(an.decorrelated_batch_norm, x, method=method, eps=eps)
    _record("dx vs torch autograd", method, pullback(dy)[0], t.grad.numpy())
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pullback(dy)[0], t.grad.numpy(), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------
# backends, dtypes, edge cases
# --------------------------------------------------------------------------------------

def test_dask_iternorm_stays_lazy_and_exact_methods_refuse():
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(15)
    x_np = correlated(rng, (8, 4, 3))
    x = da.from_array(x_np, chunks=(4, 2, 2))
    with DaskComputeCounter() as counter:
        y, pullback = an.vjp(an.iter_norm, x, num_groups=2)
        dx = pullback(da.ones_like(y))[0]
        mean, wm = an.whitening_moments(x, num_groups=2, method="iternorm")
    assert counter.n == 0
    assert isinstance(y, da.Array) and isinstance(dx, da.Array) and isinstance(wm, da.Array)
    np.testing.assert_allclose(y.compute(), an.iter_norm(x_np, num_groups=2), rtol=1e-12)
    for method, routine in (("zca", "eigh"), ("pca", "eigh"), ("cholesky", "cholesky")):
        with pytest.raises(NotImplementedError,
                           match=rf"decorrelated_batch_norm: .*{routine}.*dask.*IterNorm.*matmul"):
            an.decorrelated_batch_norm(x, method=method)
    with pytest.raises(NotImplementedError, match="orthogonal_weight_norm"):
        an.orthogonal_weight_norm(da.from_array(rng.standard_normal((2, 5))))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("method", METHODS)
def test_float16_input_is_computed_in_float32(backend, method):
    from array_api_compat import array_namespace
    if backend == "torch":
        torch = pytest.importorskip("torch")
        xp = array_namespace(torch.zeros(1))
    else:
        xp = array_namespace(np.zeros(1))
    rng = np.random.default_rng(16)
    x16 = correlated(rng, (16, 4)).astype(np.float16)
    y = an.decorrelated_batch_norm(from_numpy(xp, x16), method=method, num_groups=2)
    assert y.dtype == xp.float16
    ref = ref_dbn(x16.astype(np.float64), 2, method, 1e-5)[0]
    np.testing.assert_allclose(to_numpy(y).astype(np.float64), ref, rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("method", METHODS)
def test_constant_input_gives_finite_output_with_eps(xp, method):
    x = from_numpy(xp, np.full((4, 3, 2), 2.5))
    if unavailable(xp, method):
        return expect_not_implemented(xp, lambda: an.decorrelated_batch_norm(x, method=method))
    y, pullback = an.vjp(an.decorrelated_batch_norm, x, method=method)
    np.testing.assert_array_equal(to_numpy(y), 0.0)
    assert np.all(np.isfinite(to_numpy(pullback(xp.ones_like(y))[0])))


def test_float32_rank_deficient_covariance_does_not_give_nan(xp):
    """Batch smaller than the group: Σ is singular up to eps. Eigenvalues are clamped at
    eps (their exact lower bound), so float32 rounding cannot produce NaN."""
    rng = np.random.default_rng(17)
    x = from_numpy(xp, 100.0 * rng.standard_normal((3, 16)), "float32")
    for method in ("zca", "pca"):
        if unavailable(xp, method):
            expect_not_implemented(xp, lambda: an.decorrelated_batch_norm(x, method=method))
            continue
        y = to_numpy(an.decorrelated_batch_norm(x, method=method))
        assert np.all(np.isfinite(y))


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------

def test_errors_name_the_function_and_argument(xp):
    x = from_numpy(xp, np.ones((4, 6, 2)))
    with pytest.raises(ValueError, match="decorrelated_batch_norm: method must be one of"):
        an.decorrelated_batch_norm(x, method="svd")
    with pytest.raises(ValueError, match="whitening_moments: method"):
        an.whitening_moments(x, method=3)
    with pytest.raises(ValueError, match="decorrelated_batch_norm: num_groups=4 must divide"):
        an.decorrelated_batch_norm(x, num_groups=4, method="iternorm")
    with pytest.raises(ValueError, match="group_whitening: num_groups=4 must divide"):
        an.group_whitening(x, 4, method="iternorm")
    for T in (0, -1, 2.5):
        with pytest.raises(ValueError, match="iter_norm: T must be a positive int"):
            an.iter_norm(x, T=T)
    with pytest.raises(ValueError, match="whitening_moments: T must be a positive int"):
        an.whitening_moments(x, method="iternorm", T=0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        an.iter_norm(from_numpy(xp, np.ones(5)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        an.iter_norm(from_numpy(xp, np.ones((1, 3))))
    with pytest.raises(ValueError, match="pass both mean and whitening_matrix"):
        an.iter_norm(x, mean=from_numpy(xp, np.zeros(6)))
    with pytest.raises(ValueError, match=r"whitening_matrix must have shape \(2, 3, 3\)"):
        an.iter_norm(x, num_groups=2, mean=from_numpy(xp, np.zeros(6)),
                     whitening_matrix=from_numpy(xp, np.zeros((1, 6, 6))))
    with pytest.raises(ValueError, match=r"mean must have shape \(6,\)"):
        an.iter_norm(x, mean=from_numpy(xp, np.zeros(3)),
                     whitening_matrix=from_numpy(xp, np.zeros((1, 6, 6))))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        an.iter_norm(x, eps=-1.0)
    with pytest.raises(TypeError, match="x must have a real floating dtype"):
        an.iter_norm(from_numpy(xp, np.ones((4, 6), dtype=np.int64)))
    with pytest.raises(ValueError, match="no feature axis"):
        Normalizer(Layer(), IterNormWhiten())(x)
    with pytest.raises(ValueError, match="shared by all samples"):
        Normalizer(Group(2), GivenWhitening(from_numpy(xp, np.zeros(6)),
                                            from_numpy(xp, np.zeros((2, 3, 3)))))(x)
    with pytest.raises(ValueError, match="IterNormWhiten: T must be a positive int"):
        IterNormWhiten(0)


def test_given_whitening_matrix_from_another_library_is_refused():
    torch = pytest.importorskip("torch")
    x = np.ones((4, 2))
    with pytest.raises(TypeError, match="decorrelated_batch_norm: whitening_matrix is a torch array"):
        an.decorrelated_batch_norm(x, mean=np.zeros(2), whitening_matrix=torch.zeros(1, 2, 2))


def test_batch_groups_partition_layout():
    layout = BatchGroups(2).layout("f", (5, 6, 3, 4))
    assert layout.view_shape == (5, 2, 3, 3, 4)
    assert layout.reduce_axes == (0, 3, 4) and layout.feature_axis == 2
    assert layout.param_axes == (1,) and layout.group_size == 60
    last = BatchGroups(3, axis=-1).layout("f", (5, 4, 6))
    assert last.view_shape == (5, 4, 3, 2) and last.reduce_axes == (0, 1)
    assert last.feature_axis == 3 and last.param_axes == (2,)


@pytest.mark.parametrize("n", [2, 3])
def test_given_whitening_refuses_per_sample_partitions_even_when_sizes_coincide(n):
    """Group(2) on 4 channels keeps N·2 statistics; with N = 2 that equals C = 4, which a
    size comparison alone would accept and silently misuse the channel mean."""
    x = np.random.default_rng(0).standard_normal((n, 4, 3))
    op = an.whitening.GivenWhitening(np.zeros(4), np.stack([np.eye(2)] * 2))
    with pytest.raises(ValueError, match="must be shared by all samples"):
        an.Normalizer(an.partition.Group(2), op)(x)


def test_whitened_blocks_come_back_in_c_order_on_numpy_with_the_permuted_views_values():
    """BatchGroups on (N, C): the NumPy lane copies the (G, d, N) blocks into the view's own
    order, tile by tile (outputs), or returns the permuted view (the input cotangent), and
    blocks already in the view's order come back as a view of them; the values are the
    permutation's, bit for bit. IterNorm forms its output and input cotangent in that order
    (both C-ordered) and equals the array_api_strict run (the generic code) to rounding,
    forward and backward."""
    import array_api_compat.numpy as cnp
    import array_api_strict as xs

    from arraynorm.operation.whiten import _Blocks

    rng = np.random.default_rng(60)
    blocks = _Blocks.of(BatchGroups(4).layout("t", (3000, 96)))
    a = rng.standard_normal((blocks.b, blocks.d, blocks.m))
    ref = np.transpose(a.reshape(blocks.permuted_shape), blocks.inverse)
    got = blocks.from_blocks(cnp, a)
    assert got.flags.c_contiguous and np.array_equal(got, ref)
    view = blocks.from_blocks(cnp, a, ordered=False)
    assert not view.flags.c_contiguous and np.array_equal(view, ref)
    ordered = np.transpose(np.ascontiguousarray(ref), blocks.perm).reshape(a.shape)  # a, in view order
    back = blocks.from_blocks(cnp, ordered)
    assert back.flags.c_contiguous and np.shares_memory(back, ordered) and np.array_equal(back, ref)
    x = rng.standard_normal((3000, 96)) + 3.0
    w, b = rng.uniform(0.5, 1.5, 96), rng.standard_normal(96)
    dy = rng.standard_normal((3000, 96))
    y, pb = an.vjp(an.iter_norm, x, w, b, num_groups=4, T=5)
    ys, pbs = an.vjp(an.iter_norm, *(xs.asarray(t) for t in (x, w, b)), num_groups=4, T=5)
    grads = pb(dy)
    assert y.flags.c_contiguous and grads[0].flags.c_contiguous
    np.testing.assert_allclose(y, np.asarray(ys), rtol=1e-12, atol=1e-12)
    for g, gs in zip(grads, pbs(xs.asarray(dy))):
        np.testing.assert_allclose(g, np.asarray(gs), rtol=1e-10, atol=1e-10)
    # below the tiled copy's size the view's order comes only from the products' own layout:
    # output, input cotangent and tangent alike
    x, dy = x[:300], dy[:300]
    y, pb = an.vjp(an.iter_norm, x, w, b, num_groups=4, T=5)
    _, ty = an.jvp(an.iter_norm, (x, w, b), (dy, np.zeros_like(w), np.zeros_like(b)), num_groups=4, T=5)
    assert y.flags.c_contiguous and pb(dy)[0].flags.c_contiguous and ty.flags.c_contiguous
