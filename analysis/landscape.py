"""Loss landscape and Hessian spectra over training, with and without normalization
(Santurkar et al. 2018; Cohen et al. 2021; PyHessian, Yao et al. 2020; Ghorbani et al. 2019).

A deep MLP (``deep_stack``: Linear → norm → φ blocks, a linear read-out) is trained by
full-batch gradient descent θ ← θ − η∇L(θ) on a fixed synthetic task (two interleaved
spirals; mean squared error on one-hot targets, as Cohen et al. use, or cross-entropy), once
per normalization from the same initial weights. Every few steps, at θ with gradient g:

* **Santurkar et al.'s landscape measures** along the gradient direction, at the points
  θ − s·g for the step sizes s = c·η (c in ``probe_steps``): the *loss range*
  max L − min L over the points (and θ itself); the *gradient change*
  max ‖∇L(θ − sg) − g‖ (gradient predictiveness: small means the gradient predicts its
  own change well); the *effective β-smoothness* max ‖∇L(θ − sg) − g‖ / ‖sg‖. By the mean
  value theorem the last is an average of ‖H ĝ‖ along the segment, so it is at most the
  largest |eigenvalue| of the Hessian there.
* **Sharpness** λ_max(∇²L(θ)) — the largest Hessian eigenvalue by ``scipy.sparse.linalg.eigsh``
  (Lanczos, warm-started from the previous top eigenvector) on the Hessian–vector-product
  operator of :mod:`._hessian` — beside 2/η. Gradient descent on a quadratic with curvature
  λ diverges once λ > 2/η; Cohen et al. (2021) found that full-batch GD on networks
  sharpens until λ_max reaches 2/η and then hovers there (the *edge of stability*), the loss
  still falling non-monotonically. The theory column of the late-training sharpness is 2/η.

At initialization and at the end, PyHessian's three measurements of ∇²L: the ``top_k``
largest eigenvalues (``eigsh``), the trace by Hutchinson's estimator with Rademacher probes
(with its standard error), and the spectral density by stochastic Lanczos quadrature with
Gaussian broadening. With ``exact=True`` the dense Hessian (n products) is formed at the end
and its ``numpy.linalg.eigvalsh`` spectrum gives the exact trace and top eigenvalues: the
theory columns of the estimators.

For the batch-dependent normalizations (BN, DBN, IterNorm) the loss is the train-mode loss
of the full batch — every output uses the batch's mean and variance — so the Hessian is that
of the function gradient descent actually minimizes, not of the eval-mode network. The
Hessian–vector products are central differences of exact gradients, with the step and the
error stated in ``measured[norm]["hvp"]`` (about 1e-10 relative in float64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import Backend, point_rng
from ._hessian import (ModelLoss, dense_matrix, hessian_operator, hutchinson_trace, slq,
                       top_eigenvalues)
from ._plot import colors, figure
from ._result import register_plotter
from ._study import Context, Outcome, check_choices, study
from ._training import diverging, make_task, mean_over_seeds

__all__ = ["landscape", "NORMS"]

#: normalizations whose loss is a function of the parameters alone (spectral norm and batch
#: renorm carry state that every training forward changes, so their "Hessian" would not be
#: of one function)
NORMS = ("none", "batch", "layer", "group", "rms", "weight_norm", "weight_standardization",
         "centered_weight_norm", "dbn", "iternorm")
LOSSES = ("mse", "cross_entropy")


def _spectrum(f: ModelLoss, theta: np.ndarray, *, dtype: str, rng: np.random.Generator,
              top_k: int, trace_probes: int, lanczos_steps: int, slq_probes: int,
              broadening: float, grid: int) -> dict[str, Any]:
    """PyHessian's measurements at θ: top eigenvalues, Hutchinson trace, SLQ density."""
    op = hessian_operator(f, theta, dtype=dtype, rng=rng)
    top, _ = top_eigenvalues(op, top_k, v0=rng.standard_normal(op.shape[0]), tol=1e-7)
    tr = hutchinson_trace(op, trace_probes, rng)
    dens = slq(op, slq_probes, lanczos_steps, rng)
    lo, hi = dens.support
    pad = 0.05 * (hi - lo) + 1e-12
    ts = np.linspace(lo - pad, hi + pad, grid)
    return {"top_eigenvalues": top, "sharpness": float(top[0]), "trace": tr.estimate,
            "trace_stderr": tr.stderr, "slq_trace": dens.moment(1) * op.shape[0],
            "density_grid": ts, "density": dens.density(ts, broadening * (hi - lo + 1e-12)),
            "hvp": op.step.as_dict(), "products": op.products}


def _run(*, norm: str, rep: int, depth: int, width: int, samples: int, activation: str, loss: str,
         lr: float, steps: int, measurements: int, probe_steps: tuple[float, ...], top_k: int,
         trace_probes: int, lanczos_steps: int, slq_probes: int, broadening: float,
         exact: bool, backend: str, dtype: str, seed: int) -> dict[str, Any]:
    """One normalization: full-batch GD with the landscape measured along the way."""
    b = Backend(backend, dtype)
    rng = point_rng(seed, "landscape", norm, rep)
    model, loss_fn, x, t = make_task(b, seed=seed, rep=rep, samples=samples, depth=depth,
                                     width=width, norm=norm, activation=activation, loss=loss)
    f = ModelLoss(model, loss_fn, x, t, b)
    spec = dict(dtype=dtype, top_k=top_k, trace_probes=trace_probes, lanczos_steps=lanczos_steps,
                slq_probes=slq_probes, broadening=broadening, grid=160)
    theta = f.theta0.copy()
    init = _spectrum(f, theta, rng=rng, **spec)
    at = set(np.unique(np.linspace(0, steps, measurements + 1).round().astype(int)).tolist())
    curves: dict[str, list[float]] = {k: [] for k in ("step", "loss", "sharpness", "loss_range",
                                                      "grad_change", "beta")}
    losses = np.empty(steps + 1)
    v0 = None
    with np.errstate(all="ignore"):
        for s in range(steps + 1):
            value, g = f.value_and_grad(theta)
            losses[s] = value
            if diverging(value, losses[0]):
                losses[s:] = np.inf
                break
            if s in at:
                curves["step"].append(s)
                curves["loss"].append(value)
                _along_gradient(f, theta, value, g, lr, probe_steps, curves)
                op = hessian_operator(f, theta, dtype=dtype, rng=rng)
                start = v0 if v0 is not None else rng.standard_normal(op.shape[0])
                top, vec = top_eigenvalues(op, 1, v0=start, tol=1e-4)
                curves["sharpness"].append(float(top[0]))
                v0 = vec[:, 0]
            if s < steps:
                theta = theta - lr * g
    diverged = not np.all(np.isfinite(losses))
    out: dict[str, Any] = {"curves": curves, "loss_curve": losses, "diverged": diverged,
                           "init": init, "parameters": int(theta.size)}
    if diverged:
        return out
    out["final"] = _spectrum(f, theta, rng=rng, **spec)
    if exact:
        # the dense Hessian: n products along coordinate directions, where a normalized
        # network's higher derivatives can be largest (the stated HVP error is for the Lanczos
        # directions); its eigenvalues are the reference for the estimators
        op = hessian_operator(f, theta, dtype=dtype, rng=rng)
        ev = np.linalg.eigvalsh(dense_matrix(op))
        out["exact"] = {"eigenvalues": ev, "trace": float(ev.sum()),
                        "top_eigenvalues": ev[::-1][:top_k], "sharpness": float(ev[-1])}
    return out


def _along_gradient(f: ModelLoss, theta: np.ndarray, value: float, g: np.ndarray, lr: float,
                    probe_steps: tuple[float, ...], curves: dict[str, list[float]]) -> None:
    """Santurkar et al.'s three measures at θ along −g (appended to ``curves``)."""
    gn = float(np.linalg.norm(g))
    values, changes, betas = [value], [], []
    for c in probe_steps:
        s = c * lr
        v, g2 = f.value_and_grad(theta - s * g)
        d = float(np.linalg.norm(g2 - g))
        values.append(v)
        changes.append(d)
        betas.append(d / (s * gn) if gn > 0 else 0.0)
    curves["loss_range"].append(float(np.max(values) - np.min(values)))
    curves["grad_change"].append(max(changes))
    curves["beta"].append(max(betas))


@study("landscape",
       quick=dict(depth=2, width=6, samples=48, steps=40, measurements=4, top_k=2,
                  trace_probes=6, lanczos_steps=8, slq_probes=1, probe_steps=(0.5, 2.0)),
       report=dict(depth=3, width=12, samples=128, steps=400, measurements=16))
def landscape(ctx: Context, *, norms: tuple[str, ...] = ("none", "batch", "layer", "weight_norm"),
              depth: int = 3, width: int = 16, samples: int = 256, activation: str = "tanh",
              loss: str = "mse", lr: float = 0.2, steps: int = 600, measurements: int = 20,
              probe_steps: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0), top_k: int = 4,
              trace_probes: int = 50, lanczos_steps: int = 24, slq_probes: int = 2,
              broadening: float = 0.01, exact: bool = True, seeds: int = 1) -> Outcome:
    """Loss landscape smoothness and Hessian sharpness/trace/density over full-batch GD (Santurkar et al.; edge of stability).

    Parameters
    ----------
    norms : normalizations among :data:`NORMS` ("none" is the plain network).
    depth, width : hidden blocks and their units (inputs are 2-D, the read-out has 2 units).
    samples : points of the spirals data set (the full batch).
    activation : "tanh" (default), "relu", "gelu", …
    loss : "mse" on one-hot targets (default, as Cohen et al.) or "cross_entropy".
    lr : the gradient-descent step η; 2/η is the edge of stability.
    steps : gradient-descent steps.
    measurements : how many times (evenly spaced, step 0 included) the landscape and the
        sharpness are measured.
    probe_steps : step sizes along −∇L, in units of η, for Santurkar et al.'s measures.
    top_k : eigenvalues reported at initialization and at the end.
    trace_probes : Rademacher probes of Hutchinson's trace estimator.
    lanczos_steps, slq_probes : stochastic Lanczos quadrature: steps per probe, probes.
    broadening : Gaussian width of the density, as a fraction of the spectrum's range.
    exact : also form the dense Hessian at the end (n products): the exact eigenvalues and
        trace that the estimators are checked against.
    seeds : independent repetitions (data and initial weights); scalars are their means
        (each repetition's values under ``per_seed``), curves and spectra the first's.
    """
    fname = "landscape"
    norms = check_choices(fname, "norms", norms, NORMS)
    check_choices(fname, "loss", loss, LOSSES)
    if depth < 1 or width < 2 or samples < 4 or steps < 1 or measurements < 1:
        raise ValueError(f"{fname}: need depth >= 1, width >= 2, samples >= 4, steps >= 1 and "
                         f"measurements >= 1, got depth={depth}, width={width}, "
                         f"samples={samples}, steps={steps}, measurements={measurements}")
    if not lr > 0 or not probe_steps or min(probe_steps) <= 0:
        raise ValueError(f"{fname}: lr and probe_steps must be positive, got lr={lr}, "
                         f"probe_steps={probe_steps}")
    if top_k < 1 or trace_probes < 2 or lanczos_steps < 2 or slq_probes < 1 or not broadening > 0:
        raise ValueError(f"{fname}: need top_k >= 1, trace_probes >= 2, lanczos_steps >= 2, "
                         f"slq_probes >= 1 and broadening > 0, got {top_k}, {trace_probes}, "
                         f"{lanczos_steps}, {slq_probes}, {broadening}")
    if seeds < 1:
        raise ValueError(f"{fname}: seeds must be >= 1, got {seeds}")
    points = [dict(norm=n, rep=rep, depth=depth, width=width, samples=samples,
                   activation=activation, loss=loss, lr=lr, steps=steps,
                   measurements=measurements, probe_steps=tuple(probe_steps), top_k=top_k,
                   trace_probes=trace_probes, lanczos_steps=lanczos_steps, slq_probes=slq_probes,
                   broadening=broadening, exact=exact, **ctx.point_options())
              for n in norms for rep in range(seeds)]
    runs = ctx.map(_run, points, desc="landscape")
    by: dict[str, list[dict[str, Any]]] = {n: [] for n in norms}
    for p, r in zip(points, runs):
        by[p["norm"]].append(r)
    edge = 2.0 / lr
    measured: dict[str, Any] = {"edge_of_stability": edge}
    theory: dict[str, Any] = {}
    table = []
    for n in norms:
        m = mean_over_seeds([_summarize(r, steps) for r in by[n]])
        th: dict[str, Any] = {"sharpness_late": edge}
        first = by[n][0]
        if "exact" in first:
            e = first["exact"]
            th["final"] = {"trace": e["trace"], "sharpness": e["sharpness"]}
        measured[n], theory[n] = m, th
        row = {"norm": n, "params": m["parameters"], "loss 0→end":
               f"{m['loss_initial']:.3f}→{m['loss_final']:.3f}" if not m["diverged"] else "diverged",
               "λmax init": m["sharpness_initial"], "λmax late": m["sharpness_late"],
               "2/η": edge, "loss range early/late":
               f"{m['loss_range_early']:.2g}/{m['loss_range_late']:.2g}",
               "β eff early/late": f"{m['beta_early']:.2g}/{m['beta_late']:.2g}"}
        if "final" in m:
            row["trace (Hutch.)"] = f"{m['final']['trace']:.3g}±{m['final']['trace_stderr']:.2g}"
            if "exact" in first:
                row["trace exact"] = first["exact"]["trace"]
        table.append(row)
    verdict = _verdict(measured, theory, norms, lr, steps)
    if seeds > 1:
        verdict = verdict[:-1] + f" (means over {seeds} seeds; spectra of the first)."
    return Outcome(measured, theory, verdict, table)


def _summarize(r: dict[str, Any], steps: int) -> dict[str, Any]:
    """One run's measured summary: scalars, its curves, spectra at init and at the end."""
    c = r["curves"]
    m: dict[str, Any] = {
        "curves": c, "diverged": r["diverged"], "parameters": r["parameters"],
        "loss_initial": float(r["loss_curve"][0]),
        "loss_final": float(r["loss_curve"][-1]),
        "sharpness_initial": r["init"]["sharpness"],
        "sharpness_max": float(np.max(c["sharpness"])) if c["sharpness"] else float("nan"),
        "init": _summary(r["init"]),
    }
    # medians over each half of training: before and after GD reaches the edge of
    # stability the measures along −∇L differ by orders of magnitude (at the edge the
    # gradient swings along the top eigenvector), so one mean would mix the two phases
    for key in ("sharpness", "loss_range", "grad_change", "beta"):
        for half, keep in (("early", lambda st: st < steps // 2),
                           ("late", lambda st: st >= steps // 2)):
            vals = [v for st, v in zip(c["step"], c[key]) if keep(st)]
            m[f"{key}_{half}"] = float(np.median(vals)) if vals else float("nan")
    if "final" in r:
        m["final"] = _summary(r["final"])
        if "exact" in r:
            e = r["exact"]
            m["final"]["exact_top_eigenvalues"] = e["top_eigenvalues"]
            m["final"]["exact_eigenvalues"] = e["eigenvalues"]
            m["final"]["trace_z"] = (m["final"]["trace"] - e["trace"]) / m["final"]["trace_stderr"]
    return m


def _summary(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("top_eigenvalues", "sharpness", "trace", "trace_stderr",
                              "slq_trace", "density_grid", "density", "hvp")}


def _verdict(m: dict[str, Any], t: dict[str, Any], norms: tuple[str, ...], lr: float,
             steps: int) -> str:
    edge = 2.0 / lr
    ok = [n for n in norms if not m[n]["diverged"]]
    parts = []
    at_edge = []
    if ok:
        groups: dict[str, list[str]] = {}
        for n in ok:
            q = m[n]["sharpness_late"] / edge
            where = "at the edge" if 0.8 <= q <= 1.25 else ("below it" if q < 0.8 else "above it")
            groups.setdefault(where, []).append(f"{n} {q:.2f}")
            if where == "at the edge":
                at_edge.append(n)
        parts.append(f"edge of stability (2/η = {edge:.3g}, full-batch GD at η = {lr:g}): "
                     f"median λmax/(2/η) over the second half of training "
                     + "; ".join(f"{', '.join(v)} — {k}" for k, v in groups.items())
                     + " (λmax at init: "
                     + ", ".join(f"{n} {m[n]['sharpness_initial']:.3g}" for n in ok) + ")")
    bad = [n for n in norms if m[n]["diverged"]]
    if bad:
        parts.append("diverged: " + ", ".join(bad))
    if at_edge:
        # at the edge the gradient swings along the top eigenvector, so β_eff ≈ λmax ≈ 2/η
        q = {n: m[n]["beta_late"] / edge for n in at_edge}
        same = all(0.7 <= v <= 1.4 for v in q.values())
        parts.append("at the edge, Santurkar et al.'s effective β-smoothness "
                     + ("is set by η, not by the normalization" if same else "varies")
                     + ": β_eff/(2/η) = " + ", ".join(f"{n} {v:.2f}" for n, v in q.items()))
    if "none" in ok and len(ok) > 1:
        base = m["none"]

        def ratio(n: str, key: str) -> str:
            return f"×{m[n][key] / base[key]:.2g}" if base[key] > 0 else "—"

        cmp = [f"{n} loss range {ratio(n, 'loss_range_early')}, ‖Δ∇L‖ "
               f"{ratio(n, 'grad_change_early')}, β_eff {ratio(n, 'beta_early')}"
               for n in ok if n != "none"]
        parts.append("in the first half of training (medians), relative to no normalization: "
                     + "; ".join(cmp))
    zs = [(n, m[n]["final"]["trace_z"]) for n in ok if "trace_z" in m[n].get("final", {})]
    if zs:
        parts.append("Hutchinson trace vs exact: "
                     + ", ".join(f"{n} {m[n]['final']['trace']:.3g} vs "
                                 f"{t[n]['final']['trace']:.3g} ({z:+.1f} SE)" for n, z in zs))
    return "; ".join(parts) + "."


@register_plotter("landscape")
def _plot(r: Any) -> Any:
    m = r.measured
    norms = [n for n in NORMS if n in m]
    col = colors(NORMS)
    edge = m["edge_of_stability"]
    fig, ax = figure(4, title=f"loss landscape and sharpness, full-batch GD η={r.params['lr']:g}")
    for n in norms:
        c = m[n]["curves"]
        ax[0].plot(c["step"], c["sharpness"], "o-", ms=3, color=col[n], label=n)
        ax[1].semilogy(c["step"], np.maximum(c["loss_range"], 1e-300), color=col[n], label=n)
        ax[2].semilogy(c["step"], np.maximum(c["beta"], 1e-300), color=col[n], label=n)
        f = m[n].get("final")
        if f is not None:
            ax[3].semilogy(f["density_grid"], np.maximum(f["density"], 1e-8), color=col[n], label=n)
    ax[0].axhline(edge, color="k", ls="--", lw=1, label="2/η")
    ax[0].set(xlabel="GD step", ylabel="λmax of ∇²L (eigsh)")
    ax[1].set(xlabel="GD step", ylabel="loss range along −∇L")
    ax[2].set(xlabel="GD step", ylabel="effective β-smoothness")
    ax[3].set(xlabel="Hessian eigenvalue (end)", ylabel="SLQ density", ylim=(1e-6, None))
    for a in ax:
        a.legend(fontsize=7)
    return fig
