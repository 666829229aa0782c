"""arraynorm.nn layers: exact gradients (SciPy finite differences in float64), every backend,
and the layer protocol (modes, caching, state dicts, moving between libraries and devices,
errors).

Finite differences: for a random direction (v_x, v_θ) over the input and *every* parameter,
``scipy.differentiate.derivative`` (adaptive, order 8, with an error estimate) differentiates
t ↦ ⟨dy, model(x + t·v_x; θ + t·v_θ)⟩ at 0, which must equal ⟨dx, v_x⟩ + Σ⟨dθ, v_θ⟩ from the
closed-form backward passes. Smooth activations (tanh, GELU) keep the function
differentiable along the line.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.differentiate import derivative

import arraynorm.nn as nn
from _helpers import assert_close, backend_name, from_numpy, to_numpy

# ------------------------------------------------------------------------------------------
# finite differences


def directional_check(model: nn.Module, x: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(analytic, finite-difference, its error estimate) of the directional derivative."""
    rng = np.random.default_rng(seed)
    y = model(x)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    slots = model.parameter_slots()
    base = {name: m.params[k] for name, m, k in slots}
    grads = model.gradients()
    vx = rng.standard_normal(x.shape)
    vs = {name: rng.standard_normal(a.shape) for name, a in base.items()}
    analytic = float(np.sum(dx * vx) + sum(np.sum(grads[n] * vs[n]) for n in base))

    def f(t):
        out = np.empty(np.shape(t))
        for i, ti in np.ndenumerate(t):
            for name, m, k in slots:
                m.params[k] = base[name] + ti * vs[name]
            out[i] = np.sum(dy * model(x + ti * vx))
        for name, m, k in slots:
            m.params[k] = base[name]
        return out

    res = derivative(f, 0.0, initial_step=0.05, order=8, maxiter=12,
                     tolerances=dict(rtol=1e-11, atol=1e-13))
    return analytic, float(res.df), float(res.error)


def assert_directional(model, x, seed=0):
    analytic, fd, err = directional_check(model, x, seed)
    assert abs(analytic - fd) <= 1e-8 * max(1.0, abs(fd)) + 10 * err, (analytic, fd, err)


FD_NORMS = ["none", "batch", "batch_uncentered", "layer", "group", "rms", "position", "dbn",
            "iternorm", "weight_norm", "weight_standardization", "centered_weight_norm"]


@pytest.mark.parametrize("norm", FD_NORMS)
def test_mlp_gradient_matches_finite_differences(norm):
    kw = {"num_groups": 2} if norm in ("group", "dbn", "iternorm") else {}
    model = nn.deep_stack(3, 6, in_features=4, out_features=2, norm=norm, activation="tanh",
                          norm_kwargs=kw, init="gaussian", sigma_w=1.3, sigma_b=0.2, rng=0)
    x = np.random.default_rng(1).standard_normal((12, 4))
    assert_directional(model, x)


@pytest.mark.parametrize("reparam", ["orthogonal", "oni"])
def test_orthogonalized_linear_gradient_matches_finite_differences(reparam):
    # OWN is exact up to eps; ONI's Newton iterations converge towards orthogonal rows
    kw, tol = ({"T": 12}, 1e-4) if reparam == "oni" else ({"eps": 1e-12}, 1e-10)
    layer = nn.ReparamLinear(6, 4, reparam=reparam, reparam_kwargs=kw, rng=3)
    w = layer.effective_weight()
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=tol)
    model = nn.Sequential(layer, nn.Tanh(), nn.Linear(4, 2, rng=4))
    assert_directional(model, np.random.default_rng(5).standard_normal((5, 6)))


def test_spectral_norm_stack_gradient_matches_finite_differences_in_eval_mode():
    # in training each forward moves u (power iteration) and the gradient treats u as a
    # constant, as PyTorch does; in eval u is fixed and σ̃ = ‖Wᵀu‖, whose derivative u vᵀ
    # the backward pass uses, so it is the exact gradient
    model = nn.deep_stack(3, 6, in_features=4, out_features=2, norm="spectral_norm",
                          activation="gelu", rng=2).eval()
    assert_directional(model, np.random.default_rng(3).standard_normal((5, 4)))


def test_eval_mode_batchnorm_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    model = nn.deep_stack(3, 6, in_features=4, norm="batch", activation="tanh", rng=4)
    for _ in range(2):
        model(rng.standard_normal((8, 4)) + 1.0)
    assert_directional(model.eval(), rng.standard_normal((8, 4)))


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_transformer_block_gradient_matches_finite_differences(norm_first):
    block = nn.TransformerEncoderBlock(8, 2, 12, activation="gelu", norm_first=norm_first,
                                       causal=True, rng=5)
    assert_directional(block, np.random.default_rng(6).standard_normal((2, 5, 8)))


def test_residual_rms_transformer_stack_gradient_matches_finite_differences():
    model = nn.Sequential(nn.TransformerEncoderBlock(8, 4, 8, norm="rms", norm_first=True, activation="tanh", rng=7),
                          nn.Residual(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8, rng=8), nn.Tanh()), scale=0.5))
    assert_directional(model, np.random.default_rng(9).standard_normal((2, 4, 8)))


def test_depth_200_width_256_stack_runs_forward_and_backward():
    # the size the analysis package studies; one forward + backward takes well under a second
    # on NumPy (no timing assertion). A residual LayerNorm stack keeps the signal finite, so
    # the directional derivative through all 200 blocks can be checked too.
    model = nn.deep_stack(200, 256, norm="layer", residual=True, residual_scale=200 ** -0.5, rng=10)
    x = np.random.default_rng(11).standard_normal((64, 256))
    y = model(x)
    dx = model.backward(np.ones_like(y))
    assert y.shape == dx.shape == (64, 256) and np.all(np.isfinite(dx))
    assert len(model.gradients()) == 200 * 4
    assert all(g is not None and np.all(np.isfinite(g)) for g in model.gradients().values())
    # gradient along the input only (parameters fixed): one FD derivative, a few dozen passes
    rng = np.random.default_rng(12)
    dy = rng.standard_normal(y.shape)
    model(x)
    dx = model.backward(dy)
    v = rng.standard_normal(x.shape)
    res = derivative(lambda t: np.array([np.sum(dy * model(x + ti * v)) for ti in np.ravel(t)]).reshape(np.shape(t)),
                     0.0, initial_step=0.05, order=4, maxiter=4)
    assert abs(np.sum(dx * v) - res.df) <= 1e-6 * abs(res.df) + 10 * res.error


def test_deep_batchnorm_stack_200_by_256_backward_is_finite():
    model = nn.deep_stack(200, 256, norm="batch", rng=13)
    x = np.random.default_rng(14).standard_normal((64, 256))
    y = model(x)
    dx = model.backward(np.ones_like(y) / y.size)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert model[0][1].num_batches_tracked == 1


# ------------------------------------------------------------------------------------------
# every backend: the same model gives the same numbers, in the backend's own arrays

BACKEND_NORMS = ["none", "batch", "layer", "group", "rms", "batch_renorm", "iternorm", "dbn",
                 "weight_norm", "spectral_norm", "weight_standardization"]


@pytest.mark.parametrize("norm", BACKEND_NORMS)
def test_mlp_on_every_backend_matches_numpy(xp, norm):
    kw = {"num_groups": 2} if norm in ("group", "dbn", "iternorm") else {}

    def build():
        return nn.deep_stack(2, 4, in_features=3, out_features=2, norm=norm, activation="gelu",
                             norm_kwargs=kw, rng=20)

    if norm == "dbn" and backend_name(xp) == "dask":
        # ZCA needs linalg.eigh, which Dask lacks: a clear error, never a wrong answer
        with pytest.raises(NotImplementedError, match="dask"):
            build().to(xp)(from_numpy(xp, np.ones((6, 3))))
        return

    rng = np.random.default_rng(21)
    x, dy = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    ref = build()
    y_ref, dx_ref = ref(x), ref.backward(dy)
    model = build().to(xp)
    xb = from_numpy(xp, x)
    y = model(xb)
    dx = model.backward(from_numpy(xp, dy))
    assert_close(y, y_ref, xp=xp, dtype=xb.dtype)
    assert_close(dx, dx_ref, xp=xp, dtype=xb.dtype)
    for name, g in model.gradients().items():
        assert_close(g, ref.gradients()[name], xp=xp, err_msg=name)
    for name, b in model.state_dict().items():
        if hasattr(b, "shape"):
            assert_close(b, ref.state_dict()[name], xp=xp, err_msg=name)
    model.eval(), ref.eval()
    assert_close(model(xb), ref(x), xp=xp)


def test_transformer_block_on_every_backend_matches_numpy(xp):
    rng = np.random.default_rng(22)
    x, dy = rng.standard_normal((2, 4, 6)), rng.standard_normal((2, 4, 6))
    ref = nn.TransformerEncoderBlock(6, 2, 8, causal=True, norm_first=True, rng=23)
    y_ref, dx_ref = ref(x), ref.backward(dy)
    model = nn.TransformerEncoderBlock(6, 2, 8, causal=True, norm_first=True, rng=23).to(xp)
    y = model(from_numpy(xp, x))
    assert_close(y, y_ref, xp=xp)
    assert_close(model.backward(from_numpy(xp, dy)), dx_ref, xp=xp)
    assert_close(model.self_attn.in_proj.grads["weight"], ref.self_attn.in_proj.grads["weight"], xp=xp)


def test_float32_model_keeps_float32(xp):
    rng = np.random.default_rng(24)
    x = rng.standard_normal((8, 3))
    ref = nn.deep_stack(2, 5, in_features=3, norm="batch", activation="tanh", rng=25)
    model = nn.deep_stack(2, 5, in_features=3, norm="batch", activation="tanh", rng=25).to(xp, dtype="float32")
    xb = from_numpy(xp, x, "float32")
    y = model(xb)
    dx = model.backward(xp.ones_like(y))
    assert_close(y, ref(x), xp=xp, dtype=xp.float32, rtol=1e-4, atol=1e-4)
    assert_close(dx, ref.backward(np.ones((8, 5))), xp=xp, dtype=xp.float32, rtol=1e-4, atol=1e-4)
    assert all(g.dtype == xp.float32 for g in model.gradients().values())


def test_adain_layer_on_every_backend(xp):
    rng = np.random.default_rng(26)
    c, s = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 5, 5)) * 2 + 1
    ref = nn.AdaIN()
    y_ref = ref(c, s)
    dc_ref, ds_ref = ref.backward(np.ones_like(y_ref) + c)
    layer = nn.AdaIN()
    y = layer(from_numpy(xp, c), from_numpy(xp, s))
    dc, ds = layer.backward(from_numpy(xp, np.ones_like(y_ref) + c))
    assert_close(y, y_ref, xp=xp)
    assert_close(dc, dc_ref, xp=xp)
    assert_close(ds, ds_ref, xp=xp)
    # statistics of the output are the style's (the method's defining property)
    yn = to_numpy(y)
    np.testing.assert_allclose(yn.mean(axis=(2, 3)), s.mean(axis=(2, 3)), atol=1e-10)


# ------------------------------------------------------------------------------------------
# layer protocol


def test_state_dict_round_trip_restores_outputs_and_buffers():
    rng = np.random.default_rng(30)
    model = nn.deep_stack(3, 5, in_features=2, out_features=1, norm="batch", rng=31)
    saved = model.state_dict()
    x = rng.standard_normal((7, 2))
    y0 = model(x)                     # training forward: moves the running statistics
    model.backward(np.ones_like(y0))
    from arraynorm.optim import SGD
    SGD(model, 0.1).step()            # in-place update: the saved copies must not change
    assert model[0][1].num_batches_tracked == 1
    model.load_state_dict(saved)
    assert model[0][1].num_batches_tracked == 0
    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(a, saved[name])
    np.testing.assert_array_equal(model(x), y0)
    fresh = nn.deep_stack(3, 5, in_features=2, out_features=1, norm="batch", rng=99)
    fresh.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(fresh.eval()(x), model.eval()(x))


def test_state_dict_names_follow_pytorch():
    model = nn.Sequential(nn.Linear(2, 3, rng=0), nn.BatchNorm(3))
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                        "1.running_var", "1.num_batches_tracked"]


def test_load_state_dict_errors_name_keys_and_shapes():
    model = nn.Sequential(nn.Linear(2, 3, rng=0))
    with pytest.raises(KeyError, match=r"missing keys \['0.bias'\].*unexpected keys \['0.b'\]"):
        model.load_state_dict({"0.weight": np.zeros((3, 2)), "0.b": np.zeros(3)})
    with pytest.raises(ValueError, match=r"0.weight must have shape \(3, 2\), got \(2, 3\)"):
        model.load_state_dict({"0.weight": np.zeros((2, 3)), "0.bias": np.zeros(3)})
    model.load_state_dict({"0.weight": np.ones((3, 2))}, strict=False)
    np.testing.assert_array_equal(model[0].weight, np.ones((3, 2)))


def test_move_numpy_model_to_array_api_strict_and_back():
    import array_api_strict as xps

    rng = np.random.default_rng(32)
    x = rng.standard_normal((6, 3))
    model = nn.deep_stack(2, 4, in_features=3, norm="batch", rng=33)
    y_ref = model(x)
    dx_ref = model.backward(np.ones_like(y_ref))
    model.to(xps)
    assert all(type(a).__module__.startswith("array_api_strict") for a in model.parameters())
    assert all(type(a).__module__.startswith("array_api_strict") for a in model.gradients().values())
    assert type(model[0][1].running_mean).__module__.startswith("array_api_strict")
    y = model(xps.asarray(x))
    assert_close(y, y_ref, xp=xps)
    assert_close(model.backward(xps.ones_like(y)), dx_ref, xp=xps)
    model.to(np)
    assert all(isinstance(a, np.ndarray) for a in model.parameters())
    model.train()


def test_move_between_devices_and_mixed_devices_are_refused():
    import array_api_strict as xps

    dev = xps.Device("device1")
    model = nn.Sequential(nn.Linear(3, 2, rng=0), nn.LayerNorm(2)).to(xps, device=dev)
    assert all(a.device == dev for a in model.parameters())
    x = xps.asarray(np.ones((4, 3)), device=dev)
    y = model(x)
    assert y.device == dev and model.backward(xps.ones_like(y)).device == dev
    with pytest.raises(ValueError, match="Linear.forward: weight is on device .* but x is on device"):
        model(xps.asarray(np.ones((4, 3))))


def test_mixed_namespaces_raise_type_error_naming_arguments():
    import array_api_strict as xps

    layer = nn.Linear(3, 2, rng=0)
    with pytest.raises(TypeError, match="Linear.forward: weight is a numpy array but x is a array_api_strict array"):
        layer(xps.asarray(np.ones((2, 3))))


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match=r"Linear.forward: x must have shape \(\.\.\., 3\)"):
        nn.Linear(3, 2, rng=0)(np.ones((2, 4)))
    with pytest.raises(TypeError, match="x must have a real floating dtype.*cast the input"):
        nn.Linear(3, 2, rng=0)(np.ones((2, 3), np.int64))
    with pytest.raises(ValueError, match="BatchNorm.forward: x must have \\(4,\\) features"):
        nn.BatchNorm(4)(np.ones((5, 3)))
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        nn.BatchNorm(3)(np.ones((1, 3)))
    with pytest.raises(ValueError, match="GroupNorm: num_groups must be a positive int dividing"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match="MultiHeadSelfAttention: num_heads=3 must divide embed_dim=8"):
        nn.MultiHeadSelfAttention(8, 3)
    with pytest.raises(ValueError, match="momentum must be in"):
        nn.BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match="deep_stack: norm must be one of"):
        nn.deep_stack(2, 3, norm="bn")
    with pytest.raises(ValueError, match="norm_position must be 'before' or 'after'"):
        nn.deep_stack(2, 3, norm_position="middle")
    with pytest.raises(ValueError, match="make_activation: activation must be one of"):
        nn.deep_stack(2, 3, activation="swish")
    with pytest.raises(ValueError, match="init must be one of"):
        nn.Linear(2, 2, init="kaiming")
    with pytest.raises(ValueError, match="Residual.forward: the block maps"):
        nn.Residual(nn.Linear(3, 2, rng=0))(np.ones((2, 3)))
    with pytest.raises(ValueError, match="CrossEntropyLoss.forward: class-index target must have shape"):
        nn.CrossEntropyLoss()(np.zeros((3, 2)), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="MSELoss.forward: target must have y's shape"):
        nn.MSELoss()(np.zeros((3, 2)), np.zeros((2, 3)))


def test_requires_grad_off_caches_nothing_and_backward_says_why():
    model = nn.deep_stack(2, 3, norm="layer", rng=0).requires_grad_(False)
    y = model(np.ones((2, 3)))
    assert all(m._cache is None for _, m in model.named_modules())
    with pytest.raises(RuntimeError, match="nothing cached, gradients are disabled"):
        model.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="forward has not been called"):
        nn.Linear(2, 2, rng=0).backward(np.ones((1, 2)))


def test_repeated_backward_after_one_forward_gives_jacobian_rows():
    # backward does not consume the cache: rows of the Jacobian from one forward pass
    model = nn.deep_stack(2, 3, in_features=2, norm="batch", activation="tanh", rng=1)
    x = np.random.default_rng(2).standard_normal((4, 2))
    y = model(x)
    rows = []
    for i in range(y.size):
        e = np.zeros(y.size)
        e[i] = 1.0
        rows.append(model.backward(e.reshape(y.shape)).ravel())
    jac = np.array(rows)
    h = 1e-6
    cols = []
    for j in range(x.size):
        d = np.zeros(x.size)
        d[j] = h
        cols.append((model(x + d.reshape(x.shape)) - model(x - d.reshape(x.shape))).ravel() / (2 * h))
    np.testing.assert_allclose(jac, np.array(cols).T, rtol=1e-6, atol=1e-8)


def test_train_eval_switch_batch_and_running_statistics():
    rng = np.random.default_rng(3)
    bn = nn.BatchNorm(2, momentum=None)
    batches = [rng.standard_normal((10, 2)) * 2 + 3 for _ in range(5)]
    for b in batches:
        y = bn(b)
        np.testing.assert_allclose(y.mean(0), 0, atol=1e-12)
    allx = np.stack(batches)
    np.testing.assert_allclose(bn.running_mean, allx.mean(axis=1).mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, allx.var(axis=1, ddof=1).mean(0), rtol=1e-12)
    bn.eval()
    x = rng.standard_normal((3, 2))
    np.testing.assert_allclose(bn(x), (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5), rtol=1e-12)
    assert bn.num_batches_tracked == 5


@pytest.mark.parametrize("scheme", ["gaussian", "he", "xavier", "xavier_uniform", "uniform"])
def test_initializations_have_the_theorys_variance(scheme):
    fan_in, fan_out = 400, 300
    layer = nn.Linear(fan_in, fan_out, init=scheme, sigma_w=1.7 if scheme == "gaussian" else None,
                      sigma_b=0.3 if scheme == "gaussian" else None, rng=0)
    expected = {"gaussian": 1.7 ** 2 / fan_in, "he": 2.0 / fan_in, "xavier": 2.0 / (fan_in + fan_out),
                "xavier_uniform": 2.0 / (fan_in + fan_out), "uniform": 1.0 / (3 * fan_in)}[scheme]
    w = layer.weight
    n = w.size
    # the sample variance of n iid draws has relative standard deviation ≈ sqrt(2/n) (≤ 0.5%)
    assert abs(w.var() / expected - 1) < 6 * np.sqrt(2 / n)
    assert abs(w.mean()) < 6 * np.sqrt(expected / n)
    if scheme == "gaussian":
        assert abs(layer.bias.std() / 0.3 - 1) < 0.25
    elif scheme != "uniform":
        np.testing.assert_array_equal(layer.bias, 0)


@pytest.mark.parametrize("shape", [(5, 8), (8, 5), (6, 6)])
def test_orthogonal_initialization_is_orthogonal_times_gain(shape):
    import scipy.linalg

    layer = nn.Linear(shape[1], shape[0], init="orthogonal", sigma_w=1.5, rng=1)
    s = scipy.linalg.svdvals(layer.weight)
    np.testing.assert_allclose(s, 1.5, rtol=1e-12)


def test_same_seed_same_model_on_every_backend(xp):
    a = nn.Linear(4, 3, rng=5, xp=xp, dtype=xp.float64)
    b = nn.Linear(4, 3, rng=5)
    assert_close(a.weight, b.weight, xp=xp, rtol=0, atol=0)


def test_activations_match_their_numpy_definitions(xp):
    x = np.linspace(-3, 3, 25)
    dy = np.cos(np.arange(25.0))
    c, k = np.sqrt(2 / np.pi), 0.044715
    u = c * (x + k * x ** 3)
    refs = {
        nn.ReLU(): (np.maximum(x, 0), dy * (x > 0)),
        nn.Tanh(): (np.tanh(x), dy / np.cosh(x) ** 2),
        nn.GELU(): (0.5 * x * (1 + np.tanh(u)),
                    dy * (0.5 * (1 + np.tanh(u)) + 0.5 * x / np.cosh(u) ** 2 * c * (1 + 3 * k * x ** 2))),
        nn.HardTanh(-1.5, 2.0): (np.clip(x, -1.5, 2.0), dy * ((x > -1.5) & (x < 2.0))),
        nn.Identity(): (x, dy),
    }
    for layer, (y_ref, dx_ref) in refs.items():
        y = layer(from_numpy(xp, x))
        assert_close(y, y_ref, xp=xp, err_msg=type(layer).__name__)
        assert_close(layer.backward(from_numpy(xp, dy)), dx_ref, xp=xp, err_msg=type(layer).__name__)


def test_losses_on_every_backend_match_numpy_definitions(xp):
    rng = np.random.default_rng(40)
    z = rng.standard_normal((5, 4)) * 20
    t = rng.integers(0, 4, 5)
    zmax = z.max(axis=1, keepdims=True)
    logp = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    onehot = np.eye(4)[t]
    ce = nn.CrossEntropyLoss()
    assert_close(ce(from_numpy(xp, z), from_numpy(xp, t)), -np.mean(logp[np.arange(5), t]), xp=xp)
    assert_close(ce.backward(), (np.exp(logp) - onehot) / 5, xp=xp)
    y, target = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    mse = nn.MSELoss()
    assert_close(mse(from_numpy(xp, y), from_numpy(xp, target)), np.mean((y - target) ** 2), xp=xp)
    assert_close(mse.backward(), 2 * (y - target) / y.size, xp=xp)


def test_sequential_slices_share_layers_and_attention_weights_are_causal():
    model = nn.deep_stack(4, 3, norm="layer", rng=0)
    head = model[:2]
    x = np.random.default_rng(1).standard_normal((2, 3))
    np.testing.assert_array_equal(model[2:](head(x)), model(x))
    attn = nn.MultiHeadSelfAttention(4, 2, causal=True, rng=2)
    attn(np.random.default_rng(3).standard_normal((1, 5, 4)))
    p = attn.attention_weights
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-14)
    assert np.all(np.triu(p[0, 0], k=1) == 0) and p.shape == (1, 2, 5, 5)


def test_deep_stack_group_norm_default_groups_divide_any_width():
    for width in (12, 10, 7):
        model = nn.deep_stack(2, width, norm="group", rng=0)
        y = model.forward(np.random.default_rng(1).standard_normal((4, width)))
        assert y.shape[0] == 4 and np.all(np.isfinite(y))


# the NumPy lanes of ReLU, softmax, Linear and attention: the generic code's values, bit for bit,
# where NaN, inf, signed zeros and views reach them (array_api_strict runs the generic code);
# softmax's compiled sweeps ([jit], from 64 KiB) are tested against float64 in test_kernels

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_relu_on_numpy_is_the_where_of_the_generic_code_bit_for_bit(dtype):
    import array_api_strict as xs

    rng = np.random.default_rng(50)
    x = rng.standard_normal((9, 31)).astype(dtype)
    dy = rng.standard_normal((9, 31)).astype(dtype)
    x[0, :6] = [np.nan, -0.0, 0.0, np.inf, -np.inf, 1.0]
    dy[0, :6] = [1.0, np.inf, np.nan, np.nan, -np.inf, np.inf]
    dy[1, :3] = [np.nan, np.inf, -np.inf]
    for xa, da in ((x, dy), (x.T, dy.T), (x[:, ::2], dy[:, ::2]), (x[2, 3, ...], dy[2, 3, ...])):
        layer = nn.ReLU()
        y, dx = layer(xa), layer.backward(da)
        if dtype == np.float16:  # array_api_strict has no float16: the generic code's where
            ys, dxs = np.where(xa > 0, xa, 0).astype(dtype), np.where(xa > 0, da, 0).astype(dtype)
        else:
            strict = nn.ReLU()
            ys, dxs = strict(xs.asarray(xa)), strict.backward(xs.asarray(da))
        assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == xa.shape
        assert isinstance(y, np.ndarray) and isinstance(dx, np.ndarray)
        np.testing.assert_array_equal(y, np.asarray(ys))
        np.testing.assert_array_equal(dx, np.asarray(dxs))   # NaN where the generic code has NaN
        np.testing.assert_array_equal(np.signbit(dx), np.signbit(np.asarray(dxs)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_on_numpy_is_the_generic_code_bit_for_bit(dtype):
    import array_api_compat.numpy as cnp
    import array_api_strict as xs

    from arraynorm.nn.functional import softmax, softmax_backward

    rng = np.random.default_rng(51)
    z = (rng.standard_normal((3, 4, 6)) * 8).astype(dtype)
    g = rng.standard_normal((3, 4, 6)).astype(dtype)
    z[0, 0, :2] = -np.inf
    for axis in (-1, 0, 1):
        p, ps = softmax(cnp, z, axis), softmax(xs, xs.asarray(z), axis)
        np.testing.assert_array_equal(p, np.asarray(ps))
        gb = softmax_backward(cnp, g, p, axis)
        np.testing.assert_array_equal(gb, np.asarray(softmax_backward(xs, xs.asarray(g), ps, axis)))
        assert p.dtype == gb.dtype == dtype


def test_linear_and_attention_on_numpy_batches_equal_the_generic_code_and_float64_einsum():
    import array_api_strict as xs

    rng = np.random.default_rng(52)
    x = rng.standard_normal((3, 5, 8))
    dy = rng.standard_normal((3, 5, 6))
    lin, ref = nn.Linear(8, 6, rng=3), nn.Linear(8, 6, rng=3).to(xs)
    w, b = lin.weight, lin.bias
    y = lin(x)
    np.testing.assert_allclose(y, np.einsum("nti,oi->nto", x, w) + b, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(y, np.asarray(ref(xs.asarray(x))), rtol=1e-15, atol=1e-15)
    dx = lin.backward(dy)
    np.testing.assert_allclose(dx, np.einsum("nto,oi->nti", dy, w), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(lin.grads["weight"], np.einsum("nto,nti->oi", dy, x), rtol=1e-13, atol=1e-13)
    assert dx.shape == x.shape
    # attention (in_proj on (N, T, 3D) cotangents written head by head on NumPy)
    attn, attn_s = nn.MultiHeadSelfAttention(8, 2, rng=4), nn.MultiHeadSelfAttention(8, 2, rng=4).to(xs)
    dya = rng.standard_normal((3, 5, 8))
    attn(x), attn_s(xs.asarray(x))
    np.testing.assert_allclose(attn.backward(dya), np.asarray(attn_s.backward(xs.asarray(dya))),
                               rtol=1e-13, atol=1e-13)
    for k in ("weight", "bias"):
        np.testing.assert_allclose(attn.in_proj.grads[k], np.asarray(attn_s.in_proj.grads[k]),
                                   rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------------------------------
# what a layer remembers between calls (its normalizer, the checks of an input signature and
# the implementation chosen for it) must never change an answer or let a bad input through


def test_remembered_checks_still_refuse_every_bad_input_after_good_calls():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    bn, lin, relu = nn.BatchNorm(8), nn.Linear(8, 4, rng=0), nn.ReLU()
    for _ in range(2):  # the second call is answered from what the first remembered
        bn(x), lin(x), relu(x)
    with pytest.raises(ValueError, match=r"BatchNorm.forward: x must have \(8,\) features"):
        bn(x[:, :7])
    with pytest.raises(ValueError, match="BatchNorm"):  # one value per statistic
        bn(x[:1])
    with pytest.raises(TypeError, match="BatchNorm: x must have a real floating dtype"):
        bn(x.astype(np.int32))
    bn.weight = np.ones(8, np.int64)  # a parameter of another dtype: checked again
    with pytest.raises(TypeError, match="weight must have a real floating dtype"):
        bn(x)
    bn.weight = np.ones(7, np.float32)
    with pytest.raises(ValueError, match="weight"):
        bn(x)
    with pytest.raises(ValueError, match=r"Linear.forward: x must have shape \(\.\.\., 8\)"):
        lin(x[:, :7])
    with pytest.raises(TypeError, match="Linear.forward: x must have a real floating dtype"):
        lin(x.astype(np.int64))
    with pytest.raises(TypeError, match="ReLU.forward: x must have a real floating dtype"):
        relu(x.astype(np.int64))


def test_a_layer_follows_its_settings_and_the_fast_path_switch_between_calls():
    """eps, the mode and the fast-path switch changed between calls on one layer give what
    a fresh layer with those settings gives (float64 reference: the portable path)."""
    import arraynorm as an
    from arraynorm._kernels import PORTABLE

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((512, 1024)) * 3 + 2).astype(np.float32)  # 2 MiB: a fast path's size
    bn = nn.BatchNorm(1024).to(np, dtype="float32")
    bn(x)
    fast = bn._saved()["ctx"].implementation
    assert fast is not None and fast is not PORTABLE
    bn.eps = 4.0
    y = bn(x)
    ref = nn.BatchNorm(1024, eps=4.0)(x.astype(np.float64))
    assert_close(y, ref, rtol=2e-6, atol=2e-6)
    with an.use_fast_paths(False):
        y_portable = bn(x)
        assert bn._saved()["ctx"].implementation is PORTABLE
    assert_close(y_portable, ref, rtol=2e-6, atol=2e-6)
    assert bn(x) is not None and bn._saved()["ctx"].implementation is fast
    bn.eval()
    y_eval = bn(x)
    mean, var = bn.running_mean.astype(np.float64), bn.running_var.astype(np.float64)
    assert_close(y_eval, (x - mean) / np.sqrt(var + 4.0), rtol=2e-6, atol=2e-6)


def test_a_normalizer_remembers_checks_per_signature_and_drops_them_when_copied():
    import copy
    import pickle

    import arraynorm as an

    rng = np.random.default_rng(2)
    norm = an.Normalizer(an.partition.Layer(), an.operation.Standardize(), repeated=True)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    w, b = rng.standard_normal(256).astype(np.float32), rng.standard_normal(256).astype(np.float32)
    y0, _ = an.Normalizer(an.partition.Layer(), an.operation.Standardize(), repeated=True).forward(x, w, b)
    norm.forward(x, w, b)
    assert len(norm._memo) == 1
    y1, _ = norm.forward(x, w, b)
    np.testing.assert_array_equal(y1, y0)  # answered from the memo: the same bits
    norm.forward(x.astype(np.float64), w, b)
    norm.forward(np.asfortranarray(x), w, b)
    assert len(norm._memo) == 3  # another dtype, other strides: checked and remembered apart
    old = norm.__getstate__()
    del old["_memo"]  # what a normalizer pickled before the memo existed holds
    unpickled_old = an.Normalizer.__new__(an.Normalizer)
    unpickled_old.__setstate__(old)
    for clone in (pickle.loads(pickle.dumps(norm)), copy.deepcopy(norm), copy.copy(norm),
                  unpickled_old):
        assert clone._memo == {} and clone.partition == norm.partition
        np.testing.assert_array_equal(clone.forward(x, w, b)[0], y0)
