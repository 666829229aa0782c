"""nn.Probe: per-layer activations, cotangents, parameter gradients and tangents from one pass.

Oracle: the same quantities computed by hand on an identical model (same seed), one block at a
time — the forward chain h_{l+1} = block_l(h_l), the backward chain g_l = block_lᵀ(g_{l+1}),
the forward-mode chain t_{l+1} = J_l t_l — and the model's own ``gradients()``. And the probe
leaves no trace: after the block, no module has an instance attribute of its own.
"""

from __future__ import annotations

import numpy as np
import pytest

import arraynorm.nn as nn
from _helpers import assert_close, from_numpy, to_numpy


def _stack(seed=0):
    return nn.deep_stack(4, 6, in_features=3, out_features=2, norm="batch", activation="tanh",
                         residual=True, rng=seed)


def _by_hand(model, x, dy, v):
    """Block outputs, the cotangents arriving at them, and the tangents, one block at a time."""
    blocks = list(model)
    hs, h = [], x
    for b in blocks:
        h = b.forward(h)
        hs.append(h)
    ts, t = [], v
    for b in blocks:
        t = b.jvp(t)
        ts.append(t)
    gs, g = [None] * len(blocks), dy
    for i in reversed(range(len(blocks))):
        gs[i] = g
        g = blocks[i].backward(g)
    return hs, gs, g, ts


def _no_trace(model):
    return all(not {"forward", "backward", "jvp"} & set(vars(m)) for _, m in model.named_modules())


def test_probe_records_equal_the_chain_computed_by_hand():
    rng = np.random.default_rng(1)
    x, dy, v = rng.standard_normal((8, 3)), rng.standard_normal((8, 2)), rng.standard_normal((8, 3))
    model = _stack()
    with nn.Probe(model, depth=1) as p:
        y = model(x)
        dx = model.backward(dy)
        jv = model.jvp(v)
    assert p.names == [str(i) for i in range(5)]
    hs, gs, dx_ref, ts = _by_hand(_stack(), x, dy, v)
    for i, name in enumerate(p.names):
        np.testing.assert_array_equal(p.activations[name], hs[i])
        np.testing.assert_array_equal(p.output_grads[name], gs[i])
        np.testing.assert_array_equal(p.tangents[name], ts[i])
        np.testing.assert_array_equal(p.inputs[name], x if i == 0 else hs[i - 1])
    np.testing.assert_array_equal(p.input_grads["0"], dx_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(y, hs[-1])
    np.testing.assert_array_equal(jv, ts[-1])
    assert set(p.param_grads) == set(model.gradients())
    for name, g in model.gradients().items():
        np.testing.assert_array_equal(p.param_grads[name], g)
    assert _no_trace(model)


def test_probe_selects_nested_modules_by_depth_glob_names_and_type():
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    model = _stack()
    # depth 2 inside Residual blocks: "1.block" is the residual branch f with h_out = h + f(h)
    with nn.Probe(model, depth=2) as p2, nn.Probe(model, names="*.block.1") as pn, \
            nn.Probe(model, types=nn.Linear) as pt:
        y = model(x)
        model.backward(dy)
    assert "1.block" in p2.names and "0.0" in p2.names
    np.testing.assert_allclose(p2.activations["1.block"],
                               model[1](model[0](x)) - model[0](x), rtol=1e-13, atol=1e-13)
    model(x), model.backward(dy)  # the hand computation above ran forwards: restore the caches
    assert pn.names == ["1.block.1", "2.block.1", "3.block.1"]  # the BatchNorms of the residual blocks
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], nn.BatchNorm) for n in pn.names)
    assert pt.names == ["0.0", "1.block.0", "2.block.0", "3.block.0", "4"]
    # the cotangent at a Linear's output is the one arriving there in the chain, and its weight
    # gradient is dyᵀ h_in
    lin = modules["2.block.0"]
    np.testing.assert_allclose(pt.param_grads["2.block.0.weight"],
                               pt.output_grads["2.block.0"].T @ pt.inputs["2.block.0"], rtol=1e-13)
    np.testing.assert_array_equal(pt.param_grads["2.block.0.weight"], lin.grads["weight"])
    with nn.Probe(model, names=["3", "4"]) as pl:
        model(x)
    assert set(pl.activations) == {"3", "4"}
    np.testing.assert_array_equal(pl.activations["4"], y)
    assert _no_trace(model)


def test_probe_on_a_transformer_stack_records_each_blocks_norms_and_gradient_norms():
    model = nn.transformer_stack(3, 8, 2, dim_feedforward=12, norm_position="pre", out_features=5, rng=3)
    x = np.random.default_rng(4).standard_normal((2, 4, 8))
    targets = np.random.default_rng(5).integers(0, 5, (2, 4))
    loss = nn.CrossEntropyLoss()
    with nn.Probe(model, names="*.norm1") as pn, nn.Probe(model, depth=1, transform=np.linalg.norm) as pd:
        loss(model(x), targets)
        model.backward(loss.backward())
    assert pn.names == ["0.norm1", "1.norm1", "2.norm1"]
    assert pd.names == ["0", "1", "2", "3", "4"]  # three blocks, the final LayerNorm, the read-out
    # transform keeps only a number per record: the Frobenius norm of the cotangent there
    by_hand = [np.linalg.norm(g) for g in _by_hand(model, x, loss.backward(), x)[1]]
    np.testing.assert_allclose([pd.output_grads[n] for n in pd.names], by_hand, rtol=1e-12)
    assert pd.param_grads["0.self_attn.in_proj.weight"] == pytest.approx(
        np.linalg.norm(model.gradients()["0.self_attn.in_proj.weight"]), rel=1e-12)


def test_probe_leaves_no_trace_after_an_exception_and_nested_probes_unwind():
    model = _stack()
    x = np.random.default_rng(6).standard_normal((8, 3))
    with pytest.raises(ZeroDivisionError):
        with nn.Probe(model, depth=1):
            model(x)
            1 / 0
    assert _no_trace(model)
    outer = nn.Probe(model, depth=1)
    with outer:
        with nn.Probe(model, depth=1) as inner:
            model(x)
        assert not _no_trace(model)  # the outer probe is still attached
        y = model(x)
    assert _no_trace(model)
    np.testing.assert_array_equal(outer.activations["4"], y)
    np.testing.assert_array_equal(inner.activations["4"], y)
    outer.clear()
    model(x)  # after the block nothing is recorded any more
    assert outer.activations == {}
    with pytest.raises(RuntimeError, match="already attached"):
        with outer:
            outer.attach()
    assert _no_trace(model)


def test_probe_norms_and_bad_arguments():
    model = _stack()
    x = np.random.default_rng(7).standard_normal((8, 3))
    with nn.Probe(model, depth=1) as p:
        model(x)
    norms = p.norms("activations")
    assert norms["4"] == pytest.approx(np.linalg.norm(p.activations["4"]), rel=1e-12)
    with pytest.raises(ValueError, match="kind must be one of"):
        p.norms("weights")
    with pytest.raises(ValueError, match="no module of Sequential matches"):
        nn.Probe(model, names="nothing*")
    with pytest.raises(ValueError, match="depth must be a non-negative int"):
        nn.Probe(model, depth=-1)
    with pytest.raises(TypeError, match="model must be an arraynorm.nn Module"):
        nn.Probe(object())


def test_probe_on_every_backend_records_the_backends_arrays(xp):
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    ref = _stack()
    with nn.Probe(ref, depth=1) as pr:
        ref(x)
        ref.backward(dy)
    model = _stack().to(xp)
    with nn.Probe(model, depth=1) as p:
        model(from_numpy(xp, x))
        model.backward(from_numpy(xp, dy))
    for name in p.names:
        assert_close(p.activations[name], pr.activations[name], xp=xp)
        assert_close(p.output_grads[name], pr.output_grads[name], xp=xp)
    assert np.isfinite(to_numpy(p.param_grads["0.0.weight"])).all()
