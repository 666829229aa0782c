"""How many worker threads the NumPy fast path uses, and the public control of it.

The count is, first match wins:

1. :func:`set_num_threads` (``set_fast_paths(threads=n)`` is the same setting);
2. ``ARRAYNORM_THREADS`` in the environment (read at import);
3. otherwise the CPUs this process may run on (``os.sched_getaffinity``), lowered to
   ``OMP_NUM_THREADS`` when that is set (read at import) and to the BLAS/OpenMP limits in force
   under ``threadpoolctl.threadpool_limits`` — so one control, the usual one, keeps several
   processes or Dask workers (which set ``OMP_NUM_THREADS=1``) from oversubscribing the CPUs.

Both environment controls and the limits only *lower* the automatic count; the lowest wins
(``OMP_NUM_THREADS=4`` with ``threadpool_limits(1)`` in force gives 1). The limits are read
only when :mod:`threadpoolctl` has already been imported by someone (it is optional and
arraynorm never imports it itself): whoever calls ``threadpool_limits`` has imported it. The
libraries are found once, on the first read, and each read then asks each library its current
count (a C call each, microseconds), since :func:`fast_path_threads` is called once per
fast-path op; a BLAS or OpenMP library loaded after that first read is not seen.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Any

from .._array_api import xp_check_int
from ._blocks import default_threads

__all__ = ["set_num_threads", "get_num_threads", "fast_path_threads"]


def _positive_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    # OpenMP accepts a list of counts per nesting level ("4,2"): the first is the outer one
    head = value.split(",")[0].strip() if name == "OMP_NUM_THREADS" else value
    if head.isdigit() and int(head) > 0:
        return int(head)
    if value:
        warnings.warn(f"arraynorm: {name} must be a positive int, got {value!r}; ignored",
                      RuntimeWarning, stacklevel=3)
    return None


_explicit: int | None = None
_env = _positive_env("ARRAYNORM_THREADS")
_omp = _positive_env("OMP_NUM_THREADS")
_cpus = default_threads()

_controller: Any = None   # a threadpoolctl.ThreadpoolController, made on the first read
_controller_lock = threading.Lock()


def _limits_in_force() -> int | None:
    """The lowest thread count of the BLAS/OpenMP libraries threadpoolctl sees, or None when
    threadpoolctl is not imported (or sees none)."""
    global _controller
    tpc = sys.modules.get("threadpoolctl")
    if tpc is None:
        return None
    if _controller is None:
        with _controller_lock:
            if _controller is None:
                try:
                    _controller = tpc.ThreadpoolController()
                except Exception:  # noqa: BLE001 - an old or broken threadpoolctl: no limits
                    _controller = ()
    counts = []
    for lib in getattr(_controller, "lib_controllers", ()):
        try:
            n = lib.num_threads
        except Exception:  # noqa: BLE001 - a library that cannot say is no limit
            continue
        if isinstance(n, int) and n > 0:
            counts.append(n)
    return min(counts) if counts else None


def fast_path_threads() -> int:
    """Worker threads the NumPy fast path (and any backend implementation with a thread pool)
    uses for the next op: :func:`set_num_threads`, else ``ARRAYNORM_THREADS``, else the CPUs
    this process may use lowered to ``OMP_NUM_THREADS`` and the threadpoolctl limits in force
    (see :mod:`arraynorm._kernels._threads`). Cheap: called once per op."""
    if _explicit is not None:
        return _explicit
    if _env is not None:
        return _env
    n = _cpus if _omp is None else min(_cpus, _omp)
    limit = _limits_in_force()
    return max(1, n if limit is None else min(n, limit))


def set_num_threads(n: int | None) -> int | None:
    """Set the worker threads of arraynorm's own thread pool (the NumPy fast path); return the
    previous explicit setting (None: automatic).

    ``n`` is a positive int, or None to go back to the automatic count: ``ARRAYNORM_THREADS``
    if set, else the CPUs this process may run on, lowered to ``OMP_NUM_THREADS`` and to the
    limits in force under ``threadpoolctl.threadpool_limits`` (read only when threadpoolctl is
    already imported). An explicit setting wins over all of them. Results do not depend on
    the count beyond the rounding of the merged partial sums (same count, same bits).
    PyTorch's ``torch.set_num_threads`` is the analogue; unlike it this one does not change
    BLAS's own threads (use threadpoolctl for those).

    Examples
    --------
    >>> import arraynorm as an
    >>> previous = an.set_num_threads(2)
    >>> an.get_num_threads()
    2
    >>> _ = an.set_num_threads(previous)
    """
    global _explicit
    if n is not None:
        n = xp_check_int("set_num_threads", "n", n, strict_type=True)
    previous, _explicit = _explicit, n
    return previous


def get_num_threads() -> int:
    """The worker threads arraynorm's NumPy fast path would use now (:func:`set_num_threads`).

    Examples
    --------
    >>> import arraynorm as an
    >>> an.get_num_threads() >= 1
    True
    """
    return fast_path_threads()
