"""One executor interface for the independent points of a study (seeds, grids, sweeps).

A study never loops over its points itself: it calls ``executor.map(fn, points)`` with a
module-level function and a list of keyword dicts, and gets the results back in the points'
order. Every point draws its random numbers from :func:`~analysis._backend.point_rng` with its
own key, so the results do not depend on the executor or on the order of completion — a sweep
on a cluster is bit-identical to the serial run:

* :class:`SerialExecutor` — in this process, one point after another (the default);
* :class:`FuturesExecutor` — any ``concurrent.futures.Executor`` (a process pool), or any
  object with ``submit(fn, *args) -> future`` whose futures have ``result()``;
* :class:`DaskExecutor` — a ``dask.distributed.Client``: points are Dask futures, a point whose
  worker died is rescheduled, a point that raises is retried once (:data:`DASK_RETRIES`).

The ``executor=`` option of every study names one of them, or a scheduler as a string
(:func:`open_executor`): ``"local"`` (in process), ``"processes:N"`` (a Dask ``LocalCluster``
of N single-threaded worker processes, started and closed by the run) or
``"tcp://host:port"`` (an existing Dask cluster: the run connects a client and leaves the
cluster running). ``python -m analysis <study> --scheduler SPEC`` is the same option.

Failures. In process, a point's exception propagates as it is (with a note naming the point).
On a pool or a cluster every point runs; if some fail, the sweep raises :class:`SweepError`
naming the first failed point (its keyword dict) and the cause, with the other points'
results in ``exc.partial_results``.

The study's thread limit (``threads=``) applies wherever a point runs: a point that runs in
another process than the study (a pool's or a cluster's worker) enters the same
:func:`~analysis._backend.limit_threads` around its call. Progress bars (tqdm) follow
completions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ._backend import limit_threads

__all__ = ["Executor", "SerialExecutor", "FuturesExecutor", "DaskExecutor", "SweepError",
           "DASK_RETRIES", "as_executor", "open_executor", "check_scheduler", "progress_bar"]

#: how many more times a Dask point is run after it raised (it may land on another worker:
#: a misconfigured or failing node gets a second chance; a deterministic error costs one
#: repeat). A point whose *worker died* is rescheduled by Dask's scheduler instead, up to its
#: ``distributed.scheduler.allowed-failures`` (Dask's default 3), then fails with KilledWorker.
DASK_RETRIES = 1

#: this process, as a point sees it: a point run elsewhere must set the thread limit itself
#: (the pid tells a forked child apart, the token a spawned or remote one)
_ORIGIN = (os.getpid(), uuid.uuid4().hex)


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr (a no-op object when disabled or tqdm is missing)."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            pass

    class _Null:
        def update(self, n: int = 1) -> None: ...
        def close(self) -> None: ...

    return _Null()


def _call(fn: Callable[..., Any], kwargs: dict[str, Any], threads: int | None = None,
          origin: tuple[int, str] | None = None) -> Any:
    """``fn(**kwargs)``, under the study's thread limit when run outside the study's process
    (inside it, the study already runs under that limit; re-entering would cost ~1 ms)."""
    if threads is None or origin == _ORIGIN:
        return fn(**kwargs)
    with limit_threads(threads):
        return fn(**kwargs)


class SweepError(RuntimeError):
    """Points of a sweep failed on a pool or a cluster; the other points' results are kept.

    Attributes
    ----------
    points : the sweep's points (keyword dicts), in order.
    partial_results : one entry per point, in order: its result, or ``None`` where it failed.
    failures : ``[(index, point, cause), ...]`` for the failed points, in order; the first
        cause is also the exception's ``__cause__``.
    """

    def __init__(self, message: str, *, points: Sequence[dict[str, Any]] = (),
                 partial_results: Sequence[Any] = (),
                 failures: Sequence[tuple[int, dict[str, Any], BaseException]] = ()) -> None:
        super().__init__(message)
        self.points = list(points)
        self.partial_results = list(partial_results)
        self.failures = list(failures)


def _cause(exc: BaseException, tries: int) -> str:
    """What went wrong with a point, in words."""
    if type(exc).__name__ == "KilledWorker":
        n = getattr(exc, "allowed_failures", None)
        died = "" if n is None else f" {n + 1} times"
        return (f"KilledWorker: the worker process running it died{died} (out of memory, a "
                f"crash in native code, os._exit…; see the workers' logs)")
    again = f" (raised on each of {tries} tries)" if tries > 1 else ""
    return f"{type(exc).__name__}: {exc}{again}"


def _finish(points: Sequence[dict[str, Any]], results: list[Any],
            errors: dict[int, BaseException], desc: str, tries: int) -> list[Any]:
    """The results in point order, or :class:`SweepError` if any point failed."""
    if not errors:
        return results
    failures = [(i, dict(points[i]), errors[i]) for i in sorted(errors)]
    i, point, exc = failures[0]
    others = "" if len(failures) == 1 else (
        f"; {len(failures) - 1} more failed (points {[f[0] for f in failures[1:]]})")
    message = (f"{desc or 'sweep'}: point {i} of {len(points)} failed: {point!r}: "
               f"{_cause(exc, tries)}{others}. The results of the other "
               f"{len(points) - len(failures)} points are in exc.partial_results (None where "
               f"a point failed); exc.failures lists (index, point, cause).")
    raise SweepError(message, points=points, partial_results=results, failures=failures) from exc


class Executor(Protocol):
    """What a study needs from an executor."""

    def map(self, fn: Callable[..., Any], points: Sequence[dict[str, Any]], *, desc: str = "",
            progress: bool = True) -> list[Any]: ...


class SerialExecutor:
    """Run points one after another in this process; a point's exception propagates as it is,
    with a note naming the point (the in-process run is where one debugs)."""

    def map(self, fn: Callable[..., Any], points: Sequence[dict[str, Any]], *, desc: str = "",
            progress: bool = True) -> list[Any]:
        bar = progress_bar(len(points), desc, progress and len(points) > 1)
        out = []
        try:
            for i, p in enumerate(points):
                try:
                    out.append(_call(fn, p))
                except Exception as exc:
                    if hasattr(exc, "add_note"):  # Python >= 3.11
                        exc.add_note(f"in {desc or 'sweep'} point {i} of {len(points)}: {p!r}")
                    raise
                bar.update(1)
        finally:
            bar.close()
        return out

    def __repr__(self) -> str:
        return "serial"


class FuturesExecutor:
    """Run points through anything with ``submit`` (``concurrent.futures`` pools); results in
    the points' order, progress as they complete, :class:`SweepError` if some fail."""

    def __init__(self, pool: Any, threads: int | None = None) -> None:
        if not callable(getattr(pool, "submit", None)):
            raise TypeError(f"executor must have a submit() method, got {type(pool).__name__}")
        self.pool = pool
        self.threads = threads

    def map(self, fn: Callable[..., Any], points: Sequence[dict[str, Any]], *, desc: str = "",
            progress: bool = True) -> list[Any]:
        futures = [self.pool.submit(_call, fn, p, self.threads, _ORIGIN) for p in points]
        bar = progress_bar(len(points), desc, progress and len(points) > 1)
        try:
            if all(isinstance(f, concurrent.futures.Future) for f in futures):
                for _ in concurrent.futures.as_completed(futures):
                    bar.update(1)
            results: list[Any] = [None] * len(points)
            errors: dict[int, BaseException] = {}
            for i, f in enumerate(futures):
                try:
                    results[i] = f.result()
                except Exception as exc:
                    errors[i] = exc
        finally:
            bar.close()
        return _finish(points, results, errors, desc, tries=1)

    def __repr__(self) -> str:
        return type(self.pool).__name__


class DaskExecutor:
    """Run points as futures on a ``dask.distributed`` cluster, through its ``Client``.

    Each point is one task (``retries=``:data:`DASK_RETRIES`); its result comes back to this
    process as soon as it completes (so a worker lost later costs no recomputation) and the
    progress bar follows completions (``distributed.as_completed``). If a worker dies, the
    scheduler reruns its point elsewhere, up to the cluster's
    ``distributed.scheduler.allowed-failures``. Every point runs; failed ones raise
    :class:`SweepError` at the end with the others' results. ``label`` names the cluster in
    the result's ``params`` (default: the scheduler's address).
    """

    def __init__(self, client: Any, threads: int | None = None, label: str | None = None) -> None:
        self.client = client
        self.threads = threads
        self.label = label or str(getattr(client.scheduler, "address", client))

    def map(self, fn: Callable[..., Any], points: Sequence[dict[str, Any]], *, desc: str = "",
            progress: bool = True) -> list[Any]:
        from distributed import as_completed

        # a readable, unique key per point: the dashboard groups tasks by the prefix
        name = getattr(fn, "__module__", "").rsplit(".", 1)[-1] + "." + getattr(fn, "__name__", "fn")
        token = uuid.uuid4().hex
        futures = [self.client.submit(_call, fn, p, self.threads, _ORIGIN,
                                      key=f"{name}-{token}-{i}", retries=DASK_RETRIES)
                   for i, p in enumerate(points)]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(points)
        errors: dict[int, BaseException] = {}
        bar = progress_bar(len(points), desc, progress and len(points) > 1)
        done = 0
        try:
            for batch in as_completed(futures).batches():
                for f, outcome in zip(batch, self._fetch(batch)):
                    if isinstance(outcome, _Failed):
                        errors[index[f.key]] = outcome.exc
                    else:
                        results[index[f.key]] = outcome
                    f.release()  # the result is here now: free the worker's copy
                done += len(batch)
                bar.update(len(batch))
        finally:
            bar.close()
            if done < len(futures):  # interrupted: leave nothing running on the cluster
                self.client.cancel([f for f in futures if not f.done()])
        return _finish(points, results, errors, desc, tries=1 + DASK_RETRIES)

    def _fetch(self, batch: list[Any]) -> list[Any]:
        """The batch's results (one round trip), or :class:`_Failed` for the failed ones."""
        if all(f.status == "finished" for f in batch):
            try:
                return list(self.client.gather(batch))
            except Exception:  # e.g. a result lost with its worker and then failing: one by one
                pass
        out = []
        for f in batch:
            try:
                out.append(f.result())
            except (Exception, asyncio.CancelledError) as exc:  # the worker's traceback with it
                out.append(_Failed(exc))
        return out

    def __repr__(self) -> str:
        try:
            n = len(self.client.scheduler_info()["workers"])
            return f"dask {self.label} ({n} workers)"
        except Exception:  # pragma: no cover - a closed client still has a name
            return f"dask {self.label}"


class _Failed:
    """A failed point's exception, told apart from a result that happens to be one."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


# ------------------------------------------------------------------------ executor specs
_SPEC_FORMS = "'local', 'processes:N' (N >= 1) or 'tcp://host:port'"


def check_scheduler(spec: str) -> tuple[str, Any]:
    """Parse a scheduler string: ``("local", None)``, ``("processes", N)`` or
    ``("tcp", address)``; ``ValueError`` for anything else.

    >>> check_scheduler("processes:2"), check_scheduler("tcp://10.0.0.5:8786")
    (('processes', 2), ('tcp', 'tcp://10.0.0.5:8786'))
    """
    if not isinstance(spec, str):
        raise TypeError(f"scheduler must be a str ({_SPEC_FORMS}), got {type(spec).__name__}")
    s = spec.strip()
    if s == "local":
        return "local", None
    if s.startswith("processes:"):
        n = s.partition(":")[2]
        if n.isdigit() and int(n) >= 1:
            return "processes", int(n)
    elif s.startswith("tcp://"):
        host, _, port = s[len("tcp://"):].rpartition(":")
        if host and port.isdigit():
            return "tcp", s
    raise ValueError(f"scheduler must be {_SPEC_FORMS}, got {spec!r}")


def _distributed(spec: str) -> Any:
    try:
        import distributed
    except ImportError:
        raise ImportError(f"scheduler {spec!r} needs dask.distributed: "
                          f"pip install 'arraynorm[dask]'") from None
    return distributed


@contextlib.contextmanager
def open_executor(spec: Any = None) -> Iterator[Any]:
    """What a run computes on: ``None``/``"local"`` → ``None`` (in process);
    ``"processes:N"`` → a ``Client`` of a ``LocalCluster`` of N worker processes (one thread
    each, loopback only, no dashboard) that is closed on exit; ``"tcp://host:port"`` → a
    ``Client`` of that cluster (the client is closed on exit, the cluster keeps running);
    anything else (a pool, a client) as it is, left open.

    Use it to share one cluster between several studies::

        with open_executor("processes:4") as client:      # doctest: +SKIP
            analysis.rank(executor=client); analysis.convergence(executor=client)
    """
    if not isinstance(spec, str):
        yield spec
        return
    kind, arg = check_scheduler(spec)
    if kind == "local":
        yield None
        return
    distributed = _distributed(spec)
    if kind == "processes":
        with distributed.LocalCluster(n_workers=arg, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            yield client
        return
    try:
        client = distributed.Client(arg)
    except OSError as exc:
        raise OSError(f"scheduler {spec!r}: cannot reach the Dask scheduler ({exc})") from exc
    with client:
        yield client


def as_executor(executor: Any, threads: int | None = None, label: str | None = None) -> Executor:
    """``None`` → :class:`SerialExecutor`; a ``distributed.Client`` → :class:`DaskExecutor`;
    an executor of this module as it is; anything with ``submit`` → :class:`FuturesExecutor`;
    an object with ``map(fn, points, …)`` as it is. ``threads``: the thread limit a point run
    in another process sets for itself."""
    if executor is None:
        return SerialExecutor()
    if isinstance(executor, (SerialExecutor, FuturesExecutor, DaskExecutor)):
        return executor
    # a Client exists only where distributed is imported already: no import for the others
    dist = sys.modules.get("distributed")
    if dist is not None and isinstance(executor, dist.Client):
        return DaskExecutor(executor, threads, label)
    if callable(getattr(executor, "submit", None)):
        return FuturesExecutor(executor, threads)
    if callable(getattr(executor, "map", None)):
        return executor
    raise TypeError(f"executor must be None, {_SPEC_FORMS}, a concurrent.futures executor or "
                    f"a Dask client, got {type(executor).__name__}")
