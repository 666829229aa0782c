"""The result object every study returns, and its JSON form.

A study returns one :class:`StudyResult` (as SciPy's functions return ``OptimizeResult``):
named fields that are the answer, and methods that derive the rest — ``to_json()``, a
terminal table (``table()``, ``str(result)``), ``plot(path)`` and ``compare()`` which lines up
theory and measurement. Every study's JSON has the same skeleton::

    {"study": ..., "params": {...}, "measured": {...}, "theory": {...}, "verdict": "...",
     "table": [{...}, ...]}

``theory`` uses the same keys as ``measured`` wherever a theory exists, so the two line up
(``compare()``); ``table`` holds the rows of the terminal table (derived from the other two,
kept so that a JSON file prints and plots on its own: ``StudyResult.from_json(path).plot(…)``).
"""

from __future__ import annotations

import json
import math
import numbers
import pathlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["StudyResult", "to_builtin", "register_plotter"]

#: plot functions by study name: ``plotter(result, fig) -> None`` draws into a matplotlib figure
_PLOTTERS: dict[str, Callable[..., Any]] = {}


def register_plotter(study: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``plotter(result) -> matplotlib Figure`` draws the study's figure from its
    result alone (so a result read back from JSON plots the same)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _PLOTTERS[study] = fn
        return fn

    return register


def to_builtin(obj: Any) -> Any:
    """``obj`` as JSON-ready Python builtins: arrays become (nested) lists, NumPy scalars
    numbers, tuples lists; non-finite floats become ``None`` (strict JSON has no NaN/inf —
    the verdict says in words when something diverged)."""
    if isinstance(obj, Mapping):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_builtin(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "__array__"):
        return to_builtin(np.asarray(obj))
    return str(obj)


def _leaves(d: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Scalar leaves of a nested dict, with dotted keys."""
    if isinstance(d, Mapping):
        for k, v in d.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, (numbers.Real, type(None))) and not isinstance(d, bool):
        yield prefix, d


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    if isinstance(v, (list, tuple)):
        if len(v) > 4:
            return f"[{_fmt(v[0])} … {_fmt(v[-1])}] ({len(v)})"
        return "[" + ", ".join(_fmt(a) for a in v) + "]"
    return str(v)


def format_table(rows: list[Mapping[str, Any]], columns: list[str] | None = None) -> str:
    """Rows of dicts as an aligned plain-text table (markdown-compatible)."""
    if not rows:
        return ""
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out)


@dataclass
class StudyResult:
    """What a study returns.

    Attributes
    ----------
    study : the study's name (its CLI subcommand).
    params : every option it ran with, and seed, backend, dtype, threads, library versions,
        elapsed seconds.
    measured : what arraynorm's forward/backward passes gave.
    theory : what the literature's theory predicts, under the same keys as ``measured``.
    verdict : the finding in plain words ("gradients explode: ×1.52 per layer").
    table : rows of the terminal table (one per configuration).
    """

    study: str
    params: dict[str, Any]
    measured: dict[str, Any]
    theory: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""
    table: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ JSON
    def as_dict(self) -> dict[str, Any]:
        return to_builtin({"study": self.study, "params": self.params, "measured": self.measured,
                           "theory": self.theory, "verdict": self.verdict, "table": self.table})

    def to_json(self, path: str | pathlib.Path | None = None, *, indent: int | None = 1) -> str:
        """The result as strict JSON (written to ``path`` too, when given)."""
        text = json.dumps(self.as_dict(), indent=indent, allow_nan=False)
        if path is not None:
            pathlib.Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, source: str | pathlib.Path) -> StudyResult:
        """Read a result back from a JSON string or a file path."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            text = pathlib.Path(source).read_text()
        d = json.loads(text)
        missing = {"study", "params", "measured", "theory", "verdict"} - set(d)
        if missing:
            raise ValueError(f"StudyResult.from_json: not a study result, missing {sorted(missing)}")
        return cls(d["study"], d["params"], d["measured"], d["theory"], d["verdict"],
                   d.get("table", []))

    # ------------------------------------------------------------------ views
    def compare(self) -> list[dict[str, Any]]:
        """Theory beside measurement: one row per scalar key present in both, with the
        relative difference |measured − theory| / |theory|."""
        theory = dict(_leaves(to_builtin(self.theory)))
        rows = []
        for key, m in _leaves(to_builtin(self.measured)):
            if key not in theory:
                continue
            t = theory[key]
            rel = None
            if m is not None and t is not None and t != 0:
                rel = abs(m - t) / abs(t)
            rows.append({"quantity": key, "theory": t, "measured": m, "rel. diff": rel})
        return rows

    def format_table(self) -> str:
        """The study's table as aligned text."""
        return format_table(self.table)

    def summary(self) -> str:
        """Title, verdict, the study's table and theory-vs-measured rows, as text."""
        parts = [f"== {self.study} ==", self.verdict, ""]
        if self.table:
            parts += [self.format_table(), ""]
        cmp = self.compare()
        if cmp:
            parts += ["theory vs measured:", format_table(cmp), ""]
        return "\n".join(parts).rstrip() + "\n"

    __str__ = summary

    def plot(self, path: str | pathlib.Path | None = None) -> Any:
        """Draw the study's figure; save it as PNG to ``path`` when given. Returns the figure."""
        plotter = _PLOTTERS.get(self.study)
        if plotter is None:
            raise ValueError(f"StudyResult.plot: no figure is defined for study {self.study!r}")
        from ._plot import save

        fig = plotter(self)
        if path is not None:
            save(fig, path)
        return fig
