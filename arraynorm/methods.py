"""The named activation normalizations: each one a composition of the three stages.

Every function here is written as its *composition*: it returns
``(Normalizer(partition, operation, eps), x, weight, bias)`` and the :func:`composition`
decorator turns that into the public op (returning ``y``) and registers its VJP and JVP, so
``vjp(group_norm, …)`` runs the fused closed-form backward of ``Normalizer`` and
``jvp(group_norm, …)`` its forward-mode product.

Conventions (DESIGN.md §3.6): PyTorch's defaults where a PyTorch user looks (eps=1e-5,
channel axis 1 = NCHW for BN/IN/GN, LN over trailing axes, biased variance in the
normalization); where we differ from PyTorch, the docstring says so.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

from ._array_api import (
    xp_check_eps,
    xp_check_finite_scalar,
    xp_check_floating,
    xp_namespace,
)
from ._jvp import defjvp
from ._typing import Array
from ._vjp import defvjp, positional_parameters
from .compose import Normalizer
from .operation import GivenStatistics, LpScale, Renormalize, RMSScale, Standardize
from .partition import Batch, GhostBatch, Group, Instance, Layer, Position, exact_fields

__all__ = [
    "batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm", "position_norm",
    "ghost_batch_norm", "batch_renorm", "l2_normalize", "composition", "Composed",
]


#: one object per stateless operation class, so that normalizers made of them can be reused
_STATELESS: dict[type, Any] = {Standardize: Standardize(), RMSScale: RMSScale()}
_REUSED: dict[tuple[Any, ...], Normalizer] = {}
_REUSED_MAX = 256


def _reused(partition: Any, operation: type, eps: Any, name: str) -> Normalizer:
    """``Normalizer(partition, operation(), eps, name)``, one object per combination while
    eps is a finite float >= 0 and the partition's fields plain ints
    (:func:`~arraynorm.partition.exact_fields`): its memo of checked input
    signatures (``Normalizer._memo``) then serves every call of the op on the same kind of
    input, as a layer's does (anything else gets a fresh normalizer, whose checks say what is
    wrong)."""
    if not (type(eps) is float and 0.0 <= eps < float("inf") and exact_fields(partition)):
        return Normalizer(partition, _STATELESS[operation], eps, name)
    key = (partition, operation, eps, name)
    n = _REUSED.get(key)
    if n is None:
        if len(_REUSED) >= _REUSED_MAX:
            _REUSED.clear()
        n = _REUSED[key] = Normalizer(partition, _STATELESS[operation], eps, name)
    return n


class Composed(NamedTuple):
    """What a method's composition returns: the normalizer and its array arguments."""

    normalizer: Normalizer
    x: Array
    weight: Array | None = None
    bias: Array | None = None


def composition(spec: Callable[..., Composed]) -> Callable[..., Array]:
    """Turn a composition spec into the public op and register its VJP and JVP rules.

    The op evaluates ``normalizer(x, weight, bias)``. Its pullback returns one cotangent per
    positional parameter of the spec, the ones named ``x``, ``weight`` and ``bias`` filled in;
    its pushforward takes one tangent per positional argument and uses those three.
    """
    names = positional_parameters(spec)

    @functools.wraps(spec)
    def op(*args: Any, **kwargs: Any) -> Array:
        n, x, w, b = spec(*args, **kwargs)
        return n(x, w, b)

    op.__signature__ = inspect.signature(spec).replace(return_annotation="Array")  # type: ignore[attr-defined]

    @defvjp(op)
    def rule(*args: Any, **kwargs: Any) -> tuple[Array, Callable[[Array], tuple[Any, ...]]]:
        n, x, w, b = spec(*args, **kwargs)
        # forward and backward, not n.vjp: arraynorm.vjp checks the cotangent already, and
        # Normalizer.vjp's own check would repeat it (the same message, 2.5 µs a pullback)
        y, ctx = n.forward(x, w, b)

        def pullback(dy: Array) -> tuple[Any, ...]:
            grads = dict(zip(("x", "weight", "bias"), n.backward(ctx, dy)))
            return tuple(grads.get(name) for name in names)

        return y, pullback

    @defjvp(op)
    def jvp_rule(*args: Any, **kwargs: Any) -> tuple[Array, Callable[..., Array]]:
        n, x, w, b = spec(*args, **kwargs)
        y, ctx = n.forward(x, w, b)

        def pushforward(*tangents: Any) -> Array:
            t = dict(zip(names, tangents))
            return n.jvp(ctx, t.get("x"), t.get("weight"), t.get("bias"))

        return y, pushforward

    return op


@composition
def batch_norm(x: Array, weight: Array | None = None, bias: Array | None = None, *,
               mean: Array | None = None, var: Array | None = None, eps: float = 1e-5,
               axis: int = 1) -> Composed:
    """Batch normalization (Ioffe & Szegedy 2015): batch partition ∘ standardize ∘ affine.

    ``axis`` is the *channel* axis, kept: one statistic per channel (default 1, NCHW; ``axis=-1``
    for NHWC; one int — a tuple is a ``ValueError``).

        y = γ_c · (x − μ_c) / sqrt(σ²_c + eps) + β_c

    With ``mean`` and ``var`` both ``None`` (training) μ_c and σ²_c (biased) are taken over
    every axis but the channel ``axis``; given (inference), they are used as they are.

    Shapes: ``x`` (N, C, *S) with the channel at ``axis``; ``weight``, ``bias``, ``mean``,
    ``var`` of shape (C,). Raises ``ValueError`` in training when a channel has a single value
    (PyTorch's rule); an empty batch or spatial size 0 gives an empty result, as in PyTorch.
    Finite inputs of any magnitude are normalized correctly (float32 values of 1e20, whose
    squares overflow: PyTorch returns 0).

    Differs from ``torch.nn.functional.batch_norm``: running statistics are not updated in
    place; use :func:`batch_moments` and :func:`update_running_stats`, which return new arrays.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)) * 5 + 2
    >>> y = an.batch_norm(x)
    >>> bool(np.allclose(y.mean(axis=(0, 2, 3)), 0) and np.allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-4))
    True
    >>> y_nhwc = an.batch_norm(np.moveaxis(x, 1, -1), axis=-1)    # channels last
    >>> bool(np.allclose(np.moveaxis(y_nhwc, -1, 1), y))
    True
    """
    fname = "batch_norm"
    if (mean is None) != (var is None):
        raise ValueError(f"{fname}: pass both mean and var (inference) or neither (training)")
    if mean is None:
        return Composed(_reused(Batch(axis), Standardize, eps, fname), x, weight, bias)
    return Composed(Normalizer(Batch(axis), GivenStatistics(mean, var), eps, fname), x, weight, bias)


@composition
def layer_norm(x: Array, weight: Array | None = None, bias: Array | None = None, *,
               axis: int | tuple[int, ...] = -1, eps: float = 1e-5) -> Composed:
    """Layer normalization (Ba et al. 2016): layer partition ∘ standardize ∘ affine.

    ``axis`` is the *reduced* axes: an int or a tuple of ints, negative ones counting from the
    end (default the last axis).

        y = γ · (x − μ) / sqrt(σ² + eps) + β, μ and σ² (biased) over ``axis``.

    Shapes: ``weight``/``bias`` have the shape of ``x`` along those axes.
    ``torch.nn.functional.layer_norm(x, x.shape[-k:])`` is ``layer_norm(x, axis=tuple(range(-k,
    0)))``. Unlike PyTorch, the axes need not be trailing.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5)) * 3 + 1
    >>> y = an.layer_norm(x, axis=(-2, -1))          # F.layer_norm(x, (3, 5))
    >>> bool(np.allclose(y.mean(axis=(1, 2)), 0) and np.allclose(y.var(axis=(1, 2)), 1, atol=1e-4))
    True
    """
    return Composed(_reused(Layer(axis), Standardize, eps, "layer_norm"), x, weight, bias)


@composition
def instance_norm(x: Array, weight: Array | None = None, bias: Array | None = None, *,
                  eps: float = 1e-5, axis: int = 1) -> Composed:
    """Instance normalization (Ulyanov et al. 2016): instance partition ∘ standardize ∘ affine.

    ``axis`` is the *channel* axis, kept (default 1; ``-1`` for channels last; one int).

        y = γ_c · (x − μ_nc) / sqrt(σ²_nc + eps) + β_c

    statistics per sample and channel over the spatial axes. ``x`` is (N, C, *S) with at least
    one spatial axis; γ, β are (C,). Spatial size 1 in training is refused (one value per
    statistic), spatial size 0 gives an empty result (PyTorch's rules).
    Differs from ``torch.nn.functional.instance_norm``: no running statistics (PyTorch's
    default ``use_input_stats=True`` is the behaviour here).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)) + 3
    >>> y = an.instance_norm(x)
    >>> bool(np.allclose(y.mean(axis=(2, 3)), 0) and np.allclose(y.var(axis=(2, 3)), 1, atol=1e-3))
    True
    """
    return Composed(_reused(Instance(axis), Standardize, eps, "instance_norm"), x, weight, bias)


@composition
def group_norm(x: Array, num_groups: int, weight: Array | None = None, bias: Array | None = None,
               *, eps: float = 1e-5, axis: int = 1) -> Composed:
    """Group normalization (Wu & He 2018): group partition ∘ standardize ∘ affine.

    ``axis`` is the *channel* axis, whose C channels are split into groups (default 1; one int).

        y = γ_c · (x − μ_ng) / sqrt(σ²_ng + eps) + β_c,   g the group of channel c

    The C channels are split into ``num_groups`` consecutive groups; statistics per sample and
    group over the group's channels and all spatial axes; γ, β are per channel, shape (C,).
    Same semantics as ``torch.nn.functional.group_norm``; ``num_groups=1`` is LN over
    (C, *S), ``num_groups=C`` is IN.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((2, 4, 3, 3))
    >>> y = an.group_norm(x, 2)
    >>> bool(np.allclose(y.reshape(2, 2, -1).mean(-1), 0))
    True
    """
    return Composed(_reused(Group(num_groups, axis), Standardize, eps, "group_norm"), x, weight, bias)


@composition
def rms_norm(x: Array, weight: Array | None = None, *, axis: int | tuple[int, ...] = -1,
             eps: float | None = None) -> Composed:
    """RMS normalization (Zhang & Sennrich 2019): layer partition ∘ RMS scale ∘ γ.

    ``axis`` is the *reduced* axes: an int or a tuple (default the last).

        y = γ · x / sqrt(mean(x²) + eps), the mean over ``axis``.

    ``eps=None`` means the machine epsilon of ``x``'s dtype, as ``torch.nn.functional.rms_norm``.
    γ has the shape of ``x`` along ``axis``; there is no β and no centring.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((4, 8)) * 3
    >>> y = an.rms_norm(x)
    >>> bool(np.allclose((y ** 2).mean(axis=-1), 1))
    True
    """
    if eps is None:
        xp = xp_namespace("rms_norm", x=x)
        xp_check_floating("rms_norm", "x", x, xp)
        eps = float(xp.finfo(x.dtype).eps)
    return Composed(_reused(Layer(axis), RMSScale, eps, "rms_norm"), x, weight, None)


@composition
def position_norm(x: Array, weight: Array | None = None, bias: Array | None = None, *,
                  eps: float = 1e-5, axis: int = 1) -> Composed:
    """Positional normalization (PONO, Li et al. 2019): position partition ∘ standardize ∘ affine.

    ``axis`` is the *channel* axis, which PN *reduces*: one statistic per sample and spatial
    position, over the channels (default 1; one int).

        y = γ_c · (x − μ_n,s) / sqrt(σ²_n,s + eps) + β_c,   s a spatial position

    γ, β per channel (C,). (PONO's paper has no affine; pass none to get it.) PyTorch has no
    equivalent.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((2, 8, 3, 3)) + 1
    >>> y = an.position_norm(x)
    >>> bool(np.allclose(y.mean(axis=1), 0) and np.allclose(y.var(axis=1), 1, atol=1e-3))
    True
    """
    return Composed(_reused(Position(axis), Standardize, eps, "position_norm"), x, weight, bias)


@composition
def ghost_batch_norm(x: Array, virtual_batch_size: int, weight: Array | None = None,
                     bias: Array | None = None, *, eps: float = 1e-5, axis: int = 1) -> Composed:
    """Ghost batch normalization (Hoffer et al. 2017): BN over virtual batches.

    ``axis`` is the *channel* axis, kept (default 1; one int); the batch axis is 0.

        y = γ_c · (x − μ_vc) / sqrt(σ²_vc + eps) + β_c,   v the virtual batch of the sample

    The batch is cut into consecutive chunks of ``virtual_batch_size`` samples and each is
    batch-normalized with its own statistics. The batch size must be a multiple of
    ``virtual_batch_size``. γ, β are (C,).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((8, 3))
    >>> y = an.ghost_batch_norm(x, 4)
    >>> bool(np.allclose(y[:4], an.batch_norm(x[:4])) and np.allclose(y[4:], an.batch_norm(x[4:])))
    True
    """
    return Composed(_reused(GhostBatch(virtual_batch_size, axis), Standardize, eps,
                            "ghost_batch_norm"), x, weight, bias)


@composition
def batch_renorm(x: Array, weight: Array | None = None, bias: Array | None = None, *,
                 running_mean: Array, running_var: Array, rmax: float = 3.0, dmax: float = 5.0,
                 eps: float = 1e-5, axis: int = 1) -> Composed:
    """Batch renormalization (Ioffe 2017), training mode.

    ``axis`` is the *channel* axis, kept (default 1; one int).

        y = γ · (r · (x − μ_B)/σ_B + d) + β,
        r = clip(σ_B/σ, 1/rmax, rmax),  d = clip((μ_B − μ)/σ, −dmax, dmax)

    with μ, σ² the running statistics (:class:`~arraynorm.operation.Renormalize`). As in the
    paper, r and d are constants in the backward pass (stop-gradient), so the VJP is not the
    derivative of the forward where r, d do not clip.
    ``running_mean``/``running_var`` (C,) are the current running statistics (update them
    afterwards with :func:`update_running_stats`); ``rmax >= 1``, ``dmax >= 0`` (the paper
    anneals them from 1 and 0, where batch renorm equals BN). In inference use
    :func:`batch_norm` with the running statistics. PyTorch has no equivalent.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((16, 3)) * 2 + 1
    >>> y = an.batch_renorm(x, running_mean=np.zeros(3), running_var=np.ones(3), rmax=1.0, dmax=0.0)
    >>> bool(np.allclose(y, an.batch_norm(x)))     # r = 1, d = 0: plain BN
    True
    """
    fname = "batch_renorm"
    rmax = xp_check_finite_scalar(fname, "rmax", rmax, minimum=1.0)
    dmax = xp_check_finite_scalar(fname, "dmax", dmax, minimum=0.0)
    op = Renormalize(running_mean, running_var, rmax, dmax)
    return Composed(Normalizer(Batch(axis), op, eps, fname), x, weight, bias)


@composition
def l2_normalize(x: Array, *, p: float = 2.0, axis: int | tuple[int, ...] = 1,
                 eps: float = 1e-12) -> Composed:
    """Divide by the L_p norm along ``axis``, the *reduced* axes (an int or a tuple; default 1):

        y = x / max(‖x‖_p, eps)

    Same semantics and defaults as ``torch.nn.functional.normalize(x, p, dim, eps)``
    (``axis`` is PyTorch's ``dim``; a tuple of axes is allowed). ``p`` is a number >= 1 or
    ``float('inf')``. Differences: the norm is computed scaled, so float32 values beyond
    ~1e19 (where PyTorch's norm is inf and the output 0) or below ~1e-19 are normalized
    correctly; over an empty axis the norm is 0 and the output empty for every p (PyTorch
    raises for p = inf).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> y = an.l2_normalize(np.array([[3.0, 4.0], [0.0, 2.0]]))
    >>> y
    array([[0.6, 0.8],
           [0. , 1. ]])
    """
    fname = "l2_normalize"
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{fname}: p must be a Python number >= 1 or inf, got {type(p).__name__}")
    if not p >= 1.0:
        raise ValueError(f"{fname}: p must be a number >= 1 or inf, got {p!r}")
    xp_check_eps(fname, eps)
    return Composed(Normalizer(Layer(axis), LpScale(float(p)), eps, fname), x)
