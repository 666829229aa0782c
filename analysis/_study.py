"""The study protocol: one decorator turns a study body into a Python function and a CLI
subcommand with the same options.

A study body is written as::

    @study("rank", quick=dict(depth=10), report=dict(depth=40))
    def rank(ctx: Context, *, depth: int = 50, norms: tuple[str, ...] = ("none", "batch")) -> Outcome:
        ...
        return Outcome(measured=..., theory=..., verdict=..., table=...)

and the decorator makes ``rank(depth=…, norms=…, backend=…, dtype=…, seed=…, threads=…,
quick=…, executor=…, progress=…) -> StudyResult``. Every study therefore takes the same common
options (:data:`COMMON`), records every option in ``params`` with the versions, threads and
elapsed time, and runs inside the thread limits it states. The study's own options are plain
keyword arguments (int, float, bool, str, tuples of those): the CLI is generated from them.
``quick`` replaces the defaults the caller did not set with the study's quick sizes (tests,
``report --quick``); ``report`` holds the sizes ``python -m analysis report`` runs.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._backend import BACKENDS, DTYPES, Backend, point_rng, thread_limits, versions
from ._executor import Executor, as_executor, check_scheduler, open_executor
from ._result import StudyResult

__all__ = ["study", "Study", "Context", "Outcome", "STUDIES", "COMMON", "check_choices"]

#: every registered study, by name, in registration order (the report's order)
STUDIES: dict[str, Study] = {}

#: options every study takes, with their defaults
COMMON: dict[str, Any] = {"backend": "numpy", "dtype": "float64", "seed": 0, "threads": 1,
                          "quick": False, "executor": None, "progress": True}


COMMON_DOC = """

    Common options (every study)
    ----------------------------
    backend : "numpy" (default), "cupy", "torch", "array_api_strict" or "dask".
    dtype : "float64" (default) or "float32".
    seed : int, default 0; every point of the study draws from its own stream of this seed.
    threads : BLAS/OpenMP threads while the study runs (default 1: studies run many small
        models, where more threads spin rather than help; ``None`` leaves them as they are).
    quick : bool; small sizes (tests, ``report --quick``) for the options not given.
    executor : where the points of the sweep run (results are the same bit for bit):
        ``None`` or ``"local"`` (in process, the default); ``"processes:N"`` (a Dask
        ``LocalCluster`` of N single-threaded worker processes, started and closed by this
        run); ``"tcp://host:port"`` (an existing Dask cluster, left running); a Dask
        ``Client``; a ``concurrent.futures`` executor. Off this process a point that fails
        raises :class:`~analysis.SweepError` naming it, the other results in
        ``exc.partial_results``; a point whose Dask worker died is rescheduled.
    progress : bool; progress bars on stderr.

    Returns a :class:`~analysis.StudyResult` (``to_json()``, ``plot(path)``, ``str()``).
"""


@dataclass
class Context:
    """What a study body computes with: the backend (``ctx.xp``, ``ctx.dtype``,
    ``ctx.asarray``, ``ctx.to_numpy``), the seed (``ctx.rng(*key)``), the executor
    (``ctx.map``) and whether this is a quick run."""

    backend: Backend
    seed: int
    quick: bool
    executor: Executor
    progress: bool

    @property
    def xp(self) -> Any:
        return self.backend.xp

    @property
    def dtype(self) -> Any:
        return self.backend.dtype

    def asarray(self, host: Any) -> Any:
        return self.backend.asarray(host)

    def to_numpy(self, a: Any) -> Any:
        return self.backend.to_numpy(a)

    def rng(self, *key: Any) -> Any:
        """The generator of the point ``key`` (see :func:`~analysis._backend.point_rng`)."""
        return point_rng(self.seed, *key)

    def map(self, fn: Callable[..., Any], points: list[dict[str, Any]], desc: str = "") -> list[Any]:
        """Run ``fn(**point)`` for every point through the study's executor, in order."""
        return self.executor.map(fn, points, desc=desc, progress=self.progress)

    def point_options(self) -> dict[str, Any]:
        """The context as plain keyword arguments for a point function (picklable: backend
        and dtype by name), so that a point runs the same in another process."""
        return {"backend": self.backend.name, "dtype": self.backend.dtype_name, "seed": self.seed}


@dataclass
class Outcome:
    """What a study body returns; the decorator adds the study's name and ``params``."""

    measured: dict[str, Any]
    theory: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""
    table: list[dict[str, Any]] = field(default_factory=list)


def check_choices(fname: str, name: str, values: Any, choices: tuple[str, ...]) -> tuple[str, ...]:
    """Validate a str or tuple-of-str option against its choices; return it as a tuple."""
    vals = (values,) if isinstance(values, str) else tuple(values)
    bad = [v for v in vals if v not in choices]
    if bad or not vals:
        raise ValueError(f"{fname}: {name} must be among {choices}, got {values!r}")
    return vals


# ------------------------------------------------------------------------- option types
def _kind(annotation: Any, default: Any) -> tuple[type, bool]:
    """``(element type, is_tuple)`` of an option from its annotation (or its default)."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return (args[0] if args else str), True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind(args[0], default) if args else (str, False)
    if isinstance(annotation, type) and annotation in (int, float, bool, str):
        return annotation, False
    if isinstance(default, tuple):
        return (type(default[0]) if default else str), True
    return (type(default) if default is not None else str), False


def _coerce(fname: str, name: str, value: Any, kind: type, is_tuple: bool, default: Any) -> Any:
    """Check an option's value against its kind (``None`` allowed where the default is)."""
    if value is None and default is None:
        return None
    if is_tuple:
        vals = (value,) if isinstance(value, (str, numbers.Number)) else value
        try:
            vals = tuple(vals)
        except TypeError:
            raise TypeError(f"{fname}: {name} must be a tuple of {kind.__name__}, got "
                            f"{type(value).__name__}") from None
        return tuple(_coerce(fname, name, v, kind, False, None) for v in vals)
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{fname}: {name} must be a bool, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{fname}: {name} must be an int, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{fname}: {name} must be a real number, got {value!r}")
        return float(value)
    if kind is str and not isinstance(value, str):
        raise TypeError(f"{fname}: {name} must be a str, got {value!r}")
    return value


@dataclass
class Study:
    """A registered study: its body, options, quick and report sizes."""

    name: str
    body: Callable[..., Outcome]
    options: dict[str, inspect.Parameter]
    kinds: dict[str, tuple[type, bool]]
    quick: dict[str, Any]
    report: dict[str, Any]
    summary: str

    def resolve(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(study options, common options)`` after defaults, quick sizes and checks."""
        fname = self.name
        unknown = set(kwargs) - set(self.options) - set(COMMON)
        if unknown:
            raise TypeError(f"{fname}: unknown option(s) {sorted(unknown)}; options are "
                            f"{sorted(self.options)} and {sorted(COMMON)}")
        common = {k: kwargs.get(k, v) for k, v in COMMON.items()}
        opts = {k: p.default for k, p in self.options.items()}
        if common["quick"]:
            opts.update(self.quick)
        opts.update({k: v for k, v in kwargs.items() if k in self.options})
        for k, v in opts.items():
            kind, is_tuple = self.kinds[k]
            opts[k] = _coerce(fname, k, v, kind, is_tuple, self.options[k].default)
        if common["backend"] not in BACKENDS:
            raise ValueError(f"{fname}: backend must be one of {BACKENDS}, got {common['backend']!r}")
        if common["dtype"] not in DTYPES:
            raise ValueError(f"{fname}: dtype must be one of {DTYPES}, got {common['dtype']!r}")
        if isinstance(common["executor"], str):
            try:
                check_scheduler(common["executor"])
            except ValueError as exc:
                raise ValueError(f"{fname}: executor: {exc}") from None
        common["seed"] = _coerce(fname, "seed", common["seed"], int, False, 0)
        if common["threads"] is not None:
            t = _coerce(fname, "threads", common["threads"], int, False, 1)
            if t < 1:
                raise ValueError(f"{fname}: threads must be >= 1 or None, got {t}")
            common["threads"] = t
        return opts, common

    def run(self, **kwargs: Any) -> StudyResult:
        opts, common = self.resolve(kwargs)
        backend = Backend(common["backend"], common["dtype"])
        backend.xp  # fail early, with the backend's name, if it cannot be imported
        spec = common["executor"]
        t0 = time.perf_counter()
        with open_executor(spec) as pool, thread_limits(common["threads"]) as threads:
            executor = as_executor(pool, common["threads"],
                                   label=spec if isinstance(spec, str) else None)
            ctx = Context(backend, common["seed"], common["quick"], executor, common["progress"])
            out = self.body(ctx, **opts)
            shown = repr(executor)
        params = {**opts, "backend": backend.name, "dtype": backend.dtype_name,
                  "seed": common["seed"], "quick": common["quick"], "threads": threads,
                  "executor": shown, "versions": versions(backend),
                  "elapsed_s": round(time.perf_counter() - t0, 3)}
        return StudyResult(self.name, params, out.measured, out.theory, out.verdict, out.table)


def study(name: str, *, quick: dict[str, Any] | None = None,
          report: dict[str, Any] | None = None) -> Callable[[Callable[..., Outcome]], Callable[..., StudyResult]]:
    """Register a study body (see the module docstring) and return its public function."""

    def register(body: Callable[..., Outcome]) -> Callable[..., StudyResult]:
        sig = inspect.signature(body)
        params = list(sig.parameters.values())[1:]  # drop ctx
        hints = typing.get_type_hints(body)
        options = {p.name: p for p in params}
        for p in params:
            if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
                raise TypeError(f"study {name}: option {p.name} must be keyword-only with a default")
            if p.name in COMMON:
                raise TypeError(f"study {name}: option {p.name} is a common option")
        kinds = {p.name: _kind(hints.get(p.name), p.default) for p in params}
        doc = inspect.getdoc(body) or ""
        s = Study(name, body, options, kinds, dict(quick or {}), dict(report or {}),
                  doc.splitlines()[0] if doc else name)
        for k in (*s.quick, *s.report):
            if k not in options:
                raise TypeError(f"study {name}: quick/report size {k!r} is not an option")
        STUDIES[name] = s

        @functools.wraps(body)
        def public(**kwargs: Any) -> StudyResult:
            return s.run(**kwargs)

        common = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
                  for k, v in COMMON.items()]
        public.__signature__ = sig.replace(parameters=params + common,  # type: ignore[attr-defined]
                                           return_annotation=StudyResult)
        public.__doc__ = (public.__doc__ or "") + COMMON_DOC
        public.study = s  # type: ignore[attr-defined]
        return public

    return register
