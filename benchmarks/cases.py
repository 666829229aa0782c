"""The benchmark cases and, for each backend, the calls they time.

A case is one operation at one size (float32), or one whole model (``MODEL_FAMILIES``: a
200-block BatchNorm MLP, a Transformer block — the models the analysis package studies, whose
time is matrix products and many small passes rather than memory bandwidth). A backend turns a
case's NumPy inputs into two callables, forward and forward+backward, each returning its
outputs; or it says why it cannot (``Absent``), which the report shows instead of an error.

The ``conv`` and ``cnn`` cases time layers rather than functional ops: a 3×3 ``Conv2d`` at a
small-CNN size, and a whole ``cnn_stack`` (conv–BN–ReLU blocks, max pooling, global average
pooling, linear head) against the same network in ``torch.nn`` with the same weights. They are
compute-bound (matmuls), so their GB/s columns mean little; the times are what to compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import naive

__all__ = ["Case", "CASES", "MODEL_FAMILIES", "Backend", "BACKENDS", "Absent", "Impl",
           "make_inputs", "SIZE_FAMILIES", "size_sweep"]

EPS = 1e-5
RMS_EPS = 1e-6
ITER_T = 5


#: cases that time a whole model (forward and backward of every layer), not one op; their
#: shape is (depth, batch, width) for "stack", (N, T, D) for "transformer"
MODEL_FAMILIES = ("stack", "transformer")


@dataclass(frozen=True)
class Case:
    """One operation at a full and a ``--quick`` size."""

    id: str
    family: str                       # ln, bn, gn, in, rms, wn, sn, iternorm; stack, transformer
    label: str
    full: tuple[int, ...]
    quick: tuple[int, ...]
    groups: int = 0                   # GN and IterNorm groups
    out_channels: int = 0             # conv: output channels (input shape is (N, C, H, W))
    bandwidth_target: bool = False    # a large LN/RMS/BN case: the GPU bandwidth target applies
    heads: int = 0                    # attention heads of a Transformer case

    def shape(self, quick: bool) -> tuple[int, ...]:
        return self.quick if quick else self.full

    def input_shape(self, quick: bool) -> tuple[int, ...]:
        """Shape of the input x (a deep stack's shape starts with its depth)."""
        shape = self.shape(quick)
        return shape[1:] if self.family == "stack" else shape

    def title(self, quick: bool) -> str:
        s = f"{self.label} {'x'.join(map(str, self.shape(quick)))}"
        return s + (f" G{self.groups}" if self.groups else "") + (f" H{self.heads}" if self.heads else "")


CASES = [
    Case("ln", "ln", "LayerNorm", (8192, 1024), (512, 1024)),
    Case("ln-large", "ln", "LayerNorm", (16384, 4096), (256, 4096), bandwidth_target=True),
    Case("bn", "bn", "BatchNorm", (256, 64, 56, 56), (16, 64, 28, 28), bandwidth_target=True),
    Case("bn-2d", "bn", "BatchNorm", (4096, 1024), (512, 1024), bandwidth_target=True),
    Case("gn", "gn", "GroupNorm", (32, 256, 56, 56), (4, 256, 28, 28), groups=32),
    Case("in", "in", "InstanceNorm", (16, 64, 128, 128), (2, 64, 64, 64)),
    Case("rms", "rms", "RMSNorm", (8192, 4096), (256, 4096), bandwidth_target=True),
    Case("wn", "wn", "WeightNorm", (4096, 4096), (512, 512)),
    Case("sn", "sn", "SpectralNorm", (4096, 4096), (512, 512)),
    Case("iternorm", "iternorm", "IterNorm", (8192, 512), (1024, 256), groups=8),
    # issue 10: one forward+backward of deep_stack(200, 256, norm="batch") at batch 64
    # (depth x batch x width), and a Post-LN Transformer block (N x T x D, FFN 4D)
    Case("deep-stack", "stack", "deep_stack BN", (200, 64, 256), (20, 64, 256)),
    Case("transformer", "transformer", "Transformer block", (32, 128, 256), (4, 32, 64), heads=4),
    Case("conv", "conv", "Conv2d 3x3 32->64", (64, 32, 16, 16), (16, 32, 16, 16), out_channels=64),
    Case("cnn", "cnn", "CNN 16-32-64 BN", (64, 3, 32, 32), (16, 3, 16, 16)),
]

#: the normalization families the size sweep (``--sizes``) runs at several sizes
SIZE_FAMILIES = ("ln", "bn", "gn", "in", "rms")


def size_sweep(cases: list[Case], quick: bool) -> list[Case]:
    """Each normalization case also at smaller sizes, its first axis (the batch) scaled: 1, 4,
    16, 64, 256 MiB below the case's own size (``--quick``: 0.25 MiB below the quick size), so
    a library is judged on the sizes models use, from cache-resident to the largest. The
    scaled cases' ids are ``<id>@<MiB>MiB``; their quick and full shapes are the same."""
    out: list[Case] = []
    for c in cases:
        if c.family in SIZE_FAMILIES:
            shape = c.shape(quick)
            nbytes = 4 * math.prod(shape)
            seen: set[int] = set()  # a batch of one can stand for several sizes: run it once
            for mib in ((0.25,) if quick else (1, 4, 16, 64, 256)):
                n0 = max(1, round(shape[0] * mib * 2**20 / nbytes))
                if n0 not in seen and n0 < shape[0] and 4 * n0 * math.prod(shape[1:]) < 0.75 * nbytes:
                    seen.add(n0)
                    s = (n0,) + shape[1:]
                    label = f"{mib:g}MiB"
                    out.append(Case(f"{c.id}@{label}", c.family, c.label, s, s, groups=c.groups))
        out.append(c)
    return out


CNN_CHANNELS = (16, 32, 64)
CNN_CLASSES = 10


def make_inputs(case: Case, quick: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 inputs of a case: the array, cotangent and parameters each op takes."""
    rng = np.random.default_rng(seed)
    shape = case.input_shape(quick)

    def normal(*s: int) -> np.ndarray:
        return rng.standard_normal(s, dtype=np.float32)

    if case.family in MODEL_FAMILIES:
        return {"x": normal(*shape), "dy": normal(*shape)}

    if case.family in ("wn", "sn"):
        out = {"v": normal(*shape), "dy": normal(*shape)}
        if case.family == "wn":
            out["g"] = (1.0 + 0.1 * normal(shape[0])).astype(np.float32)
        else:
            u = normal(shape[0])
            out["u"] = (u / np.linalg.norm(u)).astype(np.float32)
        return out
    if case.family == "conv":
        n, c, h, w = shape
        o = case.out_channels
        bound = 1.0 / math.sqrt(c * 9)  # PyTorch's default initialization
        return {"x": normal(*shape), "dy": normal(n, o, h, w),
                "w": rng.uniform(-bound, bound, (o, c, 3, 3)).astype(np.float32),
                "b": rng.uniform(-bound, bound, o).astype(np.float32)}
    if case.family == "cnn":  # the weights come from the model's seed (cnn_stack(rng=0))
        return {"x": normal(*shape), "dy": normal(shape[0], CNN_CLASSES)}
    pdim = shape[-1] if case.family in ("ln", "rms") else shape[1]
    return {"x": normal(*shape), "dy": normal(*shape),
            "w": (1.0 + 0.1 * normal(pdim)).astype(np.float32), "b": (0.1 * normal(pdim)).astype(np.float32)}


class Absent(Exception):
    """A backend cannot run a case (not installed, no device, no such op): reported, not raised."""


@dataclass
class Impl:
    fwd: Callable[[], Any]
    fwdbwd: Callable[[], Any]


# arraynorm -------------------------------------------------------------------------------

_AN_FUNCS = {"ln": "layer_norm", "bn": "batch_norm", "gn": "group_norm", "in": "instance_norm",
             "rms": "rms_norm", "wn": "weight_norm", "sn": "spectral_norm", "iternorm": "iter_norm"}


def _an_model(case: Case, xp: Any = None, dtype: str = "float32") -> Any:
    """The case's arraynorm layer (the conv with the case's weights, or the seeded CNN)."""
    import arraynorm.nn as nn

    if case.family == "conv":
        c, o = case.full[1], case.out_channels  # quick sizes keep the channels
        model = nn.Conv2d(c, o, 3, padding=1, rng=0)
    else:
        model = nn.cnn_stack(CNN_CHANNELS, in_channels=case.full[1], num_classes=CNN_CLASSES,
                             norm="batch", rng=0)
    return model.to(xp if xp is not None else np, dtype=dtype)


def _arraynorm_layer(case: Case, a: dict[str, Any]) -> Impl:
    from array_api_compat import array_namespace

    xp = array_namespace(a["x"])
    models = []
    for _ in range(2):  # one caching for backward, one inference-only for the forward timing
        m = _an_model(case, xp)
        if case.family == "conv":
            m.load_state_dict({"weight": a["w"], "bias": a["b"]})
        models.append(m)
    infer, train = models
    infer.requires_grad_(False)
    x, dy = a["x"], a["dy"]

    def fwdbwd() -> Any:
        y = train.forward(x)
        return y, train.backward(dy)

    return Impl(lambda: infer.forward(x), fwdbwd)


def _arraynorm(case: Case, a: dict[str, Any]) -> Impl:
    import arraynorm as an

    if case.family in ("conv", "cnn"):
        return _arraynorm_layer(case, a)
    name = _AN_FUNCS[case.family]
    if not hasattr(an, name):
        raise Absent(f"arraynorm.{name} does not exist in this version")
    f = getattr(an, name)
    fam = case.family
    kw: dict[str, Any] = {}
    if fam in ("ln", "bn", "in"):
        args = (a["x"], a["w"], a["b"])
    elif fam == "gn":
        args = (a["x"], case.groups, a["w"], a["b"])
    elif fam == "rms":
        args, kw = (a["x"], a["w"]), {"eps": RMS_EPS}
    elif fam == "wn":
        args = (a["v"], a["g"])
    elif fam == "sn":
        args, kw = (a["v"], a["u"]), {"n_power_iterations": 1}
    else:
        args, kw = (a["x"], a["w"], a["b"]), {"num_groups": case.groups, "T": ITER_T}
    dy = (a["dy"], None) if fam == "sn" else a["dy"]

    def fwdbwd() -> Any:
        y, pullback = an.vjp(f, *args, **kw)
        return y, pullback(dy)

    return Impl(lambda: f(*args, **kw), fwdbwd)


def _model(case: Case, quick: bool) -> Any:
    """The arraynorm model of a model case, float32, weights drawn with seed 0 (every backend
    runs these same weights)."""
    from arraynorm import nn

    shape = case.shape(quick)
    if case.family == "stack":
        depth, _, width = shape
        return nn.deep_stack(depth, width, norm="batch", rng=0, dtype="float32")
    d = shape[-1]
    return nn.TransformerEncoderBlock(d, case.heads, 4 * d, rng=0, dtype="float32")


def _arraynorm_model(case: Case, a: dict[str, Any], quick: bool) -> Impl:
    """forward+backward of the training model (caching for backward, parameter gradients
    set); forward alone of a copy with gradients off, as ``torch.no_grad``."""
    from array_api_compat import array_namespace

    ns = array_namespace(a["x"])
    train, infer = _model(case, quick).to(ns), _model(case, quick).to(ns).requires_grad_(False)
    x, dy = a["x"], a["dy"]

    def fwdbwd() -> Any:
        y = train(x)
        return y, train.backward(dy)

    return Impl(lambda: infer(x), fwdbwd)


def _portable(impl: Impl) -> Impl:
    """The same calls with the backend fast paths switched off around each."""
    import arraynorm as an

    def off(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with an.use_fast_paths(False):
                return fn()
        return run

    return Impl(off(impl.fwd), off(impl.fwdbwd))


# naive NumPy -----------------------------------------------------------------------------

def _naive(case: Case, a: dict[str, np.ndarray]) -> Impl:
    fam = case.family
    if fam in MODEL_FAMILIES:
        raise Absent("no naive NumPy recipe for a whole model (peers: PyTorch)")
    if fam in ("conv", "cnn"):
        raise Absent("no naive NumPy convolution (peers: PyTorch)")
    if fam in ("ln", "bn", "gn", "in"):
        x = a["x"]
        nd = x.ndim
        if fam == "ln":
            view, axes, pshape = x.shape, (nd - 1,), (1,) * (nd - 1) + (x.shape[-1],)
        else:
            pshape = (1, x.shape[1]) + (1,) * (nd - 2)
            if fam == "bn":
                view, axes = x.shape, (0,) + tuple(range(2, nd))
            elif fam == "in":
                view, axes = x.shape, tuple(range(2, nd))
            else:
                view, axes = (x.shape[0], case.groups, math.prod(x.shape[1:]) // case.groups), (2,)

        def run() -> Any:
            return naive.norm(x, a["w"], a["b"], view=view, axes=axes, pshape=pshape, eps=EPS)
    elif fam == "rms":
        def run() -> Any:
            return naive.rms_norm(a["x"], a["w"], eps=RMS_EPS)
    elif fam == "wn":
        def run() -> Any:
            return naive.weight_norm(a["v"], a["g"])
    elif fam == "sn":
        def run() -> Any:
            return naive.spectral_norm(a["v"], a["u"], n_power_iterations=1)
    else:
        def run() -> Any:
            return naive.iter_norm(a["x"], a["w"], a["b"], num_groups=case.groups, T=ITER_T, eps=EPS)

    def fwdbwd() -> Any:
        y, backward = run()
        return y, backward(a["dy"])

    return Impl(lambda: run()[0], fwdbwd)


# PyTorch ---------------------------------------------------------------------------------

def _torch_param_module(case: Case, a: dict[str, Any], torch: Any) -> Impl:
    """weight/spectral norm through ``torch.nn.utils.parametrizations`` on a bias-free Linear."""
    from torch.nn.utils import parametrizations

    v = a["v"]
    out_f, in_f = v.shape
    mod = torch.nn.Linear(in_f, out_f, bias=False, device=v.device, dtype=v.dtype)
    with torch.no_grad():
        mod.weight.copy_(v)
    if case.family == "wn":
        mod = parametrizations.weight_norm(mod, dim=0)
        params = [mod.parametrizations.weight.original0, mod.parametrizations.weight.original1]
        with torch.no_grad():
            params[0].copy_(a["g"].reshape(-1, 1))
    else:
        mod = parametrizations.spectral_norm(mod, n_power_iterations=1)
        params = [mod.parametrizations.weight.original]
        sn = mod.parametrizations.weight[0]
        with torch.no_grad():
            sn._u.copy_(a["u"])
            sn._v.copy_(torch.nn.functional.normalize(v.T @ a["u"], dim=0, eps=sn.eps))
    mod.train()
    dy = a["dy"]

    def fwd() -> Any:
        with torch.no_grad():
            return mod.weight

    def fwdbwd() -> Any:
        w = mod.weight
        return w, torch.autograd.grad(w, params, dy)

    return Impl(fwd, fwdbwd)


def _torch_mirror(model: Any, torch: Any) -> Any:
    """``torch.nn`` copy of an arraynorm ``cnn_stack`` (conv, BN, ReLU, max pool, GAP, linear)."""
    import arraynorm.nn as nn

    layers = []
    for layer in model:
        if isinstance(layer, nn.Sequential):
            layers.append(_torch_mirror(layer, torch))
            continue
        if isinstance(layer, nn.Conv2d):
            mod = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                  padding=layer.padding, bias="bias" in layer.params)
        elif isinstance(layer, nn.BatchNorm):
            mod = torch.nn.BatchNorm2d(layer.param_shape[0], eps=layer.eps)
        elif isinstance(layer, nn.Linear):
            mod = torch.nn.Linear(layer.in_features, layer.out_features)
        elif isinstance(layer, nn.ReLU):
            mod = torch.nn.ReLU()
        elif isinstance(layer, nn.MaxPool2d):
            mod = torch.nn.MaxPool2d(layer.win.kernel, layer.win.stride)
        elif isinstance(layer, nn.GlobalAvgPool2d):
            mod = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        else:
            raise Absent(f"no torch mirror for {type(layer).__name__}")
        with torch.no_grad():
            for k, v in layer.params.items():
                getattr(mod, k).copy_(torch.from_numpy(np.asarray(v)))
        layers.append(mod)
    return torch.nn.Sequential(*layers)


def _torch_layer(case: Case, a: dict[str, Any], torch: Any) -> Impl:
    """F.conv2d, or the CNN in torch.nn (train mode: batch statistics), with autograd."""
    x, dy = a["x"], a["dy"]
    if case.family == "conv":
        w, b = a["w"], a["b"]

        def f(x: Any, w: Any, b: Any) -> Any:
            return torch.nn.functional.conv2d(x, w, b, padding=1)
        ws, bs = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
        inputs = [ws, bs]

        def run(x: Any) -> Any:
            return f(x, ws, bs)
    else:
        mod = _torch_mirror(_an_model(case), torch).to(x.device).train()
        inputs = list(mod.parameters())
        run = mod
    return _autograd_impl(run, x, dy, inputs, torch)


def _torch_model(case: Case, a: dict[str, Any], quick: bool, torch: Any) -> Impl:
    """The same model in ``torch.nn`` with arraynorm's weights (Linear → BatchNorm1d → ReLU
    blocks; ``TransformerEncoderLayer`` with dropout 0), timed with autograd."""
    m = _model(case, quick)

    def t(p: Any) -> Any:
        return torch.from_numpy(np.asarray(p))

    if case.family == "stack":
        layers = []
        for block in m:
            lin, bn, _ = block
            tl = torch.nn.Linear(lin.in_features, lin.out_features)
            tl.load_state_dict({"weight": t(lin.weight), "bias": t(lin.bias)})
            tb = torch.nn.BatchNorm1d(lin.out_features, eps=bn.eps, momentum=bn.momentum)
            tb.load_state_dict({"weight": t(bn.weight), "bias": t(bn.bias),
                                "running_mean": t(bn.running_mean), "running_var": t(bn.running_var),
                                "num_batches_tracked": torch.tensor(0)})
            layers += [tl, tb, torch.nn.ReLU()]
        tm = torch.nn.Sequential(*layers)
    else:
        at = m.self_attn
        tm = torch.nn.TransformerEncoderLayer(m.d_model, at.num_heads, m.linear1.out_features,
                                              dropout=0.0, activation="relu", batch_first=True)
        tm.load_state_dict({
            "self_attn.in_proj_weight": t(at.in_proj.weight), "self_attn.in_proj_bias": t(at.in_proj.bias),
            "self_attn.out_proj.weight": t(at.out_proj.weight), "self_attn.out_proj.bias": t(at.out_proj.bias),
            "linear1.weight": t(m.linear1.weight), "linear1.bias": t(m.linear1.bias),
            "linear2.weight": t(m.linear2.weight), "linear2.bias": t(m.linear2.bias),
            "norm1.weight": t(m.norm1.weight), "norm1.bias": t(m.norm1.bias),
            "norm2.weight": t(m.norm2.weight), "norm2.bias": t(m.norm2.bias)})
    x = a["x"]
    tm = tm.to(device=x.device, dtype=torch.float32).train()
    return _autograd_impl(tm, x, a["dy"], list(tm.parameters()), torch)


def _autograd_impl(run: Any, x: Any, dy: Any, inputs: list[Any], torch: Any) -> Impl:
    """Forward without a graph, and forward+backward (∂/∂x and ∂/∂inputs) with autograd."""
    xs = x.detach().requires_grad_(True)

    def fwd() -> Any:
        with torch.no_grad():
            return run(x)

    def fwdbwd() -> Any:
        y = run(xs)
        return y, torch.autograd.grad(y, [xs] + inputs, dy)

    return Impl(fwd, fwdbwd)


def _torch(case: Case, a: dict[str, Any]) -> Impl:
    import torch
    import torch.nn.functional as F

    fam = case.family
    if fam in ("conv", "cnn"):
        return _torch_layer(case, a, torch)
    if fam == "iternorm":
        raise Absent("PyTorch has no IterNorm (peer: naive NumPy only)")
    if fam in ("wn", "sn"):
        return _torch_param_module(case, a, torch)
    x, w, dy = a["x"], a["w"], a["dy"]
    b = a["b"]
    if fam == "ln":
        def f(x: Any, w: Any, b: Any) -> Any:
            return F.layer_norm(x, (x.shape[-1],), w, b, EPS)
    elif fam == "bn":
        def f(x: Any, w: Any, b: Any) -> Any:
            return F.batch_norm(x, None, None, w, b, training=True, eps=EPS)
    elif fam == "gn":
        def f(x: Any, w: Any, b: Any) -> Any:
            return F.group_norm(x, case.groups, w, b, EPS)
    elif fam == "in":
        def f(x: Any, w: Any, b: Any) -> Any:
            return F.instance_norm(x, weight=w, bias=b, eps=EPS)
    else:
        def f(x: Any, w: Any, b: Any) -> Any:
            return F.rms_norm(x, (x.shape[-1],), w, eps=RMS_EPS)
    xs, ws, bs = (t.detach().requires_grad_(True) for t in (x, w, b))
    inputs = (xs, ws) if fam == "rms" else (xs, ws, bs)

    def fwd() -> Any:
        with torch.no_grad():
            return f(x, w, b)

    def fwdbwd() -> Any:
        y = f(xs, ws, bs)
        return y, torch.autograd.grad(y, inputs, dy)

    return Impl(fwd, fwdbwd)


# JAX (jit, CPU) -------------------------------------------------------------------------

def _jax_module() -> Any:
    try:
        import jax
    except Exception as e:
        raise Absent(f"JAX is not installed ({type(e).__name__})") from None
    return jax


def _jax(case: Case, a: dict[str, np.ndarray]) -> Impl:
    """The normalization in ``jax.numpy`` under ``jax.jit`` (XLA fuses it), on the CPU:
    forward, and forward+backward as the jitted ``jax.vjp`` (y and the cotangents of x, γ,
    β); both wait for their results (``block_until_ready``)."""
    jax = _jax_module()
    jnp = jax.numpy
    fam = case.family
    if fam not in ("ln", "bn", "gn", "in", "rms"):
        raise Absent("no JAX peer for this case (normalizations only)")
    cpu = jax.devices("cpu")[0]
    x, w, b, dy = (jax.device_put(a[k], cpu) for k in ("x", "w", "b", "dy"))
    nd = x.ndim
    groups = case.groups

    def norm(x: Any, axes: tuple[int, ...]) -> Any:
        mean = jnp.mean(x, axis=axes, keepdims=True)
        xc = x - mean
        return xc * jax.lax.rsqrt(jnp.mean(xc * xc, axis=axes, keepdims=True) + EPS)

    def f(x: Any, w: Any, b: Any) -> Any:
        if fam == "ln":
            return norm(x, (nd - 1,)) * w + b
        if fam == "rms":
            return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * w
        p = (1, x.shape[1]) + (1,) * (nd - 2)
        if fam == "bn":
            y = norm(x, (0,) + tuple(range(2, nd)))
        elif fam == "in":
            y = norm(x, tuple(range(2, nd)))
        else:
            y = norm(x.reshape(x.shape[0], groups, -1), (2,)).reshape(x.shape)
        return y * w.reshape(p) + b.reshape(p)

    fwd_j = jax.jit(f)

    def vjp(x: Any, w: Any, b: Any, dy: Any) -> Any:
        y, pullback = jax.vjp(f, x, w, b)
        return y, pullback(dy)

    fwdbwd_j = jax.jit(vjp)
    return Impl(lambda: fwd_j(x, w, b).block_until_ready(),
                lambda: jax.block_until_ready(fwdbwd_j(x, w, b, dy)))


# backends --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    """A library on a device. ``timer``: ``cpu`` (wall clock) or ``cuda`` (CUDA events);
    ``memory``: how :func:`benchmarks.timing.peak_memory` measures it."""

    id: str
    device: str
    timer: str
    memory: str | None
    description: str

    def prepare(self, case: Case, arrays: dict[str, np.ndarray], quick: bool = False) -> Impl:
        """The case's callables on this backend, or :class:`Absent` (``quick`` picks a model
        case's size)."""
        model = case.family in MODEL_FAMILIES

        def an(a: dict[str, Any]) -> Impl:
            return _arraynorm_model(case, a, quick) if model else _arraynorm(case, a)

        def tc(a: dict[str, Any], torch: Any) -> Impl:
            return _torch_model(case, a, quick, torch) if model else _torch(case, a)

        if self.id == "arraynorm-numpy":
            return an(arrays)
        if self.id == "arraynorm-portable":
            return _portable(an(arrays))
        if self.id == "naive-numpy":
            return _naive(case, arrays)
        if self.id == "arraynorm-cupy":
            cp = _cupy()
            return an({k: cp.asarray(v) for k, v in arrays.items()})
        if self.id == "jax-cpu":
            return _jax(case, arrays)
        torch = _torch_module()
        if self.id == "torch-cpu":
            return tc({k: torch.from_numpy(v) for k, v in arrays.items()}, torch)
        if not torch.cuda.is_available():
            raise Absent("no CUDA device visible to PyTorch")
        return tc({k: torch.from_numpy(v).to("cuda") for k, v in arrays.items()}, torch)

    def check(self) -> None:
        """Raise :class:`Absent` when this backend cannot run on this machine at all."""
        if self.id == "arraynorm-cupy":
            _cupy()
        elif self.id == "jax-cpu":
            _jax_module()
        elif self.id.startswith("torch"):
            torch = _torch_module()
            if self.id == "torch-cuda" and not torch.cuda.is_available():
                raise Absent("no CUDA device visible to PyTorch")


def _cupy() -> Any:
    try:
        import cupy as cp
    except Exception as e:
        raise Absent(f"CuPy is not installed ({type(e).__name__})") from None
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise Absent("CuPy finds no CUDA device")
    except Absent:
        raise
    except Exception as e:
        raise Absent(f"CuPy finds no CUDA device ({type(e).__name__})") from None
    return cp


def _torch_module() -> Any:
    try:
        import torch
    except Exception as e:
        raise Absent(f"PyTorch is not installed ({type(e).__name__})") from None
    return torch


BACKENDS = [
    Backend("arraynorm-numpy", "cpu", "cpu", "numpy", "arraynorm on NumPy (fast paths on)"),
    Backend("arraynorm-portable", "cpu", "cpu", "numpy", "arraynorm on NumPy, fast paths off (the array-API path)"),
    Backend("naive-numpy", "cpu", "cpu", "numpy", "textbook NumPy recipe (benchmarks/naive.py)"),
    Backend("torch-cpu", "cpu", "cpu", None, "torch.nn.functional + autograd on CPU"),
    Backend("jax-cpu", "cpu", "cpu", None, "jax.numpy under jax.jit (XLA fusion) + jax.vjp on CPU"),
    Backend("arraynorm-cupy", "gpu", "cuda", "cupy", "arraynorm on CuPy (portable path)"),
    Backend("torch-cuda", "gpu", "cuda", "torch-cuda", "torch.nn.functional + autograd on CUDA"),
]
