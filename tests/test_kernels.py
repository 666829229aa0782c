"""DESIGN.md §3.2: the NumPy fast paths (arraynorm._kernels: the NumPy block recipe
``numpy_fused`` and the numba JIT ``numba_jit``) are selected in one place, can be switched
off, and compute what the portable array-API path computes — outputs, cotangents, JVPs and the
statistics in ``ctx.state`` — for every partition, dtype and block geometry; plus a smoke test
of the benchmark harness. Tests taking the ``impl`` fixture run once per fast implementation,
with the selector restricted to it (the JIT's runs are skipped only where numba, the optional
``[jit]`` extra, is not installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import arraynorm as an
import arraynorm._kernels as kernels
from arraynorm._kernels import PORTABLE, fast_path_threads, numba_jit, numpy_fused
from arraynorm.operation import RMSScale, Standardize
from arraynorm.partition import Batch, GhostBatch, Group, Instance, Layer, Position
from _helpers import backend_name, from_numpy, to_numpy

def fused(ctx) -> bool:
    """Whether a fast (non-portable) implementation ran the forward that made ``ctx``."""
    return ctx.implementation is not None and ctx.implementation is not PORTABLE


def jit_runs(n, x, w, b) -> bool:
    """Whether the numba implementation takes this input (its documented scope)."""
    layout = n.partition.layout("t", tuple(x.shape))
    return numba_jit.NUMBA_JIT.supports(n, np, layout, x, w, b)


RNG = np.random.default_rng(5)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (partition, operation, shape): every partition, channel axes 1 and -1, LN over several axes
CASES = [
    (Batch(1), Standardize(), (6, 3, 5, 4)),
    (Batch(-1), Standardize(), (7, 2, 5)),
    (Batch(1), Standardize(), (9, 6)),
    (Layer(-1), Standardize(), (6, 40)),
    (Layer((1, 2)), Standardize(), (3, 4, 5)),
    (Layer((0, 2)), Standardize(), (3, 4, 5)),
    (Instance(1), Standardize(), (2, 3, 4, 6)),
    (Instance(-1), Standardize(), (2, 5, 3)),
    (Group(2), Standardize(), (3, 4, 10)),
    (Group(3), Standardize(), (2, 6, 4, 5)),
    (Position(1), Standardize(), (2, 6, 3, 3)),
    (GhostBatch(2), Standardize(), (6, 3, 4)),
    (Layer(-1), RMSScale(), (6, 40)),
    (Layer((1, 2)), RMSScale(), (3, 4, 5)),
]
IDS = [f"{type(p).__name__}{getattr(p, 'axis', getattr(p, 'axes', ''))}-{type(o).__name__}-{'x'.join(map(str, s))}"
       for p, o, s in CASES]
TOL = {"float64": 1e-12, "float32": 2e-6, "float16": 2e-3}


@pytest.fixture(autouse=True)
def fast_path_for_small_arrays(monkeypatch):
    """These tests use small arrays; by default they would take the portable path
    (``numpy_fused.MIN_BYTES``), so the size threshold is lifted here."""
    monkeypatch.setattr(numpy_fused, "MIN_BYTES", 0)


@pytest.fixture(params=["numpy_fused", "numba_jit"])
def impl(request, monkeypatch):
    """The fast implementation under test, the only one the selector asks (no size
    threshold)."""
    if request.param == "numba_jit":
        if not numba_jit.available():
            pytest.skip("numba (the optional [jit] extra) is not installed")
        monkeypatch.setattr(numba_jit, "MIN_BYTES", 0)
    monkeypatch.setattr(kernels, "IMPLEMENTATIONS", (kernels.implementation(request.param),))
    return request.param


@pytest.fixture
def jit_only(monkeypatch):
    """The numba implementation, the only one the selector asks, at every size (the tests of
    its own arithmetic); skipped where numba is not installed."""
    if not numba_jit.available():
        pytest.skip("numba (the optional [jit] extra) is not installed")
    monkeypatch.setattr(kernels, "IMPLEMENTATIONS", (numba_jit.NUMBA_JIT,))
    monkeypatch.setattr(numba_jit, "MIN_BYTES", 0)


@pytest.fixture(params=["default", "tiny"])
def blocks(request, impl, monkeypatch):
    """Default blocks, and tiny ones that force many blocks, chunked statistics (merged
    across chunks) and worker threads on these small arrays: 256-byte blocks for the NumPy
    recipe; 16-element channel blocks and parallel loops at every size for the JIT."""
    if request.param == "tiny":
        monkeypatch.setattr(numpy_fused, "BLOCK_BYTES", 256)
        monkeypatch.setattr(numpy_fused, "MIN_BLOCKS_FOR_THREADS", 2)
        monkeypatch.setattr(numba_jit, "BLOCK_ELEMS", 16)
        monkeypatch.setattr(numba_jit, "PARALLEL_MIN_BYTES", 0)
        threads = fast_path_threads()
        previous = an.set_fast_paths(True, threads=2)
        yield request.param
        an.set_fast_paths(previous, threads=threads)
    else:
        yield request.param


def run(normalizer, x, w, b, dy, fast):
    with an.use_fast_paths(fast):
        y, ctx = normalizer.forward(x, w, b)
        grads = normalizer.backward(ctx, dy)
    return y, ctx, grads


def assert_same(fast, slow, dtype, what):
    if slow is None:
        assert fast is None, what
        return
    assert fast is not None, what
    assert fast.shape == slow.shape and fast.dtype == slow.dtype, (what, fast.shape, slow.shape, fast.dtype, slow.dtype)
    f, s = np.asarray(fast, np.float64), np.asarray(slow, np.float64)
    scale = max(1.0, float(np.max(np.abs(s))))
    err = float(np.max(np.abs(f - s))) / scale
    assert err <= TOL[dtype], (what, err)


@pytest.mark.parametrize("partition,operation,shape", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("params", ["both", "none", "weight", "bias"])
def test_fast_path_equals_portable_path(impl, blocks, partition, operation, shape, dtype, params):
    layout = partition.layout("t", shape)
    x = (2.0 + 3.0 * RNG.standard_normal(shape)).astype(dtype)
    dy = RNG.standard_normal(shape).astype(dtype)
    w = RNG.uniform(0.5, 1.5, layout.param_shape).astype(dtype) if params in ("both", "weight") else None
    b = RNG.standard_normal(layout.param_shape).astype(dtype) if params in ("both", "bias") else None
    n = an.Normalizer(partition, operation, 1e-5)
    y1, c1, g1 = run(n, x, w, b, dy, True)
    y0, c0, g0 = run(n, x, w, b, dy, False)
    # the JIT's scope: float32/float64, and γ constant over a statistic that spans a kept axis
    outside = impl == "numba_jit" and (dtype == "float16" or (params != "none" and (
        isinstance(partition, Position) or getattr(partition, "axes", None) == (0, 2))))
    if impl == "numba_jit":
        assert jit_runs(n, x, w, b) != outside
    assert c1.implementation.name == ("portable" if outside else impl) and not fused(c0)
    tx = RNG.standard_normal(shape).astype(dtype)
    assert_same(n.jvp(c1, tx), n.jvp(c0, tx), dtype, "jvp")
    assert_same(y1, y0, dtype, "y")
    for name, f, s in zip(("dx", "dweight", "dbias"), g1, g0):
        assert_same(f, s, dtype, name)
    for name in ("mean", "var", "rstd"):
        assert_same(getattr(c1.state, name), getattr(c0.state, name), dtype, name)
    assert c1.state.axes == c0.state.axes
    assert_same(c1.state.y, c0.state.y, dtype, "state.y")
    assert_same(c1.yhat, c0.yhat, dtype, "ctx.yhat")


@pytest.mark.parametrize("partition,operation,shape", CASES[:4] + CASES[7:9], ids=IDS[:4] + IDS[7:9])
def test_non_contiguous_and_read_only_inputs_are_handled_and_left_unmodified(blocks, partition, operation, shape):
    layout = partition.layout("t", shape)
    big = RNG.standard_normal(shape[::-1] + (2,))
    x = big[..., 0].T                       # transposed and strided: neither C nor F contiguous
    dy = np.asfortranarray(RNG.standard_normal(shape))
    w = RNG.uniform(0.5, 1.5, layout.param_shape)
    b = RNG.standard_normal(layout.param_shape)
    for a in (x, dy, w, b, big):
        a.flags.writeable = False
    before = [a.copy() for a in (x, dy, w, b)]
    n = an.Normalizer(partition, operation)
    y1, c1, g1 = run(n, x, w, b, dy, True)
    y0, _, g0 = run(n, np.ascontiguousarray(x), w, b, np.ascontiguousarray(dy), False)
    assert fused(c1)
    assert_same(y1, y0, "float64", "y")
    for f, s in zip(g1, g0):
        assert_same(f, s, "float64", "grad")
    for a, a0 in zip((x, dy, w, b), before):
        np.testing.assert_array_equal(a, a0)


def test_portable_backward_accepts_a_fast_context():
    """The portable implementation's backward reads a fast context (ŷ and the operation's
    state are formed on demand from the kept input) — the fallback the NumPy implementation
    relies on — and gives its result; switching fast paths off between forward and backward
    still gives the right backward (the context's implementation answers)."""
    x, dy = RNG.standard_normal((5, 6, 7)), RNG.standard_normal((5, 6, 7))
    w, b = RNG.uniform(0.5, 1.5, 6), RNG.standard_normal(6)
    n = an.Normalizer(Group(3), Standardize())
    _, ctx = n.forward(x, w, b)
    assert fused(ctx)
    fast = n.backward(ctx, dy)
    slow = PORTABLE.backward(n, ctx, dy)
    with an.use_fast_paths(False):
        switched = n.backward(ctx, dy)
    for f, s, t in zip(fast, slow, switched):
        assert_same(f, s, "float64", "grad")
        assert_same(t, s, "float64", "grad")


@pytest.mark.parametrize("partition,shape", [(Layer(-1), (64, 4096)), (Batch(1), (64, 32, 16, 16)),
                                             (Group(4), (16, 32, 16, 16)), (Batch(1), (4096, 3))])
def test_fast_float32_variance_with_offset_1e4_is_accurate_to_1e_5(blocks, partition, shape):
    """DESIGN.md §3.3 on the fast path, both block geometries: float32 input offset by 1e4
    keeps relative variance error <= 1e-5 against NumPy's float64 ``var`` of the same values."""
    x = (1e4 + RNG.standard_normal(shape)).astype(np.float32)
    _, ctx = an.Normalizer(partition, Standardize(), 0.0).forward(x)
    assert fused(ctx)
    layout = ctx.layout
    x64 = x.astype(np.float64).reshape(layout.view_shape)
    var64 = x64.var(axis=layout.reduce_axes, keepdims=True)
    mean64 = x64.mean(axis=layout.reduce_axes, keepdims=True)
    assert np.max(np.abs(ctx.state.var - var64) / var64) <= 1e-5
    assert np.max(np.abs(ctx.state.mean - mean64) / np.abs(mean64)) <= 1e-7


@pytest.mark.parametrize("partition,shape,outlier", [
    (Batch(1), (262144, 4), (0,)), (Batch(1), (16384, 4, 4, 4), (0,)),
    (Layer(-1), (4, 262144), (slice(None), 0))])
def test_jit_one_pass_float32_statistics_and_their_two_pass_fallback_match_float64(jit_only, partition, shape, outlier):
    """The JIT's float32 statistics take Σd and Σd² in one sweep (d = x − the statistic's first
    value) and redo a block in two passes where Σd² − μΣd keeps under 1e-6 of Σd². The first
    value of every statistic sits 3000 standard deviations off: every BN block but the first
    is then 3000σ from its shift (ratio 1/9e6: the fallback runs there, and their M2, 3% of
    the variance, must be right), the LN rows keep the one-pass sums. Mean and variance match
    NumPy's float64 statistics of the same values to 1e-6."""
    x = RNG.standard_normal(shape)
    x[outlier] += 3000.0
    x = x.astype(np.float32)
    _, ctx = an.Normalizer(partition, Standardize(), 0.0).forward(x)
    assert ctx.implementation is numba_jit.NUMBA_JIT
    x64 = x.astype(np.float64).reshape(ctx.layout.view_shape)
    var64 = x64.var(axis=ctx.layout.reduce_axes, keepdims=True)
    mean64 = x64.mean(axis=ctx.layout.reduce_axes, keepdims=True)
    mean = ctx.state.mean.astype(np.float64) + ctx.saved.mean_lo
    assert np.max(np.abs(ctx.state.var - var64) / var64) <= 1e-6
    assert np.max(np.abs(mean - mean64) / np.sqrt(var64)) <= 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("partition,shape", [(Layer(-1), (64, 300)), (Group(4), (8, 16, 5, 5)),
                                             (Batch(1), (64, 48)), (Batch(1), (8, 12, 5, 5))])
@pytest.mark.parametrize("operation", [Standardize(), RMSScale()], ids=["standardize", "rms"])
def test_jit_state_statistics_are_the_float64_ones_rounded_by_numpy(jit_only, dtype, partition, shape, operation):
    """The compiled loops store the state's statistics in the data dtype themselves: the mean
    as shift + μ_s rounded and the remainder that rounding lost (Knuth's TwoSum, which must
    survive compilation: under reassociation the remainder would be 0), rstd rounded once.
    Bit for bit what NumPy gives from the same float64 numbers (``numpy_fused._split``,
    ``astype``), on rows with an offset 1e4 (the remainder matters) and of 1e-30 (float32
    near its bottom), rows and channels geometries; σ² to a rounding of NumPy's float64 var."""
    rms = isinstance(operation, RMSScale)
    x = RNG.standard_normal(shape)
    axis = 1 if isinstance(partition, Batch) else 0  # the axis along which statistics differ
    tiny = (slice(None),) * axis + (slice(0, shape[axis] // 2),)
    off = (slice(None),) * axis + (slice(shape[axis] // 2, None),)
    x[tiny] *= 1e-30
    x[off] += 1e4
    x = x.astype(dtype)
    _, ctx = an.Normalizer(partition, operation, 0.0, repeated=True).forward(x)
    assert ctx.implementation is numba_jit.NUMBA_JIT
    sv, st = ctx.saved, ctx.state
    if rms:
        assert st.mean is None and sv.mean_lo is None
    else:
        hi, lo = numpy_fused._split(sv.shift, sv.mean_s, np.dtype(dtype))
        assert lo.any()  # the remainder is there to check (offset 1e4)
        np.testing.assert_array_equal(st.mean.ravel(), hi.ravel())
        np.testing.assert_array_equal(sv.mean_lo.ravel(), lo.ravel())
    np.testing.assert_array_equal(st.rstd.ravel(), np.asarray(sv.rstd).astype(dtype).ravel())
    for a in (st.var, st.rstd) + (() if rms else (st.mean, sv.mean_lo)):
        assert a.dtype == dtype and a.shape == ctx.layout.stats_shape
    x64 = x.astype(np.float64).reshape(ctx.layout.view_shape)
    axes = ctx.layout.reduce_axes
    var64 = (x64 * x64).mean(axis=axes, keepdims=True) if rms else x64.var(axis=axes, keepdims=True)
    # float32: two roundings of float64 values 1e-16 apart; float64: two float64 algorithms
    np.testing.assert_allclose(st.var, var64.astype(dtype), rtol=1.2e-7 if dtype == np.float32 else 1e-13,
                               atol=0)


@pytest.mark.parametrize("operation", [Standardize(), RMSScale()], ids=["standardize", "rms"])
@pytest.mark.parametrize("affine", ["vector", "none"])
def test_jit_float32_sweeps_are_accurate_and_leave_extreme_rows_to_float64(jit_only, operation, affine):
    """Float32 rows get the forward's output sweep and the backward's dx sweep (four rows at
    a time) in float32 arithmetic; rows whose spread, rstd or gradient factors leave float32's
    safe range get the float64 sweeps. Against NumPy's float64 normalization and its closed-form
    gradients of the same float32 values: rows at offsets 0, 1e4, -3e3 and 1e6 (x − (shift +
    μ) in float32 would be 1e-3 off at 1e4) and rows of ±3e38 (x − shift overflows float32) and
    1e-37 (eps 0: rstd 1e37), four of each kind in a row so that the four-row update would take
    them. y within 2.5·ε₃₂·(|γ|(1 + |ŷ|) + |β|) (extreme rows: correctly rounded), dx within
    5·ε₃₂·rstd·(|g| + |mean g| + |ŷ|·|mean gŷ|), dγ and dβ within ε₃₂ of Σ|terms|; a row holding
    inf gives the portable path's NaN."""
    rng = np.random.default_rng(11)
    n = 1024
    z = rng.standard_normal((17, n))
    x = np.concatenate([z[:4] * [[1], [1], [0.5], [3]] + [[0], [1e4], [-3e3], [1e6]],
                        np.clip(3e38 * z[4:8], -3.3e38, 3.3e38), 1e-37 * z[8:12],
                        z[12:16] * [[2], [1], [1], [0.3]] + [[5], [-1e4], [0], [1e5]], z[16:]]).astype(np.float32)
    x[16, 17] = np.inf
    dy = rng.standard_normal((16, n)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, n).astype(np.float32) if affine == "vector" else None
    b = rng.standard_normal(n).astype(np.float32) if affine == "vector" else None
    norm = an.Normalizer(Layer(-1), operation, 0.0)
    with np.errstate(over="ignore"):  # the 3e38 rows' variance (1e77) is inf as a float32 state
        y, ctx = norm.forward(x, w, b)
        y16, ctx16 = norm.forward(x[:16], w, b)
    dx, dw, db = norm.backward(ctx16, dy)
    assert ctx.implementation is numba_jit.NUMBA_JIT and ctx16.implementation is numba_jit.NUMBA_JIT
    x64 = x[:16].astype(np.float64)
    rms = isinstance(operation, RMSScale)
    c = x64 if rms else x64 - x64.mean(axis=1, keepdims=True)
    r = 1 / np.sqrt(np.mean(c * c, axis=1, keepdims=True))  # 3e38² and 1e-37² are float64s
    yhat = c * r
    gam = np.ones(n) if w is None else w.astype(np.float64)
    bet = np.zeros(n) if b is None else b.astype(np.float64)
    ref = yhat * gam + bet
    eps32 = float(np.finfo(np.float32).eps)
    err = np.abs(y[:16].astype(np.float64) - ref)
    assert np.all(np.isfinite(y[:16])) and np.array_equal(y[:16], y16)
    normal = np.r_[0:4, 12:16]
    assert np.all(err[normal] <= 2.5 * eps32 * (np.abs(gam) * (1 + np.abs(yhat[normal])) + np.abs(bet)))
    # the float64 sweep rounds once: within half a float32 ulp of the reference
    assert np.all(err[4:12] <= 0.5 * np.spacing(np.abs(ref[4:12]).astype(np.float32)))
    g = dy * gam
    mg = 0.0 if rms else g.mean(axis=1, keepdims=True)
    mgy = (g * yhat).mean(axis=1, keepdims=True)
    dx_ref = r * ((g - mg) - yhat * mgy)
    bound = 5 * eps32 * r * (np.abs(g) + np.abs(mg) + np.abs(yhat) * np.abs(mgy))
    assert np.all(np.abs(dx - dx_ref) <= bound + 1.5e-45)  # + the smallest float32 (3e38 rows)
    if w is not None:
        assert np.all(np.abs(dw - (dy * yhat).sum(axis=0)) <= eps32 * np.abs(dy * yhat).sum(axis=0))
        d64 = dy.astype(np.float64)
        assert np.all(np.abs(db - d64.sum(axis=0)) <= eps32 * np.abs(d64).sum(axis=0))
    with an.use_fast_paths(False), np.errstate(invalid="ignore", over="ignore"):
        y0, _ = norm.forward(x, w, b)
    np.testing.assert_array_equal(np.isnan(y[16]), np.isnan(y0[16]))


def test_jit_backward_leaves_rows_with_huge_cotangents_to_float64(jit_only):
    """dy·γ near float32's largest value overflows float32 arithmetic (d·γ − mean) where the
    float64 sweep's dx, scaled by rstd 1e-9, is finite (and Σgŷ/n·rstd ~1e28 passes that
    factor's bound): four such rows take the float64 sweep and match the float64 closed form
    to float32 rounding."""
    rng = np.random.default_rng(12)
    n = 1024
    x = (1e9 * rng.standard_normal((4, n))).astype(np.float32)
    dy = (2.5e38 * np.sign(rng.standard_normal((4, n)))).astype(np.float32)
    w = rng.uniform(1.4, 1.5, n).astype(np.float32)
    norm = an.Normalizer(Layer(-1), Standardize(), 0.0)
    _, ctx = norm.forward(x, w, None)
    with np.errstate(over="ignore"):  # dγ's float64 sums of ±2.5e38·ŷ may not fit float32
        dx, _, _ = norm.backward(ctx, dy)
    assert ctx.implementation is numba_jit.NUMBA_JIT
    x64 = x.astype(np.float64)
    c = x64 - x64.mean(axis=1, keepdims=True)
    r = 1 / np.sqrt(np.mean(c * c, axis=1, keepdims=True))
    yhat = c * r
    g = dy * w.astype(np.float64)
    mg, mgy = g.mean(axis=1, keepdims=True), (g * yhat).mean(axis=1, keepdims=True)
    dx_ref = r * ((g - mg) - yhat * mgy)
    eps32 = float(np.finfo(np.float32).eps)
    assert np.all(np.isfinite(dx))
    assert np.all(np.abs(dx - dx_ref) <= 5 * eps32 * r * (np.abs(g) + np.abs(mg) + np.abs(yhat) * np.abs(mgy)))


@pytest.mark.parametrize("name,shape,args", [
    ("batch_norm", (4096, 8), ()), ("batch_norm", (32, 16, 8, 8), ()), ("layer_norm", (32, 512), ()),
    ("group_norm", (8, 16, 8, 8), (4,)), ("instance_norm", (4, 8, 16, 16), ()),
])
def test_fast_path_keeps_float32_accuracy_on_input_offset_by_1e4(blocks, name, shape, args):
    """With |mean| = 1e4·std the float32 mean rounds off ~5e-4·std; the fast path carries that
    remainder (``ctx.saved.mean_lo``), so y and every cotangent stay within 2e-6 (relative to their
    largest value) of PyTorch's float64 autograd on the same float32 values."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = (1e4 + RNG.standard_normal(shape)).astype(np.float32)
    dy = RNG.standard_normal(shape).astype(np.float32)
    c = shape[-1] if name == "layer_norm" else shape[1]
    w, b = RNG.uniform(0.5, 1.5, c).astype(np.float32), RNG.standard_normal(c).astype(np.float32)
    y, pb = an.vjp(getattr(an, name), x, *args, w, b)
    dx, *rest = pb(dy)
    tx, tw, tb = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w, b))
    ty = {"batch_norm": lambda: F.batch_norm(tx, None, None, tw, tb, training=True),
          "layer_norm": lambda: F.layer_norm(tx, (c,), tw, tb),
          "group_norm": lambda: F.group_norm(tx, args[0] if args else 1, tw, tb),
          "instance_norm": lambda: F.instance_norm(tx, weight=tw, bias=tb)}[name]()
    ty.backward(torch.tensor(dy.astype(np.float64)))
    for got, want in zip((y, dx, rest[-2], rest[-1]), (ty, tx.grad, tw.grad, tb.grad)):
        want = want.detach().numpy()
        assert np.max(np.abs(got - want)) <= 2e-6 * np.max(np.abs(want))


def test_constant_input_gives_finite_output_and_gradients(blocks):
    x = np.full((4, 6, 8), 2.5, np.float32)
    for f in (lambda x: an.batch_norm(x), lambda x: an.layer_norm(x), lambda x: an.group_norm(x, 2)):
        y = f(x)
        assert np.all(np.isfinite(y)) and np.all(y == 0)


def test_float16_statistics_accumulate_in_float32():
    x16 = (3.0 + RNG.standard_normal((8, 64))).astype(np.float16)
    y, ctx = an.Normalizer(Layer(-1), Standardize()).forward(x16)
    assert fused(ctx)
    assert y.dtype == np.float16 and ctx.state.var.dtype == np.float32
    x32 = x16.astype(np.float32)
    np.testing.assert_allclose(ctx.state.var.ravel(), x32.astype(np.float64).var(axis=1), rtol=1e-6)
    with an.use_fast_paths(False):
        y32 = an.layer_norm(x32)
    np.testing.assert_allclose(y.astype(np.float32), y32, atol=2e-3)


def test_thread_count_does_not_change_results(impl, monkeypatch):
    monkeypatch.setattr(numpy_fused, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(numba_jit, "PARALLEL_MIN_BYTES", 0)
    x, dy = RNG.standard_normal((32, 8, 50)), RNG.standard_normal((32, 8, 50))
    w, b = RNG.uniform(0.5, 1.5, 8), RNG.standard_normal(8)
    threads = fast_path_threads()
    previous = an.set_fast_paths(True, threads=1)
    try:
        y1, pb1 = an.vjp(an.batch_norm, x, w, b)
        g1 = pb1(dy)
        an.set_fast_paths(True, threads=3)
        y3, pb3 = an.vjp(an.batch_norm, x, w, b)
        g3 = pb3(dy)
    finally:
        an.set_fast_paths(previous, threads=threads)
    np.testing.assert_allclose(y3, y1, rtol=1e-13, atol=1e-13)
    for a, c in zip(g3, g1):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


def test_degenerate_layouts_fall_back_to_the_portable_path():
    x = RNG.standard_normal((4, 1))
    _, ctx = an.Normalizer(Layer(-1), Standardize()).forward(x)   # statistics of one value each
    assert not fused(ctx)
    _, ctx = an.Normalizer(Batch(1), an.operation.LpScale(2.0)).forward(RNG.standard_normal((4, 3)))
    assert not fused(ctx)
    running = np.zeros(3), np.ones(3)
    y = an.batch_renorm(RNG.standard_normal((4, 3)), running_mean=running[0], running_var=running[1])
    assert y.shape == (4, 3)


def test_inputs_below_the_size_threshold_take_the_portable_path(monkeypatch):
    """numpy_fused's threshold (the JIT, which has none, kept out)."""
    monkeypatch.setattr(numpy_fused, "MIN_BYTES", 4096)
    monkeypatch.setattr(numba_jit, "MIN_BYTES", 1 << 62)
    n = an.Normalizer(Layer(-1), Standardize())
    assert not fused(n.forward(RNG.standard_normal((8, 63)))[1])
    assert fused(n.forward(RNG.standard_normal((8, 64)))[1])
    # float16 counts in its float32 compute dtype
    assert fused(n.forward(RNG.standard_normal((8, 128)).astype(np.float16))[1])


def test_switches_turn_the_fast_path_off():
    x = RNG.standard_normal((4, 8))
    n = an.Normalizer(Layer(-1), Standardize())
    assert an.fast_paths_enabled()
    previous = an.set_fast_paths(False)
    try:
        assert previous is True and not an.fast_paths_enabled()
        assert not fused(n.forward(x)[1])
    finally:
        an.set_fast_paths(previous)
    with an.use_fast_paths(False):
        assert not fused(n.forward(x)[1])
    assert fused(n.forward(x)[1])
    with pytest.raises(TypeError, match="set_fast_paths: enabled must be a bool"):
        an.set_fast_paths(1)
    with pytest.raises(ValueError, match="set_fast_paths: threads must be a positive int"):
        an.set_fast_paths(True, threads=0)


@pytest.mark.parametrize("value,expected", [("0", ["False", "False"]), ("1", ["True", "True"])])
def test_environment_variable_switches_the_fast_path(value, expected):
    code = ("import numpy as np, arraynorm as an; from arraynorm._kernels import numpy_fused as f;"
            "f.MIN_BYTES = 0;"
            "c = an.Normalizer(an.partition.Layer(-1), an.operation.Standardize()).forward(np.ones((2, 3)))[1];"
            "print(an.fast_paths_enabled(), c.implementation not in (None, an._kernels.PORTABLE))")
    env = dict(os.environ, ARRAYNORM_FAST_PATHS=value, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == expected


def test_other_backends_run_the_portable_path_with_fast_paths_on(xp):
    """The selection picks NumPy input (numba JIT or NumPy blocks) and Dask input (one-pass
    merged statistics), the portable path elsewhere; every backend gives the same result with
    fast paths on and off."""
    x = from_numpy(xp, RNG.standard_normal((4, 6, 5)), "float64")
    n = an.Normalizer(Group(2), Standardize())
    y_on, ctx = n.forward(x)
    assert fused(ctx) == (backend_name(xp) in ("numpy", "dask"))
    with an.use_fast_paths(False):
        y_off = n(x)
    np.testing.assert_allclose(to_numpy(y_on), to_numpy(y_off), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,shape,args", [
    ("batch_norm", (6, 4, 5, 3), ()), ("layer_norm", (6, 40), ()), ("group_norm", (3, 6, 4, 5), (3,)),
    ("instance_norm", (3, 4, 5, 6), ()), ("rms_norm", (6, 40), ()),
])
def test_fast_path_matches_pytorch_autograd(blocks, name, shape, args):
    """Oracle: torch.nn.functional in float64 with autograd, for y and every cotangent."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, dy = RNG.standard_normal(shape), RNG.standard_normal(shape)
    c = shape[-1] if name in ("layer_norm", "rms_norm") else shape[1]
    w, b = RNG.uniform(0.5, 1.5, c), RNG.standard_normal(c)
    f = getattr(an, name)
    if name == "rms_norm":
        y, pb = an.vjp(f, x, w, eps=1e-6)
        dx, dw = pb(dy)
        db = None
    else:
        y, pb = an.vjp(f, x, *args, w, b)
        dx, *rest = pb(dy)
        dw, db = rest[-2:]
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = {"batch_norm": lambda: F.batch_norm(tx, None, None, tw, tb, training=True),
          "layer_norm": lambda: F.layer_norm(tx, (c,), tw, tb),
          "group_norm": lambda: F.group_norm(tx, args[0] if args else 1, tw, tb),
          "instance_norm": lambda: F.instance_norm(tx, weight=tw, bias=tb),
          "rms_norm": lambda: F.rms_norm(tx, (c,), tw, eps=1e-6)}[name]()
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-9, atol=1e-9)
    if db is not None:
        np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-9, atol=1e-9)


# the benchmark harness ---------------------------------------------------------------------

def test_benchmark_harness_quick_run_writes_valid_json(tmp_path):
    """``python -m benchmarks --quick`` on one small case: the JSON has the machine, the copy
    bandwidth, timings of every backend asked for, and absent backends are reported, not
    raised."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--cases", "bn-2d", "--repeats", "2",
           "--backends", "arraynorm-numpy,naive-numpy", "arraynorm-cupy", "--out", str(tmp_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert any(f.endswith("-quick.json") for f in files) and any(f.endswith(".md") for f in files)
    assert any(f.endswith(".png") for f in files)
    res = json.loads(next(p for p in tmp_path.iterdir() if p.suffix == ".json").read_text())
    assert res["bandwidth"]["cpu"]["gbps"] > 0
    assert res["machine"]["cpus_available"] >= 1 and "threadpools" in res["machine"]
    case = res["cases"]["bn-2d"]
    assert case["shape"] == [512, 1024]
    for b in ("arraynorm-numpy", "naive-numpy"):
        r = case["backends"][b]
        assert r["status"] == "ok"
        for mode in ("fwd", "fwdbwd"):
            assert len(r[mode]["samples_s"]) == 2 and r[mode]["median_s"] > 0 and r[mode]["gbps"] > 0
        assert r["peak_over_input"] > 0
    assert float(case["backends"]["naive-numpy"]["check"].split("=")[1]) < 1e-4
    cupy = case["backends"]["arraynorm-cupy"]["status"]
    assert cupy == "ok" or cupy.startswith("absent")


def test_benchmark_report_judges_gpu_targets_and_draws_both_sides(tmp_path):
    """The GPU half of the report cannot run here; feed it a synthetic run with CUDA results
    (the shape the harness writes) and check the targets, the note and the chart."""
    pytest.importorskip("matplotlib")
    from benchmarks import report

    def timing(ms, share):
        return {"median_s": ms / 1e3, "min_s": ms / 1e3, "samples_s": [ms / 1e3], "inner": 1,
                "bytes_moved": 1, "gbps": 1.0, "copy_share": share}

    def ok(ms, share=0.5):
        return {"status": "ok", "fwd": timing(ms / 2, share), "fwdbwd": timing(ms, share),
                "peak_over_input": 2.0, "check": "reference"}

    res = {
        "machine": {"date": "2026-01-01T00:00:00", "cpu": "test cpu", "cpus_available": 2, "platform": "p",
                    "memory_gib": 1, "caches": {}, "loadavg_1_5_15": [0, 0, 0], "versions": {"numpy": "2"},
                    "threadpools": [], "gpu": {"name": "Test GPU"}},
        "settings": {}, "loadavg_end": [0, 0, 0],
        "bandwidth": {"cpu": {"gbps": 10.0, "method": "m"}, "gpu": {"gbps": 1000.0, "method": "m"}},
        "backends": {b: {"device": d} for b, d in (("arraynorm-numpy", "cpu"), ("torch-cpu", "cpu"),
                                                    ("naive-numpy", "cpu"), ("arraynorm-cupy", "gpu"),
                                                    ("torch-cuda", "gpu"))},
        "cases": {"rms": {"title": "RMSNorm 2x2", "family": "rms", "bandwidth_target": True, "backends": {
            "arraynorm-numpy": ok(10), "torch-cpu": ok(20), "naive-numpy": ok(40),
            "arraynorm-cupy": ok(1, share=0.8), "torch-cuda": ok(0.5),
        }}},
    }
    got = {t["target"]: (round(t["ratio"], 3), t["met"]) for t in report.targets(res)}
    assert got == {"arraynorm-numpy time ratio to torch-cpu": (0.5, True),
                   "arraynorm-numpy time ratio to naive-numpy": (0.25, True),
                   "arraynorm-cupy time ratio to torch-cuda": (2.0, False),
                   "arraynorm-cupy share of device copy bandwidth": (0.8, True)}
    res["targets"] = report.targets(res)
    note = report.markdown(res)
    assert "Test GPU" in note and "| RMSNorm 2x2 |" in note and "**no**" in note
    # issue 13's CPU targets: ≤ 1.0× PyTorch and JAX (JAX absent here: not judged), ≥ 50% of the
    # copy bandwidth on the full-size memory-bound cases ("rms" is one), ≤ 1.05× naive for SN
    res["cases"]["sn"] = {"title": "SpectralNorm 2x2", "family": "sn", "backends": {
        "arraynorm-numpy": ok(10.6, share=None), "naive-numpy": ok(10), "torch-cpu": ok(5)}}
    got = {(t["case"], t["target"]): (round(t["ratio"], 3), t["met"]) for t in report.round2_targets(res)}
    assert got == {("rms", "time ratio to torch-cpu"): (0.5, True),
                   ("rms", "share of the copy bandwidth"): (0.5, True),
                   ("sn", "time ratio to naive-numpy"): (1.06, False)}
    assert "## Targets (issue 13: CPU, round 2)" in report.markdown(res) and "2 of 3 met" in report.markdown(res)
    res["settings"] = {"quick": True}
    assert report.round2_targets(res) == []  # quick sizes are not the issue's
    # python -m benchmarks.note RUN.json writes the note of a run from its JSON
    from benchmarks import note as note_cli

    (tmp_path / "run.json").write_text(json.dumps(res))
    note_cli.main([str(tmp_path / "run.json")])
    assert (tmp_path / "run.md").read_text() == report.markdown(res)
    report.plot(res, str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").stat().st_size > 1000


# the switch across threads (issue 8.8) -------------------------------------------------------

def _run_in_threads(*targets):
    import threading

    errors = []

    def guarded(f):
        def run():
            try:
                f()
            except BaseException as e:  # surfaced in the main thread below
                errors.append(e)
        return run

    threads = [threading.Thread(target=guarded(f)) for f in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def _takes_fast_path(x):
    return fused(an.Normalizer(Layer(-1), Standardize()).forward(x)[1])


def test_use_fast_paths_in_one_thread_does_not_switch_another():
    """Issue 8.8: use_fast_paths(False) in one thread switched every other thread to the
    portable path, and a thread inside use_fast_paths(False) ran with fast paths on when
    another entered use_fast_paths(True)."""
    import threading

    x = RNG.standard_normal((8, 64))
    a_inside, b_inside, a_checked = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with an.use_fast_paths(False):
            a_inside.set()
            assert b_inside.wait(10)
            seen["a inside False while b is inside True"] = (an.fast_paths_enabled(), _takes_fast_path(x))
            a_checked.set()

    def b():
        assert a_inside.wait(10)
        seen["b with the default while a is inside False"] = (an.fast_paths_enabled(), _takes_fast_path(x))
        with an.use_fast_paths(True):
            b_inside.set()
            assert a_checked.wait(10)

    _run_in_threads(a, b)
    assert seen == {"a inside False while b is inside True": (False, False),
                    "b with the default while a is inside False": (True, True)}
    assert an.fast_paths_enabled()


def test_overlapping_blocks_in_two_threads_leave_the_default_alone():
    """Issue 8.8: two overlapping use_fast_paths(False) blocks left fast paths off for good."""
    import threading

    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with an.use_fast_paths(False):
            first_in.set()
            assert second_in.wait(10)
        first_out.set()

    def second():
        assert first_in.wait(10)
        with an.use_fast_paths(False):
            second_in.set()
            assert first_out.wait(10)
            assert not an.fast_paths_enabled()  # its own block still holds

    _run_in_threads(first, second)
    assert an.fast_paths_enabled() and _takes_fast_path(RNG.standard_normal((8, 64)))


def test_set_fast_paths_is_the_default_of_threads_without_a_block_and_a_block_wins_over_it():
    import threading

    seen = []
    inside = threading.Event()
    changed = threading.Event()

    def worker():
        with an.use_fast_paths(True):
            inside.set()
            assert changed.wait(10)
            seen.append(an.fast_paths_enabled())  # the block wins over the new default
        seen.append(an.fast_paths_enabled())      # outside it, the default

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(10)
    previous = an.set_fast_paths(False)
    try:
        changed.set()
        t.join(10)
        late = []
        late_thread = threading.Thread(target=lambda: late.append(an.fast_paths_enabled()))
        late_thread.start()
        late_thread.join(10)
    finally:
        an.set_fast_paths(previous)
    assert seen == [True, False] and late == [False]
    with pytest.raises(TypeError, match="use_fast_paths: enabled must be a bool"):
        with an.use_fast_paths(0):
            pass


def test_concurrent_forward_passes_with_different_settings_give_the_right_results(monkeypatch):
    """Threads running the fast path (with its own worker pool) and the portable path at the
    same time each get their own path and the same values."""
    monkeypatch.setattr(numpy_fused, "BLOCK_BYTES", 1024)
    x, dy = RNG.standard_normal((16, 8, 40)), RNG.standard_normal((16, 8, 40))
    with an.use_fast_paths(False):
        y0, pb0 = an.vjp(an.batch_norm, x)
        dx0 = pb0(dy)[0]
    results = {}

    def run(fast):
        def go():
            with an.use_fast_paths(fast):
                for i in range(5):
                    n = an.Normalizer(Batch(1), Standardize())
                    y, ctx = n.forward(x)
                    assert fused(ctx) == fast
                    results[(fast, i)] = (y, n.backward(ctx, dy)[0])
        return go

    _run_in_threads(run(True), run(False), run(True), run(False))
    for (fast, _), (y, dx) in results.items():
        np.testing.assert_allclose(y, y0, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, dx0, rtol=1e-10, atol=1e-10)


# the numba JIT: scope, selection rule, lazy import, cache ----------------------------------

jit_needed = pytest.mark.skipif(not numba_jit.available(),
                                reason="numba (the optional [jit] extra) is not installed")


@jit_needed
def test_the_jit_takes_its_documented_cases_and_leaves_the_others():
    """The selection rule of numba_jit's docstring, with the default thresholds."""
    f32 = np.float32

    def chosen(partition, shape, dtype=f32, operation=Standardize()):
        x = RNG.standard_normal(shape).astype(dtype)
        return an.Normalizer(partition, operation).forward(x)[1].implementation.name

    assert chosen(Layer(-1), (256, 1024)) == "numba_jit"                  # 1 MiB LN
    assert chosen(Layer(-1), (256, 1024), operation=RMSScale()) == "numba_jit"
    assert chosen(Batch(1), (4, 64, 56, 56)) == "numba_jit"               # NCHW BN
    assert chosen(Instance(1), (4, 16, 32, 32), np.float64) == "numba_jit"
    assert chosen(Group(4), (4, 16, 32, 32)) == "numba_jit"
    assert chosen(GhostBatch(4), (512, 64)) == "numba_jit"
    assert chosen(Batch(1), (4096, 1024)) == "numba_jit"                  # BN on (N, C)
    assert chosen(Layer(-1), (1024, 1024), np.float16) == "numpy_fused"   # float16
    # below the JIT's MIN_BYTES the next implementation answers (numpy_fused: no threshold here)
    assert chosen(Layer(-1), (16, 1024)) == "numpy_fused"
    assert chosen(Layer((1, 2, 3)), (2, 128, 64, 64)) == "numpy_fused"    # rows over 1 MiB


@jit_needed
def test_a_repeated_normalizer_and_the_nn_layers_take_the_jit_at_every_size():
    """``repeated=True`` lifts MIN_BYTES (the layers of arraynorm.nn set it); their results
    are the portable path's, forward and backward, for BN, LN, GN on a 4 KiB input."""
    x = RNG.standard_normal((16, 64)).astype(np.float32)
    assert x.nbytes < numba_jit.MIN_BYTES
    for partition in (Batch(1), Layer(-1), Group(4)):
        # (numpy_fused answers below the JIT's threshold: this module lifts its own)
        assert an.Normalizer(partition, Standardize()).forward(x)[1] \
            .implementation.name == "numpy_fused"
        assert an.Normalizer(partition, Standardize(), repeated=True).forward(x)[1] \
            .implementation.name == "numba_jit"
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    for layer in (an.nn.BatchNorm(64), an.nn.LayerNorm(64), an.nn.GroupNorm(4, 64)):
        layer.to(np, dtype="float32")
        y = layer(x)
        assert layer._saved()["ctx"].implementation.name == "numba_jit", type(layer).__name__
        dx = layer.backward(dy)
        grads = dict(layer.grads)
        with an.use_fast_paths(False):
            y0 = layer(x)
            dx0 = layer.backward(dy)
        np.testing.assert_allclose(y, y0, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(dx, dx0, rtol=2e-5, atol=2e-5)
        for k, g in grads.items():
            np.testing.assert_allclose(g, layer.grads[k], rtol=2e-5, atol=2e-5)


#: a child whose parallel loops run on two threads whatever this process's environment holds
#: (an earlier test may leave OMP_NUM_THREADS=1 in it, as Dask's worker set-up does; one
#: thread would run the loops' serial twins, which start no threading layer)
_TWO_THREADS = {"ARRAYNORM_THREADS": "2", "NUMBA_NUM_THREADS": "2"}


def _python(code, **env):
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT, **env),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


@jit_needed
def test_numba_is_imported_only_when_a_numpy_input_is_asked_about_and_can_be_switched_off():
    code = ("import sys, numpy as np, arraynorm as an; a = 'numba' in sys.modules;"
            "c = an.Normalizer(an.partition.Layer(-1), an.operation.Standardize())"
            ".forward(np.ones((256, 1024), np.float32))[1];"
            "print(a, 'numba' in sys.modules, c.implementation.name)")
    assert _python(code) == ["False", "True", "numba_jit"]
    # 1 MiB is below numpy_fused's threshold: the portable path
    assert _python(code, ARRAYNORM_JIT="0") == ["False", "False", "portable"]


@jit_needed
def test_the_jit_runs_where_numba_finds_no_writable_cache_directory():
    """A read-only install without a writable cache directory: numba refuses ``cache=True``
    (no locator); the loops compile without caching instead of failing the import."""
    code = ("import numba.core.caching as c; c.CacheImpl._locator_classes = [];"
            "import numpy as np, arraynorm as an;"
            "from arraynorm._kernels import _numba_loops as L;"
            "x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32);"
            "y, ctx = an.Normalizer(an.partition.Layer(-1), an.operation.Standardize()).forward(x);"
            "ref = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5);"
            "print(ctx.implementation.name, L.rows_forward._cache.__class__.__name__,"
            " float(np.abs(y - ref).max()) < 1e-5)")
    assert _python(code) == ["numba_jit", "NullCache", "True"]


@jit_needed
def test_jit_calls_from_several_threads_survive_numbas_workqueue_layer():
    """numba's workqueue threading layer (where neither TBB nor OpenMP is installed) aborts
    the process when two threads run parallel loops at once; the JIT serializes its calls
    under that layer, and the results stay right."""
    code = ("import threading, numpy as np, arraynorm as an, numba;"
            "from arraynorm._kernels import numba_jit as J; J.PARALLEL_MIN_BYTES = 0;"
            "x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32);"
            "ref = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5);"
            "ok = [];"
            "work = lambda: ok.append(all(float(np.abs(an.layer_norm(x) - ref).max()) < 1e-5 for _ in range(20)));"
            "ts = [threading.Thread(target=work) for _ in range(4)];"
            "[t.start() for t in ts]; [t.join() for t in ts];"
            "print(numba.threading_layer(), ok == [True] * 4)")
    assert _python(code, NUMBA_THREADING_LAYER="workqueue", **_TWO_THREADS) == ["workqueue", "True"]


def test_a_process_that_ran_the_jit_can_fork_workers(monkeypatch):
    """numba's default threading layer is GNU OpenMP where libgomp exists, and it terminates
    the forked children of a process that launched it when they launch it too; process pools
    (the analysis studies' executor) then died. A child forked after a parallel launch under
    such a layer runs the loops' serial twins, which never start a threading layer: the
    workers live, keep the JIT and compute the same numbers; under a fork-safe layer
    (workqueue, TBB) they keep the parallel loops too."""
    import multiprocessing
    if not numba_jit.available():
        pytest.skip("numba (the optional [jit] extra) is not installed")
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    code = ("import concurrent.futures as cf, multiprocessing as mp, numpy as np, numba, arraynorm as an\n"
            "from arraynorm._kernels import numba_jit as j\n"
            "j.MIN_BYTES = j.PARALLEL_MIN_BYTES = 0\n"
            "def run(seed):\n"
            "    x = np.random.default_rng(seed).standard_normal((64, 256))\n"
            "    y, ctx = an.Normalizer(an.partition.Layer(-1), an.operation.Standardize()).forward(x)\n"
            "    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)\n"
            "    return ctx.implementation is j.NUMBA_JIT, j._serial_only, float(abs(y - ref).max())\n"
            "if __name__ == '__main__':\n"
            "    assert run(0)[0]\n"
            "    safe = numba.threading_layer() in ('tbb', 'workqueue')\n"
            "    with cf.ProcessPoolExecutor(2, mp_context=mp.get_context('fork')) as pool:\n"
            "        out = list(pool.map(run, range(4)))\n"
            "    assert all(used and serial != safe and err < 1e-12 for used, serial, err in out), (safe, out)\n"
            "    assert run(1)[0]\n"
            "    print('ok', numba.threading_layer())\n")
    for layer in (None, "workqueue"):
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
        env.update(_TWO_THREADS)
        if layer:
            env["NUMBA_THREADING_LAYER"] = layer
        env["PYTHONPATH"] = str(ROOT)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


@jit_needed
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (GNU OpenMP)")
def test_numbas_openmp_workers_get_a_short_spin_unless_the_user_chose_one():
    """libgomp reads GOMP_SPINCOUNT once, as it loads — at the JIT's first parallel launch,
    which sets it to ``OMP_SPIN_COUNT`` for that moment only (libgomp's default keeps the
    workers spinning for milliseconds after every loop, taking a core from the next matrix product);
    the environment is as it was afterwards, and a user's GOMP_SPINCOUNT or OMP_WAIT_POLICY
    is left alone. Under the OpenMP layer, libgomp is seen to load while the value is set,
    and says which spin count it took (``OMP_DISPLAY_ENV=VERBOSE``)."""
    code = ("import os, numpy as np, numba, arraynorm as an\n"
            "from arraynorm._kernels import numba_jit as j\n"
            "seen = []\n"
            "gomp = lambda: any('libgomp' in l and 'torch' not in l for l in open('/proc/self/maps'))\n"
            "set_threads = numba.set_num_threads\n"
            "def spy(n):\n"
            "    seen.append((os.environ.get('GOMP_SPINCOUNT', '-'), gomp()))\n"
            "    set_threads(n)\n"
            "numba.set_num_threads = spy\n"
            "x = np.ones((512, 1024), np.float32)\n"
            "an.layer_norm(x); an.layer_norm(x)\n"
            "layer = numba.threading_layer()\n"
            "print(seen[0][0], seen[0][1], len(seen), os.environ.get('GOMP_SPINCOUNT', '-'),\n"
            "      layer != 'omp' or gomp())\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}

    def run(took, **env):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(clean, PYTHONPATH=str(ROOT), OMP_DISPLAY_ENV="VERBOSE",
                                      **_TWO_THREADS, **env), timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        if "OPENMP DISPLAY ENVIRONMENT" in out.stderr:  # GNU OpenMP's report as it loaded
            assert f"GOMP_SPINCOUNT = '{took}'" in out.stderr, out.stderr[-3000:]
        return out.stdout.split()

    spin = str(numba_jit.OMP_SPIN_COUNT)
    # the first launch sees the short spin, libgomp not yet loaded; afterwards it is gone
    assert run(spin) == [spin, "False", "1", "-", "True"]
    assert run("123", GOMP_SPINCOUNT="123") == ["123", "False", "1", "123", "True"]
    assert run("30000000000", OMP_WAIT_POLICY="active") == ["-", "False", "1", "-", "True"]


@jit_needed
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RTLD_DEEPBIND, /proc/self/maps")
def test_numbas_openmp_layer_binds_its_own_libgomp_when_pytorch_loaded_another_first():
    """PyTorch's wheel loads its own libgomp at import; numba's OpenMP layer, started after,
    is loaded deep-bound (``numba_jit._deep_bind``) and runs on the libgomp it links, loaded
    then with the JIT's spin count: numba's settings reach that runtime (it raises the
    nesting levels to what the runtime supports), not PyTorch's, whose levels stay as
    PyTorch's import left them; Python's dlopen flags are untouched. Without the deep
    binding (``LD_PRELOAD`` set, which turns it off) the same program shows numba's setting
    in PyTorch's runtime — the case the binding exists for."""
    pytest.importorskip("torch")
    code = ("import ctypes, os, sys, torch, numpy as np, arraynorm as an, numba\n"
            "here = os.path.dirname(torch.__file__)\n"
            "torch_gomp = sorted({l.split()[-1] for l in open('/proc/self/maps')\n"
            "                     if 'libgomp' in l and l.split()[-1].startswith(here)})\n"
            "if not torch_gomp:\n"
            "    print('no-libgomp'); sys.exit()\n"
            "mine = ctypes.CDLL(torch_gomp[0])\n"
            "before = mine.omp_get_max_active_levels()\n"
            "flags = sys.getdlopenflags()\n"
            "x = np.ones((512, 1024), np.float32)\n"
            "an.layer_norm(x)\n"
            "assert numba.threading_layer() == 'omp', numba.threading_layer()\n"
            "other = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l} - {torch_gomp[0]})\n"
            "theirs = ctypes.CDLL(other[0]).omp_get_max_active_levels() if other else None\n"
            "print(before, mine.omp_get_max_active_levels(), theirs, sys.getdlopenflags() == flags,\n"
            "      os.environ.get('GOMP_SPINCOUNT', '-'))\n")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "LD_PRELOAD", "NUMBA_THREADING_LAYER")}

    def run(**env):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(clean, PYTHONPATH=str(ROOT), NUMBA_THREADING_LAYER="omp",
                                      **_TWO_THREADS, **env), timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.split()

    got = run()
    if got == ["no-libgomp"]:
        pytest.skip("this PyTorch build loads no libgomp of its own")
    before, torch_after, numba_levels, flags_restored, spin_env = got
    assert torch_after == before and flags_restored == "True" and spin_env == "-"
    assert numba_levels != "None" and int(numba_levels) > 1  # numba's own runtime got its setting
    # the contrast: bound the usual way (a preload disables the deep binding), numba's
    # setting lands in PyTorch's runtime
    shallow = run(LD_PRELOAD=" ")
    assert shallow[1] != shallow[0], shallow


def test_no_deep_binding_where_a_preload_interposes_symbols_or_off_linux(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert numba_jit._deep_bind() is False
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert numba_jit._deep_bind() is False


def test_the_spin_count_leaves_the_environment_as_it_was_when_the_launch_fails(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.raises(RuntimeError, match="launch failed"):
        with numba_jit._omp_spin_count():
            assert os.environ["GOMP_SPINCOUNT"] == str(numba_jit.OMP_SPIN_COUNT)
            raise RuntimeError("launch failed")
    assert "GOMP_SPINCOUNT" not in os.environ


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(8, 4), (64, 256), (128, 1024), (3, 1000, 50)])
@pytest.mark.parametrize("parallel", [False, True])
def test_jit_relu_and_its_backward_give_numpys_bits(monkeypatch, dtype, shape, parallel):
    """numba_jit.relu / relu_backward (ReLU's forward from PARALLEL_MIN_BYTES, its backward
    from RELU_MIN_BYTES)
    against NumPy's ``fmax(x, 0)`` and ``where(x > 0, t, 0)`` bit for bit, on inputs holding
    ±0, ±inf and NaN in x and in the cotangent, on both sides of the size threshold and on
    the serial and parallel loops; the nn.ReLU layer gives the same bits with fast paths on
    and off. Non-contiguous inputs and mixed dtypes are left to NumPy (None)."""
    if not numba_jit.available():
        pytest.skip("numba (the optional [jit] extra) is not installed")
    import arraynorm.nn as nn

    if parallel:
        monkeypatch.setattr(numba_jit, "PARALLEL_MIN_BYTES", 0)
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    t = rng.standard_normal(shape).astype(dtype)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0], dtype)
    x.flat[:8], t.flat[1:9] = special, special
    x.flat[-8:], t.flat[-8:] = special[::-1], special
    bits = np.uint32 if dtype == "float32" else np.uint64
    want_y = np.fmax(x, x.dtype.type(0))
    want_dx = np.where(x > 0, t, x.dtype.type(0))
    big = x.nbytes >= numba_jit.RELU_MIN_BYTES
    y, dx = numba_jit.relu(x), numba_jit.relu_backward(x, t)
    assert (y is not None, dx is not None) == (big and x.nbytes >= numba_jit.PARALLEL_MIN_BYTES, big)
    y = numba_jit.relu(x) if parallel else y  # PARALLEL_MIN_BYTES lifted: the forward answers
    if big:
        assert y is not None or not parallel
        if y is not None:
            np.testing.assert_array_equal(y.view(bits), want_y.view(bits))
        np.testing.assert_array_equal(dx.view(bits), want_dx.view(bits))
        assert numba_jit.relu(x.T) is None and numba_jit.relu_backward(x, t.astype("float16")) is None
    layer = nn.ReLU()
    for fast in (True, False):
        with an.use_fast_paths(fast):
            np.testing.assert_array_equal(layer(x).view(bits), want_y.view(bits))
            np.testing.assert_array_equal(layer.backward(t).view(bits), want_dx.view(bits))


def _softmax_rows_f64(s, scale):
    z = (s * np.float32(scale)).astype(np.float64)  # the product rounded to float32 first, as both paths do
    with np.errstate(invalid="ignore"):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("shape", [(8, 4, 32, 32), (4, 4, 128, 128), (40, 1000), (2100, 5)])
@pytest.mark.parametrize("parallel", [False, True])
def test_jit_softmax_and_its_backward_match_float64_and_numpys_recipe(monkeypatch, shape, parallel):
    """numba_jit.softmax (its own vectorized expf) and softmax_backward against the float64
    formulas on float32 rows holding NaN, +inf, −inf only, masked (−inf) entries, a constant
    row and magnitudes whose exponentials are subnormal or 0; NaN rows where NumPy's
    max-shifted recipe has them; a negative scale as the recipe. Below the size threshold,
    strided or of another dtype (or an infinite scale) they do not answer; the functional
    softmax and its backward take them and stay within float32 rounding of NumPy's recipe
    (fast paths off)."""
    if not numba_jit.available():
        pytest.skip("numba (the optional [jit] extra) is not installed")
    from arraynorm.nn.functional import softmax, softmax_backward

    if parallel:
        monkeypatch.setattr(numba_jit, "PARALLEL_MIN_BYTES", 0)
    rng = np.random.default_rng(13)
    s = (rng.standard_normal(shape) * 6).astype(np.float32)
    rows = s.reshape(-1, shape[-1])
    rows[0, 1] = np.nan
    rows[1, 0] = np.inf
    rows[2] = -np.inf
    rows[3, : shape[-1] // 2] = -np.inf  # a causal mask's row
    rows[4] = 7.5
    rows[5] *= 2000  # exponentials from 1 down through the subnormals to 0
    g = rng.standard_normal(shape).astype(np.float32)
    scale = 0.125
    big = s.nbytes >= numba_jit.SOFTMAX_MIN_BYTES
    p = numba_jit.softmax(s, scale)
    assert (p is not None) == big
    if not big:
        return
    want = _softmax_rows_f64(s, scale)
    with an.use_fast_paths(False), np.errstate(invalid="ignore"):  # (inf − inf: NaN rows)
        recipe = softmax(np, s * np.float32(scale))  # NumPy's passes
    np.testing.assert_array_equal(np.isnan(p), np.isnan(recipe))
    ok = ~np.isnan(want)
    tiny = 2.0 ** -149  # subnormal results: a few of float32's smallest steps
    np.testing.assert_allclose(p[ok], want[ok], rtol=3e-6, atol=8 * tiny)
    np.testing.assert_allclose(p[ok], recipe[ok], rtol=4e-6, atol=8 * tiny)
    fin = ~np.isnan(p).any(axis=-1)
    np.testing.assert_allclose(p[fin].sum(axis=-1, dtype=np.float64), 1.0, rtol=2e-6)
    assert (p[ok] >= 0).all() and p.dtype == np.float32 and p.shape == s.shape
    # backward, float32 and float64, against the float64 formula on the same inputs
    for dt in (np.float32, np.float64):
        gd, pd = g.astype(dt), np.where(np.isnan(p), 0, p).astype(dt)
        ds = numba_jit.softmax_backward(gd, pd, scale)
        g64, p64 = gd.astype(np.float64), pd.astype(np.float64)
        t = (g64 * p64).sum(axis=-1, keepdims=True)
        want_ds = p64 * (g64 - t) * scale
        eps = np.finfo(dt).eps
        gp = np.abs(g64 * p64).sum(axis=-1, keepdims=True)  # each product rounded in the sum
        bound = 4 * eps * p64 * (np.abs(g64) + np.abs(t) + gp) * scale + np.finfo(dt).tiny
        assert ds is not None and ds.dtype == dt
        assert (np.abs(ds - want_ds) <= bound).all()
        off = softmax_backward(np, gd, pd, scale=scale)  # the functional op: the JIT's bits
        np.testing.assert_array_equal(off, ds)
        with an.use_fast_paths(False):
            recipe_ds = softmax_backward(np, gd, pd, scale=scale)
        assert (np.abs(recipe_ds - want_ds) <= 2 * bound).all()
    # the functional op takes the JIT (the same bits), scaled or not; NumPy's recipe with
    # fast paths off (the same values as the scaled product through it, above)
    np.testing.assert_array_equal(softmax(np, s, scale=scale), p)
    s1 = s * np.float32(scale)
    np.testing.assert_array_equal(softmax(np, s1), numba_jit.softmax(s1, 1.0))
    with an.use_fast_paths(False), np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(softmax(np, s, scale=scale), recipe)
    # a negative scale (max of the scaled values, not of s): the recipe's NaN and values
    neg = numba_jit.softmax(s, -0.5)
    with an.use_fast_paths(False), np.errstate(invalid="ignore"):
        neg_recipe = softmax(np, s, scale=-0.5)
    np.testing.assert_array_equal(np.isnan(neg), np.isnan(neg_recipe))
    fin = ~np.isnan(neg_recipe)
    np.testing.assert_allclose(neg[fin], neg_recipe[fin], rtol=4e-6, atol=8 * tiny)
    # not answered: strided, float64/float16 forward, a cotangent of another dtype, inf scale
    assert numba_jit.softmax(np.swapaxes(s, -1, -2), scale) is None
    assert numba_jit.softmax(s.astype(np.float64), scale) is None
    assert numba_jit.softmax(s.astype(np.float16), scale) is None
    assert numba_jit.softmax(s, np.inf) is None and numba_jit.softmax_backward(g, p, np.nan) is None
    assert numba_jit.softmax_backward(g, p.astype(np.float64), scale) is None
    assert numba_jit.softmax_backward(g[..., :-1], p[..., :-1], scale) is None


def test_attention_on_the_jit_softmax_matches_numpys_recipe_and_float64(monkeypatch):
    """A float32 attention block large enough for the compiled softmax (forward and
    backward, the scale folded into them; causal masking before it) gives what the NumPy
    recipe (fast paths off) gives within float32 rounding, and both stay close to the
    float64 module; with the [jit] extra the compiled sweeps answered the fast run's calls."""
    import arraynorm.nn as nn

    answered = []
    for name in ("softmax", "softmax_backward"):
        def spy(*args, _f=getattr(numba_jit, name), _n=name):
            out = _f(*args)
            answered.append((_n, out is not None))
            return out
        monkeypatch.setattr(numba_jit, name, spy)
    rng = np.random.default_rng(14)
    x = rng.standard_normal((4, 64, 32))
    dy = rng.standard_normal((4, 64, 32))
    for causal in (False, True):
        outs = {}
        for name, dt, fast in (("jit", "float32", True), ("recipe", "float32", False), ("f64", "float64", False)):
            m = nn.MultiHeadSelfAttention(32, 2, causal=causal, rng=5, dtype=dt)
            answered.clear()
            with an.use_fast_paths(fast):
                y = m(x.astype(dt))
                dx = m.backward(dy.astype(dt))
            outs[name] = (y, dx, m.in_proj.grads["weight"], m.attention_weights)
            if name == "jit":  # (4·2·64·64 float32 scores: 128 KiB, over the threshold)
                jit = numba_jit.available()
                assert answered == [("softmax", jit), ("softmax_backward", jit)]
        for a, b, c in zip(outs["jit"], outs["recipe"], outs["f64"]):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
            np.testing.assert_allclose(a, c, rtol=2e-4, atol=2e-5)
        if causal:
            p = outs["jit"][3]
            assert (p[..., np.triu_indices(64, 1)[0], np.triu_indices(64, 1)[1]] == 0).all()


def test_a_remembered_selection_follows_the_selectors_settings(monkeypatch):
    """A normalizer remembers the implementation chosen per input signature; changing the
    implementations asked or their size thresholds (as the tests above do) must change the
    choice on the next call, for a Normalizer and for the functional ops that reuse one."""
    x = np.random.default_rng(12).standard_normal((8, 4, 10)).astype(np.float32)  # 1.25 KiB
    monkeypatch.setattr(numpy_fused, "MIN_BYTES", 1 << 40)  # (this file's fixture lifts it)
    norm = an.Normalizer(Batch(), Standardize())
    assert norm.forward(x)[1].implementation is PORTABLE  # under every fast path's threshold
    an.batch_norm(x)
    ran = []
    forward = numpy_fused.NumpyFused.forward
    monkeypatch.setattr(numpy_fused.NumpyFused, "forward",
                        lambda self, *a: (ran.append(1), forward(self, *a))[1])
    monkeypatch.setattr(numpy_fused, "MIN_BYTES", 0)
    monkeypatch.setattr(kernels, "IMPLEMENTATIONS", (numpy_fused.NUMPY_FUSED,))
    assert norm.forward(x)[1].implementation is numpy_fused.NUMPY_FUSED
    an.batch_norm(x)
    assert len(ran) == 2
    monkeypatch.setattr(numpy_fused, "MIN_BYTES", 1 << 40)
    assert norm.forward(x)[1].implementation is PORTABLE
