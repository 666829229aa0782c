"""The ``xp`` fixture: every test that takes it runs on every installed array backend.

numpy, array_api_strict (proves only standard functions are used) and dask (lazy, chunked)
always; torch (CPU) when importable; cupy with the ``gpu`` mark, skipped only where no CUDA
device exists.
"""

from __future__ import annotations

import importlib

import pytest

from _helpers import cuda_available, torch_available


def _backend_params():
    params = [pytest.param("numpy", id="numpy"),
              pytest.param("array_api_strict", id="array_api_strict"),
              pytest.param("dask", id="dask")]
    params.append(pytest.param("torch", id="torch", marks=pytest.mark.skipif(
        not torch_available(), reason="torch is not importable")))
    params.append(pytest.param("cupy", id="cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not cuda_available(), reason="no CUDA device")]))
    return params


BACKENDS = _backend_params()


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array namespace under test, as array-api-compat wraps it."""
    from array_api_compat import array_namespace

    name = request.param
    if name == "dask":
        import dask.array as da
        return array_namespace(da.zeros(1))
    if name == "torch":
        import torch
        return array_namespace(torch.zeros(1))
    if name == "cupy":
        import cupy
        return array_namespace(cupy.zeros(1))
    return array_namespace(importlib.import_module(name).asarray([0.0]))


@pytest.fixture(params=["float32", "float64"])
def dtype_name(request):
    return request.param
