"""``python -m analysis <study> [options]`` and ``python -m analysis report [--out DIR] [--quick]``.

Every study is a subcommand whose options are the study function's keyword arguments
(``--depth 50``, ``--norms none,batch``, ``--residual`` / ``--no-residual``), plus the common
ones (``--backend``, ``--dtype``, ``--seed``, ``--threads``, ``--quick``, ``--scheduler``) and
``--json PATH``, ``--plot PATH``. ``--scheduler`` is the ``executor=`` option: ``local`` (in
process, the default), ``processes:N`` (a Dask LocalCluster of N worker processes) or
``tcp://host:port`` (an existing Dask cluster). The result's table and verdict go to stdout, progress bars to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import STUDIES, report
from ._backend import BACKENDS, DTYPES
from ._executor import check_scheduler


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _splitter(kind: type) -> Any:
    conv = _bool if kind is bool else kind  # bool("False") is True: parse the words

    def parse(text: str) -> list[Any]:
        return [conv(v) for v in text.split(",") if v != ""]

    return parse


def _add_study_options(p: argparse.ArgumentParser, s: Any) -> None:
    for name, param in s.options.items():
        kind, is_tuple = s.kinds[name]
        flag = "--" + name.replace("_", "-")
        default = param.default
        if kind is bool and not is_tuple:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"default {default}")
        elif is_tuple:
            shown = ",".join(str(v) for v in default) if default is not None else None
            p.add_argument(flag, dest=name, nargs="+", type=_splitter(kind), default=None,
                           metavar=kind.__name__.upper(), help=f"comma or space separated; default {shown}")
        else:
            p.add_argument(flag, dest=name, type=kind, default=None,
                           metavar=kind.__name__.upper(), help=f"default {default}")


def _scheduler(text: str) -> str:
    try:
        check_scheduler(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_scheduler(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", type=_scheduler, default="local", metavar="SPEC",
                   help="where the points run: local (in process, default), processes:N (a Dask "
                        "LocalCluster of N worker processes) or tcp://host:port (a Dask cluster)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, default="numpy", help="array library (default numpy)")
    p.add_argument("--dtype", choices=DTYPES, default="float64", help="default float64")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP threads (default 1; 0 leaves them as they are)")
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_scheduler(p)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Studies of normalization in deep networks: theory (SciPy) beside "
                    "measurement (arraynorm's exact passes).")
    sub = top.add_subparsers(dest="command", required=True, metavar="STUDY")
    rp = sub.add_parser("report", help="run every study and write report.md with figures")
    rp.add_argument("--out", default="analysis-report", help="output folder (default ./analysis-report)")
    rp.add_argument("--quick", action="store_true", help="every study at its quick sizes")
    rp.add_argument("--studies", nargs="+", type=_splitter(str), default=None, help="only these")
    rp.add_argument("--backend", choices=BACKENDS, default="numpy")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--no-progress", action="store_true")
    _add_scheduler(rp)
    sub.add_parser("list", help="list the studies")
    for name, s in STUDIES.items():
        p = sub.add_parser(name, help=s.summary, description=s.summary)
        _add_study_options(p, s)
        _add_common(p)
        p.add_argument("--json", metavar="PATH", help="write the result as JSON")
        p.add_argument("--plot", metavar="PATH", help="write the figure as PNG")
    return top


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.command == "list":
        for name, s in STUDIES.items():
            print(f"{name:18s} {s.summary}")
        return 0
    if a.command == "report":
        studies = None if a.studies is None else [v for vs in a.studies for v in vs]
        results = report(a.out, quick=a.quick, studies=studies, seed=a.seed, backend=a.backend,
                         progress=not a.no_progress, executor=a.scheduler)
        for r in results:
            print(f"{r.study:18s} {r.verdict}")
        print(f"report written to {a.out}/report.md")
        return 0
    s = STUDIES[a.command]
    kwargs: dict[str, Any] = {}
    for name in s.options:
        v = getattr(a, name)
        if v is None:
            continue
        if s.kinds[name][1]:  # tuples: "a,b c" -> (a, b, c)
            v = tuple(x for part in v for x in part)
        kwargs[name] = v
    result = s.run(**kwargs, backend=a.backend, dtype=a.dtype, seed=a.seed,
                   threads=None if a.threads == 0 else a.threads, quick=a.quick,
                   progress=not a.no_progress, executor=a.scheduler)
    sys.stdout.write(result.summary())
    if a.json:
        result.to_json(a.json)
    if a.plot:
        result.plot(a.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
