"""Mean-field signal propagation: the order-to-chaos theory of Poole et al. (2016) and
Schoenholz et al. (2017), computed with SciPy, beside the same quantities measured on
random networks built with :func:`arraynorm.nn.deep_stack`.

A stack of blocks h^ℓ = W^ℓ x^{ℓ−1} + b^ℓ, x^ℓ = φ(h^ℓ) with W ~ N(0, σ_w²/N), b ~ N(0, σ_b²)
has at large width N pre-activations whose second moment q_ℓ = ‖h^ℓ‖²/N and correlation
c_ℓ = ⟨h_a^ℓ, h_b^ℓ⟩/(‖h_a^ℓ‖‖h_b^ℓ‖) between two inputs follow deterministic maps

    q_{ℓ+1} = σ_w² ∫ φ(√q_ℓ z)² Dz + σ_b²,
    c_{ℓ+1} = (σ_w² ∫∫ φ(u₁)φ(u₂) Dz₁Dz₂ + σ_b²) / q_{ℓ+1},

and backpropagated gradients δ^ℓ = ∂L/∂h^ℓ shrink or grow by χ(q_ℓ) = σ_w² ∫ φ'(√q_ℓ z)² Dz
per layer (‖δ^ℓ‖² = χ ‖δ^{ℓ+1}‖²). At the fixed point q* the slope χ₁ = χ(q*) separates the
ordered phase (χ₁ < 1: c → c* = 1, gradients vanish) from the chaotic one (χ₁ > 1: c → c* < 1,
gradients explode); correlations approach c* over ξ_c = −1/log χ_c layers and q approaches q*
over ξ_q = −1/log χ_q, and ξ_c diverges on the critical line χ₁ = 1 — the depth to which a
network can be trained (Schoenholz et al.). Theory: :mod:`analysis._meanfield` (q*, c*, χ₁,
χ_q, χ_c, ξ_q, ξ_c, the critical line with ``scipy.optimize.brentq``, χ₁ on a grid for the
phase diagram), for tanh, ReLU, hard-tanh, GELU (tanh form, as arraynorm computes it) and the
identity.

Measured, for each configuration ``activation:σ_w²:σ_b²[:norm]`` (σ_w² may be ``crit``, the
critical line at that σ_b²): a batch of inputs with ‖x‖²/N = q_in and pairwise correlation
c_in exactly is sent through ``deep_stack(depth, width, activation, init="gaussian",
sigma_w=σ_w, sigma_b=σ_b, norm=…)``; at every block the Linear output h^ℓ gives q_ℓ (mean
over units and inputs) and c_ℓ (mean over pairs of inputs), and the exact backward of a
standard normal cotangent gives ‖∂L/∂h^ℓ‖², whose ratio between consecutive layers is the
gradient factor (theory χ(q_ℓ)). Beside the theory's per-layer curves (iterated from the same
q_in, c_in) stand their averages over the second half of the layers, measured and predicted
(``q_tail``, ``c_tail``, ``grad_factor_tail``, with the standard error over independent
networks: the finite-width error), the fixed points and slopes (q*, c*, χ₁, χ_q, χ_c) and the
depth scales: ξ_c (ξ_q) fitted to the slope of log|c_ℓ − c*| (log|q_ℓ − q*|) over the layers
where it stands above that error, beside the same fit of the theory curve and −1/log χ_c.

Normalization changes the maps. LayerNorm (or RMSNorm) before φ feeds φ inputs of second moment
1 whatever q_ℓ is: q_{ℓ+1} = V(1) from the second block on, c_{ℓ+1} = C(c_ℓ; 1), and the
gradient through LN is divided by the std of h^ℓ, so the factor is χ(1)/V(1) — a mean-field
theory this study derives and checks (:func:`analysis._meanfield.trajectory` with
``norm="layer"``). Batch normalization couples the inputs; it is shown measured, beside the
unnormalized theory (its mean-field theory is Yang et al. 2019, studied in ``gradient-flow``).

References: B. Poole, S. Lahiri, M. Raghu, J. Sohl-Dickstein, S. Ganguli, "Exponential
expressivity in deep neural networks through transient chaos", NeurIPS 2016; S. S. Schoenholz,
J. Gilmer, S. Ganguli, J. Sohl-Dickstein, "Deep information propagation", ICLR 2017;
Y. Cho, L. K. Saul, "Kernel methods for deep learning", NeurIPS 2009 (the ReLU arc-cosine
correlation map).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

import arraynorm as an

from . import _meanfield as mf
from ._backend import Backend, point_rng
from ._fit import fit_growth
from ._plot import colors, figure
from ._result import register_plotter
from ._study import Context, Outcome, study

__all__ = ["mean_field", "parse_config", "NORMS", "DEFAULT_CONFIGS", "REPORT_CONFIGS"]

#: normalizations a configuration may name (LN and RMS have a mean-field theory here)
NORMS = ("none", "layer", "rms", "batch")
_NORM_LABEL = {"none": "", "layer": " +LN", "rms": " +RMS", "batch": " +BN"}

#: ordered, critical and chaotic tanh; He-initialized ReLU; chaotic hard-tanh; ordered GELU;
#: tanh under LN (which turns it chaotic) and ReLU under BN; the full run adds ordered ReLU,
#: the identity (exact maps) and chaotic tanh under LN and BN
REPORT_CONFIGS = ("tanh:1.0:0.05", "tanh:crit:0.05", "tanh:3.0:0.05", "relu:2.0:0.0",
                  "hardtanh:2.5:0.05", "gelu:1.5:0.05", "tanh:1.0:0.05:layer", "relu:2.0:0.0:batch")
DEFAULT_CONFIGS = REPORT_CONFIGS + ("relu:1.5:0.05", "identity:0.8:0.05", "tanh:3.0:0.05:layer",
                                    "tanh:3.0:0.05:batch")


def parse_config(text: str) -> dict[str, Any]:
    """``"activation:sigma_w2:sigma_b2[:norm]"`` → its fields; ``sigma_w2`` may be ``crit``
    (the order-to-chaos critical line at that σ_b², see :func:`mean_field`)."""
    fname = "mean_field"
    parts = str(text).split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"{fname}: a config is 'activation:sigma_w2:sigma_b2[:norm]', got {text!r}")
    act, sw, sb = parts[:3]
    norm = parts[3] if len(parts) == 4 else "none"
    if act not in mf.ACTIVATIONS:
        raise ValueError(f"{fname}: config {text!r}: activation must be one of "
                         f"{tuple(mf.ACTIVATIONS)}, got {act!r}")
    if norm not in NORMS:
        raise ValueError(f"{fname}: config {text!r}: norm must be one of {NORMS}, got {norm!r}")
    try:
        sb2 = float(sb)
        sw2 = mf.critical_sigma_w2(act, sb2) if sw == "crit" and sb2 >= 0 else float(sw)
    except ValueError:
        raise ValueError(f"{fname}: config {text!r}: sigma_w2 must be a number or 'crit' and "
                         f"sigma_b2 a number") from None
    if not (math.isfinite(sw2) and sw2 > 0 and math.isfinite(sb2) and sb2 >= 0):
        why = (f"{act} has no critical point with a stable q* at sigma_b2={sb2}"
               if sw == "crit" else "need sigma_w2 > 0 and sigma_b2 >= 0")
        raise ValueError(f"{fname}: config {text!r}: {why}")
    label = f"{act} σw²={sw2:.4g} σb²={sb2:.4g}{_NORM_LABEL[norm]}"
    return dict(activation=act, sigma_w2=sw2, sigma_b2=sb2, norm=norm, label=label,
                critical=sw == "crit")


def _inputs(rng: np.random.Generator, batch: int, width: int, q_in: float, c_in: float) -> np.ndarray:
    """``batch`` inputs of width ``width`` with ‖x‖²/N = q_in and every pairwise correlation
    exactly c_in: x = √(q_in N) L Qᵀ, Q orthonormal (N × batch), L Lᵀ = (1−c)I + c 11ᵀ."""
    gram = (1.0 - c_in) * np.eye(batch) + c_in * np.ones((batch, batch))
    q, _ = np.linalg.qr(rng.standard_normal((width, batch)))
    return math.sqrt(q_in * width) * np.linalg.cholesky(gram) @ q.T


def _simulate(*, activation: str, sigma_w2: float, sigma_b2: float, norm: str, label: str,
              depth: int, width: int, batch: int, q_in: float, c_in: float, rep: int,
              backend: str, dtype: str, seed: int) -> dict[str, list[float]]:
    """One random network: per block, q and mean pairwise c of the Linear output h^ℓ, and
    ‖∂L/∂h^ℓ‖² for a standard normal cotangent at the output (exact backward)."""
    b = Backend(backend, dtype)
    xp = b.xp
    rng = point_rng(seed, "mean-field", label, rep)
    model = an.nn.deep_stack(depth, width, activation=activation, norm=norm, init="gaussian",
                             sigma_w=math.sqrt(sigma_w2), sigma_b=math.sqrt(sigma_b2),
                             bias=sigma_b2 > 0, rng=rng, xp=xp, dtype=b.dtype)
    h = b.asarray(_inputs(rng, batch, width, q_in, c_in))
    q, c = [], []
    iu = np.triu_indices(batch, 1)
    blocks = [list(block) for block in model]   # each block: Linear, [norm], φ
    for linear, *rest in blocks:
        h = linear.forward(h)
        gram = b.to_numpy(h @ h.T)
        d = np.sqrt(np.diag(gram))
        q.append(float(np.trace(gram)) / (batch * width))
        c.append(float(np.mean((gram / np.outer(d, d))[iu])))
        for layer in rest:
            h = layer.forward(h)
    dy = b.asarray(rng.standard_normal((batch, width)))
    grad_sq = []
    for linear, *rest in reversed(blocks):
        for layer in reversed(rest):
            dy = layer.backward(dy)
        # ‖∂L/∂h^ℓ‖², reduced per input on the backend (a 0-d NumPy result is a scalar,
        # which the host copy does not take)
        grad_sq.append(float(np.sum(b.to_numpy(xp.sum(dy * dy, axis=1)))))
        dy = linear.backward(dy)
    return {"q": q, "c": c, "grad_sq": grad_sq[::-1]}


def _theory(*, activation: str, sigma_w2: float, sigma_b2: float, norm: str, depth: int,
            q_in: float, c_in: float) -> dict[str, Any]:
    """Fixed points, slopes, depth scales and per-layer curves of one configuration: the
    unnormalized network's, LN's (norm "layer"/"rms"), and for BN the length only — BN too
    feeds φ inputs of second moment 1 (each unit standardized over the batch), so
    q_ℓ ≈ V(1) from the second block on; its correlations and gradients have no theory here."""
    def full(kind: str) -> dict[str, Any]:
        fp = mf.fixed_point(activation, sigma_w2, sigma_b2, q_in, c_in, norm=kind)
        tr = mf.trajectory(activation, sigma_w2, sigma_b2, q_in, c_in, depth, norm=kind)
        return {**fp, **{k: v.tolist() for k, v in tr.items()}}

    out = {"none": full("none")}
    if norm in ("layer", "rms"):
        out[norm] = full(norm)
    elif norm == "batch":
        q = mf.trajectory(activation, sigma_w2, sigma_b2, q_in, c_in, depth, norm="layer")["q"]
        out[norm] = {"q": q.tolist(), "q_star": float(mf.length_map(activation, 1.0, sigma_w2, sigma_b2))}
    return out


def _phase(*, activation: str, sigma_w2: list[float], sigma_b2: list[float], q_in: float) -> dict[str, Any]:
    g = mf.chi1_grid(activation, sigma_w2, sigma_b2, q_in)
    return {"chi1": g["chi1"].tolist(), "q_star": g["q_star"].tolist()}


def _critical(*, activation: str, sigma_b2: list[float]) -> list[float]:
    return mf.critical_line(activation, sigma_b2).tolist()


# ------------------------------------------------------------------------------- the study
@study("mean-field",
       quick=dict(configs=("tanh:1.0:0.05", "tanh:3.0:0.05", "relu:2.0:0.0",
                           "tanh:1.0:0.05:layer", "relu:2.0:0.0:batch"),
                  depth=12, width=128, batch=8, seeds=2, grid=9, critical_points=6),
       report=dict(configs=REPORT_CONFIGS, depth=40, width=512, batch=16, seeds=3, grid=41))
def mean_field(ctx: Context, *, configs: tuple[str, ...] = DEFAULT_CONFIGS, depth: int = 60,
               width: int = 512, batch: int = 16, seeds: int = 4, q_in: float = 1.0,
               c_in: float = 0.5, activations: tuple[str, ...] = tuple(mf.ACTIVATIONS),
               phase_activation: str = "tanh", sigma_w2_range: tuple[float, ...] = (0.25, 4.0),
               sigma_b2_range: tuple[float, ...] = (0.0, 0.5), grid: int = 61,
               critical_points: int = 26) -> Outcome:
    """Mean-field signal propagation: q*, c*, χ₁, depth scales and the order-to-chaos line, measured.

    Parameters
    ----------
    configs : networks to simulate, ``"activation:sigma_w2:sigma_b2[:norm]"`` with activation
        among tanh, relu, hardtanh, gelu, identity, sigma_w2 a number or ``crit`` (on the
        critical line at that sigma_b2), norm among none (default), layer, rms, batch.
    depth, width : blocks and units of each ``deep_stack``.
    batch : inputs sent through together (pairs of them give c; BN normalizes over them).
    seeds : independent networks per configuration (their spread is the finite-width error).
    q_in, c_in : second moment ‖x‖²/N and pairwise correlation of the inputs.
    activations : activations whose critical lines the phase diagram draws.
    phase_activation : the activation whose χ₁ contours fill the phase diagram.
    sigma_w2_range, sigma_b2_range : the phase diagram's axes (lo, hi).
    grid : points per axis of the χ₁ grid.
    critical_points : σ_b² values at which each critical line is solved.
    """
    fname = "mean_field"
    cfgs = [parse_config(t) for t in configs]
    if not cfgs:
        raise ValueError(f"{fname}: configs must name at least one network")
    labels = [c["label"] for c in cfgs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{fname}: configs repeat a network: {labels}")
    for name, act in [("phase_activation", phase_activation), *(("activations", a) for a in activations)]:
        if act not in mf.ACTIVATIONS:
            raise ValueError(f"{fname}: {name} must be among {tuple(mf.ACTIVATIONS)}, got {act!r}")
    if depth < 4 or width < 2 or seeds < 2 or not 2 <= batch <= width:
        raise ValueError(f"{fname}: need depth >= 4, width >= 2, seeds >= 2 (the error estimate) "
                         f"and 2 <= batch <= width, got depth={depth}, width={width}, "
                         f"seeds={seeds}, batch={batch}")
    if not (q_in > 0 and -1.0 / (batch - 1) < c_in < 1.0):
        raise ValueError(f"{fname}: need q_in > 0 and -1/(batch-1) < c_in < 1 (a valid Gram "
                         f"matrix), got q_in={q_in}, c_in={c_in}")
    for name, rng_ in (("sigma_w2_range", sigma_w2_range), ("sigma_b2_range", sigma_b2_range)):
        if len(rng_) != 2 or not 0 <= rng_[0] < rng_[1]:
            raise ValueError(f"{fname}: {name} must be (lo, hi) with 0 <= lo < hi, got {rng_}")
    if grid < 3 or critical_points < 2:
        raise ValueError(f"{fname}: need grid >= 3 and critical_points >= 2, got {grid}, {critical_points}")

    common = dict(depth=depth, q_in=q_in, c_in=c_in)
    keys = ("activation", "sigma_w2", "sigma_b2", "norm")
    theories = ctx.map(_theory, [dict(**{k: c[k] for k in keys}, **common) for c in cfgs],
                       desc="mean-field theory")
    sim_points = [dict(**{k: c[k] for k in keys}, label=c["label"], width=width, batch=batch,
                       rep=r, **common, **ctx.point_options())
                  for c in cfgs for r in range(seeds)]
    runs = ctx.map(_simulate, sim_points, desc="mean-field networks")
    w_axis = np.linspace(max(sigma_w2_range[0], 1e-3), sigma_w2_range[1], grid)
    b_axis = np.linspace(sigma_b2_range[0], sigma_b2_range[1], grid)
    b_line = np.linspace(sigma_b2_range[0], sigma_b2_range[1], critical_points)
    phase = ctx.map(_phase, [dict(activation=phase_activation, sigma_w2=w_axis.tolist(),
                                  sigma_b2=b_axis.tolist(), q_in=q_in)])[0]
    lines = ctx.map(_critical, [dict(activation=a, sigma_b2=b_line.tolist()) for a in activations])

    tail = _tail(depth)
    measured: dict[str, Any] = {"layers": list(range(1, depth + 1)), "width": width,
                                "tail_layers": [tail.start + 1, depth], "configs": {}}
    theory: dict[str, Any] = {"configs": {},
                              "phase": {"activation": phase_activation, "sigma_w2": w_axis,
                                        "sigma_b2": b_axis, **phase},
                              "critical_line": {"sigma_b2": b_line, **dict(zip(activations, lines))}}
    table = []
    for i, (cfg, th) in enumerate(zip(cfgs, theories)):
        label = cfg["label"]
        m = _summarize(runs[i * seeds:(i + 1) * seeds])
        plain = _with_tails(th["none"])
        t = _with_tails(th[cfg["norm"]]) if cfg["norm"] in th else None   # this network's theory
        fits_m, fits_t = _depth_scales(m, t, runs[i * seeds:(i + 1) * seeds])
        m.update(fits_m)
        if t:
            t.update(fits_t)
        m.update(activation=cfg["activation"], sigma_w2=cfg["sigma_w2"], sigma_b2=cfg["sigma_b2"],
                 norm=cfg["norm"], critical=cfg["critical"])
        measured["configs"][label] = m
        entry = dict(t) if t else {}
        if cfg["norm"] != "none":
            entry["unnormalized"] = plain
        theory["configs"][label] = entry
        row = {"network": label, "χ₁": _get(t, "chi1"), "grad factor": m["grad_factor_tail"],
               "± se": m["grad_factor_tail_se"], "q*": _get(t, "q_star"), "q": m["q_tail"],
               "q theory": _get(t, "q_tail"), "c*": _get(t, "c_star"), "c": m["c_tail"],
               "c theory": _get(t, "c_tail"), "ξ_c": _get(t, "xi_c"), "ξ_c fit": m["xi_c_fit"],
               "ξ_c fit theory": _get(t, "xi_c_fit")}
        if cfg["norm"] != "none":
            row["χ₁ unnorm."] = plain["chi1"]
        table.append(row)
    verdict = _verdict(cfgs, measured, theory, phase_activation)
    return Outcome(measured, theory, verdict, table)


def _get(d: dict[str, Any] | None, key: str) -> Any:
    return None if d is None else d.get(key)


def _tail(depth: int) -> slice:
    """The layers after the transient: the second half."""
    return slice(depth // 2, depth)


def _summarize(runs: list[dict[str, list[float]]]) -> dict[str, Any]:
    """Per-layer means over the networks, and averages over the tail layers with their
    standard error over the networks (the finite-width error).

    The gradient factor is the arithmetic mean of the per-layer ratios r_ℓ = ‖δ^ℓ‖²/‖δ^{ℓ+1}‖²:
    mean-field theory predicts E r_ℓ = χ(q_ℓ), while the mean of log r_ℓ (the typical growth
    rate) falls below log χ by about Var(r_ℓ)/2, an O(1/width) effect (≈ −0.5% at width 512)."""
    q = np.array([r["q"] for r in runs])
    c = np.array([r["c"] for r in runs])
    g = np.array([r["grad_sq"] for r in runs])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = g[:, :-1] / g[:, 1:]                             # ‖δ^ℓ‖²/‖δ^{ℓ+1}‖²
    tail = _tail(q.shape[1])
    s = len(runs)

    def mean_se(per_seed: np.ndarray) -> tuple[float, float]:
        return float(per_seed.mean()), float(per_seed.std(ddof=1) / math.sqrt(s))

    def se(a: np.ndarray) -> np.ndarray:
        return a.std(axis=0, ddof=1) / math.sqrt(s)

    q_tail, q_se = mean_se(q[:, tail].mean(axis=1))
    c_tail, c_se = mean_se(c[:, tail].mean(axis=1))
    g_tail, g_se = mean_se(ratio[:, tail].mean(axis=1))
    return {"q": q.mean(axis=0), "c": c.mean(axis=0), "grad_factor": ratio.mean(axis=0),
            "q_se": se(q), "c_se": se(c), "grad_factor_se": se(ratio),
            "q_tail": q_tail, "q_tail_se": q_se, "c_tail": c_tail, "c_tail_se": c_se,
            "grad_factor_tail": g_tail, "grad_factor_tail_se": g_se}


def _with_tails(t: dict[str, Any]) -> dict[str, Any]:
    """A configuration's theory with its curves averaged over the same tail layers as the
    measurement (the like-for-like comparison where the fixed point is not yet reached)."""
    out = dict(t)
    for key in ("q", "c", "grad_factor"):
        if key in t:
            out[f"{key}_tail"] = float(np.mean(np.asarray(t[key], dtype=float)[_tail(len(t["q"]))]))
    return out


def _xi(slope: float) -> float:
    return -1.0 / slope if slope < 0 else math.inf


def _depth_scales(m: dict[str, Any], t: dict[str, Any] | None,
                  runs: list[dict[str, list[float]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measured ξ_q and ξ_c: −1/slope of log|q_ℓ − q*| and log|c_ℓ − c*| against ℓ (the mean
    curve over the networks), around the theory's fixed point (else the measured tail mean),
    over the layers where the distance stands above 3 standard errors of the measurement
    (beyond, finite-width noise dominates); for c only once q has settled (within 1% of q*),
    since c's map depends on q. The 95% interval is Student's over the slopes fitted to each
    network alone on the same layers (a curve's layers are correlated, so the least-squares
    interval of one curve would be too narrow). The theory curve is fitted over the same
    layers: the like-for-like value beside the asymptotic ξ = −1/log χ. Returns (measured
    entries, theory entries)."""
    meas: dict[str, Any] = {}
    theo: dict[str, Any] = {}
    t = t or {}
    layers = np.arange(1, len(m["q"]) + 1)
    q_curve = np.asarray(t.get("q", m["q"]), dtype=float)
    q_ref = t.get("q_star", m["q_tail"])
    settled = np.abs(q_curve / q_ref - 1.0) <= 0.01 if math.isfinite(q_ref) else np.ones(len(layers), bool)
    for key in ("q", "c"):
        ref = t.get(f"{key}_star", m[f"{key}_tail"])
        values, se = np.asarray(m[key], dtype=float), np.asarray(m[f"{key}_se"], dtype=float)
        start = 1 if key == "q" else max(1, int(np.argmax(settled)) if settled.any() else len(layers))
        stop = start
        while math.isfinite(ref) and stop < len(values) and abs(values[stop] - ref) > 3.0 * se[stop]:
            stop += 1
        xi, ci, theory_xi = math.nan, [math.nan, math.nan], math.nan
        if stop - start >= 3:
            w = slice(start, stop)
            xi = _xi(fit_growth(layers[w], np.abs(values[w] - ref)).slope)
            slopes = np.array([fit_growth(layers[w], np.abs(np.asarray(r[key])[w] - ref)).slope
                               for r in runs])
            slopes = slopes[np.isfinite(slopes)]
            if len(slopes) >= 2:
                half = stats.t.ppf(0.975, len(slopes) - 1) * slopes.std(ddof=1) / math.sqrt(len(slopes))
                ci = sorted(float(_xi(v)) for v in (slopes.mean() - half, slopes.mean() + half))
            if key in t:
                theory_xi = _xi(fit_growth(layers[w], np.abs(np.asarray(t[key], dtype=float)[w] - ref)).slope)
        meas[f"xi_{key}_fit"], meas[f"xi_{key}_fit_ci"] = xi, ci
        meas[f"xi_{key}_fit_layers"] = [start + 1, stop] if stop - start >= 3 else []
        if key in t:
            theo[f"xi_{key}_fit"] = theory_xi
    return meas, theo


def _phase_word(chi1: float) -> str:
    if not math.isfinite(chi1):
        return "unbounded"
    if abs(chi1 - 1.0) < 1e-6:
        return "critical"
    return "ordered" if chi1 < 1 else "chaotic"


def _verdict(cfgs: list[dict[str, Any]], measured: dict[str, Any], theory: dict[str, Any],
             phase_activation: str) -> str:
    mc, tc = measured["configs"], theory["configs"]
    parts = []
    plain = [c["label"] for c in cfgs if c["norm"] == "none" and math.isfinite(tc[c["label"]]["q_star"])]
    if plain:
        def z(k: str, key: str) -> float:   # |measured − theory| in standard errors
            return abs(mc[k][f"{key}_tail"] - tc[k][f"{key}_tail"]) / max(mc[k][f"{key}_tail_se"], 1e-300)

        zs = {key: max(z(k, key) for k in plain) for key in ("q", "c", "grad_factor")}
        agree = "matches" if max(zs.values()) <= 4 else "departs beyond the finite-width error from"
        parts.append(f"mean-field theory {agree} {len(plain)} unnormalized networks of width "
                     f"{measured['width']}: over layers {measured['tail_layers'][0]}–"
                     f"{measured['tail_layers'][1]} the measured q, c and gradient factor lie within "
                     f"{zs['q']:.1f}, {zs['c']:.1f} and {zs['grad_factor']:.1f} standard errors "
                     f"(over networks) of the theory curves")
        for k in plain:
            t, m = tc[k], mc[k]
            s = (f"{k}: {_phase_word(t['chi1'])}, gradients ×{m['grad_factor_tail']:.3f} per layer "
                 f"(χ₁ {t['chi1']:.3f}), c {m['c_tail']:.3f} (theory {t['c_tail']:.3f}, c* "
                 f"{t['c_star']:.3f})")
            if math.isfinite(m["xi_c_fit"]):
                s += (f", ξ_c fitted {m['xi_c_fit']:.1f} (theory curve {t['xi_c_fit']:.1f}; "
                      f"−1/log χ_c {t['xi_c']:.1f})")
            parts.append(s)
    crit = theory["critical_line"]
    if phase_activation in crit:
        b = np.asarray(crit["sigma_b2"], dtype=float)
        w = np.asarray(crit[phase_activation], dtype=float)
        parts.append(f"{phase_activation} order-to-chaos line σ_w²(σ_b²) from {w[0]:.3g} at "
                     f"σ_b² = {b[0]:.3g} to {w[-1]:.3g} at σ_b² = {b[-1]:.3g}")
    for c in cfgs:
        if c["norm"] == "none":
            continue
        k = c["label"]
        m, t, u = mc[k], tc[k], tc[k]["unnormalized"]
        name = {"layer": "LN", "rms": "RMSNorm", "batch": "BN"}[c["norm"]]
        s = (f"{name} on {c['activation']} σw²={c['sigma_w2']:.4g} σb²={c['sigma_b2']:.4g} "
             f"(unnormalized: {_phase_word(u['chi1'])}, χ₁ {u['chi1']:.3f}, q* {u['q_star']:.3g}): "
             f"q pinned at {m['q_tail']:.3g} (V(1) = {t['q_star']:.3g}), gradients "
             f"×{m['grad_factor_tail']:.3f} ± {m['grad_factor_tail_se']:.3f} per layer")
        if "chi1" in t:
            s += (f" ({name} theory χ(1)/V(1) = {t['chi1']:.3f}: {_phase_word(t['chi1'])}), c "
                  f"{m['c_tail']:.3f} ({name} theory {t['c_tail']:.3f}, c* {t['c_star']:.3f}; "
                  f"unnormalized {u['c_tail']:.3f})")
        else:
            s += f", c {m['c_tail']:.3f} (unnormalized theory {u['c_tail']:.3f})"
        parts.append(s)
    return "; ".join(parts) + "."


# ------------------------------------------------------------------------------- figure
@register_plotter("mean-field")
def _plot(r: Any) -> Any:
    m, t = r.measured, r.theory
    labels = list(m["configs"])
    col = colors(labels)
    fig, ax = figure(4, 2, width=4.0, height=3.3,
                     title=f"mean-field signal propagation (width {r.params['width']}, "
                           f"{r.params['seeds']} networks each)")
    _plot_phase(ax[0], t, m, col)
    layers = np.asarray(m["layers"])
    plain = [k for k in labels if m["configs"][k]["norm"] == "none"]
    normed = [k for k in labels if m["configs"][k]["norm"] != "none"]
    for row, keys in ((0, plain), (1, normed)):
        panels = dict(zip(("q", "c", "grad_factor"), ax[4 * row + 1:4 * row + 4]))
        for k in keys:
            mk, tk = m["configs"][k], t["configs"][k]
            for key, a in panels.items():
                x = layers[:-1] if key == "grad_factor" else layers
                draw = a.plot if key == "c" else a.semilogy
                draw(x, _arr(mk[key]), "o", color=col[k], ms=3, label=k)
                for th, style in ((tk, "-"), (tk.get("unnormalized"), ":")):
                    if th is not None and key in th:
                        draw(x, _arr(th[key]), style, color=col[k], lw=1)
        which = "unnormalized" if row == 0 else "normalized (dotted: unnormalized theory)"
        panels["q"].set(xlabel="layer ℓ", ylabel="q_ℓ", title=f"{which}: length q_ℓ (lines: theory)")
        panels["c"].set(xlabel="layer ℓ", ylabel="c_ℓ", title="correlation of two inputs c_ℓ")
        panels["grad_factor"].set(xlabel="layer ℓ", ylabel="‖δ_ℓ‖² / ‖δ_ℓ₊₁‖²",
                                  title="gradient factor per layer (theory χ(q_ℓ))")
        for a in panels.values():
            a.title.set_fontsize(8)
        if keys:
            panels["q"].legend(fontsize=5)
    _plot_depth_scale(ax[4], m, t, plain, col)
    return fig


def _arr(v: Any) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def _plot_phase(a: Any, t: dict[str, Any], m: dict[str, Any], col: dict[str, Any]) -> None:
    ph = t["phase"]
    w, b = np.asarray(ph["sigma_w2"], dtype=float), np.asarray(ph["sigma_b2"], dtype=float)
    chi1 = np.array([[np.nan if v is None else v for v in row] for row in ph["chi1"]], dtype=float)
    qs = np.array([[np.inf if v is None else v for v in row] for row in ph["q_star"]], dtype=float)
    chi1 = np.where(np.isfinite(qs), chi1, np.nan)      # q* = ∞: no fixed point to speak of
    from matplotlib.colors import TwoSlopeNorm

    levels = [0.25, 0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0]
    fill = np.clip(chi1, 0.05, 3.0)
    a.contourf(w, b, fill, levels=np.linspace(0.05, 3.0, 30), cmap="coolwarm", alpha=0.35,
               norm=TwoSlopeNorm(vcenter=1.0, vmin=0.05, vmax=3.0))
    cs = a.contour(w, b, chi1, levels=levels, colors="0.35", linewidths=0.5)
    a.clabel(cs, fontsize=6, fmt="%.2g")
    a.contour(w, b, chi1, levels=[1.0], colors="k", linewidths=1.6)
    lines = t["critical_line"]
    bl = np.asarray(lines["sigma_b2"], dtype=float)
    for act, ws in lines.items():
        if act == "sigma_b2":
            continue
        a.plot(_arr(ws), bl, "--", lw=1, label=f"{act} χ₁=1")
    for k, mk in m["configs"].items():
        if mk["activation"] == ph["activation"]:
            a.plot(mk["sigma_w2"], mk["sigma_b2"], "o" if mk["norm"] == "none" else "s",
                   color=col[k], ms=5, mec="k", mew=0.5)
    a.set(xlim=(w[0], w[-1]), ylim=(b[0], b[-1]), xlabel="σ_w²", ylabel="σ_b²",
          title=f"phase diagram: χ₁ contours ({ph['activation']}), critical lines")
    a.title.set_fontsize(8)
    a.legend(fontsize=6, loc="upper left")


def _plot_depth_scale(a: Any, m: dict[str, Any], t: dict[str, Any], keys: list[str],
                      col: dict[str, Any]) -> None:
    layers = np.asarray(m["layers"])
    for k in keys:
        mk, tk = m["configs"][k], t["configs"][k]
        if tk.get("c_star") is None or tk.get("xi_c") is None:
            continue
        cs = tk["c_star"]
        a.semilogy(layers, np.abs(_arr(mk["c"]) - cs), "o", color=col[k], ms=3)
        a.semilogy(layers, np.abs(_arr(tk["c"]) - cs), "-", color=col[k], lw=1)
    a.set(xlabel="layer ℓ", ylabel="|c_ℓ − c*|", title="approach of c to c* (slope −1/ξ_c)")
    a.title.set_fontsize(8)
