"""Forward-mode products (JVPs) of every layer deep stacks and Transformer blocks are made of.

``layer.jvp(v)`` after ``layer.forward(x)`` must be J(x)·v. Oracles, none written from the code
under test:

* SciPy finite differences of the forward pass: ``scipy.differentiate.jacobian`` (adaptive,
  order 8, with an error estimate) of t ↦ layer(x + t·v) at t = 0, every output element;
* adjointness against the existing closed-form backward passes, ⟨J v, u⟩ = ⟨v, Jᵀ u⟩, to
  1e-12 relative in float64 — so that (jvp, backward) is a linear map and its adjoint, a
  SciPy ``LinearOperator``;
* closed forms from the literature: the LayerNorm / RMSNorm / BatchNorm Jacobians'
  singular values and ranks, a deep linear stack's Jacobian = the product of its weights,
  attention with zero query/key projections (uniform attention, linear in x).

Batch-coupled layers (BN, DBN, IterNorm, batch renorm, uncentred BN) take the whole batch's
tangent, and the finite differences perturb the whole batch. The measured errors are printed
on teardown (``python -m pytest -q -s tests/test_jvp.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
from scipy.differentiate import jacobian
from scipy.sparse.linalg import LinearOperator, svds

import arraynorm as an
import arraynorm.nn as nn
from arraynorm.operation import LpScale, RMSScale, Standardize
from arraynorm.partition import BatchGroups, GhostBatch, Group, Layer
from arraynorm.whitening import ZCAWhiten
from _helpers import DaskComputeCounter, ErrorTable, assert_close, backend_name, from_numpy, to_numpy

_ERRORS = ErrorTable("jvp: FD = max|Jv - FD| / max|Jv|;  adjoint = |<Jv,u> - <v,J^T u>| / max(|<Jv,u>|, |<v,J^T u>|)",
                     (30, 10, 9))


@pytest.fixture(scope="module", autouse=True)
def _print_error_table():
    yield
    _ERRORS.print()


# ------------------------------------------------------------------------------------------
# inputs: smooth points, away from the kinks of ReLU, hard-tanh and the L1/L∞ norms

def _normal(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def _away_from_zero(shape, seed):
    z = _normal(shape, seed)
    return np.sign(z) * (0.3 + np.abs(z))


def _hardtanh_points(shape, seed):
    rng = np.random.default_rng(seed)
    inside = rng.uniform(-0.8, 0.8, shape)
    outside = np.sign(inside) * rng.uniform(1.2, 2.0, shape)
    return np.where(rng.random(shape) < 0.7, inside, outside)


def _distinct_max(shape, seed):
    x = _away_from_zero(shape, seed)
    x[..., 0] += 3.0 * np.sign(x[..., 0])  # one clear maximum of |x| per row
    return x


def _warm(model, shape, steps=3, seed=50):
    """Give running statistics values of their own, then switch to eval mode."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        model(rng.standard_normal(shape) * 2.0 + 0.5)
    return model.eval()


def _renorm_clipped():
    # momentum 0: the running statistics never move, so the forward is one fixed function;
    # running var 1e-3 and mean 5 make r and d clip (r = rmax, d = −dmax): r and d are then
    # locally constant and the stop-gradient JVP is the exact derivative
    m = nn.BatchRenorm(6, rmax=3.0, dmax=2.0, momentum=0.0)
    m.running_mean = np.full(6, 5.0)
    m.running_var = np.full(6, 1e-3)
    m.weight = 1.0 + 0.3 * _normal(6, 3)
    return m


def _perturbed(m, seed=7):
    """γ = 1, β = 0 would hide a γ/β mix-up: make the affine generic."""
    rng = np.random.default_rng(seed)
    for _, mod, k in m.parameter_slots():
        if k in ("weight", "bias") and mod.params[k].ndim == 1 and not isinstance(mod, nn.Linear):
            mod.params[k] = mod.params[k] + 0.3 * rng.standard_normal(mod.params[k].shape)
    return m


# id -> (build() -> module, x, finite differences apply (the forward is a fixed smooth function))
N2, N4, N3 = (10, 6), (4, 6, 3, 3), (2, 5, 8)
CASES = {
    "linear": (lambda: nn.Linear(6, 5, rng=1), _normal(N2, 0), True),
    "weight_norm_linear": (lambda: nn.WeightNormLinear(6, 5, rng=1), _normal(N2, 0), True),
    "spectral_norm_linear/train": (lambda: nn.SpectralNormLinear(6, 5, rng=1), _normal(N2, 0), False),
    "spectral_norm_linear/eval": (lambda: nn.SpectralNormLinear(6, 5, rng=1).eval(), _normal(N2, 0), True),
    "reparam/weight_standardization": (lambda: nn.ReparamLinear(6, 5, rng=1), _normal(N2, 0), True),
    "reparam/centered_weight_norm": (lambda: nn.ReparamLinear(6, 5, reparam="centered_weight_norm", rng=1), _normal(N2, 0), True),
    "reparam/orthogonal": (lambda: nn.ReparamLinear(6, 4, reparam="orthogonal", rng=1), _normal(N2, 0), True),
    "reparam/oni": (lambda: nn.ReparamLinear(6, 4, reparam="oni", rng=1), _normal(N2, 0), True),
    "identity": (nn.Identity, _normal(N2, 0), True),
    "relu": (nn.ReLU, _away_from_zero(N2, 0), True),
    "tanh": (nn.Tanh, _normal(N2, 0), True),
    "gelu": (nn.GELU, _normal(N2, 0), True),
    "hardtanh": (nn.HardTanh, _hardtanh_points(N2, 0), True),
    "batch_norm": (lambda: _perturbed(nn.BatchNorm(6)), _normal(N2, 0) * 2 + 1, True),
    "batch_norm/nchw": (lambda: _perturbed(nn.BatchNorm(6)), _normal(N4, 0), True),
    "batch_norm/eval": (lambda: _warm(_perturbed(nn.BatchNorm(6)), N2), _normal(N2, 0), True),
    "batch_norm/no_running_stats": (lambda: nn.BatchNorm(6, track_running_stats=False).eval(), _normal(N2, 0), True),
    "batch_renorm/clipped": (_renorm_clipped, _normal(N2, 0), True),
    "batch_renorm/bn_limit": (lambda: _perturbed(nn.BatchRenorm(6, rmax=1.0, dmax=0.0)), _normal(N2, 0), True),
    "batch_renorm/unclipped": (lambda: nn.BatchRenorm(6), _normal(N2, 0), False),
    "batch_renorm/eval": (lambda: _warm(nn.BatchRenorm(6), N2), _normal(N2, 0), True),
    "batch_uncentered": (lambda: _perturbed(nn.UncenteredBatchNorm(6, bias=True)), _normal(N2, 0) + 0.5, True),
    "batch_uncentered/eval": (lambda: _warm(nn.UncenteredBatchNorm(6), N2), _normal(N2, 0), True),
    "layer_norm": (lambda: _perturbed(nn.LayerNorm(6)), _normal(N2, 0), True),
    "layer_norm/2d_shape": (lambda: _perturbed(nn.LayerNorm((3, 3))), _normal(N4, 0), True),
    "group_norm": (lambda: _perturbed(nn.GroupNorm(3, 6)), _normal(N4, 0), True),
    "instance_norm": (lambda: _perturbed(nn.InstanceNorm(6, affine=True)), _normal(N4, 0), True),
    "rms_norm": (lambda: _perturbed(nn.RMSNorm(6)), _normal(N2, 0), True),
    "position_norm": (lambda: _perturbed(nn.PositionNorm(6, affine=True)), _normal(N4, 0), True),
    "local_response_norm": (lambda: nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.0), _normal(N4, 0), True),
    "normalization/group_rms": (lambda: _perturbed(nn.Normalization(Group(2), RMSScale(), 6)), _normal(N4, 0), True),
    "normalization/ghost_batch": (lambda: _perturbed(nn.Normalization(GhostBatch(5), Standardize(), 6)), _normal(N2, 0), True),
    "normalization/l2": (lambda: nn.Normalization(Layer(), LpScale(2.0), 6), _normal(N2, 0), True),
    "normalization/l3": (lambda: nn.Normalization(Layer(), LpScale(3.0), 6), _away_from_zero(N2, 0), True),
    "normalization/l1": (lambda: nn.Normalization(Layer(), LpScale(1.0), 6), _away_from_zero(N2, 0), True),
    "normalization/linf": (lambda: nn.Normalization(Layer(), LpScale(float("inf")), 6), _distinct_max(N2, 0), True),
    "normalization/l2_clamped": (lambda: nn.Normalization(Layer(), LpScale(2.0), 6, eps=100.0), _normal(N2, 0), True),
    "normalization/group_whitening": (lambda: _perturbed(nn.Normalization(Group(3), ZCAWhiten(), 6)), _normal(N4, 0), True),
    "normalization/batch_groups_zca": (lambda: nn.Normalization(BatchGroups(2), ZCAWhiten(), 6), _normal(N4, 0), True),
    "dbn/zca": (lambda: _perturbed(nn.DecorrelatedBatchNorm(6, 2)), _normal(N2, 0), True),
    "dbn/zca_all_channels": (lambda: nn.DecorrelatedBatchNorm(6), _normal(N4, 0), True),
    "dbn/pca": (lambda: _perturbed(nn.DecorrelatedBatchNorm(6, 2, method="pca")), _normal(N2, 0), True),
    "dbn/cholesky": (lambda: _perturbed(nn.DecorrelatedBatchNorm(6, 1, method="cholesky")), _normal(N2, 0), True),
    "dbn/eval": (lambda: _warm(nn.DecorrelatedBatchNorm(6, 2), N2), _normal(N2, 0), True),
    "iternorm": (lambda: _perturbed(nn.IterNorm(6, 2, T=5)), _normal(N2, 0), True),
    "iternorm/nchw": (lambda: nn.IterNorm(6, 1, T=7), _normal(N4, 0), True),
    "iternorm/eval": (lambda: _warm(nn.IterNorm(6, 3), N2), _normal(N2, 0), True),
    "residual": (lambda: nn.Residual(nn.Sequential(nn.Linear(6, 6, rng=2), nn.Tanh()), scale=0.5), _normal(N2, 0), True),
    "residual/projection": (lambda: nn.Residual(nn.Sequential(nn.Linear(6, 4, rng=2), nn.GELU()), nn.Linear(6, 4, rng=3)), _normal(N2, 0), True),
    "sequential/deep_stack_bn": (lambda: _perturbed(nn.deep_stack(4, 6, norm="batch", activation="tanh", rng=2)), _normal(N2, 0), True),
    "sequential/residual_ln": (lambda: nn.deep_stack(4, 6, norm="layer", residual=True, residual_scale=0.5, activation="gelu", rng=2), _normal(N2, 0), True),
    "sequential/dbn_after": (lambda: nn.deep_stack(3, 6, norm="dbn", norm_position="after", activation="tanh", norm_kwargs={"num_groups": 2}, rng=2), _normal(N2, 0), True),
    "attention": (lambda: nn.MultiHeadSelfAttention(8, 2, rng=3), _normal(N3, 0), True),
    "attention/causal": (lambda: nn.MultiHeadSelfAttention(8, 4, causal=True, rng=3), _normal(N3, 0), True),
    "transformer/post_ln": (lambda: _perturbed(nn.TransformerEncoderBlock(8, 2, 12, activation="gelu", rng=4)), _normal(N3, 0), True),
    "transformer/pre_ln_causal": (lambda: _perturbed(nn.TransformerEncoderBlock(8, 2, 12, activation="tanh", norm_first=True, causal=True, rng=4)), _normal(N3, 0), True),
    "transformer/rms": (lambda: nn.TransformerEncoderBlock(8, 4, 8, norm="rms", activation="gelu", rng=4), _normal(N3, 0), True),
    "transformer_stack/pre_final_norm_readout": (lambda: nn.transformer_stack(3, 8, 2, dim_feedforward=12, norm_position="pre", out_features=5, activation="gelu", rng=5), _normal(N3, 0), True),
}


def _unit(a):
    return a / np.abs(a).max()


def _fd_jvp(f, x, v):
    """(J v, error estimate) by SciPy's adaptive finite differences of t ↦ f(x + t v)."""
    def g(t):  # t: (1, *batch) -> (n_out, *batch)
        ts = t[0]
        out = [np.ravel(f(x + ti * v)) for ti in np.ravel(ts)]
        return np.stack(out, axis=-1).reshape((-1,) + ts.shape)

    res = jacobian(g, np.zeros(1), initial_step=0.02, tolerances=dict(rtol=1e-12, atol=1e-14))
    return res.df[:, 0], res.error[:, 0]


def _adjoint_error(jv, u, v, jtu) -> float:
    a, b = float(np.sum(jv * u)), float(np.sum(v * jtu))
    return abs(a - b) / max(abs(a), abs(b))


@pytest.mark.parametrize("case", list(CASES))
def test_jvp_is_the_adjoint_of_backward_and_matches_finite_differences(case):
    build, x, smooth = CASES[case]
    m = build()
    rng = np.random.default_rng(11)
    y = m(x)
    vs = [_unit(rng.standard_normal(x.shape)) for _ in range(3)]
    us = [rng.standard_normal(y.shape) for _ in range(3)]
    jvs = [m.jvp(v) for v in vs]
    for v, jv, u in zip(vs, jvs, us):
        jtu = m.backward(u)
        err = _adjoint_error(jv, u, v, jtu)
        _ERRORS.note((case, "adjoint", "float64"), err)
        assert err <= 1e-12, (case, err)
        # several jvp/backward calls after one forward: the cache is left as it was
        np.testing.assert_array_equal(m.jvp(v), jv)
        np.testing.assert_array_equal(m.backward(u), jtu)
    assert jvs[0].shape == y.shape and jvs[0].dtype == y.dtype
    if smooth:
        fd, est = _fd_jvp(m, x, vs[0])  # (the forward runs again; jvp was taken before)
        err = float(np.abs(fd - np.ravel(jvs[0])).max() / np.abs(jvs[0]).max())
        _ERRORS.note((case, "FD", "float64"), err)
        assert np.abs(fd - np.ravel(jvs[0])).max() <= 1e-8 * np.abs(jvs[0]).max() + 10 * est.max(), (case, err)


def test_batch_renorm_jvp_keeps_the_papers_stop_gradient():
    # unclipped r, d: the JVP (like the VJP) treats them as constants, so it is r·J_BN, not the
    # derivative of the forward; the forward differs from it by the dropped r, d terms
    m = nn.BatchRenorm(6, momentum=0.0)
    m.running_var = np.full(6, 1.5)
    m.running_mean = np.full(6, 0.1)
    x = _normal(N2, 1)
    v = _normal(N2, 2)
    m(x)
    jv = m.jvp(v)
    bn = nn.BatchNorm(6)
    bn(x)
    sigma_b = np.sqrt(x.var(axis=0) + 1e-5)
    r = np.clip(sigma_b / np.sqrt(1.5 + 1e-5), 1 / 3.0, 3.0)  # rmax = 3
    assert np.sum((r > 1 / 3.0) & (r < 3.0)) >= 3  # most channels unclipped
    np.testing.assert_allclose(jv, bn.jvp(v) * r, rtol=1e-12, atol=1e-14)
    fd, _ = _fd_jvp(m, x, v)
    assert np.abs(fd - np.ravel(jv)).max() > 1e-3 * np.abs(jv).max()


def test_adain_jvp_in_content_and_style_matches_finite_differences_and_backward():
    rng = np.random.default_rng(12)
    c, s = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 5, 5)) * 2 + 1
    vc, vs = _unit(rng.standard_normal(c.shape)), _unit(rng.standard_normal(s.shape))
    m = nn.AdaIN()
    y = m(c, s)
    u = rng.standard_normal(y.shape)
    j_content, j_both = m.jvp(vc), m.jvp(vc, vs)
    dc, ds = m.backward(u)
    for name, jv, rhs in (("adain/content", j_content, np.sum(vc * dc)),
                          ("adain/content+style", j_both, np.sum(vc * dc) + np.sum(vs * ds))):
        err = abs(np.sum(jv * u) - rhs) / abs(rhs)
        _ERRORS.note((name, "adjoint", "float64"), err)
        assert err <= 1e-12
    fd, est = _fd_jvp(lambda cc: m(cc, s), c, vc)
    assert np.abs(fd - np.ravel(j_content)).max() <= 1e-8 * np.abs(j_content).max() + 10 * est.max()
    both = np.concatenate([c.ravel(), s.ravel()])
    split = c.size

    def f(z):
        return m(z[:split].reshape(c.shape), z[split:].reshape(s.shape))

    fd, est = _fd_jvp(f, both, np.concatenate([vc.ravel(), vs.ravel()]))
    err = float(np.abs(fd - np.ravel(j_both)).max() / np.abs(j_both).max())
    _ERRORS.note(("adain/content+style", "FD", "float64"), err)
    assert np.abs(fd - np.ravel(j_both)).max() <= 1e-8 * np.abs(j_both).max() + 10 * est.max()


def test_losses_jvp_is_the_directional_derivative():
    rng = np.random.default_rng(13)
    z, t = rng.standard_normal((3, 4, 5)), rng.integers(0, 5, (3, 4))
    dz = rng.standard_normal(z.shape)
    for loss, target in ((nn.CrossEntropyLoss(), t), (nn.MSELoss(), rng.standard_normal(z.shape))):
        loss(z, target)
        dl = loss.jvp(dz)
        np.testing.assert_allclose(dl, np.sum(loss.backward() * dz), rtol=1e-13)
        fd, _ = _fd_jvp(lambda zz: loss(zz, target), z, dz)
        np.testing.assert_allclose(dl, fd[0], rtol=1e-9)


# ------------------------------------------------------------------------------------------
# closed forms


@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_layer_norm_and_rms_norm_jacobian_singular_values_follow_their_formula(kind, eps):
    # LN:  J = rstd (I − 11ᵀ/n − ŷŷᵀ/n): singular values rstd (n−2 times),
    #      rstd·eps/(var+eps) (along ŷ) and 0 (along 1) — rank n−1, or n−2 at eps = 0.
    # RMS: J = rstd (I − ŷŷᵀ/n): rstd (n−1 times) and rstd·eps/(ms+eps) along ŷ.
    n = 7
    x = _normal((1, n), 14) * 1.7 + 0.4
    layer = (nn.LayerNorm(n, eps=eps, elementwise_affine=False) if kind == "layer"
             else nn.RMSNorm(n, eps=eps, elementwise_affine=False))
    layer(x)
    jac = np.stack([layer.jvp(e[None]) [0] for e in np.eye(n)], axis=1)
    np.testing.assert_allclose(jac, jac.T, atol=1e-14)  # the symmetry the JVP relies on
    if kind == "layer":
        var = x.var()
        rstd = 1 / np.sqrt(var + eps)
        expected = [rstd] * (n - 2) + [rstd * eps / (var + eps), 0.0]
        rank = n - 1 if eps else n - 2
    else:
        ms = np.mean(x * x)
        rstd = 1 / np.sqrt(ms + eps)
        expected = [rstd] * (n - 1) + [rstd * eps / (ms + eps)]
        rank = n if eps else n - 1
    sv = sla.svdvals(jac)
    np.testing.assert_allclose(sv, sorted(expected, reverse=True), rtol=1e-12, atol=1e-13)
    assert np.linalg.matrix_rank(jac) == rank


def test_batch_norm_whole_batch_jacobian_is_the_per_channel_projection_formula():
    # y[:, c] = γ_c rstd_c (I − 11ᵀ/N − ŷ_c ŷ_cᵀ/N) x[:, c]: a block diagonal (N·C)² Jacobian
    # coupling the samples of each channel, assembled column by column from JVPs
    n, c = 5, 3
    x = _normal((n, c), 15) * 2 + 1
    bn = _perturbed(nn.BatchNorm(c))
    bn(x)
    jac = np.stack([bn.jvp(e.reshape(n, c)).ravel() for e in np.eye(n * c)], axis=1)
    expected = np.zeros((n, c, n, c))
    for k in range(c):
        col = x[:, k]
        rstd = 1 / np.sqrt(col.var() + bn.eps)
        yhat = (col - col.mean()) * rstd
        expected[:, k, :, k] = bn.weight[k] * rstd * (np.eye(n) - 1 / n - np.outer(yhat, yhat) / n)
    np.testing.assert_allclose(jac, expected.reshape(n * c, n * c), rtol=1e-12, atol=1e-14)


def test_deep_linear_stack_jacobian_is_the_product_of_its_weights():
    model = nn.deep_stack(12, 5, in_features=4, activation="identity", init="orthogonal",
                          bias=True, rng=16)
    x = _normal((3, 4), 17)
    model(x)
    v = _normal((3, 4), 18)
    prod = np.eye(4)
    for block in model:
        prod = block[0].weight @ prod
    np.testing.assert_allclose(model.jvp(v), v @ prod.T, rtol=1e-12, atol=1e-13)
    # an orthogonal square stack (first block 5×4 with orthonormal columns): singular values 1
    sq = nn.deep_stack(30, 6, activation="identity", init="orthogonal", rng=19)
    sq(_normal((1, 6), 20))
    jac = np.stack([sq.jvp(e[None])[0] for e in np.eye(6)], axis=1)
    np.testing.assert_allclose(sla.svdvals(jac), np.ones(6), rtol=1e-12)


def test_zero_query_key_attention_is_linear_with_the_uniform_average_as_its_jacobian():
    d, steps = 6, 4
    attn = nn.MultiHeadSelfAttention(d, 2, init="gaussian", sigma_w=1.0, zero_query_key=True,
                                     identity_output=True, rng=21)
    np.testing.assert_array_equal(attn.in_proj.weight[:2 * d], 0.0)
    np.testing.assert_array_equal(attn.out_proj.weight, np.eye(d))
    x, v = _normal((2, steps, d), 22), _normal((2, steps, d), 23)
    y = attn(x)
    w_v = attn.in_proj.weight[2 * d:]
    # S = 0 for every x: P = 1/T and y_t = mean_s(x_s) W_Vᵀ (biases are zero)
    np.testing.assert_allclose(y, np.broadcast_to(x.mean(axis=1, keepdims=True) @ w_v.T, y.shape),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(attn.jvp(v), np.broadcast_to(v.mean(axis=1, keepdims=True) @ w_v.T, y.shape),
                               rtol=1e-12, atol=1e-14)


def test_jacobian_is_a_scipy_linear_operator_whose_svds_match_the_dense_spectrum():
    # the whole-batch Jacobian of a BN stack: matvec = jvp, rmatvec = backward
    model = nn.deep_stack(5, 6, norm="batch", activation="tanh", rng=24)
    x = _normal((8, 6), 25)
    model(x)
    size = x.size
    op = LinearOperator((size, size), dtype=np.float64,
                        matvec=lambda v: model.jvp(v.reshape(x.shape)).ravel(),
                        rmatvec=lambda u: model.backward(u.reshape(x.shape)).ravel())
    dense = op @ np.eye(size)
    np.testing.assert_allclose(op.rmatvec(np.eye(size)[:, :1].ravel()), dense[0], rtol=1e-12, atol=1e-14)
    top = svds(op, k=3, return_singular_vectors=False, random_state=0)
    np.testing.assert_allclose(np.sort(top), np.sort(sla.svdvals(dense))[-3:], rtol=1e-9)


# ------------------------------------------------------------------------------------------
# every backend

def _backend_models():
    return {
        "linear": (lambda: nn.Linear(5, 4, rng=30), (6, 5)),
        "batch_norm": (lambda: _perturbed(nn.BatchNorm(5)), (6, 5)),
        "layer_norm": (lambda: _perturbed(nn.LayerNorm(5)), (6, 5)),
        "group_norm": (lambda: _perturbed(nn.GroupNorm(2, 4)), (3, 4, 2, 2)),
        "rms_norm": (lambda: _perturbed(nn.RMSNorm(5)), (6, 5)),
        "residual_stack": (lambda: nn.deep_stack(3, 5, norm="batch", residual=True, activation="gelu", rng=31), (6, 5)),
        "iternorm_stack": (lambda: nn.deep_stack(2, 4, norm="iternorm", activation="tanh", norm_kwargs={"num_groups": 2}, rng=32), (6, 4)),
        "transformer": (lambda: nn.TransformerEncoderBlock(6, 2, 8, norm_first=True, causal=True, rng=33), (2, 4, 6)),
    }


@pytest.mark.parametrize("name", list(_backend_models()))
def test_jvp_on_every_backend_matches_numpy_and_is_adjoint(xp, name):
    build, shape = _backend_models()[name]
    rng = np.random.default_rng(34)
    x, v = rng.standard_normal(shape), rng.standard_normal(shape)
    ref = build()
    y_ref = ref(x)
    jv_ref = ref.jvp(v)
    u = rng.standard_normal(y_ref.shape)
    model = build().to(xp)
    xb, vb = from_numpy(xp, x), from_numpy(xp, v)
    model(xb)
    if backend_name(xp) == "dask":
        with DaskComputeCounter() as counter:
            jv = model.jvp(vb)
        assert counter.n == 0  # the JVP stays a lazy graph
    else:
        jv = model.jvp(vb)
    assert_close(jv, jv_ref, xp=xp, dtype=xb.dtype)
    jtu = model.backward(from_numpy(xp, u))
    assert _adjoint_error(to_numpy(jv), u, v, to_numpy(jtu)) <= 1e-12


def test_float32_and_float16_tangents_keep_the_input_dtype():
    x = _normal((6, 5), 35)
    for dtype in (np.float32, np.float16):
        for m in (nn.LayerNorm(5, dtype=dtype), nn.BatchNorm(5, dtype=dtype), nn.Linear(5, 5, dtype=dtype, rng=0)):
            m(x.astype(dtype))
            jv = m.jvp(x.astype(dtype))
            assert jv.dtype == dtype


@pytest.mark.parametrize("build", [lambda: nn.BatchNorm(5), lambda: nn.LayerNorm(5),
                                   lambda: nn.RMSNorm(5, eps=1e-5), lambda: nn.DecorrelatedBatchNorm(5),
                                   lambda: nn.IterNorm(5), lambda: nn.UncenteredBatchNorm(5)],
                         ids=["batch", "layer", "rms", "dbn", "iternorm", "batch_uncentered"])
def test_jvp_of_a_constant_input_is_finite_and_the_exact_limit(build):
    # constant input, eps > 0: x̂ = 0 (x·rstd for RMS), and the Jacobian is rstd·(centring),
    # no NaN from 0/0 (σ² = 0)
    m = build()
    x = np.full((6, 5), 3.0)
    v = _normal((6, 5), 37)
    m(x)
    jv = m.jvp(v)
    assert np.all(np.isfinite(jv))
    if isinstance(m, (nn.BatchNorm, nn.DecorrelatedBatchNorm)):
        np.testing.assert_allclose(jv, (v - v.mean(axis=0)) / np.sqrt(1e-5), rtol=1e-9)
    if isinstance(m, nn.LayerNorm):
        np.testing.assert_allclose(jv, (v - v.mean(axis=1, keepdims=True)) / np.sqrt(1e-5), rtol=1e-9)


@pytest.mark.parametrize("method", ["layer_norm", "batch_norm", "group_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_jvp_on_the_numpy_fast_path_equals_the_portable_path(method, dtype):
    # inputs of 4 MiB take the fused NumPy path (its state's ŷ is formed on demand)
    shape = (8, 64, 32, 32)
    rng = np.random.default_rng(36)
    x, v = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    args = (x, 8) if method == "group_norm" else (x,)
    tangents = (v, None) if method == "group_norm" else (v,)
    kw = {"axis": (1, 2, 3)} if method in ("layer_norm", "rms_norm") else {}
    f = getattr(an, method)
    y, push = an.linearize(f, *args, **kw)
    jv = push(*tangents)
    with an.use_fast_paths(False):
        _, push_p = an.linearize(f, *args, **kw)
        jv_p = push_p(*tangents)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(jv, jv_p, rtol=tol, atol=tol)
    assert jv.dtype == x.dtype


# ------------------------------------------------------------------------------------------
# the functional registry: an.jvp / an.linearize

W6, B6 = 1 + 0.3 * _normal(6, 40), 0.2 * _normal(6, 41)
FUNCTIONAL = {
    "batch_norm": (an.batch_norm, (_normal(N4, 42), W6, B6), {}),
    "layer_norm": (an.layer_norm, (_normal(N2, 42), W6, B6), {}),
    "instance_norm": (an.instance_norm, (_normal(N4, 42), W6, B6), {}),
    "group_norm": (an.group_norm, (_normal(N4, 42), 3, W6, B6), {}),
    "rms_norm": (an.rms_norm, (_normal(N2, 42), W6), {}),
    "position_norm": (an.position_norm, (_normal(N4, 42), W6, B6), {}),
    "ghost_batch_norm": (an.ghost_batch_norm, (_normal(N2, 42), 5, W6, B6), {}),
    "l2_normalize": (an.l2_normalize, (_normal(N2, 42),), {"p": 2.5}),
    "decorrelated_batch_norm": (an.decorrelated_batch_norm, (_normal(N2, 42), W6, B6), {"num_groups": 2}),
    "iter_norm": (an.iter_norm, (_normal(N2, 42), W6, B6), {"num_groups": 3}),
    "group_whitening": (an.group_whitening, (_normal(N4, 42), 2, W6, B6), {"method": "cholesky"}),
    "batch_norm/inference": (an.batch_norm, (_normal(N2, 42), W6, B6), {"mean": W6 - 1, "var": W6 * W6}),
    "local_response_norm": (an.local_response_norm, (_normal(N4, 42), 3), {"alpha": 0.3}),
    "adain": (an.adain, (_normal(N4, 42), _normal((4, 6, 2, 2), 43) + 1.0), {}),
}


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_functional_jvp_matches_finite_differences_and_vjp_in_every_argument(name):
    f, primals, kw = FUNCTIONAL[name]
    rng = np.random.default_rng(44)
    tangents = tuple(_unit(rng.standard_normal(p.shape)) if hasattr(p, "shape") else None
                     for p in primals)
    y, dy = an.jvp(f, primals, tangents, **kw)
    np.testing.assert_allclose(y, f(*primals, **kw), rtol=1e-14)
    # adjoint of the registered VJP over all arguments
    _, pullback = an.vjp(f, *primals, **kw)
    u = rng.standard_normal(y.shape)
    cots = pullback(u)
    rhs = sum(float(np.sum(t * c)) for t, c in zip(tangents, cots) if t is not None)
    err = abs(float(np.sum(dy * u)) - rhs) / abs(rhs)
    _ERRORS.note((f"an.jvp/{name}", "adjoint", "float64"), err)
    assert err <= 1e-12
    # finite differences along all tangents at once
    arrays = [i for i, t in enumerate(tangents) if t is not None]
    flat = np.concatenate([np.ravel(primals[i]) for i in arrays])
    cuts = np.cumsum([np.size(primals[i]) for i in arrays])[:-1]

    def g(z):
        args = list(primals)
        for i, part in zip(arrays, np.split(z, cuts)):
            args[i] = part.reshape(np.shape(primals[i]))
        return f(*args, **kw)

    fd, est = _fd_jvp(g, flat, np.concatenate([np.ravel(tangents[i]) for i in arrays]))
    err = float(np.abs(fd - np.ravel(dy)).max() / np.abs(dy).max())
    _ERRORS.note((f"an.jvp/{name}", "FD", "float64"), err)
    assert np.abs(fd - np.ravel(dy)).max() <= 1e-8 * np.abs(dy).max() + 10 * est.max()


def test_linearize_pushes_many_tangents_from_one_forward_and_normalize_has_a_rule():
    x = _normal(N4, 45)
    y, push = an.linearize(an.normalize, x, Group(2), RMSScale())
    ref = an.Normalizer(Group(2), RMSScale())
    _, ctx = ref.forward(x)
    for seed in (46, 47):
        v = _normal(N4, seed)
        np.testing.assert_allclose(push(v, None, None), ref.jvp(ctx, v), rtol=1e-15)
    np.testing.assert_array_equal(push(None, None, None), np.zeros_like(y))


def test_jvp_bad_input_gets_clear_errors():
    x = _normal(N2, 48)
    with pytest.raises(TypeError, match="has no registered forward-mode rule"):
        an.jvp(np.sin, (x,), (x,))
    with pytest.raises(ValueError, match="one tangent per primal"):
        an.jvp(an.layer_norm, (x,), (x, x))
    with pytest.raises(ValueError, match=r"the tangent of x must have x's shape \(10, 6\)"):
        an.jvp(an.layer_norm, (x,), (x[:2],))
    with pytest.raises(TypeError, match="num_groups is not an array"):
        an.jvp(an.group_norm, (_normal(N4, 0), 3), (None, 1.0))
    with pytest.raises(TypeError, match="real floating"):
        an.jvp(an.layer_norm, (x,), (np.ones(x.shape, dtype=np.int64),))
    m = nn.Linear(6, 3, rng=0)
    with pytest.raises(RuntimeError, match=r"Linear.jvp: nothing cached, forward has not been called"):
        m.jvp(x)
    m(x)
    with pytest.raises(ValueError, match=r"Linear.jvp: dx must have the input's shape \(10, 6\), got \(10, 3\)"):
        m.jvp(x[:, :3])
    bn = nn.BatchNorm(6)
    bn(x)
    with pytest.raises(ValueError, match=r"BatchNorm.jvp: dx must have x's shape \(10, 6\)"):
        bn.jvp(x[:4])  # a batch-coupled layer needs the whole batch's tangent
    import array_api_strict as xps
    with pytest.raises(TypeError, match="array_api_strict array but the forward pass ran on numpy"):
        bn.jvp(xps.asarray(x))
    m.requires_grad_(False)
    m(x)
    with pytest.raises(RuntimeError, match="gradients are disabled"):
        m.jvp(x)

    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(NotImplementedError, match="Custom has no forward-mode product"):
        Custom().jvp(x)
