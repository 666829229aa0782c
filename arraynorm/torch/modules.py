"""``torch.nn.Module`` layers for the normalizations PyTorch lacks.

Each layer's forward is arraynorm's op as one autograd node whose backward is the op's
closed-form pullback (:mod:`arraynorm.torch.functional`), and its running statistics never
carry autograd history: the batch-norm layers fold :func:`arraynorm.batch_moments` of the
detached input into their buffers with :func:`arraynorm.update_running_stats` under
``torch.no_grad()``; the whitening layers take the batch mean and whitening matrix from the
forward pass's own normalizer state (the values :func:`arraynorm.whitening_moments` returns),
so the decomposition is not computed twice.

==============================  ==============================================  ==============
layer                           training / eval                                 running stats
==============================  ==============================================  ==============
:class:`DecorrelatedBatchNorm`  ZCA/PCA/Cholesky whitening per channel group    mean, W
:class:`IterNorm`               Newton-iteration whitening per channel group    mean, W
:class:`GroupWhitening`         whitening of channel groups, per sample         —
:class:`PositionNorm`           standardize over channels, per position (PONO)  —
:class:`BatchRenorm`            BN corrected towards running stats / BN         mean, var
:class:`GhostBatchNorm`         BN per virtual batch / BN                       mean, var
:class:`AdaIN`                  content normalized to the style's statistics    —
==============================  ==============================================  ==============

Conventions are PyTorch's: ``momentum`` (default 0.1) is the weight of the new batch,
``momentum=None`` the cumulative average over ``num_batches_tracked`` batches, the running
variance is stored unbiased; parameters and buffers take ``device=`` and ``dtype=``
(default: torch's default dtype, float32), move with ``.to()``, and are saved by
``state_dict``. float16 and bfloat16 inputs work with float32 parameters and statistics:
the ops compute in float32 and return the input's dtype. ``train()`` / ``eval()`` switch
between batch and running statistics.

Cost to know: in training, :class:`BatchRenorm` and :class:`GhostBatchNorm` reduce the batch
a second time for the running mean and variance (one pass, cheap next to the layer).

Examples
--------
>>> import torch
>>> from arraynorm.torch import IterNorm
>>> model = torch.nn.Sequential(torch.nn.Linear(6, 8), IterNorm(8, num_groups=2),
...                             torch.nn.ReLU(), torch.nn.Linear(8, 1))
>>> loss = model(torch.randn(16, 6)).square().mean()
>>> loss.backward()
>>> model[1].running_whitening.shape, model[1].running_whitening.requires_grad
(torch.Size([2, 4, 4]), False)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._array_api import (xp_check_channel_axis, xp_check_eps, xp_check_finite_scalar,
                          xp_check_int, xp_check_momentum)
from ..compose import Normalizer
from ..operation import IterNormWhiten, whitening_operation
from ..partition import BatchGroups
from ..running_stats import batch_moments, blend, momentum_weight, update_running_stats
from . import functional as AF
from ._function import apply_rule

__all__ = ["DecorrelatedBatchNorm", "IterNorm", "GroupWhitening", "PositionNorm", "BatchRenorm",
           "GhostBatchNorm", "AdaIN"]



class _ChannelNorm(torch.nn.Module):
    """A per-channel γ (ones) and β (zeros) of shape (C,), and the input checks."""

    def __init__(self, num_features: int, eps: float, affine: bool, axis: int,
                 device: Any, dtype: Any) -> None:
        super().__init__()
        fname = type(self).__name__
        self.num_features = xp_check_int(fname, "num_features", num_features)
        self.eps = xp_check_eps(fname, eps)
        self.axis = xp_check_channel_axis(fname, axis, None)  # one int: a tuple is a ValueError
        self.affine = bool(affine)
        factory = {"device": device, "dtype": dtype}
        if self.affine:
            self.weight = torch.nn.Parameter(torch.ones(self.num_features, **factory))
            self.bias = torch.nn.Parameter(torch.zeros(self.num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _check_input(self, x: Any) -> None:
        fname = f"{type(self).__name__}.forward"
        if not isinstance(x, Tensor):
            raise TypeError(f"{fname}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(f"{fname}: input must have a batch and a channel axis, got shape "
                             f"{tuple(x.shape)}")
        ax = xp_check_channel_axis(fname, self.axis, x.ndim)
        if x.shape[ax] != self.num_features:
            raise ValueError(f"{fname}: expected {self.num_features} channels along axis "
                             f"{self.axis}, got input of shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, axis={self.axis}"


class _RunningStats(_ChannelNorm):
    """Adds ``momentum`` and the ``num_batches_tracked`` buffer (a 0-d int64, PyTorch's)."""

    def __init__(self, num_features: int, eps: float, momentum: float | None, affine: bool,
                 axis: int, device: Any, dtype: Any) -> None:
        super().__init__(num_features, eps, affine, axis, device, dtype)
        self.momentum = xp_check_momentum(type(self).__name__, momentum)
        self.register_buffer("num_batches_tracked",
                             torch.tensor(0, dtype=torch.long, device=device))

    def _count_batch(self) -> int | None:
        """Count one more batch; return the count when ``momentum=None`` needs it (reading it
        synchronizes the device, as ``torch.nn.BatchNorm`` does in that mode)."""
        self.num_batches_tracked.add_(1)
        return int(self.num_batches_tracked) if self.momentum is None else None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={self.momentum}"


class _BatchStats(_RunningStats):
    """Running mean (zeros) and running variance (ones) of shape (C,), updated from
    :func:`arraynorm.batch_moments` by :func:`arraynorm.update_running_stats`."""

    def __init__(self, num_features: int, eps: float, momentum: float | None, affine: bool,
                 axis: int, device: Any, dtype: Any) -> None:
        super().__init__(num_features, eps, momentum, affine, axis, device, dtype)
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("running_mean", torch.zeros(self.num_features, **factory))
        self.register_buffer("running_var", torch.ones(self.num_features, **factory))

    @torch.no_grad()
    def _update(self, x: Tensor) -> None:
        mean, var = batch_moments(x, axis=self.axis)
        n = self._count_batch()
        rm, rv = update_running_stats(
            self.running_mean, self.running_var, mean, var, x.numel() // self.num_features,
            momentum=self.momentum, num_batches_tracked=n)
        self.running_mean.copy_(rm)
        self.running_var.copy_(rv)

    def _eval(self, x: Tensor) -> Tensor:
        return AF.batch_norm(x, self.weight, self.bias, mean=self.running_mean,
                             var=self.running_var, eps=self.eps, axis=self.axis)


class BatchRenorm(_BatchStats):
    """Batch renormalization (Ioffe 2017) as a layer: :func:`arraynorm.batch_renorm`.

    Training: y = γ · (r · (x − μ_B)/σ_B + d) + β with r = clip(σ_B/σ, 1/rmax, rmax),
    d = clip((μ_B − μ)/σ, −dmax, dmax) from the running μ, σ = sqrt(running_var + eps)
    *before* this batch's update; r and d are constants in the backward pass (the paper's
    stop-gradient). Then the running statistics are updated as ``torch.nn.BatchNorm``'s.
    Eval: BN with the running statistics. ``rmax=1, dmax=0`` is BatchNorm. The paper anneals
    rmax from 1 and dmax from 0: set the attributes between steps.

    Shapes: input (N, C, *S), channel at ``axis`` (default 1); γ, β, running_mean,
    running_var (C,). PyTorch has no counterpart.
    """

    def __init__(self, num_features: int, rmax: float = 3.0, dmax: float = 5.0,
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True, *,
                 axis: int = 1, device: Any = None, dtype: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, axis, device, dtype)
        self.rmax = xp_check_finite_scalar("BatchRenorm", "rmax", rmax, minimum=1.0)
        self.dmax = xp_check_finite_scalar("BatchRenorm", "dmax", dmax, minimum=0.0)

    def forward(self, x: Tensor) -> Tensor:
        """Renormalize (training, then update the running statistics) or BN (eval)."""
        self._check_input(x)
        if not self.training:
            return self._eval(x)
        y = AF.batch_renorm(x, self.weight, self.bias, running_mean=self.running_mean,
                            running_var=self.running_var, rmax=self.rmax, dmax=self.dmax,
                            eps=self.eps, axis=self.axis)
        self._update(x.detach())
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}"


class GhostBatchNorm(_BatchStats):
    """Ghost batch normalization (Hoffer, Hubara & Soudry 2017): BN over virtual batches.

    Training: the batch (axis 0) is cut into consecutive chunks of ``virtual_batch_size``
    samples, each batch-normalized with its own statistics
    (:func:`arraynorm.ghost_batch_norm`; N must be a multiple of ``virtual_batch_size``), and
    the running statistics are updated once per chunk, in order — the paper's Algorithm 1,
    running ← (1 − m)^k·running + Σ_l (1 − m)^(k−l)·m·stat_l for k chunks — so
    ``num_batches_tracked`` counts chunks. Eval: BN with the running statistics.

    Shapes: input (N, C, *S), channel at ``axis`` (default 1); γ, β, running stats (C,).
    PyTorch has no counterpart.
    """

    def __init__(self, num_features: int, virtual_batch_size: int, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, *, axis: int = 1,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, axis, device, dtype)
        self.virtual_batch_size = xp_check_int("GhostBatchNorm", "virtual_batch_size",
                                                virtual_batch_size)

    def forward(self, x: Tensor) -> Tensor:
        """BN per virtual batch (training, updating the running statistics) or BN (eval)."""
        self._check_input(x)
        if not self.training:
            return self._eval(x)
        y = AF.ghost_batch_norm(x, self.virtual_batch_size, self.weight, self.bias,
                                eps=self.eps, axis=self.axis)
        for chunk in x.detach().split(self.virtual_batch_size, dim=0):
            self._update(chunk)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"


class _Whitening(_RunningStats):
    """Running mean (C,) and running whitening matrix (G, C/G, C/G), identity at start,
    running ← (1 − m)·running + m·batch (W itself is averaged, as in the DBN and IterNorm
    reference code and :mod:`arraynorm.nn`), with the batch's μ and W taken from the
    training forward pass's normalizer state."""

    def __init__(self, num_features: int, num_groups: int, eps: float, momentum: float | None,
                 affine: bool, axis: int, device: Any, dtype: Any) -> None:
        super().__init__(num_features, eps, momentum, affine, axis, device, dtype)
        fname = type(self).__name__
        self.num_groups = xp_check_int(fname, "num_groups", num_groups)
        if self.num_features % self.num_groups:
            raise ValueError(f"{fname}: num_groups={num_groups} must divide "
                             f"num_features={num_features}")
        d = self.num_features // self.num_groups
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("running_mean", torch.zeros(self.num_features, **factory))
        eye = torch.eye(d, **factory).expand(self.num_groups, d, d).clone()
        self.register_buffer("running_whitening", eye)

    def _operation(self) -> Any:
        raise NotImplementedError  # pragma: no cover

    def _eval(self, x: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def forward(self, x: Tensor) -> Tensor:
        """Whiten with the batch's statistics and fold them into the running ones (training),
        or with the running ones (eval)."""
        self._check_input(x)
        if not self.training:
            return self._eval(x)
        # the composition arraynorm.decorrelated_batch_norm / iter_norm run, called here
        # directly so that its state (μ_B, W_B) is at hand for the running statistics
        norm = Normalizer(BatchGroups(self.num_groups, self.axis), self._operation(), self.eps,
                          type(self).__name__)
        seen = {}

        def rule(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Any]:
            y, ctx = norm.forward(x, weight, bias)
            seen["state"] = ctx.state
            return y, lambda dy: norm.backward(ctx, dy)

        y = apply_rule(rule, x, self.weight, self.bias)
        self._update(seen["state"].mean, seen["state"].whitening_matrix)
        return y

    @torch.no_grad()
    def _update(self, mean: Tensor, w: Tensor) -> None:
        m = momentum_weight(type(self).__name__, self.momentum, self._count_batch())
        self.running_mean.copy_(blend(self.running_mean, mean.reshape(self.num_features), m))
        self.running_whitening.copy_(blend(self.running_whitening, w, m))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_groups={self.num_groups}"


class DecorrelatedBatchNorm(_Whitening):
    """Decorrelated batch normalization (Huang et al. 2018): :func:`arraynorm.decorrelated_batch_norm`.

    Training: each group of C/G channels is centred and whitened over the batch and spatial
    axes, x̂ = W_B (x − μ_B) with W_B = Σ_B^{-1/2} (``method="zca"``, the paper's), PCA
    whitening Λ^{-1/2}Uᵀ (``"pca"``), Cholesky L^{-1} (``"cholesky"``) or Newton iterations
    (``"iternorm"``), Σ_B = X_c X_cᵀ/m + eps·I; then γ x̂ + β. The backward goes through the
    decomposition. Eval: x̂ = W_run (x − μ_run).

    Shapes: input (N, C, *S), channel at ``axis`` (default 1); γ, β, ``running_mean`` (C,);
    ``running_whitening`` (G, C/G, C/G) with G = ``num_groups`` (default 1). eps = 1e-5 as
    PyTorch's BN (Chainer's DBN uses 2e-5). PyTorch has no counterpart.
    """

    def __init__(self, num_features: int, num_groups: int = 1, method: str = "zca",
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True, *,
                 axis: int = 1, device: Any = None, dtype: Any = None) -> None:
        whitening_operation("DecorrelatedBatchNorm", method)  # the one method table; refuses others
        self.method = method
        super().__init__(num_features, num_groups, eps, momentum, affine, axis, device, dtype)

    def _operation(self) -> Any:
        return whitening_operation("DecorrelatedBatchNorm", self.method)

    def _eval(self, x: Tensor) -> Tensor:
        return AF.decorrelated_batch_norm(
            x, self.weight, self.bias, num_groups=self.num_groups, mean=self.running_mean,
            whitening_matrix=self.running_whitening, eps=self.eps, axis=self.axis)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, method={self.method!r}"


class IterNorm(_Whitening):
    """Iterative normalization (Huang et al. 2019): :func:`arraynorm.iter_norm`.

    Training: per group of C/G channels, W = p_T(Σ/trΣ)/sqrt(trΣ) by T Newton steps
    P_{k+1} = 1.5 P_k − 0.5 P_k³ Σ_N (only matmuls), x̂ = W (x − μ_B), then γ x̂ + β.
    Eval: x̂ = W_run (x − μ_run). Defaults T = 5, ``num_groups`` 1 (the paper uses groups of
    64 channels). Shapes and buffers as :class:`DecorrelatedBatchNorm`. PyTorch has no
    counterpart.
    """

    def __init__(self, num_features: int, num_groups: int = 1, T: int = 5, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, *, axis: int = 1,
                 device: Any = None, dtype: Any = None) -> None:
        self.T = xp_check_int("IterNorm", "T", T)
        super().__init__(num_features, num_groups, eps, momentum, affine, axis, device, dtype)

    def _operation(self) -> Any:
        return IterNormWhiten(self.T, name="IterNorm")

    def _eval(self, x: Tensor) -> Tensor:
        return AF.iter_norm(x, self.weight, self.bias, num_groups=self.num_groups, T=self.T,
                            mean=self.running_mean, whitening_matrix=self.running_whitening,
                            eps=self.eps, axis=self.axis)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, T={self.T}"


class GroupWhitening(_ChannelNorm):
    """Group whitening (Huang et al. 2021): :func:`arraynorm.group_whitening`.

    Per sample, the C channels form ``num_groups`` groups; the G groups are decorrelated
    against each other, each group's C/G·∏S values being their samples, then γ x̂ + β per
    channel. No batch statistics, so training and eval are the same. ``method`` "zca"
    (default), "pca", "cholesky" or "iternorm". Arguments in ``torch.nn.GroupNorm``'s order.
    PyTorch has no counterpart.
    """

    def __init__(self, num_groups: int, num_channels: int, method: str = "zca",
                 eps: float = 1e-5, affine: bool = True, *, axis: int = 1, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(num_channels, eps, affine, axis, device, dtype)
        self.num_groups = xp_check_int("GroupWhitening", "num_groups", num_groups)
        if self.num_features % self.num_groups:
            raise ValueError(f"GroupWhitening: num_groups={num_groups} must divide "
                             f"num_channels={num_channels}")
        self.method = method

    def forward(self, x: Tensor) -> Tensor:
        """Whiten the channel groups of each sample."""
        self._check_input(x)
        return AF.group_whitening(x, self.num_groups, self.weight, self.bias, method=self.method,
                                  eps=self.eps, axis=self.axis)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {super().extra_repr()}, method={self.method!r}"


class PositionNorm(_ChannelNorm):
    """Positional normalization (PONO, Li et al. 2019): :func:`arraynorm.position_norm`.

    Statistics per sample and spatial position over the C channels,
    y = (x − μ_{n,s})/sqrt(σ²_{n,s} + eps) (· γ + β with ``affine=True``; the paper has no
    affine, hence the default ``False``). The same in training and eval. PyTorch has no
    counterpart.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False, *,
                 axis: int = 1, device: Any = None, dtype: Any = None) -> None:
        super().__init__(num_features, eps, affine, axis, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Normalize over the channels at each position."""
        self._check_input(x)
        return AF.position_norm(x, self.weight, self.bias, eps=self.eps, axis=self.axis)


class AdaIN(torch.nn.Module):
    """Adaptive instance normalization (Huang & Belongie 2017): :func:`arraynorm.adain`.

    ``forward(content, style)``: σ(s)·(c − μ(c))/σ(c) + μ(s), μ, σ per sample and channel
    over the spatial axes, σ = sqrt(biased variance + eps) for both (the paper's code uses
    the unbiased variance for the style). content (N, C, *S), style (N, C, *S'); both get
    gradients. No parameters.
    """

    def __init__(self, eps: float = 1e-5, *, axis: int = 1) -> None:
        super().__init__()
        self.eps, self.axis = xp_check_eps("AdaIN", eps), xp_check_channel_axis("AdaIN", axis, None)

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        """Content normalized per channel, rescaled and shifted to the style's statistics."""
        return AF.adain(content, style, eps=self.eps, axis=self.axis)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, axis={self.axis}"
