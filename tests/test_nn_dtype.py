"""Layers compute in their input's floating dtype; parameters keep theirs (arraynorm.nn, *Dtypes*).

Oracles: the same layer run in float64 on the same (float32-representable) numbers, and
PyTorch's float16 layer norm / batch norm (CPU) for the float16 case."""

from __future__ import annotations

import numpy as np
import pytest

from arraynorm import nn, optim
from arraynorm.data import spirals

RNG = np.random.default_rng(12)


def _layers():
    return {
        "Linear": (lambda dt: nn.Linear(6, 5, rng=0, dtype=dt), (7, 6)),
        "WeightNormLinear": (lambda dt: nn.WeightNormLinear(6, 5, rng=0, dtype=dt), (7, 6)),
        "SpectralNormLinear": (lambda dt: nn.SpectralNormLinear(6, 5, rng=0, dtype=dt), (7, 6)),
        "ReparamLinear-oni": (lambda dt: nn.ReparamLinear(6, 5, reparam="oni", rng=0, dtype=dt), (7, 6)),
        "Conv2d": (lambda dt: nn.Conv2d(3, 4, 3, padding=1, rng=0, dtype=dt), (2, 3, 5, 5)),
        "BatchNorm": (lambda dt: nn.BatchNorm(3, dtype=dt), (8, 3, 2, 2)),
        "LayerNorm": (lambda dt: nn.LayerNorm(6, dtype=dt), (7, 6)),
        "GroupNorm": (lambda dt: nn.GroupNorm(2, 4, dtype=dt), (3, 4, 2, 2)),
        "IterNorm": (lambda dt: nn.IterNorm(6, dtype=dt), (16, 6)),
        "MultiHeadSelfAttention": (lambda dt: nn.MultiHeadSelfAttention(6, 2, rng=0, dtype=dt), (2, 4, 6)),
        "TransformerEncoderBlock": (lambda dt: nn.TransformerEncoderBlock(6, 2, rng=0, dtype=dt), (2, 4, 6)),
    }


@pytest.mark.parametrize("name", list(_layers()))
def test_float32_input_through_float64_parameters_matches_float64(name):
    make, shape = _layers()[name]
    x = RNG.standard_normal(shape).astype(np.float32)
    ref, layer = make(None), make(None)
    y_ref = ref(x.astype(np.float64))
    dy = RNG.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref = ref.backward(dy.astype(np.float64))
    y = layer(x)
    dx = layer.backward(dy)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(y, y_ref, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=2e-3, atol=2e-4)
    assert layer.grads.keys() == ref.grads.keys()
    for k, g in layer.grads.items():
        assert g.dtype == layer.params[k].dtype == np.float64, k   # the parameter's dtype
        np.testing.assert_allclose(g, ref.grads[k], rtol=2e-3, atol=2e-4 * max(1.0, np.abs(ref.grads[k]).max()))
    if hasattr(layer, "jvp") and name not in ("BatchNorm", "IterNorm"):
        t = layer.jvp(x)
        assert t.dtype == np.float32


@pytest.mark.parametrize("name", ["Linear", "Conv2d", "LayerNorm", "BatchNorm"])
def test_dtype_argument_makes_float32_parameters(name):
    make, shape = _layers()[name]
    layer = make("float32")
    assert all(p.dtype == np.float32 for p in layer.params.values())
    y = layer(RNG.standard_normal(shape).astype(np.float32))
    layer.backward(np.ones_like(y))
    assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in layer.grads.values())


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_float32_model_trains_on_float32_data(opt):
    x, t = spirals(256, 0)
    x = x.astype(np.float32)
    for dtype in (None, "float32"):   # float64 master parameters, then float32 ones
        model = nn.deep_stack(2, 32, in_features=2, out_features=2, norm="batch", rng=0, dtype=dtype)
        loss = nn.CrossEntropyLoss()
        o = optim.SGD(model, lr=0.1, momentum=0.9) if opt == "sgd" else optim.Adam(model, lr=1e-2)
        first = None
        for _ in range(60):
            out = model(x)
            value = float(loss(out, t))
            first = value if first is None else first
            model.backward(loss.backward())
            o.step()
        assert out.dtype == np.float32
        want = np.float64 if dtype is None else np.float32
        assert all(p.dtype == want for p in model.parameters())
        assert value < 0.8 * first


@pytest.mark.parametrize("kind", ["layer", "batch"])
def test_float16_input_through_a_norm_layer_matches_torch(kind):
    torch = pytest.importorskip("torch")
    x = (RNG.standard_normal((16, 8)) * 3 + 1).astype(np.float16)
    dy = RNG.standard_normal((16, 8)).astype(np.float16)
    layer = nn.LayerNorm(8) if kind == "layer" else nn.BatchNorm(8)
    layer.params["weight"][:] = np.linspace(0.5, 2.0, 8)
    y = layer(x)
    dx = layer.backward(dy)
    assert y.dtype == dx.dtype == np.float16
    assert layer.grads["weight"].dtype == np.float64
    # oracle: torch in float32 on the same float16 numbers (torch's float16 CPU kernels
    # also compute in float32), rounded to float16
    xt = torch.tensor(x.astype(np.float32), requires_grad=True)
    wt = torch.tensor(np.linspace(0.5, 2.0, 8), dtype=torch.float32, requires_grad=True)
    bt = torch.zeros(8, requires_grad=True)
    if kind == "layer":
        yt = torch.nn.functional.layer_norm(xt, (8,), wt, bt, 1e-5)
    else:
        yt = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    yt.backward(torch.tensor(dy.astype(np.float32)))
    np.testing.assert_allclose(y.astype(np.float32), yt.detach().numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(dx.astype(np.float32), xt.grad.numpy(), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(layer.grads["weight"], wt.grad.numpy(), rtol=1e-3, atol=1e-3)


def test_what_is_still_refused_says_how_to_fix_it():
    with pytest.raises(TypeError, match=r"Linear.forward: x must have a real floating dtype .*got "
                                        r"int64; .*cast the input"):
        nn.Linear(3, 2, rng=0)(np.ones((2, 3), np.int64))
    with pytest.raises(TypeError, match=r"Conv2d.forward: x must have a real floating dtype .*got bool.*cast"):
        nn.Conv2d(1, 1, 1, rng=0)(np.ones((1, 1, 2, 2), bool))
    layer = nn.Linear(3, 2, rng=0)
    layer.grads["weight"] = np.ones((2, 3), np.int64)
    with pytest.raises(TypeError, match=r"SGD.step: gradient of weight must have a real floating "
                                        r"dtype, got int64; set it as xp.astype"):
        optim.SGD(layer, lr=0.1).step()


def test_a_hand_set_gradient_in_another_dtype_is_cast_to_the_parameter():
    layer = nn.Linear(3, 2, rng=0, dtype="float32")
    before = layer.params["weight"].copy()
    layer.grads["weight"] = np.ones((2, 3), np.float64)
    optim.SGD(layer, lr=0.5).step()
    assert layer.params["weight"].dtype == np.float32
    np.testing.assert_array_equal(layer.params["weight"], before - np.float32(0.5))
