"""Statistics of a chunked ``dask.array`` in one pass (``arraynorm._kernels.dask_moments``):
the ``dask_moments`` implementation (synchronized BN and the per-row normalizers), and the
one-pass reductions behind ``batch_moments``, ``whitening_moments`` and ``RunningMeanStd``.

Oracles: NumPy's two-pass mean/var of the whole array in float64 (``np.mean``/``np.var`` of the
float64 data), PyTorch autograd in float64 for outputs and cotangents, ``np.cov``-style
covariance of the whole array. "One pass" is checked where it matters on a cluster: under
Dask's scheduler the statistics hold at most a couple of input chunks at once (the portable
two-pass path, the control, holds them all), and building the graph computes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask  # noqa: E402
from array_api_compat import array_namespace  # noqa: E402

import arraynorm as an  # noqa: E402
from arraynorm.operation import RMSScale, Standardize  # noqa: E402
from arraynorm.partition import Batch, Group, Instance, Layer  # noqa: E402
from arraynorm.rl import RunningMeanStd  # noqa: E402

RNG = np.random.default_rng(20261202)


class _Computes(dask.callbacks.Callback):
    """Counts graph executions by the local schedulers."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def _start(self, dsk):
        self.n += 1


class _PeakChunks(dask.callbacks.Callback):
    """The most chunk-sized results (arrays of at least ``size`` elements: an input chunk or
    anything computed elementwise from one) held at once by the local scheduler."""

    def __init__(self, size):
        super().__init__()
        self.size, self.peak = size, 0

    def _posttask(self, key, result, dsk, state, worker_id):
        held = sum(1 for v in state["cache"].values()
                   if isinstance(v, np.ndarray) and v.size >= self.size)
        self.peak = max(self.peak, held)


def _dask(a, rows):
    return da.from_array(a, chunks=(rows,) + a.shape[1:])


def _torch_reference(kind, x, w, b, dy, eps=1e-5):
    """y and (dx, dw, db) from PyTorch autograd in float64 on the whole array."""
    torch = pytest.importorskip("torch")  # the torch extra (the other tests need no torch)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    tb = None if b is None else torch.tensor(b, dtype=torch.float64, requires_grad=True)
    F = torch.nn.functional
    if kind == "bn":
        y = F.batch_norm(tx, None, None, tw, tb, training=True, eps=eps)
    elif kind == "ln":
        y = F.layer_norm(tx, x.shape[1:], tw, tb, eps=eps)
    elif kind == "gn":
        y = F.group_norm(tx, 3, tw, tb, eps=eps)
    elif kind == "in":
        y = F.instance_norm(tx, weight=tw, bias=tb, use_input_stats=True, eps=eps)
    else:  # rms over (C, H, W)
        y = F.rms_norm(tx, x.shape[1:], tw, eps=eps)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    grads = [tx.grad.numpy(), tw.grad.numpy(), None if tb is None else tb.grad.numpy()]
    return y.detach().numpy(), grads


NORMALIZERS = {
    "bn": (Batch(), Standardize(), (6,), True),
    "ln": (Layer((1, 2, 3)), Standardize(), (6, 4, 5), True),
    "gn": (Group(3), Standardize(), (6,), True),
    "in": (Instance(), Standardize(), (6,), True),
    "rms": (Layer((1, 2, 3)), RMSScale(), (6, 4, 5), False),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(NORMALIZERS))
def test_forward_and_backward_equal_the_whole_array_result(kind, dtype):
    """Chunked unevenly along the batch (and a chunk of one row), offset by 10³: output and
    cotangents equal PyTorch's float64 result on the whole array, the implementation is
    ``dask_moments``, and building forward + backward computes nothing."""
    part, op, pshape, has_bias = NORMALIZERS[kind]
    n = an.Normalizer(part, op)
    x = RNG.standard_normal((50, 6, 4, 5)) * 3.0 + 1e3
    w, b = RNG.standard_normal(pshape), RNG.standard_normal(pshape) if has_bias else None
    dy = RNG.standard_normal(x.shape)
    xd = da.from_array(x.astype(dtype), chunks=((17, 1, 20, 12), 6, 4, 5))
    wd = da.from_array(w.astype(dtype))
    bd = None if b is None else da.from_array(b.astype(dtype))
    with _Computes() as c:
        y, ctx = n.forward(xd, wd, bd)
        grads = n.backward(ctx, da.from_array(dy.astype(dtype), chunks=xd.chunks))
    assert c.n == 0
    assert ctx.implementation.name == "dask_moments"
    y_ref, g_ref = _torch_reference(kind, x.astype(dtype).astype(np.float64), w.astype(dtype),
                                    None if b is None else b.astype(dtype),
                                    dy.astype(dtype).astype(np.float64))
    rtol = 1e-12 if dtype == "float64" else 1e-5
    y_np, *g_np = dask.compute(y, *grads)
    assert y_np.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y_np, y_ref, rtol=rtol, atol=rtol)
    for got, ref in zip(g_np, g_ref):
        assert (got is None) == (ref is None)
        if ref is not None:
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_statistics_are_exact_whatever_the_chunking(dtype):
    """Mean and variance over N·H·W for several chunkings (one chunk, one row per chunk,
    uneven, chunked along H too) equal NumPy's float64 two-pass statistics of the whole
    array to float64 rounding (~1e-15 relative; float32 data is exact in float64), also with
    an offset of 10⁸ that a single-pass E[x²] − E[x]² would lose entirely."""
    x = (RNG.standard_normal((40, 3, 6, 2)) * 0.5 + 1e8).astype(dtype)
    x64 = x.astype(np.float64)
    mean_ref = x64.mean(axis=(0, 2, 3))
    var_ref = ((x64 - mean_ref[:, None, None]) ** 2).mean(axis=(0, 2, 3))
    for chunks in [x.shape, (1, 3, 6, 2), ((7, 13, 20), 3, 6, 2), (9, 3, (1, 5), 2)]:
        m, v = dask.compute(*an.batch_moments(da.from_array(x, chunks=chunks)))
        np.testing.assert_allclose(m, mean_ref, rtol=1e-15)
        np.testing.assert_allclose(v, var_ref, rtol=1e-12)  # var of 0.25 around 1e8: δ·ulp
        # the normalizer's state has the same statistics (synchronized across chunks)
        _, ctx = an.Normalizer(Batch(), Standardize()).forward(da.from_array(x, chunks=chunks))
        np.testing.assert_allclose(ctx.state.mean.compute().ravel(), mean_ref.astype(dtype),
                                   rtol=1e-15 if dtype == "float64" else 1e-7)
        np.testing.assert_allclose(ctx.state.var.compute().ravel(), var_ref,
                                   rtol=1e-12 if dtype == "float64" else 1e-6)


def test_statistics_read_each_chunk_once():
    """The statistics hold at most a few input chunks at a time (each chunk is reduced to its
    partial as soon as it is made; the first chunk's first row, the shift, keeps one more).
    The portable two-pass path, the control, must hold every chunk until the mean is known."""
    x = da.random.default_rng(1).standard_normal((400, 8), chunks=(20, 8))

    def peak(fn):
        with dask.config.set(scheduler="sync"), _PeakChunks(20 * 8) as p:
            dask.compute(*fn())
        return p.peak

    one_pass = peak(lambda: an.batch_moments(x))
    with an.use_fast_paths(False):  # the portable path's statistics
        two_pass = peak(lambda: an.Normalizer(Batch(), Standardize()).forward(x)[1].state.var)
    assert one_pass <= 3
    assert two_pass == x.numblocks[0]
    assert peak(lambda: an.Normalizer(Batch(), Standardize()).forward(x)[1].state.var) <= 3
    assert peak(lambda: an.whitening_moments(x, num_groups=2, method="iternorm")) <= 3
    assert peak(lambda: RunningMeanStd(8, xp=array_namespace(x)).update(x).var) <= 3


def test_whitening_moments_one_pass_equal_numpy():
    """IterNorm's mean and whitening matrix from the one-pass co-moments equal the NumPy
    result on the whole array; the eigendecomposition methods raise NotImplementedError on
    Dask, naming the function, before any graph is built."""
    x = RNG.standard_normal((300, 6)) @ RNG.standard_normal((6, 6)) + 50.0
    xd = _dask(x, 37)
    with _Computes() as c:
        m, w = an.whitening_moments(xd, num_groups=2, method="iternorm", T=7)
    assert c.n == 0
    m_ref, w_ref = an.whitening_moments(x, num_groups=2, method="iternorm", T=7)
    np.testing.assert_allclose(m.compute(), m_ref, rtol=1e-14)
    np.testing.assert_allclose(w.compute(), w_ref, rtol=1e-11, atol=1e-13)
    # the covariance itself against np.cov of each group
    from arraynorm._kernels.dask_moments import one_pass_covariance
    xb = xd.reshape(300, 2, 3).transpose(1, 2, 0)
    mu, cov = one_pass_covariance(array_namespace(xd), xb)
    for g in range(2):
        np.testing.assert_allclose(cov.compute()[g], np.cov(x[:, 3 * g:3 * g + 3].T, bias=True),
                                   rtol=1e-13)
    np.testing.assert_allclose(mu.compute()[..., 0], x.mean(0).reshape(2, 3), rtol=1e-15)
    with pytest.raises(NotImplementedError, match="whitening_moments: ZCA"):
        an.whitening_moments(xd, method="zca")


def test_running_mean_std_one_pass_on_chunks():
    """RunningMeanStd fed chunked batches: the statistics of the concatenated stream."""
    x = RNG.standard_normal((240, 3)) * 2.0 - 7.0
    xd = _dask(x, 11)
    rms = RunningMeanStd(3, xp=array_namespace(xd))
    for lo in range(0, 240, 80):
        rms.update(xd[lo:lo + 80])
    assert rms.count == 240
    np.testing.assert_allclose(rms.mean.compute(), x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(rms.var.compute(), x.var(0), rtol=1e-13)


def test_chunk_type_is_kept_in_meta():
    """Every array the implementation builds keeps the input's chunk type and dtype in its
    ``_meta`` (a CuPy-chunked array stays CuPy: no copy to the host). Checked with NumPy
    chunks and with NumPy masked-array chunks, a second chunk type Dask tracks by ``_meta``."""
    x = RNG.standard_normal((30, 4))
    for xd in (_dask(x.astype(np.float32), 7),
               da.from_array(np.ma.masked_array(x, mask=np.zeros_like(x, bool)), chunks=(7, 4),
                             asarray=False)):
        y, ctx = an.Normalizer(Batch(), Standardize()).forward(xd)
        kind = type(xd._meta)
        for a in (y, ctx.state.mean, ctx.state.var, ctx.state.rstd, *an.batch_moments(xd)):
            assert type(a._meta) is kind, (kind, type(a._meta))
        assert y.dtype == xd.dtype
        dx, _, _ = an.Normalizer(Batch(), Standardize()).backward(ctx, xd)
        assert type(dx._meta) is kind


def test_persist_statistics_holds_one_chunk_and_changes_no_number():
    """Inside ``persist_statistics`` the forward computes (persists) the BN statistics and the
    backward its sums with dγ, dβ — one compute each with the local scheduler — so computing
    the output and the input cotangent afterwards holds a chunk or two, where the plain graph
    holds every chunk until the statistics are known; the numbers are the same. Chunk-local
    statistics (LN) are not persisted (no compute while building)."""
    x = da.random.default_rng(3).standard_normal((400, 8), chunks=(20, 8)) + 5.0
    dy = da.random.default_rng(4).standard_normal((400, 8), chunks=(20, 8))
    w, b = da.from_array(RNG.standard_normal(8)), da.from_array(RNG.standard_normal(8))
    bn = an.Normalizer(Batch(), Standardize())

    def run(persist):
        with dask.config.set(scheduler="sync"), an.persist_statistics(persist), _Computes() as c:
            y, ctx = bn.forward(x, w, b)
            dx, dw, db = bn.backward(ctx, dy)
        outs = ((y * y).sum(axis=0), (dx * dx).sum(axis=0))
        peaks = []
        for out in outs:
            with dask.config.set(scheduler="sync"), _PeakChunks(20 * 8) as p:
                out.compute()
            peaks.append(p.peak)
        return c.n, peaks, dask.compute(y, dx, dw, db)

    n_plain, peaks_plain, plain = run(False)
    n_persist, peaks_persist, persisted = run(True)
    assert n_plain == 0 and n_persist == 2
    assert max(peaks_persist) <= 3
    assert min(peaks_plain) >= x.numblocks[0]
    for got, want in zip(persisted, plain):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    with an.persist_statistics(), _Computes() as c:
        ln = an.Normalizer(Layer((1,)), Standardize())
        _, ctx = ln.forward(x, w, b)
        ln.backward(ctx, dy)
    assert c.n == 0


@pytest.mark.gpu
def test_cupy_chunks_stay_on_the_gpu_and_match_cupy_on_the_whole_array():
    """Multi-GPU through Dask: a Dask array of CuPy chunks keeps CuPy chunks through the
    one-pass statistics, the output and the backward (``_meta`` is CuPy, nothing copied to the
    host), and synchronized BN equals BN of the whole CuPy array."""
    from _helpers import cuda_available

    if not cuda_available():
        pytest.skip("needs a CUDA device and CuPy")
    import cupy as cp

    x = cp.asarray(RNG.standard_normal((64, 8, 3)))
    dy = cp.asarray(RNG.standard_normal(x.shape))
    xd = da.from_array(x, chunks=(16, 8, 3), asarray=False)
    dyd = da.from_array(dy, chunks=xd.chunks, asarray=False)
    y, pb = an.vjp(an.batch_norm, xd)
    (dx,) = pb(dyd)[:1]
    assert isinstance(y._meta, cp.ndarray) and isinstance(dx._meta, cp.ndarray)
    got_y, got_dx = dask.compute(y, dx)
    assert isinstance(got_y, cp.ndarray) and isinstance(got_dx, cp.ndarray)
    want_y, pbw = an.vjp(an.batch_norm, x)
    cp.testing.assert_allclose(got_y, want_y, rtol=1e-12, atol=1e-12)
    cp.testing.assert_allclose(got_dx, pbw(dy)[0], rtol=1e-12, atol=1e-10)
