"""arraynorm.torch: autograd functions, layers, parametrizations and gradient transforms.

Oracles: ``torch.autograd.gradcheck`` (finite differences, float64) for every wrapped op;
arraynorm's own ``vjp`` on the same tensors (the bridge must add nothing); PyTorch's functional
ops and autograd where PyTorch has the op; ``torch.nn.BatchNorm2d`` for running statistics;
the papers' formulas written in torch ops (whitening matrices, AGC, LARS, LAMB).
"""

from __future__ import annotations

import copy
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import arraynorm as an  # noqa: E402
import arraynorm.torch as ant  # noqa: E402
from arraynorm._bridge import bridged_ops  # noqa: E402
from arraynorm.torch import functional as AF  # noqa: E402
from arraynorm.torch import parametrizations as P  # noqa: E402
from _bridge_cases import CASES, array_slots, convert  # noqa: E402

pytestmark = pytest.mark.torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
F64 = torch.float64


def _tensors(case, requires_grad=True):
    args, kwargs = convert(case, lambda a: torch.tensor(a, dtype=F64))
    for i in array_slots(case):
        args[i].requires_grad_(requires_grad)
    return args, kwargs


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _close(got, ref, rtol=1e-12):
    """Equal up to rtol relative to the reference's largest magnitude (at least 1)."""
    scale = max(float(ref.detach().abs().max()), 1.0)
    torch.testing.assert_close(got, ref, rtol=rtol, atol=rtol * scale)


# -------------------------------------------------------------------------------------------
# the functional bridge

def test_functional_wraps_every_op_with_a_backward_and_every_op_has_a_case():
    assert set(AF.__all__) == set(bridged_ops())
    assert len(AF.__all__) >= 22
    assert {c.op for c in CASES.values()} == set(bridged_ops())


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.exact])
def test_gradcheck_float64(name):
    case = CASES[name]
    args, kwargs = _tensors(case)
    slots = array_slots(case)
    f = getattr(AF, case.op)

    def fn(*inputs):
        a = list(args)
        for i, t in zip(slots, inputs):
            a[i] = t
        return _first(f(*a, **kwargs))

    assert torch.autograd.gradcheck(fn, [args[i] for i in slots], eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_and_gradients_equal_arraynorm_vjp_on_the_same_tensors(name):
    case = CASES[name]
    args, kwargs = _tensors(case)
    slots = array_slots(case)
    out = getattr(AF, case.op)(*args, **kwargs)
    y = _first(out)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [args[i] for i in slots], dy, allow_unused=True)

    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    y_ref, pullback = an.vjp(getattr(an, case.op), *plain, **kwargs)
    ours = pullback((dy, None) if isinstance(y_ref, tuple) else dy)
    assert torch.equal(y.detach(), _first(y_ref))
    assert y.grad_fn is not None and y.dtype == F64
    for i, g in zip(slots, grads):
        if ours[i] is None:  # spectral_norm's u: no gradient
            assert g is None
        else:
            assert torch.equal(g, ours[i]), f"cotangent of argument {i}"
    if isinstance(out, tuple) and isinstance(out[1], torch.Tensor):  # spectral_norm's new u
        assert not out[1].requires_grad


_M = torch.tensor([0.3, -0.1, 0.2], dtype=F64)
_V = torch.tensor([0.5, 1.5, 2.0], dtype=F64)


def _bn(x, w, b):
    return F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)


# name: (shape of x, length of w and b, differentiated inputs, ours(x, w, b), torch(x, w, b))
TORCH_ORACLES = {
    "batch_norm": ((4, 3, 5), 3, "xwb", lambda x, w, b: AF.batch_norm(x, w, b), _bn),
    "batch_norm_eval": ((4, 3, 5), 3, "xwb",
                        lambda x, w, b: AF.batch_norm(x, w, b, mean=_M, var=_V),
                        lambda x, w, b: F.batch_norm(x, _M, _V, w, b, training=False)),
    "layer_norm": ((4, 6, 3), 3, "xwb", lambda x, w, b: AF.layer_norm(x, w, b),
                   lambda x, w, b: F.layer_norm(x, (3,), w, b)),
    "group_norm": ((4, 6, 3), 6, "xwb", lambda x, w, b: AF.group_norm(x, 3, w, b),
                   lambda x, w, b: F.group_norm(x, 3, w, b)),
    "instance_norm": ((4, 3, 5), 3, "xwb", lambda x, w, b: AF.instance_norm(x, w, b),
                      lambda x, w, b: F.instance_norm(x, weight=w, bias=b)),
    "rms_norm": ((4, 6, 3), 3, "xw", lambda x, w, b: AF.rms_norm(x, w),
                 lambda x, w, b: F.rms_norm(x, (3,), w)),
    "l2_normalize": ((4, 3, 5), 3, "x", lambda x, w, b: AF.l2_normalize(x),
                     lambda x, w, b: F.normalize(x, dim=1)),
    "local_response_norm": ((4, 3, 5), 3, "x", lambda x, w, b: AF.local_response_norm(x, 2),
                            lambda x, w, b: F.local_response_norm(x, 2)),
    "ghost_batch_norm": ((4, 3, 5), 3, "xwb", lambda x, w, b: AF.ghost_batch_norm(x, 2, w, b),
                         lambda x, w, b: torch.cat([_bn(c, w, b) for c in x.split(2)])),
    "weight_norm": ((4, 3, 5), 4, "xw", lambda v, g, b: AF.weight_norm(v, g[:, None, None]),
                    lambda v, g, b: torch._weight_norm(v, g[:, None, None], 0)),
}


@pytest.mark.parametrize("name", sorted(TORCH_ORACLES))
def test_values_and_gradients_equal_pytorch_functional_ops(name):
    shape, n, diff, ours, theirs = TORCH_ORACLES[name]
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, dtype=F64, generator=gen) * 2 + 1).requires_grad_()
    w = (torch.rand(n, dtype=F64, generator=gen) + 0.5).requires_grad_()
    b = torch.randn(n, dtype=F64, generator=gen).requires_grad_()
    y, y_ref = ours(x, w, b), theirs(x, w, b)
    _close(y, y_ref)
    dy = torch.randn(y.shape, dtype=F64, generator=gen)
    inputs = [{"x": x, "w": w, "b": b}[k] for k in diff]
    for g, g_ref in zip(torch.autograd.grad(y, inputs, dy), torch.autograd.grad(y_ref, inputs, dy)):
        _close(g, g_ref)


def test_keyword_tensor_that_requires_grad_is_refused_not_silently_dropped():
    x = torch.randn(4, 3, dtype=F64)
    mean = torch.zeros(3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="mean is treated as a constant"):
        AF.batch_norm(x, mean=mean, var=torch.ones(3, dtype=F64))
    with torch.no_grad():  # nothing is recorded, so nothing can be dropped
        AF.batch_norm(x, mean=mean, var=torch.ones(3, dtype=F64))


def test_input_modified_in_place_after_forward_makes_backward_raise():
    x = torch.randn(6, 4, dtype=F64)
    w = torch.ones(4, dtype=F64, requires_grad=True)
    y = AF.iter_norm(x, w)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_double_backward_is_refused():
    x = torch.randn(6, 4, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(AF.layer_norm(x).pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        g.sum().backward()


def test_bad_arguments_name_the_op():
    with pytest.raises(TypeError, match="group_norm"):
        AF.group_norm(torch.randn(2, 4, 3), 2, nonsense=1)


# -------------------------------------------------------------------------------------------
# layers

LAYERS = {
    "IterNorm": lambda **kw: ant.IterNorm(8, num_groups=2, **kw),
    "DBN-zca": lambda **kw: ant.DecorrelatedBatchNorm(8, 2, **kw),
    "DBN-pca": lambda **kw: ant.DecorrelatedBatchNorm(8, 2, "pca", **kw),
    "DBN-cholesky": lambda **kw: ant.DecorrelatedBatchNorm(8, 4, "cholesky", **kw),
    "GroupWhitening": lambda **kw: ant.GroupWhitening(2, 8, **kw),
    "PositionNorm": lambda **kw: ant.PositionNorm(8, affine=True, **kw),
    "BatchRenorm": lambda **kw: ant.BatchRenorm(8, **kw),
    "GhostBatchNorm": lambda **kw: ant.GhostBatchNorm(8, 8, **kw),
}
STEPS = 25
RUNNING = {"IterNorm", "DBN-zca", "DBN-pca", "DBN-cholesky", "BatchRenorm", "GhostBatchNorm"}


def _cnn(layer):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), layer, torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 1))


def _data(n=32, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 4, 4, generator=gen, dtype=dtype)
    t = torch.sin(x[:, 0].sum((1, 2))) + x[:, 1, 0, 0] * x[:, 2, 1, 1]
    return x, t[:, None]


def _assert_no_history(module):
    for name, buf in module.named_buffers():
        assert not buf.requires_grad and buf.grad_fn is None, name


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_trains_in_a_torch_cnn_with_sgd_and_its_buffers_carry_no_history(name):
    model = _cnn(LAYERS[name]())
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    x, t = _data()
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = F.mse_loss(model(x), t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses[::8]
    assert model[1].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    _assert_no_history(model)
    if name in RUNNING:
        assert int(model[1].num_batches_tracked) == STEPS * (4 if name == "GhostBatchNorm" else 1)


SMALL_LAYERS = {  # 4 channels, float64, for finite differences
    "IterNorm": lambda: ant.IterNorm(4, 2, T=4, dtype=F64),
    "DBN-zca": lambda: ant.DecorrelatedBatchNorm(4, 2, dtype=F64),
    "DBN-pca": lambda: ant.DecorrelatedBatchNorm(4, 1, "pca", dtype=F64),
    "DBN-cholesky": lambda: ant.DecorrelatedBatchNorm(4, 1, "cholesky", dtype=F64),
    "GroupWhitening": lambda: ant.GroupWhitening(2, 4, dtype=F64),
    "PositionNorm": lambda: ant.PositionNorm(4, affine=True, dtype=F64),
    # rmax=1, dmax=0 clip r, d to constants: there the stop-gradient VJP is the derivative
    "BatchRenorm": lambda: ant.BatchRenorm(4, rmax=1.0, dmax=0.0, dtype=F64),
    "GhostBatchNorm": lambda: ant.GhostBatchNorm(4, 4, dtype=F64),
}


@pytest.mark.parametrize("name", sorted(SMALL_LAYERS))
def test_layer_gradcheck_in_training_mode(name):
    layer = SMALL_LAYERS[name]()
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(8, 4, 3, generator=gen, dtype=F64) @ torch.randn(3, 3, generator=gen,
                                                                      dtype=F64)).requires_grad_()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=gen)
        layer.bias.normal_(generator=gen)
    assert torch.autograd.gradcheck(lambda x, w, b: layer(x), (x, layer.weight, layer.bias),
                                    eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name", ["BatchRenorm", "GhostBatchNorm"])
def test_running_mean_and_var_follow_torch_batchnorm(name, momentum):
    ours = LAYERS[name](momentum=momentum)
    ref = torch.nn.BatchNorm2d(8, momentum=momentum)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(32, 8, 3, 3, generator=gen) * 2 + 0.5
        ours(x.requires_grad_())
        for chunk in (x.detach().split(8) if name == "GhostBatchNorm" else [x.detach()]):
            ref(chunk)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)
    _assert_no_history(ours)


def _zca(x, groups, eps):
    """Σ^{-1/2} per channel group by eigendecomposition, in float64 (x is (N, C))."""
    d = x.shape[1] // groups
    out = []
    for g in range(groups):
        xc = x[:, g * d:(g + 1) * d] - x[:, g * d:(g + 1) * d].mean(0)
        s = xc.T @ xc / x.shape[0] + eps * torch.eye(d, dtype=x.dtype)
        lam, u = torch.linalg.eigh(s)
        out.append(u @ torch.diag(lam.rsqrt()) @ u.T)
    return torch.stack(out)


def _newton(x, groups, eps, T):
    """IterNorm's W = p_T(Σ/trΣ)/sqrt(trΣ) per group (Huang et al. 2019, Algorithm 1)."""
    d = x.shape[1] // groups
    out = []
    for g in range(groups):
        xc = x[:, g * d:(g + 1) * d] - x[:, g * d:(g + 1) * d].mean(0)
        s = xc.T @ xc / x.shape[0] + eps * torch.eye(d, dtype=x.dtype)
        tr = torch.trace(s)
        p = torch.eye(d, dtype=x.dtype)
        for _ in range(T):
            p = 1.5 * p - 0.5 * p @ p @ p @ (s / tr)
        out.append(p / tr.sqrt())
    return torch.stack(out)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("kind", ["zca", "iternorm"])
def test_running_whitening_is_the_momentum_average_of_the_batch_whitening_matrices(kind, momentum):
    layer = (ant.DecorrelatedBatchNorm(6, 2, momentum=momentum, dtype=F64) if kind == "zca"
             else ant.IterNorm(6, 2, T=4, momentum=momentum, dtype=F64))
    gen = torch.Generator().manual_seed(3)
    mean, w = torch.zeros(6, dtype=F64), torch.eye(3, dtype=F64).repeat(2, 1, 1)
    for k in range(1, 4):
        x = torch.randn(40, 6, generator=gen, dtype=F64) @ torch.randn(6, 6, generator=gen, dtype=F64)
        layer(x)
        m = momentum if momentum is not None else 1.0 / k
        batch_w = _zca(x, 2, 1e-5) if kind == "zca" else _newton(x, 2, 1e-5, 4)
        mean, w = (1 - m) * mean + m * x.mean(0), (1 - m) * w + m * batch_w
    _close(layer.running_mean, mean, 1e-12)
    _close(layer.running_whitening, w, 1e-9)
    _assert_no_history(layer)


@pytest.mark.parametrize("name", sorted(RUNNING))
def test_eval_mode_uses_the_running_statistics_and_leaves_them_alone(name):
    layer = LAYERS[name](dtype=F64)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=gen)
        layer.bias.normal_(generator=gen)
    for _ in range(3):
        layer(torch.randn(16, 8, 3, 3, generator=gen, dtype=F64) * 3 + 1)
    layer.eval()
    x = torch.randn(16, 8, 3, 3, generator=gen, dtype=F64).requires_grad_()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    y = layer(x)
    if name in ("BatchRenorm", "GhostBatchNorm"):
        ref = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias,
                           training=False, eps=layer.eps)
    else:
        g, d = layer.num_groups, 8 // layer.num_groups
        xc = (x - layer.running_mean[:, None, None]).reshape(16, g, d, 9)
        xhat = torch.einsum("gij,ngjs->ngis", layer.running_whitening, xc).reshape(x.shape)
        ref = xhat * layer.weight[:, None, None] + layer.bias[:, None, None]
    _close(y, ref, 1e-12)
    y.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    layer.train()
    if name == "BatchRenorm":  # r, d unclipped: r·x̂_B + d = (x − μ)/σ, the eval output
        _close(layer(x), y, 1e-12)
    else:
        assert not torch.allclose(layer(x), y)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_state_dict_round_trip_restores_the_outputs(name):
    model = _cnn(LAYERS[name]())
    x, _ = _data(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model.eval()
    state = model.state_dict()
    if name in RUNNING:
        assert {"1.running_mean", "1.num_batches_tracked"} <= set(state)
    fresh = _cnn(LAYERS[name]())
    fresh.load_state_dict(state)
    fresh.eval()
    assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_half_precision_inputs_with_float32_statistics(name, dtype):
    layer = LAYERS[name]()
    ref = copy.deepcopy(layer)
    x32 = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(5)) * 2 + 1
    x = x32.to(dtype).requires_grad_()
    y = layer(x)
    assert y.dtype == dtype
    y_ref = ref(x.detach().float())
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    scale = float(y_ref.detach().abs().max())
    torch.testing.assert_close(y.float(), y_ref, rtol=tol, atol=tol * scale)
    y.float().square().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    assert layer.weight.grad.dtype == torch.float32
    for k, buf in layer.named_buffers():
        if buf.is_floating_point():
            assert buf.dtype == torch.float32, k
            torch.testing.assert_close(buf, dict(ref.named_buffers())[k], rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(RUNNING))
def test_to_moves_parameters_and_buffers(name):
    layer = LAYERS[name]().to(F64).to("cpu")
    assert all(t.dtype == F64 for t in [*layer.parameters(), layer.running_mean])
    layer(torch.randn(16, 8, 2, 2, dtype=F64))
    assert layer.running_mean.dtype == F64 and layer.num_batches_tracked.dtype == torch.long


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device for torch")
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_run_on_a_cuda_device(name):
    model = _cnn(LAYERS[name]()).to("cuda")
    x, t = (a.to("cuda") for a in _data())
    loss = F.mse_loss(model(x), t)
    loss.backward()
    assert all(b.device.type == "cuda" for b in model.buffers())
    assert model[0].weight.grad.device.type == "cuda"
    model.eval()
    assert model(x).device.type == "cuda"


def test_layers_check_their_arguments_and_inputs():
    with pytest.raises(ValueError, match="num_groups=3 must divide num_features=8"):
        ant.IterNorm(8, num_groups=3)
    with pytest.raises(ValueError, match="method must be one of"):
        ant.DecorrelatedBatchNorm(8, method="svd")
    with pytest.raises(ValueError, match="momentum"):
        ant.BatchRenorm(8, momentum=1.5)
    with pytest.raises(ValueError, match="rmax"):
        ant.BatchRenorm(8, rmax=0.5)
    with pytest.raises(ValueError, match="expected 8 channels along axis 1"):
        ant.IterNorm(8)(torch.randn(4, 6))
    with pytest.raises(ValueError, match="virtual_batch_size"):
        ant.GhostBatchNorm(8, 5)(torch.randn(12, 8))


def test_adain_layer_is_the_op_and_differentiates_content_and_style():
    c = torch.randn(2, 3, 4, 4, dtype=F64, requires_grad=True)
    s = torch.randn(2, 3, 5, 5, dtype=F64, requires_grad=True)
    y = ant.AdaIN()(c, s)
    assert torch.equal(y.detach(), an.adain(c.detach(), s.detach()))
    y.pow(2).sum().backward()
    assert c.grad.abs().sum() > 0 and s.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------------
# weight parametrizations

def test_parametrizations_give_the_papers_weights_on_linear_and_conv():
    torch.manual_seed(0)
    lin = P.centered_weight_norm(torch.nn.Linear(6, 4))
    w, g = lin.weight, lin.parametrizations.weight[0].g
    _close(w.sum(1), torch.zeros(4), 1e-6)
    _close(w.norm(dim=1), g.squeeze(1), 1e-6)
    v = lin.parametrizations.weight.original
    _close(w, v - v.mean(1, keepdim=True), 1e-6)  # g starts at ‖v − μ‖
    conv = P.weight_standardization(torch.nn.Conv2d(3, 4, 3), eps=0.0)
    wm = conv.weight.reshape(4, -1)
    _close(wm.mean(1), torch.zeros(4), 1e-6)
    _close(wm.var(1, unbiased=False), torch.ones(4), 1e-5)
    own = P.orthogonal_weight_norm(torch.nn.Conv2d(2, 5, 2), eps=0.0).weight.reshape(5, -1)
    _close(own @ own.T, torch.eye(5), 1e-5)
    _close(own.sum(1), torch.zeros(5), 1e-5)
    oni = P.oni(torch.nn.Linear(10, 4), T=9).weight
    _close(oni @ oni.T, torch.eye(4), 1e-3)


@pytest.mark.parametrize("register", [
    lambda m: P.centered_weight_norm(m), lambda m: P.weight_standardization(m),
    lambda m: P.orthogonal_weight_norm(m), lambda m: P.oni(m)])
def test_parametrized_linear_trains_and_round_trips_its_state(register):
    torch.manual_seed(0)
    model = torch.nn.Sequential(register(torch.nn.Linear(6, 4)), torch.nn.Tanh(),
                                torch.nn.Linear(4, 1))
    x = torch.randn(64, 6)
    t = (x[:, :1] - x[:, 1:2]) * 0.5
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(model(x), t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model[0].parametrizations.weight.original.grad is not None
    fresh = torch.nn.Sequential(register(torch.nn.Linear(6, 4)), torch.nn.Tanh(),
                                torch.nn.Linear(4, 1))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))


def test_orthogonalizing_a_wide_weight_is_refused_at_registration():
    with pytest.raises(ValueError, match="orthonormal rows need out <= in − 1"):
        P.oni(torch.nn.Linear(4, 4))


# -------------------------------------------------------------------------------------------
# gradient family

def _model_with_grads(seed=0, scale=1.0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 2), torch.nn.Flatten(),
                                torch.nn.Linear(12, 2))
    (model(torch.randn(5, 2, 3, 3)).square().sum() * scale).backward()
    return model


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm_matches_torch(norm_type):
    ours, ref = _model_with_grads(), _model_with_grads()
    total = ant.clip_grad_norm_(ours.parameters(), 0.3, norm_type)
    total_ref = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.3, norm_type)
    torch.testing.assert_close(total, total_ref)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_clip_grad_value_matches_torch():
    ours, ref = _model_with_grads(), _model_with_grads()
    ant.clip_grad_value_(ours.parameters(), 0.05)
    torch.nn.utils.clip_grad_value_(ref.parameters(), 0.05)
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)


def _grads_after(transform, seed=0):
    model = _model_with_grads(seed)
    params = list(model.parameters())
    before = [p.grad.clone() for p in params]
    transform(model.parameters())
    return params, before, [p.grad for p in params]


def test_adaptive_clip_grad_matches_the_unitwise_formula():
    params, g0, g1 = _grads_after(lambda ps: ant.adaptive_clip_grad_(ps, clipping=0.05))
    for p, g, got in zip(params, g0, g1):
        dims = tuple(range(1, p.ndim)) if p.ndim > 1 else None

        def norm(a):
            return torch.linalg.vector_norm(a, dim=dims, keepdim=dims is not None)

        max_norm = norm(p.detach()).clamp(min=1e-3) * 0.05
        gn = norm(g)
        want = torch.where(gn > max_norm, g * max_norm / gn.clamp(min=1e-6), g)
        torch.testing.assert_close(got, want)
    assert any(not torch.equal(a, b) for a, b in zip(g0, g1))


def test_normalized_block_normalized_and_centralized_gradients():
    _, g0, g1 = _grads_after(lambda ps: ant.normalize_grad_(ps, eps=0.0))
    total = torch.sqrt(sum(g.square().sum() for g in g0))
    for g, got in zip(g0, g1):
        torch.testing.assert_close(got, g / total)
    _, g0, g1 = _grads_after(lambda ps: ant.block_normalize_grad_(ps, eps=0.0))
    for g, got in zip(g0, g1):
        torch.testing.assert_close(got, g / g.norm())
    params, g0, g1 = _grads_after(ant.centralize_grad_)
    for p, g, got in zip(params, g0, g1):
        want = g - g.mean(dim=tuple(range(1, g.ndim)), keepdim=True) if g.ndim > 1 else g
        torch.testing.assert_close(got, want)


def test_lars_rescales_by_the_trust_ratio_with_weight_decay():
    params, g0, g1 = _grads_after(lambda ps: ant.lars_(ps, trust_coefficient=0.01, weight_decay=0.1))
    for p, g, got in zip(params, g0, g1):
        w = p.detach()
        ratio = 0.01 * w.norm() / (g.norm() + 0.1 * w.norm())
        torch.testing.assert_close(got, ratio * (g + 0.1 * w))


def test_trust_ratio_around_adamw_is_lamb():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    ref = [p.detach().clone() for p in model.parameters()]
    m = [torch.zeros_like(p) for p in ref]
    v = [torch.zeros_like(p) for p in ref]
    lr, wd, (b1, b2), eps = 0.05, 0.01, (0.9, 0.999), 1e-8
    opt = ant.TrustRatio(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd))
    x = torch.randn(16, 4)
    for step in range(1, 4):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        # LAMB (You et al. 2019, Algorithm 2) with bias correction, written out
        for i, p in enumerate(model.parameters()):
            g = p.grad
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            r = (m[i] / (1 - b1 ** step)) / ((v[i] / (1 - b2 ** step)).sqrt() + eps)
            u = r + wd * ref[i]
            ref[i] = ref[i] - lr * (ref[i].norm() / u.norm()) * u
        for p, q in zip(model.parameters(), ref):
            torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)


def test_gradient_helpers_skip_parameters_without_gradients():
    a = torch.randn(3, 2, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    a.grad = torch.ones(3, 2)
    ant.centralize_grad_([a, b])
    assert b.grad is None and not a.grad.any()
    assert float(ant.clip_grad_norm_([b], 1.0)) == 0.0
    ant.normalize_grad_(a)  # a single tensor is accepted, as in torch
    with pytest.raises(TypeError, match=r"parameters\[0\] must be a torch.Tensor"):
        ant.clip_grad_value_([np.ones(2)], 1.0)


# -------------------------------------------------------------------------------------------
# the example

def test_torch_iternorm_example_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "torch_iternorm.py"),
                          "--steps", "3", "--batch", "32"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "loss" in out.stdout
