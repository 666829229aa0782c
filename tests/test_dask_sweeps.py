"""Analysis sweeps on a real Dask cluster (``executor=`` / ``--scheduler``): bit-identical to the
serial run, surviving a killed worker process, a clear error for a point that keeps failing,
the study's thread limit inside the workers, ``tcp://`` clusters and the CLI.

One ``LocalCluster`` of 2 single-threaded worker processes (512 MiB each, loopback, no
dashboard) serves the module. Its scheduler blames a worker's death only on the point it was
running (``worker-saturation`` 1.0: one point per worker at a time) and fails a point after
its second dying worker (``allowed-failures`` 1), so that the always-dying point below costs
two worker restarts rather than Dask's default four. ``-m dask_cluster`` selects these tests.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import json
import os
import pathlib
import subprocess
import sys

import dask
import pytest
from distributed import Client, LocalCluster

import analysis
from analysis._backend import thread_info
from analysis._executor import DASK_RETRIES, SweepError, as_executor, check_scheduler

pytestmark = pytest.mark.dask_cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]
RANK = importlib.import_module("analysis.rank")  # the module (analysis.rank is the function)
#: the real point function, as the workers import it (the tests wrap it in the client)
RANK_POINT = RANK._point


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.scheduler.worker-saturation": 1.0}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          memory_limit="512MiB", dashboard_address=None,
                          host="127.0.0.1") as c:
            yield c


@pytest.fixture
def client(cluster):
    with Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)  # a worker killed by an earlier test is back
        yield c


@pytest.fixture(scope="module")
def serial():
    """The serial run every cluster run must equal, bit for bit."""
    return analysis.rank(quick=True, progress=False)


def _same(a, b) -> bool:
    """Two results equal to the last bit (JSON keeps every float's repr)."""
    keys = ("measured", "theory", "verdict", "table")
    return json.dumps([a.as_dict()[k] for k in keys]) == json.dumps([b.as_dict()[k] for k in keys])


# ------------------------------------------------------------------ point functions (workers)
def _die_once(marker: str, **point):
    """The first point to run anywhere writes its keywords to ``marker`` and kills its worker
    process; every later run (the rescheduled one included) is the real point."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return RANK_POINT(**point)
    os.write(fd, repr(point).encode())
    os.close(fd)
    os._exit(1)


def _fail_for(bad: dict, log: str, mode: str, **point):
    """The real point, except that the one matching ``bad`` raises (``mode="raise"``) or kills
    its worker (``mode="die"``) on every try; each try appends a line to ``log``."""
    if all(point[k] == v for k, v in bad.items()):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        if mode == "die":
            os._exit(1)
        raise ValueError("synthetic failure of this point")
    return RANK_POINT(**point)


def _record_threads(folder: str, **point):
    """The real point, leaving the BLAS threads it ran with in ``folder``."""
    pathlib.Path(folder, f"{os.getpid()}-{point['norm']}-{point['width']}-{point['rep']}").write_text(
        json.dumps(thread_info()))
    return RANK_POINT(**point)


def _blas_threads():
    return thread_info()


# ------------------------------------------------------------------------------ the tests
def test_a_study_on_a_local_cluster_is_bit_identical_to_serial_and_shows_completions(
        client, serial, monkeypatch):
    updates = []

    class Bar:
        def update(self, n=1):
            updates.append(n)

        def close(self):
            updates.append("closed")

    monkeypatch.setattr("analysis._executor.progress_bar", lambda total, desc, enabled: Bar())
    r = analysis.rank(quick=True, progress=True, executor=client)
    assert _same(r, serial)
    n_points = 4 * 2 * 2  # quick rank: norms x widths x seeds
    assert sum(u for u in updates if u != "closed") == n_points and updates[-1] == "closed"
    assert r.params["executor"].startswith("dask tcp://127.0.0.1") and "2 workers" in r.params["executor"]


def test_a_point_that_always_raises_is_named_and_the_other_results_are_kept(client, monkeypatch,
                                                                             tmp_path):
    bad = {"norm": "layer", "width": 16, "rep": 1}
    log = tmp_path / "tries"
    monkeypatch.setattr(RANK, "_point", functools.partial(_fail_for, bad, str(log), "raise"))
    with pytest.raises(SweepError) as info:
        analysis.rank(quick=True, progress=False, executor=client)
    exc = info.value
    msg = str(exc)
    assert "rank: point" in msg and "'norm': 'layer', 'width': 16" in msg and "'rep': 1" in msg
    assert "ValueError: synthetic failure of this point" in msg
    assert f"raised on each of {1 + DASK_RETRIES} tries" in msg
    assert isinstance(exc.__cause__, ValueError)
    assert len(log.read_text().split()) == 1 + DASK_RETRIES  # retried, then given up
    [(i, point, cause)] = exc.failures
    assert {k: point[k] for k in bad} == bad and isinstance(cause, ValueError)
    assert exc.partial_results[i] is None and len(exc.partial_results) == len(exc.points) == 16
    for j, p in enumerate(exc.points):  # the others: exactly what the point computes here
        if j != i:
            assert json.dumps(exc.partial_results[j]) == json.dumps(RANK_POINT(**p))


def test_a_tcp_address_connects_to_a_running_cluster_and_leaves_it_running(cluster, client,
                                                                           serial, tmp_path):
    r = analysis.rank(quick=True, progress=False, executor=cluster.scheduler_address)
    assert _same(r, serial)
    assert r.params["executor"].startswith(f"dask {cluster.scheduler_address}")
    assert cluster.status.name == "running" and len(client.scheduler_info()["workers"]) == 2
    out = analysis.report(tmp_path, quick=True, studies=["rank"], progress=False,
                          executor=cluster.scheduler_address)
    assert _same(out[0], serial) and cluster.scheduler_address in (tmp_path / "report.md").read_text()


def test_the_study_thread_limit_applies_inside_the_workers(client, monkeypatch, tmp_path):
    # the workers start with one BLAS thread (the nanny's OPENBLAS_NUM_THREADS=1): a study
    # asking for 2 gets 2 in every point, and the worker is back to 1 afterwards
    monkeypatch.setattr(RANK, "_point", functools.partial(_record_threads, str(tmp_path)))
    analysis.rank(quick=True, progress=False, threads=2, executor=client)
    seen = [json.loads(p.read_text()) for p in tmp_path.iterdir()]
    assert len(seen) == 16 and all(set(s.values()) == {2} for s in seen)
    assert all(set(s.values()) == {1} for s in client.run(_blas_threads).values())
    assert as_executor(client, threads=None).map(_blas_threads, [{}], progress=False) == [
        {k: 1 for k in seen[0]}]


def test_cli_scheduler_processes_runs_the_study_on_its_own_local_cluster(serial, tmp_path):
    out = tmp_path / "rank.json"
    p = subprocess.run([sys.executable, "-m", "analysis", "rank", "--quick", "--no-progress",
                        "--scheduler", "processes:2", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    d = json.loads(out.read_text())
    assert d["params"]["executor"] == "dask processes:2 (2 workers)"
    assert json.dumps(d["measured"]) == json.dumps(serial.as_dict()["measured"])


def test_scheduler_strings_are_checked_with_the_accepted_forms(tmp_path):
    assert check_scheduler("local") == ("local", None)
    assert check_scheduler("processes:3") == ("processes", 3)
    assert check_scheduler("tcp://10.1.2.3:8786") == ("tcp", "tcp://10.1.2.3:8786")
    for bad in ("processes:0", "processes:two", "procs:2", "tcp://host", "tls://h:1", ""):
        with pytest.raises(ValueError, match="'local', 'processes:N'"):
            check_scheduler(bad)
        with pytest.raises(ValueError, match="rank: executor: scheduler must be"):
            analysis.rank(quick=True, progress=False, executor=bad)
    with pytest.raises(ValueError, match="scheduler must be"):
        analysis.report(tmp_path, quick=True, studies=["rank"], executor="processes:-1")
    p = subprocess.run([sys.executable, "-m", "analysis", "rank", "--scheduler", "processes:0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "processes:N" in p.stderr


def test_benchmark_sweep_times_each_executor_and_checks_the_results_agree(client):
    from benchmarks import report, sweep

    res = sweep.measure({"in process": None, "2 workers": client}, {"quick": True}, repeats=1,
                        study="rank")
    assert res["points"] == 16 and res["identical"] is True
    for r in res["runs"].values():
        assert len(r["samples_s"]) == 1 and r["points_per_s"] == pytest.approx(16 / r["median_s"])
    res.update(status="ok", ratio_2_over_1=1.0, cpus=2, loadavg=[0.0, 0.0, 0.0])
    md = "\n".join(report.sweep_markdown({"sweeps": {sweep.ID: res}}))
    assert "| 2 workers |" in md and "bit-identical" in md and "**1.00**" in md



def _inverse(v):
    return 1.0 / v


def test_without_a_cluster_a_failing_point_is_named_too():
    points = [{"v": 2.0}, {"v": 0.0}, {"v": 4.0}]
    with pytest.raises(ZeroDivisionError) as info:  # in process: the point's own exception
        as_executor(None).map(_inverse, points, desc="inverse", progress=False)
    if sys.version_info >= (3, 11):
        assert "in inverse point 1 of 3: {'v': 0.0}" in info.value.__notes__
    with concurrent.futures.ThreadPoolExecutor(2) as pool, pytest.raises(SweepError) as info:
        as_executor(pool).map(_inverse, points, desc="inverse", progress=False)
    assert "inverse: point 1 of 3 failed: {'v': 0.0}: ZeroDivisionError" in str(info.value)
    assert info.value.partial_results == [0.5, None, 0.25]

# the worker-killing tests last: the fixture's cluster need not wait for the restarted workers
def test_a_sweep_survives_a_worker_process_killed_in_the_middle(client, serial, monkeypatch, tmp_path):
    marker = tmp_path / "killed"
    before = set(client.run(os.getpid).values())
    monkeypatch.setattr(RANK, "_point", functools.partial(_die_once, str(marker)))
    r = analysis.rank(quick=True, progress=False, executor=client)
    assert _same(r, serial)  # every point present, the killed one rerun elsewhere
    killed = marker.read_text()
    assert "'norm':" in killed and "'rep':" in killed  # the point that took its worker down
    client.wait_for_workers(2, timeout=60)
    after = set(client.run(os.getpid).values())
    assert len(before & after) == 1 and len(after) == 2  # one worker process was replaced


def test_a_point_that_kills_every_worker_it_runs_on_fails_with_killed_worker(client, monkeypatch,
                                                                             tmp_path):
    bad = {"norm": "layer", "width": 32, "rep": 1}  # the last point: no one waits for restarts
    log = tmp_path / "deaths"
    monkeypatch.setattr(RANK, "_point", functools.partial(_fail_for, bad, str(log), "die"))
    with pytest.raises(SweepError, match=r"KilledWorker: the worker process running it died 2 times") as info:
        analysis.rank(quick=True, progress=False, executor=client)
    exc = info.value
    assert "'norm': 'layer', 'width': 32" in str(exc) and "'rep': 1" in str(exc)
    assert len(log.read_text().split()) == 2  # allowed-failures 1: a second death ends it
    [(i, point, _)] = exc.failures  # no innocent point was blamed
    assert {k: point[k] for k in bad} == bad
    assert sum(r is not None for r in exc.partial_results) == 15
