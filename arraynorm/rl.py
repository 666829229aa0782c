"""Normalization in reinforcement learning (the survey's RL application, §7): running
statistics of observations, rewards and advantages.

Observations and returns are normalized by the mean and variance of everything seen so far.
The statistics are kept exactly: each batch's mean and (two-pass) variance are merged with
the running ones by the parallel formula of Chan, Golub & LeVeque (1979),

    n = n_a + n_b,   δ = μ_b − μ_a,   μ = μ_a + δ·n_b/n,
    M₂ = σ²_a·n_a + σ²_b·n_b + δ²·n_a·n_b/n,   σ² = M₂/n,

so after any sequence of batches ``mean`` and ``var`` equal ``np.mean`` and ``np.var`` of the
concatenated stream (to rounding), with no E[x²] − E[x]² cancellation. Unlike OpenAI
baselines' ``RunningMeanStd`` the count starts at 0, not at a pseudo-count of 1e-4 with
mean 0 and variance 1, so the statistics are exact from the first batch. Counts are Python
ints (batch sizes are shapes, never values), so everything stays lazy on Dask and
asynchronous on CuPy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._array_api import (xp_check_eps, xp_check_finite_scalar, xp_check_floating, xp_check_int,
                         xp_check_unit_interval, xp_compute_dtype, xp_from_host, xp_move,
                         xp_namespace, xp_resolve_namespace)
from ._kernels.dask_moments import is_dask, one_pass_moments
from ._typing import Array, Namespace

__all__ = ["merge_moments", "RunningMeanStd", "ObservationNormalizer", "RewardNormalizer",
           "normalize_advantages"]


def merge_moments(mean_a: Array, var_a: Array, count_a: int, mean_b: Array, var_b: Array,
                  count_b: int) -> tuple[Array, Array, int]:
    """Mean, biased variance and count of the union of two samples from their moments.

    The parallel formula of Chan et al. (module docstring); ``var_*`` are biased (population)
    variances, ``count_*`` Python ints (``count_a`` may be 0: the result is then the b
    moments exactly). Returns ``(mean, var, count_a + count_b)``.
    """
    for name, c in (("count_a", count_a), ("count_b", count_b)):
        xp_check_int("merge_moments", name, c, minimum=0)
    total = int(count_a) + int(count_b)
    if total == 0:
        raise ValueError("merge_moments: both counts are 0")
    delta = mean_b - mean_a
    wb = count_b / total
    mean = mean_a + delta * wb
    var = (var_a * (count_a / total) + var_b * wb) + (delta * delta) * (count_a * wb / total)
    return mean, var, total


class RunningMeanStd:
    """Exact running mean and (biased) variance of a stream of batches, per feature.

    Parameters
    ----------
    shape : shape of one sample (``()`` for scalars such as returns).
    xp, dtype, device : where the statistics live (default NumPy, the namespace's default
        floating dtype).

    ``update(batch)`` takes a batch of shape ``(B, *shape)`` (or ``shape`` itself, one
    sample) and merges its moments; ``mean``, ``var`` (arrays of ``shape``) and ``count``
    (int) are then the statistics of everything seen. Before the first update ``mean`` is 0
    and ``var`` 1 (so normalizing is the identity up to eps).
    """

    def __init__(self, shape: tuple[int, ...] | int = (), *, xp: Namespace = None, dtype: Any = None,
                 device: Any = None) -> None:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        self.shape = tuple(int(n) for n in dims)
        self.mean = xp_from_host(np.zeros(self.shape), xp, device, dtype)
        self.var = xp_from_host(np.ones(self.shape), xp, device, dtype)
        self.count = 0

    def update(self, batch: Array) -> RunningMeanStd:
        """Merge the moments of ``batch`` (B, *shape) into the running statistics (a
        ``dask.array`` batch: its moments in one pass over the chunks, lazily)."""
        fname = "RunningMeanStd.update"
        xp = xp_namespace(fname, batch=batch, mean=self.mean)
        xp_check_floating(fname, "batch", batch, xp)
        shape = tuple(batch.shape)
        if shape == self.shape:
            batch, shape = xp.reshape(batch, (1,) + shape), (1,) + shape
        if shape[1:] != self.shape or shape[0] < 1:
            raise ValueError(f"{fname}: batch must have shape (B, *{self.shape}) with B >= 1, "
                             f"got {tuple(batch.shape)}")
        ct = xp_compute_dtype(xp, self.mean.dtype)
        b = xp.astype(batch, ct, copy=False)
        if is_dask(b) and math.prod(shape) > 0:
            # a chunked batch: one pass over the chunks, merged exactly (Chan et al.)
            mo = one_pass_moments(xp, b, (0,))
            b_mean, b_var = xp.reshape(mo.mean(xp, ct), self.shape), xp.reshape(mo.var(xp, ct), self.shape)
        else:
            b_mean = xp.mean(b, axis=0)
            c = b - b_mean
            b_var = xp.mean(c * c, axis=0)  # two-pass: no cancellation for |mean| ≫ std
        mean, var, self.count = merge_moments(xp.astype(self.mean, ct), xp.astype(self.var, ct),
                                              self.count, b_mean, b_var, shape[0])
        self.mean, self.var = xp.astype(mean, self.mean.dtype), xp.astype(var, self.var.dtype)
        return self

    @property
    def std(self) -> Array:
        """sqrt(var), the running standard deviation (biased, no eps)."""
        xp = xp_namespace("RunningMeanStd.std", mean=self.var)
        return xp.sqrt(self.var)

    def normalize(self, x: Array, *, center: bool = True, eps: float = 1e-8,
                  clip: float | None = None) -> Array:
        """(x − mean)/sqrt(var + eps) (without ``− mean`` if not ``center``), optionally
        clipped to [−clip, clip]; ``x`` of shape (..., *shape), result in ``x``'s dtype."""
        fname = "RunningMeanStd.normalize"
        xp = xp_namespace(fname, x=x, mean=self.mean)
        xp_check_floating(fname, "x", x, xp)
        eps = xp_check_eps(fname, eps)
        if self.shape and tuple(x.shape[-len(self.shape):]) != self.shape:
            raise ValueError(f"{fname}: x must have shape (..., *{self.shape}), got {tuple(x.shape)}")
        ct = xp_compute_dtype(xp, x.dtype)
        xc = xp.astype(x, ct, copy=False)
        mean, var = xp.astype(self.mean, ct), xp.astype(self.var, ct)
        y = (xc - mean if center else xc) / xp.sqrt(var + eps)
        if clip is not None:
            c = xp_check_finite_scalar(fname, "clip", clip, minimum=0.0)
            y = xp.clip(y, -c, c)
        return xp.astype(y, x.dtype, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """``{"mean", "var", "count"}``: the running statistics, for saving."""
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> RunningMeanStd:
        """Restore what :meth:`state_dict` returned; returns ``self``."""
        self.mean, self.var, self.count = state["mean"], state["var"], int(state["count"])
        return self

    def to(self, xp: Namespace, device: Any = None, dtype: Any = None) -> RunningMeanStd:
        """Move the statistics to namespace ``xp`` (and ``device``, ``dtype``); returns ``self``."""
        ns = xp_resolve_namespace(xp)
        self.mean = xp_move(self.mean, ns, device, dtype)
        self.var = xp_move(self.var, ns, device, dtype)
        return self


class ObservationNormalizer:
    """Observation normalization (as baselines' ``VecNormalize``): o ↦ clip((o − μ)/sqrt(σ² +
    eps), ±clip), μ, σ² the running statistics of every observation seen.

    ``normalizer(obs)`` first merges ``obs`` (B, *shape) into the statistics (unless
    ``update=False``, for evaluation), then normalizes it. Defaults clip=10, eps=1e-8.
    """

    def __init__(self, shape: tuple[int, ...] | int, *, clip: float | None = 10.0,
                 eps: float = 1e-8, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        self.rms = RunningMeanStd(shape, xp=xp, dtype=dtype, device=device)
        self.clip = None if clip is None else xp_check_finite_scalar("ObservationNormalizer", "clip", clip, minimum=0.0)
        self.eps = xp_check_eps("ObservationNormalizer", eps)

    def __call__(self, obs: Array, *, update: bool = True) -> Array:
        if update:
            self.rms.update(obs)
        return self.rms.normalize(obs, eps=self.eps, clip=self.clip)


class RewardNormalizer:
    """Reward scaling by the running standard deviation of the discounted return (as
    baselines' ``VecNormalize`` / Engstrom et al. 2020): per environment

        R ← γ·R + r;   update the statistics with R;   r ↦ clip(r / sqrt(Var[R] + eps), ±clip);
        R ← 0 where the episode ended

    Rewards are scaled, not centred (centring would change the optimal policy's incentives
    to end or prolong episodes). ``normalizer(rewards, dones)`` takes (num_envs,) arrays
    (``dones`` boolean). Defaults gamma=0.99, clip=10, eps=1e-8.
    """

    def __init__(self, num_envs: int, *, gamma: float = 0.99, clip: float | None = 10.0,
                 eps: float = 1e-8, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        fname = "RewardNormalizer"
        num_envs = xp_check_int(fname, "num_envs", num_envs)
        self.gamma = xp_check_unit_interval(fname, "gamma", gamma)
        self.clip = None if clip is None else xp_check_finite_scalar(fname, "clip", clip, minimum=0.0)
        self.eps = xp_check_eps(fname, eps)
        self.rms = RunningMeanStd((), xp=xp, dtype=dtype, device=device)
        self.returns = xp_from_host(np.zeros(int(num_envs)), xp, device, dtype)

    def __call__(self, rewards: Array, dones: Array | None = None, *, update: bool = True) -> Array:
        fname = "RewardNormalizer"
        xp = xp_namespace(fname, rewards=rewards, dones=dones, returns=self.returns)
        if tuple(rewards.shape) != tuple(self.returns.shape):
            raise ValueError(f"{fname}: rewards must have shape {tuple(self.returns.shape)} "
                             f"(num_envs,), got {tuple(rewards.shape)}")
        if dones is not None and tuple(dones.shape) != tuple(rewards.shape):
            raise ValueError(f"{fname}: dones must have the shape of rewards, got {tuple(dones.shape)}")
        r = xp.astype(rewards, self.returns.dtype)
        self.returns = self.returns * self.gamma + r
        if update:
            self.rms.update(self.returns)
        out = self.rms.normalize(r, center=False, eps=self.eps, clip=self.clip)
        if dones is not None:
            self.returns = xp.where(dones, xp.zeros_like(self.returns), self.returns)
        return xp.astype(out, rewards.dtype, copy=False)


def normalize_advantages(advantages: Array, *, eps: float = 1e-8) -> Array:
    """Per-batch advantage normalization (PPO): (A − mean(A)) / (std(A) + eps) over all
    elements, std the biased one (``np.std``; baselines' convention — some PPO codes use the
    unbiased ``torch.std``, a factor sqrt(n/(n−1)) apart). Result in ``advantages``' dtype,
    statistics in float32 at least.
    """
    fname = "normalize_advantages"
    xp = xp_namespace(fname, advantages=advantages)
    xp_check_floating(fname, "advantages", advantages, xp)
    eps = xp_check_eps(fname, eps)
    if math.prod(advantages.shape) < 2:
        raise ValueError(f"{fname}: advantages must hold at least 2 values, got shape "
                         f"{tuple(advantages.shape)}")
    ct = xp_compute_dtype(xp, advantages.dtype)
    a = xp.astype(advantages, ct, copy=False)
    c = a - xp.mean(a)
    y = c / (xp.sqrt(xp.mean(c * c)) + eps)
    return xp.astype(y, advantages.dtype, copy=False)
