"""Synchronized batch norm and layer norm on an input larger than the cluster's memory.

A ``LocalCluster`` of 2 single-threaded worker processes limited to 400 MiB each holds a
lazily generated float32 input of 1.2 GB (``da.random`` chunks made on the workers, never on
the client). Batch norm's forward and backward run inside
:func:`arraynorm._kernels.dask_moments.persist_statistics` (the statistics, then Σg and
Σg·ŷ with dγ, dβ, are persisted; every other pass regenerates its chunks); layer norm's
statistics are chunk-local, so its sampled blocks are computed on their own. Oracles written without the library: float64 sums about the known mean for the
batch statistics, plain Dask sums of NumPy formulas for the parameter cotangents, NumPy on sampled
row blocks for y and dx. No worker may die (a worker over its limit is restarted: its pid
changes) and the peak worker memory is sampled and printed (``-s``). ``-m dask_cluster``
selects this test with the sweeps'.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import dask  # noqa: E402

import arraynorm as an  # noqa: E402
from arraynorm._kernels.dask_moments import persist_statistics  # noqa: E402

pytestmark = pytest.mark.dask_cluster

N, C, ROWS = 1_200_000, 256, 10_000   # 1.2288 GB of float32 in 120 chunks of 10 MB
LIMIT = "400MiB"
EPS = 1e-5
SAMPLES = (0, 67, N // ROWS - 1)     # row blocks checked against NumPy


def _rss():
    import psutil
    return psutil.Process().memory_info().rss


def _cpu_s():
    import psutil
    t = psutil.Process().cpu_times()
    return t.user + t.system


class _MemorySampler(threading.Thread):
    """Samples every worker's resident memory while the test runs."""

    def __init__(self, client, every=0.5):
        super().__init__(daemon=True)
        self.client, self.every, self.peak = client, every, {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                for w, rss in self.client.run(_rss).items():
                    self.peak[w] = max(self.peak.get(w, 0), rss)
            except Exception:  # a worker restarting between two samples
                pass
            self.stop.wait(self.every)


@pytest.fixture(scope="module")
def client():
    with LocalClusterWithLimit() as cluster, distributed.Client(cluster) as c, c.as_current():
        c.wait_for_workers(2, timeout=60)
        yield c


def LocalClusterWithLimit():
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    memory_limit=LIMIT, dashboard_address=None,
                                    host="127.0.0.1")


def _inputs():
    x = da.random.default_rng(14).random((N, C), dtype=np.float32, chunks=(ROWS, C)) * 4.0 + 1.0
    dy = da.random.default_rng(15).random((N, C), dtype=np.float32, chunks=(ROWS, C)) - 0.5
    return x, dy


def test_batch_and_layer_norm_beyond_memory(client):
    t0 = time.perf_counter()
    pids = client.run(os.getpid)
    cpu0, here0 = client.run(_cpu_s), _cpu_s()
    sampler = _MemorySampler(client)
    sampler.start()
    x, dy = _inputs()
    assert x.nbytes >= 1.2e9 and x.nbytes > 2 * dask.utils.parse_bytes(LIMIT)
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    wd, bd = da.from_array(w), da.from_array(b)

    # --- batch norm (synchronized over every chunk) -------------------------------------
    bn = an.Normalizer(an.partition.Batch(), an.operation.Standardize())
    with persist_statistics():  # submits the statistics pass, returns at once
        y, ctx = bn.forward(x, wd, bd)
    assert ctx.implementation.name == "dask_moments"
    # the oracle statistics, textbook float64 sums about the generator's mean 3 (no
    # cancellation: the spread is O(1)), computed alongside (the scheduler shares the chunks
    # between the two graphs: one pass)
    xc = x.astype(np.float64) - 3.0
    s1, s2 = client.gather(client.compute([xc.sum(axis=0), (xc * xc).sum(axis=0)]))
    mean_o, var_o = 3.0 + s1 / N, s2 / N - (s1 / N) ** 2
    mean, var = dask.compute(ctx.state.mean, ctx.state.var)
    np.testing.assert_allclose(mean.ravel(), mean_o, rtol=1e-7)   # float32 state: rounding
    np.testing.assert_allclose(var.ravel(), var_o, rtol=1e-6)
    rstd_o = 1.0 / np.sqrt(var_o + EPS)
    with persist_statistics():  # submits Σg, Σg·ŷ, dγ, dβ: the backward's pass
        dx, dw, db = bn.backward(ctx, dy)
    # dγ = Σ dy·ŷ, dβ = Σ dy with the oracle statistics, plain Dask sums in float64 (alongside)
    yhat_o = (x.astype(np.float64) - mean_o) * rstd_o
    dw_o, db_o = client.gather(client.compute([(dy.astype(np.float64) * yhat_o).sum(axis=0),
                                               dy.astype(np.float64).sum(axis=0)]))
    dw_got, db_got = dask.compute(dw, db)
    np.testing.assert_allclose(dw_got, dw_o, rtol=1e-4, atol=1e-3 * np.abs(dw_o).max())
    np.testing.assert_allclose(db_got, db_o, rtol=1e-4, atol=1e-3 * np.abs(db_o).max())
    for i in SAMPLES:
        xs, dys, ys, dxs = dask.compute(x.blocks[i], dy.blocks[i], y.blocks[i], dx.blocks[i])
        yh = (xs.astype(np.float64) - mean_o) * rstd_o
        np.testing.assert_allclose(ys, yh * w + b, rtol=1e-5, atol=1e-5)
        g = dys.astype(np.float64) * w
        dx_o = rstd_o * (g - w * db_o / N - yh * (w * dw_o / N))
        np.testing.assert_allclose(dxs, dx_o, rtol=1e-4, atol=1e-5 * np.abs(dx_o).max())
    t_bn = time.perf_counter() - t0

    # --- layer norm (per row: chunk-local, so the sampled blocks are computed alone; its
    # dγ, dβ over the whole batch are the same Dask sums as BN's, checked above) ----------
    ln = an.Normalizer(an.partition.Layer((1,)), an.operation.Standardize())
    with persist_statistics():  # nothing to persist: the statistics never cross chunks
        y, ctx = ln.forward(x, wd, bd)
        dx, dw, db = ln.backward(ctx, dy)

    def ln_ref(xb):
        xb = xb.astype(np.float64)
        m = xb.mean(axis=1, keepdims=True)
        return (xb - m) / np.sqrt(((xb - m) ** 2).mean(axis=1, keepdims=True) + EPS)

    assert ctx.implementation.name == "dask_moments"
    for i in SAMPLES:
        xs, dys, ys, dxs = dask.compute(x.blocks[i], dy.blocks[i], y.blocks[i], dx.blocks[i])
        yh = ln_ref(xs)
        np.testing.assert_allclose(ys, yh * w + b, rtol=1e-5, atol=1e-5)
        g = dys.astype(np.float64) * w
        dx_o = (g - g.mean(axis=1, keepdims=True) - yh * (g * yh).mean(axis=1, keepdims=True))
        dx_o /= np.sqrt(((xs - xs.astype(np.float64).mean(1, keepdims=True)) ** 2).mean(1, keepdims=True) + EPS)
        np.testing.assert_allclose(dxs, dx_o, rtol=1e-4, atol=1e-5 * np.abs(dx_o).max())

    sampler.stop.set()
    sampler.join()
    elapsed = time.perf_counter() - t0
    cpu = {w: v - cpu0[w] for w, v in client.run(_cpu_s).items()}
    here = _cpu_s() - here0  # the client and the scheduler (in this process)
    # no worker died or was restarted for memory on the way
    assert client.run(os.getpid) == pids
    limit = dask.utils.parse_bytes(LIMIT)
    peak = max(sampler.peak.values())
    spilled = client.run(lambda dask_worker: getattr(getattr(dask_worker.data, "spilled_total", None),
                                                     "disk", 0))
    print(f"\ninput {x.nbytes / 1e9:.3f} GB float32 in {x.numblocks[0]} chunks; workers 2 x {LIMIT}; "
          f"peak worker RSS {peak / 2**20:.0f} MiB ({', '.join(f'{v / 2**20:.0f}' for v in sampler.peak.values())}); "
          f"spilled to disk {sum(spilled.values()) / 2**20:.0f} MiB; BN {t_bn:.1f} s, total {elapsed:.1f} s; "
          f"CPU s: workers {', '.join(f'{v:.1f}' for v in cpu.values())}, client+scheduler {here:.1f}; "
          f"load {os.getloadavg()[0]:.1f}")
    assert peak < limit


def test_benchmark_case_times_the_cluster_and_reports_the_ratio(client):
    """The ``dask-norm`` benchmark case on a small array: one sample per executor, the sums
    of the normalized output agree, the report names the ratio."""
    from benchmarks import dask_norm

    res = dask_norm.measure({"2 workers": client, "again": client}, (4096, 32, 1024), repeats=1)
    assert res["sums_agree"] is True and res["bytes"] == 4096 * 32 * 4
    for r in res["runs"].values():
        assert len(r["samples_s"]) == 1
        assert r["gb_per_s"] == pytest.approx(res["bytes"] / 1e9 / r["median_s"])
    res.update(status="ok", ratio_2_over_1=1.0, cpus=2, loadavg=[0.0, 0.0, 0.0])
    md = "\n".join(dask_norm.markdown(res))
    assert "| 2 workers |" in md and "sums agree" in md and "**1.00**" in md
