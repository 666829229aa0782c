"""The NumPy fast path's worker threads follow the usual controls (issue 12, Conventions):
``set_num_threads`` > ``ARRAYNORM_THREADS`` > min(CPUs, ``OMP_NUM_THREADS``, threadpoolctl limits).

The count the fast path uses is observed where it is used: the ``threads`` argument of the
block runner that :mod:`arraynorm._kernels.numpy_fused` calls (a spy, not timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import arraynorm as an
from arraynorm._kernels import _threads, numba_jit, numpy_fused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def spy(monkeypatch):
    """Force the NumPy fast path (the JIT kept out) onto small inputs in many blocks; record
    each run's worker count."""
    monkeypatch.setattr(numba_jit, "MIN_BYTES", 1 << 62)
    monkeypatch.setattr(numpy_fused, "MIN_BYTES", 0)
    monkeypatch.setattr(numpy_fused, "BLOCK_BYTES", 256)
    monkeypatch.setattr(numpy_fused, "MIN_BLOCKS_FOR_THREADS", 2)
    seen: list[int] = []
    real = numpy_fused.run_blocks

    def run_blocks(fn, n_blocks, threads):
        seen.append(threads)
        return real(fn, n_blocks, threads)

    monkeypatch.setattr(numpy_fused, "run_blocks", run_blocks)
    return seen


@pytest.fixture
def automatic(monkeypatch):
    """No explicit setting and no environment control: the automatic count, 4 CPUs assumed
    (a pool of 4 runs on any machine; the point is the count, not the speed)."""
    previous = an.set_num_threads(None)
    monkeypatch.setattr(_threads, "_env", None)
    monkeypatch.setattr(_threads, "_omp", None)
    monkeypatch.setattr(_threads, "_cpus", 4)
    yield
    an.set_num_threads(previous)


def _x():
    return np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32) + 2.0


def test_threadpool_limits_lower_the_fast_path_workers(spy, automatic):
    threadpoolctl = pytest.importorskip("threadpoolctl")  # in the test extra
    info = threadpoolctl.threadpool_info()
    if not info:
        pytest.skip("threadpoolctl sees no BLAS/OpenMP library to limit in this process")
    # without a limit block, the libraries' own counts (OpenBLAS: the cores) still bound it
    unlimited = min([4] + [i["num_threads"] for i in info])
    x = _x()
    an.batch_norm(x)
    assert spy and set(spy) == {unlimited}
    spy.clear()
    with threadpoolctl.threadpool_limits(1):
        assert an.get_num_threads() == 1
        an.batch_norm(x)
        an.layer_norm(x)
    assert spy and set(spy) == {1}
    spy.clear()
    with threadpoolctl.threadpool_limits(2):
        an.group_norm(x, 3)
    assert set(spy) == {2}
    spy.clear()
    an.batch_norm(x)  # the limit is lifted with the block
    assert set(spy) == {unlimited}


def test_explicit_setting_wins_and_set_fast_paths_threads_is_an_alias(spy, automatic):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = _x()
    assert an.set_num_threads(3) is None
    with threadpoolctl.threadpool_limits(1):
        an.batch_norm(x)
    assert set(spy) == {3} and an.get_num_threads() == 3
    spy.clear()
    an.set_fast_paths(True, threads=2)
    an.layer_norm(x)
    assert set(spy) == {2} and an.set_num_threads(None) == 2


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (2.0, TypeError),
                                        (True, TypeError), ("2", TypeError)])
def test_set_num_threads_refuses_bad_counts(bad, error):
    before = an.get_num_threads()
    with pytest.raises(error, match=r"set_num_threads: n must be"):
        an.set_num_threads(bad)
    assert an.get_num_threads() == before


def test_results_do_not_depend_on_the_thread_count(spy):
    """Bit for bit, forward and backward, on a fast path split into many blocks."""
    x = _x()
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    w = np.linspace(0.5, 1.5, 3, dtype=np.float32)
    b = np.linspace(-1, 1, 3, dtype=np.float32)
    results = {}
    previous = an.set_num_threads(1)
    try:
        for n in (1, 2, 3):
            an.set_num_threads(n)
            got = []
            for normalizer in (an.Normalizer(an.partition.Batch(), an.operation.Standardize()),
                               an.Normalizer(an.partition.Group(3), an.operation.Standardize()),
                               an.Normalizer(an.partition.Instance(), an.operation.Standardize()),
                               an.Normalizer(an.partition.Layer((-2, -1)), an.operation.Standardize()),
                               an.Normalizer(an.partition.Layer(-1), an.operation.RMSScale())):
                layer = normalizer.partition.__class__.__name__ == "Layer"
                wb = (None, None) if layer else (w, b)
                y, ctx = normalizer.forward(x, *wb)
                got += [y, *(g for g in normalizer.backward(ctx, dy) if g is not None)]
            results[n] = got
    finally:
        an.set_num_threads(previous)
    assert {1, 2, 3} <= set(spy)
    for n in (2, 3):
        for a, c in zip(results[1], results[n]):
            np.testing.assert_array_equal(a, c)


def _child(env: dict[str, str], code: str = "") -> dict:
    script = ("import json, os, warnings\n"
              "warnings.simplefilter('error')\n"
              "caught = []\n"
              "try:\n    import arraynorm as an\n"
              "except RuntimeWarning as w:\n    caught.append(str(w)); warnings.simplefilter('ignore')\n"
              "    import arraynorm as an\n"
              f"{code}\n"
              "print(json.dumps({'n': an.get_num_threads(), 'cpus': len(os.sched_getaffinity(0)),"
              " 'warned': caught}))")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ARRAYNORM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", script], env={**clean, "PYTHONPATH": ROOT, **env},
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_environment_controls_in_a_fresh_process():
    assert _child({"ARRAYNORM_THREADS": "3", "OMP_NUM_THREADS": "1"})["n"] == 3
    omp = _child({"OMP_NUM_THREADS": "1"})
    assert omp["n"] == 1
    nested = _child({"OMP_NUM_THREADS": "64,2"})  # OpenMP's per-level list: the outer count
    assert nested["n"] == min(64, nested["cpus"])
    assert _child({"ARRAYNORM_THREADS": "3"}, "an.set_num_threads(5)")["n"] == 5
    bad = _child({"ARRAYNORM_THREADS": "many"})
    assert bad["n"] == bad["cpus"]
    assert any("ARRAYNORM_THREADS must be a positive int, got 'many'" in w for w in bad["warned"])
