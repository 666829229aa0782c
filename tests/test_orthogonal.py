"""Weight orthogonalization: OWN (eigendecomposition) and ONI (Newton iterations).

Oracles (float64, written here from the papers' formulas): scipy.linalg.fractional_matrix_power
for (V_c V_cᵀ + eps·I)^{-1/2}, scipy.linalg.polar for the uncentred OWN of a square matrix
(its orthogonal polar factor), scipy.linalg.eigh for ONI's polynomial p_T in the eigenbasis,
SciPy finite differences of the forward pass for the backward, and PyTorch autograd through
``torch.linalg.eigh`` / matmuls where torch is installed. OWN needs ``eigh`` and refuses Dask;
ONI runs on every backend.
"""

from __future__ import annotations


import numpy as np
import pytest
import scipy.linalg as sla
from scipy.differentiate import derivative
from scipy.optimize import approx_fprime

import arraynorm as an
from _helpers import (DaskComputeCounter, ErrorTable, assert_close, backend_name, from_numpy,
                      has_linalg, to_numpy)


# largest relative error max|got − ref| / max|ref| per (what, op, dtype), printed on
# teardown: ``python -m pytest -q -s tests/test_orthogonal.py`` shows the table
_ERRORS = ErrorTable("orthogonalization: max|got - ref| / max|ref| against the oracle (* : |<J^T dw,d> - <dw,Jd>| / (|dw| |d|))", (34, 14, 9))


@pytest.fixture(scope="module", autouse=True)
def _print_error_table():
    yield
    _ERRORS.print()


def _record(what: str, op: str, got, ref) -> None:
    _ERRORS.record((what, op), got, ref)


def _note(key: tuple[str, str, str], err: float) -> None:
    _ERRORS.note(key, err)


def newton_polynomial(lam: np.ndarray, T: int) -> np.ndarray:
    """p_T(λ) with p_0 = 1, p_{k+1} = 1.5 p_k − 0.5 p_k³ λ (ONI's B_T in the eigenbasis)."""
    p = np.ones_like(lam)
    for _ in range(T):
        p = 1.5 * p - 0.5 * p ** 3 * lam
    return p


def centred_rows(v: np.ndarray) -> np.ndarray:
    z = v.reshape(v.shape[0], -1)
    return z - z.mean(axis=1, keepdims=True)


def ref_own(v: np.ndarray, eps: float) -> np.ndarray:
    z = centred_rows(v)
    return (sla.fractional_matrix_power(z @ z.T + eps * np.eye(len(z)), -0.5) @ z).reshape(v.shape)


def ref_oni(v: np.ndarray, T: int, eps: float) -> np.ndarray:
    z = centred_rows(v)
    s = z @ z.T + eps * np.eye(len(z))
    tr = np.trace(s)
    lam, u = sla.eigh(s / tr)
    return (u @ np.diag(newton_polynomial(lam, T)) @ u.T @ z / np.sqrt(tr)).reshape(v.shape)


def no_eigh(xp) -> bool:
    """OWN needs a batched eigh (the capability table: not on Dask)."""
    return not has_linalg(xp, "eigh")


# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 8), (4, 2, 3, 3)])
def test_own_rows_are_orthonormal_and_match_scipy(xp, dtype_name, shape):
    rng = np.random.default_rng(0)
    v = rng.standard_normal(shape).astype(dtype_name)
    va = from_numpy(xp, v, dtype_name)
    if no_eigh(xp):
        with pytest.raises(NotImplementedError, match="orthogonal_weight_norm: .*eigh.*dask"):
            an.orthogonal_weight_norm(va)
        return
    tol = {} if dtype_name == "float64" else dict(rtol=1e-4, atol=1e-5)
    w = an.orthogonal_weight_norm(va, eps=0.0)
    _record("W vs fractional_matrix_power", "own", w, ref_own(v.astype(np.float64), 0.0))
    assert_close(w, ref_own(v.astype(np.float64), 0.0), xp=xp, dtype=va.dtype, **tol)
    wm = to_numpy(w).reshape(shape[0], -1).astype(np.float64)
    _record("W W^T vs I", "own", (wm @ wm.T).astype(dtype_name), np.eye(shape[0]))
    np.testing.assert_allclose(wm @ wm.T, np.eye(shape[0]), atol=1e-12 if dtype_name == "float64" else 1e-5)
    np.testing.assert_allclose(wm.sum(axis=1), 0.0, atol=1e-12 if dtype_name == "float64" else 1e-5)
    w_eps = an.orthogonal_weight_norm(va)
    assert_close(w_eps, ref_own(v.astype(np.float64), 1e-5), xp=xp, dtype=va.dtype, **tol)


def test_own_without_centring_is_the_orthogonal_polar_factor(xp):
    rng = np.random.default_rng(1)
    v = rng.standard_normal((4, 4))
    if no_eigh(xp):
        with pytest.raises(NotImplementedError, match="orthogonal_weight_norm: .*dask"):
            an.orthogonal_weight_norm(from_numpy(xp, v), center=False)
        return
    w = an.orthogonal_weight_norm(from_numpy(xp, v), eps=0.0, center=False)
    _record("W vs scipy.linalg.polar", "own center=0", w, sla.polar(v)[0])
    assert_close(w, sla.polar(v)[0], xp=xp, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("T", [1, 2, 3, 5, 7])
def test_oni_orthogonality_follows_its_polynomial(xp, T):
    """W Wᵀ has eigenvalues λ p_T(λ)² (λ: eigenvalues of S/tr S) exactly, so ‖W Wᵀ − I‖
    shrinks with T the way the polynomial says, not "is close to I"."""
    rng = np.random.default_rng(2)
    v = rng.standard_normal((3, 2, 4))
    w = an.oni(from_numpy(xp, v), T=T, eps=0.0)
    _record("W vs eigh polynomial", f"oni T={T}", w, ref_oni(v, T, 0.0))
    assert_close(w, ref_oni(v, T, 0.0), xp=xp, rtol=1e-10, atol=1e-10)
    wm = to_numpy(w).reshape(3, -1)
    z = centred_rows(v)
    lam = sla.eigh(z @ z.T / np.trace(z @ z.T), eigvals_only=True)
    expected = np.sort(lam * newton_polynomial(lam, T) ** 2)
    np.testing.assert_allclose(sla.eigh(wm @ wm.T, eigvals_only=True), expected, rtol=1e-10)
    err = np.abs(expected - 1).max()
    assert err < np.abs(lam * newton_polynomial(lam, T - 1) ** 2 - 1).max()
    assert np.linalg.norm(wm @ wm.T - np.eye(3), 2) == pytest.approx(err, rel=1e-8)


def test_oni_with_eps_matches_reference(xp, dtype_name):
    rng = np.random.default_rng(3)
    v = 0.1 * rng.standard_normal((4, 3, 3))
    w = an.oni(from_numpy(xp, v, dtype_name), T=6, eps=1e-3)
    tol = {} if dtype_name == "float64" else dict(rtol=2e-5, atol=2e-5)
    assert_close(w, ref_oni(v, 6, 1e-3), xp=xp, dtype=from_numpy(xp, v, dtype_name).dtype, **tol)


def test_constant_weights_give_zero_not_nan(xp):
    v = from_numpy(xp, np.full((2, 5), 3.0))
    w, pullback = an.vjp(an.oni, v)
    np.testing.assert_array_equal(to_numpy(w), 0.0)
    assert np.all(np.isfinite(to_numpy(pullback(xp.ones_like(w))[0])))
    if not no_eigh(xp):
        np.testing.assert_array_equal(to_numpy(an.orthogonal_weight_norm(v)), 0.0)


# --------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------

CASES = [
    ("own", lambda v: an.vjp(an.orthogonal_weight_norm, v, eps=1e-4)),
    ("own_nocenter", lambda v: an.vjp(an.orthogonal_weight_norm, v, eps=0.0, center=False)),
    ("oni", lambda v: an.vjp(an.oni, v, T=5)),
    ("oni_T2", lambda v: an.vjp(an.oni, v, T=2, eps=0.0)),
]


@pytest.mark.parametrize("name,call", CASES, ids=[c[0] for c in CASES])
def test_backward_matches_scipy_finite_differences(xp, name, call):
    rng = np.random.default_rng(4)
    v = rng.standard_normal((3, 2, 3))
    if no_eigh(xp) and name.startswith("own"):
        with pytest.raises(NotImplementedError, match=r"eigh.*dask.*ONI \(oni\) needs only matmul"):
            call(from_numpy(xp, v))
        return
    w, pullback = call(from_numpy(xp, v))
    dw = rng.standard_normal(v.shape)
    (dv,) = pullback(from_numpy(xp, dw))
    dv = to_numpy(dv)
    assert dv.shape == v.shape

    def loss(z: np.ndarray) -> float:
        return float(np.sum(dw * to_numpy(call(z.reshape(v.shape))[0])))

    d = rng.standard_normal(v.shape)
    fd = derivative(np.vectorize(lambda t: loss(v + t * d)), 0.0, initial_step=1e-2,
                    tolerances=dict(rtol=1e-12, atol=1e-14)).df
    _note(("<J^T dw,d> vs derivative *", name, str(dv.dtype)),
          abs(np.sum(dv * d) - fd) / (np.linalg.norm(dw) * np.linalg.norm(d)))
    assert abs(np.sum(dv * d) - fd) <= 1e-7 * abs(fd) + 1e-9 * np.linalg.norm(dw) * np.linalg.norm(d)
    if backend_name(xp) == "numpy":
        gfd = approx_fprime(v.ravel(), loss, 1e-7)
        _record("dv vs approx_fprime", name, dv.ravel(), gfd)
        np.testing.assert_allclose(dv.ravel(), gfd, rtol=1e-4, atol=1e-5 * np.abs(gfd).max())


@pytest.mark.parametrize("method", ["own", "oni"])
def test_backward_matches_torch_autograd(method):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    v = rng.standard_normal((3, 7))
    dw = rng.standard_normal(v.shape)
    t = torch.tensor(v, requires_grad=True)
    z = t - t.mean(dim=1, keepdim=True)
    s = z @ z.T + 1e-5 * torch.eye(3, dtype=t.dtype)
    if method == "own":
        lam, u = torch.linalg.eigh(s)
        w_t = u @ torch.diag(lam.rsqrt()) @ u.T @ z
        w, pullback = an.vjp(an.orthogonal_weight_norm, v)
    else:
        tr = torch.trace(s)
        b = torch.eye(3, dtype=t.dtype)
        for _ in range(5):
            b = 1.5 * b - 0.5 * torch.linalg.matrix_power(b, 3) @ (s / tr)
        w_t = b @ z / tr.sqrt()
        w, pullback = an.vjp(an.oni, v)
    (w_t * torch.tensor(dw)).sum().backward()
    _record("dv vs torch autograd", method, pullback(dw)[0], t.grad.numpy())
    np.testing.assert_allclose(w, w_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pullback(dw)[0], t.grad.numpy(), rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------
# backends, dtypes, errors
# --------------------------------------------------------------------------------------

def test_oni_on_dask_stays_lazy():
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(6)
    v_np, dw = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2))
    v = da.from_array(v_np, chunks=(2, 2, 1))
    with DaskComputeCounter() as counter:
        w, pullback = an.vjp(an.oni, v)
        (dv,) = pullback(da.from_array(dw, chunks=(2, 2, 1)))
    assert counter.n == 0 and isinstance(w, da.Array) and isinstance(dv, da.Array)
    np.testing.assert_allclose(w.compute(), an.oni(v_np), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dv.compute(), an.vjp(an.oni, v_np)[1](dw)[0],
                               rtol=1e-12, atol=1e-14)


def test_float16_weights_keep_their_dtype():
    torch = pytest.importorskip("torch")
    v = np.random.default_rng(7).standard_normal((2, 6)).astype(np.float16)
    for xv in (v, torch.tensor(v)):
        for f in (an.orthogonal_weight_norm, an.oni):
            w = f(xv)
            assert w.dtype == xv.dtype
            np.testing.assert_allclose(to_numpy(w).astype(np.float64),
                                       ref_own(v.astype(np.float64), 1e-5) if f is an.orthogonal_weight_norm
                                       else ref_oni(v.astype(np.float64), 5, 1e-5), atol=3e-3)


def test_errors_name_the_function_and_argument(xp):
    v = from_numpy(xp, np.ones((3, 5)))
    for f in (an.orthogonal_weight_norm, an.oni):
        name = f.__name__
        with pytest.raises(ValueError, match=f"{name}: v must have at least 2 dimensions"):
            f(from_numpy(xp, np.ones(4)))
        with pytest.raises(ValueError, match=rf"{name}: orthonormal rows need out <= in − 1"):
            f(from_numpy(xp, np.ones((4, 4))))
        with pytest.raises(ValueError, match=rf"{name}: orthonormal rows need out <= in,"):
            f(from_numpy(xp, np.ones((5, 4))), center=False)
        with pytest.raises(ValueError, match=f"{name}: eps must be >= 0"):
            f(v, eps=-1e-3)
        with pytest.raises(TypeError, match=f"{name}: center must be a bool"):
            f(v, center=1)
        with pytest.raises(TypeError, match=f"{name}: v must have a real floating dtype"):
            f(from_numpy(xp, np.ones((2, 5), dtype=np.int32)))
        with pytest.raises(TypeError, match=f"{name}: v must be an array"):
            f([[1.0, 2.0, 3.0]])
    for T in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="oni: T must be a positive int"):
            an.oni(v, T=T)
