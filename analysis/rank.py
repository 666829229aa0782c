"""Rank collapse: how a batch's representations lose rank with depth, with and without
normalization (Daneshmand et al. 2020, 2021).

A deep linear network with Gaussian weights maps a batch X (n × d) to H_ℓ = X W₁ᵀ⋯W_ℓᵀ. The
singular values of a product of ℓ independent d × d Gaussian matrices with N(0, 1/d) entries
grow like exp(ℓλᵢ) with the Lyapunov exponents (Newman 1986)

    λᵢ = ½ [log(2/d) + ψ((d − i + 1)/2)],     i = 1 … d,

so the batch aligns with one direction. Each layer multiplies lengths and 2-volumes by
independent χ factors, so for any two samples E[log sin²θ] falls by exactly
2(λ₂ − λ₁) = ψ((d−1)/2) − ψ(d/2) per layer, at every depth: the factor
exp(ψ((d−1)/2) − ψ(d/2)) per layer is the theory column of this study.
Batch normalization without centring (H ← diag(HᵀH)^{-1/2}-scaled features) provably avoids
the collapse: the orthogonality gap ‖G/tr G − I/n‖_F of the Gram matrix G = H Hᵀ falls with
depth to a floor of order width^{-1/2} (Daneshmand, Joudaki & Bach 2021) — the theory's
width exponent −½. Centred BN has the same behaviour but its samples sum to zero, so its gap
cannot go below 1/√(n(n−1)); LayerNorm rescales each sample and cannot undo the alignment.

Measured, per normalization: the gap, the stable rank Σσ²/σ₁² and the entropy effective rank of
H_ℓ at every depth (mean over seeds), the per-layer factor of sin²θ between samples (the
slope of its mean log fitted over depth) on the unnormalized network, and the log-log slope of
the final gap against the width.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special, stats

import arraynorm as an

from ._backend import Backend, point_rng
from ._fit import fit_line, fit_power
from ._plot import colors, figure
from ._result import register_plotter
from ._spectra import effective_rank, orthogonality_gap, singular_values, stable_rank
from ._study import Context, Outcome, check_choices, study

__all__ = ["rank", "NORMS", "lyapunov_ratio_rate"]

NORMS = ("none", "batch", "batch_uncentered", "layer")


def lyapunov_ratio_rate(width: int) -> float:
    """exp(2(λ₂ − λ₁)) = exp(ψ((d−1)/2) − ψ(d/2)): the per-layer factor of (σ₂/σ₁)² for a
    product of d × d Gaussian matrices (Newman 1986)."""
    d = float(width)
    return float(np.exp(special.digamma((d - 1) / 2) - special.digamma(d / 2)))


def mean_log_sin2(h: np.ndarray) -> float:
    """Mean over pairs of samples (rows of ``h``) of log sin²θ between them, sin²θ computed
    as ‖a − proj_b a‖² / ‖a‖² (no cancellation in 1 − cos²θ)."""
    h = np.asarray(h, dtype=np.float64).reshape(h.shape[0], -1)
    norms = np.linalg.norm(h, axis=1)
    u = h / np.where(norms > 0, norms, 1.0)[:, None]
    vals = []
    for i in range(len(u)):
        rest = u[i + 1:]
        resid = rest - (rest @ u[i])[:, None] * u[i]
        vals.append(np.einsum("ij,ij->i", resid, resid))
    s2 = np.concatenate(vals) if vals else np.array([])
    with np.errstate(divide="ignore"):
        return float(np.mean(np.log(s2))) if s2.size else float("nan")


def _point(*, norm: str, width: int, depth: int, batch: int, activation: str, rep: int,
           backend: str, dtype: str, seed: int) -> dict[str, list[float]]:
    """Per-layer rank measures of one random network on one random batch."""
    b = Backend(backend, dtype)
    rng = point_rng(seed, "rank", norm, width, rep)
    model = an.nn.deep_stack(depth, width, activation=activation, norm=norm,
                             init="gaussian", sigma_w=1.0, bias=False, rng=rng, xp=b.xp,
                             dtype=b.dtype)
    model.requires_grad_(False)
    h = b.asarray(rng.standard_normal((batch, width)))
    out: dict[str, list[float]] = {"gap": [], "stable_rank": [], "effective_rank": [],
                                   "log_sin2": []}
    for layer in [None, *model]:
        if layer is not None:
            h = layer.forward(h)
        hn = b.to_numpy(h)
        s = singular_values(hn)
        out["gap"].append(orthogonality_gap(hn))
        out["stable_rank"].append(stable_rank(s))
        out["effective_rank"].append(effective_rank(s))
        out["log_sin2"].append(mean_log_sin2(hn))
    return out


@study("rank", quick=dict(depth=12, widths=(16, 32), seeds=2, batch=8),
       report=dict(depth=60, widths=(32, 64, 128), seeds=8))
def rank(ctx: Context, *, depth: int = 60, widths: tuple[int, ...] = (32, 64, 128, 256),
         batch: int = 16, norms: tuple[str, ...] = NORMS, activation: str = "identity",
         seeds: int = 3) -> Outcome:
    """Rank collapse with depth and width, with and without normalization (Daneshmand et al.).

    Parameters
    ----------
    depth : layers of the deep network (each Linear → norm → activation).
    widths : widths d; the per-layer curves are reported for the smallest, the gap at
        ``depth`` is fitted against all of them (its log-log slope).
    batch : samples n in the batch whose representations are tracked (n < d).
    norms : among "none", "batch", "batch_uncentered" (scale-only BN), "layer".
    activation : "identity" (the linear networks of the theory), "relu", "tanh", …
    seeds : independent networks and batches per configuration (means are reported).
    """
    fname = "rank"
    norms = check_choices(fname, "norms", norms, NORMS)
    if depth < 2 or batch < 2 or seeds < 1 or not widths or min(widths) < 2:
        raise ValueError(f"{fname}: need depth >= 2, batch >= 2, seeds >= 1 and widths >= 2, "
                         f"got depth={depth}, batch={batch}, seeds={seeds}, widths={widths}")
    widths = tuple(sorted(set(widths)))
    points = [dict(norm=n, width=w, depth=depth, batch=batch, activation=activation, rep=r,
                   **ctx.point_options())
              for n in norms for w in widths for r in range(seeds)]
    runs = ctx.map(_point, points, desc="rank")
    by: dict[tuple[str, int], list[dict[str, list[float]]]] = {}
    for p, r in zip(points, runs):
        by.setdefault((p["norm"], p["width"]), []).append(r)

    def mean_curve(n: str, w: int, key: str) -> np.ndarray:
        return np.nanmean(np.array([r[key] for r in by[(n, w)]]), axis=0)

    w0 = widths[0]
    layers = np.arange(depth + 1)
    measured: dict[str, Any] = {"width_curves": w0, "layers": layers}
    theory: dict[str, Any] = {}
    table = []
    for n in norms:
        finals = [float(mean_curve(n, w, "gap")[-1]) for w in widths]
        slope = fit_power(widths, finals)
        m = {key: mean_curve(n, w0, key) for key in ("gap", "stable_rank", "effective_rank")}
        m.update(gap_final=finals[0], stable_rank_final=float(m["stable_rank"][-1]),
                 effective_rank_final=float(m["effective_rank"][-1]),
                 gap_final_by_width=finals, width_exponent=slope.slope,
                 width_exponent_ci=list(slope.confidence_interval()))
        measured[n] = m
        table.append({"norm": n, f"gap @ depth {depth}": finals[0],
                      "stable rank": m["stable_rank_final"], "eff. rank": m["effective_rank_final"],
                      "gap ∝ width^k": slope.slope})
    if activation == "identity" and "batch_uncentered" in norms and len(widths) > 1:
        theory["batch_uncentered"] = {"width_exponent": -0.5}
    if "none" in norms and activation == "identity":
        slopes, ci, th = {}, {}, {}
        for w in widths:
            # E log sin²θ between two samples falls by exactly 2(λ₂ − λ₁) per Gaussian layer
            # (each layer scales 2-volumes and lengths by independent χ factors), at any
            # depth: each network's fitted slope is an estimate; the interval is over seeds
            per_seed = np.array([fit_line(layers, r["log_sin2"]).slope for r in by[("none", w)]])
            slopes[f"width {w}"] = float(per_seed.mean())
            ci[f"width {w}"] = list(_t_interval(per_seed))
            th[f"width {w}"] = float(np.log(lyapunov_ratio_rate(w)))
        measured["collapse_exponent"], theory["collapse_exponent"] = slopes, th
        measured["collapse_exponent_ci"] = ci
    verdict = _verdict(measured, theory, norms, depth, widths)
    return Outcome(measured, theory, verdict, table)


def _t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of independent estimates (infinite for one)."""
    n = len(values)
    if n < 2:
        return (-np.inf, np.inf)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return (float(values.mean() - half), float(values.mean() + half))


def _verdict(m: dict[str, Any], t: dict[str, Any], norms: tuple[str, ...], depth: int,
             widths: tuple[int, ...]) -> str:
    parts = []
    if "collapse_exponent" in m:
        w = f"width {widths[0]}"
        lo, hi = m["collapse_exponent_ci"][w]
        parts.append(f"without normalization the batch collapses toward rank one "
                     f"(sin²θ between samples ×{np.exp(m['collapse_exponent'][w]):.4f} per layer "
                     f"at {w}, 95% CI ×{np.exp(lo):.4f}–{np.exp(hi):.4f}; theory "
                     f"×{np.exp(t['collapse_exponent'][w]):.4f}; stable rank "
                     f"{m['none']['stable_rank_final']:.2f} at depth {depth})")
    for n, label in (("batch_uncentered", "scale-only BN"), ("batch", "BN")):
        if n in norms:
            parts.append(f"{label} keeps it spread (gap {m[n]['gap_final']:.3f}, stable rank "
                         f"{m[n]['stable_rank_final']:.2f}; gap ∝ width^{m[n]['width_exponent']:.2f})")
    if "layer" in norms and "none" in norms:
        worse = m["layer"]["stable_rank_final"] < 2 * m["none"]["stable_rank_final"]
        parts.append("LN does not prevent the collapse" if worse else "LN slows the collapse")
    return "; ".join(parts) + "."


@register_plotter("rank")
def _plot(r: Any) -> Any:
    m, t = r.measured, r.theory
    norms = [n for n in NORMS if n in m]
    col = colors(NORMS)
    fig, ax = figure(3, title=f"rank collapse (width {m['width_curves']}, batch {r.params['batch']})")
    layers = np.asarray(m["layers"])
    for n in norms:
        ax[0].semilogy(layers, m[n]["gap"], color=col[n], label=n)
        ax[1].plot(layers, m[n]["stable_rank"], color=col[n], label=n)
        w = np.asarray(r.params["widths"])
        ax[2].loglog(w, m[n]["gap_final_by_width"], "o-", color=col[n], label=n)
    if "batch_uncentered" in t:
        w = np.asarray(r.params["widths"], dtype=float)
        g = np.asarray(m["batch_uncentered"]["gap_final_by_width"], dtype=float)
        ax[2].loglog(w, g[0] * (w / w[0]) ** -0.5, "k--", lw=1, label="theory ∝ width^-½")
    ax[0].set(xlabel="layer", ylabel="orthogonality gap")
    ax[1].set(xlabel="layer", ylabel="stable rank Σσ²/σ₁²")
    ax[2].set(xlabel="width", ylabel=f"gap at depth {r.params['depth']}")
    for a in ax:
        a.legend(fontsize=7)
    return fig
