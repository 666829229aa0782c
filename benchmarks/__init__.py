"""``python -m benchmarks``: arraynorm against its peers and against the memory-bandwidth limit.

Normalization is memory-bound, so every case is reported three ways: time (median and min of
interleaved repeats), effective bandwidth (the bytes the op must move over its time) and that
bandwidth as a share of the machine's copy bandwidth measured in the same run. Peers in the same
run: a naive NumPy recipe, PyTorch's ``torch.nn.functional`` ops with autograd on CPU and CUDA,
JAX (``jax.jit`` of the same normalization and its ``jax.vjp``, CPU), and arraynorm with its
fast paths off. Backends that are not installed are reported absent. Per case the note also
gives the implementation arraynorm ran (``numba_jit``, ``numpy_fused``, ``portable``) and the
peak memory of forward+backward over the input; ``--sizes`` adds every normalization case at
smaller sizes (1 MiB up), ``--no-jit`` runs without the numba implementation (as without the
``[jit]`` extra), ``--jit-cold-cache`` reports the JIT's compile times on an empty cache and
``--malloc-default`` leaves glibc's moving allocator thresholds (:mod:`.allocator`: pinned by
default, for every library alike; each CPU timing reports its page faults per call).

Modules: :mod:`.cases` (what is timed, per backend), :mod:`.naive` (the textbook NumPy peer),
:mod:`.timing` (timers, copy bandwidth, peak memory), :mod:`.allocator` (the C allocator's thresholds,
page faults), :mod:`.machine` (machine description),
:mod:`.report` (table, targets, Markdown, chart), :mod:`.harness` (the run), :mod:`.sweep` (an
analysis study's sweep in process and on 1 and 2 Dask worker processes: the ``dask-sweep``
case, its own section of the results), :mod:`.dask_norm` (synchronized batch norm of a large
array generated on 1 and 2 Dask worker processes: the ``dask-norm`` case, its own section).
"""

from __future__ import annotations

import os

# OpenBLAS runs as the user's environment leaves it. (Runs up to 2026-12-02 set
# OPENBLAS_THREAD_TIMEOUT=4, so that OpenBLAS's idle threads slept at once instead of spinning
# beside the next library's threads. Measured on a 2-core Xeon that day, timeout 4 against
# OpenBLAS's default 28: the GN, IN, BN, WN, SN cases moved by at most 4% (IterNorm's median 8%,
# its minimum 4%), while every small matrix product had to wake the threads: a (64, 256)
# Linear layer's forward+backward 199 → 298 µs, deep_stack(200, 256) at batch 64 120 → 151 ms
# (minimum of 7).) A caller may still set it.
if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
    OPENBLAS_NOTE = f"OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']} (set by the caller)"
else:
    OPENBLAS_NOTE = "OpenBLAS defaults (OPENBLAS_THREAD_TIMEOUT not set)"

from .harness import run  # noqa: E402

__all__ = ["run", "OPENBLAS_NOTE"]
