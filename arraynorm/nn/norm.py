"""Normalization layers: each one a :class:`~arraynorm.Normalizer` (partition ∘ operation ∘
affine) holding its γ, β and, for the batch methods, running statistics.

The layers never re-implement a normalization: forward is ``Normalizer.forward`` and
backward is ``Normalizer.backward``, the core's closed-form VJPs. What a layer adds is
state: parameters, gradients, and running statistics with PyTorch's momentum semantics
(:func:`arraynorm.update_running_stats`: ``momentum`` is the weight of the new batch, running
variance stored unbiased, ``momentum=None`` for the cumulative average).

=====================  =================================  ===================================
layer                  composition                        PyTorch counterpart
=====================  =================================  ===================================
:class:`BatchNorm`     Batch ∘ Standardize ∘ affine       ``BatchNorm1d/2d/3d`` (any rank)
:class:`BatchRenorm`   Batch ∘ Renormalize ∘ affine       — (Ioffe 2017)
:class:`LayerNorm`     Layer(trailing) ∘ Standardize      ``LayerNorm``
:class:`GroupNorm`     Group ∘ Standardize ∘ affine       ``GroupNorm``
:class:`InstanceNorm`  Instance ∘ Standardize (∘ affine)  ``InstanceNorm1d/2d`` (no running stats)
:class:`RMSNorm`       Layer(trailing) ∘ RMSScale ∘ γ     ``RMSNorm``
:class:`PositionNorm`  Position ∘ Standardize             — (Li et al. 2019)
:class:`LocalResponseNorm` cross-channel window (LRN)      ``LocalResponseNorm``
:class:`Normalization` any partition ∘ any operation      —
=====================  =================================  ===================================
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

import numpy as np

from .._array_api import (xp_check_channel_axis, xp_check_eps, xp_check_finite_scalar,
                          xp_check_momentum, xp_check_shape, xp_from_host, xp_namespace)
from .._typing import Array, Namespace, Shape
from ..compose import NormContext, Normalizer
from ..local_response import local_response_norm, lrn_linearized
from ..operation import GivenStatistics, Operation, Renormalize, RMSScale, Standardize
from ..partition import Batch, Group, Instance, Layer, Partition, Position, layout_of
from ..recovery import Affine, NoRecovery
from ..running_stats import fold_batch, unbiased_variance
from .module import Module

__all__ = ["Normalization", "BatchNorm", "BatchRenorm", "UncenteredBatchNorm", "LayerNorm",
           "GroupNorm", "InstanceNorm", "RMSNorm", "PositionNorm", "LocalResponseNorm"]





class Normalization(Module):
    """Any composition of the survey's stages as a layer: y = γ · op(x | partition) + β.

    Parameters
    ----------
    partition : :mod:`arraynorm.partition` object (``Batch()``, ``Group(8)``, ``Layer(-1)``…).
    operation : :mod:`arraynorm.operation` object (default :class:`Standardize`).
    param_shape : shape of γ and β (the partition's ``param_shape``: (C,) for channel
        partitions, the normalized axes' shape for ``Layer``); required when ``affine``.
    eps : Python float >= 0 (default 1e-5); ``None``: the machine epsilon of the input's
        dtype (RMSNorm's default, as ``torch.nn.RMSNorm``).
    affine, bias : learn γ (ones) and β (zeros); ``bias=False`` keeps γ only. Without affine
        the normalizer has no recovery (:class:`~arraynorm.recovery.NoRecovery`).
    xp, dtype, device : where the parameters live.
    """

    _name = "Normalization"

    def __init__(self, partition: Partition, operation: Operation | None = None,
                 param_shape: tuple[int, ...] | int | None = None, *, eps: float | None = 1e-5,
                 affine: bool = True, bias: bool = True, xp: Namespace = None, dtype: Any = None,
                 device: Any = None) -> None:
        super().__init__()
        fname = self._name
        if not isinstance(partition, Partition):
            raise TypeError(f"{fname}: partition must be an arraynorm.partition object, "
                            f"got {type(partition).__name__}")
        if hasattr(partition, "axis"):  # a channel partition: one int axis, checked now
            xp_check_channel_axis(fname, getattr(partition, "axis"), None)
        self.partition = partition
        self.operation = operation if operation is not None else Standardize()
        self.eps = None if eps is None else xp_check_eps(fname, eps)
        self.param_shape = None if param_shape is None else xp_check_shape(fname, "param_shape", param_shape)
        if affine and self.param_shape is None:
            raise ValueError(f"{fname}: affine=True needs param_shape (the shape of γ and β)")
        self.recovery = Affine() if affine else NoRecovery()
        if self.param_shape is not None and affine:
            shape = self.param_shape
            self.register_parameter("weight", xp_from_host(np.ones(shape), xp, device, dtype))
            b = xp_from_host(np.zeros(shape), xp, device, dtype) if bias else None
            self.register_parameter("bias", b)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @property
    def features(self) -> Shape:
        """γ's shape, for the layers that always have one (the channel count: (C,))."""
        assert self.param_shape is not None, f"{self._name} has no param_shape"
        return self.param_shape

    def _operation_now(self) -> Operation:
        """The operation of the current mode (batch statistics here; the running ones in eval
        for the layers that keep them)."""
        return self.operation

    def _eps(self, x: Array) -> float:
        """eps, or for ``eps=None`` the machine epsilon of the input's dtype (RMSNorm's rule)."""
        if self.eps is not None:
            return self.eps
        xp = xp_namespace(f"{self._name}.forward", x=x)
        return float(xp.finfo(x.dtype).eps) if xp.isdtype(x.dtype, "real floating") else 0.0

    def _normalizer(self, x: Array) -> Normalizer:
        """The layer's normalizer for this call: the one of the previous call while the
        partition, operation, eps and recovery are the same objects (values for eps), so that
        its memo of checked input signatures (:class:`~arraynorm.Normalizer`) carries over."""
        op, eps = self._operation_now(), self._eps(x)
        last = self.__dict__.get("_last_normalizer")
        if (last is not None and last[0] is self.partition and last[1] is op and last[2] == eps
                and last[3] is self.recovery):
            norm: Normalizer = last[4]
            return norm
        norm = Normalizer(self.partition, op, eps, self._name, self.recovery, repeated=True)
        if not op.arrays():  # eval's given statistics are new each call: keep training's
            object.__setattr__(self, "_last_normalizer", (self.partition, op, eps, self.recovery, norm))
        return norm

    def _check_features(self, x: Array) -> None:
        if self.param_shape is None:
            return
        layout = layout_of(self.partition, self._name, tuple(getattr(x, "shape", ())))
        if layout.param_shape != self.param_shape:
            raise ValueError(
                f"{self._name}.forward: x must have {self.param_shape} features along the "
                f"normalized/channel axes (the layer's param_shape), got x of shape "
                f"{tuple(x.shape)}, which has {layout.param_shape}"
            )

    def forward(self, x: Array) -> Array:
        """y = γ · op(x | partition) + β with batch statistics in training mode (the running ones in
        eval mode for the layers that keep them); updates the running statistics in training.
        """
        self._check_features_if_array(x)
        norm = self._normalizer(x)
        y, ctx = norm.forward(x, self.params.get("weight"), self.params.get("bias"))
        self._after_forward(ctx)
        self._save(norm=norm, ctx=ctx)
        return y

    def _check_features_if_array(self, x: Array) -> None:
        shape = getattr(x, "shape", None)
        if shape is None:
            return
        # the check is a function of the partition, γ's shape and x's shape: once per shape
        last = self.__dict__.get("_features_checked")
        if last is not None and last[0] is self.partition and last[1] == self.param_shape and last[2] == shape:
            return
        self._check_features(x)
        object.__setattr__(self, "_features_checked", (self.partition, self.param_shape, tuple(shape)))

    def _after_forward(self, ctx: NormContext) -> None:
        """Hook: running statistics updates (batch methods)."""

    def backward(self, dy: Array) -> Array:
        """dx by the normalizer's closed-form VJP; sets ∂L/∂γ and ∂L/∂β (in the parameters' dtype)."""
        c = self._saved()
        dx, dw, db = c["norm"].backward(c["ctx"], dy)
        if "weight" in self.params:
            self.grads["weight"] = dw
        if "bias" in self.params:
            self.grads["bias"] = db
        return dx

    def jvp(self, dx: Array) -> Array:
        """J·dx with γ, β fixed, by :meth:`arraynorm.Normalizer.jvp` (the operation's closed
        form; for batch statistics the tangent is the whole batch's)."""
        c = self._saved("jvp")
        return c["norm"].jvp(c["ctx"], dx)

    def extra_repr(self) -> str:
        return (f"{self.partition}, {type(self.operation).__name__}, eps={self.eps}, "
                f"affine={'weight' in self.params}")


class _TrailingAxes(Normalization):
    """A normalization over the ``normalized_shape`` axes — the trailing ones, or ``axis`` —
    γ and β of that shape (what LayerNorm and RMSNorm share)."""

    def __init__(self, normalized_shape: int | tuple[int, ...], operation: Operation,
                 eps: float | None, affine: bool, bias: bool, xp: Namespace, dtype: Any,
                 device: Any, axis: int | tuple[int, ...] | None = None) -> None:
        fname = self._name
        shape = xp_check_shape(fname, "normalized_shape", normalized_shape)
        if axis is None:
            axes: int | tuple[int, ...] = tuple(range(-len(shape), 0))
        else:
            axes = (axis,) if isinstance(axis, int) and not isinstance(axis, bool) else axis
            if (not isinstance(axes, (tuple, list)) or not axes
                    or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes)):
                raise TypeError(f"{fname}: axis must be an int or a non-empty tuple of ints "
                                f"(the reduced axes), got {axis!r}")
            if len(set(axes)) != len(axes):
                raise ValueError(f"{fname}: axis={tuple(axes)} repeats an axis")
            if len(axes) != len(shape):
                raise ValueError(f"{fname}: axis={tuple(axes)} must name one axis per entry of "
                                 f"normalized_shape={shape} (the reduced axes, in order)")
            if any(a < 0 for a in axes) and any(a >= 0 for a in axes):
                raise ValueError(f"{fname}: axis={tuple(axes)} mixes negative and non-negative "
                                 f"axes, whose order depends on the input's rank; use one sign")
            if list(axes) != sorted(axes):
                raise ValueError(f"{fname}: axis={tuple(axes)} must be increasing (γ and β "
                                 f"have the normalized axes' shape in the input's order)")
            axes = tuple(axes)
        super().__init__(Layer(axes), operation, shape, eps=eps,
                         affine=affine, bias=bias, xp=xp, dtype=dtype, device=device)
        self.param_shape = shape
        self.axis = axes
        self._axis_given = axis is not None

    def extra_repr(self) -> str:
        return f"{self.param_shape}, eps={self.eps}" + (f", axis={self.axis}" if self._axis_given else "")


class LayerNorm(_TrailingAxes):
    """Layer normalization (Ba et al. 2016) over the *reduced* axes: the trailing
    ``normalized_shape`` axes, or ``axis`` (an int or an increasing tuple of ints, one per
    entry of ``normalized_shape``; negative ones count from the end).
    y = γ · (x − μ)/sqrt(σ² + eps) + β, μ, σ² (biased) per sample over those axes.

    Same arguments and defaults as ``torch.nn.LayerNorm`` (eps=1e-5, γ = 1, β = 0); ``axis``
    is ours (Keras' ``LayerNormalization(axis=...)``): ``LayerNorm(C, axis=1)`` normalizes
    the channels of an NCHW input at each position.
    """

    _name = "LayerNorm"

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, *, xp: Namespace = None,
                 dtype: Any = None, device: Any = None,
                 axis: int | tuple[int, ...] | None = None) -> None:
        super().__init__(normalized_shape, Standardize(), eps, elementwise_affine, bias, xp,
                         dtype, device, axis)


class RMSNorm(_TrailingAxes):
    """RMS normalization (Zhang & Sennrich 2019) over the *reduced* axes: the trailing
    ``normalized_shape`` axes, or ``axis`` (as :class:`LayerNorm`).
    y = γ · x / sqrt(mean(x²) + eps). ``eps=None`` (default) is the machine epsilon of the
    input's dtype, as ``torch.nn.RMSNorm``."""

    _name = "RMSNorm"

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float | None = None,
                 elementwise_affine: bool = True, *, xp: Namespace = None, dtype: Any = None,
                 device: Any = None, axis: int | tuple[int, ...] | None = None) -> None:
        super().__init__(normalized_shape, RMSScale(), eps, elementwise_affine, False, xp,
                         dtype, device, axis)


class GroupNorm(Normalization):
    """Group normalization (Wu & He 2018): channels in ``num_groups`` groups, statistics per
    sample and group; γ, β per channel. Same as ``torch.nn.GroupNorm``.

    ``axis`` is the *channel* axis, kept: its channels are split into groups, γ and β are per
    channel (default 1, NCHW; ``axis=-1`` for channels last; one int — a tuple is a
    ``ValueError``).
    """

    _name = "GroupNorm"

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, *, axis: int = 1, xp: Namespace = None, dtype: Any = None,
                 device: Any = None) -> None:
        super().__init__(Group(num_groups, axis), Standardize(), num_channels, eps=eps,
                         affine=affine, xp=xp, dtype=dtype, device=device)
        c = self.features[0]
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 \
                or c % num_groups:
            raise ValueError(f"GroupNorm: num_groups must be a positive int dividing "
                             f"num_channels={c}, got {num_groups!r}")
        self.num_groups = num_groups

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.features[0]}, eps={self.eps}"


class InstanceNorm(Normalization):
    """Instance normalization (Ulyanov et al. 2016): statistics per sample and channel over
    the spatial axes of (N, C, *S). Defaults as ``torch.nn.InstanceNorm2d`` (affine=False);
    unlike it, no running statistics are kept (PyTorch's default too).

    ``axis`` is the *channel* axis, kept: one statistic per sample and channel (default 1, NCHW;
    ``axis=-1`` for channels last; one int — a tuple is a ``ValueError``).
    """

    _name = "InstanceNorm"

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False, *,
                 axis: int = 1, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__(Instance(axis), Standardize(), num_features, eps=eps, affine=affine,
                         xp=xp, dtype=dtype, device=device)


class PositionNorm(Normalization):
    """Positional normalization (Li et al. 2019): statistics per sample and position over
    the channels; optional γ, β per channel (default none, as in the paper).

    ``axis`` is the *channel* axis, which PN *reduces* (one statistic per sample and position;
    default 1; one int).
    """

    _name = "PositionNorm"

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False, *,
                 axis: int = 1, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__(Position(axis), Standardize(), num_features, eps=eps, affine=affine,
                         xp=xp, dtype=dtype, device=device)


class BatchNorm(Normalization):
    """Batch normalization (Ioffe & Szegedy 2015) with running statistics.

    ``axis`` is the *channel* axis, kept: one statistic per channel (default 1, NCHW;
    ``axis=-1`` for channels last; one int — a tuple is a ``ValueError``).

    Training: y = γ (x − μ_B)/sqrt(σ²_B + eps) + β with the batch's per-channel statistics
    (biased variance), and the running statistics updated
    ``running ← (1 − momentum)·running + momentum·batch`` (unbiased variance);
    ``momentum=None`` is the cumulative average over ``num_batches_tracked`` batches.
    Eval: the running statistics are used. ``track_running_stats=False`` always uses batch
    statistics. Input (N, C, *S) with the channel at ``axis`` (default 1): one class serves
    PyTorch's ``BatchNorm1d``, ``BatchNorm2d`` and ``BatchNorm3d``, with the same defaults
    (eps=1e-5, momentum=0.1, affine=True). An empty batch gives an empty output and leaves
    the running statistics (and ``num_batches_tracked``) as they are, as in PyTorch.
    """

    _name = "BatchNorm"
    _nonnegative_state = ("running_var",)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, axis: int = 1,
                 xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__(Batch(axis), Standardize(), num_features, eps=eps, affine=affine,
                         xp=xp, dtype=dtype, device=device)
        self.momentum = xp_check_momentum(self._name, momentum)
        self.track_running_stats = bool(track_running_stats)
        self.axis = axis
        if self.track_running_stats:
            shape = self.features
            self.register_buffer("running_mean", xp_from_host(np.zeros(shape), xp, device, dtype))
            self.register_buffer("running_var", xp_from_host(np.ones(shape), xp, device, dtype))
            self.register_buffer("num_batches_tracked", 0)

    def _uses_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def _operation_now(self) -> Operation:
        if self._uses_batch_stats():
            return self.operation
        return GivenStatistics(self.buffers["running_mean"], self.buffers["running_var"])

    def _after_forward(self, ctx: NormContext) -> None:
        # an empty batch has no statistics to fold in (PyTorch leaves the buffers as they are)
        if not (self.training and self.track_running_stats) or ctx.layout.group_size == 0:
            return
        xp, st = ctx.xp, ctx.state  # Standardize's or Renormalize's: the batch statistics
        if type(st.mean) is np.ndarray and type(st.var) is np.ndarray:  # without the namespace's wrappers
            mean, var = st.mean.reshape(self.features), st.var.reshape(self.features)
        else:
            mean, var = xp.reshape(st.mean, self.features), xp.reshape(st.var, self.features)
        fold_batch(self.buffers, {
            "running_mean": mean,
            "running_var": unbiased_variance(var, ctx.layout.group_size),
        }, self.momentum, fname=self._name)

    def extra_repr(self) -> str:
        return (f"{self.features[0]}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={'weight' in self.params}, track_running_stats={self.track_running_stats}")


class BatchRenorm(BatchNorm):
    """Batch renormalization (Ioffe 2017): in training,
    y = γ · (r · (x − μ_B)/σ_B + d) + β with r = clip(σ_B/σ, 1/rmax, rmax) and
    d = clip((μ_B − μ)/σ, −dmax, dmax) from the running μ, σ *before* this batch's update
    (r, d are constants in the backward pass, the paper's stop-gradient); in eval, the
    running statistics as in BN. ``rmax=1, dmax=0`` is BN. Running statistics follow
    :class:`BatchNorm` (PyTorch momentum convention; the paper's α is ``momentum``).
    PyTorch has no counterpart.

    ``axis`` is the *channel* axis, kept: one statistic per channel, as :class:`BatchNorm`
    (default 1, NCHW; ``axis=-1`` for channels last; one int — a tuple is a ``ValueError``).
    """

    _name = "BatchRenorm"

    def __init__(self, num_features: int, rmax: float = 3.0, dmax: float = 5.0,
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True, *,
                 axis: int = 1, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, True, axis=axis, xp=xp,
                         dtype=dtype, device=device)
        self.rmax = xp_check_finite_scalar(self._name, "rmax", rmax, minimum=1.0)
        self.dmax = xp_check_finite_scalar(self._name, "dmax", dmax, minimum=0.0)

    def _operation_now(self) -> Operation:
        if not self.training:
            return super()._operation_now()
        return Renormalize(self.buffers["running_mean"], self.buffers["running_var"],
                           self.rmax, self.dmax)

    def extra_repr(self) -> str:
        return f"{self.features[0]}, rmax={self.rmax}, dmax={self.dmax}, eps={self.eps}"


class UncenteredBatchNorm(Normalization):
    """Batch normalization without centring (scale-only BN): batch partition ∘ RMS scale,

    ``axis`` is the *channel* axis, kept: one second moment per channel (default 1, NCHW;
    ``axis=-1`` for channels last; one int — a tuple is a ``ValueError``).

        y = γ · x / sqrt(mean_B(x²) + eps)  (+ β with ``bias=True``),

    the second moment per channel over the batch and spatial axes. This is the BN that
    Daneshmand et al. analyse ("Batch normalization provably avoids rank collapse for randomly
    initialised deep networks", NeurIPS 2020: BN(H) = diag(H Hᵀ)^{-1/2} H): dividing by the
    per-feature batch norm alone already keeps the representations of a batch from collapsing
    to rank one with depth. The Jacobian couples the batch as BN's does, but without the
    mean direction in its null space.

    Running statistics: ``running_mean_square`` (C,), starting at ones and blended with
    PyTorch's momentum convention (``momentum=None``: cumulative average); no Bessel
    correction, the batch mean of x² being already unbiased for E[x²]. In eval mode (or with
    ``track_running_stats=False``, always batch statistics) y = γ x / sqrt(running + eps).
    Defaults as :class:`BatchNorm` (eps=1e-5, momentum=0.1, channel ``axis`` 1), except that
    the affine is γ only (``bias=False``) as for RMSNorm. PyTorch has no counterpart.
    """

    _name = "UncenteredBatchNorm"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, bias: bool = False, track_running_stats: bool = True, *,
                 axis: int = 1, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__(Batch(axis), RMSScale(), num_features, eps=eps, affine=affine,
                         bias=bias, xp=xp, dtype=dtype, device=device)
        self.momentum = xp_check_momentum(self._name, momentum)
        self.track_running_stats = bool(track_running_stats)
        self.axis = axis
        if self.track_running_stats:
            ones = xp_from_host(np.ones(self.features), xp, device, dtype)
            self.register_buffer("running_mean_square", ones)
            self.register_buffer("num_batches_tracked", 0)

    def _operation_now(self) -> Operation:
        if self.training or not self.track_running_stats:
            return self.operation
        ms = self.buffers["running_mean_square"]
        return GivenStatistics(array_namespace(ms).zeros_like(ms), ms)

    def _after_forward(self, ctx: NormContext) -> None:
        if not (self.training and self.track_running_stats):
            return
        ms = ctx.xp.reshape(ctx.state.var, self.features)  # RMSScale keeps mean(x²) as var
        fold_batch(self.buffers, {"running_mean_square": ms}, self.momentum, fname=self._name)

    def extra_repr(self) -> str:
        return (f"{self.features[0]}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={'weight' in self.params}, track_running_stats={self.track_running_stats}")


class LocalResponseNorm(Module):
    """Local response normalization across channels (Krizhevsky et al. 2012):
    y_c = x_c / (k + α/size · Σ_{|c'−c| in window} x_{c'}²)^β, as ``torch.nn.LocalResponseNorm``
    (same defaults α=1e-4, β=0.75, k=1). Forward and backward are
    :func:`arraynorm.local_response_norm` and its VJP; x is (N, C, *S). No parameters.

    ``axis`` is the *channel* axis the window runs along (default 1; one int).
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *,
                 axis: int = 1) -> None:
        super().__init__()
        xp_check_channel_axis("LocalResponseNorm", axis, None)
        self.size, self.alpha, self.beta, self.k, self.axis = size, alpha, beta, k, axis

    def forward(self, x: Array) -> Array:
        """y_c = x_c / (k + α/size · Σ_window x²)^β along the channel ``axis``."""
        args = (x, self.size, self.alpha, self.beta, self.k)
        if not self.requires_grad:
            self._save()
            return local_response_norm(*args, axis=self.axis)
        y, pullback, pushforward = lrn_linearized(*args, self.axis)
        self._save(pullback=pullback, pushforward=pushforward, shape=tuple(x.shape),
                   xp=xp_namespace("LocalResponseNorm.forward", x=x))
        return y

    def backward(self, dy: Array) -> Array:
        """dx by :func:`arraynorm.local_response_norm`'s closed-form VJP (no parameters)."""
        return self._saved()["pullback"](dy)[0]

    def jvp(self, dx: Array) -> Array:
        """J·dx by the closed-form pushforward of :func:`arraynorm.local_response_norm`."""
        c = self._saved("jvp")
        self._check_tangent(dx, c["xp"], c["shape"])
        return c["pushforward"](dx)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
