"""The whitening methods of the survey (§3.2.2) as compositions: decorrelated batch
normalization, IterNorm and group whitening.

The whitening operations themselves (ZCA, PCA, Cholesky, Newton iterations, given
statistics) are stage-2 operations in :mod:`arraynorm.operation` (they are re-exported here,
their first home). Which axes play which role is the partition's business, so the survey's
methods fall out of the framework:

* ``Normalizer(Batch(), ZCAWhiten())`` — decorrelated BN over all channels;
* ``Normalizer(BatchGroups(G), ZCAWhiten())`` — DBN with ``num_groups``: each group of
  C/G channels whitened over batch and space, groups independent;
* ``Normalizer(Group(G), ZCAWhiten())`` — group whitening (Huang et al. 2021): per sample,
  the G channel groups are the features and each group's C/G·∏S values are the samples.

With one feature per group DBN is BN to rounding. Group whitening of an empty batch, whose
statistics are per sample, returns the empty result; the batch methods raise
``ValueError`` for an empty batch (no whitening matrix of no values exists).
"""

from __future__ import annotations

from ._array_api import xp_check_eps, xp_check_floating, xp_in_compute_dtype, xp_namespace
from ._kernels.dask_moments import is_dask, one_pass_covariance
from ._typing import Array
from .compose import Normalizer
from .methods import Composed, composition
from .operation import (CholeskyWhiten, GivenWhitening, IterNormWhiten, Operation, PCAWhiten,
                        Whiten, WhiteningState, ZCAWhiten, whitening_operation)
from .partition import BatchGroups, Group

__all__ = [
    "decorrelated_batch_norm", "iter_norm", "group_whitening", "whitening_moments",
    # the operations, re-exported from their home in arraynorm.operation
    "ZCAWhiten", "PCAWhiten", "CholeskyWhiten", "IterNormWhiten", "GivenWhitening",
    "WhiteningState",
]


# --------------------------------------------------------------------------------------
# named methods
# --------------------------------------------------------------------------------------

def _batch_whitening(fname: str, x: Array, weight: Array | None, bias: Array | None,
                     op: Operation, num_groups: int, mean: Array | None,
                     whitening_matrix: Array | None, eps: float, axis: int) -> Composed:
    """Training (batch statistics, ``op``) or inference (given ``mean``/``whitening_matrix``)."""
    if (mean is None) != (whitening_matrix is None):
        raise ValueError(
            f"{fname}: pass both mean and whitening_matrix (inference) or neither (training)"
        )
    partition = BatchGroups(num_groups, axis)
    if mean is not None:
        op = GivenWhitening(mean, whitening_matrix, name=fname)
    return Composed(Normalizer(partition, op, eps, fname), x, weight, bias)


@composition
def decorrelated_batch_norm(x: Array, weight: Array | None = None, bias: Array | None = None, *,
                            num_groups: int = 1, method: str = "zca", mean: Array | None = None,
                            whitening_matrix: Array | None = None, eps: float = 1e-5,
                            axis: int = 1) -> Composed:
    """Decorrelated batch normalization (Huang et al. 2018): BatchGroups partition ∘
    whitening ∘ per-channel affine.

    ``axis`` is the *channel* axis, kept: its channels are whitened, in groups of C/G (default
    1, NCHW; ``axis=-1`` for channels last; one int — a tuple is a ``ValueError``).

    y = γ ⊙ W_g (x_g − μ_g) + β per channel group g, with μ_g the batch mean of the group's
    C/G channels over every axis but the channel ``axis`` and W_g the whitening matrix of
    Σ_g = X_c X_cᵀ/m + eps·I (m = N·∏S values): ``method`` "zca" (default, the paper's),
    "pca", "cholesky" or "iternorm" (T = 5; see :func:`iter_norm` to choose T).

    Training when ``mean`` and ``whitening_matrix`` are both ``None``; inference when both
    are given: ``mean`` (C,), ``whitening_matrix`` (G, C/G, C/G), typically running
    averages of :func:`whitening_moments`. Shapes: ``x`` (N, C, *S) with the channel at
    ``axis`` (default 1, NCHW); ``weight``, ``bias`` (C,). ``num_groups`` G must divide C
    (default 1: all channels whitened together). ``vjp(decorrelated_batch_norm, x, w, b)``
    gives (dx, dweight, dbias), the backward going through the decomposition.

    Conventions: eps = 1e-5 as PyTorch's BN (Chainer's DBN uses 2e-5); the covariance is the
    biased one (1/m). ZCA, PCA and Cholesky raise ``NotImplementedError`` on Dask (no batched
    eigh/cholesky). PyTorch has no equivalent op.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((64, 4)) @ np.diag([1.0, 2, 3, 4])
    >>> y = an.decorrelated_batch_norm(x, eps=0.0)
    >>> bool(np.allclose(np.cov(y.T, bias=True), np.eye(4)))
    True
    """
    op = whitening_operation("decorrelated_batch_norm", method)
    return _batch_whitening("decorrelated_batch_norm", x, weight, bias, op, num_groups, mean,
                            whitening_matrix, eps, axis)


@composition
def iter_norm(x: Array, weight: Array | None = None, bias: Array | None = None, *,
              num_groups: int = 1, T: int = 5, mean: Array | None = None,
              whitening_matrix: Array | None = None, eps: float = 1e-5,
              axis: int = 1) -> Composed:
    """Iterative normalization (IterNorm, Huang et al. 2019): BatchGroups partition ∘
    Newton-iteration whitening ∘ per-channel affine.

    ``axis`` is the *channel* axis, kept: its channels are whitened, in groups of C/G (default
    1, NCHW; ``axis=-1`` for channels last; one int — a tuple is a ``ValueError``).

    As :func:`decorrelated_batch_norm` with W = p_T(Σ/trΣ)/sqrt(trΣ), T Newton steps
    P_{k+1} = 1.5 P_k − 0.5 P_k³ Σ_N from P_0 = I (default T = 5, ``num_groups`` 1; the
    paper uses groups of 64 channels). Only matmuls: runs on every backend, Dask included
    (lazily). Inference with ``mean`` (C,) and ``whitening_matrix`` (G, C/G, C/G).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((32, 4, 5))
    >>> y, pullback = an.vjp(an.iter_norm, x, num_groups=2, T=7)
    >>> dx, dweight, dbias = pullback(np.ones_like(y))
    >>> cov = np.cov(y[:, :2].transpose(1, 0, 2).reshape(2, -1), bias=True)
    >>> bool(np.abs(cov - np.eye(2)).max() < 1e-2)      # nearly white after 7 steps
    True
    """
    op = IterNormWhiten(T, name="iter_norm")
    return _batch_whitening("iter_norm", x, weight, bias, op, num_groups, mean,
                            whitening_matrix, eps, axis)


@composition
def group_whitening(x: Array, num_groups: int, weight: Array | None = None,
                    bias: Array | None = None, *, method: str = "zca", eps: float = 1e-5,
                    axis: int = 1) -> Composed:
    """Group whitening (Huang et al. 2021): Group partition ∘ whitening ∘ per-channel affine.

    ``axis`` is the *channel* axis, kept: its channels are split into groups (default 1, NCHW;
    ``axis=-1`` for channels last; one int — a tuple is a ``ValueError``).

    Per sample, the C channels are split into ``num_groups`` groups; the groups are the G
    features to decorrelate and each group's C/G·∏S values are their samples:
    X (G, C/G·∏S) -> W (X − μ) with W from Σ = X_c X_cᵀ/(C/G·∏S) + eps·I. It needs no batch
    statistics, so there is no inference mode. This is the framework's ``Group`` partition
    — the one GroupNorm uses — with a whitening operation instead of standardization:
    ``Normalizer(Group(G), ZCAWhiten())``. With G = 1 there is one feature and
    W = (σ² + eps)^{-1/2}: it is ``group_norm(x, 1)``, LayerNorm over (C, *S).

    ``method``: "zca" (default), "pca", "cholesky" or "iternorm" (T = 5). ``weight``,
    ``bias`` (C,). G must divide C; with C/G·∏S < G the covariance is singular and eps sets
    the scale of the null directions.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((2, 8, 4, 4))
    >>> y = an.group_whitening(x, 4, eps=0.0)
    >>> g = y[0].reshape(4, -1)                  # sample 0: 4 groups x 32 values
    >>> bool(np.allclose(g @ g.T / 32, np.eye(4)))
    True
    """
    op = whitening_operation("group_whitening", method)
    return Composed(Normalizer(Group(num_groups, axis), op, eps, "group_whitening"), x, weight, bias)


def whitening_moments(x: Array, *, num_groups: int = 1, method: str = "zca", T: int = 5,
                      eps: float = 1e-5, axis: int = 1) -> tuple[Array, Array]:
    """Batch mean and whitening matrix that training-mode DBN / IterNorm use.

    ``axis`` is the *channel* axis, kept: statistics per channel group (default 1, NCHW;
    ``axis=-1`` for channels last; one int — a tuple is a ``ValueError``).

    Returns ``(mean, W)``: ``mean`` of shape (C,), ``W`` of shape (G, C/G, C/G) with
    G = ``num_groups``, in the compute dtype (float32 for float16/bfloat16 inputs), for
    ``method`` "zca", "pca", "cholesky" or "iternorm" (with ``T`` steps). The whitened output
    is not formed. Fold them into running statistics with PyTorch's momentum convention,
    ``running ← (1 − m)·running + m·batch`` (m = 0.1 is the weight of the new batch), and
    pass the running values as ``mean=``/``whitening_matrix=`` in inference. As in the
    IterNorm reference code, W itself is averaged (not Σ) and not rescaled (Chainer's DBN
    multiplies it by m/(m − 1)). A layer that also needs the output gets both in one pass
    from ``Normalizer(BatchGroups(G), op).forward(x)``: ``ctx.state.mean`` and
    ``ctx.state.whitening_matrix``.

    On a ``dask.array`` the mean and covariance take one pass over the chunks (per-chunk
    co-moments merged by Chan's formula), lazily, and W is formed from the small covariance;
    only ``method="iternorm"`` runs there (the others need ``eigh``/``cholesky``, which Dask
    lacks: ``NotImplementedError`` before anything is built).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((16, 6, 3))
    >>> mean, w = an.whitening_moments(x, num_groups=2)
    >>> mean.shape, w.shape
    ((6,), (2, 3, 3))
    >>> running_mean, running_w = np.zeros(6), np.stack([np.eye(3)] * 2)
    >>> running_mean = 0.9 * running_mean + 0.1 * mean     # momentum 0.1
    >>> running_w = 0.9 * running_w + 0.1 * w
    >>> y = an.decorrelated_batch_norm(x, num_groups=2, mean=running_mean,
    ...                                whitening_matrix=running_w)
    """
    fname = "whitening_moments"
    op = whitening_operation(fname, method, T)
    xp = xp_namespace(fname, x=x)
    xp_check_floating(fname, "x", x, xp)
    eps = xp_check_eps(fname, eps)
    layout = BatchGroups(num_groups, axis).layout(fname, tuple(x.shape))
    layout.check_many(fname)
    xv = xp.reshape(xp_in_compute_dtype(xp, x), layout.view_shape)
    if is_dask(xv) and isinstance(op, Whiten):
        # a chunked array: mean and covariance in one pass over the chunks (Chan's co-moment
        # merge), then W from the small covariance; eigh/cholesky raise NotImplementedError
        # on Dask before anything is built (row_blocks), IterNorm's matmuls stay lazy
        xb = op.row_blocks(xp, xv, layout)
        mu, cov = one_pass_covariance(xp, xb)
        ct = xv.dtype
        mean, w = op.statistics_of_covariance(xp, xp.astype(mu, ct), xp.astype(cov, ct), layout, eps)
    else:
        mean, w = op.statistics(xp, xv, layout, eps)
    return xp.reshape(mean, layout.param_shape), w
