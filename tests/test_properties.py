"""Hypothesis property tests: for random shapes, axes, scales and offsets, every partition's
output has mean 0 and variance 1 within each statistic (before recovery), is finite, and keeps
shape, dtype and namespace."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import arraynorm as an
from _helpers import assert_close, from_numpy, to_numpy

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def cases(draw):
    ndim = draw(st.integers(3, 4))
    shape = [draw(st.integers(2, 5)) for _ in range(ndim)]
    groups = draw(st.sampled_from([1, 2, 3]))
    shape[1] *= groups  # a channel count the group count divides
    scale = draw(st.floats(1e-2, 1e3))
    offset = draw(st.floats(-1e3, 1e3))
    seed = draw(st.integers(0, 2**31 - 1))
    x = np.random.default_rng(seed).standard_normal(shape) * scale + offset
    return x, groups


def groups_of(name, x, groups):
    """The float64 NumPy reshape of x into (statistic, members) for each partition."""
    n, c = x.shape[:2]
    if name == "batch":
        return np.moveaxis(x, 1, 0).reshape(c, -1)
    if name == "instance":
        return x.reshape(n * c, -1)
    if name == "group":
        return x.reshape(n * groups, -1)
    if name == "layer":
        return x.reshape(-1, x.shape[-1])
    if name == "position":
        return np.moveaxis(x, 1, -1).reshape(-1, c)


PARTITIONS = {
    "batch": lambda g: an.partition.Batch(), "instance": lambda g: an.partition.Instance(),
    "group": lambda g: an.partition.Group(g), "layer": lambda g: an.partition.Layer(-1),
    "position": lambda g: an.partition.Position(),
}


@SETTINGS
@given(case=cases(), name=st.sampled_from(sorted(PARTITIONS)))
def test_standardized_output_has_zero_mean_unit_variance_per_statistic(xp, case, name):
    x, groups = case
    xa = from_numpy(xp, x)
    y = an.normalize(xa, PARTITIONS[name](groups), eps=0.0)
    assert y.shape == xa.shape and y.dtype == xa.dtype
    yn = to_numpy(y)
    assert np.all(np.isfinite(yn))
    members = groups_of(name, yn, groups)
    np.testing.assert_allclose(members.mean(1), 0.0, atol=1e-9)
    np.testing.assert_allclose(members.var(1), 1.0, rtol=1e-9)


@SETTINGS
@given(case=cases())
def test_rms_output_has_unit_mean_square_and_keeps_the_sign(xp, case):
    x, _ = case
    y = to_numpy(an.rms_norm(from_numpy(xp, x), eps=0.0))
    np.testing.assert_allclose((y ** 2).mean(-1), 1.0, rtol=1e-9)
    np.testing.assert_array_equal(np.sign(y), np.sign(x))


@SETTINGS
@given(case=cases(), a=st.floats(1e-3, 1e3), b=st.floats(-1e3, 1e3))
def test_standardization_is_invariant_to_affine_input_changes(xp, case, a, b):
    """The survey's scale (and shift) invariance: GN(a·x + b) = GN(x) for a > 0."""
    x, groups = case
    y1 = an.group_norm(from_numpy(xp, x), groups, eps=0.0)
    y2 = an.group_norm(from_numpy(xp, a * x + b), groups, eps=0.0)
    assert_close(y2, to_numpy(y1), xp=xp, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(case=cases(), dtype=st.sampled_from(["float32", "float64"]))
def test_vjp_keeps_shapes_dtypes_and_namespace(xp, case, dtype):
    x, groups = case
    xa = from_numpy(xp, x, dtype)
    c = x.shape[1]
    w, b = from_numpy(xp, np.ones(c), dtype), from_numpy(xp, np.zeros(c), dtype)
    y, pb = an.vjp(an.group_norm, xa, groups, w, b)
    dx, dg, dw, db = pb(from_numpy(xp, np.ones(x.shape), dtype))
    assert dg is None
    for got, like in ((y, xa), (dx, xa), (dw, w), (db, b)):
        assert got.shape == like.shape and got.dtype == like.dtype
        assert type(got) is type(like) or hasattr(got, "dask")
        assert np.all(np.isfinite(to_numpy(got)))
