"""The C allocator's state, which decides whether a library's fresh outputs page-fault.

NumPy and PyTorch (CPU) both take their arrays' memory from the C library's ``malloc``. glibc
moves two thresholds as a process runs: an allocation from 128 KiB up is first mapped afresh
(``mmap``) and, once such a block is freed, the threshold rises to its size; a heap whose free
top exceeds twice that threshold is handed back to the kernel (``M_TRIM_THRESHOLD``). Which
library's 1–32 MiB outputs land in memory that was handed back — and so page-fault on every
call, ~1 µs per 4 KiB page on the 2-core Xeon — then depends on what ran before in the
process. Measured there, LayerNorm forward+backward, one process, the two libraries
interleaved: at 1024×1024 float32 arraynorm 869 µs (5.5 faults a call) against PyTorch 1037 µs
(986 faults) → 0.84×; with the thresholds pinned 878 against 620 µs (no faults) → 1.42×. In
another process (arraynorm first, PyTorch imported later) arraynorm paid 480 faults a call at
256×1024: 610 µs against 264 µs pinned.

So every run pins both thresholds (:func:`pin`) for every library alike, records that in its
settings, and reports the minor page faults per call that remain
(:func:`minor_faults`; they remain for arrays above the pinned mmap threshold, 32 MiB, fresh
on every call in every library). ``--malloc-default`` leaves glibc's moving thresholds, as a
process that has not set them runs. A user gets the pinned behaviour with the environment
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`` (glibc), or another
allocator (jemalloc, tcmalloc) preloaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

__all__ = ["pin", "minor_faults", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: glibc's largest allowed mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): allocations
#: below it come from the heap
MMAP_THRESHOLD = 32 * 2**20
#: free heap top kept rather than handed back to the kernel
TRIM_THRESHOLD = 2**30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def pin() -> str:
    """Fix glibc's mmap and trim thresholds for this process (``mallopt``); returns what was
    done, for the run's settings. Not glibc (macOS, musl): nothing is changed, and it says so."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version
    except (OSError, AttributeError, TypeError):
        return "allocator defaults (not glibc: thresholds not pinned)"
    gnu.restype = ctypes.c_char_p
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        return f"glibc {gnu().decode()}: mallopt refused the thresholds (defaults)"
    return (f"glibc {gnu().decode()} thresholds pinned: M_MMAP_THRESHOLD={MMAP_THRESHOLD} "
            f"(32 MiB), M_TRIM_THRESHOLD={TRIM_THRESHOLD} (1 GiB)")


def minor_faults() -> int:
    """This process's minor page faults so far (``getrusage``)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
