"""One executor interface for the independent points of a study (seeds, grids, sweeps).

A study never loops over its points itself: it calls ``executor.map(fn, points)`` with a
module-level function and a list of keyword dicts, and gets the results back in the points'
order. Every point draws its random numbers from :func:`~analysis._backend.point_rng` with its
own key, so the results do not depend on the executor or on the order of completion:

* :class:`SerialExecutor` — in this process, one point after another (the default);
* :class:`FuturesExecutor` — any ``concurrent.futures.Executor`` (a process pool), or any
  object with ``submit(fn, *args) -> future`` whose futures have ``result()`` (a Dask
  ``distributed.Client`` fits this shape).

Progress bars (tqdm) follow completions.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["Executor", "SerialExecutor", "FuturesExecutor", "as_executor", "progress_bar"]


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


def _call(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    return fn(**kwargs)


class Executor(Protocol):
    """What a study needs from an executor."""

    def map(self, fn: Callable[..., Any], points: Sequence[dict[str, Any]], *, desc: str = "",
            progress: bool = True) -> list[Any]: ...


class SerialExecutor:
    """Run points one after another in this process."""

    def map(self, fn: Callable[..., Any], points: Sequence[dict[str, Any]], *, desc: str = "",
            progress: bool = True) -> list[Any]:
        bar = progress_bar(len(points), desc, progress and len(points) > 1)
        out = []
        try:
            for p in points:
                out.append(_call(fn, p))
                bar.update(1)
        finally:
            bar.close()
        return out

    def __repr__(self) -> str:
        return "serial"


class FuturesExecutor:
    """Run points through anything with ``submit`` (``concurrent.futures`` pools, Dask
    clients); results in the points' order, progress as they complete."""

    def __init__(self, pool: Any) -> None:
        if not callable(getattr(pool, "submit", None)):
            raise TypeError(f"executor must have a submit() method, got {type(pool).__name__}")
        self.pool = pool

    def map(self, fn: Callable[..., Any], points: Sequence[dict[str, Any]], *, desc: str = "",
            progress: bool = True) -> list[Any]:
        futures = [self.pool.submit(_call, fn, p) for p in points]
        bar = progress_bar(len(points), desc, progress and len(points) > 1)
        try:
            if all(isinstance(f, concurrent.futures.Future) for f in futures):
                for _ in concurrent.futures.as_completed(futures):
                    bar.update(1)
            return [f.result() for f in futures]
        finally:
            bar.close()

    def __repr__(self) -> str:
        return type(self.pool).__name__


def as_executor(executor: Any) -> Executor:
    """``None`` → :class:`SerialExecutor`; an object with ``map(fn, points, …)`` as it is;
    anything with ``submit`` → :class:`FuturesExecutor`."""
    if executor is None:
        return SerialExecutor()
    if isinstance(executor, (SerialExecutor, FuturesExecutor)):
        return executor
    if callable(getattr(executor, "submit", None)):
        return FuturesExecutor(executor)
    if callable(getattr(executor, "map", None)):
        return executor
    raise TypeError(f"executor must be None, a concurrent.futures executor or a Dask client, "
                    f"got {type(executor).__name__}")
