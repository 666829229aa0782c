"""Conv2d and cnn_stack: forward, backward and JVP against PyTorch and finite differences.

Oracles: ``torch.nn.functional.conv2d`` and torch autograd (CPU, float64) for the forward and
every gradient; central differences of the layer's own forward for the JVP; the inner-product
identity <J v, u> = <v, Jᵀ u> tying the JVP to the backward pass. The small CNN is mirrored in
``torch.nn`` with copied weights (BatchNorm in train mode) and compared end to end.
"""

from __future__ import annotations

import numpy as np
import pytest

import arraynorm.nn as nn
from arraynorm.optim import SGD
from _helpers import DaskComputeCounter, assert_close, backend_name, from_numpy, to_numpy

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch

RTOL = 1e-12  # float64, relative to the largest reference magnitude of each array


def _t(a) -> "torch.Tensor":
    return torch.tensor(np.asarray(to_numpy(a)), dtype=torch.float64)


def assert_rel(got, ref, rtol: float = RTOL, name: str = "") -> None:
    """max|got − ref| <= rtol · max|ref| (the error relative to the array's scale)."""
    got = np.asarray(to_numpy(got), dtype=np.float64)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} vs {ref.shape}"
    err = float(np.max(np.abs(got - ref)))
    scale = float(np.max(np.abs(ref)))
    assert err <= rtol * scale + 1e-300, f"{name}: max error {err:.3e}, scale {scale:.3e}"


# (in, out, kernel, stride, padding, dilation, groups, bias, (H, W))
CONV_CASES = [
    (3, 4, 3, 1, 0, 1, 1, True, (7, 6)),
    (3, 4, 3, 1, 1, 1, 1, False, (6, 6)),
    (4, 6, (2, 3), (2, 1), (1, 0), 1, 2, True, (8, 7)),          # non-square, groups
    (4, 4, 3, 2, 1, 2, 4, True, (9, 9)),                        # depthwise, dilated, strided
    (2, 3, (3, 1), 1, "same", (2, 1), 1, True, (5, 6)),
    (2, 3, 4, 1, "same", 1, 1, False, (5, 5)),                  # even kernel: padding 1 + 2
    (3, 2, 1, 1, 0, 1, 1, True, (4, 5)),                        # 1x1
    (6, 4, (3, 2), (3, 2), (2, 1), (1, 2), 2, True, (10, 9)),
    (2, 4, 5, 1, "valid", 1, 1, True, (5, 5)),                  # one output pixel
    (3, 3, 2, 3, 0, 1, 1, True, (7, 8)),                        # stride > kernel: skipped pixels
    (4, 12, 3, 2, 0, 1, 2, True, (5, 5)),   # O/G = 6 > H_out W_out = 4: dW by one matmul over N·HW
]


def _case_id(c) -> str:
    i, o, k, s, p, d, g, b, hw = c
    return f"c{i}-{o}_k{k}_s{s}_p{p}_d{d}_g{g}_{'b' if b else 'nob'}_{hw[0]}x{hw[1]}".replace(" ", "")


def _layer(case, rng=0, xp=None):
    i, o, k, s, p, d, g, b, _ = case
    layer = nn.Conv2d(i, o, k, stride=s, padding=p, dilation=d, groups=g, bias=b,
                      init="uniform", rng=rng)
    return layer if xp is None else layer.to(xp)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", CONV_CASES, ids=_case_id)
def test_conv2d_forward_and_gradients_match_torch(xp, case):
    i, o, k, s, p, d, g, b, (h, w) = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, i, h, w))
    layer = _layer(case, xp=xp)
    xb = from_numpy(xp, x)
    y = layer(xb)
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(from_numpy(xp, dy))

    xt = torch.tensor(x, requires_grad=True)
    wt = _t(layer.weight).requires_grad_(True)
    bt = _t(layer.bias).requires_grad_(True) if b else None
    yt = F.conv2d(xt, wt, bt, stride=s, padding=p, dilation=d, groups=g)
    yt.backward(torch.tensor(dy))

    assert_close(y, yt.detach().numpy(), xp=xp, dtype=xb.dtype)  # namespace, dtype, shape
    assert_rel(y, yt, name="y")
    assert_rel(dx, xt.grad, name="dx")
    assert_rel(layer.grads["weight"], wt.grad, name="dweight")
    if b:
        assert_rel(layer.grads["bias"], bt.grad, name="dbias")
    else:
        assert "bias" not in layer.grads


@pytest.mark.parametrize("case", CONV_CASES[2:6], ids=_case_id)
def test_conv2d_jvp_matches_central_differences_and_is_adjoint_to_backward(xp, case):
    i, o, k, s, p, d, g, b, (h, w) = case
    rng = np.random.default_rng(2)
    x, v = rng.standard_normal((1, i, h, w)), rng.standard_normal((1, i, h, w))  # batch of one
    layer = _layer(case, xp=xp)
    xb, vb = from_numpy(xp, x), from_numpy(xp, v)
    step = 0.5  # the map is affine in x: a central difference is exact up to rounding
    fd = (to_numpy(layer(from_numpy(xp, x + step * v)))
          - to_numpy(layer(from_numpy(xp, x - step * v)))) / (2 * step)
    y = layer(xb)
    jv = layer.jvp(vb)
    assert_close(jv, fd, xp=xp, dtype=xb.dtype, rtol=0, atol=RTOL * np.abs(fd).max())
    u = rng.standard_normal(tuple(y.shape))
    vjp = to_numpy(layer.backward(from_numpy(xp, u)))
    lhs, rhs = float(np.sum(to_numpy(jv) * u)), float(np.sum(v * vjp))
    assert abs(lhs - rhs) <= RTOL * np.linalg.norm(to_numpy(jv)) * np.linalg.norm(u)


@pytest.mark.parametrize("case", CONV_CASES, ids=_case_id)
def test_in_place_and_functional_window_scatter_agree(case):
    # the col2im behind every backward: writes into slices (NumPy, CuPy, PyTorch, strict)
    # vs. interleave-and-concatenate (Dask, JAX); both forced here on NumPy
    from array_api_compat import numpy as npx
    from arraynorm.nn._window import scatter_windows

    i, o, k, s, p, d, g, b, (h, w) = case
    win = _layer(case).win
    ho, wo = win.output_size("test", h, w)
    cols = np.random.default_rng(6).standard_normal((2, i, win.offsets, ho, wo))
    a = scatter_windows(npx, cols, win, (h, w), inplace=True)
    f = scatter_windows(npx, cols, win, (h, w), inplace=False)
    assert a.shape == (2, i, h, w)
    np.testing.assert_allclose(f, a, rtol=0, atol=1e-15 * np.abs(a).max())


def test_conv2d_jvp_leaves_the_forward_cache_alone():
    rng = np.random.default_rng(3)
    layer = nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=0)
    x = rng.standard_normal((2, 3, 6, 6))
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx_ref = layer.backward(dy)
    dw_ref = layer.grads["weight"]
    layer.jvp(rng.standard_normal((2, 3, 9, 9)))  # another size: must not touch the cache
    np.testing.assert_array_equal(layer.backward(dy), dx_ref)
    np.testing.assert_array_equal(layer.grads["weight"], dw_ref)


def test_conv2d_stays_lazy_on_dask():
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(4)
    layer = nn.Conv2d(4, 6, 3, padding=1, groups=2, rng=0).to(da)
    x = da.from_array(rng.standard_normal((4, 4, 6, 6)), chunks=(2, 2, 3, 3))
    with DaskComputeCounter() as c:
        y = layer(x)
        dx = layer.backward(da.ones_like(y))
        jv = layer.jvp(x)
    assert c.n == 0
    ref = nn.Conv2d(4, 6, 3, padding=1, groups=2, rng=0)
    y_ref = ref(x.compute())
    assert_close(y, y_ref)
    assert_close(dx, ref.backward(np.ones_like(y_ref)))
    assert_close(jv, y_ref - ref.bias[None, :, None, None])


def test_conv2d_float32_and_float16_keep_their_dtype_and_match_float64(xp):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 5))
    ref = nn.Conv2d(3, 4, 3, padding=1, rng=0)
    y_ref = ref(x)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref = ref.backward(dy)
    dtypes = ["float32"] + (["float16"] if backend_name(xp) in ("numpy", "torch") else [])
    for dt in dtypes:
        layer = nn.Conv2d(3, 4, 3, padding=1, rng=0).to(xp, dtype=dt)
        xb = from_numpy(xp, x, dt)
        tol = 2e-5 if dt == "float32" else 5e-3
        y = layer(xb)
        assert_close(y, y_ref, xp=xp, dtype=xb.dtype, rtol=tol, atol=tol * 4)
        dx = layer.backward(from_numpy(xp, dy, dt))
        assert_close(dx, dx_ref, xp=xp, dtype=xb.dtype, rtol=tol, atol=tol * 8)
        assert layer.grads["weight"].dtype == xb.dtype


@pytest.mark.parametrize("init", ["he", "uniform", "xavier", "gaussian"])
def test_conv2d_initializations_use_pytorchs_fans(init):
    layer = nn.Conv2d(32, 64, (3, 5), groups=2, init=init, rng=0)
    w = layer.weight
    fan_in, fan_out = 16 * 15, 64 * 15
    var = {"he": 2 / fan_in, "uniform": 1 / (3 * fan_in), "gaussian": 1 / fan_in,
           "xavier": 2 / (fan_in + fan_out)}[init]
    assert w.shape == (64, 16, 3, 5)
    # 15360 draws: the sample variance is within 5% of the scheme's
    assert abs(w.var() / var - 1) < 0.05
    if init == "uniform":  # PyTorch's default: kaiming_uniform_(a=√5) = U(±1/√fan_in), bias too
        assert np.abs(w).max() <= 1 / np.sqrt(fan_in)
        assert np.abs(layer.bias).max() <= 1 / np.sqrt(fan_in)
        assert np.abs(layer.bias).max() > 0.5 / np.sqrt(fan_in)
    else:
        np.testing.assert_array_equal(layer.bias, 0.0)


def test_conv2d_orthogonal_initialization_has_orthonormal_rows():
    w = nn.Conv2d(4, 6, 3, init="orthogonal", rng=0).weight.reshape(6, -1)
    np.testing.assert_allclose(w @ w.T, np.eye(6), atol=1e-12)


def test_conv2d_same_seed_same_kernel_on_every_backend(xp):
    ref = nn.Conv2d(3, 4, 3, rng=7)
    assert_close(nn.Conv2d(3, 4, 3, rng=7, xp=xp, dtype="float64").weight, ref.weight, xp=xp,
                 rtol=0, atol=0)


BAD_CONV = [
    (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, "in_channels=3 must be divisible by groups=2"),
    (lambda: nn.Conv2d(4, 6, 3, groups=4), ValueError, "out_channels=6 must be divisible by groups=4"),
    (lambda: nn.Conv2d(0, 4, 3), ValueError, "in_channels must be a positive int, got 0"),
    (lambda: nn.Conv2d(2, 4, 0), ValueError, "kernel_size must be >= 1"),
    (lambda: nn.Conv2d(2, 4, (3, 3, 3)), TypeError, "kernel_size must be an int or a pair"),
    (lambda: nn.Conv2d(2, 4, True), TypeError, "kernel_size must be an int or a pair"),
    (lambda: nn.Conv2d(2, 4, 3, stride=0), ValueError, "stride must be >= 1"),
    (lambda: nn.Conv2d(2, 4, 3, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: nn.Conv2d(2, 4, 3, padding="full"), ValueError, "padding must be an int, a pair of ints, 'valid' or 'same'"),
    (lambda: nn.Conv2d(2, 4, 3, stride=2, padding="same"), ValueError, "padding='same' needs stride 1"),
    (lambda: nn.Conv2d(2, 4, 3, init="kaiming"), ValueError, "init must be one of"),
    (lambda: nn.Conv2d(2, 4, 5)(np.ones((1, 2, 4, 6))), ValueError,
     r"Conv2d.forward: the kernel \(dilated extent 5x5\) is larger than the padded input \(4x6"),
    (lambda: nn.Conv2d(2, 4, 3, dilation=3)(np.ones((1, 2, 6, 6))), ValueError,
     r"dilated extent 7x7\) is larger than the padded input \(6x6"),
    (lambda: nn.Conv2d(2, 4, 3)(np.ones((2, 5, 5))), ValueError,
     r"Conv2d.forward: x must have shape \(N, C, H, W\) \(rank 4\), got shape \(2, 5, 5\)"),
    (lambda: nn.Conv2d(2, 4, 3)(np.ones((1, 3, 5, 5))), ValueError, "x must have in_channels=2 channels"),
    (lambda: nn.Conv2d(2, 4, 3)(np.ones((1, 2, 5, 5), dtype=np.int64)), TypeError,
     "x must have a real floating dtype"),
    (lambda: nn.Conv2d(2, 4, 3).jvp(np.ones((1, 2, 5))), ValueError, r"Conv2d.jvp: x must have shape \(N, C, H, W\)"),
    (lambda: nn.Conv2d(2, 4, 3).backward(np.ones((1, 4, 3, 3))), RuntimeError, "forward has not been called"),
    (lambda: _after_forward(nn.Conv2d(2, 4, 3), (1, 2, 5, 5)).backward(np.ones((1, 4, 5, 5))), ValueError,
     r"Conv2d.backward: dy must have the output's shape \(1, 4, 3, 3\), got \(1, 4, 5, 5\)"),
]


def _after_forward(layer, shape):
    layer(np.ones(shape))
    return layer


@pytest.mark.parametrize("make, exc, msg", BAD_CONV, ids=[m for _, _, m in BAD_CONV])
def test_conv2d_bad_arguments_get_clear_errors(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


# ------------------------------------------------------------------------------------------
# the small CNN


class _TorchResidual(torch.nn.Module):
    def __init__(self, block, shortcut, scale):
        super().__init__()
        self.block, self.shortcut, self.scale = block, shortcut, scale

    def forward(self, x):
        s = x if self.shortcut is None else self.shortcut(x)
        return s + self.scale * self.block(x)


def _to_torch(layer):
    """A torch.nn mirror of an arraynorm.nn layer, with the same parameters (float64)."""
    def copy(mod, pairs):
        mod = mod.double()
        with torch.no_grad():
            for ours, theirs in pairs:
                getattr(mod, theirs).copy_(_t(layer.params[ours]))
        return mod

    if isinstance(layer, nn.Sequential):
        return torch.nn.Sequential(*[_to_torch(m) for m in layer])
    if isinstance(layer, nn.Residual):
        sc = layer._children.get("shortcut")
        return _TorchResidual(_to_torch(layer.block), None if sc is None else _to_torch(sc), layer.scale)
    if isinstance(layer, nn.Conv2d):
        has_b = "bias" in layer.params
        mod = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                              stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                              groups=layer.groups, bias=has_b)
        return copy(mod, [("weight", "weight")] + ([("bias", "bias")] if has_b else []))
    if isinstance(layer, nn.Linear):
        return copy(torch.nn.Linear(layer.in_features, layer.out_features), [("weight", "weight"), ("bias", "bias")])
    if isinstance(layer, nn.BatchNorm):
        return copy(torch.nn.BatchNorm2d(layer.param_shape[0], eps=layer.eps), [("weight", "weight"), ("bias", "bias")])
    if isinstance(layer, nn.GroupNorm):
        return copy(torch.nn.GroupNorm(layer.num_groups, layer.param_shape[0], eps=layer.eps),
                    [("weight", "weight"), ("bias", "bias")])
    if isinstance(layer, nn.InstanceNorm):
        return copy(torch.nn.InstanceNorm2d(layer.param_shape[0], eps=layer.eps, affine=True),
                    [("weight", "weight"), ("bias", "bias")])
    if isinstance(layer, nn.ReLU):
        return torch.nn.ReLU()
    if isinstance(layer, nn.Tanh):
        return torch.nn.Tanh()
    if isinstance(layer, nn.MaxPool2d):
        return torch.nn.MaxPool2d(layer.win.kernel, layer.win.stride)
    if isinstance(layer, nn.AvgPool2d):
        return torch.nn.AvgPool2d(layer.win.kernel, layer.win.stride)
    if isinstance(layer, nn.GlobalAvgPool2d):
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    raise TypeError(f"no torch mirror for {type(layer).__name__}")


CNN_CASES = [("batch", False, "max"), ("group", False, "avg"), ("layer", True, "max"),
             ("instance", False, "max"), ("none", True, "avg"), ("batch", True, "avg")]


@pytest.mark.parametrize("norm, residual, pool", CNN_CASES)
def test_cnn_stack_backward_matches_torch_autograd(norm, residual, pool):
    rng = np.random.default_rng(8)
    model = nn.cnn_stack((4, 6, 6), in_channels=2, num_classes=3, norm=norm, residual=residual,
                         pool=pool, norm_kwargs={"num_groups": 2} if norm == "group" else None,
                         rng=9)
    tmodel = _to_torch(model).train()
    x = rng.standard_normal((4, 2, 8, 8))
    y = model(x)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmodel(xt)
    yt.backward(torch.tensor(dy))
    rtol = 1e-10  # a dozen layers deep (normalizations included), float64
    assert_rel(y, yt, rtol, "logits")
    assert_rel(dx, xt.grad, rtol, "dx")
    ours = model.gradients()
    theirs = dict(tmodel.named_parameters())
    assert set(ours) == set(theirs)  # same parameters under PyTorch's names
    for name, g in ours.items():
        assert_rel(g, theirs[name].grad, rtol, name)


def test_cnn_stack_conv_biases_only_where_no_norm_cancels_them():
    assert "0.0.bias" not in nn.cnn_stack((4,), norm="batch", rng=0).gradients()
    assert "0.0.bias" in nn.cnn_stack((4,), norm="none", rng=0).gradients()
    assert "0.0.bias" in nn.cnn_stack((4,), norm="batch", bias=True, rng=0).gradients()


@pytest.mark.parametrize("norm", ["batch", "group", "layer", "instance", "none"])
def test_cnn_stack_loss_decreases_under_sgd(norm):
    # memorizing 8 random images with random classes: every model fits them; IN, which
    # removes each map's mean and contrast, is the slowest (loss × 0.84 after 20 steps)
    rng = np.random.default_rng(10)
    x, t = rng.standard_normal((8, 1, 8, 8)), np.arange(8) % 3
    model = nn.cnn_stack((8, 16), in_channels=1, num_classes=3, norm=norm, rng=11)
    loss = nn.CrossEntropyLoss()
    opt = SGD(model, lr=0.1, momentum=0.9)
    losses = []
    for _ in range(20):
        losses.append(float(loss(model(x), t)))
        model.backward(loss.backward())
        opt.step()
    assert losses[-1] < 0.9 * losses[0], losses


def test_cnn_stack_on_every_backend_matches_numpy(xp):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 2, 6, 6))
    dy = rng.standard_normal((3, 4))

    def build():
        return nn.cnn_stack((4, 4), in_channels=2, num_classes=4, norm="batch", residual=True,
                            rng=13)

    ref = build()
    y_ref, dx_ref = ref(x), ref.backward(dy)
    model = build().to(xp)
    xb = from_numpy(xp, x)
    y = model(xb)
    assert_close(y, y_ref, xp=xp, dtype=xb.dtype)
    assert_close(model.backward(from_numpy(xp, dy)), dx_ref, xp=xp, dtype=xb.dtype)
    for name, g in model.gradients().items():
        assert_close(g, ref.gradients()[name], xp=xp, err_msg=name)


BAD_CNN = [
    (dict(norm="bn"), ValueError, "cnn_stack: norm must be one of"),
    (dict(norm="weight_norm"), ValueError, "cnn_stack: norm must be one of"),
    (dict(pool="median"), ValueError, "cnn_stack: pool must be 'max', 'avg' or None"),
    (dict(channels=()), ValueError, "channels must be a non-empty sequence of positive ints"),
    (dict(channels=(4, 0)), ValueError, "channels must be a non-empty sequence of positive ints"),
    (dict(activation="swish"), ValueError, "activation must be one of"),
    (dict(norm=lambda c: None), TypeError, "cnn_stack: norm\\(width\\) must return a Module"),
]


@pytest.mark.parametrize("kw, exc, msg", BAD_CNN, ids=[m for _, _, m in BAD_CNN])
def test_cnn_stack_bad_arguments_get_clear_errors(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        nn.cnn_stack(**kw)


def test_cnn_stack_layer_norm_is_group_norm_with_one_group():
    model = nn.cnn_stack((4,), norm="layer", rng=0)
    ln = model[0][1]
    assert isinstance(ln, nn.GroupNorm) and ln.num_groups == 1
    x = np.random.default_rng(14).standard_normal((2, 1, 5, 5))
    h = model[0][0](x)
    ref = F.layer_norm(torch.tensor(h), h.shape[1:])  # LN over (C, H, W), γ = 1, β = 0
    assert_rel(ln(h), ref, 1e-12, "LN over (C, H, W)")
