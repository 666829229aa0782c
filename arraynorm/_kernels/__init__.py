"""Optional backend fast paths, selected in one place (DESIGN.md §3.2).

:class:`arraynorm.Normalizer` asks :func:`normalizer_forward` and :func:`normalizer_backward`
first; they return ``None`` where no fast path applies and the portable array-API path runs.
Every fast path computes the portable path's formulas and ``tests/test_kernels.py`` asserts
they agree (outputs, cotangents and the statistics in ``ctx.state``).

Switches
--------
* ``ARRAYNORM_FAST_PATHS=0`` in the environment (read at import) or :func:`set_fast_paths`
  set the *process default*; the context manager :func:`use_fast_paths` overrides it in the
  current context only (a ``contextvars`` variable: the calling thread, or asyncio task), so
  concurrent threads never switch each other. The decision is taken in the calling thread;
  the fast path's worker threads only compute blocks.
* ``ARRAYNORM_THREADS=n`` (or ``set_fast_paths(True, threads=n)``) caps the worker threads of
  the NumPy fast path; default: the CPUs this process may run on.

Fast paths today
----------------
=================  ===========================================================================
backend            path
=================  ===========================================================================
NumPy              :mod:`.numpy_fused` for the standardize and RMS operations on every
                   partition (BN, LN, IN, GN, PN, ghost BN, RMS norm and compositions), for
                   inputs of 2 MiB and more (smaller ones fit in cache, where the portable
                   path is as fast): cache-sized blocks, one read and one write of memory
                   per element in the common layouts, worker threads
CuPy               none yet: the portable path (fused kernels need a GPU to be proven equal)
others             the portable path
=================  ===========================================================================
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from collections.abc import Iterator
from typing import Any

from array_api_compat import is_numpy_namespace

from .._array_api import xp_check_bool, xp_check_int
from .._typing import Namespace
from ._blocks import default_threads

__all__ = ["set_fast_paths", "fast_paths_enabled", "use_fast_paths", "fast_path_threads",
           "normalizer_forward", "normalizer_backward"]

def _threads_from_env() -> int:
    value = os.environ.get("ARRAYNORM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    if value:
        warnings.warn(f"arraynorm: ARRAYNORM_THREADS must be a positive int, got {value!r}; "
                      f"using {default_threads()}", RuntimeWarning, stacklevel=2)
    return default_threads()


_default = os.environ.get("ARRAYNORM_FAST_PATHS", "1").strip().lower() not in ("0", "false", "no", "off")
_threads = _threads_from_env()
# a use_fast_paths block's setting, per context (thread / asyncio task); None: the default
_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar("arraynorm_fast_paths",
                                                                       default=None)



def set_fast_paths(enabled: bool, *, threads: int | None = None) -> bool:
    """Set the process default of the backend fast paths (on or off); return the previous
    default.

    Every thread without a :func:`use_fast_paths` block of its own follows the default,
    threads started later included; inside such a block the block's setting wins.
    ``threads`` (a positive int) caps the worker threads of the NumPy fast path. With fast
    paths off every op runs the portable array-API code.

    Examples
    --------
    >>> import arraynorm as an
    >>> previous = an.set_fast_paths(False)   # portable path only
    >>> _ = an.set_fast_paths(previous)
    """
    global _default, _threads
    xp_check_bool("set_fast_paths", "enabled", enabled)
    if threads is not None:
        _threads = xp_check_int("set_fast_paths", "threads", threads)
    previous, _default = _default, enabled
    return previous


def fast_paths_enabled() -> bool:
    """Whether backend fast paths are used here: the innermost :func:`use_fast_paths` block
    of the current context, else the process default (:func:`set_fast_paths`)."""
    local = _override.get()
    return _default if local is None else local


def fast_path_threads() -> int:
    """Worker threads of the NumPy fast path."""
    return _threads


@contextlib.contextmanager
def use_fast_paths(enabled: bool) -> Iterator[None]:
    """Context manager: fast paths on or off inside the block, in the current context only
    (other threads and asyncio tasks keep theirs); the previous setting after, however
    blocks of different threads overlap.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    >>> with an.use_fast_paths(False):
    ...     portable = an.layer_norm(x)
    >>> bool(np.allclose(an.layer_norm(x), portable, atol=1e-6))
    True
    """
    xp_check_bool("use_fast_paths", "enabled", enabled)
    token = _override.set(enabled)
    try:
        yield
    finally:
        _override.reset(token)


def normalizer_forward(normalizer: Any, xp: Namespace, layout: Any, x: Any, weight: Any,
                       bias: Any) -> tuple[Any, Any] | None:
    """``(y, ctx)`` from a fast path for ``normalizer.forward``, or ``None`` (portable path)."""
    if not fast_paths_enabled():
        return None
    # NumPy: the portable path makes ~10 memory passes; blocks in cache make one, on all cores
    if is_numpy_namespace(xp):
        from . import numpy_fused

        if numpy_fused.supports(normalizer.operation, x, weight, bias):
            return numpy_fused.forward(normalizer, xp, layout, x, weight, bias, _threads)
    return None


def normalizer_backward(normalizer: Any, ctx: Any, dy: Any) -> tuple[Any, Any, Any] | None:
    """``(dx, dweight, dbias)`` from the fast path that made ``ctx``, or ``None``."""
    if not fast_paths_enabled():
        return None
    # NumPy: a context from numpy_fused keeps x and the block plan; same blocks backwards
    from . import numpy_fused

    if isinstance(ctx, numpy_fused.FusedContext) and numpy_fused.supports_cotangent(ctx, dy):
        return numpy_fused.backward(ctx, dy, _threads)
    return None
