"""NumPy fast path of :class:`arraynorm.Normalizer` with the standardize or RMS operation.

The portable path (:class:`~arraynorm.operation.Standardize` then
:func:`~arraynorm.recovery.affine`) makes about ten passes over full-size arrays, each a trip
through main memory, and keeps a full-size ŷ. This recipe computes the same quantities block by
block (:mod:`._plan`): a block of about 1 MiB is read from memory once, its statistics, ŷ and
γ·ŷ + β are computed while it sits in cache, and the result is written once into the output.
Blocks are shared between threads (NumPy and BLAS release the GIL).

When one statistic spans more than a block (BN over N·H·W), pass 1 computes each chunk's count,
shift (its first value), mean and sum of squared deviations (two-pass in cache) and merges them
in float64 (Chan, Golub & LeVeque 1979: M2 = Σ M2_k + Σ n_k (μ_k − μ)²) with every chunk mean
taken relative to the statistic's first value, so the merge adds O(spread) numbers and the
mean is kept exactly as a high and a low part whatever the offset (10¹⁰ in float64, 10³⁰
constant); pass 2 writes y. The variance stays two-pass; E[x²] − E[x]² is never formed.

Sums of squares are scaled per statistic by a power of two near max|x − μ| (three passes over
the block while it is in cache: |·|, max, scaling; no pass over memory), so they neither
overflow nor underflow for finite input (a float32 LayerNorm of values ~1e18 has squares
summing past 3.4e38); rstd comes from the scaled sum (:func:`arraynorm.operation.inv_root`).
The portable path promotes float32 squares to float64 instead; here a float64 copy of a block
would not fit in cache. Sums of a float32 block (up to 2¹⁸ values) stay in float32, so
float32 values spread over more than ~1e33 give NaN here (the portable path handles them).

Numerics are the portable path's: shifted two-pass statistics
(:func:`arraynorm.operation.moments`), rstd = 1/sqrt(σ² + eps), ŷ = (x − μ)·rstd, y = ŷ·γ + β
and the same closed-form backward, in the same compute dtype (float32 for float16 input). A
float32 mean near 10⁴ rounds off up to 5e-4 (half an ulp); that remainder is kept
(``ctx.saved.mean_lo``) and enters ŷ in both passes, so y and every cotangent stay as accurate as the portable path's (tests/test_kernels.py checks
against float64 PyTorch). Sums run per block, products of centred values through BLAS, γ/β
cotangents accumulate in float64, and where γ is constant over a statistic (BN, IN) rstd·γ is
one factor; so results agree with the portable path to rounding, not bit for bit.

Like PyTorch, the forward keeps a reference to the input rather than a copy of ŷ and recomputes
ŷ per block in the backward (``ctx.yhat`` and ``ctx.state.y`` are computed on first access):
modifying ``x`` in place between forward and backward changes the backward, as modifying
``weight`` does on either path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, overload

import numpy as np

from .._context import Grads, NormContext, Stages
from .._statistics import inv_root, merged_sum_of_squares, pow2_scale, unscale
from .._typing import Array, Namespace
from ..operation import RMSScale, Standardize, StandardizeState
from ..partition import Layout
from ..recovery import Affine, ConditionalAffine, NoRecovery
from ._blocks import dot_over, max_over, run_blocks, sum_over
from . import _buffers
from ._plan import Plan, plan
from ._switches import fast_path_threads
from .portable import PORTABLE

__all__ = ["NumpyFused", "NUMPY_FUSED", "BLOCK_BYTES", "MIN_BYTES", "MIN_BLOCKS_FOR_THREADS"]

#: bytes of one block (in the compute dtype): measured best between 0.5 and 2 MiB on a
#: 1 MiB-L2 CPU, where Python's per-block overhead (~30 µs) stops mattering
BLOCK_BYTES = 1 << 20

#: fewer blocks than this run in the calling thread (a thread hand-off costs ~50-100 µs)
MIN_BLOCKS_FOR_THREADS = 4

#: smaller inputs (bytes in the compute dtype) take the portable path: when the data fits in
#: cache, NumPy's whole-array passes are as fast and the fast path's ~30 µs of setup is not
#: (measured crossover 1-2 MiB on LN, BN, GN forward+backward)
MIN_BYTES = 2 * BLOCK_BYTES

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _param(p: Plan, a: Any, ct: np.dtype) -> np.ndarray | None:
    """γ or β in block coordinates: shape (M or 1, *pfine), compute dtype, contiguous."""
    if a is None:
        return None
    lead_shape = tuple(d if q else 1 for d, q in zip(p.lead, p.lead_par))
    a = np.asarray(a, dtype=ct).reshape(lead_shape + p.pfine)
    if any(p.lead_par):  # IN, GN: γ depends on the row; spell it out per row (N·C values)
        a = np.broadcast_to(a, p.lead + p.pfine)
    return np.ascontiguousarray(a).reshape((-1,) + p.pfine)


def _index(a: np.ndarray, sl: tuple[slice, ...]) -> tuple[slice, ...]:
    """The part of a broadcastable array (full or length-1 axes) that a block's slice sees."""
    return tuple(s if a.shape[k] != 1 else slice(None) for k, s in enumerate(sl))


@overload
def _take(a: np.ndarray, sl: tuple[slice, ...]) -> np.ndarray: ...
@overload
def _take(a: None, sl: tuple[slice, ...]) -> None: ...
@overload
def _take(a: np.ndarray | None, sl: tuple[slice, ...]) -> np.ndarray | None: ...


def _take(a: np.ndarray | None, sl: tuple[slice, ...]) -> np.ndarray | None:
    return None if a is None else a[_index(a, sl)]


def _view(buf: np.ndarray, like: np.ndarray) -> np.ndarray:
    return buf[: like.size].reshape(like.shape)


class _Run:
    """One forward or backward call: the plan, the arrays in block coordinates, block steps."""

    def __init__(self, p: Plan, x: np.ndarray, ct: np.dtype, rms: bool, weight: Any, bias: Any,
                 threads: int) -> None:
        self.p, self.ct, self.rms = p, ct, rms
        self.threads = threads if p.n_blocks >= MIN_BLOCKS_FOR_THREADS else 1
        self.x = x.reshape((p.rows,) + p.fine)
        self.W, self.B = _param(p, weight, ct), _param(p, bias, ct)
        self.rflags, self.pflags = p.rflags, p.pflags
        self.fold = self.W is None or p.fold
        # γ/β cotangent axes left after the statistic's own sum (folded γ reuses that sum)
        self.rest_flags = tuple(q and not r for q, r in zip(p.pflags, p.rflags))
        self.red_axes = tuple(k for k, r in enumerate(p.red, 1) if r)
        self.first = tuple(slice(0, 1) if r else slice(None) for r in self.rflags)

    def run(self, fn: Any) -> list[Any]:
        return run_blocks(fn, self.p.n_blocks, self.threads)

    def scratch(self, k: int) -> list[np.ndarray]:
        return [np.empty(self.p.block_elems, self.ct) for _ in range(k)]

    def load(self, a: np.ndarray, buf: np.ndarray) -> np.ndarray:
        """A block in the compute dtype (a cast copy into ``buf`` for float16)."""
        if a.dtype == self.ct:
            return a
        out = _view(buf, a)
        np.copyto(out, a)
        return out

    def count(self, block: np.ndarray) -> int:
        """Elements per statistic inside a block."""
        n = 1
        for k in self.red_axes:
            n *= block.shape[k]
        return n

    # forward ---------------------------------------------------------------------------
    def moments(self, src: np.ndarray, t: np.ndarray,
                t2: np.ndarray) -> tuple[Any, Any, np.ndarray, np.ndarray, np.ndarray]:
        """(shift, mean − shift, s, Σ ((x − mean)/s)², x − mean in ``t``) of a block; RMS:
        (None, None, s, Σ (x/s)², x). See :meth:`sum_squares` for s.

        Shifted two-pass, as the portable path (:func:`arraynorm.operation.centre`): the
        first value of each statistic (0 where it is not finite) is subtracted before the
        mean is summed, so the sum adds values of the order of the spread (a float32 sum of
        10⁴-sized values errs by ~1e-3 in the mean); the shift costs ~3% here because the
        subtraction is the pass that reads the block from memory anyway.
        """
        if self.rms:
            return (None, None) + self.sum_squares(src, t2) + (src,)
        shift = src[self.first].copy()
        np.copyto(shift, 0, where=~np.isfinite(shift))  # inf − inf would turn an inf mean NaN
        xs = np.subtract(src, shift, out=_view(t, src))
        mean_s = sum_over(xs, self.rflags, centred=True) / self.count(src)
        xc = np.subtract(xs, mean_s, out=xs)
        return (shift, mean_s) + self.sum_squares(xc, t2) + (xc,)

    def sum_squares(self, a: np.ndarray, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(s, Σ (a/s)²) over the reduced axes: s is a power of two near max|a| per statistic
        (:func:`arraynorm.operation.pow2_scale`), so no square overflows or, among those that
        matter, underflows. |a| is formed in ``buf``, scaled there and summed by BLAS."""
        tv = np.abs(a, out=_view(buf, a))
        s = pow2_scale(np, max_over(tv, self.rflags))
        np.multiply(tv, 1.0 / s, out=tv)
        return s, dot_over(tv, tv, self.rflags, buf)

    def write_y(self, src: np.ndarray, rstd: np.ndarray, sl: tuple[slice, ...], t: np.ndarray,
                out: np.ndarray, lo: Any = None) -> None:
        """out ← (src − lo)·rstd·γ + β (src: x − mean, or x for RMS; ``lo`` what the mean in
        the compute dtype rounded off) through the scratch ``t``; the last operation writes
        ``out`` directly unless a cast is needed."""
        W, B = _take(self.W, sl), _take(self.B, sl)
        ops: list[tuple[Callable[..., np.ndarray], Any]]
        if self.fold:  # γ per statistic: one multiplication by rstd·γ, lo goes into β
            a = rstd if W is None else rstd * W
            ops = [(np.multiply, a)]
            if lo is not None:
                B = -lo * a if B is None else B - lo * a
        else:
            ops = [(np.subtract, lo)] if lo is not None else []
            ops += [(np.multiply, rstd)] + ([(np.multiply, W)] if W is not None else [])
        if B is not None:
            ops.append((np.add, B))
        tb = _view(t, src)
        direct = out.dtype == tb.dtype
        a = src
        for k, (f, v) in enumerate(ops):
            a = f(a, v, out=out if direct and k == len(ops) - 1 else tb)
        if not direct:
            np.copyto(out, tb, casting="same_kind")

    # backward --------------------------------------------------------------------------
    def centred(self, src: np.ndarray, stats: tuple[Any, Any, Any], buf: np.ndarray) -> np.ndarray:
        """z, the block from which the backward works: x − mean where γ is folded (ŷ =
        (z − lo)·rstd, the scaling and ``lo`` go into per-statistic factors), x for RMS then;
        otherwise ŷ itself, exact: ((x − mean) − lo)·rstd."""
        mean, rstd, lo = stats
        if mean is None:
            if self.fold:
                return src
            scaled: np.ndarray = np.multiply(src, rstd, out=_view(buf, src))
            return scaled
        z: np.ndarray = np.subtract(src, mean, out=_view(buf, src))
        if self.fold:
            return z
        np.subtract(z, lo, out=z)
        np.multiply(z, rstd, out=z)
        return z

    def grad_sums(self, z: np.ndarray, dy: np.ndarray, stats: tuple[Any, Any, Any],
                  sl: tuple[slice, ...], bufs: list[np.ndarray],
                  acc: dict[str, np.ndarray]) -> tuple[np.ndarray, Any, np.ndarray]:
        """``(g, Σg, Σg·ŷ)`` over the reduced axes, with g = dy·γ, or g = dy where γ is folded
        (its factor then goes into :meth:`write_dx`); adds the block's Σ dy·ŷ and Σ dy over γ's
        non-varying axes into ``acc``. Σg is ``None`` for RMS; ``z`` from :meth:`centred`."""
        t2, t3 = bufs
        if self.fold:
            _, rstd, lo = stats
            sg = None if self.rms else sum_over(dy, self.rflags)
            sgx = dot_over(dy, z, self.rflags, t3)
            sgx = rstd * (sgx if lo is None else sgx - lo * sg)
            if "db" in acc:  # β constant over the statistic too: Σdy is the statistic's sum
                part = sum_over(sg, self.rest_flags) if self.p.fold and sg is not None \
                    else sum_over(dy, self.pflags)
                acc["db"][_index(acc["db"], sl)] += part
            if "dw" in acc:
                acc["dw"][_index(acc["dw"], sl)] += sum_over(sgx, self.rest_flags)
            return dy, sg, sgx
        if "db" in acc:
            acc["db"][_index(acc["db"], sl)] += sum_over(dy, self.pflags)
        acc["dw"][_index(acc["dw"], sl)] += dot_over(dy, z, self.pflags, t3)
        assert self.W is not None  # not folded: γ varies over the statistic
        g = np.multiply(dy, _take(self.W, sl), out=_view(t2, dy))
        sg = None if self.rms else sum_over(g, self.rflags)
        return g, sg, dot_over(g, z, self.rflags, t3)

    def write_dx(self, z: np.ndarray, g: np.ndarray, sg: Any, sgx: Any,
                 stats: tuple[Any, Any, Any], sl: tuple[slice, ...], buf: np.ndarray,
                 out: np.ndarray) -> None:
        """out ← f·(g − Σg/n − ŷ·Σgŷ/n) (no Σg term for RMS), f = rstd (or rstd·γ where γ
        is folded, with ŷ = (z − lo)·rstd), in four passes over the block."""
        n = self.p.n
        _, rstd, lo = stats
        if self.fold:
            f = rstd if self.W is None else rstd * _take(self.W, sl)
            k = rstd * sgx / n
            c = None if sg is None else (sg / n if lo is None else sg / n - lo * k)
        else:
            f, k, c = rstd, sgx / n, (None if sg is None else sg / n)
        t = np.multiply(z, k, out=_view(buf, z))
        np.subtract(g, t, out=t)
        if c is not None:
            np.subtract(t, c, out=t)
        if out.dtype == t.dtype:
            np.multiply(t, f, out=out)
        else:
            np.multiply(t, f, out=t)
            np.copyto(out, t, casting="same_kind")

    def accumulators(self) -> dict[str, np.ndarray]:
        acc = {}
        if self.W is not None:
            acc["dw"] = np.zeros(self.W.shape)
        if self.B is not None:
            acc["db"] = np.zeros(self.B.shape)
        return acc

    def partial_index(self, sl: tuple[slice, ...], j: int) -> tuple[Any, ...]:
        """Where a chunk's statistics go in the (M, partials, *sfine) arrays."""
        return (sl[0].start, j) + tuple(s if d != 1 else slice(None) for s, d in zip(sl[1:], self.p.sfine))


# forward ------------------------------------------------------------------------------------

def _split(a: np.ndarray, b: np.ndarray, ct: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) in ``ct`` with hi = a + b rounded and hi + lo = a + b to float64 accuracy
    (Knuth's TwoSum in float64: exact whatever the magnitudes of a and b)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    hi64 = a64 + b64
    bb = hi64 - a64
    lo64 = (a64 - (hi64 - bb)) + (b64 - bb)
    hi = hi64.astype(ct)
    return hi, ((hi64 - hi) + lo64).astype(ct)


def _forward_rows(run: _Run, y: np.ndarray, stats: tuple[Any, Any, Any], var: np.ndarray,
                  eps: float) -> None:
    p = run.p
    mean, rstd, mean_lo = stats

    def work(first: int, last: int) -> None:
        t, t2 = run.scratch(2)
        for i in range(first, last):
            sl, _ = p.block(i)
            src = run.load(run.x[sl], t)
            shift, mean_s, sc, ss, xc = run.moments(src, t, t2)
            ms = ss / run.count(src)
            r = inv_root(np, sc, ms, eps, run.ct)
            var[sl], rstd[sl] = unscale(np, sc, ms, run.ct), r
            if shift is not None:  # the mean and what rounding it lost
                mean[sl], mean_lo[sl] = _split(shift, mean_s, run.ct)
            run.write_y(xc, r, sl, t, y[sl])

    run.run(work)


def _forward_chunks(run: _Run, y: np.ndarray, stats: tuple[Any, Any, Any], var: np.ndarray,
                    eps: float) -> None:
    p = run.p
    mean, rstd, mean_lo = stats
    shape = (p.rows, p.n_partials) + p.sfine
    part_shift, part_mean, part_m2, part_s = (np.zeros(shape) for _ in range(4))
    counts = np.zeros(p.n_partials)

    def chunk_moments(first: int, last: int) -> None:
        t, t2 = run.scratch(2)
        for i in range(first, last):
            sl, j = p.block(i)
            src = run.load(run.x[sl], t)
            shift, mean_s, sc, ss, _ = run.moments(src, t, t2)
            at = run.partial_index(sl, j)
            part_s[at], part_m2[at] = sc[0], ss[0]
            if shift is not None:  # the chunk's mean is shift + mean_s, kept unrounded
                part_shift[at], part_mean[at] = shift[0], mean_s[0]
            counts[j] = run.count(src)

    run.run(chunk_moments)
    # merge in float64 (merged_sum_of_squares: every sum scaled by a common power of two)
    w = counts.reshape((1, -1) + (1,) * len(p.sfine))
    if run.rms:
        S, m2 = merged_sum_of_squares(np, part_s, part_m2, (1,))
    else:
        # chunk means relative to the statistic's first value s0 (chunk 0's shift): the sums
        # below add O(spread) numbers however large the offset, and the mean s0 + μ_s is
        # stored as a high and a low part
        s0 = part_shift[:, :1]
        d = (part_shift - s0) + part_mean
        mu_s = (w * d).sum(axis=1, keepdims=True) / p.n
        S, m2 = merged_sum_of_squares(np, part_s, part_m2, (1,), d - mu_s, w)
        mean[...], mean_lo[...] = _split(s0[:, 0], mu_s[:, 0], run.ct)
    S, ms = S[:, 0], m2[:, 0] / p.n
    var[...] = unscale(np, S, ms, run.ct)
    rstd[...] = inv_root(np, S, ms, eps, run.ct)

    def apply(first: int, last: int) -> None:
        (t,) = run.scratch(1)
        for i in range(first, last):
            sl, _ = p.block(i)
            src = run.load(run.x[sl], t)
            if mean is not None:
                src = np.subtract(src, _take(mean, sl), out=_view(t, src))
            run.write_y(src, _take(rstd, sl), sl, t, y[sl], _take(mean_lo, sl))

    run.run(apply)


def _forward(stages: Stages, xp: Namespace, layout: Layout, playout: Layout, p: Plan,
             x: np.ndarray, weight: Any, bias: Any) -> tuple[np.ndarray, NormContext]:
    ct = _compute_dtype(x)
    xa = np.ascontiguousarray(x)
    rms = type(stages.operation) is RMSScale
    run = _Run(p, xa, ct, rms, weight, bias, fast_path_threads())
    y = _buffers.empty((p.rows,) + p.fine, x.dtype)
    sshape = (p.rows,) + p.sfine
    mean, mean_lo = (None, None) if rms else (np.empty(sshape, ct), np.empty(sshape, ct))
    var, rstd = np.empty(sshape, ct), np.empty(sshape, ct)
    stats = (mean, rstd, mean_lo)
    (_forward_rows if p.rows_per_block else _forward_chunks)(run, y, stats, var, stages.eps)
    st = layout.stats_shape

    def view(a: Any) -> Any:
        return None if a is None else a.reshape(st)

    def compute_y() -> np.ndarray:
        """ŷ in the view shape from the kept input (the portable backward and JVP read it)."""
        xv = np.asarray(xa.reshape(layout.view_shape), dtype=ct)
        y: np.ndarray = xv * view(rstd) if mean is None else ((xv - view(mean)) - view(mean_lo)) * view(rstd)
        return y

    state = StandardizeState(None, view(mean), view(var), view(rstd), layout.reduce_axes,
                             compute_y=compute_y)
    ctx = NormContext(xp, layout, state, None, weight, bias, x.dtype, NUMPY_FUSED,
                      saved=_Saved(xa, p, stats, playout, view(mean_lo)),
                      compute_yhat=lambda: np.reshape(state.y, layout.shape))
    return y.reshape(layout.shape), ctx


# backward -----------------------------------------------------------------------------------

def _block_stats(stats: tuple[Any, Any, Any], sl: tuple[slice, ...]) -> tuple[Any, Any, Any]:
    mean, rstd, lo = stats
    return _take(mean, sl), _take(rstd, sl), _take(lo, sl)


def _backward_rows(run: _Run, dy: np.ndarray, stats: tuple[Any, Any, Any], dx: np.ndarray) -> list[Any]:
    p = run.p

    def work(first: int, last: int) -> dict[str, np.ndarray]:
        bufs = run.scratch(4)
        acc = run.accumulators()
        for i in range(first, last):
            sl, _ = p.block(i)
            st = _block_stats(stats, sl)
            z = run.centred(run.load(run.x[sl], bufs[3]), st, bufs[0])
            g, sg, sgx = run.grad_sums(z, run.load(dy[sl], bufs[1]), st, sl, bufs[1:3], acc)
            run.write_dx(z, g, sg, sgx, st, sl, bufs[0], dx[sl])
        return acc

    return run.run(work)


def _backward_chunks(run: _Run, dy: np.ndarray, stats: tuple[Any, Any, Any], dx: np.ndarray) -> list[Any]:
    p = run.p
    shape = (p.rows, p.n_partials) + p.sfine
    part_sg, part_sgx = np.zeros(shape), np.zeros(shape)

    def sums(first: int, last: int) -> dict[str, np.ndarray]:
        bufs = run.scratch(4)
        acc = run.accumulators()
        for i in range(first, last):
            sl, j = p.block(i)
            st = _block_stats(stats, sl)
            z = run.centred(run.load(run.x[sl], bufs[3]), st, bufs[0])
            _, sg, sgx = run.grad_sums(z, run.load(dy[sl], bufs[1]), st, sl, bufs[1:3], acc)
            at = run.partial_index(sl, j)
            part_sgx[at] = sgx[0]
            if sg is not None:
                part_sg[at] = sg[0]
        return acc

    accs = run.run(sums)
    sg_all = None if run.rms else part_sg.sum(axis=1).astype(run.ct)
    sgx_all = part_sgx.sum(axis=1).astype(run.ct)

    def apply(first: int, last: int) -> None:
        bufs = run.scratch(4)
        for i in range(first, last):
            sl, _ = p.block(i)
            st = _block_stats(stats, sl)
            z = run.centred(run.load(run.x[sl], bufs[3]), st, bufs[0])
            g = run.load(dy[sl], bufs[1])
            if not run.fold:
                assert run.W is not None
                g = np.multiply(g, _take(run.W, sl), out=_view(bufs[2], g))
            run.write_dx(z, g, _take(sg_all, sl), _take(sgx_all, sl), st, sl, bufs[0], dx[sl])

    run.run(apply)
    return accs


def _finish_param(p: Plan, acc: np.ndarray, like: Any, param_shape: tuple[int, ...]) -> np.ndarray:
    if any(p.lead_par):
        acc = acc.reshape(p.lead + p.pfine)
        drop = tuple(i for i, q in enumerate(p.lead_par) if not q)
        if drop:
            acc = acc.sum(axis=drop)
    return acc.reshape(param_shape).astype(like.dtype)


def fusable_stages(stages: Stages) -> bool:
    """Whether the fused loops compute these stages: the standardize or RMS operation with the
    affine, conditional-affine or no recovery, exactly those classes (subclasses may change
    the math). Shared by the NumPy and the numba implementations."""
    return (type(stages.operation) in (Standardize, RMSScale)
            and type(stages.recovery) in (Affine, ConditionalAffine, NoRecovery))


def _backward(ctx: NormContext, saved: _Saved, dy: np.ndarray) -> Grads:
    p = saved.plan
    run = _Run(p, saved.x, ctx.state.rstd.dtype, ctx.state.mean is None, ctx.weight, ctx.bias,
               fast_path_threads())
    dya = np.ascontiguousarray(dy).reshape((p.rows,) + p.fine)
    dx = _buffers.empty((p.rows,) + p.fine, ctx.x_dtype)
    accs = (_backward_rows if p.rows_per_block else _backward_chunks)(run, dya, saved.stats, dx)
    pshape = saved.param_layout.param_shape
    dw = db = None
    if ctx.weight is not None:
        dw = _finish_param(p, sum(a["dw"] for a in accs), ctx.weight, pshape)
    if ctx.bias is not None:
        db = _finish_param(p, sum(a["db"] for a in accs), ctx.bias, pshape)
    return dx.reshape(ctx.layout.shape), dw, db


# the implementation --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Saved:
    """What the forward keeps for the backward: the input (C order), the block plan, the
    statistics in block coordinates, the layout whose ``param_axes`` γ/β span, and
    ``mean_lo`` (``layout.stats_shape``): what the compute dtype's ``state.mean`` rounds off
    the exact mean (``None`` for RMS)."""

    x: np.ndarray
    plan: Plan
    stats: tuple[Any, Any, Any]
    param_layout: Layout
    mean_lo: np.ndarray | None


def _compute_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float32) if x.dtype == np.float16 else x.dtype


class NumpyFused:
    """The NumPy block implementation (module docstring): standardize and RMS operations on
    every partition, with the affine, conditional-affine or no recovery.

    Selection rule (:meth:`supports`): plain ``numpy.ndarray`` input and parameters of a
    floating dtype, an input of at least :data:`MIN_BYTES` in the compute dtype (measured:
    below it the data fits in cache and the portable path is as fast), and a layout with a
    reduced axis longer than one. The forward-mode product is the portable formula on this
    implementation's statistics (ŷ formed from the kept input); a cotangent that is not a
    floating NumPy array of the output's shape also takes the portable backward.
    """

    name = "numpy_fused"

    def _plan(self, stages: Stages, layout: Layout, x: np.ndarray, weight: Any,
              bias: Any) -> tuple[Layout, Plan | None]:
        playout = dataclasses.replace(layout, param_axes=stages.recovery.param_axes(layout))
        block = BLOCK_BYTES // _compute_dtype(x).itemsize
        return playout, plan(playout, weight is not None or bias is not None, block)

    def supports(self, stages: Stages, xp: Namespace, layout: Layout, x: Array,
                 weight: Array | None, bias: Array | None) -> bool:
        if not fusable_stages(stages):
            return False
        if type(x) is not np.ndarray or x.dtype not in _FLOATS:
            return False
        if x.size * max(x.dtype.itemsize, 4) < max(MIN_BYTES, 1):
            return False
        if not all(p is None or type(p) is np.ndarray for p in (weight, bias)):
            return False
        return self._plan(stages, layout, x, weight, bias)[1] is not None

    def forward(self, stages: Stages, xp: Namespace, layout: Layout, x: Array,
                weight: Array | None, bias: Array | None) -> tuple[Array, NormContext]:
        playout, p = self._plan(stages, layout, x, weight, bias)
        assert p is not None, "forward called on an input supports() refused"
        return _forward(stages, xp, layout, playout, p, x, weight, bias)

    def backward(self, stages: Stages, ctx: NormContext, dy: Array) -> Grads:
        if (type(dy) is np.ndarray and dy.dtype in _FLOATS
                and tuple(dy.shape) == tuple(ctx.layout.shape)):
            return _backward(ctx, ctx.saved, dy)
        return PORTABLE.backward(stages, ctx, dy)

    def jvp(self, stages: Stages, ctx: NormContext, dx: Array | None, dweight: Array | None,
            dbias: Array | None) -> Array:
        return PORTABLE.jvp(stages, ctx, dx, dweight, dbias)


NUMPY_FUSED = NumpyFused()
