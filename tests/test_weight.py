"""Weight normalization family (arraynorm.weight) against oracles written elsewhere:
PyTorch's weight_norm / spectral_norm parametrizations and autograd, SciPy's SVD and
finite differences (scipy.differentiate), and float64 NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from scipy.differentiate import derivative

from _helpers import assert_close, backend_name, from_numpy, to_numpy

import arraynorm as an
from arraynorm.weight import (
    centered_weight_norm,
    spectral_norm,
    spectral_norm_exact,
    spectral_norm_init_u,
    weight_norm,
    weight_standardization,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _keep_shape(shape, dim):
    if dim is None:
        return (1,) * len(shape)
    return tuple(n if a == dim % len(shape) else 1 for a, n in enumerate(shape))


def fd_gradient(fun, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """∂⟨dy, fun(x)⟩/∂x by SciPy's adaptive finite differences, one coordinate at a time."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.ravel()
    grad = np.empty_like(flat)

    def loss(z: np.ndarray) -> float:
        return float(np.sum(dy * fun(z.reshape(x.shape))))

    for i in range(flat.size):
        def f(t: np.ndarray, i=i) -> np.ndarray:
            out = np.empty(np.shape(t))
            for idx in np.ndindex(out.shape):
                z = flat.copy()
                z[i] += t[idx]
                out[idx] = loss(z)
            return out

        res = derivative(f, 0.0, initial_step=1e-2)
        assert res.success, f"finite difference did not converge at coordinate {i}"
        grad[i] = res.df
    return grad.reshape(x.shape)


def _unit_matrix(w: np.ndarray, dim: int) -> np.ndarray:
    """w as the (w.shape[dim], rest) matrix, written independently of the library."""
    return np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1)


# ------------------------------------------------------------------------------------------
# weight_norm

WN_CASES = [((5, 4), 0), ((5, 4), 1), ((4, 3, 2, 2), 0), ((4, 3, 2, 2), 1), ((3, 4, 2), 2),
            ((3, 4, 2), None), ((6,), 0)]


@pytest.mark.parametrize("shape,dim", WN_CASES)
def test_weight_norm_matches_torch_weight_norm_and_autograd(xp, shape, dim):
    torch = pytest.importorskip("torch")
    rng = _rng(1)
    v = rng.standard_normal(shape)
    g = rng.standard_normal(_keep_shape(shape, dim) if dim is not None else ())
    dw = rng.standard_normal(shape)
    tv = torch.tensor(v, requires_grad=True)
    tg = torch.tensor(g, requires_grad=True)
    # PyTorch spells "whole tensor" as dim=-1
    tw = torch._weight_norm(tv, tg, -1 if dim is None else dim)
    tw.backward(torch.tensor(dw))

    w, pullback = an.vjp(weight_norm, from_numpy(xp, v), from_numpy(xp, g), dim)
    dv, dg, ddim = pullback(from_numpy(xp, dw))
    assert ddim is None
    assert_close(w, tw.detach().numpy(), xp=xp, dtype=xp.float64)
    assert_close(dv, tv.grad.numpy(), xp=xp, dtype=xp.float64)
    assert_close(dg, tg.grad.numpy(), xp=xp, dtype=xp.float64)


@pytest.mark.parametrize("dim", [0, 1])
def test_weight_norm_matches_torch_parametrization_on_a_conv(xp, dim):
    torch = pytest.importorskip("torch")
    from torch.nn.utils import parametrizations

    conv = torch.nn.Conv2d(3, 4, 2).double()
    parametrizations.weight_norm(conv, dim=dim)
    orig = conv.parametrizations.weight
    g, v = orig.original0, orig.original1
    with torch.no_grad():  # a g that is not ‖v‖, so the scale matters
        g.mul_(torch.linspace(0.5, 2.0, g.numel(), dtype=g.dtype).reshape(g.shape))
    w_t = conv.weight
    dw = _rng(2).standard_normal(tuple(w_t.shape))
    w_t.backward(torch.tensor(dw))

    w, pb = an.vjp(weight_norm, from_numpy(xp, v.detach().numpy()),
                   from_numpy(xp, g.detach().numpy()), dim)
    dv, dg, _ = pb(from_numpy(xp, dw))
    assert_close(w, w_t.detach().numpy(), xp=xp)
    assert_close(dv, v.grad.numpy(), xp=xp)
    assert_close(dg, g.grad.numpy(), xp=xp)


@pytest.mark.parametrize("shape,dtype,scale,flat_g", [
    ((5, 4), "float64", 1.0, False), ((4, 3, 2, 2), "float32", 1.0, True),
    ((64, 300), "float32", 1e20, False), ((6, 7), "float32", 1e-23, True),
    ((4, 3), "float64", 1e200, False), ((4, 3), "float64", 1e-200, False),
])
def test_weight_norm_direct_path_equals_the_general_path(xp, shape, dtype, scale, flat_g):
    """Units along axis 0 (p = 2) take weight_norm's direct path; the general per-unit
    normalizer path (LpScale then the affine) is the oracle: w, dv and dg agree to rounding,
    in dtype and shape too, also for float32 values near 1e20 and 1e-23 (squares past the
    float32 range) and float64 values near 1e±200."""
    from arraynorm.weight.per_unit import _weight_norm

    rng = _rng(4)
    v = scale * rng.standard_normal(shape)
    g = rng.uniform(0.5, 1.5, (shape[0],) if flat_g else _keep_shape(shape, 0))
    dw = rng.standard_normal(shape)
    args = [from_numpy(xp, a, dtype) for a in (v, g)]
    w1, pb1 = _weight_norm(*args, 0)
    w0, pb0 = _weight_norm(*args, 0, direct=False)
    tol = 1e-13 if dtype == "float64" else 5e-7
    for got, want in zip((w1, *pb1(from_numpy(xp, dw, dtype))[:2]), (w0, *pb0(from_numpy(xp, dw, dtype))[:2])):
        got, want = to_numpy(got), to_numpy(want)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.all(np.isfinite(got))
        assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))


@pytest.mark.parametrize("shape,dtype,scale,compiled", [
    ((5, 4), "float64", 1.0, True), ((4, 3, 2, 2), "float32", 1.0, True),
    ((64, 300), "float32", 1e20, True), ((6, 7), "float32", 1e-23, True),
    ((4, 3), "float64", 1e200, False), ((4, 3), "float64", 1e-200, False),
    ((3, 5), "float32", 0.0, False),
])
def test_weight_norm_jit_equals_the_general_path_and_leaves_what_it_cannot_take(
        monkeypatch, shape, dtype, scale, compiled):
    """The numba loops of per-unit weight normalization (numba_jit.unit_scale, its size
    threshold lifted) against the general per-unit path with fast paths off: w, dv and dg agree
    to rounding in value, dtype and shape. float64 units whose squares leave [2^-900, 2^900]
    and units of zeros are left to the NumPy path (the same non-finite w as PyTorch there)."""
    from arraynorm._kernels import numba_jit
    from arraynorm.weight.per_unit import _weight_norm

    if not numba_jit.available():
        pytest.skip("numba (the optional [jit] extra) is not installed")
    monkeypatch.setattr(numba_jit, "MIN_BYTES", 0)
    ran = []
    call = numba_jit._call
    monkeypatch.setattr(numba_jit, "_call", lambda loops, name, *a: (ran.append(name), call(loops, name, *a)))
    rng = _rng(4)
    v = (scale * rng.standard_normal(shape)).astype(dtype)
    g = rng.uniform(0.5, 1.5, shape[0]).astype(dtype)
    dw = rng.standard_normal(shape).astype(dtype)
    with np.errstate(divide="ignore", invalid="ignore"):  # the units of zeros
        w1, pb1 = _weight_norm(v, g, 0)
        got = (w1, *pb1(dw)[:2])
        with an.use_fast_paths(False):
            w0, pb0 = _weight_norm(v, g, 0, direct=False)
            want = (w0, *pb0(dw)[:2])
    assert ran == (["unit_scale_forward", "unit_scale_backward"] if compiled else
                   ["unit_scale_forward"])
    tol = 1e-13 if dtype == "float64" else 5e-7
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype == np.dtype(dtype)
        if scale == 0.0:
            np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
            continue
        assert np.all(np.isfinite(a))
        assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b))


@pytest.mark.parametrize("vdt,gdt", [("float16", "float16"), ("float64", "float32"),
                                     ("float32", "float64")])
def test_weight_norm_cotangents_come_back_in_each_argument_dtype(xp, vdt, gdt):
    """Mixed and half-precision arguments: dv has v's dtype and dg has g's, on the direct path
    as on the general one, with the same values (the general path is the oracle)."""
    from arraynorm.weight.per_unit import _weight_norm

    if vdt == "float16" and not hasattr(xp, "float16"):
        pytest.skip("this namespace has no float16")
    rng = _rng(5)
    v, g = from_numpy(xp, rng.standard_normal((6, 4)), vdt), from_numpy(xp, rng.uniform(0.5, 1.5, 6), gdt)
    dw = from_numpy(xp, rng.standard_normal((6, 4)), vdt)
    (_, p1), (_, p0) = _weight_norm(v, g, 0), _weight_norm(v, g, 0, direct=False)
    for got, want, dt in zip(p1(dw)[:2], p0(dw)[:2], (vdt, gdt)):
        got, want = to_numpy(got), to_numpy(want)
        assert str(got.dtype) == str(want.dtype) == dt
        assert np.max(np.abs(got.astype(np.float64) - want)) <= 2e-3 * np.max(np.abs(want))


def test_weight_norm_accepts_flat_g_and_returns_dg_in_that_shape(xp):
    rng = _rng(3)
    v = rng.standard_normal((3, 4, 2))
    g = rng.standard_normal(4)
    dw = rng.standard_normal(v.shape)
    w_keep, pb_keep = an.vjp(weight_norm, from_numpy(xp, v), from_numpy(xp, g.reshape(1, 4, 1)), 1)
    w_flat, pb_flat = an.vjp(weight_norm, from_numpy(xp, v), from_numpy(xp, g), 1)
    assert_close(w_flat, to_numpy(w_keep), xp=xp)
    dg_keep = to_numpy(pb_keep(from_numpy(xp, dw))[1])
    dg_flat = pb_flat(from_numpy(xp, dw))[1]
    assert tuple(dg_flat.shape) == (4,)
    assert_close(dg_flat, dg_keep.reshape(4), xp=xp)
    # the reference: every slice along dim 1 has norm |g|
    ref = np.linalg.norm(np.moveaxis(to_numpy(w_flat), 1, 0).reshape(4, -1), axis=1)
    np.testing.assert_allclose(ref, np.abs(g), rtol=1e-12)


def test_weight_norm_negative_dim_is_an_ordinary_axis(xp):
    torch = pytest.importorskip("torch")
    rng = _rng(4)
    v, g = rng.standard_normal((3, 4, 5)), rng.standard_normal((1, 1, 5))
    ref = torch._weight_norm(torch.tensor(v), torch.tensor(g), 2).numpy()
    assert_close(weight_norm(from_numpy(xp, v), from_numpy(xp, g), -1), ref, xp=xp)


@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_backward_matches_finite_differences(xp, dim):
    rng = _rng(5)
    v = rng.standard_normal((3, 4))
    g = rng.standard_normal(_keep_shape(v.shape, dim))
    dw = rng.standard_normal(v.shape)
    _, pb = an.vjp(weight_norm, from_numpy(xp, v), from_numpy(xp, g), dim)
    dv, dg, _ = pb(from_numpy(xp, dw))
    assert_close(dv, fd_gradient(lambda z: weight_norm(z, g, dim), v, dw), xp=xp, rtol=1e-7, atol=1e-9)
    assert_close(dg, fd_gradient(lambda z: weight_norm(v, z, dim), g, dw), xp=xp, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------------------------
# centred weight normalization

def _cwn_reference(v, g, dim, eps):
    m = _unit_matrix(v, dim)
    c = m - m.mean(axis=1, keepdims=True)
    w = c / np.sqrt((c ** 2).sum(axis=1, keepdims=True) + eps)
    if g is not None:
        w = w * g.reshape(-1, 1)
    rest = tuple(n for a, n in enumerate(v.shape) if a != dim)
    return np.moveaxis(w.reshape((v.shape[dim],) + rest), 0, dim)


@pytest.mark.parametrize("with_g", [True, False])
@pytest.mark.parametrize("shape,dim", [((4, 3, 2), 0), ((4, 3, 2), 1), ((5, 6), 0)])
def test_centered_weight_norm_matches_reference_and_is_centred_unit_norm(xp, shape, dim, with_g):
    rng = _rng(6)
    v = rng.standard_normal(shape) + 3.0  # an offset the centring must remove
    g = rng.standard_normal(shape[dim]) if with_g else None
    w = centered_weight_norm(from_numpy(xp, v), None if g is None else from_numpy(xp, g), dim)
    assert_close(w, _cwn_reference(v, g, dim, 0.0), xp=xp, dtype=xp.float64)
    m = _unit_matrix(to_numpy(w), dim)
    np.testing.assert_allclose(m.sum(axis=1), 0.0, atol=1e-12)
    scale = np.abs(g) if with_g else np.ones(shape[dim])
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), scale, rtol=1e-12)


@pytest.mark.parametrize("with_g", [True, False])
def test_centered_weight_norm_backward_matches_finite_differences(xp, with_g):
    rng = _rng(7)
    v = rng.standard_normal((3, 2, 2))
    g = rng.standard_normal(3) if with_g else None
    dw = rng.standard_normal(v.shape)
    eps = 0.1  # exercises eps's place in the derivative too
    _, pb = an.vjp(centered_weight_norm, from_numpy(xp, v),
                   None if g is None else from_numpy(xp, g), 0, eps=eps)
    dv, dg, _ = pb(from_numpy(xp, dw))
    fd_v = fd_gradient(lambda z: _cwn_reference(z, g, 0, eps), v, dw)
    assert_close(dv, fd_v, xp=xp, rtol=1e-7, atol=1e-9)
    if with_g:
        assert_close(dg, fd_gradient(lambda z: _cwn_reference(v, z, 0, eps), g, dw), xp=xp,
                     rtol=1e-7, atol=1e-9)
    else:
        assert dg is None


def test_centered_weight_norm_constant_unit_is_finite_with_eps(xp):
    v = np.ones((2, 5))
    v[1] = np.arange(5.0)
    w = to_numpy(centered_weight_norm(from_numpy(xp, v), eps=1e-6))
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w[0], 0.0)


# ------------------------------------------------------------------------------------------
# weight standardization

@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (5, 7), (2, 3, 4)])
def test_weight_standardization_matches_torch_batch_norm_formulation(xp, shape):
    # timm's StdConv2d: batch_norm of w viewed as (1, out, fan-in), training statistics
    torch = pytest.importorskip("torch")
    rng = _rng(8)
    w = rng.standard_normal(shape) * 0.1 + 0.05
    dy = rng.standard_normal(shape)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.batch_norm(tw.reshape(1, shape[0], -1), None, None,
                                        training=True, momentum=0.0, eps=1e-5).reshape(shape)
    ty.backward(torch.tensor(dy))
    y, pb = an.vjp(weight_standardization, from_numpy(xp, w))
    (dw,) = pb(from_numpy(xp, dy))
    assert_close(y, ty.detach().numpy(), xp=xp, dtype=xp.float64)
    assert_close(dw, tw.grad.numpy(), xp=xp, dtype=xp.float64)


def test_weight_standardization_reference_and_finite_differences(xp):
    rng = _rng(9)
    w = rng.standard_normal((3, 2, 3))
    dy = rng.standard_normal(w.shape)
    eps = 1e-3

    def ref(z):
        m = z.reshape(z.shape[0], -1)
        mu = m.mean(axis=1, keepdims=True)
        var = ((m - mu) ** 2).mean(axis=1, keepdims=True)  # biased, eps inside the root
        return ((m - mu) / np.sqrt(var + eps)).reshape(z.shape)

    y, pb = an.vjp(weight_standardization, from_numpy(xp, w), eps=eps)
    assert_close(y, ref(w), xp=xp)
    assert_close(pb(from_numpy(xp, dy))[0], fd_gradient(ref, w, dy), xp=xp, rtol=1e-7, atol=1e-9)


def test_weight_standardization_constant_channel_is_zero_not_nan(xp):
    w = np.zeros((2, 3, 2))
    w[1] = np.arange(6.0).reshape(3, 2)
    y = to_numpy(weight_standardization(from_numpy(xp, w)))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[0], 0.0)


# ------------------------------------------------------------------------------------------
# spectral normalization (power iteration)

def _torch_spectral_module(torch, w: np.ndarray, n_it: int, dim: int):
    from torch.nn.utils import parametrizations

    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(torch.tensor(w))
    parametrizations.spectral_norm(m, "weight", n_power_iterations=n_it, dim=dim)
    return m, m.parametrizations.weight[0], m.parametrizations.weight.original


@pytest.mark.parametrize("n_it", [1, 3])
@pytest.mark.parametrize("shape,dim", [((5, 3), 0), ((4, 3, 2, 2), 0), ((3, 4, 2, 2), 1)])
def test_spectral_norm_matches_torch_parametrization_and_autograd(xp, shape, dim, n_it):
    torch = pytest.importorskip("torch")
    rng = _rng(10)
    w = rng.standard_normal(shape)
    m, sn, orig = _torch_spectral_module(torch, w, n_it, dim)
    # feed PyTorch the same u: a fresh random one, with its _v = N(Wᵀu) as after construction
    u0 = rng.standard_normal(shape[dim])
    u0 /= np.linalg.norm(u0)
    mat = torch.tensor(_unit_matrix(w, dim))
    with torch.no_grad():
        sn._u.copy_(torch.tensor(u0))
        sn._v.copy_(torch.nn.functional.normalize(mat.T @ sn._u, dim=0, eps=1e-12))
    m.train()
    w_t = m.weight
    dw = rng.standard_normal(shape)
    w_t.backward(torch.tensor(dw))

    (w_sn, u_new), pb = an.vjp(spectral_norm, from_numpy(xp, w), from_numpy(xp, u0),
                               n_power_iterations=n_it, dim=dim)
    dweight, du = pb((from_numpy(xp, dw), None))
    assert du is None
    assert_close(w_sn, w_t.detach().numpy(), xp=xp, dtype=xp.float64)
    assert_close(u_new, sn._u.numpy(), xp=xp, dtype=xp.float64)
    assert_close(dweight, orig.grad.numpy(), xp=xp, dtype=xp.float64)


def test_spectral_norm_continues_torch_state_after_construction(xp):
    # PyTorch's constructor runs 15 iterations; its _u is then all the state we need
    torch = pytest.importorskip("torch")
    w = _rng(11).standard_normal((6, 4))
    m, sn, _ = _torch_spectral_module(torch, w, 2, 0)
    u_init = sn._u.detach().clone().numpy()
    m.train()
    w_t = m.weight.detach().numpy()
    w_sn, u_new = spectral_norm(from_numpy(xp, w), from_numpy(xp, u_init), n_power_iterations=2)
    assert_close(w_sn, w_t, xp=xp)
    assert_close(u_new, sn._u.numpy(), xp=xp)


def test_spectral_norm_zero_iterations_is_torch_eval_mode(xp):
    torch = pytest.importorskip("torch")
    w = _rng(12).standard_normal((4, 5))
    m, sn, _ = _torch_spectral_module(torch, w, 1, 0)
    m.eval()
    w_t = m.weight.detach().numpy()
    u = sn._u.detach().numpy()
    w_sn, u_new = spectral_norm(from_numpy(xp, w), from_numpy(xp, u), n_power_iterations=0)
    assert_close(w_sn, w_t, xp=xp)
    assert_close(u_new, u, xp=xp)


def test_spectral_norm_of_a_vector_is_torch_normalize(xp):
    torch = pytest.importorskip("torch")
    w = _rng(13).standard_normal(7)
    dw = _rng(14).standard_normal(7)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.normalize(tw, dim=0, eps=1e-12)
    ty.backward(torch.tensor(dw))
    (y, u_new), pb = an.vjp(spectral_norm, from_numpy(xp, w), None)
    assert u_new is None
    assert_close(y, ty.detach().numpy(), xp=xp)
    assert_close(pb((from_numpy(xp, dw), None))[0], tw.grad.numpy(), xp=xp)


def test_spectral_norm_backward_is_the_derivative_with_u_v_frozen(xp):
    rng = _rng(15)
    w = rng.standard_normal((4, 3))
    u0 = rng.standard_normal(4)
    dw = rng.standard_normal(w.shape)
    (_, u_new), pb = an.vjp(spectral_norm, from_numpy(xp, w), from_numpy(xp, u0),
                            n_power_iterations=2)
    u = to_numpy(u_new)
    v = w.T @ u / np.linalg.norm(w.T @ u)  # the documented final v, from the final u
    frozen = lambda z: z / (u @ z @ v)  # noqa: E731
    assert_close(pb((from_numpy(xp, dw), None))[0], fd_gradient(frozen, w, dw), xp=xp,
                 rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("shape,dtype", [((300, 257), "float32"), ((300, 257), "float64"),
                                         ((130, 64, 3, 3), "float32")])
def test_spectral_norm_backward_in_row_blocks_equals_the_whole_array_formula(monkeypatch, shape, dtype):
    """Large C-ordered NumPy weights (unit axis first) take the pullback in blocks of rows
    (whose temporaries stay in cache; the last block partial here): per element the same
    operations as the whole-array formula, which runs with the fast paths off — only the
    sum Σ dw·w is added in another order — and equal to the float64 closed form with the
    final u, v frozen, dW = dw/σ − (Σ dw·W)/σ² · u vᵀ."""
    from arraynorm.weight import spectral

    calls = []
    blocked = spectral._pullback_in_row_blocks
    monkeypatch.setattr(spectral, "_pullback_in_row_blocks",
                        lambda *a: calls.append(1) or blocked(*a))
    rng = _rng(40)
    w = rng.standard_normal(shape).astype(dtype)
    u0 = rng.standard_normal(shape[0]).astype(dtype)
    dw = rng.standard_normal(shape).astype(dtype)
    (w_sn, u_new), pb = an.vjp(an.spectral_norm, w, u0, n_power_iterations=2)
    got = pb((dw, None))[0]
    assert len(calls) == 1 and got.dtype == w.dtype and got.shape == w.shape
    with an.use_fast_paths(False):
        ref = an.vjp(an.spectral_norm, w, u0, n_power_iterations=2)[1]((dw, None))[0]
    assert len(calls) == 1
    tol = 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
    mat, dmat = w.reshape(shape[0], -1).astype(np.float64), dw.reshape(shape[0], -1).astype(np.float64)
    u = u_new.astype(np.float64) / np.linalg.norm(u_new.astype(np.float64))
    v = mat.T @ u / np.linalg.norm(mat.T @ u)
    sigma = u @ mat @ v
    exact = dmat / sigma - (dmat * mat).sum() / sigma ** 2 * np.outer(u, v)
    assert np.abs(got.reshape(exact.shape) - exact).max() <= 50 * tol * np.abs(exact).max()


def test_spectral_norm_converged_gradient_is_the_exact_one(xp):
    # after convergence u, v are the top singular pair, where ∂σ/∂W = u vᵀ exactly
    rng = _rng(16)
    # singular values 2, 0.5, 0.2: each iteration shrinks u's error by (0.5/2)² = 1/16, so 30
    # reach rounding (a random W's gap needed 200, a 40 s graph on Dask)
    left, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    right, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    w = left[:, :3] @ np.diag([2.0, 0.5, 0.2]) @ right.T
    dw = rng.standard_normal(w.shape)
    u0 = rng.standard_normal(4)
    _, pb = an.vjp(spectral_norm, from_numpy(xp, w), from_numpy(xp, u0), n_power_iterations=30)
    exact = lambda z: z / scipy.linalg.svdvals(z)[0]  # noqa: E731
    assert_close(pb((from_numpy(xp, dw), None))[0], fd_gradient(exact, w, dw), xp=xp,
                 rtol=1e-6, atol=1e-8)


def test_spectral_norm_estimate_never_exceeds_the_largest_singular_value(xp):
    rng = _rng(17)
    for trial in range(6):
        w = rng.standard_normal((5, 4)) * rng.uniform(0.1, 10.0)
        u0 = rng.standard_normal(5)
        sigma = scipy.linalg.svdvals(w)[0]
        for k in (0, 1, 3):
            w_sn, _ = spectral_norm(from_numpy(xp, w), from_numpy(xp, u0), n_power_iterations=k)
            est = np.median(w / to_numpy(w_sn))
            assert est <= sigma * (1 + 1e-12), (trial, k, est, sigma)


def test_spectral_norm_converges_at_the_rate_the_spectral_gap_predicts(xp):
    rng = _rng(18)
    s = np.array([1.0, 0.6, 0.3, 0.2, 0.1])
    left, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    right, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    w = left[:, :5] @ np.diag(s) @ right.T
    sv = scipy.linalg.svdvals(w)
    u1 = scipy.linalg.svd(w)[0][:, 0]
    u0 = rng.standard_normal(6)
    err, sin = [], []
    for k in range(1, 8):
        w_sn, u_k = spectral_norm(from_numpy(xp, w), from_numpy(xp, u0), n_power_iterations=k)
        err.append(sv[0] - np.median(w / to_numpy(w_sn)))
        uk = to_numpy(u_k)
        sin.append(np.sqrt(max(0.0, 1.0 - (uk @ u1) ** 2)))
    err, sin = np.array(err), np.array(sin)
    assert np.all(err >= -1e-14)
    gap = sv[1] / sv[0]
    # σ's error is quadratic in u's: (σ₂/σ₁)^4 per iteration, u's direction (σ₂/σ₁)^2
    np.testing.assert_allclose(err[3:] / err[2:-1], gap ** 4, rtol=0.1)
    np.testing.assert_allclose(sin[3:] / sin[2:-1], gap ** 2, rtol=0.1)


def test_spectral_norm_init_u_is_a_reproducible_unit_normal_draw(xp):
    w = from_numpy(xp, _rng(19).standard_normal((6, 3)))
    u = spectral_norm_init_u(w, 42)
    expected = np.random.default_rng(42).standard_normal(6)
    assert_close(u, expected / np.linalg.norm(expected), xp=xp, dtype=w.dtype)
    u_gen = spectral_norm_init_u(w, np.random.default_rng(42))
    assert_close(u_gen, to_numpy(u), xp=xp)
    # warm-up iterations move it towards the top left singular vector
    top = scipy.linalg.svd(to_numpy(w))[0][:, 0]
    warm = to_numpy(spectral_norm_init_u(w, 42, n_power_iterations=50))
    assert abs(warm @ top) > 1 - 1e-10


# ------------------------------------------------------------------------------------------
# exact spectral normalization

def _single_chunked(xp, a):
    """Dask's SVD needs a matrix chunked along one axis only: give it one chunk."""
    if backend_name(xp) == "dask":
        return a.rechunk(a.shape)
    return a


@pytest.mark.parametrize("shape,dim", [((5, 3), 0), ((3, 5), 0), ((4, 3, 2), 1), ((6,), 0)])
def test_spectral_norm_exact_matches_scipy_and_finite_differences(xp, shape, dim):
    rng = _rng(20)
    w = rng.standard_normal(shape)
    dw = rng.standard_normal(shape)
    exact = lambda z: z / scipy.linalg.svdvals(_unit_matrix(z, dim))[0]  # noqa: E731
    wx = _single_chunked(xp, from_numpy(xp, w))
    y, pb = an.vjp(spectral_norm_exact, wx, dim=dim)
    assert_close(y, exact(w), xp=xp, dtype=xp.float64)
    assert_close(spectral_norm_exact(wx, dim=dim), exact(w), xp=xp)
    assert_close(pb(from_numpy(xp, dw))[0], fd_gradient(exact, w, dw), xp=xp, rtol=1e-7, atol=1e-9)


def test_spectral_norm_exact_backward_matches_torch_autograd(xp):
    torch = pytest.importorskip("torch")
    rng = _rng(21)
    w, dw = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 2))
    tw = torch.tensor(w, requires_grad=True)
    ty = tw / torch.linalg.matrix_norm(tw.reshape(3, -1), ord=2)
    ty.backward(torch.tensor(dw))
    _, pb = an.vjp(spectral_norm_exact, _single_chunked(xp, from_numpy(xp, w)))
    assert_close(pb(from_numpy(xp, dw))[0], tw.grad.numpy(), xp=xp)


def test_spectral_norm_exact_on_chunked_dask_raises_not_implemented():
    da = pytest.importorskip("dask.array")
    w = da.from_array(_rng(22).standard_normal((6, 4)), chunks=(3, 2))
    with pytest.raises(NotImplementedError, match="spectral_norm_exact: the dask backend"):
        spectral_norm_exact(w)
    with pytest.raises(NotImplementedError, match="dask"):
        an.vjp(spectral_norm_exact, w)


# ------------------------------------------------------------------------------------------
# precision policy and laziness

@pytest.mark.parametrize("fn", ["weight_norm", "centered_weight_norm", "weight_standardization",
                                "spectral_norm", "spectral_norm_exact"])
def test_float16_is_computed_in_float32_and_cast_back(xp, fn):
    if backend_name(xp) == "array_api_strict":
        pytest.skip("the array API standard (array_api_strict) has no float16")
    rng = _rng(23)
    w64 = rng.standard_normal((4, 3, 2)).astype(np.float16).astype(np.float64)
    u = rng.standard_normal(4)
    w16 = _single_chunked(xp, from_numpy(xp, w64, "float16"))
    args = {
        "weight_norm": lambda f, w: weight_norm(w, f(np.full((4, 1, 1), 2.0))),
        "centered_weight_norm": lambda f, w: centered_weight_norm(w),
        "weight_standardization": lambda f, w: weight_standardization(w),
        "spectral_norm": lambda f, w: spectral_norm(w, f(u), n_power_iterations=2)[0],
        "spectral_norm_exact": lambda f, w: spectral_norm_exact(w),
    }[fn]
    y16 = args(lambda a: from_numpy(xp, a, "float16"), w16)
    y64 = args(lambda a: a, w64)
    assert y16.dtype == w16.dtype and to_numpy(y16).dtype == np.float16
    np.testing.assert_allclose(to_numpy(y16).astype(np.float64), y64, rtol=2e-3, atol=2e-3)


def test_dask_stays_lazy():
    da = pytest.importorskip("dask.array")
    rng = _rng(24)
    v = da.from_array(rng.standard_normal((4, 6)), chunks=(2, 3))
    g = da.from_array(rng.standard_normal(4), chunks=2)
    u = da.from_array(rng.standard_normal(4), chunks=2)
    outs = [weight_norm(v, g), centered_weight_norm(v, g), weight_standardization(v),
            *spectral_norm(v, u, n_power_iterations=2)]
    assert all(isinstance(o, da.Array) for o in outs)


# ------------------------------------------------------------------------------------------
# errors

def test_errors_name_the_function_and_argument(xp):
    v = from_numpy(xp, np.ones((3, 4)))
    g = from_numpy(xp, np.ones(3))
    u = from_numpy(xp, np.ones(3) / np.sqrt(3))
    ints = from_numpy(xp, np.ones((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=r"weight_norm: dim=2 is out of range"):
        weight_norm(v, g, 2)
    with pytest.raises(ValueError, match=r"weight_norm: g must have shape \(3, 1\).*got \(4,\)"):
        weight_norm(v, from_numpy(xp, np.ones(4)), 0)
    with pytest.raises(TypeError, match=r"weight_norm: v must have a real floating dtype"):
        weight_norm(ints, g)
    with pytest.raises(TypeError, match=r"weight_norm: dim must be an int"):
        weight_norm(v, g, 0.5)
    with pytest.raises(ValueError, match=r"weight_norm: v must have at least 1 dimension"):
        weight_norm(from_numpy(xp, np.asarray(1.0)), from_numpy(xp, np.asarray(1.0)), None)
    with pytest.raises(ValueError, match=r"centered_weight_norm: eps must be >= 0"):
        centered_weight_norm(v, eps=-1.0)
    with pytest.raises(TypeError, match=r"centered_weight_norm: g must have a real floating"):
        centered_weight_norm(v, from_numpy(xp, np.ones(3, dtype=np.int64)))
    with pytest.raises(ValueError, match=r"weight_standardization: w must have at least 2"):
        weight_standardization(from_numpy(xp, np.ones(4)))
    with pytest.raises(ValueError, match=r"weight_standardization: eps must be >= 0"):
        weight_standardization(v, eps=-1e-5)
    with pytest.raises(ValueError, match=r"spectral_norm: n_power_iterations must be >= 0, got -1"):
        spectral_norm(v, u, n_power_iterations=-1)
    with pytest.raises(TypeError, match=r"spectral_norm: n_power_iterations must be an int"):
        spectral_norm(v, u, n_power_iterations=1.0)
    with pytest.raises(ValueError, match=r"spectral_norm: eps must be >= 0"):
        spectral_norm(v, u, eps=-1.0)
    with pytest.raises(ValueError, match=r"spectral_norm: eps must be finite"):
        spectral_norm(v, u, eps=float("nan"))
    with pytest.raises(ValueError, match=r"spectral_norm: u must have shape \(4,\).*got \(3,\)"):
        spectral_norm(v, u, dim=1)
    with pytest.raises(ValueError, match=r"spectral_norm: dim=-3 is out of range"):
        spectral_norm(v, u, dim=-3)
    with pytest.raises(TypeError, match=r"spectral_norm: u must be an array of shape \(3,\)"):
        spectral_norm(v, None)
    with pytest.raises(TypeError, match=r"spectral_norm: weight must have a real floating"):
        spectral_norm(ints, u)
    with pytest.raises(TypeError, match=r"spectral_norm_exact: weight must have a real floating"):
        spectral_norm_exact(ints)
    with pytest.raises(TypeError, match=r"spectral_norm_init_u: seed must be an int"):
        spectral_norm_init_u(v, None)


def test_mixed_namespaces_are_named():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"weight_norm: g is a torch array but v is a numpy array"):
        weight_norm(np.ones((2, 3)), torch.ones(2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"spectral_norm: u is a torch array but weight is a numpy"):
        spectral_norm(np.ones((2, 3)), torch.ones(2, dtype=torch.float64))


def test_pullback_rejects_cotangent_of_wrong_shape():
    _, pb = an.vjp(weight_norm, np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match=r"weight_norm pullback: dy must have the output's shape"):
        pb(np.ones((3, 2)))

