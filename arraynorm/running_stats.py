"""Batch moments and running statistics with PyTorch's momentum semantics."""

from __future__ import annotations

import numbers

from ._typing import Array
from ._array_api import (
    xp_check_finite_scalar,
    xp_check_floating,
    xp_check_param_shape,
    xp_compute_dtype,
    xp_namespace,
)
from ._statistics import moments
from .partition import Batch

__all__ = ["batch_moments", "update_running_stats"]


def batch_moments(x: Array, *, axis: int = 1) -> tuple[Array, Array]:
    """Per-channel batch mean and biased variance, the statistics training-mode BN uses.

    Shapes: ``x`` (N, C, *S) with the channel at ``axis``; returns two arrays of shape (C,) in
    the compute dtype (float32 for float16/bfloat16 inputs, so running statistics kept in
    float32 lose nothing). The variance is two-pass (see :func:`arraynorm.operation.moments`).
    A channel whose values include +inf (and no −inf or NaN) has mean inf and variance NaN;
    an empty batch gives NaN statistics (the mean of no values), like ``torch.var_mean``; a
    variance beyond the dtype's range is inf.
    """
    fname = "batch_moments"
    xp = xp_namespace(fname, x=x)
    xp_check_floating(fname, "x", x, xp)
    layout = Batch(axis).layout(fname, tuple(x.shape))
    layout.check_many(fname)
    ct = xp_compute_dtype(xp, x.dtype)
    xv = xp.astype(x, ct, copy=False)
    mean, var, _ = moments(xp, xv, layout.reduce_axes)
    return xp.reshape(mean, layout.param_shape), xp.reshape(var, layout.param_shape)


def update_running_stats(running_mean: Array, running_var: Array, batch_mean: Array,
                         batch_var: Array, count: int, *, momentum: float | None = 0.1,
                         num_batches_tracked: int | None = None) -> tuple[Array, Array]:
    """Fold one batch's moments into running statistics, as ``torch.nn.BatchNorm`` does.

    running ← (1 − m)·running + m·batch, where the variance stored is the *unbiased* batch
    variance ``batch_var · count/(count − 1)`` (``batch_var`` is the biased one that
    :func:`batch_moments` returns, ``count`` the number of values per channel, N·∏S).
    ``momentum`` is the weight of the new batch (PyTorch's convention, the opposite of Keras
    and Flax); ``momentum=None`` gives the cumulative average, m = 1/num_batches_tracked,
    where ``num_batches_tracked`` counts batches *including* this one.

    Returns new arrays in the running statistics' dtype; the inputs are not modified (layers
    that own buffers assign the result). float16/bfloat16 running statistics are blended in
    float32 and rounded once, as PyTorch does (blending in float16 errs by up to ~100 ulps).
    """
    fname = "update_running_stats"
    xp = xp_namespace(fname, running_mean=running_mean, running_var=running_var,
                      batch_mean=batch_mean, batch_var=batch_var)
    for name, a in (("running_mean", running_mean), ("running_var", running_var),
                    ("batch_mean", batch_mean), ("batch_var", batch_var)):
        xp_check_floating(fname, name, a, xp)
        xp_check_param_shape(fname, name, a, tuple(running_mean.shape))
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 2:
        raise ValueError(f"{fname}: count must be an int >= 2 (values per channel), got {count!r}")
    if momentum is None:
        if (isinstance(num_batches_tracked, bool) or not isinstance(num_batches_tracked, numbers.Integral)
                or num_batches_tracked < 1):
            raise ValueError(
                f"{fname}: momentum=None (cumulative average) needs num_batches_tracked >= 1, "
                f"got {num_batches_tracked!r}"
            )
        m = 1.0 / int(num_batches_tracked)
    else:
        m = xp_check_finite_scalar(fname, "momentum", momentum, minimum=0.0)
        if m > 1.0:
            raise ValueError(f"{fname}: momentum must be in [0, 1], got {m}")
    def blend(running: Array, batch: Array) -> Array:
        ct = xp_compute_dtype(xp, running.dtype)  # float32 for half running statistics
        r = xp.astype(running, ct, copy=False)
        new = (1.0 - m) * r + m * (xp.astype(batch, ct, copy=False))
        return xp.astype(new, running.dtype, copy=False)

    return blend(running_mean, batch_mean), blend(running_var, batch_var * (count / (count - 1)))
