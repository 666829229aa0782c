"""Summaries of a spectrum or of a batch's representations: stable rank, entropy effective
rank, the orthogonality gap, moments.

For a batch of representations H (n samples × d features) with Gram matrix G = H Hᵀ:

* stable rank  ‖H‖_F² / ‖H‖₂² = Σσᵢ² / σ₁²  (between 1 and rank H);
* entropy effective rank  exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ / Σσⱼ  (Roy & Vetterli 2007);
* orthogonality gap  ‖G / tr G − I/n‖_F  (Daneshmand et al. 2021: 0 when the samples are
  orthogonal with equal norms, √(1 − 1/n) when they are collinear).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

__all__ = ["singular_values", "stable_rank", "effective_rank", "orthogonality_gap", "moments"]


def singular_values(h: Any) -> np.ndarray:
    """Singular values of a 2-D array (samples × features), descending, float64."""
    return scipy.linalg.svdvals(np.asarray(h, dtype=np.float64))


def stable_rank(s: np.ndarray) -> float:
    """Σσᵢ² / σ₁² of singular values ``s`` (NaN for the zero matrix)."""
    s = np.asarray(s, dtype=np.float64)
    top = s.max(initial=0.0)
    return float(np.sum(s * s) / (top * top)) if top > 0 else float("nan")


def effective_rank(s: np.ndarray) -> float:
    """exp of the entropy of σᵢ / Σσⱼ (Roy & Vetterli 2007)."""
    s = np.asarray(s, dtype=np.float64)
    total = s.sum()
    if not total > 0:
        return float("nan")
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def orthogonality_gap(h: Any) -> float:
    """‖H Hᵀ / tr(H Hᵀ) − I/n‖_F for n samples (rows of ``h``)."""
    h = np.asarray(h, dtype=np.float64)
    h = h.reshape(h.shape[0], -1)
    g = h @ h.T
    tr = np.trace(g)
    if not tr > 0:
        return float("nan")
    n = g.shape[0]
    return float(np.linalg.norm(g / tr - np.eye(n) / n))


def moments(values: np.ndarray, orders: tuple[int, ...] = (1, 2)) -> dict[str, float]:
    """Raw moments E[λᵏ] of a spectrum ``values`` (e.g. the eigenvalues of JJᵀ)."""
    v = np.asarray(values, dtype=np.float64)
    return {f"m{k}": float(np.mean(v ** k)) for k in orders}
