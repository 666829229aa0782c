"""Dask implementation of :class:`arraynorm.Normalizer` with the standardize or RMS operation,
and the one-pass mergeable reductions behind every statistic of a ``dask.array``.

The portable path on a chunked array is correct and lazy, but its statistics are two passes:
the mean, then the sum of squared deviations from it (and, in float64, the max |x − μ| that
scales that sum). On a cluster each pass reads every chunk, and since the second needs the
first's result, Dask must either keep every chunk in memory between them or fail. Here each
chunk is read once and reduced to a small *partial*, merged along a tree by
:func:`dask.array.reduction` (Chan, Golub & LeVeque 1979):

    per chunk k:  n_k,  μ_k = mean(x − c),  s_k,  ss_k = Σ ((x − c − μ_k)/s_k)²
    merge:        n = Σ n_k,  μ = Σ n_k μ_k / n,  S = max(s_k, 2^⌊log₂ max|μ_k − μ|⌋),
                  ss = Σ (s_k/S)² ss_k + Σ n_k ((μ_k − μ)/S)²,   M₂ = S²·ss

``c`` is the first value of each statistic (0 where it is not finite), the shift of
:func:`arraynorm.operation.centre`, so the sums add O(spread) numbers whatever the offset.
Partials are float64 whatever the input (float32 squares are formed in float64, DESIGN.md
§3.3); for float64 input ``s_k`` is a power of two near max|x − μ_k| per chunk, so no square
overflows or underflows (:func:`arraynorm._statistics.pow2_scale`), and float32 input is not
scaled (s_k = 1: its squares cannot overflow in float64). The variance is never
E[x²] − E[x]². Results equal NumPy's two-pass statistics of the whole array to float64
rounding, whatever the chunking.

:class:`DaskMoments` (``"dask_moments"`` in :data:`arraynorm._kernels.IMPLEMENTATIONS`) runs
training-mode BN, LN, IN, GN, PN, RMS norm… on Dask input: the statistics by that one-pass
reduction, then ŷ = ((x − c) − μ)·rstd elementwise in the compute dtype, chunk by chunk, with
the *global* statistics — synchronized batch normalization across every worker holding a chunk. Backward
and JVP are the portable closed forms on its state (their sums Σg, Σg·ŷ are single-pass Dask
reductions already). Everything is lazy: building the graph computes nothing.

:func:`one_pass_moments` (mean and variance; :func:`arraynorm.batch_moments`,
:class:`arraynorm.rl.RunningMeanStd`) and :func:`one_pass_covariance` (mean and covariance of
the rows of (B, d, m) blocks; :func:`arraynorm.whitening_moments`) use the same merges.

**Beyond memory: persist the statistics.** In one graph, ŷ of chunk i needs x_i *and* the
statistics of every chunk, so Dask keeps every x_i in memory (or spills it to disk) until the
reduction is done. Inside :func:`persist_statistics` the forward persists the (tiny)
statistics with ``dask.persist`` — under a ``distributed.Client`` that only submits them and
returns at once; with the local schedulers it computes them there, a compute point — and the
backward does the same with Σg and Σg·ŷ; ŷ and dx are then built on the persisted values, so
each later compute re-reads (or regenerates) its chunks instead of holding them: memory of a
few chunks per worker whatever the input size.

Chunk functions take the chunk's own namespace (``array_api_compat.array_namespace``) and every
``map_blocks``/``reduction`` passes a ``meta`` made from the input's ``_meta``, so a Dask
array of CuPy chunks stays one of CuPy chunks (multi-GPU); tested here only for NumPy chunks.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

from array_api_compat import array_namespace, is_dask_array

from .._array_api import xp_compute_dtype
from .._context import Grads, NormContext, Stages
from .._statistics import inv_root, mean, merged_sum_of_squares, pow2_scale, unscale
from .._typing import Array, Namespace
from ..operation import RMSScale, Standardize, StandardizeState
from ..partition import Layout
from .portable import PORTABLE

__all__ = ["DaskMoments", "DASK_MOMENTS", "Moments", "one_pass_moments", "one_pass_covariance",
           "is_dask", "persist_statistics", "persisting_statistics"]

# fields of a partial, along its leading axis
_MEAN, _SCALE, _SS, _COUNT = 0, 1, 2, 3
_FIELDS = 4


def is_dask(x: Any) -> bool:
    """Whether ``x`` is a ``dask.array.Array`` (without importing Dask)."""
    return bool(is_dask_array(x))


def _meta(x: Any, ndim: int, dtype: Any) -> Any:
    """An empty array of ``x``'s chunk type (NumPy, CuPy) with ``ndim`` axes and ``dtype``."""
    from dask.array.utils import meta_from_array  # dask is optional: imported on use

    return meta_from_array(x, ndim=ndim, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# chunk and merge functions (run on the workers, on NumPy or CuPy chunks)
# ---------------------------------------------------------------------------------------------

def _chunk_moments(block: Any, shift: Any = None, *, axes: tuple[int, ...], scale: bool) -> Any:
    """One chunk's partial (4, *keepdims shape): its mean relative to ``shift``, the scale s,
    Σ((x − shift − mean)/s)² and the count, in float64."""
    bxp = array_namespace(block)
    a = bxp.astype(block, bxp.float64, copy=True)  # our own copy: updated in place below
    if shift is not None:
        a -= bxp.astype(shift, bxp.float64)
    n = math.prod(block.shape[i] for i in axes)
    keep = tuple(1 if i in axes else d for i, d in enumerate(block.shape))
    if n == 0:
        zeros = bxp.zeros(keep, dtype=bxp.float64)
        return bxp.stack([zeros, zeros + 1.0, zeros, zeros])
    if shift is not None:
        mu = bxp.sum(a, axis=axes, keepdims=True) / n
        a -= mu
    else:
        mu = bxp.zeros(keep, dtype=bxp.float64)
    if scale:
        s = pow2_scale(bxp, bxp.max(bxp.abs(a), axis=axes, keepdims=True))
        a /= s
    else:
        s = bxp.ones(keep, dtype=bxp.float64)
    a *= a
    ss = bxp.sum(a, axis=axes, keepdims=True)
    return bxp.stack([mu, s, ss, bxp.full(keep, float(n), dtype=bxp.float64)])


def _identity(p: Any, axis: Any = None, keepdims: bool = True) -> Any:
    return p


def _merge_moments(p: Any, axis: Any = None, keepdims: bool = True) -> Any:
    """Chan's merge of the partials along ``axis`` (which counts the leading field axis)."""
    bxp = array_namespace(p)
    ax = tuple(a - 1 for a in (axis if isinstance(axis, tuple) else (axis,)))
    mu, s, ss, n = p[_MEAN], p[_SCALE], p[_SS], p[_COUNT]
    total = bxp.sum(n, axis=ax, keepdims=True)
    w = n / bxp.where(total > 0, total, bxp.ones_like(total))
    m = bxp.sum(w * mu, axis=ax, keepdims=True)
    dev = bxp.where(n > 0, mu - m, bxp.zeros_like(mu))
    S, out_ss = merged_sum_of_squares(bxp, s, ss, ax, dev, n)
    return bxp.stack([m, S, out_ss, total])


def _chunk_comoment(block: Any, shift: Any) -> Any:
    """One chunk of (B, d, m) rows: (B, d, d + 2) = [mean − shift | Σ X_c X_cᵀ | count]."""
    bxp = array_namespace(block)
    a = bxp.astype(block, bxp.float64) - bxp.astype(shift, bxp.float64)
    m = block.shape[-1]
    if m == 0:
        zeros = bxp.zeros(block.shape[:-1] + (1,), dtype=bxp.float64)
        return bxp.concat([zeros, bxp.zeros(block.shape[:-1] + (block.shape[-2],),
                                            dtype=bxp.float64), zeros], axis=-1)[..., None, :]
    mu = bxp.sum(a, axis=-1, keepdims=True) / m
    c = a - mu
    co = bxp.matmul(c, bxp.matrix_transpose(c))
    cnt = bxp.full(mu.shape, float(m), dtype=bxp.float64)
    return bxp.concat([mu, co, cnt], axis=-1)[..., None, :]


def _merge_comoment(p: Any, axis: Any = None, keepdims: bool = True) -> Any:
    """Merge partials (B, d, k, d + 2) along axis 2: C = Σ C_k + Σ n_k (μ_k − μ)(μ_k − μ)ᵀ."""
    bxp = array_namespace(p)
    mu, co, n = p[..., :1], p[..., 1:-1], p[..., -1:]
    total = bxp.sum(n, axis=2, keepdims=True)
    w = n / bxp.where(total > 0, total, bxp.ones_like(total))
    m = bxp.sum(w * mu, axis=2, keepdims=True)
    dev = bxp.where(n > 0, mu - m, bxp.zeros_like(mu))[..., 0]  # (B, d, k)
    spread = bxp.matmul(dev * n[:, :1, :, 0], bxp.matrix_transpose(dev))  # Σ n_k δ_k δ_kᵀ
    c = bxp.sum(co, axis=2, keepdims=True) + spread[:, :, None, :]
    return bxp.concat([m, c, total], axis=-1)


# ---------------------------------------------------------------------------------------------
# the reductions
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Moments:
    """The merged statistics of a one-pass reduction, lazy, in ``keepdims`` shape, float64:
    mean = ``shift + mean_rel`` (``shift`` ``None`` for RMS), M₂/n = ``scale²·ms``."""

    shift: Any
    mean_rel: Any
    scale: Any
    ms: Any

    def mean(self, xp: Namespace, dtype: Any) -> Any:
        m = self.mean_rel if self.shift is None else self.shift + self.mean_rel
        return xp.astype(m, dtype)

    def var(self, xp: Namespace, dtype: Any) -> Any:
        return unscale(xp, self.scale, self.ms, dtype)

    def rstd(self, xp: Namespace, eps: float, dtype: Any) -> Any:
        return inv_root(xp, self.scale, self.ms, eps, dtype)


def _shift(xp: Namespace, xv: Any, axes: tuple[int, ...]) -> Any:
    """The first value of every statistic, 0 where it is not finite, in float64."""
    first = tuple(slice(0, 1) if a in axes else slice(None) for a in range(xv.ndim))
    c = xp.astype(xv[first], xp.float64)
    return xp.where(xp.isfinite(c), c, xp.zeros_like(c))


def one_pass_moments(xp: Namespace, xv: Array, axes: tuple[int, ...], *,
                     center: bool = True, split_every: int | None = None) -> Moments:
    """Mean and M₂/n of a ``dask.array`` over ``axes`` in one pass over its chunks (module
    docstring), lazily. ``center=False``: the mean square about 0 (RMS). Needs a non-empty
    reduction (the callers check)."""
    import dask.array as da  # optional dependency: imported on use

    shift = _shift(xp, xv, axes) if center else None
    chunks = ((_FIELDS,),) + tuple(tuple(1 for _ in c) if i in axes else c
                                   for i, c in enumerate(xv.chunks))
    args = (xv,) if shift is None else (xv, shift)
    parts = da.map_blocks(_chunk_moments, *args, new_axis=0, chunks=chunks, dtype="float64",
                          meta=_meta(xv._meta, xv.ndim + 1, "float64"), axes=axes,
                          scale=xv.dtype == xp.float64)
    merged = da.reduction(parts, _identity, _merge_moments, combine=_merge_moments,
                          axis=tuple(a + 1 for a in axes), keepdims=True, dtype="float64",
                          meta=parts._meta, split_every=split_every, concatenate=True,
                          name="arraynorm-moments")
    n = math.prod(xv.shape[a] for a in axes)
    return Moments(shift, merged[_MEAN], merged[_SCALE], merged[_SS] / n)


def one_pass_covariance(xp: Namespace, xb: Array, *,
                        split_every: int | None = None) -> tuple[Array, Array]:
    """``(mean (B, d, 1), covariance Σ = X_c X_cᵀ/m (B, d, d))`` of the rows of a
    ``dask.array`` of (B, d, m) blocks, float64, in one pass over its chunks along m (Chan's
    co-moment merge: C = Σ C_k + Σ n_k (μ_k − μ)(μ_k − μ)ᵀ, every chunk centred on the first
    column). Not scaled: float64 input beyond ~1e154 overflows the co-moments (float32 input
    cannot). The B and d axes are rechunked to one chunk each (the statistics are d × d)."""
    import dask.array as da  # optional dependency: imported on use

    xb = xb.rechunk({0: -1, 1: -1})
    shift = _shift(xp, xb, (2,))
    b, d, _ = xb.shape
    parts = da.map_blocks(_chunk_comoment, xb, shift, new_axis=3,
                          chunks=((b,), (d,), tuple(1 for _ in xb.chunks[2]), (d + 2,)),
                          dtype="float64", meta=_meta(xb._meta, 4, "float64"))
    merged = da.reduction(parts, _identity, _merge_comoment, combine=_merge_comoment, axis=2,
                          keepdims=True, dtype="float64", meta=parts._meta,
                          split_every=split_every, concatenate=True,
                          name="arraynorm-comoments")
    m = xb.shape[2]
    mean = shift + merged[:, :, 0, :1]
    return mean, merged[:, :, 0, 1:-1] / m


# ---------------------------------------------------------------------------------------------
# persisting the statistics
# ---------------------------------------------------------------------------------------------

_PERSIST: contextvars.ContextVar[bool] = contextvars.ContextVar("arraynorm_dask_persist",
                                                                default=False)


@contextlib.contextmanager
def persist_statistics(enabled: bool = True) -> Iterator[None]:
    """Within this context (the calling thread or asyncio task), normalizers running on Dask
    arrays persist their statistics: the forward's mean/variance and the backward's Σg, Σg·ŷ
    (module docstring). Use it when the input does not fit in the cluster's memory: the
    statistics pass then holds one chunk per worker at a time, and the passes that form ŷ
    and dx read the chunks again. Under a ``distributed.Client`` nothing blocks (``persist``
    submits); with the local schedulers each persist is a compute point."""
    token = _PERSIST.set(bool(enabled))
    try:
        yield
    finally:
        _PERSIST.reset(token)


def persisting_statistics() -> bool:
    """Whether :func:`persist_statistics` is active in the calling context."""
    return _PERSIST.get()


def _spans_chunks(xv: Any, axes: tuple[int, ...]) -> bool:
    """Whether a statistic over ``axes`` gathers several chunks (BN over batch chunks); per-row
    statistics of batch chunks (LN, IN, GN) are chunk-local: nothing is held, nothing to
    persist."""
    return any(len(xv.chunks[a]) > 1 for a in axes)


def _persist(*arrays: Any) -> tuple[Any, ...]:
    if not _PERSIST.get():
        return arrays
    import dask  # optional dependency: imported on use

    return tuple(dask.persist(*arrays))


# ---------------------------------------------------------------------------------------------
# the implementation
# ---------------------------------------------------------------------------------------------

class DaskMoments:
    """Standardize and RMS operations on a ``dask.array`` input, any partition and recovery:
    statistics by :func:`one_pass_moments` (one read of every chunk), then ŷ and the recovery
    elementwise with the global statistics (module docstring). Backward and JVP: the
    portable closed forms on this state (lazy, single-pass reductions). Selected for every
    floating Dask input with a non-empty reduction; the portable path stays available with
    ``implementation="portable"``."""

    name = "dask_moments"

    def supports(self, stages: Stages, xp: Namespace, layout: Layout, x: Array,
                 weight: Array | None, bias: Array | None) -> bool:
        if type(stages.operation) not in (Standardize, RMSScale) or not is_dask(x):
            return False
        if getattr(x.dtype, "kind", None) != "f":  # float16/32/64 (the namespace has no float16)
            return False
        return math.prod(layout.view_shape[a] for a in layout.reduce_axes) > 0

    def forward(self, stages: Stages, xp: Namespace, layout: Layout, x: Array,
                weight: Array | None, bias: Array | None) -> tuple[Array, NormContext]:
        ct = xp_compute_dtype(xp, x.dtype)
        xv = xp.reshape(x, layout.view_shape)
        axes = layout.reduce_axes
        rms = type(stages.operation) is RMSScale
        mo = one_pass_moments(xp, xv, axes, center=not rms)
        if _PERSIST.get() and _spans_chunks(xv, axes):  # one persist call for the statistics
            done = _persist(mo.mean_rel, mo.scale, mo.ms, *(() if rms else (mo.shift,)))
            mo = Moments(None if rms else done[3], done[0], done[1], done[2])
        rstd = mo.rstd(xp, stages.eps, ct)
        # ŷ in the compute dtype (the elementwise pass is memory-bound: float64 temporaries
        # would double it): the shifted centring (x − c) − μ_rel of the portable path. c is
        # one of x's values (exact in ct), x − c is exact where x is within a factor 2 of c
        # (an offset dominates) and O(spread) otherwise, μ_rel = O(spread): every rounding is
        # relative to the spread, whatever the offset
        a = xp.astype(xv, ct, copy=False)
        if not rms:
            a = (a - xp.astype(mo.shift, ct)) - xp.astype(mo.mean_rel, ct)
        yv = a * rstd
        state = StandardizeState(yv, None if rms else mo.mean(xp, ct), mo.var(xp, ct), rstd, axes)
        yhat = xp.reshape(yv, layout.shape)
        y = stages.recovery.forward(xp, yhat, weight, bias, layout)
        return (xp.astype(y, x.dtype, copy=False),
                NormContext(xp, layout, state, yhat, weight, bias, x.dtype, self, saved=mo))

    def backward(self, stages: Stages, ctx: NormContext, dy: Array) -> Grads:
        if not (_PERSIST.get() and is_dask(dy)
                and _spans_chunks(ctx.xp.reshape(dy, ctx.layout.view_shape), ctx.layout.reduce_axes)):
            return PORTABLE.backward(stages, ctx, dy)
        # the portable closed form (operation.standardize), with its two sums persisted:
        # dx = rstd·(g − mean(g) − ŷ·mean(g·ŷ)) (no mean(g) for RMS)
        xp, layout, st = ctx.xp, ctx.layout, ctx.state
        yhat = ctx.yhat
        g, dw, db = stages.recovery.backward(xp, xp.astype(dy, yhat.dtype, copy=False), yhat,
                                             ctx.weight, ctx.bias, layout)
        gv = xp.reshape(g, layout.view_shape)
        sums = [mean(xp, gv * st.y, st.axes)] + ([] if st.mean is None else [mean(xp, gv, st.axes)])
        # dγ, dβ are reductions over the same chunks: persisted with the sums, one pass
        params = [a for a in (dw, db) if a is not None]
        done = list(_persist(*sums, *params))
        sums, rest = done[:len(sums)], iter(done[len(sums):])
        dw = None if dw is None else next(rest)
        db = None if db is None else next(rest)
        dxv = gv - st.y * sums[0]
        if st.mean is not None:
            dxv = dxv - sums[1]
        dx = xp.reshape(st.rstd * dxv, layout.shape)
        return xp.astype(dx, ctx.x_dtype, copy=False), dw, db

    def jvp(self, stages: Stages, ctx: NormContext, dx: Array | None, dweight: Array | None,
            dbias: Array | None) -> Array:
        return PORTABLE.jvp(stages, ctx, dx, dweight, dbias)


DASK_MOMENTS = DaskMoments()
