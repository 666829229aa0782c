"""Stage 2 of the survey's framework: the normalization operation — what is done with the
statistics of each partition. Every operation of the package lives here; the named methods
(:mod:`arraynorm.methods`, :mod:`arraynorm.whitening`) only compose them.

An operation works on the partition's *view* of the input (already promoted to the compute
dtype, see :func:`arraynorm._array_api.xp_compute_dtype`) and has three methods
(:class:`Operation`):

``forward(xp, xv, layout, eps) -> (yv, state)``
    the normalized view and whatever the backward pass needs;
``backward(xp, gv, state) -> dxv``
    the exact vector–Jacobian product for a cotangent ``gv`` of the output;
``jvp(xp, tv, state) -> dyv``
    the exact Jacobian–vector product for a tangent ``tv`` of the input, at the same point
    (the statistics move with x; the transpose of ``backward``).

=====================  =========================================  ===========================
module                 operations                                 state
=====================  =========================================  ===========================
``standardize``        Standardize, RMSScale, GivenStatistics,    StandardizeState (mean,
                       Renormalize                                var, rstd; ``r`` for renorm)
``lp``                 LpScale                                    LpState
``whiten``             ZCAWhiten, PCAWhiten, CholeskyWhiten,      WhiteningState (mean, W)
                       IterNormWhiten, GivenWhitening
=====================  =========================================  ===========================

Operations never branch on array values (DESIGN.md §3.4); their statistics come from
:mod:`arraynorm._statistics`.
"""

from .._statistics import centre, lp_norm, mean, moments, statistics  # their first home
from .base import Operation
from .lp import LpScale, LpState
from .standardize import (GivenStatistics, Renormalize, RenormalizeState, RMSScale, Standardize,
                          StandardizeState)
from .whiten import (WHITENING_METHODS, CholeskyWhiten, GivenWhitening, GivenWhiteningState,
                     IterNormWhiten, PCAWhiten, Whiten, WhiteningState, ZCAWhiten,
                     whitening_operation)

__all__ = [
    "Operation", "Standardize", "RMSScale", "LpScale", "GivenStatistics", "Renormalize",
    "StandardizeState", "RenormalizeState", "LpState",
    "Whiten", "ZCAWhiten", "PCAWhiten", "CholeskyWhiten", "IterNormWhiten", "GivenWhitening",
    "WhiteningState", "GivenWhiteningState", "WHITENING_METHODS", "whitening_operation",
]
