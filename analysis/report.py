"""``python -m analysis report``: every study at its report sizes, one markdown report.

Writes ``<out>/report.md`` (each study's verdict, table, theory beside measurement and
figure), ``<out>/<study>.json`` and ``<out>/<study>.png``. ``quick=True`` runs every study at
its quick sizes (the tests use it). ``executor`` is the studies' option (``"processes:N"``,
``"tcp://host:port"``, a Dask client or a pool; default in process); a cluster it names is
started once for the whole report and closed at its end.
"""

from __future__ import annotations

import datetime
import pathlib
import time
from collections.abc import Sequence
from typing import Any

from ._backend import versions
from ._executor import as_executor, check_scheduler, open_executor, progress_bar
from ._result import StudyResult, format_table
from ._study import STUDIES

__all__ = ["report"]


def report(out: str | pathlib.Path = "analysis-report", *, quick: bool = False,
           studies: Sequence[str] | None = None, seed: int = 0, backend: str = "numpy",
           progress: bool = True, executor: Any = None) -> list[StudyResult]:
    """Run the studies (all registered ones by default) and write the report into ``out``.

    Returns the results in report order.
    """
    names = list(STUDIES) if studies is None else list(studies)
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        raise ValueError(f"report: unknown studies {unknown}; known: {list(STUDIES)}")
    if isinstance(executor, str):
        try:
            check_scheduler(executor)
        except ValueError as exc:
            raise ValueError(f"report: executor: {exc}") from None
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, times = [], {}
    t_all = time.perf_counter()
    bar = progress_bar(len(names), "report", progress)
    with open_executor(executor) as pool:
        where = executor if isinstance(executor, str) else repr(as_executor(pool))
        try:
            for name in names:
                s = STUDIES[name]
                kwargs = {"quick": True} if quick else dict(s.report)
                t0 = time.perf_counter()
                r = s.run(**kwargs, seed=seed, backend=backend, progress=progress, executor=pool)
                times[name] = time.perf_counter() - t0
                r.to_json(out / f"{name}.json")
                r.plot(out / f"{name}.png")
                results.append(r)
                bar.update(1)
        finally:
            bar.close()
    total = time.perf_counter() - t_all
    (out / "report.md").write_text(_markdown(results, times, total, quick, backend, where))
    return results


def _headline(verdict: str, most: int = 160) -> str:
    """The verdict's first clause (up to the first ';'), for the summary table; the whole
    verdict is in the study's section."""
    depth, cut = 0, len(verdict)
    for i, ch in enumerate(verdict):  # the first ';' outside parentheses
        depth += (ch in "([") - (ch in ")]")
        if ch == ";" and depth == 0:
            cut = i
            break
    head = verdict[:cut].strip().rstrip(".")
    return head if len(head) <= most else head[: most - 1].rstrip() + "…"


def _markdown(results: list[StudyResult], times: dict[str, float], total: float, quick: bool,
              backend: str, where: str = "serial") -> str:
    v = versions()
    lines = [
        "# arraynorm analysis report",
        "",
        f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} by "
        f"`python -m analysis report{' --quick' if quick else ''}` on {v['machine']} "
        f"(Python {v['python']}, NumPy {v['numpy']}, SciPy {v['scipy']}, arraynorm "
        f"{v['arraynorm']}; backend {backend}; executor {where}); {total:.1f} s in all.",
        "",
        "| study | verdict | seconds |",
        "|---|---|---|",
    ]
    for r in results:
        lines.append(f"| [{r.study}](#{r.study}) | {_headline(r.verdict)} | {times[r.study]:.1f} |")
    for r in results:
        s = STUDIES.get(r.study)
        lines += ["", f"## {r.study}", ""]
        if s is not None:
            lines += [s.summary, ""]
        lines += [f"**Verdict.** {r.verdict}", ""]
        if r.table:
            lines += [format_table(r.table), ""]
        cmp = r.compare()
        if cmp:
            lines += ["Theory beside measurement:", "", format_table(cmp), ""]
        lines += [f"![{r.study}]({r.study}.png)", ""]
        shown = {k: val for k, val in r.params.items()
                 if k not in ("versions", "threads", "executor")}
        lines += ["<sub>options: " + ", ".join(f"{k}={val}" for k, val in shown.items()) + "</sub>", ""]
    return "\n".join(lines)
