"""Test helpers: moving arrays between NumPy and a backend, and an ``assert_close`` that also
checks the result kept the expected namespace, shape and dtype (as SciPy's ``xp_assert_close``)."""

from __future__ import annotations

import functools

import numpy as np
from array_api_compat import (
    array_namespace,
    is_array_api_strict_namespace,
    is_cupy_namespace,
    is_dask_namespace,
    is_torch_namespace,
)

# tolerances for comparing a float32 / float64 computation with a float64 reference
TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-10)}


@functools.cache
def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def cuda_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def has_linalg(xp, *routines: str) -> bool:
    """Whether the backend offers the batched ``xp.linalg`` routines, as the library's
    capability table says (``arraynorm._array_api.xp_capabilities``): the tests decide what
    must work and what must raise ``NotImplementedError`` from the same table the code reads,
    and tests/test_array_api.py checks the table against each backend."""
    from arraynorm._array_api import xp_capabilities

    return set(routines) <= xp_capabilities(xp).linalg


def supports_inplace(xp) -> bool:
    """Whether ``a += b`` writes into ``a`` on this backend (the capability table)."""
    from arraynorm._array_api import xp_capabilities

    return xp_capabilities(xp).inplace


def backend_name(xp) -> str:
    if is_dask_namespace(xp):
        return "dask"
    if is_torch_namespace(xp):
        return "torch"
    if is_cupy_namespace(xp):
        return "cupy"
    if is_array_api_strict_namespace(xp):
        return "array_api_strict"
    return "numpy"


def to_numpy(a) -> np.ndarray:
    """Any backend's array (or None) as a NumPy array (computing Dask graphs)."""
    if a is None:
        return None
    xp = array_namespace(a)
    if is_dask_namespace(xp):
        return np.asarray(a.compute())
    if is_torch_namespace(xp):
        t = a.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    if is_cupy_namespace(xp):
        return a.get()
    return np.asarray(a)


def from_numpy(xp, a, dtype: str | None = None):
    """A NumPy array moved into namespace ``xp`` (Dask: split into several chunks so that
    chunk boundaries are exercised)."""
    a = np.asarray(a)
    if dtype is not None and dtype != "bfloat16":
        a = a.astype(dtype)
    if is_dask_namespace(xp):
        import dask.array as da
        chunks = tuple(max(1, (n + 1) // 2) for n in a.shape)
        return da.from_array(a, chunks=chunks)
    out = xp.asarray(a)
    if dtype == "bfloat16":
        out = xp.astype(xp.asarray(a.astype("float32")), xp.bfloat16)
    return out


def dtype_of(xp, name: str):
    return getattr(xp, name)


def assert_close(actual, expected, *, xp=None, dtype=None, rtol=None, atol=None, err_msg=""):
    """Assert ``actual`` is in namespace ``xp`` with ``expected``'s shape and dtype ``dtype``
    (when given), then compare values against the NumPy ``expected``."""
    if xp is not None:
        got = array_namespace(actual)
        assert backend_name(got) == backend_name(xp), f"namespace {got} is not {xp}"
    if dtype is not None:
        assert actual.dtype == dtype, f"dtype {actual.dtype} is not {dtype}"
    a = to_numpy(actual)
    e = np.asarray(expected)
    assert a.shape == e.shape, f"shape {a.shape} is not {e.shape}"
    name = "float32" if a.dtype in (np.float32, np.float16) else "float64"
    tol = dict(TOL[name])
    if rtol is not None:
        tol["rtol"] = rtol
    if atol is not None:
        tol["atol"] = atol
    np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), err_msg=err_msg, **tol)


class DaskComputeCounter:
    """Context manager counting Dask graph executions (``n``): an op that stays lazy runs none."""

    def __enter__(self):
        from dask.callbacks import Callback

        counter = self

        class _Count(Callback):
            def _start(self, dsk):
                counter.n += 1

        self.n = 0
        self._cb = _Count()
        self._cb.__enter__()
        return self

    def __exit__(self, *exc):
        self._cb.__exit__(*exc)
        return False


class ErrorTable:
    """Largest errors seen per key, printed as a table when a test module ends (run the module
    with ``pytest -s`` to see it): the measured accuracy against each oracle."""

    def __init__(self, title: str, widths: tuple[int, ...]):
        self.title, self.widths, self.rows = title, widths, {}

    def note(self, key: tuple[str, ...], err: float) -> None:
        self.rows[key] = max(self.rows.get(key, 0.0), err)

    def record(self, key: tuple[str, ...], got, ref) -> None:
        """Note max|got − ref| / max|ref| under ``key`` + (got's dtype,)."""
        got = np.asarray(to_numpy(got))
        ref = np.asarray(ref, dtype=np.float64)
        err = float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-300))
        self.note(tuple(key) + (str(got.dtype),), err)

    def print(self) -> None:
        print(f"\n\n{self.title}")
        for key, e in sorted(self.rows.items()):
            print("".join(f"{k:<{w}}" for k, w in zip(key, self.widths)) + f"{e:10.2e}")
