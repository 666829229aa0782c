"""What machine a result comes from: CPU, memory, load, library versions, BLAS and threads,
GPU, and the environment settings that change timings."""

from __future__ import annotations

import datetime
import os
import platform
import re
from typing import Any

__all__ = ["describe", "slug", "THREAD_ENV"]

#: environment variables that change thread behaviour, recorded with every result
THREAD_ENV = ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
              "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "ARRAYNORM_FAST_PATHS", "ARRAYNORM_THREADS")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _caches() -> dict[str, str]:
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(os.listdir(base)):
            p = os.path.join(base, idx)
            with open(os.path.join(p, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(p, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(p, "size")) as f:
                size = f.read().strip()
            if kind != "Instruction":
                out[f"L{level}"] = size
    except OSError:
        pass
    return out


def _gpu() -> dict[str, Any] | None:
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() < 1:
            return None
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return {"name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_gib": round(props["totalGlobalMem"] / 2**30, 1), "cupy": cp.__version__,
                "cuda_runtime": cp.cuda.runtime.runtimeGetVersion()}
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return {"name": torch.cuda.get_device_name(0), "cupy": None}
    except Exception:
        pass
    return None


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for mod in ("numpy", "arraynorm", "array_api_compat", "torch", "cupy", "threadpoolctl"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = None
    return out


def _threadpools() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    keep = ("user_api", "internal_api", "num_threads", "version", "threading_layer", "architecture")
    return [{k: d.get(k) for k in keep} for d in threadpool_info()]


def describe(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready description of this machine and process, now."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus_available": cpus,
        "caches": _caches(),
        "memory_gib": _mem_gib(),
        "loadavg_1_5_15": load,
        "gpu": _gpu(),
        "versions": _versions(),
        "threadpools": _threadpools(),
        "env": {k: os.environ.get(k) for k in THREAD_ENV},
    }
    if extra:
        info.update(extra)
    return info


def slug(info: dict[str, Any]) -> str:
    """A file-name-safe ``<date>-<cpu>-<n>c[-<gpu>]`` for results files."""
    cpu = re.sub(r"\(.*?\)|cpu|processor|\d+-core", "", info["cpu"], flags=re.I)
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:24]
    parts = [info["date"][:10], cpu or "cpu", f"{info['cpus_available']}c"]
    if info.get("gpu"):
        parts.append(re.sub(r"[^a-z0-9]+", "-", info["gpu"]["name"].lower()).strip("-")[:24])
    return "-".join(parts)
