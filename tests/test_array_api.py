"""The helpers module (arraynorm._array_api): the capability table agrees with what each
backend does, the argument checks accept JAX tracers beside concrete arrays, and host
copies of scalars work."""

from __future__ import annotations

import numpy as np
import pytest

import arraynorm as an
from arraynorm._array_api import (xp_capabilities, xp_check_int, xp_namespace, xp_supports_inplace,
                                  xp_to_host_numpy)
from _helpers import backend_name, from_numpy, to_numpy


def test_capability_table_matches_what_each_backend_does(xp):
    """Oracle: the backend itself — an in-place add either mutates the array or raises/copies,
    a batched eigh either runs on a stack of matrices or does not exist, a lazy array is
    computed only on request."""
    caps = xp_capabilities(xp)
    assert caps.backend == backend_name(xp)
    a = from_numpy(xp, np.zeros(3), "float64")
    before = a
    try:
        a += 1.0
        mutated = a is before and float(to_numpy(before)[0]) == 1.0
    except (TypeError, NotImplementedError, AttributeError):
        mutated = False
    assert caps.inplace == mutated == xp_supports_inplace(before)
    stack = from_numpy(xp, np.stack([np.eye(2) * 2.0, np.eye(2) * 3.0]), "float64")
    try:
        lam, _ = xp.linalg.eigh(stack)
        eigh_works = np.allclose(to_numpy(lam), [[2, 2], [3, 3]])
    except (AttributeError, NotImplementedError, ValueError):
        eigh_works = False
    assert ("eigh" in caps.linalg) == eigh_works
    assert caps.lazy == hasattr(a, "compute")
    assert caps.float64


def test_jax_capabilities_follow_the_x64_flag():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    from array_api_compat import array_namespace

    xp = array_namespace(jnp.zeros(1))
    previous = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", False)
        assert not xp_capabilities(xp).float64 and not xp_capabilities(xp).inplace
        jax.config.update("jax_enable_x64", True)
        assert xp_capabilities(xp).float64
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_traced_jax_arrays_mix_with_concrete_ones_under_jit():
    """A tracer has no device; arrays the caller closes over do. The check must not refuse
    the mix (it used to: "on device None … cpu:0"); the result equals the eager one."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(0)
    x, w, b = (jnp.asarray(a, dtype=jnp.float32) for a in
               (rng.standard_normal((6, 3)), rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)))
    jitted = jax.jit(lambda x: an.batch_norm(x, w, b))(x)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(an.batch_norm(x, w, b)),
                               rtol=1e-5, atol=1e-6)


def test_arrays_on_different_devices_are_still_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="w is on device meta but x is on device cpu"):
        xp_namespace("f", x=torch.zeros(3), w=torch.zeros(3, device="meta"))


@pytest.mark.parametrize("value", [np.float64(2.5), np.float32(-1.0), np.int64(3)])
def test_host_copy_of_a_numpy_scalar_is_a_0d_array(value):
    out = xp_to_host_numpy(value)
    assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == value.dtype
    assert out == value


def test_host_copy_of_a_0d_dask_array_computes_it():
    da = pytest.importorskip("dask.array")
    total = da.from_array(np.arange(6.0), chunks=2).sum()
    out = xp_to_host_numpy(total)
    assert isinstance(out, np.ndarray) and out.shape == () and float(out) == 15.0


@pytest.mark.parametrize("value,kw,error,match", [
    (0, {}, ValueError, "n must be a positive int, got 0"),
    (True, {}, ValueError, "n must be a positive int, got True"),
    (2.0, {}, ValueError, "n must be a positive int, got 2.0"),
    (-1, dict(minimum=0), ValueError, "n must be an int >= 0, got -1"),
    (1.5, dict(minimum=0, strict_type=True), TypeError, "n must be an int, got float"),
    (-1, dict(minimum=0, strict_type=True), ValueError, "n must be >= 0, got -1"),
])
def test_int_check_names_the_argument_and_what_came(value, kw, error, match):
    with pytest.raises(error, match=match):
        xp_check_int("f", "n", value, **kw)
    assert xp_check_int("f", "n", 3, **kw) == 3
