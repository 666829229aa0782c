"""Implementations of a normalizer and the one selector that chooses among them (DESIGN.md §4).

An implementation (:class:`arraynorm._context.Implementation`) runs a
:class:`~arraynorm.Normalizer` on one input and owns its forward, backward and forward-mode
product: :data:`PORTABLE` (the stages' array-API code, every backend, the reference) and the
backend ones in :data:`IMPLEMENTATIONS`. :func:`select` asks each backend implementation, in
order, whether it runs this input (its ``supports``: backend, operation, recovery, dtype and
the size thresholds measured in ``benchmarks/``) and falls back to the portable one; the
context records the choice, so the backward and the JVP are answered by the implementation
that ran the forward. Every backend implementation computes the portable path's formulas and
``tests/test_kernels.py`` asserts they agree (outputs, cotangents, JVPs and the statistics in
``ctx.state``).

Adding one (a Dask one-pass reduction, CuPy fused kernels): a module
here with an object that has ``name``, ``supports``, ``forward``, ``backward`` and ``jvp``,
and one line in :data:`IMPLEMENTATIONS` (docs/architecture.md).

Switches
--------
* ``ARRAYNORM_FAST_PATHS=0`` in the environment (read at import) or :func:`set_fast_paths`
  set the *process default*; the context manager :func:`use_fast_paths` overrides it in the
  current context only (a ``contextvars`` variable: the calling thread, or asyncio task), so
  concurrent threads never switch each other. The decision is taken in the calling thread;
  the fast path's worker threads only compute blocks.
* :func:`persist_statistics` (Dask): within it, normalizers whose statistics span chunks
  persist them (and the backward its sums), so no pass holds the input (:mod:`.dask_moments`).
* :func:`set_num_threads` (``arraynorm.set_num_threads``; ``set_fast_paths(True, threads=n)``
  is the same setting), else ``ARRAYNORM_THREADS=n``, sets the worker threads of the NumPy
  fast path and of the numba loops; default: the CPUs this process may run on, lowered to
  ``OMP_NUM_THREADS`` and to
  the limits in force under ``threadpoolctl.threadpool_limits`` (:mod:`._threads`).
  :func:`fast_path_threads` is the count every implementation with a thread pool asks.
* ``ARRAYNORM_JIT=0`` (read on first use) keeps the numba implementation out, as if the
  ``[jit]`` extra were not installed (the benchmarks' "without the extra").
* :func:`set_buffer_pool` (``ARRAYNORM_BUFFER_POOL_BYTES``, default 1 GiB; 0 off): the NumPy
  fast paths take their outputs of 256 KiB or more from a bounded pool and hand a buffer out
  again once no array refers to it, sparing fresh pages' faults and zeroing
  (:mod:`._buffers`); :func:`free_buffer_pool` drops the idle ones.

Implementations today
---------------------
=================  ===========================================================================
backend            implementation
=================  ===========================================================================
NumPy, numba       :mod:`.numba_jit` (the ``[jit]`` extra; numba imported on the first NumPy
installed          input asked about; ``ARRAYNORM_JIT=0`` turns it off) for the standardize
                   and RMS operations, float32/float64, 128 KiB and more (any size for
                   a ``repeated`` normalizer: the ``nn`` layers), with the affine,
                   conditional-affine or no recovery, on LN/RMS over trailing axes, IN, GN
                   (rows of at most 1 MiB) and BN, ghost BN (on (N, C), NCHW or NHWC):
                   compiled fused loops, one memory read per row in the forward,
                   exact merged block moments for BN, float64 accumulation, parallel over
                   rows/blocks with :func:`fast_path_threads` threads from 512 KiB; measured
                   0.28–0.96× :mod:`.numpy_fused` (the module docstring has the
                   measurements, taken on a loaded machine, and the cases it leaves to
                   :mod:`.numpy_fused`: float16, other layouts); its JVP is the portable
                   formula on its statistics. Also the per-unit weight normalization
                   (``weight_norm`` along axis 0, float32/float64, 128 KiB and more):
                   one compiled sweep forward, one backward
NumPy              :mod:`.numpy_fused` for the standardize and RMS operations on every
                   partition with the affine, conditional-affine or no recovery (BN, LN, IN,
                   GN, PN, ghost BN, RMS norm, AdaIN and compositions), for inputs of 2 MiB
                   and more (smaller ones fit in cache, where the portable path is as fast):
                   cache-sized blocks, one read and one write of memory per element in the
                   common layouts, worker threads; its JVP is the portable formula on its
                   statistics
Dask               :mod:`.dask_moments` for the standardize and RMS operations on every
                   partition and recovery: the statistics in one pass over the chunks
                   (per-chunk count, shifted mean and scaled M2 merged by Chan's formula in
                   ``dask.array.reduction``), then ŷ elementwise with the global statistics
                   (synchronized BN); backward and JVP the portable closed forms; lazy
                   (:func:`persist_statistics`: statistics persisted, for inputs beyond
                   the cluster's memory)
CuPy               none yet: :data:`PORTABLE` (fused kernels need a GPU to be proven equal)
others             :data:`PORTABLE` (:mod:`.portable`)
=================  ===========================================================================
"""

from __future__ import annotations

from typing import Any

from .._context import Implementation, Stages
from .._typing import Array, Namespace
from ..partition import Layout
from . import dask_moments, numba_jit, numpy_fused
from ._buffers import buffer_pool_info, free_buffer_pool, set_buffer_pool
from ._switches import fast_paths_enabled, set_fast_paths, use_fast_paths
from ._threads import fast_path_threads, get_num_threads, set_num_threads
from .dask_moments import persist_statistics
from .portable import PORTABLE

__all__ = ["set_fast_paths", "fast_paths_enabled", "use_fast_paths", "fast_path_threads",
           "set_num_threads", "get_num_threads", "persist_statistics",
           "set_buffer_pool", "free_buffer_pool", "buffer_pool_info",
           "select", "selection_settings", "implementation", "IMPLEMENTATIONS", "PORTABLE"]

#: the backend implementations, asked in this order; the first that supports an input runs it
IMPLEMENTATIONS: tuple[Implementation, ...] = (
    numba_jit.NUMBA_JIT,      # NumPy with numba installed: compiled fused loops, where measured faster
    numpy_fused.NUMPY_FUSED,  # NumPy: cache-sized blocks, one memory pass, worker threads
    dask_moments.DASK_MOMENTS,  # Dask: one-pass mergeable statistics, synchronized across chunks
)


def implementation(name: str | Implementation) -> Implementation:
    """The implementation called ``name`` (``"portable"`` or one of :data:`IMPLEMENTATIONS`),
    or ``name`` itself when it is an implementation object."""
    if not isinstance(name, str):
        return name
    known = {impl.name: impl for impl in (PORTABLE, *IMPLEMENTATIONS)}
    if name not in known:
        raise ValueError(f"implementation must be one of {sorted(known)} or an implementation "
                         f"object, got {name!r}")
    return known[name]


def selection_settings() -> tuple[Any, ...]:
    """What :func:`select` reads besides the input: the fast-path switch, the implementations
    asked and their size thresholds (module constants that tests, and users, may change);
    part of every :class:`~arraynorm.Normalizer`'s memo key, so a remembered selection never
    outlives them."""
    return (fast_paths_enabled(), IMPLEMENTATIONS, numba_jit.MIN_BYTES, numba_jit.MAX_ROW_BYTES,
            numpy_fused.MIN_BYTES, numpy_fused.BLOCK_BYTES)


def select(requested: str | Implementation | None, stages: Stages, xp: Namespace,
           layout: Layout, x: Array, weight: Array | None, bias: Array | None) -> Implementation:
    """The implementation that runs ``stages`` on this input: the portable one whenever
    fast paths are off (:func:`use_fast_paths`), else ``requested`` if given (``ValueError``
    when it does not support the input), else the first of :data:`IMPLEMENTATIONS` that
    does, else the portable one. Decided from namespaces, shapes, dtypes and types only."""
    if not fast_paths_enabled():
        return PORTABLE
    if requested is not None:
        impl = implementation(requested)
        if not impl.supports(stages, xp, layout, x, weight, bias):
            raise ValueError(f"{stages.name}: the {impl.name!r} implementation does not run this "
                             f"input (a {type(x).__name__} of shape {tuple(x.shape)} and dtype "
                             f"{x.dtype}); pass implementation=None to let the selector choose")
        return impl
    for impl in IMPLEMENTATIONS:
        if impl.supports(stages, xp, layout, x, weight, bias):
            return impl
    return PORTABLE
