"""Whole-stack gradients of arraynorm.nn models against PyTorch autograd (CPU, float64).

Every model here is mirrored by an equivalent torch model with the same parameters (built by
:func:`to_torch` from ``torch.nn`` modules, or, where PyTorch has no such layer, from the
paper's formula in torch ops, differentiated by autograd). For a random input and a random
output cotangent dy, the input gradient and every parameter gradient are compared, as are
the forward outputs and — over many steps — BatchNorm's running buffers.

The measured agreement is recorded and printed on teardown
(``python -m pytest -q -s tests/test_nn_torch.py``).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import arraynorm.nn as nn  # noqa: E402
from arraynorm.optim import SGD, Adam, AdamW  # noqa: E402

pytestmark = pytest.mark.torch

RTOL = 1e-10  # float64: errors relative to the largest reference magnitude of each array

_ERRORS: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])


@pytest.fixture(scope="module", autouse=True)
def _print_error_table():
    yield
    if _ERRORS:
        print("\n\narraynorm.nn vs torch autograd (float64): max abs error, max error / max|ref|")
        for name, (ea, er) in sorted(_ERRORS.items()):
            print(f"{name:<44}{ea:12.3e}{er:12.3e}")


def _t(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def _close(name: str, ours, ref, rtol: float = RTOL) -> None:
    ours = np.asarray(ours, dtype=np.float64)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} vs {ref.shape}"
    err = float(np.max(np.abs(ours - ref))) if ours.size else 0.0
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-300)
    group = name.split("[")[0]
    _ERRORS[group][0] = max(_ERRORS[group][0], err)
    if scale > 1e-12:  # a gradient that is zero up to rounding (a bias right before BN) has no relative error
        _ERRORS[group][1] = max(_ERRORS[group][1], err / scale)
    assert err <= rtol * scale + 1e-14, f"{name}: max abs error {err:.3e} (ref scale {scale:.3e})"


# -------------------------------------------------------------------------------------------
# torch mirrors of layers PyTorch does not have, written from the papers' formulas

class TorchResidual(torch.nn.Module):
    def __init__(self, block, scale):
        super().__init__()
        self.block, self.scale = block, scale

    def forward(self, x):
        return x + self.scale * self.block(x)


class TorchBatchRenorm(torch.nn.Module):
    """Ioffe 2017, Algorithm 1: r and d are stop-gradient."""

    def __init__(self, layer):
        super().__init__()
        self.weight = torch.nn.Parameter(_t(layer.weight))
        self.bias = torch.nn.Parameter(_t(layer.bias))
        self.rm, self.rv = _t(layer.running_mean), _t(layer.running_var)
        self.rmax, self.dmax, self.eps = layer.rmax, layer.dmax, layer.eps

    def forward(self, x):
        mean, var = x.mean(0), x.var(0, unbiased=False)
        std = torch.sqrt(var + self.eps)
        sigma = torch.sqrt(self.rv + self.eps)
        r = (std / sigma).detach().clamp(1 / self.rmax, self.rmax)
        d = ((mean - self.rm) / sigma).detach().clamp(-self.dmax, self.dmax)
        return ((x - mean) / std * r + d) * self.weight + self.bias


class TorchWhitening(torch.nn.Module):
    """Decorrelated BN (Huang et al. 2018, ZCA: W = Σ^{-1/2} via eigh) or IterNorm (Huang et
    al. 2019: P ← 1.5P − 0.5P³Σ_N, W = P/sqrt(tr Σ)), per channel group, on (N, C)."""

    def __init__(self, layer, kind):
        super().__init__()
        self.weight = torch.nn.Parameter(_t(layer.weight))
        self.bias = torch.nn.Parameter(_t(layer.bias))
        self.g, self.eps, self.kind = layer.num_groups, layer.eps, kind
        self.T = getattr(layer, "T", None)

    def forward(self, x):
        n, c = x.shape
        d = c // self.g
        outs = []
        for k in range(self.g):
            xg = x[:, k * d:(k + 1) * d]
            xc = xg - xg.mean(0)
            sigma = xc.T @ xc / n + self.eps * torch.eye(d, dtype=x.dtype)
            if self.kind == "zca":
                lam, u = torch.linalg.eigh(sigma)
                w = u @ torch.diag(lam.rsqrt()) @ u.T
            else:
                tr = torch.trace(sigma)
                sn = sigma / tr
                p = torch.eye(d, dtype=x.dtype)
                for _ in range(self.T):
                    p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ sn
                w = p / torch.sqrt(tr)
            outs.append(xc @ w.T)
        return torch.cat(outs, 1) * self.weight + self.bias


class TorchReparamLinear(torch.nn.Module):
    """y = x f(V)ᵀ + b with f weight standardization (Qiao et al. 2019, biased variance, eps
    inside the root) or centred weight normalization (Huang et al. 2017), rows = units."""

    def __init__(self, layer):
        super().__init__()
        self.weight_v = torch.nn.Parameter(_t(layer.weight_v))
        self.bias = torch.nn.Parameter(_t(layer.bias))
        self.kind = layer.reparam
        self.eps = layer.reparam_kwargs.get("eps", 1e-5 if self.kind == "weight_standardization" else 0.0)

    def forward(self, x):
        vc = self.weight_v - self.weight_v.mean(1, keepdim=True)
        if self.kind == "weight_standardization":
            w = vc / torch.sqrt(vc.pow(2).mean(1, keepdim=True) + self.eps)
        else:
            w = vc / torch.sqrt(vc.pow(2).sum(1, keepdim=True) + self.eps)
        return F.linear(x, w, self.bias)


def to_torch(m: nn.Module) -> torch.nn.Module:
    """The torch model computing what ``m`` computes, with copies of its parameters."""
    if isinstance(m, nn.Sequential):
        return torch.nn.Sequential(*[to_torch(c) for c in m])
    if isinstance(m, nn.Residual):
        return TorchResidual(to_torch(m.block), m.scale)
    if isinstance(m, nn.Linear):
        t = torch.nn.Linear(m.in_features, m.out_features, bias="bias" in m.params, dtype=torch.float64)
        t.load_state_dict({k: _t(v) for k, v in m.params.items()})
        return t
    if isinstance(m, nn.WeightNormLinear):
        t = torch.nn.Linear(m.in_features, m.out_features, dtype=torch.float64)
        t = torch.nn.utils.parametrizations.weight_norm(t)
        with torch.no_grad():
            t.parametrizations.weight.original0.copy_(_t(m.weight_g))
            t.parametrizations.weight.original1.copy_(_t(m.weight_v))
            t.bias.copy_(_t(m.bias))
        return t
    if isinstance(m, nn.SpectralNormLinear):
        t = torch.nn.Linear(m.in_features, m.out_features, dtype=torch.float64)
        t = torch.nn.utils.parametrizations.spectral_norm(t, n_power_iterations=m.n_power_iterations)
        w, u = _t(m.weight_orig), _t(m.weight_u)
        with torch.no_grad():
            t.parametrizations.weight.original.copy_(w)
            t.bias.copy_(_t(m.bias))
            p = t.parametrizations.weight[0]
            p._u.copy_(u)
            # PyTorch keeps v from its previous call; ours starts from N(Wᵀu) (weight.py)
            p._v.copy_(F.normalize(w.T @ u, dim=0, eps=m.eps))
        return t
    if isinstance(m, nn.ReparamLinear):
        return TorchReparamLinear(m)
    if isinstance(m, nn.BatchRenorm):
        return TorchBatchRenorm(m)
    if isinstance(m, nn.DecorrelatedBatchNorm):
        return TorchWhitening(m, "zca")
    if isinstance(m, nn.IterNorm):
        return TorchWhitening(m, "iternorm")
    if isinstance(m, nn.BatchNorm):
        cls = torch.nn.BatchNorm1d
        t = cls(m.param_shape[0], eps=m.eps, momentum=m.momentum, dtype=torch.float64)
        t.load_state_dict({"weight": _t(m.weight), "bias": _t(m.bias),
                           "running_mean": _t(m.running_mean), "running_var": _t(m.running_var),
                           "num_batches_tracked": torch.tensor(m.num_batches_tracked)})
        return t
    if isinstance(m, nn.LayerNorm):
        t = torch.nn.LayerNorm(m.param_shape, eps=m.eps, dtype=torch.float64)
        t.load_state_dict({"weight": _t(m.weight), "bias": _t(m.bias)})
        return t
    if isinstance(m, nn.RMSNorm):
        t = torch.nn.RMSNorm(m.param_shape, eps=m.eps, dtype=torch.float64)
        t.load_state_dict({"weight": _t(m.weight)})
        return t
    if isinstance(m, nn.GroupNorm):
        t = torch.nn.GroupNorm(m.num_groups, m.param_shape[0], eps=m.eps, dtype=torch.float64)
        t.load_state_dict({"weight": _t(m.weight), "bias": _t(m.bias)})
        return t
    if isinstance(m, nn.PositionNorm):  # (N, C): statistics over C, no affine
        return torch.nn.LayerNorm(m.param_shape, eps=m.eps, elementwise_affine=False, dtype=torch.float64)
    simple = {nn.ReLU: torch.nn.ReLU, nn.Tanh: torch.nn.Tanh, nn.Identity: torch.nn.Identity}
    if type(m) in simple:
        return simple[type(m)]()
    if isinstance(m, nn.GELU):
        return torch.nn.GELU(approximate="tanh")
    if isinstance(m, nn.HardTanh):
        return torch.nn.Hardtanh(m.min_val, m.max_val)
    raise TypeError(f"no torch mirror for {type(m).__name__}")


def torch_parameter_grads(tm: torch.nn.Module, ours: nn.Module) -> dict[str, torch.Tensor]:
    """torch gradients keyed by our qualified parameter names."""
    rename = {"parametrizations.weight.original0": "weight_g",
              "parametrizations.weight.original1": "weight_v",
              "parametrizations.weight.original": "weight_orig"}
    out = {}
    for name, p in tm.named_parameters():
        for a, b in rename.items():
            name = name.replace(a, b)
        out[name] = p.grad
    assert set(out) == set(dict(ours.named_parameters())), (sorted(out), sorted(dict(ours.named_parameters())))
    return out


def check_against_torch(model: nn.Module, x: np.ndarray, label: str, tmodel=None) -> None:
    rng = np.random.default_rng(99)
    tmodel = to_torch(model) if tmodel is None else tmodel
    tmodel.train(model.training)
    y = model(x)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    tx = _t(x).requires_grad_(True)
    ty = tmodel(tx)
    ty.backward(_t(dy))
    _close(f"{label}[forward]", y, ty)
    _close(f"{label}[dx]", dx, tx.grad)
    tgrads = torch_parameter_grads(tmodel, model)
    for name, g in model.gradients().items():
        _close(f"{label}[d{name}]", g, tgrads[name])


NORMS_VS_TORCH = ["none", "batch", "layer", "group", "rms", "position", "batch_renorm", "dbn",
                  "iternorm", "weight_norm", "spectral_norm", "weight_standardization",
                  "centered_weight_norm"]


def _perturb_affine(model: nn.Module, rng) -> None:
    # γ = 1, β = 0 at initialization would hide a γ/β mix-up: make them generic
    for name, m, k in model.parameter_slots():
        if k in ("weight", "bias") and m.params[k].ndim == 1 and not isinstance(m, nn.Linear):
            m.params[k] = m.params[k] + 0.3 * rng.standard_normal(m.params[k].shape)


@pytest.mark.parametrize("norm", NORMS_VS_TORCH)
@pytest.mark.parametrize("position", ["before", "after"])
def test_mlp_gradients_match_torch_autograd(norm, position):
    rng = np.random.default_rng(0)
    kw = {"num_groups": 2} if norm in ("group", "dbn", "iternorm") else {}
    model = nn.deep_stack(4, 8, in_features=5, out_features=3, norm=norm, norm_position=position,
                          activation="tanh", init="gaussian", sigma_w=1.5, sigma_b=0.1,
                          norm_kwargs=kw, rng=1)
    _perturb_affine(model, rng)
    if norm == "batch_renorm":  # running statistics away from the batch's, so r, d matter
        for m in model.named_modules():
            if isinstance(m[1], nn.BatchRenorm):
                m[1].running_mean = 0.5 * rng.standard_normal(8)
                m[1].running_var = rng.uniform(0.05, 3.0, 8)
    x = rng.standard_normal((16, 5)) * 2.0
    check_against_torch(model, x, f"mlp/{norm}")


def _torch_jvp(tmodel: torch.nn.Module, x: np.ndarray, v: np.ndarray) -> torch.Tensor:
    """J·v by PyTorch's forward-mode autodiff (torch.func.jvp) of the mirror model; BatchNorm
    keeps batch statistics but stops updating running buffers, which forward mode forbids."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.func.replace_all_batch_norm_modules_(tmodel)
    # the fused CPU attention kernel has no forward-mode derivative; the math one does
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return torch.func.jvp(tmodel, (_t(x),), (_t(v),))[1]


# torch.func imports modules that use the deprecated torch.jit.script
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("norm", NORMS_VS_TORCH)
def test_mlp_jvp_matches_torch_forward_mode_autodiff(norm):
    rng = np.random.default_rng(15)
    kw = {"num_groups": 2} if norm in ("group", "dbn", "iternorm") else {}
    model = nn.deep_stack(4, 8, in_features=5, out_features=3, norm=norm, activation="tanh",
                          init="gaussian", sigma_w=1.5, sigma_b=0.1, norm_kwargs=kw, rng=16)
    _perturb_affine(model, rng)
    x, v = rng.standard_normal((16, 5)) * 2.0, rng.standard_normal((16, 5))
    tmodel = to_torch(model)  # before the forward: the mirror takes the current buffers
    model(x)
    _close(f"jvp/{norm}[Jv]", model.jvp(v), _torch_jvp(tmodel, x, v), rtol=1e-12)


# torch.func imports modules that use the deprecated torch.jit.script
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_transformer_block_jvp_matches_torch_forward_mode_autodiff(norm_first):
    rng = np.random.default_rng(17)
    block = nn.TransformerEncoderBlock(12, 3, 20, norm_first=norm_first, rng=18)
    _perturb_affine(block, rng)
    x, v = rng.standard_normal((3, 6, 12)), rng.standard_normal((3, 6, 12))
    tblock = _torch_block(block, 20).train()
    block(x)
    _close(f"jvp/transformer-{'pre' if norm_first else 'post'}-LN[Jv]", block.jvp(v),
           _torch_jvp(tblock, x, v), rtol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "gelu", "hardtanh", "identity"])
def test_residual_mlp_gradients_match_torch_autograd(activation):
    rng = np.random.default_rng(1)
    model = nn.deep_stack(6, 8, in_features=3, out_features=2, norm="layer", residual=True,
                          residual_scale=0.7, activation=activation, rng=2)
    _perturb_affine(model, rng)
    check_against_torch(model, rng.standard_normal((10, 3)), f"residual/{activation}")


def test_eval_mode_batchnorm_stack_matches_torch():
    rng = np.random.default_rng(2)
    model = nn.deep_stack(3, 6, in_features=4, out_features=2, norm="batch", rng=3)
    for _ in range(3):  # give the running statistics values of their own
        model(rng.standard_normal((12, 4)) * 3 + 1)
    model.eval()
    check_against_torch(model, rng.standard_normal((5, 4)), "mlp/batch-eval")


def _torch_block(block: nn.TransformerEncoderBlock, ff: int) -> torch.nn.Module:
    t = torch.nn.TransformerEncoderLayer(block.d_model, block.self_attn.num_heads, ff, dropout=0.0,
                                         activation="relu", batch_first=True,
                                         norm_first=block.norm_first, dtype=torch.float64)
    a = block.self_attn
    t.load_state_dict({
        "self_attn.in_proj_weight": _t(a.in_proj.weight), "self_attn.in_proj_bias": _t(a.in_proj.bias),
        "self_attn.out_proj.weight": _t(a.out_proj.weight), "self_attn.out_proj.bias": _t(a.out_proj.bias),
        "linear1.weight": _t(block.linear1.weight), "linear1.bias": _t(block.linear1.bias),
        "linear2.weight": _t(block.linear2.weight), "linear2.bias": _t(block.linear2.bias),
        "norm1.weight": _t(block.norm1.weight), "norm1.bias": _t(block.norm1.bias),
        "norm2.weight": _t(block.norm2.weight), "norm2.bias": _t(block.norm2.bias),
    })
    return t


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_transformer_block_gradients_match_torch_autograd(norm_first, causal):
    rng = np.random.default_rng(3)
    d, heads, ff, steps = 12, 3, 20, 6
    block = nn.TransformerEncoderBlock(d, heads, ff, norm_first=norm_first, causal=causal, rng=4)
    _perturb_affine(block, rng)
    x = rng.standard_normal((3, steps, d))
    t = _torch_block(block, ff)
    y = block(x)
    dy = rng.standard_normal(y.shape)
    dx = block.backward(dy)
    tx = _t(x).requires_grad_(True)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(steps, dtype=torch.float64) if causal else None
    ty = t(tx, src_mask=mask, is_causal=causal)
    ty.backward(_t(dy))
    label = f"transformer/{'pre' if norm_first else 'post'}-LN"
    _close(f"{label}[forward]", y, ty)
    _close(f"{label}[dx]", dx, tx.grad)
    tg = {n: p.grad for n, p in t.named_parameters()}
    g = block.gradients()
    pairs = {"self_attn.in_proj.weight": "self_attn.in_proj_weight",
             "self_attn.in_proj.bias": "self_attn.in_proj_bias"}
    assert len(g) == len(tg)
    for name, grad in g.items():
        _close(f"{label}[d{name}]", grad, tg[pairs.get(name, name)])


def test_stack_of_transformer_blocks_matches_torch():
    rng = np.random.default_rng(5)
    blocks = [nn.TransformerEncoderBlock(8, 2, 16, norm_first=i % 2 == 0, rng=10 + i) for i in range(3)]
    model = nn.Sequential(*blocks)
    tmodel = torch.nn.Sequential(*[_torch_block(b, 16) for b in blocks])
    x = rng.standard_normal((2, 5, 8))
    y = model(x)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    tx = _t(x).requires_grad_(True)
    ty = tmodel(tx)
    ty.backward(_t(dy))
    _close("transformer-stack[forward]", y, ty)
    _close("transformer-stack[dx]", dx, tx.grad)


@pytest.mark.parametrize("position", ["post", "pre"])
def test_transformer_stack_with_readout_and_sequence_cross_entropy_matches_torch(position):
    # transformer_stack = torch.nn.TransformerEncoderLayer × depth (+ final LayerNorm for
    # Pre-LN) + Linear read-out; the loss is F.cross_entropy on the (N·T, V) reshaped logits
    rng = np.random.default_rng(12)
    d, heads, ff, vocab, steps = 8, 2, 12, 7, 5
    model = nn.transformer_stack(3, d, heads, dim_feedforward=ff, norm_position=position,
                                 out_features=vocab, init="xiong2020", rng=13)
    _perturb_affine(model, rng)
    layers = list(model)
    tmods = [_torch_block(b, ff) for b in layers[:3]]
    for m in layers[3:]:
        if isinstance(m, nn.LayerNorm):
            t = torch.nn.LayerNorm(d, eps=m.eps, dtype=torch.float64)
            t.load_state_dict({"weight": _t(m.weight), "bias": _t(m.bias)})
        else:
            t = torch.nn.Linear(d, vocab, dtype=torch.float64)
            t.load_state_dict({"weight": _t(m.weight), "bias": _t(m.bias)})
        tmods.append(t)
    tmodel = torch.nn.Sequential(*tmods)
    x = rng.standard_normal((3, steps, d))
    target = rng.integers(0, vocab, (3, steps))
    loss = nn.CrossEntropyLoss()
    value = loss(model(x), target)
    dx = model.backward(loss.backward())
    tx = _t(x).requires_grad_(True)
    tl = F.cross_entropy(tmodel(tx).reshape(-1, vocab), torch.tensor(target).reshape(-1))
    tl.backward()
    label = f"transformer-stack/{position}"
    _close(f"{label}[loss]", value, tl)
    _close(f"{label}[dx]", dx, tx.grad)
    tg = dict(tmodel.named_parameters())
    pairs = {"self_attn.in_proj.weight": "self_attn.in_proj_weight",
             "self_attn.in_proj.bias": "self_attn.in_proj_bias"}
    grads = model.gradients()
    assert len(grads) == len(tg)
    for name, g in grads.items():
        head, _, rest = name.partition(".")
        _close(f"{label}[d{name}]", g, tg[f"{head}.{pairs.get(rest, rest)}"].grad)


def test_sequence_cross_entropy_matches_torch_on_reshaped_logits():
    rng = np.random.default_rng(14)
    z = rng.standard_normal((4, 6, 9)) * 25
    t = rng.integers(0, 9, (4, 6))
    ce = nn.CrossEntropyLoss()
    tz = _t(z).requires_grad_(True)
    tl = F.cross_entropy(tz.reshape(-1, 9), torch.tensor(t).reshape(-1))
    tl.backward()
    _close("loss[cross-entropy-NTV]", ce(z, t), tl)
    _close("loss[cross-entropy-NTV-grad]", ce.backward(), tz.grad)
    # PyTorch's own (N, V, T) layout gives the same numbers with the class axis moved
    tz2 = _t(np.moveaxis(z, -1, 1)).requires_grad_(True)
    tl2 = F.cross_entropy(tz2, torch.tensor(t))
    tl2.backward()
    _close("loss[cross-entropy-NVT]", ce(z, t), tl2)
    _close("loss[cross-entropy-NVT-grad]", ce.backward(), tz2.grad.permute(0, 2, 1))
    p = rng.dirichlet(np.ones(9), (4, 6))
    tz = _t(z).requires_grad_(True)
    tl = F.cross_entropy(tz.reshape(-1, 9), _t(p).reshape(-1, 9))
    tl.backward()
    _close("loss[cross-entropy-NTV-soft]", ce(z, p), tl)
    _close("loss[cross-entropy-NTV-soft-grad]", ce.backward(), tz.grad)


def test_multi_head_attention_matches_torch_module():
    rng = np.random.default_rng(6)
    attn = nn.MultiHeadSelfAttention(8, 4, causal=True, rng=7)
    t = torch.nn.MultiheadAttention(8, 4, batch_first=True, dtype=torch.float64)
    t.load_state_dict({"in_proj_weight": _t(attn.in_proj.weight), "in_proj_bias": _t(attn.in_proj.bias),
                       "out_proj.weight": _t(attn.out_proj.weight), "out_proj.bias": _t(attn.out_proj.bias)})
    x = rng.standard_normal((2, 7, 8))
    y = attn(x)
    dy = rng.standard_normal(y.shape)
    dx = attn.backward(dy)
    tx = _t(x).requires_grad_(True)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(7, dtype=torch.float64)
    ty, _ = t(tx, tx, tx, attn_mask=mask, need_weights=False)
    ty.backward(_t(dy))
    _close("attention[forward]", y, ty)
    _close("attention[dx]", dx, tx.grad)
    _close("attention[din_proj.weight]", attn.in_proj.grads["weight"], t.in_proj_weight.grad)


@pytest.mark.parametrize("momentum", [0.1, 0.3, None], ids=["m0.1", "m0.3", "cumulative"])
@pytest.mark.parametrize("rank", [2, 4], ids=["BatchNorm1d", "BatchNorm2d"])
def test_batchnorm_running_statistics_follow_torch_over_many_steps(momentum, rank):
    rng = np.random.default_rng(7)
    c = 3
    ours = nn.BatchNorm(c, momentum=momentum)
    cls = torch.nn.BatchNorm1d if rank == 2 else torch.nn.BatchNorm2d
    ref = cls(c, momentum=momentum, dtype=torch.float64)
    shape = (6, c) if rank == 2 else (4, c, 3, 2)
    for step in range(40):
        x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0) + rng.uniform(-2, 2, (1, c) + (1,) * (rank - 2))
        y = ours(x)
        ty = ref(_t(x))
        _close(f"batchnorm-running[forward-{rank}d]", y, ty)
    _close(f"batchnorm-running[mean-{rank}d]", ours.running_mean, ref.running_mean)
    _close(f"batchnorm-running[var-{rank}d]", ours.running_var, ref.running_var)
    assert ours.num_batches_tracked == int(ref.num_batches_tracked)
    ours.eval(), ref.eval()
    x = rng.standard_normal(shape)
    _close(f"batchnorm-running[eval-{rank}d]", ours(x), ref(_t(x)))


def test_instance_norm_and_group_norm_on_images_match_torch():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 5, 6))
    for ours, ref in ((nn.InstanceNorm(4, affine=True), torch.nn.InstanceNorm2d(4, affine=True, dtype=torch.float64)),
                      (nn.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4, dtype=torch.float64)),
                      (nn.BatchNorm(4), torch.nn.BatchNorm2d(4, dtype=torch.float64))):
        w, b = rng.standard_normal(4), rng.standard_normal(4)
        ours.weight, ours.bias = w, b
        with torch.no_grad():
            ref.weight.copy_(_t(w)), ref.bias.copy_(_t(b))
        label = type(ours).__name__ + "-image"
        y = ours(x)
        dy = rng.standard_normal(y.shape)
        tx = _t(x).requires_grad_(True)
        ty = ref(tx)
        ty.backward(_t(dy))
        _close(f"{label}[forward]", y, ty)
        _close(f"{label}[dx]", ours.backward(dy), tx.grad)
        _close(f"{label}[dweight]", ours.grads["weight"], ref.weight.grad)
        _close(f"{label}[dbias]", ours.grads["bias"], ref.bias.grad)


def test_local_response_norm_layer_matches_torch():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 7, 3, 4))
    layer, ref = nn.LocalResponseNorm(3, alpha=0.5, beta=0.6, k=1.5), torch.nn.LocalResponseNorm(3, 0.5, 0.6, 1.5)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    tx = _t(x).requires_grad_(True)
    ty = ref(tx)
    ty.backward(_t(dy))
    _close("lrn[forward]", y, ty)
    _close("lrn[dx]", layer.backward(dy), tx.grad)


def test_adain_layer_backward_to_content_and_style_matches_torch():
    rng = np.random.default_rng(9)
    c, s = rng.standard_normal((2, 3, 4, 5)), 2 + 3 * rng.standard_normal((2, 3, 6, 3))
    layer = nn.AdaIN()
    y = layer(c, s)
    dy = rng.standard_normal(y.shape)
    dc, ds = layer.backward(dy)
    tc, ts = _t(c).requires_grad_(True), _t(s).requires_grad_(True)
    # Huang & Belongie 2017, eq. 8, with the biased variance inside the root
    cm, cs = tc.mean((2, 3), keepdim=True), torch.sqrt(tc.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
    sm, ss = ts.mean((2, 3), keepdim=True), torch.sqrt(ts.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
    ty = ss * (tc - cm) / cs + sm
    ty.backward(_t(dy))
    _close("adain[forward]", y, ty)
    _close("adain[dcontent]", dc, tc.grad)
    _close("adain[dstyle]", ds, ts.grad)


def test_cross_entropy_and_mse_match_torch():
    rng = np.random.default_rng(10)
    z = rng.standard_normal((6, 4)) * 30  # large logits: the log-sum-exp must not overflow
    t = rng.integers(0, 4, 6)
    ce = nn.CrossEntropyLoss()
    tz = _t(z).requires_grad_(True)
    tl = F.cross_entropy(tz, torch.tensor(t))
    tl.backward()
    _close("loss[cross-entropy]", ce(z, t), tl)
    _close("loss[cross-entropy-grad]", ce.backward(), tz.grad)
    p = rng.dirichlet(np.ones(4), 6)
    tz = _t(z).requires_grad_(True)
    tl = F.cross_entropy(tz, _t(p))
    tl.backward()
    _close("loss[cross-entropy-soft]", ce(z, p), tl)
    _close("loss[cross-entropy-soft-grad]", ce.backward(), tz.grad)
    y, target = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    mse = nn.MSELoss()
    ty = _t(y).requires_grad_(True)
    tl = F.mse_loss(ty, _t(target))
    tl.backward()
    _close("loss[mse]", mse(y, target), tl)
    _close("loss[mse-grad]", mse.backward(), ty.grad)


@pytest.mark.parametrize("opt_name", ["sgd", "sgd-nesterov", "adam", "adamw", "clipped-sgd"])
def test_optimizer_trajectories_match_torch_optim(opt_name):
    rng = np.random.default_rng(11)
    # LayerNorm, not BN: a bias right before BN has an exactly-zero gradient, which Adam's
    # m/sqrt(v) turns into a ratio of rounding noise
    model = nn.deep_stack(2, 6, in_features=3, out_features=2, norm="layer", rng=12)
    tmodel = to_torch(model)
    make = {
        "sgd": (lambda m: SGD(m, 0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
                lambda p: torch.optim.SGD(p, 0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
        "sgd-nesterov": (lambda m: SGD(m, 0.05, momentum=0.8, nesterov=True, weight_decay=0.02),
                         lambda p: torch.optim.SGD(p, 0.05, momentum=0.8, nesterov=True, weight_decay=0.02)),
        "adam": (lambda m: Adam(m, 0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.03),
                 lambda p: torch.optim.Adam(p, 0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.03)),
        "adamw": (lambda m: AdamW(m, 0.01, weight_decay=0.1),
                  lambda p: torch.optim.AdamW(p, 0.01, weight_decay=0.1)),
        "clipped-sgd": (lambda m: SGD(m, 0.1, momentum=0.5, max_grad_norm=0.05),
                        lambda p: torch.optim.SGD(p, 0.1, momentum=0.5)),
    }[opt_name]
    opt, topt = make[0](model), make[1](tmodel.parameters())
    loss = nn.MSELoss()
    for step in range(8):
        x, target = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
        loss(model(x), target)
        model.backward(loss.backward())
        opt.step()
        topt.zero_grad()
        F.mse_loss(tmodel(_t(x)), _t(target)).backward()
        if opt_name == "clipped-sgd":
            torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 0.05)
        topt.step()
    tparams = dict(tmodel.named_parameters())
    for name, p in model.named_parameters():
        _close(f"optim/{opt_name}[{name}]", p, tparams[name], rtol=1e-9)
