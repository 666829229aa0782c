"""Stage 3 as objects (arraynorm.recovery): the affine, the conditional affine (AdaIN's, per
sample) and no recovery, passed to the Normalizer like partitions and operations; the
implementation selector. Oracles: float64 NumPy formulas and SciPy finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.differentiate import jacobian

import arraynorm as an
from arraynorm._kernels import PORTABLE, numba_jit, numpy_fused
from arraynorm.operation import Standardize
from arraynorm.partition import Group, Instance, Layer
from arraynorm.recovery import Affine, ConditionalAffine, NoRecovery
from _helpers import assert_close, from_numpy, to_numpy

RNG = np.random.default_rng(11)


def standardized(x, axes, eps=1e-5):
    m = x.mean(axis=axes, keepdims=True)
    return (x - m) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)


def test_conditional_affine_scales_each_sample_and_channel_by_its_own_gamma_beta(xp):
    x = RNG.standard_normal((3, 4, 5, 2))
    gamma, beta = RNG.uniform(0.5, 2.0, (3, 4)), RNG.standard_normal((3, 4))
    norm = an.Normalizer(Instance(1), Standardize(), recovery=ConditionalAffine())
    y = norm(*(from_numpy(xp, a, "float64") for a in (x, gamma, beta)))
    want = standardized(x, (2, 3)) * gamma[:, :, None, None] + beta[:, :, None, None]
    assert_close(y, want, xp=xp, rtol=1e-12, atol=1e-12)


def test_conditional_affine_products_match_finite_differences():
    """VJP and JVP for (x, γ, β) against scipy.differentiate of the forward, group partition
    (the conditional γ, β of shape (N, C) vary inside each statistic's group)."""
    shape = (2, 4, 3)
    x = RNG.standard_normal(shape)
    gamma, beta = RNG.uniform(0.5, 2.0, (2, 4)), RNG.standard_normal((2, 4))
    norm = an.Normalizer(Group(2), Standardize(), recovery=ConditionalAffine())
    sizes = (x.size, gamma.size, beta.size)

    def f(flat):
        flat = np.moveaxis(flat, 0, -1)
        parts = np.split(flat, np.cumsum(sizes)[:-1], axis=-1)
        x_, g_, b_ = (p.reshape(p.shape[:-1] + s) for p, s in zip(parts, (shape, (2, 4), (2, 4))))
        outs = [norm(x_[i], g_[i], b_[i]).ravel() for i in np.ndindex(flat.shape[:-1])]
        return np.moveaxis(np.array(outs).reshape(flat.shape[:-1] + (-1,)), -1, 0)

    point = np.concatenate([x.ravel(), gamma.ravel(), beta.ravel()])
    J = jacobian(f, point).df                       # (outputs, inputs)
    y, ctx = norm.forward(x, gamma, beta)
    dy = RNG.standard_normal(shape)
    dx, dg, db = norm.backward(ctx, dy)
    np.testing.assert_allclose(np.concatenate([dx.ravel(), dg.ravel(), db.ravel()]),
                               J.T @ dy.ravel(), rtol=1e-7, atol=1e-9)
    t = RNG.standard_normal(point.size)
    tx, tg, tb = np.split(t, np.cumsum(sizes)[:-1])
    push = norm.jvp(ctx, tx.reshape(shape), tg.reshape(2, 4), tb.reshape(2, 4))
    np.testing.assert_allclose(push.ravel(), J @ t, rtol=1e-7, atol=1e-9)


def test_conditional_affine_refuses_parameters_of_the_channel_shape_and_a_batch_partition():
    x = RNG.standard_normal((3, 4, 5))
    norm = an.Normalizer(Instance(1), Standardize(), recovery=ConditionalAffine())
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 4\), got \(4,\)"):
        norm(x, np.ones(4))
    with pytest.raises(ValueError, match="conditional γ, β need it free"):
        an.Normalizer(Layer((0, 1)), Standardize(), recovery=ConditionalAffine())(x, np.ones((3, 4)))


def test_no_recovery_returns_the_normalized_input_and_refuses_parameters(xp):
    x = RNG.standard_normal((4, 6))
    norm = an.Normalizer(Layer(-1), Standardize(), recovery=NoRecovery())
    y, ctx = norm.forward(from_numpy(xp, x, "float64"))
    assert_close(y, standardized(x, (1,)), xp=xp, rtol=1e-12, atol=1e-12)
    dx, dw, db = norm.backward(ctx, from_numpy(xp, np.ones((4, 6)), "float64"))
    assert dw is None and db is None
    np.testing.assert_allclose(to_numpy(dx), 0.0, atol=1e-12)   # LN ignores a shift
    with pytest.raises(ValueError, match="takes no weight"):
        norm(x, np.ones(6))


def test_affine_is_the_default_recovery():
    x, w, b = RNG.standard_normal((4, 6)), RNG.uniform(0.5, 1.5, 6), RNG.standard_normal(6)
    default = an.Normalizer(Layer(-1), Standardize())
    assert default.recovery == Affine()
    np.testing.assert_array_equal(default(x, w, b), an.layer_norm(x, w, b))


@pytest.mark.parametrize("partition,recovery,pshape", [
    (Instance(1), ConditionalAffine(), (4, 8)),
    (Group(2), ConditionalAffine(), (4, 8)),
    (Layer(-1), NoRecovery(), None),
])
@pytest.mark.parametrize("impl", ["numpy_fused", "numba_jit"])
def test_numpy_implementation_equals_the_portable_one_for_every_recovery(monkeypatch, partition,
                                                                      recovery, pshape, impl):
    """The NumPy block implementation and the numba JIT run the conditional affine (AdaIN on
    large inputs) and no recovery too; outputs, every cotangent and the JVP agree with the
    portable path."""
    if impl == "numba_jit" and not numba_jit.available():
        pytest.skip("numba (the optional [jit] extra) is not installed")
    monkeypatch.setattr(numpy_fused, "MIN_BYTES", 0)
    monkeypatch.setattr(numba_jit, "MIN_BYTES", 0)
    monkeypatch.setattr(numpy_fused, "BLOCK_BYTES", 512)   # many blocks, chunked statistics
    x = 3.0 + RNG.standard_normal((4, 8, 6, 5))
    dy, t = RNG.standard_normal(x.shape), RNG.standard_normal(x.shape)
    w = b = None
    if pshape is not None:
        w, b = RNG.uniform(0.5, 1.5, pshape), RNG.standard_normal(pshape)
    runs = {}
    for name in (impl, "portable"):
        norm = an.Normalizer(partition, Standardize(), recovery=recovery, implementation=name)
        y, ctx = norm.forward(x, w, b)
        assert ctx.implementation.name == name
        runs[name] = (y, *norm.backward(ctx, dy), norm.jvp(ctx, t))
    for fast, slow in zip(runs[impl], runs["portable"]):
        if slow is None:
            assert fast is None
        else:
            np.testing.assert_allclose(fast, slow, rtol=1e-11, atol=1e-11)


def test_a_requested_implementation_that_does_not_run_the_input_is_refused():
    torch = pytest.importorskip("torch")
    norm = an.Normalizer(Layer(-1), Standardize(), implementation="numpy_fused")
    with pytest.raises(ValueError, match="'numpy_fused' implementation does not run this input"):
        norm(torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="implementation must be one of"):
        an.Normalizer(Layer(-1), Standardize(), implementation="cuda")(np.zeros((4, 3)))


def test_fast_paths_off_runs_the_portable_implementation_even_when_one_is_requested(monkeypatch):
    monkeypatch.setattr(numpy_fused, "MIN_BYTES", 0)
    norm = an.Normalizer(Layer(-1), Standardize(), implementation="numpy_fused")
    assert norm.forward(RNG.standard_normal((4, 8)))[1].implementation is numpy_fused.NUMPY_FUSED
    with an.use_fast_paths(False):
        assert norm.forward(RNG.standard_normal((4, 8)))[1].implementation is PORTABLE
