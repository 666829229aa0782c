"""Options the analysis studies need: Transformer initializations (Xiong et al. 2020),
``transformer_stack``, cross-entropy on sequence logits, uncentred (scale-only) batch norm.

Oracles: NumPy formulas written here, the initializations' defining properties (zero blocks,
identity, the variance of N(0, 1/fan_in) within sampling error), finite differences of the
forward, and the rank-collapse separation of Daneshmand et al. (2020). The comparisons with
PyTorch (transformer stack, cross-entropy on (N, T, V)) are in tests/test_nn_torch.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.differentiate import derivative

import arraynorm.nn as nn
from _helpers import assert_close, from_numpy


# ------------------------------------------------------------------------------------------
# Transformer initializations and the stack builder


def test_xiong2020_init_zero_query_key_identity_output_and_unit_over_fan_in_variance():
    d, ff = 64, 256
    block = nn.TransformerEncoderBlock(d, 4, ff, init="xiong2020", rng=0)
    w_in = block.self_attn.in_proj.weight
    np.testing.assert_array_equal(w_in[:2 * d], 0.0)
    np.testing.assert_array_equal(block.self_attn.out_proj.weight, np.eye(d))
    # N(0, 1/fan_in): sample variances within 4 standard errors (sd of a variance estimate
    # from k normal values is σ²·sqrt(2/k))
    for w, fan_in in ((w_in[2 * d:], d), (block.linear1.weight, d), (block.linear2.weight, ff)):
        k = w.size
        assert abs(w.var() * fan_in - 1.0) < 4 * np.sqrt(2 / k), (w.shape, w.var() * fan_in)
        assert abs(w.mean()) < 4 / np.sqrt(k * fan_in)
    for name, g in block.named_parameters():
        if name.endswith("bias"):
            np.testing.assert_array_equal(g, 0.0)
    # the same seed draws the same value weights with and without the zeroed Q, K
    plain = nn.TransformerEncoderBlock(d, 4, ff, init="gaussian", sigma_w=1.0, rng=0)
    np.testing.assert_array_equal(plain.self_attn.in_proj.weight[2 * d:], w_in[2 * d:])
    assert np.abs(plain.self_attn.in_proj.weight[:2 * d]).min() > 0


def test_init_options_combine_with_any_scheme_and_defaults_are_unchanged():
    default = nn.TransformerEncoderBlock(8, 2, 16, rng=1)
    explicit = nn.TransformerEncoderBlock(8, 2, 16, zero_query_key=False, identity_output=False, rng=1)
    for (n, a), (_, b) in zip(default.named_parameters(), explicit.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    xavier_like = nn.MultiHeadSelfAttention(8, 2, rng=1)  # the default attention init
    np.testing.assert_array_equal(default.self_attn.in_proj.weight, xavier_like.in_proj.weight)
    b = nn.TransformerEncoderBlock(8, 2, 16, init="orthogonal", identity_output=True, rng=2)
    np.testing.assert_array_equal(b.self_attn.out_proj.weight, np.eye(8))
    w1 = b.linear1.weight  # (16, 8), orthonormal columns
    np.testing.assert_allclose(w1.T @ w1, np.eye(8), atol=1e-12)
    for bad, match in ((dict(init="xavier_normal"), "init must be None, one of"),
                       (dict(sigma_w=2.0), "sigma_w needs an init scheme")):
        with pytest.raises(ValueError, match=match):
            nn.TransformerEncoderBlock(8, 2, **bad)


@pytest.mark.parametrize("position", ["post", "pre"])
def test_transformer_stack_layout_and_final_norm_defaults(position):
    model = nn.transformer_stack(3, 8, 2, norm_position=position, out_features=11, rng=3)
    kinds = [type(m).__name__ for m in model]
    final = ["LayerNorm"] if position == "pre" else []
    assert kinds == ["TransformerEncoderBlock"] * 3 + final + ["Linear"]
    assert all(b.norm_first == (position == "pre") for b in list(model)[:3])
    flipped = nn.transformer_stack(2, 8, 2, norm_position=position, final_norm=position == "post",
                                   norm="rms", rng=3)
    assert [type(m).__name__ for m in flipped][-1] == ("RMSNorm" if position == "post" else "TransformerEncoderBlock")
    # blocks draw their own weights from one generator: different from each other
    a, b = model[0].linear1.weight, model[1].linear1.weight
    assert not np.array_equal(a, b)
    for bad, match in ((dict(norm_position="middle"), "norm_position must be"),
                       (dict(norm="batch"), "norm must be"),
                       (dict(init="nope"), "init must be")):
        with pytest.raises(ValueError, match=match):
            nn.transformer_stack(2, 8, 2, **bad)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        nn.transformer_stack(0, 8, 2)


def test_transformer_stack_gradient_matches_finite_differences():
    model = nn.transformer_stack(2, 8, 2, dim_feedforward=12, norm_position="pre", out_features=4,
                                 activation="gelu", init="xiong2020", rng=4)
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((2, 3, 8)), rng.integers(0, 4, (2, 3))
    loss = nn.CrossEntropyLoss()
    loss(model(x), t)
    dx = model.backward(loss.backward())
    v = rng.standard_normal(x.shape)
    res = derivative(lambda s: np.array([loss(model(x + si * v), t) for si in np.ravel(s)]).reshape(np.shape(s)),
                     0.0, initial_step=0.05, order=8, tolerances=dict(rtol=1e-12))
    assert abs(np.sum(dx * v) - res.df) <= 1e-8 * abs(res.df) + 10 * res.error


# ------------------------------------------------------------------------------------------
# cross-entropy on (N, T, V) logits


def test_cross_entropy_on_sequence_logits_is_the_mean_over_positions():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((3, 4, 5)) * 20
    t = rng.integers(0, 5, (3, 4))
    loss = nn.CrossEntropyLoss()
    value = loss(z, t)
    m = z.max(axis=-1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
    ref = -np.mean(np.take_along_axis(logp, t[..., None], axis=-1))
    np.testing.assert_allclose(value, ref, rtol=1e-13)
    onehot = np.eye(5)[t]
    np.testing.assert_allclose(loss.backward(), (np.exp(logp) - onehot) / 12, rtol=1e-12, atol=1e-15)
    # the same as flattening the positions into the batch
    flat = nn.CrossEntropyLoss()
    np.testing.assert_allclose(flat(z.reshape(12, 5), t.reshape(12)), value, rtol=1e-14)
    np.testing.assert_allclose(flat.backward().reshape(z.shape), loss.backward(), rtol=1e-14)
    # soft targets of z's shape
    p = rng.dirichlet(np.ones(5), (3, 4))
    np.testing.assert_allclose(loss(z, p), -np.mean(np.sum(p * logp, axis=-1)), rtol=1e-13)
    with pytest.raises(ValueError, match=r"class-index target must have shape \(3, 4\)"):
        loss(z, t.reshape(12))
    with pytest.raises(ValueError, match=r"probability target must have shape \(3, 4, 5\)"):
        loss(z, p[..., :4])
    with pytest.raises(ValueError, match="logits must have shape"):
        loss(z[0, 0], t[0, :1])


def test_cross_entropy_on_sequence_logits_on_every_backend(xp):
    rng = np.random.default_rng(7)
    z, t = rng.standard_normal((2, 3, 4)), rng.integers(0, 4, (2, 3))
    ref = nn.CrossEntropyLoss()
    value, grad = ref(z, t), ref.backward()
    loss = nn.CrossEntropyLoss()
    assert_close(loss(from_numpy(xp, z), from_numpy(xp, t)), value, xp=xp)
    assert_close(loss.backward(), grad, xp=xp)


# ------------------------------------------------------------------------------------------
# uncentred batch normalization


def test_uncentered_batch_norm_divides_by_the_batch_root_mean_square():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((16, 5, 3)) * 2 + 3  # a large mean: centring would matter
    layer = nn.UncenteredBatchNorm(5, bias=True)
    layer.weight = 1 + 0.3 * rng.standard_normal(5)
    layer.bias = 0.1 * rng.standard_normal(5)
    y = layer(x)
    ms = np.mean(x * x, axis=(0, 2), keepdims=True)
    ref = x / np.sqrt(ms + 1e-5) * layer.weight[:, None] + layer.bias[:, None]
    np.testing.assert_allclose(y, ref, rtol=1e-13)
    # running second moment, PyTorch momentum, no Bessel correction
    np.testing.assert_allclose(layer.running_mean_square, 0.9 + 0.1 * ms.ravel(), rtol=1e-13)
    layer.eval()
    x2 = rng.standard_normal((4, 5, 3))
    rms = layer.running_mean_square[:, None]
    np.testing.assert_allclose(layer(x2), x2 / np.sqrt(rms + 1e-5) * layer.weight[:, None]
                               + layer.bias[:, None], rtol=1e-13)
    cumulative = nn.UncenteredBatchNorm(5, momentum=None, affine=False)
    batches = [rng.standard_normal((6, 5)) for _ in range(3)]
    for b in batches:
        cumulative(b)
    np.testing.assert_allclose(cumulative.running_mean_square,
                               np.mean([np.mean(b * b, axis=0) for b in batches], axis=0), rtol=1e-13)
    assert cumulative.num_batches_tracked == 3
    assert "weight" in layer.params and "bias" not in nn.UncenteredBatchNorm(5).params
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        nn.UncenteredBatchNorm(5)(rng.standard_normal((1, 5)))


def test_deep_stack_with_uncentered_batch_norm_avoids_rank_collapse():
    # Daneshmand et al. (2020): in a deep linear Gaussian network the batch's representations
    # collapse to rank one (stable rank → 1); dividing each feature by its batch RMS prevents it
    x = np.random.default_rng(9).standard_normal((32, 32))

    def stable_rank(h):
        s = np.linalg.svd(h, compute_uv=False)
        return (s ** 2).sum() / s[0] ** 2

    for seed in range(2):
        kw = dict(activation="identity", init="gaussian", bias=False, rng=seed)
        plain = nn.deep_stack(100, 32, **kw)
        scaled = nn.deep_stack(100, 32, norm="batch_uncentered", **kw)
        assert isinstance(scaled[0][1], nn.UncenteredBatchNorm)
        assert stable_rank(plain(x)) < 1.1
        assert stable_rank(scaled(x)) > 2.0


def test_uncentered_batch_norm_on_every_backend(xp):
    rng = np.random.default_rng(10)
    x, dy = rng.standard_normal((6, 4)) + 1, rng.standard_normal((6, 4))
    ref = nn.deep_stack(2, 4, norm="batch_uncentered", activation="tanh", rng=11)
    y_ref, dx_ref = ref(x), ref.backward(dy)
    model = nn.deep_stack(2, 4, norm="batch_uncentered", activation="tanh", rng=11).to(xp)
    assert_close(model(from_numpy(xp, x)), y_ref, xp=xp)
    assert_close(model.backward(from_numpy(xp, dy)), dx_ref, xp=xp)
    assert_close(model[0][1].running_mean_square, ref[0][1].running_mean_square, xp=xp)
    model.eval(), ref.eval()
    assert_close(model(from_numpy(xp, x)), ref(x), xp=xp)
