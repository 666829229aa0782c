"""A bounded pool of the NumPy fast paths' large outputs (y, dx, WeightNorm's w and dv),
reused once nothing but the pool refers to them.

Why: glibc hands a request of 32 MiB or more (its largest mmap threshold) straight to the
kernel, which maps fresh pages and zeroes each on its first touch, and with its default
(moving) thresholds smaller requests often go the same way (the heap top is trimmed after
a few large frees). A 256 MiB output then costs a fault per page and a second write of
every byte before the op writes it. Measured on the 2-core Xeon KVM guest, LayerNorm
forward+backward of float32 (16384, 4096) with the JIT loops, glibc's thresholds pinned
(median of 5): 96.7 ms with fresh y and dx, 69.3 ms reusing them (55 → 77% of the copy
bandwidth); (256, 1024) under glibc's default thresholds 850–930 µs (480 faults a call),
230–260 µs without the faults. PyTorch's CPU allocator does not cache (its outputs pay the
same); CuPy's default memory pool is this for the GPU.

Rule: requests of :data:`MIN_BYTES` or more take an idle buffer of exactly that size (one
the caller no longer refers to: no array, view or buffer export of it is alive, which
CPython's reference count tells exactly; among the :data:`SCAN` of that size handed out
last and first), else a new one, pooled while the pool's buffers (idle and in use) stay within
its limit (:func:`set_buffer_pool`; default :data:`DEFAULT_LIMIT`, 1 GiB or an eighth of
the memory; ``ARRAYNORM_BUFFER_POOL_BYTES`` in the environment, read at import); to make
room, idle buffers among the :data:`SCAN` handed out longest ago are dropped, where that
makes enough. Lowering the limit lets go of buffers in use too (their arrays keep them). So
the pool never holds more than its limit. A returned array is a view of the pooled buffer
(``.base`` the buffer, ``flags.owndata`` False); its contents are undefined, as
``numpy.empty``'s. Off (limit 0) where reference counts do not tell (not CPython, or a
free-threaded build). A pool call re-entered in its own thread (a finalizer run by a
garbage collection inside one) gets a plain ``numpy.empty``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._array_api import xp_check_int

__all__ = ["empty", "set_buffer_pool", "free_buffer_pool", "buffer_pool_info", "MIN_BYTES",
           "DEFAULT_LIMIT"]

#: smallest request the pool serves: below it glibc's heap serves requests in place (the
#: fault cost is a few µs) and a pool lookup would cost as much
MIN_BYTES = 256 << 10


def _default_limit() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 30
    try:  # a container's memory limit (cgroup v2), where it is lower than the machine's
        with open("/sys/fs/cgroup/memory.max") as f:
            raw = f.read().strip()
        if raw.isdigit():
            ram = min(ram, int(raw))
    except OSError:
        pass
    return int(min(1 << 30, ram // 8))


#: the default limit on the bytes the pool holds (idle and in use): 1 GiB, or an eighth of
#: the machine's memory (or of the container's cgroup limit) where that is less
DEFAULT_LIMIT = _default_limit()


def _refs(slot: list[np.ndarray]) -> int:
    return sys.getrefcount(slot[0])


def _counts_tell() -> bool:
    if sys.implementation.name != "cpython":
        return False
    gil = getattr(sys, "_is_gil_enabled", None)
    return gil is None or bool(gil())


def _env_limit() -> int:
    raw = os.environ.get("ARRAYNORM_BUFFER_POOL_BYTES", "").strip()
    if not raw:
        return DEFAULT_LIMIT
    try:
        v = int(raw)
    except ValueError:
        raise ValueError(f"ARRAYNORM_BUFFER_POOL_BYTES must be a non-negative integer, got {raw!r}") from None
    if v < 0:
        raise ValueError(f"ARRAYNORM_BUFFER_POOL_BYTES must be a non-negative integer, got {raw!r}")
    return v


_lock = threading.Lock()
# a pool call in progress in this thread: a garbage collection run inside one may call a
# finalizer that normalizes (and so asks the pool) in the same thread, which must neither
# wait for the lock it holds nor change the dicts under the outer call's loop
_busy = threading.local()
# each pooled buffer in a one-element list (its slot), so that its reference count is the
# slot's one plus the caller's: all slots in least-recently-handed-out order (for dropping),
# and those of each size in that order (for handing out)
_slots: OrderedDict[int, list[np.ndarray]] = OrderedDict()
_by_size: dict[int, OrderedDict[int, list[np.ndarray]]] = {}
_held = 0
_limit = _env_limit() if _counts_tell() else 0
_IDLE = _refs([np.empty(1, np.uint8)])  # the count of a buffer only its slot refers to
#: buffers a request looks at: of its size to hand out, the SCAN/2 handed out last and the
#: SCAN/2 handed out first; of all, the SCAN handed out first to drop when the pool is full.
#: Bounded, so that a pool of many buffers in use (a model's kept activations) costs a call
#: a few µs, not a scan of all (~0.1 µs a buffer)
SCAN = 16


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _locked() -> Iterator[bool]:
    """The pool's lock, or ``False`` (without it) where this thread is already inside a pool
    call (re-entered from a finalizer)."""
    if getattr(_busy, "on", False):
        yield False
        return
    with _lock:
        _busy.on = True
        try:
            yield True
        finally:
            _busy.on = False


def _untrack(key: int) -> int:
    global _held
    slot = _slots.pop(key)
    n = slot[0].nbytes
    same = _by_size[n]
    del same[key]
    if not same:
        del _by_size[n]
    _held -= n
    return n


def _idle_of(same: OrderedDict[int, list[np.ndarray]]) -> int | None:
    """The key of an idle buffer among ``same`` (one size): the :data:`SCAN`/2 handed out
    last (the one a loop just let go of), then the :data:`SCAN`/2 handed out first (those a
    model kept longest, free again at its next step); ``None`` if none."""
    half = SCAN // 2
    for i, key in enumerate(reversed(same)):
        if i == half:
            break
        if _refs(same[key]) == _IDLE:
            return int(key)
    stop = min(half, len(same) - half)  # those not looked at already
    for i, key in enumerate(same):
        if i >= stop:
            break
        if _refs(same[key]) == _IDLE:
            return key
    return None


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``numpy.empty(shape, dtype)`` (C order), from the pool when it is large enough."""
    global _held
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes < MIN_BYTES or _limit == 0 or getattr(_busy, "on", False):
        return np.empty(shape, dt)  # (the last: re-entered from inside a pool call)
    # _locked() spelled out: its generator cost this hot path 1.7 µs a call (2.9 → 1.2 µs)
    with _lock:
        _busy.on = True
        try:
            same = _by_size.get(nbytes)
            key = None if same is None else _idle_of(same)
            if key is not None:
                same.move_to_end(key)  # type: ignore[union-attr]
                _slots.move_to_end(key)
                out: np.ndarray = _slots[key][0].view(dt).reshape(shape)
                return out
            need = _held + nbytes - _limit
            if need > 0:
                idle = [k for k, sl in itertools.islice(_slots.items(), SCAN) if _refs(sl) == _IDLE]
                if sum(_slots[k][0].nbytes for k in idle) >= need:  # else they may serve later
                    for k in idle:
                        if need <= 0:
                            break
                        need -= _untrack(k)
            base = np.empty(nbytes, np.uint8)
            if need <= 0:
                key = id(base)
                slot = [base]
                _slots[key] = slot
                _by_size.setdefault(nbytes, OrderedDict())[key] = slot
                _held += nbytes
            out = base.view(dt).reshape(shape)
            return out
        finally:
            _busy.on = False


def _drop(need: int, in_use: bool) -> int:
    """Drop idle buffers (and, with ``in_use``, then those in use: their arrays keep them),
    least recently handed out first, until ``need`` bytes are dropped or none is left; the
    bytes dropped. Called with the lock held."""
    freed = 0
    for idle_only in (True, False) if in_use else (True,):
        for key in list(_slots):
            if freed >= need:
                return freed
            if not idle_only or _refs(_slots[key]) == _IDLE:
                freed += _untrack(key)
    return freed


def free_buffer_pool() -> int:
    """Drop the pool's idle buffers (those no array refers to any more); return the bytes
    freed. Buffers still in use stay pooled, to be reused once they are idle.

    Examples
    --------
    >>> import arraynorm as an
    >>> an.free_buffer_pool() >= 0
    True
    """
    with _locked() as mine:
        return _drop(sys.maxsize, in_use=False) if mine else 0


def set_buffer_pool(max_bytes: int) -> int:
    """Set the most bytes the NumPy fast paths' output pool holds (idle buffers and those in
    use); return the previous limit. Over the new limit the pool drops idle buffers, then
    lets go of buffers in use (the arrays using them keep them); 0 turns it off and empties
    it.

    The fast paths (the ``[jit]`` loops, the NumPy fused path, WeightNorm's compiled sweep)
    take their outputs of 256 KiB or more from the pool: a buffer is handed out again once
    no array refers to it, which spares the page faults and the kernel's zeroing of fresh
    memory (LayerNorm forward+backward of a 256 MiB input: 97 → 69 ms on a 2-core Xeon).
    Default 1 GiB, or an eighth of the machine's memory where that is less
    (``ARRAYNORM_BUFFER_POOL_BYTES`` in the environment, read at import). Like
    CuPy's memory pool; PyTorch's CPU allocator keeps nothing.

    Examples
    --------
    >>> import arraynorm as an
    >>> previous = an.set_buffer_pool(0)        # off: every output is a fresh numpy.empty
    >>> _ = an.set_buffer_pool(previous)
    """
    global _limit
    max_bytes = xp_check_int("set_buffer_pool", "max_bytes", max_bytes, minimum=0, strict_type=True)
    if max_bytes and not _counts_tell():
        raise ValueError("set_buffer_pool: this Python cannot tell when a buffer is free "
                         f"({sys.implementation.name}, free-threaded or not CPython); the pool stays off")
    with _locked() as mine:
        if not mine:
            raise RuntimeError("set_buffer_pool: called from inside a pool call (a finalizer?)")
        previous, _limit = _limit, max_bytes
        if _held > _limit:  # idle ones first; then the pool lets go of buffers still in use
            _drop(_held - _limit, in_use=True)
    return previous


def buffer_pool_info() -> dict[str, int]:
    """The pool's state: ``limit``, ``held`` (bytes of its buffers), ``idle`` (bytes of
    those no array refers to), ``buffers`` (their number)."""
    with _locked():  # re-entered: read as it stands
        idle = sum(s[0].nbytes for s in list(_slots.values()) if _refs(s) == _IDLE)
        return {"limit": _limit, "held": _held, "idle": idle, "buffers": len(_slots)}
