"""Forward passes of the named activation normalizations against independent float64
references, on every backend, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

import arraynorm as an
import references as ref
from _helpers import assert_close, from_numpy

RNG = np.random.default_rng(20260925)


def data(*shape, offset=0.0, scale=1.0):
    return RNG.standard_normal(shape) * scale + offset


def params(c):
    return RNG.uniform(0.5, 1.5, c), RNG.standard_normal(c)


def run(xp, dtype_name, f, arrays):
    """Call f on the arrays moved to xp/dtype; return (result, the arrays as float64 NumPy
    after rounding to dtype, so the reference sees exactly the inputs the op saw)."""
    moved = [None if a is None else from_numpy(xp, a, dtype_name) for a in arrays]
    rounded = [None if a is None else np.asarray(a).astype(dtype_name).astype(np.float64) for a in arrays]
    return f(*moved), rounded


@pytest.mark.parametrize("shape,axis", [((6, 5), 1), ((4, 3, 5, 2), 1), ((4, 5, 3, 3), -1),
                                        ((3, 2, 4), 2)])
def test_batch_norm_training_matches_reference(xp, dtype_name, shape, axis):
    x = data(*shape, offset=3.0, scale=2.0)
    w, b = params(shape[axis])
    y, (xr, wr, br) = run(xp, dtype_name, lambda x, w, b: an.batch_norm(x, w, b, axis=axis), [x, w, b])
    assert_close(y, ref.batch_norm(xr, wr, br, axis=axis), xp=xp, dtype=getattr(xp, dtype_name))


def test_batch_norm_inference_uses_given_statistics(xp, dtype_name):
    x = data(1, 4, 3, 3)  # a batch of one is fine in inference
    w, b = params(4)
    m, v = RNG.standard_normal(4), RNG.uniform(0.5, 2.0, 4)
    y, (xr, wr, br, mr, vr) = run(
        xp, dtype_name, lambda x, w, b, m, v: an.batch_norm(x, w, b, mean=m, var=v, eps=1e-3),
        [x, w, b, m, v])
    assert_close(y, ref.batch_norm(xr, wr, br, eps=1e-3, mean=mr, var=vr), xp=xp,
                 dtype=getattr(xp, dtype_name))


@pytest.mark.parametrize("shape,axis", [((4, 7), -1), ((3, 4, 5), (-2, -1)), ((3, 4, 5), 1),
                                        ((2, 3, 4, 5), (1, 2, 3)), ((5,), 0)])
def test_layer_norm_matches_reference(xp, dtype_name, shape, axis):
    x = data(*shape, offset=-2.0)
    axes = (axis,) if isinstance(axis, int) else axis
    pshape = tuple(shape[a] for a in sorted(a % len(shape) for a in axes))
    w, b = RNG.uniform(0.5, 1.5, pshape), RNG.standard_normal(pshape)
    y, (xr, wr, br) = run(xp, dtype_name, lambda x, w, b: an.layer_norm(x, w, b, axis=axis), [x, w, b])
    assert_close(y, ref.layer_norm(xr, wr, br, axes=axes), xp=xp, dtype=getattr(xp, dtype_name))


@pytest.mark.parametrize("shape,axis", [((2, 3, 5), 1), ((2, 3, 4, 5), 1), ((2, 4, 5, 3), -1)])
def test_instance_norm_matches_reference(xp, dtype_name, shape, axis):
    x = data(*shape, scale=3.0)
    w, b = params(shape[axis])
    y, (xr, wr, br) = run(xp, dtype_name, lambda x, w, b: an.instance_norm(x, w, b, axis=axis), [x, w, b])
    assert_close(y, ref.instance_norm(xr, wr, br, axis=axis), xp=xp, dtype=getattr(xp, dtype_name))


@pytest.mark.parametrize("shape,groups,axis", [((2, 6, 4, 3), 3, 1), ((3, 8), 4, 1), ((2, 6, 4, 3), 1, 1),
                                               ((2, 6, 4, 3), 6, 1), ((2, 4, 3, 6), 2, -1)])
def test_group_norm_matches_reference(xp, dtype_name, shape, groups, axis):
    x = data(*shape, offset=1.0)
    w, b = params(shape[axis])
    y, (xr, wr, br) = run(xp, dtype_name, lambda x, w, b: an.group_norm(x, groups, w, b, axis=axis), [x, w, b])
    assert_close(y, ref.group_norm(xr, groups, wr, br, axis=axis), xp=xp, dtype=getattr(xp, dtype_name))


@pytest.mark.parametrize("shape,axis", [((4, 9), -1), ((2, 3, 4), (1, 2))])
def test_rms_norm_matches_reference_with_machine_epsilon_default(xp, dtype_name, shape, axis):
    x = data(*shape, offset=0.5)
    axes = (axis,) if isinstance(axis, int) else axis
    w = RNG.uniform(0.5, 1.5, tuple(shape[a] for a in axes))
    y, (xr, wr) = run(xp, dtype_name, lambda x, w: an.rms_norm(x, w, axis=axis), [x, w])
    eps = float(np.finfo(dtype_name).eps)
    assert_close(y, ref.rms_norm(xr, wr, eps=eps, axes=axes), xp=xp, dtype=getattr(xp, dtype_name))


def test_position_norm_matches_reference(xp, dtype_name):
    x = data(2, 5, 3, 4, offset=2.0)
    w, b = params(5)
    y, (xr, wr, br) = run(xp, dtype_name, lambda x, w, b: an.position_norm(x, w, b), [x, w, b])
    assert_close(y, ref.position_norm(xr, wr, br), xp=xp, dtype=getattr(xp, dtype_name))


def test_ghost_batch_norm_matches_reference(xp, dtype_name):
    x = data(8, 3, 4)
    w, b = params(3)
    y, (xr, wr, br) = run(xp, dtype_name, lambda x, w, b: an.ghost_batch_norm(x, 4, w, b), [x, w, b])
    assert_close(y, ref.ghost_batch_norm(xr, 4, wr, br), xp=xp, dtype=getattr(xp, dtype_name))


def test_ghost_batch_norm_with_whole_batch_is_batch_norm(xp):
    x = data(6, 3, 2)
    assert_close(an.ghost_batch_norm(from_numpy(xp, x), 6), ref.batch_norm(x), xp=xp)


@pytest.mark.parametrize("rmax,dmax", [(1.0, 0.0), (1.2, 0.1), (3.0, 5.0)])
def test_batch_renorm_matches_reference(xp, dtype_name, rmax, dmax):
    x = data(6, 3, 4, offset=1.0, scale=2.0)
    w, b = params(3)
    rm, rv = RNG.standard_normal(3), RNG.uniform(0.3, 3.0, 3)
    y, (xr, wr, br, rmr, rvr) = run(
        xp, dtype_name,
        lambda x, w, b, rm, rv: an.batch_renorm(x, w, b, running_mean=rm, running_var=rv, rmax=rmax, dmax=dmax),
        [x, w, b, rm, rv])
    assert_close(y, ref.batch_renorm(xr, wr, br, rmr, rvr, rmax, dmax), xp=xp, dtype=getattr(xp, dtype_name))


def test_batch_renorm_with_unit_limits_is_batch_norm(xp):
    x, (w, b) = data(5, 3), params(3)
    args = [from_numpy(xp, a) for a in (x, w, b)]
    rm, rv = from_numpy(xp, RNG.standard_normal(3)), from_numpy(xp, RNG.uniform(1, 2, 3))
    y = an.batch_renorm(*args, running_mean=rm, running_var=rv, rmax=1.0, dmax=0.0)
    assert_close(y, ref.batch_norm(x, w, b), xp=xp)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_local_response_norm_matches_reference(xp, dtype_name, size):
    x = data(2, 6, 3, 2, scale=5.0)
    y, (xr,) = run(xp, dtype_name, lambda x: an.local_response_norm(x, size, alpha=0.5, beta=0.75, k=2.0), [x])
    assert_close(y, ref.local_response_norm(xr, size, 0.5, 0.75, 2.0), xp=xp, dtype=getattr(xp, dtype_name))


@pytest.mark.parametrize("p,axis", [(2.0, 1), (1.0, -1), (3.0, 0), (float("inf"), 1)])
def test_l2_normalize_matches_reference(xp, dtype_name, p, axis):
    x = data(3, 4, 2)
    x[0, :, 0] = 0.0  # a zero row: the eps clamp keeps it zero instead of NaN
    y, (xr,) = run(xp, dtype_name, lambda x: an.l2_normalize(x, p=p, axis=axis), [x])
    out = ref.l2_normalize(xr, p=p, axis=axis)
    assert_close(y, out, xp=xp, dtype=getattr(xp, dtype_name))


def test_adain_matches_reference_with_different_spatial_sizes(xp, dtype_name):
    c, s = data(2, 3, 4, 4), data(2, 3, 5, 2, offset=2.0, scale=3.0)
    y, (cr, sr) = run(xp, dtype_name, an.adain, [c, s])
    assert_close(y, ref.adain(cr, sr), xp=xp, dtype=getattr(xp, dtype_name))


def test_normalize_composes_any_partition_and_operation(xp):
    """A method the survey only describes: group partition ∘ RMS scale."""
    x = data(2, 6, 5)
    y = an.normalize(from_numpy(xp, x), an.partition.Group(3), an.operation.RMSScale(), eps=1e-6)
    xr = x.reshape(2, 3, 10)
    expected = (xr / np.sqrt((xr ** 2).mean(-1, keepdims=True) + 1e-6)).reshape(x.shape)
    assert_close(y, expected, xp=xp)


def test_named_methods_are_compositions_of_the_stages():
    x = data(4, 6, 3)
    w, b = params(6)
    P, O = an.partition, an.operation
    pairs = [
        (an.batch_norm(x, w, b), an.normalize(x, P.Batch(), O.Standardize(), w, b)),
        (an.group_norm(x, 2, w, b), an.normalize(x, P.Group(2), O.Standardize(), w, b)),
        (an.instance_norm(x, w, b), an.normalize(x, P.Instance(), O.Standardize(), w, b)),
        (an.position_norm(x, w, b), an.normalize(x, P.Position(), O.Standardize(), w, b)),
        (an.group_norm(x, 1), an.layer_norm(x, axis=(1, 2))),
        (an.group_norm(x, 6), an.instance_norm(x)),
    ]
    for got, expected in pairs:
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_batch_moments_and_running_statistics_follow_pytorch_semantics(xp):
    x = data(5, 3, 4, offset=2.0)
    mean, var = an.batch_moments(from_numpy(xp, x))
    xr = np.moveaxis(x, 1, 0).reshape(3, -1)
    assert_close(mean, xr.mean(1), xp=xp)
    assert_close(var, xr.var(1), xp=xp)
    rm, rv = from_numpy(xp, np.zeros(3)), from_numpy(xp, np.ones(3))
    nm, nv = an.update_running_stats(rm, rv, mean, var, 20, momentum=0.1)
    assert_close(nm, 0.1 * xr.mean(1), xp=xp)
    assert_close(nv, 0.9 + 0.1 * xr.var(1, ddof=1), xp=xp)
    # momentum=None: the cumulative average of the batches seen so far
    cm, cv = an.update_running_stats(nm, nv, mean, var, 20, momentum=None, num_batches_tracked=2)
    assert_close(cm, 0.5 * (0.1 * xr.mean(1)) + 0.5 * xr.mean(1), xp=xp)


def test_issue_example_runs_as_written():
    x = np.random.default_rng(0).standard_normal((32, 64, 28, 28), dtype=np.float32)
    w, b = np.ones(64, np.float32), np.zeros(64, np.float32)
    y = an.group_norm(x, 8, w, b, eps=1e-5)
    y, pullback = an.vjp(an.group_norm, x, 8, w, b, eps=1e-5)
    dx, none, dw, db = pullback(np.ones_like(y))
    assert none is None and dx.shape == x.shape and dw.shape == (64,) and db.shape == (64,)
    # the gradient of Σy w.r.t. x vanishes (GN output sums to Σβ per group), Σ dy = N·H·W
    np.testing.assert_allclose(dx, 0.0, atol=1e-5)
    np.testing.assert_allclose(db, 32 * 28 * 28)
    # Σŷ over a group is 0, so the per-channel dγ of one group sum to 0
    np.testing.assert_allclose(dw.reshape(8, 8).sum(1), 0.0, atol=1.0)


def test_layouts_are_remembered_per_partition_and_shape_and_errors_are_not():
    """``layout_of`` (what every normalizer asks) gives the partition's own layout, the same
    object for an equal partition and shape, raises for a shape the partition refuses on
    every call (failures are not kept), and asks an unhashable partition every time."""
    from dataclasses import dataclass

    from arraynorm.partition import Group, Layer, Partition, layout_of

    a = layout_of(Group(4), "t", (2, 8, 3))
    assert a == Group(4).layout("t", (2, 8, 3))
    assert layout_of(Group(4), "t", (2, 8, 3)) is a
    assert layout_of(Group(2), "t", (2, 8, 3)) != a  # another partition, another layout
    for _ in range(2):
        with pytest.raises(ValueError, match="t: "):
            layout_of(Group(3), "t", (2, 8, 3))
    assert a.group_size == 2 * 3 and a.stats_shape == (2, 4, 1, 1)

    @dataclass
    class Listed(Partition):  # eq without frozen: unhashable
        axes: list

        def layout(self, fname, shape):
            return Layer(tuple(self.axes)).layout(fname, shape)

    assert layout_of(Listed([-1]), "t", (3, 5)) == Layer(-1).layout("t", (3, 5))
