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
``[jit]`` extra) and ``--jit-cold-cache`` reports the JIT's compile times on an empty cache.

Modules: :mod:`.cases` (what is timed, per backend), :mod:`.naive` (the textbook NumPy peer),
:mod:`.timing` (timers, copy bandwidth, peak memory), :mod:`.machine` (machine description),
:mod:`.report` (table, targets, Markdown, chart), :mod:`.harness` (the run), :mod:`.sweep` (an
analysis study's sweep in process and on 1 and 2 Dask worker processes: the ``dask-sweep``
case, its own section of the results), :mod:`.dask_norm` (synchronized batch norm of a large
array generated on 1 and 2 Dask worker processes: the ``dask-norm`` case, its own section).
"""

from __future__ import annotations

import os
import sys

# On a machine with few cores OpenBLAS's idle threads spin for a while after each call and take
# the CPU from the next library's threads in an interleaved run. A short timeout (2^4 cycles, the
# minimum) puts them to sleep at once; it must be in the environment before NumPy loads OpenBLAS.
if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
    OPENBLAS_NOTE = f"OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']} (set by the caller)"
elif "numpy" in sys.modules:
    OPENBLAS_NOTE = "OPENBLAS_THREAD_TIMEOUT not in effect (NumPy was imported before benchmarks)"
else:
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"
    OPENBLAS_NOTE = "OPENBLAS_THREAD_TIMEOUT=4 set by benchmarks before NumPy loaded"

from .harness import run  # noqa: E402

__all__ = ["run", "OPENBLAS_NOTE"]
