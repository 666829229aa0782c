"""Block machinery of the NumPy fast path: worker threads, NumPy's iteration buffer, and sums
over some axes of a cache-sized block.

NumPy releases the GIL inside ufunc loops, reductions and BLAS calls, so blocks of one array
handed to a few threads keep every core busy while Python only schedules them.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["run_blocks", "default_threads", "sum_over", "max_over", "dot_over", "merge_axes"]

# NumPy's buffered iterator copies a broadcast operand (per-row μ, rstd; a row of γ) through its
# buffer whenever the contiguous inner dimension is no longer than the buffer, which makes
# `block - mean[:, None]` twice as slow as a same-shape subtraction. A buffer smaller than any
# inner dimension worth blocking sends those operations down the unbuffered path (measured with
# NumPy 2.4: 13 µs -> 6 µs per 64 Ki float32). The setting is per thread and restored after.
_BUFSIZE = 64

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def default_threads() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity`` where it exists)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _reset_pool_in_child() -> None:
    # a forked child inherits the executor object but not its threads: submitting to it would
    # wait forever, so the child starts a pool of its own on first use
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_in_child)


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < threads:
            # the old pool is dropped, not shut down: another thread may still be submitting
            # to it, and its idle workers exit once it is garbage collected
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="arraynorm")
            _pool_size = threads
        return _pool


def _with_small_buffer(fn: Callable[[int, int], Any], lo: int, hi: int) -> Any:
    old = np.setbufsize(_BUFSIZE)
    try:
        return fn(lo, hi)
    finally:
        np.setbufsize(old)


def run_blocks(fn: Callable[[int, int], Any], n_blocks: int, threads: int) -> list[Any]:
    """Call ``fn(lo, hi)`` on contiguous ranges of block indices ``[0, n_blocks)``, one range per
    thread, and return the results in range order (so the caller's merge order, and with it
    the rounding, depends only on the number of threads)."""
    threads = max(1, min(threads, n_blocks))
    if threads == 1:
        return [_with_small_buffer(fn, 0, n_blocks)]
    bounds = [n_blocks * i // threads for i in range(threads + 1)]
    pool = _executor(threads)
    futures = [pool.submit(_with_small_buffer, fn, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    return [f.result() for f in futures]


@functools.lru_cache(maxsize=512)
def merge_axes(shape: tuple[int, ...], flags: tuple[bool, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Merge adjacent axes with equal flags: ``(merged shape, merged axes whose flag is set)``.

    A C-contiguous array reshapes to the merged shape for free, and one long axis reduces
    faster than several short ones.
    """
    dims: list[int] = []
    marks: list[bool] = []
    for n, f in zip(shape, flags):
        if dims and marks[-1] == f:
            dims[-1] *= n
        else:
            dims.append(n)
            marks.append(f)
    return tuple(dims), tuple(i for i, f in enumerate(marks) if f)


def _keep_shape(shape: tuple[int, ...], flags: tuple[bool, ...]) -> tuple[int, ...]:
    return tuple(1 if f else n for n, f in zip(shape, flags))


@functools.lru_cache(maxsize=64)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    a = np.ones(n, dtype)
    a.flags.writeable = False
    return a


def sum_over(a: np.ndarray, flags: tuple[bool, ...], *, centred: bool = False) -> np.ndarray:
    """Σ of a C-contiguous ``a`` over the axes whose flag is set, with kept dimensions.

    NumPy's pairwise summation by default, as the portable path's ``mean``. For ``centred``
    data (values of the order of their spread, no large common offset) a summed trailing axis
    goes through BLAS as a matrix–vector product with ones: 2-3x faster on a block in cache,
    and its lane-wise accumulation is then as accurate.
    """
    shape, axes = merge_axes(tuple(a.shape), flags)
    if not axes:
        return a
    m = a.reshape(shape)
    last = len(shape) - 1
    if centred and axes[-1] == last:
        m = np.matmul(m.reshape(-1, shape[last]), _ones(shape[last], a.dtype))
        m = m.reshape(shape[:-1] + (1,))
        axes = axes[:-1]
    elif centred and axes == (last - 1,) and math.prod(shape[:-2]) == 1:
        # rows of a (rows, features) block (BN on 2-D input): ones @ block
        m = np.matmul(_ones(shape[-2], a.dtype), m.reshape(shape[-2:])).reshape(shape[:-2] + (1, shape[-1]))
        axes = ()
    if axes:
        m = _add_reduce(m, axes)
    return m.reshape(_keep_shape(tuple(a.shape), flags))


def _add_reduce(m: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``np.add.reduce(m, axes, keepdims=True)``, with float32 (and narrower) sums over a
    non-trailing axis taken in groups of :data:`_ROWS` and the groups added in float64.

    NumPy sums a trailing axis pairwise, but a leading one row after row, so a float32 sum
    over thousands of rows (Σ dy of BN on (N, C) input) errs by ~N·ε: 2.3e-6 of the largest
    β-gradient over 4096 rows. The groups cut that ~10x at the same speed (measured on
    (4096, 1024): 377 vs 407 µs; a float64 accumulator costs 5x)."""
    if m.dtype.itemsize >= 8:
        return np.add.reduce(m, axis=axes, keepdims=True)
    last = m.ndim - 1
    if last in axes:
        m = np.add.reduce(m, axis=last, keepdims=True)
    for ax in sorted((a for a in axes if a != last), reverse=True):
        n = m.shape[ax]
        if n <= 2 * _ROWS:
            m = np.add.reduce(m, axis=ax, keepdims=True)
            continue
        k = n - n % _ROWS
        lead = (slice(None),) * ax
        groups = m[lead + (slice(0, k),)].reshape(m.shape[:ax] + (k // _ROWS, _ROWS) + m.shape[ax + 1:])
        out = np.add.reduce(np.add.reduce(groups, axis=ax + 1), axis=ax, keepdims=True,
                            dtype=np.float64)
        if k < n:
            out += np.add.reduce(m[lead + (slice(k, None),)], axis=ax, keepdims=True)
        m = out.astype(m.dtype)
    return m


def max_over(a: np.ndarray, flags: tuple[bool, ...]) -> np.ndarray:
    """max of a C-contiguous ``a`` over the axes whose flag is set, with kept dimensions."""
    shape, axes = merge_axes(tuple(a.shape), flags)
    if not axes:
        return a
    return np.maximum.reduce(a.reshape(shape), axis=axes, keepdims=True).reshape(
        _keep_shape(tuple(a.shape), flags))


#: rows per float32 partial sum in :func:`_rows_dot_blocked`
_ROWS = 64


def _rows_dot_blocked(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_i a_ij·b_ij for float32 (rows, features) arrays: float32 sums over groups of
    :data:`_ROWS` rows, added in float64. einsum's column sums accumulate row after row, so
    their float32 error grows with the row count (2.3e-6 of the largest value over 4096 rows
    broke the 1e4-offset precision test of dγ); the groups cut it ~8x at the same speed."""
    n, c = a.shape
    k = n - n % _ROWS
    part = np.einsum("kij,kij->kj", a[:k].reshape(-1, _ROWS, c), b[:k].reshape(-1, _ROWS, c))
    out: np.ndarray = part.sum(axis=0, dtype=np.float64)
    if k < n:
        out += np.einsum("ij,ij->j", a[k:], b[k:])
    return out.astype(a.dtype)


def dot_over(a: np.ndarray, b: np.ndarray, flags: tuple[bool, ...], scratch: np.ndarray) -> np.ndarray:
    """Σ a·b over the flagged axes (kept dimensions) of two C-contiguous arrays of one shape.

    Used for sums of products of centred or normalized quantities (Σ (x − μ)², Σ g·x̂), where
    no large offset cancels: a summed trailing axis goes through BLAS dot products (no product
    array is formed, 2x faster than multiply-then-sum); otherwise the product is written into
    ``scratch`` (``a``'s size) and summed.
    """
    shape, axes = merge_axes(tuple(a.shape), flags)
    last = len(shape) - 1
    if axes and axes[-1] == last and shape[last] > 1:
        n = shape[last]
        m: np.ndarray = np.vecdot(a.reshape(-1, n), b.reshape(-1, n)).reshape(shape[:-1] + (1,))
        if axes[:-1]:
            m = np.add.reduce(m, axis=axes[:-1], keepdims=True)
        return m.reshape(_keep_shape(tuple(a.shape), flags))
    if axes == (last - 1,) and math.prod(shape[:-2]) == 1:
        # Σ over the rows of a (rows, features) block in one pass
        a2, b2 = a.reshape(shape[-2:]), b.reshape(shape[-2:])
        if a.dtype.itemsize < 8 and shape[-2] > 2 * _ROWS:
            rows = _rows_dot_blocked(a2, b2)
        else:
            rows = np.einsum("ij,ij->j", a2, b2)
        return rows.reshape(_keep_shape(tuple(a.shape), flags))
    prod = scratch[: a.size].reshape(a.shape)
    np.multiply(a, b, out=prod)
    return sum_over(prod, flags)
