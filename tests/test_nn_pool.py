"""Pooling layers and Flatten: forward, backward and JVP against PyTorch and finite differences.

Oracles: ``torch.nn.functional.max_pool2d`` / ``avg_pool2d`` / ``adaptive_avg_pool2d`` and
``torch.flatten`` with torch autograd (CPU, float64); central differences of each layer's own
forward for the JVP (max pooling on inputs whose window maxima are separated by more than the
step, so the difference quotient is exact up to rounding); <J v, u> = <v, Jᵀ u> between the JVP
and the backward pass.
"""

from __future__ import annotations

import numpy as np
import pytest

import arraynorm.nn as nn
from _helpers import DaskComputeCounter, assert_close, from_numpy, to_numpy

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch

RTOL = 1e-12


def assert_rel(got, ref, rtol: float = RTOL, name: str = "") -> None:
    """max|got − ref| <= rtol · max|ref|."""
    got = np.asarray(to_numpy(got), dtype=np.float64)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} vs {ref.shape}"
    err = float(np.max(np.abs(got - ref)))
    assert err <= rtol * float(np.max(np.abs(ref))), f"{name}: max error {err:.3e}"


def _torch_grads(f, x, dy):
    xt = torch.tensor(x, requires_grad=True)
    yt = f(xt)
    yt.backward(torch.tensor(dy))
    return yt, xt.grad


# (kernel, stride, padding, dilation)
MAX_CASES = [(2, None, 0, 1), (3, 2, 1, 1), ((2, 3), (1, 2), (1, 1), (2, 1)), (3, 1, 1, 2),
             ((3, 1), (2, 1), (1, 0), 1), (2, 3, 0, 1)]
# (kernel, stride, padding, count_include_pad)
AVG_CASES = [(2, None, 0, True), (3, 2, 1, True), (3, 2, 1, False), ((2, 3), (1, 2), (1, 1), False),
             ((3, 1), 1, (1, 0), True), (2, 3, 0, True)]


@pytest.mark.parametrize("case", MAX_CASES, ids=str)
def test_max_pool_forward_and_gradient_match_torch(xp, case):
    k, s, p, d = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8))
    layer = nn.MaxPool2d(k, s, p, d)
    xb = from_numpy(xp, x)
    y = layer(xb)
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(from_numpy(xp, dy))
    yt, gt = _torch_grads(lambda t: F.max_pool2d(t, k, s, p, d), x, dy)
    assert_close(y, yt.detach().numpy(), xp=xp, dtype=xb.dtype, rtol=0, atol=0)
    assert_rel(dx, gt, name="dx")


@pytest.mark.parametrize("case", AVG_CASES, ids=str)
def test_avg_pool_forward_and_gradient_match_torch(xp, case):
    k, s, p, cip = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 8))
    layer = nn.AvgPool2d(k, s, p, count_include_pad=cip)
    xb = from_numpy(xp, x)
    y = layer(xb)
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(from_numpy(xp, dy))
    yt, gt = _torch_grads(lambda t: F.avg_pool2d(t, k, s, p, count_include_pad=cip), x, dy)
    assert_close(y, yt.detach().numpy(), xp=xp, dtype=xb.dtype)
    assert_rel(y, yt, name="y")
    assert_rel(dx, gt, name="dx")


@pytest.mark.parametrize("x", [np.ones((1, 2, 5, 5)),
                               np.round(np.random.default_rng(2).standard_normal((2, 2, 6, 5)))],
                         ids=["constant", "many-ties"])
def test_max_pool_ties_send_the_gradient_where_torch_does(xp, x):
    # overlapping windows (stride 1, padding 1): each tie is decided, then summed, as in torch
    layer = nn.MaxPool2d(3, 1, 1)
    y = layer(from_numpy(xp, x))
    dy = np.random.default_rng(3).standard_normal(tuple(y.shape))
    dx = layer.backward(from_numpy(xp, dy))
    _, gt = _torch_grads(lambda t: F.max_pool2d(t, 3, 1, 1), x, dy)
    assert_rel(dx, gt, name="dx at ties")


def test_global_avg_pool_and_flatten_match_torch(xp):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5, 6))
    gap, flat = nn.GlobalAvgPool2d(), nn.Flatten()
    xb = from_numpy(xp, x)
    y = gap(xb)
    dy = rng.standard_normal((3, 4))
    yt, gt = _torch_grads(lambda t: F.adaptive_avg_pool2d(t, 1).flatten(1), x, dy)
    assert_close(y, yt.detach().numpy(), xp=xp, dtype=xb.dtype)
    assert_rel(y, yt, name="gap y")
    assert_rel(gap.backward(from_numpy(xp, dy)), gt, name="gap dx")
    f = flat(xb)
    df = rng.standard_normal((3, 120))
    ft, fgt = _torch_grads(lambda t: torch.flatten(t, 1), x, df)
    assert_close(f, ft.detach().numpy(), xp=xp, rtol=0, atol=0)
    assert_close(flat.backward(from_numpy(xp, df)), fgt.numpy(), xp=xp, rtol=0, atol=0)
    assert tuple(nn.Flatten(1, 2)(xb).shape) == (3, 20, 6)


def _separated(rng, shape):
    """Distinct values 0.1 apart, shuffled: window maxima win by >= 0.1."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.1 - 0.05 * n).reshape(shape)


JVP_LAYERS = [lambda: nn.MaxPool2d(3, 2, 1), lambda: nn.MaxPool2d((2, 3), 1, (1, 1), (2, 1)),
              lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), lambda: nn.AvgPool2d(2),
              lambda: nn.GlobalAvgPool2d(), lambda: nn.Flatten()]


@pytest.mark.parametrize("make", JVP_LAYERS, ids=["max", "max-dilated", "avg-nopad", "avg", "gap", "flatten"])
def test_pool_jvp_matches_central_differences_and_is_adjoint_to_backward(xp, make):
    rng = np.random.default_rng(5)
    x = _separated(rng, (2, 3, 7, 6))
    v = rng.uniform(-1, 1, x.shape)
    layer = make()
    step = 0.02  # 2·step·|v| < 0.1: no window changes its argmax between x ± step·v
    fd = (to_numpy(layer(from_numpy(xp, x + step * v)))
          - to_numpy(layer(from_numpy(xp, x - step * v)))) / (2 * step)
    y = layer(from_numpy(xp, x))
    jv = layer.jvp(from_numpy(xp, v))
    assert_close(jv, fd, xp=xp, rtol=0, atol=1e-12 * np.abs(fd).max())
    u = rng.standard_normal(tuple(y.shape))
    vjp = to_numpy(layer.backward(from_numpy(xp, u)))
    lhs, rhs = float(np.sum(to_numpy(jv) * u)), float(np.sum(v * vjp))
    assert abs(lhs - rhs) <= RTOL * np.linalg.norm(to_numpy(jv)) * np.linalg.norm(u)


def test_max_pool_jvp_uses_the_forward_argmax_and_leaves_the_cache_alone():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 6, 6))
    layer = nn.MaxPool2d(2)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx_ref = layer.backward(dy)
    np.testing.assert_array_equal(layer.jvp(x), y)  # max pooling is positively homogeneous
    np.testing.assert_array_equal(layer.backward(dy), dx_ref)
    with pytest.raises(RuntimeError, match="forward has not been called"):
        nn.MaxPool2d(2).jvp(x)


def test_pooling_stays_lazy_on_dask():
    da = pytest.importorskip("dask.array")
    x = da.from_array(np.random.default_rng(7).standard_normal((4, 2, 6, 6)), chunks=(2, 1, 3, 3))
    with DaskComputeCounter() as c:
        outs = []
        for layer in (nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
                      nn.GlobalAvgPool2d()):
            y = layer(x)
            outs.append(layer.backward(da.ones_like(y)))
            outs.append(layer.jvp(x))
    assert c.n == 0
    assert all(np.isfinite(o.compute()).all() for o in outs)


@pytest.mark.parametrize("backend", ["numpy", "torch", "dask"])  # array_api_strict has no float16
def test_avg_pool_float16_is_accumulated_in_float32(backend):
    from array_api_compat import array_namespace
    import importlib

    mod = importlib.import_module({"dask": "dask.array"}.get(backend, backend))
    xp = array_namespace(mod.zeros(1))
    x16 = (1000.0 + np.random.default_rng(8).uniform(0, 1, (1, 1, 64, 64))).astype(np.float16)
    x = from_numpy(xp, x16, "float16")
    # float16 sums of values near 1000 round to 32 beyond 32768 (and overflow past 65504):
    # accumulated in float32, each mean is the float16 rounding of the exact one (±0.25 here)
    y = nn.AvgPool2d(8)(x)
    ref = x16.astype(np.float64).reshape(1, 1, 8, 8, 8, 8).mean(axis=(3, 5))
    assert_close(y, ref, xp=xp, dtype=x.dtype, rtol=0, atol=0.25)
    y = nn.GlobalAvgPool2d()(x)
    assert_close(y, x16.astype(np.float64).mean(axis=(2, 3)), xp=xp, dtype=x.dtype, rtol=0, atol=0.25)


BAD_POOL = [
    (lambda: nn.MaxPool2d(3, padding=2), ValueError, r"padding must be at most half the \(dilated\) kernel size \(3, 3\)"),
    (lambda: nn.AvgPool2d(2, padding=(0, 2)), ValueError, "padding must be at most half"),
    (lambda: nn.MaxPool2d(0), ValueError, "MaxPool2d: kernel_size must be >= 1"),
    (lambda: nn.AvgPool2d(2, stride=(1, 0)), ValueError, "AvgPool2d: stride must be >= 1"),
    (lambda: nn.MaxPool2d("2"), TypeError, "kernel_size must be an int or a pair of ints"),
    (lambda: nn.MaxPool2d(2)(np.ones((2, 4, 4))), ValueError, r"MaxPool2d.forward: x must have shape \(N, C, H, W\) \(rank 4\)"),
    (lambda: nn.AvgPool2d(5)(np.ones((1, 1, 4, 6))), ValueError, "larger than the padded input"),
    (lambda: nn.MaxPool2d(2)(np.ones((1, 1, 4, 4), dtype=np.int32)), TypeError, "real floating dtype"),
    (lambda: nn.GlobalAvgPool2d()(np.ones((2, 3))), ValueError, "GlobalAvgPool2d.forward: x must have shape"),
    (lambda: nn.GlobalAvgPool2d()(np.ones((1, 1, 2, 2), dtype=bool)), TypeError, "real floating dtype"),
    (lambda: nn.Flatten(2, 1)(np.ones((2, 3, 4))), ValueError, "Flatten.forward: start_dim=2, end_dim=1"),
    (lambda: nn.Flatten(1, 5)(np.ones((2, 3, 4))), ValueError, "do not name axes"),
    (lambda: nn.Flatten(1.0), TypeError, "Flatten: start_dim must be an int"),
    (lambda: _after_forward(nn.MaxPool2d(2), (1, 1, 4, 4)).backward(np.ones((1, 1, 4, 4))), ValueError,
     r"MaxPool2d.backward: dy must have the output's shape \(1, 1, 2, 2\)"),
    (lambda: _after_forward(nn.MaxPool2d(2), (1, 1, 4, 4)).jvp(np.ones((1, 1, 6, 6))), ValueError,
     r"MaxPool2d.jvp: dx must have the input's shape \(1, 1, 4, 4\), got \(1, 1, 6, 6\)"),
    (lambda: _after_forward(nn.AvgPool2d(2), (1, 1, 4, 4)).backward(np.ones((1, 2, 2))), ValueError,
     r"AvgPool2d.backward: dy must have the output's shape \(1, 1, 2, 2\), got \(1, 2, 2\)"),
    (lambda: _after_forward(nn.GlobalAvgPool2d(), (2, 3, 4, 4)).backward(np.ones((2, 3, 1, 1))), ValueError,
     r"GlobalAvgPool2d.backward: dy must have the output's shape \(2, 3\)"),
]


def _after_forward(layer, shape):
    layer(np.ones(shape))
    return layer


@pytest.mark.parametrize("make, exc, msg", BAD_POOL, ids=[m for _, _, m in BAD_POOL])
def test_pooling_bad_arguments_get_clear_errors(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()
