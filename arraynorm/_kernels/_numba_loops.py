"""The compiled loops of :mod:`arraynorm._kernels.numba_jit` (numba ``@njit``).

Imported only by :func:`arraynorm._kernels.numba_jit._loops`, the first time the JIT
implementation is asked about a NumPy input: importing this module imports numba.

Two geometries (see :mod:`.numba_jit` for how a layout maps onto them), and weight norm's rows:

* **rows** ``x: (M, A, C)``: one statistic per row of ``A·C`` contiguous values (LN, RMS, IN,
  GN). A row is read from memory once: the shifted mean, the sum of squared deviations and
  the output are three sweeps over the row while it sits in cache. γ/β are indexed
  ``m·sm + a·sa + c·sc`` (a stride 0 where they do not vary).
* **channels** ``x: (M, R1, K, R2)``: one statistic per ``(m, k)`` over ``R1·R2`` values
  (BN, ghost BN). Blocks of ``b`` rows of ``r1`` × ``kspan`` channels (a cache-sized slab)
  give (mean, M2) by two passes in cache (one for float32: Σd, Σd² with a cancellation
  test, as for rows); the blocks are merged exactly in float64 by the
  caller (Chan et al.), then one more sweep writes the output.
* **units** ``v: (n, m)``: per-unit weight normalization, w = v·g/‖v‖ per row, and its
  backward, each row read from memory once.
* **pointwise**: ReLU and its backward (the layers' activation between normalizations), one
  pass each.

Every sum is accumulated in float64 whatever the data dtype (float32 squares cannot overflow
or underflow there). For float64 data a sum of squares that overflows or lands below
2⁻⁹⁰⁰ is recomputed (in cache) on values divided by a power of two near their largest
magnitude, as :func:`arraynorm._statistics.pow2_scale` does; the scale is returned with it.
All means are shifted by the statistic's first value (0 if not finite), as
:func:`arraynorm._statistics.centre`. ``fastmath`` allows only reassociation and
contraction (so sums vectorize); NaN and inf keep their IEEE meaning.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange

__all__ = ["rows_forward", "rows_backward", "channels_stats", "channels_merge", "channels_apply",
           "channels_grad_sums", "channels_grad_apply", "unit_scale_forward",
           "unit_scale_backward", "relu_backward", "softmax_rows", "softmax_backward_rows", "SERIAL"]

_FASTMATH = {"reassoc", "contract"}
_SS_LO = 2.0 ** -900     # sums of squares below this (or inf) are recomputed scaled
_EMIN, _EMAX = -1021, 1021
_ONEPASS_KEEP = 1e-6


#: the serial twin of every parallel loop, by name: the same code compiled with
#: ``parallel=False`` (``prange`` is then ``range``), which never starts numba's threading
#: layer — so it runs in a process forked after a parallel launch under GNU OpenMP, where the
#: parallel loops cannot, and costs no launch for inputs too small to share
SERIAL: dict[str, Any] = {}


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """njit with ``cache=True`` where numba finds a writable cache directory (next to this
    file, else NUMBA_CACHE_DIR or the user's cache); without caching otherwise (a read-only
    install with no writable home still runs, compiling once per process). A parallel loop
    also gets its serial twin in :data:`SERIAL`: a copy of the function whose qualified name
    ends in ``_serial``, so numba's cache (keyed by file, qualified name and bytecode) keeps
    the two compilations apart."""
    def compiled(fn: Callable[..., Any], opts: dict[str, Any]) -> Any:
        # IEEE division (x/0 is ±inf or NaN, as in NumPy), not Python's ZeroDivisionError:
        # numba's default for serial code; its parallel loops divide the IEEE way already
        opts = dict(opts, error_model="numpy")
        try:
            return njit(cache=True, **opts)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(cache=False, **opts)(fn)

    def deco(fn: Callable[..., Any]) -> Any:
        if options.get("parallel"):
            twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                      fn.__defaults__, fn.__closure__)
            twin.__qualname__ = fn.__qualname__ + "_serial"
            SERIAL[fn.__name__] = compiled(twin, dict(options, parallel=False))
        return compiled(fn, options)
    return deco


@_jit(inline="always")
def _pow2(m: float) -> float:
    """2**floor(log2 m) within float64's normal range; 1 where m is 0, inf or NaN."""
    if not (m > 0.0 and m < math.inf):
        return 1.0
    e = math.frexp(m)[1] - 1  # m = f·2^(e+1), f in [0.5, 1): floor(log2 m) = e, exactly
    return math.ldexp(1.0, min(max(e, _EMIN), _EMAX))


@_jit(inline="always")
def _inv_root(s: float, ms: float, eps: float) -> float:
    """1/sqrt(s²·ms + eps) without forming s²·ms (:func:`arraynorm._statistics.inv_root`)."""
    a = s * math.sqrt(ms)
    b = math.sqrt(eps)
    hi = max(a, b)
    lo = min(a, b)
    r = lo / hi if hi > 0.0 else lo
    return 1.0 / (hi * math.sqrt(1.0 + r * r))


@_jit(inline="always")
def _shift(v: float) -> float:
    return v if math.isfinite(v) else 0.0


# rows ----------------------------------------------------------------------------------------
# Arrays are 2-D, a row taken as a 1-D view and cut into 1-D slices: LLVM vectorizes those
# loops (multi-dimensional or offset indexing inside the inner loop measured 5x slower).

# The float32 output sweep: a separate function compiled without ``fastmath``, so that LLVM may
# not reassociate (x − shift) − μ_s into x − (shift + μ_s), whose sum rounds in float32 (at a
# 1e4 offset, 1e-3 of σ). Not inlined: numba's inlining would give it the caller's flags.
@_jit()
def _out32(xs: Any, ys: Any, s: Any, m: Any, r: Any, Ws: Any, Bs: Any) -> None:
    for c in range(xs.shape[0]):
        ys[c] = ((xs[c] - s) - m) * r * Ws[c] + Bs[c]


@_jit()
def _out32_const(xs: Any, ys: Any, s: Any, m: Any, f: Any, b: Any) -> None:
    for c in range(xs.shape[0]):
        ys[c] = ((xs[c] - s) - m) * f + b


# The statistics in the data dtype, stored by a function compiled without ``fastmath``: the
# mean as hi = shift + μ_s rounded and the remainder that rounding lost (Knuth's TwoSum, which
# reassociation would fold to 0), as :func:`arraynorm._kernels.numpy_fused._split` gives them
# from the float64 pair, then σ² and rstd; stored into ``out``'s dtype (round to nearest, as
# NumPy's astype). Doing it here spares the forward 7 NumPy passes over the (M,) statistics
# (1024×1024 LN: ~15 µs of a 250 µs forward).
@_jit()
def _store_stats(out: Any, m: int, shift: float, mean_s: float, var: float, r: float) -> None:
    hi = shift + mean_s
    bb = hi - shift
    lo = (shift - (hi - bb)) + (mean_s - bb)
    out[0, m] = hi
    out[1, m] = (hi - np.float64(out[0, m])) + lo
    out[2, m] = var
    out[3, m] = r


#: the float32 sweep's range: every |x − shift| and |x − μ| below _F32_SPAN (far from float32's
#: 3.4e38, so no difference overflows) and rstd in [1/_F32_R, _F32_R] (a normal float32 whose
#: products with those differences stay normal where they matter)
_F32_SPAN = 1e36
_F32_R = 1e30


@_jit(parallel=True, fastmath=_FASTMATH)
def rows_forward(x: Any, A: int, C: int, W: Any, B: Any, W32: Any, B32: Any, sm: int, sa: int,
                 sc: int, eps: float, rms: bool, onepass: bool, y: Any, stats: Any,
                 sct: Any) -> None:
    """y[m] = ((x[m] − shift) − μ_s)·rstd·γ + β per row of ``x: (M, A·C)``; ``stats[:, m]`` =
    (shift, μ_s, var, rstd, f) in float64 (shift = μ_s = 0 for RMS, var then the mean square;
    f 1 where the row took the float32 sweep below, else 0); ``sct[:, m]`` = (mean, the
    remainder its rounding lost, var, rstd) in the data dtype (:func:`_store_stats`).

    ``onepass`` (float32 data): Σd and Σd² (d = x − shift, exact in float64) in one sweep and
    Σ(d − μ_s)² = Σd² − μ_s·Σd, kept where that subtraction leaves at least
    :data:`_ONEPASS_KEEP` of Σd² (rounding then at most 2⁻⁵³/_ONEPASS_KEEP ≈ 1e-10 of the
    result, far below float32's 6e-8); else, as always for float64 data, the second sweep.

    Float32 data (``onepass``) also get the output sweep in float32 arithmetic — ((x − shift)
    − μ_s)·rstd·γ + β with shift (x's first value, exact), μ_s, rstd, γ and β (``W32``,
    ``B32``) rounded to float32: twice as fast as the float64 sweep (4096×1024 on the 2-core
    Xeon: 1316 → 640 µs), a few float32 roundings instead of one (x − shift is exact within a
    factor 2 of the shift). Measured on LN of float32 rows at offsets 0 to 1e6: error at most
    2.05·ε₃₂·(|γ|(1 + |ŷ|) + |β|), as the portable path (the float64 sweep: 0.49; the NumPy fast
    path 6.2; PyTorch fails at a 1e6 offset). Only where the row's
    spread keeps every term in range (:data:`_F32_SPAN`, :data:`_F32_R`); otherwise, and for
    rows with NaN or inf, the float64 sweep."""
    M, n = x.shape
    for m in prange(M):
        xr = x[m]
        yr = y[m]
        shift = 0.0
        mean_s = 0.0
        ss = -1.0
        if not rms:
            shift = _shift(np.float64(xr[0]))
            acc = 0.0
            if onepass:
                acc2 = 0.0
                for i in range(n):
                    d = np.float64(xr[i]) - shift
                    acc += d
                    acc2 += d * d
                mean_s = acc / n
                ss = acc2 - acc * mean_s
                if not (ss > _ONEPASS_KEEP * acc2):  # the subtraction cancelled: two passes
                    ss = -1.0
            else:
                for i in range(n):
                    acc += np.float64(xr[i]) - shift
                mean_s = acc / n
        if ss < 0.0:
            ss = 0.0
            for i in range(n):
                d = (np.float64(xr[i]) - shift) - mean_s
                ss += d * d
        s = 1.0
        if not (ss >= _SS_LO and ss < math.inf):
            mx = 0.0
            for i in range(n):
                d = abs((np.float64(xr[i]) - shift) - mean_s)
                if d > mx:
                    mx = d
            s = _pow2(mx)
            inv = 1.0 / s
            ss = 0.0
            for i in range(n):
                d = ((np.float64(xr[i]) - shift) - mean_s) * inv
                ss += d * d
        ms = ss / n
        r = _inv_root(s, ms, eps)
        var = (s * ms) * s
        stats[0, m] = shift
        stats[1, m] = mean_s
        stats[2, m] = var
        stats[3, m] = r
        _store_stats(sct, m, shift, mean_s, var, r)
        # |x − μ_s − shift| ≤ √ss and |x − shift| ≤ √ss + |μ_s| for every value of the row
        if onepass and s == 1.0 and math.sqrt(ss) + abs(mean_s) < _F32_SPAN and r < _F32_R and r > 1.0 / _F32_R:
            stats[4, m] = 1.0
            s32 = np.float32(shift)
            m32 = np.float32(mean_s)
            r32 = np.float32(r)
            for a in range(A):
                xs = xr[a * C:(a + 1) * C]
                ys = yr[a * C:(a + 1) * C]
                base = m * sm + a * sa
                if sc == 0:
                    _out32_const(xs, ys, s32, m32, np.float32(r * W[base]), B32[base])
                else:
                    _out32(xs, ys, s32, m32, r32, W32[base:base + C], B32[base:base + C])
            continue
        stats[4, m] = 0.0
        for a in range(A):
            # slices, not offset indices: an index numba cannot prove non-negative gets a
            # wraparound test per element, which stops vectorization (measured 5x)
            xs = xr[a * C:(a + 1) * C]
            ys = yr[a * C:(a + 1) * C]
            base = m * sm + a * sa
            if sc == 0:  # γ, β constant along the row segment: one factor
                f = r * W[base]
                bb = B[base]
                for c in range(C):
                    ys[c] = ((np.float64(xs[c]) - shift) - mean_s) * f + bb
            else:
                Ws = W[base:base + C]
                Bs = B[base:base + C]
                for c in range(C):
                    ys[c] = ((np.float64(xs[c]) - shift) - mean_s) * r * Ws[c] + Bs[c]


@_jit(inline="always")
def _dy_sums(dys: Any, xs: Any, shift: float, mean: float) -> tuple[float, float]:
    """(Σ dy, Σ dy·((x − shift) − mean)) over two slices of one length, in float64."""
    u = 0.0
    v = 0.0
    for c in range(dys.shape[0]):
        d = np.float64(dys[c])
        u += d
        v += d * ((np.float64(xs[c]) - shift) - mean)
    return u, v


@_jit(inline="always")
def _row_grad_sums(xr: Any, dyr: Any, A: int, C: int, W: Any, base0: int, sa: int, sc: int,
                   shift: float, mean_s: float, r: float, rms: bool, n: int,
                   bound: bool) -> tuple[float, float, float]:
    """(Σgŷ/n·rstd, Σg/n, √Σg²) of one row, g = dy·γ: the factors of x − μ and of 1 in its
    dx, and a bound on every |g| where γ varies along the row and ``bound`` asks for it (inf
    otherwise: not needed; float64 data keep the loop, and its sums' rounding, they had).
    Σg², not max|g|: a max does not vectorize under these fastmath flags (the backward
    measured 1623 → 3744 µs at 4096×1024)."""
    sg = 0.0
    sgy = 0.0
    gss = 0.0 if sc != 0 and bound else math.inf
    for a in range(A):
        xs = xr[a * C:(a + 1) * C]
        dys = dyr[a * C:(a + 1) * C]
        base = base0 + a * sa
        if sc == 0:
            u, v = _dy_sums(dys, xs, shift, mean_s)
            sg += u * W[base]
            sgy += v * W[base]
        elif bound:
            Ws = W[base:base + C]
            for c in range(C):
                g = np.float64(dys[c]) * Ws[c]
                sg += g
                sgy += g * ((np.float64(xs[c]) - shift) - mean_s)
                gss += g * g
        else:
            Ws = W[base:base + C]
            for c in range(C):
                g = np.float64(dys[c]) * Ws[c]
                sg += g
                sgy += g * ((np.float64(xs[c]) - shift) - mean_s)
    return sgy * r * r / n, 0.0 if rms else sg / n, math.sqrt(gss)


@_jit()  # no fastmath: (x − shift) − μ_s stays two float32 subtractions (see _out32)
def _grad4_32(xs0: Any, xs1: Any, xs2: Any, xs3: Any, ds0: Any, ds1: Any, ds2: Any, ds3: Any,
              os0: Any, os1: Any, os2: Any, os3: Any, Ws: Any, dWs: Any, dBs: Any, h: Any, u: Any,
              r: Any, k: Any, cg: Any) -> None:
    """Four rows' dx in float32 arithmetic, their dγ and dβ terms summed in float32 and added
    to the float64 sums; ``h, u, r, k, cg``: each row's shift, μ_s, rstd and the two factors
    of :func:`_row_grad_sums`, as float32 (4,) arrays."""
    h0, h1, h2, h3 = h[0], h[1], h[2], h[3]
    u0, u1, u2, u3 = u[0], u[1], u[2], u[3]
    r0, r1, r2, r3 = r[0], r[1], r[2], r[3]
    k0, k1, k2, k3 = k[0], k[1], k[2], k[3]
    c0, c1, c2, c3 = cg[0], cg[1], cg[2], cg[3]
    for c in range(xs0.shape[0]):
        w = Ws[c]
        d0 = ds0[c]
        d1 = ds1[c]
        d2 = ds2[c]
        d3 = ds3[c]
        e0 = (xs0[c] - h0) - u0
        e1 = (xs1[c] - h1) - u1
        e2 = (xs2[c] - h2) - u2
        e3 = (xs3[c] - h3) - u3
        os0[c] = r0 * ((d0 * w - c0) - e0 * k0)
        os1[c] = r1 * ((d1 * w - c1) - e1 * k1)
        os2[c] = r2 * ((d2 * w - c2) - e2 * k2)
        os3[c] = r3 * ((d3 * w - c3) - e3 * k3)
        dWs[c] += np.float64((d0 * e0 * r0 + d1 * e1 * r1) + (d2 * e2 * r2 + d3 * e3 * r3))
        dBs[c] += np.float64((d0 + d1) + (d2 + d3))


@_jit(parallel=True, fastmath=_FASTMATH)
def rows_backward(x: Any, dy: Any, A: int, C: int, W: Any, W32: Any, sm: int, sa: int, sc: int,
                  shifts: Any, means: Any, rstds: Any, fast: Any, f32: bool, rms: bool, dx: Any,
                  dW: Any, dB: Any) -> None:
    """dx = rstd·(g − Σg/n − ŷ·Σgŷ/n), g = dy·γ (no Σg term for RMS), per row; the rows are
    cut into ``dW.shape[0]`` ranges, one per task, each adding Σ dy·ŷ and Σ dy into its own
    row of ``dW`` and ``dB`` (float64, γ's flat index; ``sc`` is 0 or 1). Where γ varies
    along the row and not with m (LN), four rows at a time share one update of those
    float64 sums (256×1024 float32, one thread, min of 30: 211 → 162 µs; 64×4096 178 → 153;
    1024×1024 1457 → 730). Four rows of float32 data (``f32``) that all took the forward's
    float32 sweep (``fast``), with √Σg² (≥ max|g|) and |Σgŷ/n·rstd| below 1e30, get that
    update in float32 arithmetic (:func:`_grad4_32`; 4096×1024, two threads: backward
    2233 → 1623 µs): every term of dx is then below √n·max|g| (|Σgŷ/n| ≤ rms(g),
    |x − μ| ≤ √n/rstd), far from float32's overflow."""
    M, n = x.shape
    T = dW.shape[0]
    for t in prange(T):
        dWt = dW[t]
        dBt = dB[t]
        f4 = np.empty((5, 4), np.float32)
        m = M * t // T
        end = M * (t + 1) // T
        while m < end:
            if sc == 1 and sm == 0 and m + 4 <= end:
                x0, x1, x2, x3 = x[m], x[m + 1], x[m + 2], x[m + 3]
                y0, y1, y2, y3 = dy[m], dy[m + 1], dy[m + 2], dy[m + 3]
                o0, o1, o2, o3 = dx[m], dx[m + 1], dx[m + 2], dx[m + 3]
                h0, h1, h2, h3 = shifts[m], shifts[m + 1], shifts[m + 2], shifts[m + 3]
                u0, u1, u2, u3 = means[m], means[m + 1], means[m + 2], means[m + 3]
                r0, r1, r2, r3 = rstds[m], rstds[m + 1], rstds[m + 2], rstds[m + 3]
                k0, c0, g0 = _row_grad_sums(x0, y0, A, C, W, 0, sa, sc, h0, u0, r0, rms, n,
                                             f32)
                k1, c1, g1 = _row_grad_sums(x1, y1, A, C, W, 0, sa, sc, h1, u1, r1, rms, n,
                                             f32)
                k2, c2, g2 = _row_grad_sums(x2, y2, A, C, W, 0, sa, sc, h2, u2, r2, rms, n,
                                             f32)
                k3, c3, g3 = _row_grad_sums(x3, y3, A, C, W, 0, sa, sc, h3, u3, r3, rms, n,
                                             f32)
                if (fast[m] + fast[m + 1] + fast[m + 2] + fast[m + 3] == 4.0
                        and max(abs(k0), abs(k1), abs(k2), abs(k3)) < _F32_R
                        and max(g0, g1, g2, g3) < _F32_R):
                    for j, (hj, uj, rj, kj, cj) in enumerate(((h0, u0, r0, k0, c0), (h1, u1, r1, k1, c1),
                                                              (h2, u2, r2, k2, c2), (h3, u3, r3, k3, c3))):
                        f4[0, j] = hj
                        f4[1, j] = uj
                        f4[2, j] = rj
                        f4[3, j] = kj
                        f4[4, j] = cj
                    for a in range(A):
                        lo = a * C
                        hi = lo + C
                        base = a * sa
                        _grad4_32(x0[lo:hi], x1[lo:hi], x2[lo:hi], x3[lo:hi], y0[lo:hi], y1[lo:hi],
                                  y2[lo:hi], y3[lo:hi], o0[lo:hi], o1[lo:hi], o2[lo:hi], o3[lo:hi],
                                  W32[base:base + C], dWt[base:base + C], dBt[base:base + C],
                                  f4[0], f4[1], f4[2], f4[3], f4[4])
                    m += 4
                    continue
                for a in range(A):
                    lo = a * C
                    hi = lo + C
                    xs0, xs1, xs2, xs3 = x0[lo:hi], x1[lo:hi], x2[lo:hi], x3[lo:hi]
                    ds0, ds1, ds2, ds3 = y0[lo:hi], y1[lo:hi], y2[lo:hi], y3[lo:hi]
                    os0, os1, os2, os3 = o0[lo:hi], o1[lo:hi], o2[lo:hi], o3[lo:hi]
                    base = a * sa
                    Ws = W[base:base + C]
                    dWs = dWt[base:base + C]
                    dBs = dBt[base:base + C]
                    for c in range(C):
                        w = Ws[c]
                        d0 = np.float64(ds0[c])
                        d1 = np.float64(ds1[c])
                        d2 = np.float64(ds2[c])
                        d3 = np.float64(ds3[c])
                        e0 = (np.float64(xs0[c]) - h0) - u0
                        e1 = (np.float64(xs1[c]) - h1) - u1
                        e2 = (np.float64(xs2[c]) - h2) - u2
                        e3 = (np.float64(xs3[c]) - h3) - u3
                        os0[c] = r0 * ((d0 * w - c0) - e0 * k0)
                        os1[c] = r1 * ((d1 * w - c1) - e1 * k1)
                        os2[c] = r2 * ((d2 * w - c2) - e2 * k2)
                        os3[c] = r3 * ((d3 * w - c3) - e3 * k3)
                        dWs[c] += (d0 * e0 * r0 + d1 * e1 * r1) + (d2 * e2 * r2 + d3 * e3 * r3)
                        dBs[c] += (d0 + d1) + (d2 + d3)
                m += 4
                continue
            xr = x[m]
            dyr = dy[m]
            dxr = dx[m]
            shift = shifts[m]
            mean_s = means[m]
            r = rstds[m]
            kg, cg, _ = _row_grad_sums(xr, dyr, A, C, W, m * sm, sa, sc, shift, mean_s, r, rms, n,
                                        False)
            for a in range(A):
                xs = xr[a * C:(a + 1) * C]
                dys = dyr[a * C:(a + 1) * C]
                dxs = dxr[a * C:(a + 1) * C]
                base = m * sm + a * sa
                if sc == 0:  # γ constant along c: its cotangent is one sum per (m, a)
                    w = W[base]
                    u = 0.0
                    v = 0.0
                    for c in range(C):
                        d = np.float64(dys[c])
                        xc = (np.float64(xs[c]) - shift) - mean_s
                        dxs[c] = r * ((d * w - cg) - xc * kg)
                        u += d * xc
                        v += d
                    dWt[base] += u * r
                    dBt[base] += v
                else:
                    Ws = W[base:base + C]
                    dWs = dWt[base:base + C]
                    dBs = dBt[base:base + C]
                    for c in range(C):
                        d = np.float64(dys[c])
                        xc = (np.float64(xs[c]) - shift) - mean_s
                        dxs[c] = r * ((d * Ws[c] - cg) - xc * kg)
                        dWs[c] += d * xc * r
                        dBs[c] += d
            m += 1


# channels ------------------------------------------------------------------------------------
# x: (M·R1, K·R2), row m·R1 + r; statistic (m, k) over r and the R2 values k·R2 + q.

@_jit(inline="always")
def _task(task: int, nkb: int, nrb: int, kspan: int, b: int, K: int,
          R1: int) -> tuple[int, int, int, int, int, int]:
    m = task // (nkb * nrb)
    rem = task % (nkb * nrb)
    kb = rem // nrb
    rb = rem % nrb
    k0 = kb * kspan
    r0 = rb * b
    return m, rb, k0, min(K, k0 + kspan), r0, min(R1, r0 + b)


@_jit(inline="always")
def _sum_rows(x: Any, t: int, nr: int, k0: int, k1: int, sh: Any, mu: Any, square: bool,
              acc: Any) -> None:
    """acc[k] += Σ over rows t..t+nr (nr ≤ 4) of (x − sh[k]) (``square`` False) or of
    ((x − sh[k]) − mu[k])², k in [k0, k1): four rows share one update of the float64 sums
    and one load of the per-channel arrays (channels last: those loads, not memory, bound
    the sweep; measured below). Slices, not offset indices: see the note on rows."""
    a = acc[k0:k1]
    s = sh[k0:k1]
    u = mu[k0:k1]
    if nr == 4:
        x0, x1, x2, x3 = x[t, k0:k1], x[t + 1, k0:k1], x[t + 2, k0:k1], x[t + 3, k0:k1]
        if square:
            for j in range(k1 - k0):
                e0 = (np.float64(x0[j]) - s[j]) - u[j]
                e1 = (np.float64(x1[j]) - s[j]) - u[j]
                e2 = (np.float64(x2[j]) - s[j]) - u[j]
                e3 = (np.float64(x3[j]) - s[j]) - u[j]
                a[j] += (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3)
        else:
            for j in range(k1 - k0):
                a[j] += ((np.float64(x0[j]) - s[j]) + (np.float64(x1[j]) - s[j])) + \
                        ((np.float64(x2[j]) - s[j]) + (np.float64(x3[j]) - s[j]))
        return
    for i in range(nr):
        xs = x[t + i, k0:k1]
        if square:
            for j in range(k1 - k0):
                e = (np.float64(xs[j]) - s[j]) - u[j]
                a[j] += e * e
        else:
            for j in range(k1 - k0):
                a[j] += np.float64(xs[j]) - s[j]


@_jit(inline="always")
def _sum_rows2(x: Any, t: int, nr: int, k0: int, k1: int, sh: Any, acc: Any, acc2: Any) -> None:
    """acc[k] += Σ d, acc2[k] += Σ d² over rows t..t+nr (nr ≤ 4), d = x − sh[k], four rows
    per update of the float64 sums (as :func:`_sum_rows`)."""
    a = acc[k0:k1]
    a2 = acc2[k0:k1]
    s = sh[k0:k1]
    if nr == 4:
        x0, x1, x2, x3 = x[t, k0:k1], x[t + 1, k0:k1], x[t + 2, k0:k1], x[t + 3, k0:k1]
        for j in range(k1 - k0):
            e0 = np.float64(x0[j]) - s[j]
            e1 = np.float64(x1[j]) - s[j]
            e2 = np.float64(x2[j]) - s[j]
            e3 = np.float64(x3[j]) - s[j]
            a[j] += (e0 + e1) + (e2 + e3)
            a2[j] += (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3)
        return
    for i in range(nr):
        xs = x[t + i, k0:k1]
        for j in range(k1 - k0):
            e = np.float64(xs[j]) - s[j]
            a[j] += e
            a2[j] += e * e


@_jit(inline="always")
def _grad_sum_rows(x: Any, dy: Any, t: int, nr: int, k0: int, k1: int, sh: Any, mu: Any,
                   s1: Any, s2: Any) -> None:
    """s1[k] += Σ dy, s2[k] += Σ dy·((x − sh) − mu) over rows t..t+nr (nr ≤ 4), four rows
    per update of the float64 sums (as :func:`_sum_rows`)."""
    a1 = s1[k0:k1]
    a2 = s2[k0:k1]
    s = sh[k0:k1]
    u = mu[k0:k1]
    if nr == 4:
        x0, x1, x2, x3 = x[t, k0:k1], x[t + 1, k0:k1], x[t + 2, k0:k1], x[t + 3, k0:k1]
        g0, g1, g2, g3 = dy[t, k0:k1], dy[t + 1, k0:k1], dy[t + 2, k0:k1], dy[t + 3, k0:k1]
        for j in range(k1 - k0):
            d0 = np.float64(g0[j])
            d1 = np.float64(g1[j])
            d2 = np.float64(g2[j])
            d3 = np.float64(g3[j])
            a1[j] += (d0 + d1) + (d2 + d3)
            a2[j] += (d0 * ((np.float64(x0[j]) - s[j]) - u[j]) + d1 * ((np.float64(x1[j]) - s[j]) - u[j])) + \
                     (d2 * ((np.float64(x2[j]) - s[j]) - u[j]) + d3 * ((np.float64(x3[j]) - s[j]) - u[j]))
        return
    for i in range(nr):
        xs = x[t + i, k0:k1]
        gs = dy[t + i, k0:k1]
        for j in range(k1 - k0):
            d = np.float64(gs[j])
            a1[j] += d
            a2[j] += d * ((np.float64(xs[j]) - s[j]) - u[j])


@_jit(parallel=True, fastmath=_FASTMATH)
def channels_stats(x: Any, M: int, R1: int, K: int, R2: int, kspan: int, b: int,
                   rms: bool, onepass: bool, shift: Any, part: Any) -> None:
    """Per block (``b`` rows of r1 × ``kspan`` channels) and channel: ``part[:, m, rb, k]`` =
    (block mean of x − shift, block Σ((x − mean)/scale)², scale), two passes over the block
    in cache (mean 0 and M2 = Σ x² for RMS); ``shift[m, k]`` (output) = the statistic's
    first value, 0 where not finite (0 for RMS). ``onepass`` (float32 data): Σd and Σd² in
    the first pass and M2 = Σd² − μΣd, as :func:`rows_forward` does, the second pass only
    for a block where that subtraction keeps less than :data:`_ONEPASS_KEEP` of Σd² in some
    channel."""
    nkb = (K + kspan - 1) // kspan
    nrb = (R1 + b - 1) // b
    for task in prange(M * nkb * nrb):
        m, rb, k0, k1, r0, r1 = _task(task, nkb, nrb, kspan, b, K, R1)
        cnt = (r1 - r0) * R2
        sh = np.zeros(K)
        if not rms:
            x0 = x[m * R1]
            for k in range(k0, k1):
                sh[k] = _shift(np.float64(x0[k * R2]))
        if rb == 0:  # one task per channel span writes it (every task computes the same)
            for k in range(k0, k1):
                shift[m, k] = sh[k]
        mb = np.zeros(K)
        ss = np.zeros(K)
        two = True  # the second pass is needed
        if not rms:
            for r in range(r0, r1):
                xr = x[m * R1 + r]
                if R2 == 1:  # four rows per update of the float64 sums (_sum_rows)
                    if (r - r0) % 4 == 0:
                        if onepass:
                            _sum_rows2(x, m * R1 + r, min(4, r1 - r), k0, k1, sh, mb, ss)
                        else:
                            _sum_rows(x, m * R1 + r, min(4, r1 - r), k0, k1, sh, sh, False, mb)
                else:
                    for k in range(k0, k1):
                        xs = xr[k * R2:(k + 1) * R2]
                        shk = sh[k]
                        acc = 0.0
                        acc2 = 0.0
                        if onepass:
                            for q in range(R2):
                                d = np.float64(xs[q]) - shk
                                acc += d
                                acc2 += d * d
                        else:
                            for q in range(R2):
                                acc += np.float64(xs[q]) - shk
                        mb[k] += acc
                        ss[k] += acc2
            two = not onepass
            for k in range(k0, k1):
                if onepass:
                    q2 = ss[k]
                    ss[k] = q2 - mb[k] * (mb[k] / cnt)
                    if not (ss[k] > _ONEPASS_KEEP * q2):  # the subtraction cancelled
                        two = True
                mb[k] /= cnt
        if two:
            for k in range(k0, k1):
                ss[k] = 0.0
            for r in range(r0, r1):
                xr = x[m * R1 + r]
                if R2 == 1:
                    if (r - r0) % 4 == 0:
                        _sum_rows(x, m * R1 + r, min(4, r1 - r), k0, k1, sh, mb, True, ss)
                else:
                    for k in range(k0, k1):
                        xs = xr[k * R2:(k + 1) * R2]
                        shk = sh[k]
                        mu = mb[k]
                        acc = 0.0
                        for q in range(R2):
                            d = (np.float64(xs[q]) - shk) - mu
                            acc += d * d
                        ss[k] += acc
        for k in range(k0, k1):
            mu = mb[k]
            v = ss[k]
            s = 1.0
            if not (v >= _SS_LO and v < math.inf):  # rare: recompute scaled, in cache
                mx = 0.0
                for r in range(r0, r1):
                    xr = x[m * R1 + r]
                    for q in range(R2):
                        d = abs((np.float64(xr[k * R2 + q]) - sh[k]) - mu)
                        if d > mx:
                            mx = d
                s = _pow2(mx)
                inv = 1.0 / s
                v = 0.0
                for r in range(r0, r1):
                    xr = x[m * R1 + r]
                    for q in range(R2):
                        d = ((np.float64(xr[k * R2 + q]) - sh[k]) - mu) * inv
                        v += d * d
            part[0, m, rb, k] = mu
            part[1, m, rb, k] = v
            part[2, m, rb, k] = s


@_jit()  # no reassociation: (s·ms)·s must not become s²·ms (it overflows where the product does not)
def channels_merge(part: Any, shift: Any, R1: int, R2: int, b: int, eps: float, scaled: bool,
                   out: Any, sct: Any) -> None:
    """Merge the blocks of :func:`channels_stats` per statistic (Chan, Golub & LeVeque:
    M2 = Σ M2_b + Σ n_b (μ_b − μ)², every term divided by a common power-of-two scale S, the
    largest of the blocks' scales and :func:`_pow2` of the largest |μ_b − μ|): ``out[:, m, k]``
    = (μ_s, σ² as (S·ms)·S, rstd = 1/sqrt(S²·ms + eps) without forming S²·ms, the mean
    shift + μ_s as its float64 sum); ``sct[:, m, k]`` = (that mean rounded to the data dtype,
    the remainder the rounding lost, σ², rstd), in the data dtype (what the forward's state
    holds: :func:`arraynorm._kernels.numpy_fused._split`, Knuth's TwoSum, which this loop's
    strict IEEE arithmetic keeps exact). ``scaled`` False (float32 data, whose squares and
    their sums cannot leave float64's range): S = 1, rstd = 1/sqrt(ms + eps), and the data
    dtype is float32."""
    _, M, nrb, K = part.shape
    n = R1 * R2
    for m in range(M):
        pd, pv, ps = part[0, m], part[1, m], part[2, m]
        mean = np.zeros(K)
        for j in range(nrb):  # j outer, k inner: unit-stride over the channels
            w = (min(R1, (j + 1) * b) - j * b) * R2
            for k in range(K):
                mean[k] += w * pd[j, k]
        mean /= n
        S = np.ones(K)
        if scaled:
            S[:] = 0.0
            dmax = np.zeros(K)
            for j in range(nrb):
                for k in range(K):
                    if pv[j, k] > 0.0:  # a block with no spread has scale 1 (_pow2(0))
                        S[k] = max(S[k], ps[j, k])
                    dmax[k] = max(dmax[k], abs(pd[j, k] - mean[k]))
            for k in range(K):
                # _pow2(0) is 1: kept in the maximum, it (or a spread-free block's scale)
                # would swamp blocks of tiny values, whose scaled squares then underflow
                if dmax[k] > 0.0:
                    S[k] = max(S[k], _pow2(dmax[k]))
                if S[k] == 0.0:  # no spread anywhere: nothing to scale
                    S[k] = 1.0
        m2 = np.zeros(K)
        for j in range(nrb):
            w = (min(R1, (j + 1) * b) - j * b) * R2
            if scaled:
                for k in range(K):
                    dv = (pd[j, k] - mean[k]) / S[k]
                    m2[k] += w * (dv * dv)
                    if pv[j, k] > 0.0:  # else (ps/S)² may overflow, times 0
                        q = ps[j, k] / S[k]
                        m2[k] += q * q * pv[j, k]
            else:
                for k in range(K):
                    dv = pd[j, k] - mean[k]
                    m2[k] += pv[j, k] + w * (dv * dv)
        for k in range(K):
            ms = m2[k] / n
            out[0, m, k] = mean[k]
            out[1, m, k] = (S[k] * ms) * S[k]
            out[2, m, k] = _inv_root(S[k], ms, eps) if scaled else 1.0 / math.sqrt(ms + eps)
            a = shift[m, k]
            hi = a + mean[k]
            bb = hi - a
            lo = (a - (hi - bb)) + (mean[k] - bb)
            out[3, m, k] = hi
            # stored into the data dtype (float32: round to nearest, as NumPy's astype)
            sct[0, m, k] = hi
            sct[1, m, k] = (hi - np.float64(sct[0, m, k])) + lo
            sct[2, m, k] = out[1, m, k]
            sct[3, m, k] = out[2, m, k]


@_jit(inline="always")
def _row_groups(R1: int, R2: int, combined: bool) -> tuple[int, int]:
    """(rows per task, tasks per m) of the apply sweeps: groups of four rows where they share
    the per-channel loads (float32 channels last), else one row per task (more tasks to
    share: a batch of 5 splits 3:2 over two threads, not 4:1)."""
    step = 4 if R2 == 1 and combined else 1
    return step, (R1 + step - 1) // step


@_jit(parallel=True, fastmath=_FASTMATH)
def channels_apply(x: Any, M: int, R1: int, K: int, R2: int, shift: Any, mean_s: Any, a: Any,
                   c: Any, combined: bool, y: Any) -> None:
    """y = ((x − shift) − μ_s)·a + c per (m, k), a = rstd·γ, c = β (one row for every m, or
    one per m); parallel over groups of four rows. ``combined`` (float32 data, channels
    last): ``shift`` holds shift + μ_s rounded to float64 — its rounding, 1e-16 of the
    offset, is far below the data's own (6e-8 of it) — and ``mean_s`` is not read; the four
    rows of a group then share each load of the per-channel float64 arrays (on channels
    last they are as long as a row, and their loads, not memory, bound the sweep)."""
    step, G = _row_groups(R1, R2, combined)
    for task in prange(M * G):
        m = task // G
        r0 = (task % G) * step
        r1 = min(R1, r0 + step)
        sh = shift[m]
        mu = mean_s[m]
        am = a[m]
        cm = c[m % c.shape[0]]
        if R2 == 1 and combined and r1 - r0 == 4:
            t = m * R1 + r0
            x0, x1, x2, x3 = x[t], x[t + 1], x[t + 2], x[t + 3]
            y0, y1, y2, y3 = y[t], y[t + 1], y[t + 2], y[t + 3]
            for k in range(K):
                s = sh[k]
                f = am[k]
                b = cm[k]
                y0[k] = (np.float64(x0[k]) - s) * f + b
                y1[k] = (np.float64(x1[k]) - s) * f + b
                y2[k] = (np.float64(x2[k]) - s) * f + b
                y3[k] = (np.float64(x3[k]) - s) * f + b
            continue
        for r in range(r0, r1):
            xr = x[m * R1 + r]
            yr = y[m * R1 + r]
            if R2 == 1 and combined:
                for k in range(K):
                    yr[k] = (np.float64(xr[k]) - sh[k]) * am[k] + cm[k]
            elif R2 == 1:
                for k in range(K):
                    yr[k] = ((np.float64(xr[k]) - sh[k]) - mu[k]) * am[k] + cm[k]
            else:
                for k in range(K):
                    xs = xr[k * R2:(k + 1) * R2]
                    ys = yr[k * R2:(k + 1) * R2]
                    shk = sh[k]
                    muk = mu[k]
                    ak = am[k]
                    ck = cm[k]
                    for q in range(R2):
                        ys[q] = ((np.float64(xs[q]) - shk) - muk) * ak + ck


@_jit(parallel=True, fastmath=_FASTMATH)
def channels_grad_sums(x: Any, dy: Any, M: int, R1: int, K: int, R2: int, shift: Any,
                       mean_s: Any, kspan: int, b: int, part: Any) -> None:
    """Per block and channel: ``part[:, m, rb, k]`` = (Σ dy, Σ dy·(x − mean)), one pass."""
    nkb = (K + kspan - 1) // kspan
    nrb = (R1 + b - 1) // b
    for task in prange(M * nkb * nrb):
        m, rb, k0, k1, r0, r1 = _task(task, nkb, nrb, kspan, b, K, R1)
        sh = shift[m]
        mu = mean_s[m]
        s1 = np.zeros(K)
        s2 = np.zeros(K)
        for r in range(r0, r1):
            xr = x[m * R1 + r]
            dyr = dy[m * R1 + r]
            if R2 == 1:
                if (r - r0) % 4 == 0:
                    _grad_sum_rows(x, dy, m * R1 + r, min(4, r1 - r), k0, k1, sh, mu, s1, s2)
            else:
                for k in range(k0, k1):
                    u, v = _dy_sums(dyr[k * R2:(k + 1) * R2], xr[k * R2:(k + 1) * R2], sh[k], mu[k])
                    s1[k] += u
                    s2[k] += v
        for k in range(k0, k1):
            part[0, m, rb, k] = s1[k]
            part[1, m, rb, k] = s2[k]


@_jit(parallel=True, fastmath=_FASTMATH)
def channels_grad_apply(x: Any, dy: Any, M: int, R1: int, K: int, R2: int, shift: Any,
                        mean_s: Any, a: Any, mdy: Any, kd: Any, combined: bool, dx: Any) -> None:
    """dx = a·((dy − mdy) − (x − mean)·kd) per (m, k): a = rstd·γ, mdy = Σdy/n (0 for RMS),
    kd = rstd²·Σ dy·(x − mean)/n; ``combined`` as in :func:`channels_apply` (four rows share
    each load of the per-channel arrays)."""
    step, G = _row_groups(R1, R2, combined)
    for task in prange(M * G):
        m = task // G
        r0 = (task % G) * step
        r1 = min(R1, r0 + step)
        sh = shift[m]
        mu = mean_s[m]
        am = a[m]
        mm = mdy[m]
        km = kd[m]
        if R2 == 1 and combined and r1 - r0 == 4:
            t = m * R1 + r0
            x0, x1, x2, x3 = x[t], x[t + 1], x[t + 2], x[t + 3]
            g0, g1, g2, g3 = dy[t], dy[t + 1], dy[t + 2], dy[t + 3]
            o0, o1, o2, o3 = dx[t], dx[t + 1], dx[t + 2], dx[t + 3]
            for k in range(K):
                s = sh[k]
                f = am[k]
                u = mm[k]
                v = km[k]
                o0[k] = f * ((np.float64(g0[k]) - u) - (np.float64(x0[k]) - s) * v)
                o1[k] = f * ((np.float64(g1[k]) - u) - (np.float64(x1[k]) - s) * v)
                o2[k] = f * ((np.float64(g2[k]) - u) - (np.float64(x2[k]) - s) * v)
                o3[k] = f * ((np.float64(g3[k]) - u) - (np.float64(x3[k]) - s) * v)
            continue
        for r in range(r0, r1):
            xr = x[m * R1 + r]
            dyr = dy[m * R1 + r]
            dxr = dx[m * R1 + r]
            if R2 == 1 and combined:
                for k in range(K):
                    d = np.float64(xr[k]) - sh[k]
                    dxr[k] = am[k] * ((np.float64(dyr[k]) - mm[k]) - d * km[k])
            elif R2 == 1:
                for k in range(K):
                    d = (np.float64(xr[k]) - sh[k]) - mu[k]
                    dxr[k] = am[k] * ((np.float64(dyr[k]) - mm[k]) - d * km[k])
            else:
                for k in range(K):
                    xs = xr[k * R2:(k + 1) * R2]
                    dys = dyr[k * R2:(k + 1) * R2]
                    dxs = dxr[k * R2:(k + 1) * R2]
                    shk = sh[k]
                    muk = mu[k]
                    ak = am[k]
                    mk = mm[k]
                    kk = km[k]
                    for q in range(R2):
                        d = (np.float64(xs[q]) - shk) - muk
                        dxs[q] = ak * ((np.float64(dys[q]) - mk) - d * kk)


# per-unit weight normalization (rows of v: (n, m), one unit per row) --------------------------

@_jit(parallel=True, fastmath=_FASTMATH)
def unit_scale_forward(v: Any, g: Any, w: Any, ss: Any, f: Any) -> None:
    """w[i] = v[i]·(g[i]/‖v[i]‖) with ss[i] = Σ_j v[i, j]² in float64: the row is read from
    memory once (the second sweep finds it in cache). The factor is rounded to the data dtype
    (``f``, (n,) of v's dtype: its scratch) and the product taken there, as the NumPy path
    does (16 float32 lanes per AVX-512 instruction instead of 8). The caller checks ss's
    range."""
    n, m = v.shape
    for i in prange(n):
        vr = v[i]
        s = 0.0
        for j in range(m):
            t = np.float64(vr[j])
            s += t * t
        ss[i] = s
        f[i] = np.float64(g[i]) / np.sqrt(s)
        r = f[i]
        wr = w[i]
        for j in range(m):
            wr[j] = vr[j] * r


@_jit(parallel=True, fastmath=_FASTMATH)
def unit_scale_backward(dw: Any, v: Any, g: Any, ss: Any, dv: Any, dg: Any, f: Any) -> None:
    """dg[i] = u = Σ_j dw·v/‖v‖ (float64) and dv[i] = (g/‖v‖)·(dw − v·(u/‖v‖)), the NumPy
    path's grouping, with the two factors rounded to the data dtype (``f``: (n, 2) of v's
    dtype) and the sweep in it, as there; each row of dw and v read from memory once."""
    n, m = v.shape
    for i in prange(n):
        vr = v[i]
        dwr = dw[i]
        s = 0.0
        for j in range(m):
            s += np.float64(dwr[j]) * np.float64(vr[j])
        norm = np.sqrt(ss[i])
        u = s / norm
        dg[i] = u
        f[i, 0] = np.float64(g[i]) / norm
        f[i, 1] = u / norm
        r = f[i, 0]
        c = f[i, 1]
        dvr = dv[i]
        for j in range(m):
            dvr[j] = r * (dwr[j] - vr[j] * c)


# pointwise: ReLU and its backward (flat arrays, one pass) ---------------------------------------

#: elements per task of the ReLU loop (128 KiB of float32: cache-sized, and enough tasks for
#: every thread from :data:`arraynorm._kernels.numba_jit.PARALLEL_MIN_BYTES` up)
RELU_TASK = 1 << 15


@_jit(parallel=True)  # no fastmath: x > 0 must stay False for NaN
def relu_backward(x: Any, t: Any, out: Any) -> None:
    """out = t where x > 0, else +0 (x NaN or ≤ 0; t's NaN, inf and −0 kept where x > 0), for
    flat x, t, out of one dtype: what three NumPy passes and a mask did, in one. With t = x it
    is ReLU itself, NumPy's ``fmax(x, 0)`` bit for bit (+0 for −0 and NaN)."""
    n = x.shape[0]
    for task in prange((n + RELU_TASK - 1) // RELU_TASK):
        lo = task * RELU_TASK
        hi = min(n, lo + RELU_TASK)
        xs = x[lo:hi]
        ts = t[lo:hi]
        os_ = out[lo:hi]
        zero = ts.dtype.type(0)
        for j in range(hi - lo):
            os_[j] = ts[j] if xs[j] > 0 else zero


# softmax along rows (attention's probabilities) and its backward -------------------------------

#: elements per task of the softmax loops (as :data:`RELU_TASK`: whole rows of about this many)
SOFTMAX_TASK = 1 << 15


@_jit(inline="always", fastmath=_FASTMATH)
def _exp_parts(x: Any, xm: Any, b1: Any, b2: Any, o: Any) -> None:
    """o·2^b1·2^b2 = exp(x − xm) for a float32 row x (xm its maximum, or NaN/±inf values):
    Cephes' expf (Moshier) — k = round(t·log₂e), r = t − k·ln2 in two parts, a degree-7
    polynomial for eʳ — written so that the loop vectorizes (numba has no vector exp without
    Intel's SVML): 2^k is built from its exponent bits in b1, b2 (int32 views of float32), as
    two factors so that k down to −150 (t ≥ −104, where float32 exp is 0) needs no subnormal
    bits. t < −104 is clamped there (exp is +0), NaN stays NaN (the polynomial's), ±inf
    minus itself is NaN as in NumPy."""
    for j in range(x.shape[0]):
        t = x[j] - xm
        t = t if not (t < np.float32(-104.0)) else np.float32(-104.0)  # NaN kept
        tk = t if t == t else np.float32(0.0)  # NaN to int is undefined (poison in LLVM)
        ki = np.int32(tk * np.float32(1.44269504088896341) - np.float32(0.5))  # t ≤ 0: round
        k = np.float32(ki)
        r = t - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
        k1 = ki >> 1
        b1[j] = (k1 + 127) << 23
        b2[j] = (ki - k1 + 127) << 23
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        o[j] = p * r * r + r + np.float32(1.0)


@_jit(parallel=True, fastmath=_FASTMATH)
def softmax_rows(s: Any, scale: Any, out: Any) -> None:
    """out[i] = softmax(scale·s[i]) for the rows of float32 s (R, n), C order: each row read
    from memory once (its maximum, the exponentials with their float64 sum, the division:
    three sweeps in cache), where NumPy's recipe (scale, max, subtract, exp, sum, divide)
    takes six passes over memory. scale·s[i, j] is rounded to float32 first, as NumPy's
    product is; a row holding NaN or +inf gives NaN, one of −inf only gives NaN, as NumPy's
    max-shifted recipe does."""
    R, n = s.shape
    rows = max(1, SOFTMAX_TASK // max(n, 1))
    for task in prange((R + rows - 1) // rows):
        xs = np.empty(n, np.float32)
        b1 = np.empty(n, np.int32)
        b2 = np.empty(n, np.int32)
        f1 = b1.view(np.float32)
        f2 = b2.view(np.float32)
        for i in range(task * rows, min(R, task * rows + rows)):
            row = s[i]
            o = out[i]
            m = np.float32(-np.inf)
            for j in range(n):
                v = row[j] * scale
                xs[j] = v
                m = v if v > m else m  # NaN skipped here: it reaches every output by the sum
            if m == np.float32(np.inf):
                m = np.float32(np.nan)  # inf − inf, NumPy's NaN for the whole row
            _exp_parts(xs, m, b1, b2, o)
            acc = 0.0
            for j in range(n):
                e = o[j] * f1[j] * f2[j]
                o[j] = e
                acc += e
            d = np.float32(acc)
            for j in range(n):
                o[j] = o[j] / d


@_jit(parallel=True, fastmath=_FASTMATH)
def softmax_backward_rows(g: Any, p: Any, scale: float, out: Any) -> None:
    """out[i] = (p[i]·(g[i] − Σ_j g[i, j]·p[i, j]))·scale for rows (R, n) of one float dtype, C
    order: the sum in float64, rounded to the dtype, then NumPy's order of operations —
    one pass where NumPy takes five (the product, its sum, the difference, the product,
    the scale)."""
    R, n = g.shape
    rows = max(1, SOFTMAX_TASK // max(n, 1))
    for task in prange((R + rows - 1) // rows):
        for i in range(task * rows, min(R, task * rows + rows)):
            gr = g[i]
            pr = p[i]
            o = out[i]
            acc = 0.0
            for j in range(n):
                acc += gr[j] * pr[j]
            t = gr.dtype.type(acc)
            c = gr.dtype.type(scale)
            for j in range(n):
                o[j] = (pr[j] * (gr[j] - t)) * c
