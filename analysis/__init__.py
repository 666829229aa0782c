"""analysis — why normalization works, measured: theory computed with SciPy beside
measurements taken with arraynorm's exact forward, backward and forward-mode passes.

Each study is one call and one command::

    >>> import analysis
    >>> r = analysis.rank(quick=True, progress=False)      # doctest: +SKIP
    >>> print(r)                                           # table, verdict  # doctest: +SKIP
    >>> r.to_json("rank.json"); r.plot("rank.png")         # doctest: +SKIP

    $ python -m analysis rank --depth 50 --json rank.json --plot rank.png
    $ python -m analysis report            # every study, report.md with figures
    $ python -m analysis rank --scheduler processes:4    # points on a Dask LocalCluster

Every study returns a :class:`StudyResult` whose JSON has one skeleton — ``study``,
``params``, ``measured``, ``theory`` (same keys as ``measured``), ``verdict`` — and takes the
common options ``backend``, ``dtype``, ``seed``, ``threads``, ``quick``, ``executor``,
``progress`` — ``executor`` is where the points of a sweep run: in process (default), a
process pool, or a Dask cluster (``"processes:N"``, ``"tcp://host:port"``, a ``Client``; see
:mod:`._executor`), with the same results bit for bit. The shared core: :mod:`._study` (the protocol and registry), :mod:`._result`,
:mod:`._backend` (backends, threads, seeds), :mod:`._executor` (points of a sweep),
:mod:`._fit` (rates with confidence intervals), :mod:`._operator` (Jacobians as SciPy
``LinearOperator``), :mod:`._plot`.
"""

from __future__ import annotations

from ._executor import DaskExecutor, FuturesExecutor, SerialExecutor, SweepError, open_executor
from ._fit import LineFit, fit_growth, fit_line, fit_power
from ._result import StudyResult
from ._study import STUDIES, Context, Outcome, study
from .report import report

# studies register themselves on import, in report order: signal propagation (issue 10),
# optimization geometry (issue 11), then the applications (issue 16)
from .jacobian import jacobian  # noqa: E402
from .gradient_flow import gradient_flow  # noqa: E402
from .mean_field import mean_field  # noqa: E402
from .rank import rank  # noqa: E402
from .scale_invariance import scale_invariance  # noqa: E402
from .landscape import landscape  # noqa: E402
from .covariate_shift import covariate_shift  # noqa: E402
from .convergence import convergence  # noqa: E402
from .batch_size import batch_size  # noqa: E402
from .gan import gan  # noqa: E402
from .rl import rl  # noqa: E402
from .style import style  # noqa: E402

__all__ = ["StudyResult", "STUDIES", "study", "Context", "Outcome", "report",
           "SerialExecutor", "FuturesExecutor", "DaskExecutor", "SweepError", "open_executor",
           "LineFit", "fit_line", "fit_growth", "fit_power",
           "jacobian", "gradient_flow", "mean_field", "rank", "scale_invariance", "landscape",
           "covariate_shift", "convergence", "batch_size", "gan", "rl", "style"]
