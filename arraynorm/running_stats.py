"""Batch moments and running statistics with PyTorch's momentum semantics: the one helper
every layer that keeps running statistics uses.

=========================  ====================================================================
function                   what
=========================  ====================================================================
:func:`batch_moments`      per-channel batch mean and biased variance (what training BN uses)
:func:`momentum_weight`    m: ``momentum`` (PyTorch's weight of the new batch) or
                           1/num_batches_tracked (``momentum=None``, the cumulative average)
:func:`blend`              (1 − m)·running + m·batch in the running buffer's dtype, blended in
                           float32 at least and rounded once (half buffers lose nothing)
:func:`unbiased_variance`  σ²·count/(count − 1), the variance running statistics store
:func:`fold_batch`         one more batch into a layer's buffers: counts it, blends each buffer
:func:`update_running_stats`  the functional form of BN's update (mean and unbiased variance)
=========================  ====================================================================

Users: :class:`arraynorm.nn.BatchNorm`, :class:`~arraynorm.nn.BatchRenorm`,
:class:`~arraynorm.nn.UncenteredBatchNorm` (running second moment),
:class:`~arraynorm.nn.DecorrelatedBatchNorm` and :class:`~arraynorm.nn.IterNorm` (running mean
and whitening matrix, averaged as the DBN and IterNorm reference code do) and the layers of
:mod:`arraynorm.torch`; a new layer with running statistics calls :func:`fold_batch` too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np

from ._array_api import (xp_check_floating, xp_check_int, xp_check_momentum, xp_check_param_shape,
                         xp_compute_dtype, xp_in_compute_dtype, xp_namespace)
from ._kernels.dask_moments import is_dask, one_pass_moments
from ._statistics import moments
from ._typing import Array
from .partition import Batch

__all__ = ["batch_moments", "update_running_stats", "momentum_weight", "blend",
           "unbiased_variance", "fold_batch"]

_NP_COMPUTE = (np.dtype(np.float32), np.dtype(np.float64))  # xp_compute_dtype's, for NumPy


def batch_moments(x: Array, *, axis: int = 1) -> tuple[Array, Array]:
    """Per-channel batch mean and biased variance, the statistics training-mode BN uses.

    ``axis`` is the *channel* axis, kept (default 1; one int).

        μ_c = mean(x_c),   σ²_c = mean((x_c − μ_c)²)   over every axis but ``axis``

    Shapes: ``x`` (N, C, *S) with the channel at ``axis``; returns two arrays of shape (C,) in
    the compute dtype (float32 for float16/bfloat16 inputs, so running statistics kept in
    float32 lose nothing). The variance is two-pass (see :func:`arraynorm.operation.moments`).
    A channel whose values include +inf (and no −inf or NaN) has mean inf and variance NaN;
    an empty batch gives NaN statistics (the mean of no values), like ``torch.var_mean``; a
    variance beyond the dtype's range is inf. On a ``dask.array`` the statistics take one pass
    over the chunks (per-chunk moments merged by Chan's formula,
    :mod:`arraynorm._kernels.dask_moments`), lazily, the same numbers whatever the chunking.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.arange(12.0).reshape(3, 4)
    >>> mean, var = an.batch_moments(x)
    >>> mean, var
    (array([4., 5., 6., 7.]), array([10.66666667, 10.66666667, 10.66666667, 10.66666667]))
    """
    fname = "batch_moments"
    xp = xp_namespace(fname, x=x)
    xp_check_floating(fname, "x", x, xp)
    layout = Batch(axis).layout(fname, tuple(x.shape))
    layout.check_many(fname)
    xc = xp_in_compute_dtype(xp, x)
    if is_dask(x) and math.prod(x.shape) > 0:
        # one pass over the chunks, merged exactly (Chan et al.): no second read for the
        # deviations, the same numbers whatever the chunking
        mo = one_pass_moments(xp, xc, layout.reduce_axes)
        mean, var = mo.mean(xp, xc.dtype), mo.var(xp, xc.dtype)
    else:
        mean, var, _ = moments(xp, xc, layout.reduce_axes)
    return xp.reshape(mean, layout.param_shape), xp.reshape(var, layout.param_shape)


def momentum_weight(fname: str, momentum: float | None, num_batches_tracked: int | None) -> float:
    """The new batch's weight m: ``momentum`` (in [0, 1], PyTorch's convention — the opposite
    of Keras and Flax), or 1/num_batches_tracked for ``momentum=None`` (the cumulative
    average; ``num_batches_tracked`` counts batches *including* this one)."""
    if type(momentum) is float and 0.0 <= momentum <= 1.0:  # the common case, without the checks' calls
        return momentum
    if momentum is None:
        if (isinstance(num_batches_tracked, bool) or not isinstance(num_batches_tracked, int)
                or num_batches_tracked < 1):
            raise ValueError(
                f"{fname}: momentum=None (cumulative average) needs num_batches_tracked >= 1, "
                f"got {num_batches_tracked!r}"
            )
        return 1.0 / num_batches_tracked
    m = xp_check_momentum(fname, momentum)
    assert m is not None
    return m


def blend(running: Array, batch: Array, m: float) -> Array:
    """(1 − m)·running + m·batch, a new array in ``running``'s dtype: computed in float32 at
    least and rounded once, as PyTorch does for half buffers (blending in float16 errs by up
    to ~100 ulps). ``batch`` may have another floating dtype (the statistics' compute
    dtype)."""
    if type(running) is np.ndarray and type(batch) is np.ndarray and running.ndim > 0:
        # NumPy arrays (every BN layer's training step): the same operations in the same
        # order, without the namespace's wrappers (2.8 → 1.3 µs a buffer)
        ct = running.dtype if running.dtype in _NP_COMPUTE else np.dtype(np.float32)
        new_np = running.astype(ct, copy=False) * (1.0 - m)
        new_np += batch.astype(ct, copy=False) * m
        return new_np.astype(running.dtype, copy=False)
    xp = xp_namespace("blend", running=running, batch=batch)
    ct = xp_compute_dtype(xp, running.dtype)
    new = (1.0 - m) * xp.astype(running, ct, copy=False) + m * xp.astype(batch, ct, copy=False)
    return xp.astype(new, running.dtype, copy=False)


def unbiased_variance(var: Array, count: int) -> Array:
    """The unbiased variance σ²·count/(count − 1) from the biased one of ``count`` values per
    statistic (count >= 2): what running variances store (PyTorch's convention)."""
    if type(count) is not int or count < 2:
        count = xp_check_int("unbiased_variance", "count", count, minimum=2)
    return var * (count / (count - 1))


def fold_batch(buffers: MutableMapping[str, Any], batch: Mapping[str, Array],
               momentum: float | None, *, fname: str = "fold_batch",
               counter: str = "num_batches_tracked") -> None:
    """Fold one batch into a layer's running statistics: ``buffers[counter]`` (a Python int)
    counts it, then every ``buffers[name]`` becomes :func:`blend` of itself and
    ``batch[name]`` with :func:`momentum_weight`. ``batch`` holds what is to be averaged
    (the unbiased variance, a whitening matrix, a second moment), already reshaped to the
    buffers' shapes."""
    n = buffers[counter] + 1
    buffers[counter] = n
    m = momentum_weight(fname, momentum, n)
    for name, value in batch.items():
        buffers[name] = blend(buffers[name], value, m)


def update_running_stats(running_mean: Array, running_var: Array, batch_mean: Array,
                         batch_var: Array, count: int, *, momentum: float | None = 0.1,
                         num_batches_tracked: int | None = None) -> tuple[Array, Array]:
    """Fold one batch's moments into running statistics, as ``torch.nn.BatchNorm`` does.

        running ← (1 − m)·running + m·batch

    where the variance stored is the *unbiased* batch
    variance ``batch_var · count/(count − 1)`` (``batch_var`` is the biased one that
    :func:`batch_moments` returns, ``count`` the number of values per channel, N·∏S).
    ``momentum`` is the weight of the new batch (PyTorch's convention, the opposite of Keras
    and Flax); ``momentum=None`` gives the cumulative average, m = 1/num_batches_tracked,
    where ``num_batches_tracked`` counts batches *including* this one.

    Returns new arrays in the running statistics' dtype; the inputs are not modified (layers
    that own buffers assign the result). float16/bfloat16 running statistics are blended in
    float32 and rounded once, as PyTorch does (blending in float16 errs by up to ~100 ulps).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.arange(12.0).reshape(3, 4)
    >>> mean, var = an.batch_moments(x)
    >>> rm, rv = an.update_running_stats(np.zeros(4), np.ones(4), mean, var, count=3, momentum=0.5)
    >>> rm, rv                                   # 0.5·0 + 0.5·μ,  0.5·1 + 0.5·(var·3/2)
    (array([2. , 2.5, 3. , 3.5]), array([8.5, 8.5, 8.5, 8.5]))
    """
    fname = "update_running_stats"
    xp = xp_namespace(fname, running_mean=running_mean, running_var=running_var,
                      batch_mean=batch_mean, batch_var=batch_var)
    for name, a in (("running_mean", running_mean), ("running_var", running_var),
                    ("batch_mean", batch_mean), ("batch_var", batch_var)):
        xp_check_floating(fname, name, a, xp)
        xp_check_param_shape(fname, name, a, tuple(running_mean.shape))
    count = xp_check_int(fname, "count", count, minimum=2)
    m = momentum_weight(fname, momentum, num_batches_tracked)
    return (blend(running_mean, batch_mean, m),
            blend(running_var, unbiased_variance(batch_var, count), m))
