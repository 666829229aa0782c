"""Where a study computes: the array backend, the dtype, the threads, and the versions to cite.

Studies build their models and data on the host with NumPy generators (the same seed gives the
same model on every backend, as :mod:`arraynorm.nn.init` does) and compute with arraynorm on
the chosen backend; results come back to NumPy float64 for SciPy.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import platform
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import arraynorm
from arraynorm._array_api import xp_from_host, xp_resolve_namespace, xp_to_host_numpy

__all__ = ["BACKENDS", "DTYPES", "Backend", "thread_limits", "limit_threads", "thread_info",
           "versions", "point_rng"]

BACKENDS = ("numpy", "cupy", "torch", "array_api_strict", "dask")
DTYPES = ("float64", "float32")

_MODULES = {"numpy": "numpy", "cupy": "cupy", "torch": "torch",
            "array_api_strict": "array_api_strict", "dask": "dask.array"}


@dataclass(frozen=True)
class Backend:
    """An array library (by name) and a floating dtype (by name).

    >>> b = Backend("numpy", "float64")
    >>> b.asarray(np.ones((2, 3))).dtype
    dtype('float64')
    """

    name: str = "numpy"
    dtype_name: str = "float64"

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.name!r}")
        if self.dtype_name not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype_name!r}")

    @functools.cached_property
    def xp(self) -> Any:
        """The array-API namespace (array-api-compat's wrapper where there is one)."""
        try:
            return xp_resolve_namespace(_MODULES[self.name])
        except ValueError as exc:
            raise ValueError(f"backend {self.name!r} is not usable here: {exc}") from None

    @property
    def dtype(self) -> Any:
        return getattr(self.xp, self.dtype_name)

    def asarray(self, host: Any) -> Any:
        """A host (NumPy) array as an array of this backend, in this dtype."""
        return xp_from_host(np.asarray(host, dtype=np.float64), self.xp, dtype=self.dtype)

    @staticmethod
    def to_numpy(a: Any) -> np.ndarray:
        """Any backend's array as a float64 NumPy array (computing Dask graphs, copying from
        a GPU)."""
        return np.asarray(xp_to_host_numpy(a), dtype=np.float64)

    def version(self) -> str:
        mod = importlib.import_module(_MODULES[self.name].split(".")[0])
        return str(getattr(mod, "__version__", "?"))


def versions(backend: Backend | None = None) -> dict[str, str]:
    """Library versions and the machine, for a result's ``params``."""
    import scipy

    out = {"python": platform.python_version(), "numpy": np.__version__,
           "scipy": scipy.__version__, "arraynorm": arraynorm.__version__,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    if backend is not None and backend.name != "numpy":
        out[backend.name] = backend.version()
    return out


def thread_info() -> dict[str, Any]:
    """The thread pools in effect (BLAS/OpenMP libraries via threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency of the analysis extra
        return {}
    return {f"{i['internal_api']}": i["num_threads"] for i in threadpool_info()}


@contextlib.contextmanager
def thread_limits(threads: int | None) -> Iterator[dict[str, Any]]:
    """Limit BLAS/OpenMP threads to ``threads`` inside the block (``None``: leave them).

    Studies run many small models: a BLAS library spinning several threads on 256×256
    products slows them down several-fold on a loaded machine, so studies default to one
    thread (and their executor to several processes when there are many points).
    Yields the settings in effect, for the result's ``params``.
    """
    with limit_threads(threads):
        yield {"limit": threads, **thread_info()}


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """:func:`thread_limits` without the report (about 1 ms; what a point run in a pool's or a
    cluster's worker process enters). threadpoolctl lets only one Python thread of a process
    set OpenBLAS's limits (the first to try); a Dask worker's single executor thread is it."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        yield


def point_rng(seed: int, *key: Any) -> np.random.Generator:
    """A generator for one point of a sweep, from the study's seed and the point's key (its
    configuration), so every point draws the same numbers in any order and on any executor."""
    words = [zlib.crc32(repr(k).encode()) for k in key]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))
