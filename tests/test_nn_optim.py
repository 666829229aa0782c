"""Optimizers against hand-computed updates: each rule is written out below in float64 NumPy
from its paper (SGD/Nesterov as PyTorch documents it, Adam, AdamW, LARS Algorithm 1, LAMB
Algorithm 2, the (block-)normalized gradient step, global-norm clipping), and three steps
with given gradients must reproduce it on every backend — in place where the backend allows.
(The PyTorch-optimizer trajectories are compared in test_nn_torch.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

import arraynorm.nn as nn
from arraynorm.optim import LAMB, LARS, SGD, Adam, AdamW, NormalizedSGD, supports_inplace
from _helpers import assert_close, backend_name, from_numpy

RNG = np.random.default_rng(0)
W0 = RNG.standard_normal((3, 4))
B0 = RNG.standard_normal(3)
GRADS = [(RNG.standard_normal((3, 4)), RNG.standard_normal(3)) for _ in range(3)]


def _norm(a):
    return float(np.sqrt(np.sum(a * a)))


# references: params is a list of float64 arrays; each returns a step(params, grads, t) fn

def ref_sgd(lr, momentum=0.0, dampening=0.0, wd=0.0, nesterov=False):
    bufs = {}

    def step(params, grads, t):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g + wd * p
            if momentum:
                bufs[i] = d.copy() if i not in bufs else momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            out.append(p - lr * d)
        return out
    return step


def ref_adam(lr, b1, b2, eps, wd, decoupled):
    m, v = {}, {}

    def step(params, grads, t):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if decoupled:
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
            m[i] = b1 * m.get(i, 0.0) + (1 - b1) * g
            v[i] = b2 * v.get(i, 0.0) + (1 - b2) * g * g
            mhat, vhat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            out.append(p - lr * mhat / (np.sqrt(vhat) + eps))
        return out
    return step


def ref_lars(lr, momentum, wd, eta, eps):
    vel = {}

    def step(params, grads, t):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            wn, gn = _norm(p), _norm(g)
            local = eta * wn / (gn + wd * wn + eps) if wn > 0 and gn > 0 else 1.0
            vel[i] = momentum * vel.get(i, 0.0) + lr * local * (g + wd * p)
            out.append(p - vel[i])
        return out
    return step


def ref_lamb(lr, b1, b2, eps, wd):
    m, v = {}, {}

    def step(params, grads, t):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            m[i] = b1 * m.get(i, 0.0) + (1 - b1) * g
            v[i] = b2 * v.get(i, 0.0) + (1 - b2) * g * g
            r = (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps) + wd * p
            ratio = _norm(p) / _norm(r) if _norm(p) > 0 and _norm(r) > 0 else 1.0
            out.append(p - lr * ratio * r)
        return out
    return step


def ref_normalized(lr, momentum, block, eps):
    sgd = ref_sgd(lr, momentum)

    def step(params, grads, t):
        if block:
            grads = [g / (_norm(g) + eps) for g in grads]
        else:
            total = np.sqrt(sum(np.sum(g * g) for g in grads))
            grads = [g / (total + eps) for g in grads]
        return sgd(params, grads, t)
    return step


def ref_clipped(inner, max_norm):
    def step(params, grads, t):
        total = np.sqrt(sum(np.sum(g * g) for g in grads))
        coef = min(1.0, max_norm / (total + 1e-6))
        return inner(params, [g * coef for g in grads], t)
    return step


CASES = {
    "sgd": (lambda m: SGD(m, 0.1), lambda: ref_sgd(0.1)),
    "sgd-momentum-wd": (lambda m: SGD(m, 0.1, momentum=0.9, dampening=0.2, weight_decay=0.05),
                        lambda: ref_sgd(0.1, 0.9, 0.2, 0.05)),
    "sgd-nesterov": (lambda m: SGD(m, 0.05, momentum=0.7, nesterov=True),
                     lambda: ref_sgd(0.05, 0.7, nesterov=True)),
    "adam": (lambda m: Adam(m, 0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1),
             lambda: ref_adam(0.01, 0.8, 0.9, 1e-6, 0.1, False)),
    "adamw": (lambda m: AdamW(m, 0.01, weight_decay=0.2), lambda: ref_adam(0.01, 0.9, 0.999, 1e-8, 0.2, True)),
    "lars": (lambda m: LARS(m, 0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=0.02, eps=1e-9),
             lambda: ref_lars(0.5, 0.9, 0.01, 0.02, 1e-9)),
    "lamb": (lambda m: LAMB(m, 0.02, weight_decay=0.01), lambda: ref_lamb(0.02, 0.9, 0.999, 1e-6, 0.01)),
    "normalized-block": (lambda m: NormalizedSGD(m, 0.1, momentum=0.5),
                         lambda: ref_normalized(0.1, 0.5, True, 1e-8)),
    "normalized-global": (lambda m: NormalizedSGD(m, 0.1, block=False),
                          lambda: ref_normalized(0.1, 0.0, False, 1e-8)),
    "adam-clipped": (lambda m: Adam(m, 0.01, max_grad_norm=0.5),
                     lambda: ref_clipped(ref_adam(0.01, 0.9, 0.999, 1e-8, 0.0, False), 0.5)),
    "sgd-clipped": (lambda m: SGD(m, 0.1, momentum=0.9, max_grad_norm=1.0),
                    lambda: ref_clipped(ref_sgd(0.1, 0.9), 1.0)),
}


def _layer(xp):
    layer = nn.Linear(4, 3, rng=0).to(xp)
    # copies: the optimizer updates the parameter arrays in place
    layer.weight, layer.bias = from_numpy(xp, W0.copy()), from_numpy(xp, B0.copy())
    return layer


@pytest.mark.parametrize("case", list(CASES))
def test_three_steps_match_the_hand_computed_update(xp, case):
    make, make_ref = CASES[case]
    layer = _layer(xp)
    opt, ref = make(layer), make_ref()
    w_id = id(layer.params["weight"])
    params = [W0.copy(), B0.copy()]
    for t, (gw, gb) in enumerate(GRADS, start=1):
        layer.grads["weight"], layer.grads["bias"] = from_numpy(xp, gw), from_numpy(xp, gb)
        opt.step()
        params = ref(params, [gw, gb], t)
        assert_close(layer.weight, params[0], xp=xp, err_msg=f"{case} step {t}")
        assert_close(layer.bias, params[1], xp=xp, err_msg=f"{case} step {t}")
    # in place where the library allows it: the parameter array keeps its identity
    assert (id(layer.params["weight"]) == w_id) == supports_inplace(layer.params["weight"])
    assert supports_inplace(layer.params["weight"]) == (backend_name(xp) != "dask")


def test_parameters_without_gradient_are_left_alone():
    layer = _layer(np)
    opt = SGD(layer, 0.1, momentum=0.9)
    layer.grads["weight"] = GRADS[0][0]
    opt.step()
    np.testing.assert_array_equal(layer.bias, B0)
    np.testing.assert_allclose(layer.weight, W0 - 0.1 * GRADS[0][0], rtol=1e-15)
    assert "bias" not in opt.state


def test_clipping_reports_the_norm_before_clipping():
    layer = _layer(np)
    opt = SGD(layer, 0.1, max_grad_norm=0.1)
    layer.grads["weight"], layer.grads["bias"] = GRADS[0]
    opt.step()
    total = np.sqrt(np.sum(GRADS[0][0] ** 2) + np.sum(GRADS[0][1] ** 2))
    np.testing.assert_allclose(float(opt.last_grad_norm), total, rtol=1e-12)


def test_optimizer_follows_a_model_moved_after_creation():
    import array_api_strict as xps

    layer = _layer(np)
    opt = SGD(layer, 0.1, momentum=0.9)
    layer.grads["weight"], layer.grads["bias"] = GRADS[0]
    opt.step()
    layer.to(xps)
    opt.to(xps)
    layer.grads["weight"], layer.grads["bias"] = (xps.asarray(g) for g in GRADS[1])
    opt.step()
    ref = ref_sgd(0.1, 0.9)
    params = ref(ref([W0, B0], list(GRADS[0]), 1), list(GRADS[1]), 2)
    assert_close(layer.weight, params[0], xp=xps)


def test_a_training_loop_lowers_the_loss_on_every_backend(xp):
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((32, 3)), rng.standard_normal((32, 1))
    model = nn.deep_stack(2, 8, in_features=3, out_features=1, norm="batch", rng=2).to(xp)
    opt, loss = Adam(model, 0.03), nn.MSELoss()
    xb, tb = from_numpy(xp, x), from_numpy(xp, t)
    first = None
    for _ in range(8):  # few steps: on Dask every step deepens one lazy graph
        value = loss(model(xb), tb)
        first = value if first is None else first
        model.backward(loss.backward())
        opt.step()
    from _helpers import to_numpy
    assert float(to_numpy(loss(model(xb), tb))) < 0.8 * float(to_numpy(first))


def test_bad_hyperparameters_are_refused():
    layer = _layer(np)
    with pytest.raises(ValueError, match="SGD: lr must be >= 0.0"):
        SGD(layer, -0.1)
    with pytest.raises(ValueError, match=r"SGD: momentum must be in \[0, 1\)"):
        SGD(layer, 0.1, momentum=1.0)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        SGD(layer, 0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"Adam: betas\[1\] must be in"):
        Adam(layer, betas=(0.9, 1.2))
    with pytest.raises(ValueError, match="lr must be finite"):
        LAMB(layer, float("nan"))
    with pytest.raises(TypeError, match="LARS: model must be an arraynorm.nn Module"):
        LARS([W0], 0.1)
    with pytest.raises(ValueError, match="max_grad_norm must be >= 0.0"):
        SGD(layer, 0.1, max_grad_norm=-1.0)


def test_jax_parameters_are_updated_functionally():
    # JAX arrays are immutable: the optimizer writes new arrays back into the model, and the
    # trajectory equals NumPy's (in-place) one
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(6)
        x, t = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
        # LayerNorm: a bias before BN has a zero gradient that Adam would turn into noise
        ref = nn.deep_stack(2, 5, in_features=3, out_features=2, norm="layer", rng=7)
        model = nn.deep_stack(2, 5, in_features=3, out_features=2, norm="layer", rng=7).to(jnp)
        opts = [Adam(ref, 0.01, max_grad_norm=1.0), Adam(model, 0.01, max_grad_norm=1.0)]
        loss = nn.MSELoss()
        w_before = model[0][0].params["weight"]
        assert not supports_inplace(w_before)
        for _ in range(3):
            for m, opt, xx, tt in ((ref, opts[0], x, t), (model, opts[1], jnp.asarray(x), jnp.asarray(t))):
                loss(m(xx), tt)
                m.backward(loss.backward())
                opt.step()
        assert model[0][0].params["weight"] is not w_before
        for (name, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-14, err_msg=name)
        for name, a in model.state_dict().items():
            np.testing.assert_allclose(np.asarray(a), ref.state_dict()[name], rtol=1e-12, err_msg=name)
    finally:
        jax.config.update("jax_enable_x64", False)
