"""Fits with confidence intervals (``scipy.stats``): growth rates per layer and power laws.

A per-layer growth rate is the slope of log(value) against depth: value_ℓ ≈ A·r^ℓ gives
log value_ℓ = log A + ℓ·log r, so r = exp(slope). A power law y ≈ A·x^k is a line in log-log
coordinates, k its slope. Both are ordinary least squares (``scipy.stats.linregress``) with a
two-sided Student-t interval on n − 2 degrees of freedom, as ``LinregressResult`` reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["LineFit", "fit_line", "fit_growth", "fit_power"]


@dataclass(frozen=True)
class LineFit:
    """y ≈ intercept + slope·x, with standard errors and a t-interval for the slope.

    For :func:`fit_growth`, ``rate = exp(slope)`` is the factor per layer; for
    :func:`fit_power`, ``slope`` is the exponent.
    """

    slope: float
    intercept: float
    stderr: float
    intercept_stderr: float
    rvalue: float
    n: int

    def confidence_interval(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided interval of the slope (Student t, n − 2 degrees of freedom); infinite
        with fewer than 3 points."""
        if self.n < 3 or not math.isfinite(self.stderr):
            return (-math.inf, math.inf)
        t = float(stats.t.ppf(0.5 + level / 2, self.n - 2))
        return (self.slope - t * self.stderr, self.slope + t * self.stderr)

    @property
    def rate(self) -> float:
        """exp(slope): the factor per unit of x (per layer, for :func:`fit_growth`)."""
        return math.exp(self.slope) if self.slope < 700 else math.inf

    def rate_interval(self, level: float = 0.95) -> tuple[float, float]:
        lo, hi = self.confidence_interval(level)
        return (math.exp(max(lo, -700)), math.exp(min(hi, 700)))

    def as_dict(self, level: float = 0.95) -> dict[str, Any]:
        lo, hi = self.confidence_interval(level)
        return {"slope": self.slope, "slope_ci": [lo, hi], "intercept": self.intercept,
                "stderr": self.stderr, "r": self.rvalue, "n": self.n}


def fit_line(x: Any, y: Any) -> LineFit:
    """Least-squares line through finite (x, y) pairs (non-finite ones are dropped)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"fit_line: x and y must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2 or np.ptp(x) == 0:
        return LineFit(math.nan, math.nan, math.inf, math.inf, math.nan, int(x.size))
    if x.size == 2:
        slope = (y[1] - y[0]) / (x[1] - x[0])
        return LineFit(float(slope), float(y[0] - slope * x[0]), math.inf, math.inf, 1.0, 2)
    r = stats.linregress(x, y)
    return LineFit(float(r.slope), float(r.intercept), float(r.stderr),
                   float(r.intercept_stderr), float(r.rvalue), int(x.size))


def fit_growth(depth: Any, values: Any) -> LineFit:
    """Per-layer growth of positive ``values`` along ``depth``: the line through
    (ℓ, log value_ℓ); ``.rate`` is the factor per layer. Zeros and negatives are dropped
    (log undefined)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logv = np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), np.nan)
    return fit_line(depth, logv)


def fit_power(x: Any, y: Any) -> LineFit:
    """Exponent k of y ≈ A·x^k: the line through (log x, log y), positive pairs only."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lx = np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), np.nan)
        ly = np.where(y > 0, np.log(np.where(y > 0, y, 1.0)), np.nan)
    return fit_line(lx, ly)
