"""The switches of the backend implementations: on/off (process default and per context) and
the NumPy implementation's worker threads (see :mod:`arraynorm._kernels`)."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

from .._array_api import xp_check_bool, xp_check_int
from ._threads import fast_path_threads, set_num_threads

__all__ = ["set_fast_paths", "fast_paths_enabled", "use_fast_paths", "fast_path_threads"]


_default = os.environ.get("ARRAYNORM_FAST_PATHS", "1").strip().lower() not in ("0", "false", "no", "off")
# a use_fast_paths block's setting, per context (thread / asyncio task); None: the default
_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar("arraynorm_fast_paths",
                                                                       default=None)



def set_fast_paths(enabled: bool, *, threads: int | None = None) -> bool:
    """Set the process default of the backend fast paths (on or off); return the previous
    default.

    Every thread without a :func:`use_fast_paths` block of its own follows the default,
    threads started later included; inside such a block the block's setting wins.
    ``threads`` (a positive int) sets the worker threads of the NumPy fast path: the same
    setting as :func:`arraynorm.set_num_threads`, which is the one to use. With fast paths off
    every op runs the portable array-API code.

    Examples
    --------
    >>> import arraynorm as an
    >>> previous = an.set_fast_paths(False)   # portable path only
    >>> _ = an.set_fast_paths(previous)
    """
    global _default
    xp_check_bool("set_fast_paths", "enabled", enabled)
    if threads is not None:
        set_num_threads(xp_check_int("set_fast_paths", "threads", threads))
    previous, _default = _default, enabled
    return previous


def fast_paths_enabled() -> bool:
    """Whether backend fast paths are used here: the innermost :func:`use_fast_paths` block
    of the current context, else the process default (:func:`set_fast_paths`).

    Examples
    --------
    >>> import arraynorm as an
    >>> with an.use_fast_paths(False):
    ...     an.fast_paths_enabled()
    False
    """
    local = _override.get()
    return _default if local is None else local


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
