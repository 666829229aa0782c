"""The Dask sweep case: throughput of an analysis study's sweep in process, on a ``LocalCluster``
of 1 worker process and of 2 (``executor=`` of :mod:`analysis`), reported as points per second
and as the ratio of 2 workers' throughput to 1 worker's.

A sweep is not an array op: no bandwidth, no backends. The study is ``convergence`` (one SGD
training run per point, tens of milliseconds each, so the ratio shows what Dask adds to a sweep
of independent points rather than its per-task overhead). Both clusters are started before
timing and warmed up with one run (workers import NumPy, SciPy and arraynorm on their first
point); then the three ways are timed interleaved, a study call each, the order rotated every
round (at most :data:`MAX_REPEATS` rounds). Every run's result must equal the serial one bit for bit. On a machine with 2 cores
shared with other work, 2 workers cannot reach twice the throughput; the JSON records the load.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["ID", "STUDY", "SIZES", "WORKERS", "MAX_REPEATS", "measure", "run"]

ID = "dask-sweep"
STUDY = "convergence"
#: the study's options: the quick sizes with fewer or more SGD steps per point
SIZES = {"quick": {"quick": True, "steps": 10}, "full": {"quick": True, "steps": 60}}
WORKERS = (1, 2)
#: a sample is a whole study call (seconds): the median of 3 rounds is enough
MAX_REPEATS = 3


def _fingerprint(result: Any) -> str:
    d = result.as_dict()
    return json.dumps([d[k] for k in ("measured", "theory", "verdict", "table")])


def measure(executors: dict[str, Any], options: dict[str, Any], repeats: int,
            study: str = STUDY) -> dict[str, Any]:
    """Time ``study(**options)`` on each executor (a label → ``None`` for in process, or a
    Dask client), ``repeats`` rounds interleaved after one warm-up run each.

    Returns ``{"study", "options", "points", "identical", "runs": {label: {"samples_s",
    "median_s", "points_per_s"}}}``; ``identical`` says whether every run equalled the first.
    """
    import analysis
    from analysis._executor import as_executor

    fn = analysis.STUDIES[study].run
    labels = list(executors)
    # warm-up (imports on the workers), the reference result and the number of points
    counted = _Counting(as_executor(executors[labels[0]]))
    reference = _fingerprint(fn(**options, progress=False, executor=counted))
    identical = True
    for label in labels[1:]:
        identical &= _fingerprint(fn(**options, progress=False, executor=executors[label])) == reference
    samples: dict[str, list[float]] = {k: [] for k in labels}
    for i in range(repeats):
        for label in labels[i % len(labels):] + labels[:i % len(labels)]:
            t0 = time.perf_counter()
            r = fn(**options, progress=False, executor=executors[label])
            samples[label].append(time.perf_counter() - t0)
            identical &= _fingerprint(r) == reference
    runs = {k: {"samples_s": v, "median_s": statistics.median(v),
                "points_per_s": counted.points / statistics.median(v)} for k, v in samples.items()}
    return {"study": study, "options": options, "points": counted.points, "identical": identical,
            "runs": runs}


class _Counting:
    """An executor that counts the points it runs through another one."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.points = inner, 0

    def map(self, fn: Callable[..., Any], points: list[dict[str, Any]], **kw: Any) -> list[Any]:
        self.points += len(points)
        return self.inner.map(fn, points, **kw)


def worker_label(n: int) -> str:
    """The run label of a cluster of ``n`` workers ("1 worker", "2 workers")."""
    return f"{n} worker{'s' if n > 1 else ''}"


@contextlib.contextmanager
def local_clusters(workers: Sequence[int]) -> Iterator[dict[str, Any]]:
    """A ``distributed.LocalCluster`` of one-thread worker processes and its client for each
    count in ``workers``, by :func:`worker_label`; all closed on exit (the Dask cases)."""
    import distributed  # function-level: the dask extra is optional
    clusters, clients = [], {}
    try:
        for n in workers:
            c = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                         host="127.0.0.1", dashboard_address=None)
            clusters.append(c)
            clients[worker_label(n)] = distributed.Client(c)
        yield clients
    finally:
        for cl in clients.values():
            cl.close()
        for c in clusters:
            c.close()


def run(quick: bool, repeats: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start a LocalCluster of each size in :data:`WORKERS`, time the sweep on each and in
    process, close them; the result has ``ratio_2_over_1`` (throughput, higher is better)."""
    try:
        import distributed  # noqa: F401  (the Dask cases need the dask extra)
    except ImportError as e:
        return {"status": f"absent: {e}"}
    options = SIZES["quick" if quick else "full"]
    with local_clusters(WORKERS) as clients:
        res = measure({"in process": None, **clients}, options, repeats)
    one, two = (res["runs"][worker_label(n)]["points_per_s"] for n in WORKERS)
    res.update(status="ok", ratio_2_over_1=two / one, cpus=os.cpu_count(),
               loadavg=[round(v, 2) for v in os.getloadavg()])
    for label, r in res["runs"].items():
        log(f"{'sweep ' + res['study'] + ' (' + str(res['points']) + ' points)':30s} {label:19s} "
            f"{r['median_s']:8.2f} s  {r['points_per_s']:7.1f} points/s")
    log(f"sweep throughput 2 workers / 1 worker = {res['ratio_2_over_1']:.2f} "
        f"({'identical' if res['identical'] else 'NOT identical'} results)")
    return res
