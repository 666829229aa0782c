"""Timers, the copy-bandwidth reference and peak memory.

CPU: wall clock (``time.perf_counter``) around synchronous calls, garbage collection off,
warm-ups first, then repeated runs *interleaved* across backends (one sample of each in turn,
the order rotated every round) so that drift in machine load hits every backend alike.
GPU: ``cupyx.profiler.benchmark``, which brackets the calls with CUDA events; a wall clock
around asynchronous launches would time the launch, not the kernel.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .allocator import minor_faults

__all__ = ["Timed", "interleaved", "copy_bandwidth_cpu", "copy_bandwidth_gpu", "peak_memory"]


@dataclass
class Timed:
    """Samples of one callable, each the mean of ``inner`` back-to-back calls, in seconds."""

    samples: list[float] = field(default_factory=list)
    inner: int = 1
    #: minor page faults per call in each sample (CPU; the process's count, so a spinning
    #: thread pool of another library would add to it — none runs between samples)
    faults: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)


def _gpu_sample(fn: Callable[[], Any], inner: int) -> float:
    from cupyx.profiler import benchmark

    res = benchmark(fn, n_repeat=inner, n_warmup=0)
    return float(np.mean(res.gpu_times[0]))


def _torch_cuda_sample(fn: Callable[[], Any], inner: int) -> float:
    # where CuPy is absent: CUDA events on torch's current stream, the same measurement
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / inner


def _cpu_sample(fn: Callable[[], Any], inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def sampler(device: str) -> Callable[[Callable[[], Any], int], float]:
    """The sample function for a device: ``cpu``, ``cuda`` (CuPy events) or ``cuda-torch``."""
    return {"cpu": _cpu_sample, "cuda": _gpu_sample, "cuda-torch": _torch_cuda_sample}[device]


def interleaved(fns: dict[str, tuple[Callable[[], Any], str]], *, repeats: int, warmup: int,
                min_sample_s: float, settle_s: float = 0.0, wake: bool = True) -> dict[str, Timed]:
    """Time every ``name: (fn, device)`` ``repeats`` times, interleaved.

    Each callable first runs ``warmup`` times (at least once); the warm-up's duration sets how
    many calls one sample averages (``inner``), so that a sample lasts ``min_sample_s``.
    ``settle_s``: an idle pause before each timed sample (and warm-up), so that the thread
    pools the previous backend left spinning (OpenBLAS's idle threads spin ~0.1 s after a
    call, GNU OpenMP's a few ms) are asleep when the next one starts: each backend is timed
    as it runs alone, with the thread settings its users have.
    ``wake``: one untimed call after that pause, before each warm-up and timed sample, so
    that a sample times back-to-back calls and not the first call after an idle spell, which
    pays for waking the thread pools (and, in a VM, the idle virtual CPUs). Measured on the
    2-core Xeon KVM guest, LayerNorm 256×1024 forward+backward, 15 interleaved samples after
    20 ms pauses, two runs each: without the call arraynorm's samples spread 241–304 µs and
    PyTorch's 194–256 (and a warm-up that hit a slow wake-up left a sample of a few calls,
    1–15 ms each); with it 235–264 and 175–224.
    """
    out: dict[str, Timed] = {}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for name, (fn, device) in fns.items():
            sample = sampler(device)
            time.sleep(settle_s)
            if wake:
                fn()
            t = sample(fn, 1)
            for _ in range(max(0, warmup - 1)):
                t = min(t, sample(fn, 1))
            out[name] = Timed(inner=max(1, min(1000, int(min_sample_s / max(t, 1e-9)))))
        names = list(fns)
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn, device = fns[name]
                time.sleep(settle_s)
                if wake:
                    fn()
                f0 = minor_faults()
                out[name].samples.append(sampler(device)(fn, out[name].inner))
                out[name].faults.append((minor_faults() - f0) / out[name].inner)
    finally:
        if gc_was:
            gc.enable()
    return out


def copy_bandwidth_cpu(nbytes: int = 256 * 2**20, repeats: int = 7) -> dict[str, float]:
    """NumPy copy bandwidth: bytes read + bytes written per second of ``np.copyto`` between two
    ``nbytes`` arrays (far larger than the caches), best of ``repeats``."""
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        ts.append(time.perf_counter() - t0)
    return {"gbps": 2 * a.nbytes / min(ts) / 1e9, "gbps_median": 2 * a.nbytes / statistics.median(ts) / 1e9,
            "bytes": a.nbytes, "method": "numpy.copyto, read+write bytes / best time"}


def copy_bandwidth_gpu(nbytes: int = 1024 * 2**20, repeats: int = 20) -> dict[str, Any] | None:
    """Device-to-device copy bandwidth, read + write bytes per second of the best repeat:
    ``cudaMemcpyAsync`` timed with CUDA events through CuPy (``cupyx.profiler.benchmark``), or
    through PyTorch's events where only PyTorch sees the device; ``None`` without a device."""
    try:
        import cupy as cp
        from cupyx.profiler import benchmark

        if cp.cuda.runtime.getDeviceCount() > 0:
            a = cp.ones(nbytes // 4, cp.float32)
            b = cp.empty_like(a)
            res = benchmark(lambda: b.data.copy_from_device_async(a.data, a.nbytes),
                            n_repeat=repeats, n_warmup=3)
            t = res.gpu_times[0]
            return {"gbps": 2 * a.nbytes / float(np.min(t)) / 1e9,
                    "gbps_median": 2 * a.nbytes / float(np.median(t)) / 1e9, "bytes": int(a.nbytes),
                    "method": "cudaMemcpyAsync device-to-device, CUDA events (cupyx.profiler.benchmark)"}
    except Exception:
        pass
    try:
        import torch

        if not torch.cuda.is_available():
            return None
    except Exception:
        return None
    a = torch.ones(nbytes // 4, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    ts = [_torch_cuda_sample(lambda: b.copy_(a), 1) for _ in range(repeats)]
    return {"gbps": 2 * nbytes / min(ts) / 1e9, "gbps_median": 2 * nbytes / statistics.median(ts) / 1e9,
            "bytes": nbytes, "method": "torch Tensor.copy_ device-to-device, CUDA events"}


def peak_memory(fn: Callable[[], Any], kind: str) -> int | None:
    """Peak bytes allocated while ``fn()`` runs, beyond what was allocated before.

    ``numpy``: tracemalloc (NumPy reports its buffers to it), after arraynorm's output pool
    dropped its idle buffers (a reused one is no new allocation); ``cupy``: the default memory
    pool's high-water mark after its cache is emptied; ``torch-cuda``: the CUDA caching
    allocator's peak. ``None`` where nothing measures it (PyTorch CPU).
    """
    if kind == "numpy":
        import arraynorm

        gc.collect()
        arraynorm.free_buffer_pool()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            out = fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        del out
        return peak - base
    if kind == "cupy":
        import cupy as cp

        pool = cp.get_default_memory_pool()
        cp.cuda.Device().synchronize()
        pool.free_all_blocks()
        base = pool.used_bytes()
        out = fn()
        cp.cuda.Device().synchronize()
        peak = pool.total_bytes()
        del out
        return peak - base
    if kind == "torch-cuda":
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del out
        return peak - base
    return None
