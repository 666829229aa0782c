"""Internal covariate shift, both ways the literature defines it, with and without batch
normalization and with "noisy" BN (Ioffe & Szegedy 2015; Santurkar et al. 2018).

A deep MLP (``deep_stack``: Linear → norm → φ blocks, a linear read-out) is trained by plain
mini-batch SGD θ ← θ − ηG on two interleaved spirals (cross-entropy), once per variant from
the same initial weights and the same mini-batches:

* ``none`` — no normalization; ``batch`` — BN before every activation; ``layer`` — LN;
* ``noisy_batch`` — BN followed by time-varying random noise (Santurkar et al. §2.1): each
  unit j is scaled and shifted, y_j ← s_j·BN(x)_j + m_j, with s_j ~ U(1, 1 + a) and
  m_j ~ U(−a, a) (a = ``noise``) drawn afresh at every step, so the distribution each
  layer sees keeps moving — deliberately injected covariate shift.

Every few steps, two measures of internal covariate shift (ICS):

1. **Distributional** (Ioffe & Szegedy's notion): the drift of each layer's pre-activation
   distribution (the input of φ in block ℓ) on a fixed probe set — the whole data set, in
   train mode — caused by one update. With per-unit means μⱼ and standard deviations σⱼ before
   and after the step, the drift is the root-mean-square over units of the 2-Wasserstein
   distance between the Gaussian fits, √(meanⱼ[(Δμⱼ)² + (Δσⱼ)²]), reported relative to the
   layer's scale √(meanⱼ[μⱼ² + σⱼ²]). For noisy BN the redrawn noise alone moves it by
   √(5a²/6)/√(1 + a + 2a²/3) (γ = 1, β = 0, many units): the theory column of its drift.
2. **Gradient-based** (Santurkar et al. Definition 2.1): with G_ℓ the gradient of layer ℓ's
   weight at step t on the step's batch, and G'_ℓ the same gradient after only the
   preceding layers (blocks < ℓ, their Linear and normalization parameters) take their SGD
   step −ηG, on the same batch (and the same noise),

       ICS_ℓ = ‖G_ℓ − G'_ℓ‖₂,   also ‖G_ℓ − G'_ℓ‖/‖G_ℓ‖ and cos∠(G_ℓ, G'_ℓ).

   To first order in η, G'_ℓ − G_ℓ = −η [H G_{<ℓ}]_ℓ: the block (ℓ, <ℓ) of the batch loss's
   Hessian applied to the preceding layers' gradient. That product (one Hessian–vector
   product of :mod:`._hessian` per layer) is the theory column of ``gradient_ics``: a
   Taylor expansion, so measured/theory → 1 as η → 0.

Ioffe & Szegedy motivated BN by a reduction of (1); Santurkar et al. found that BN does not
reduce (2) — in their VGG and deep linear networks ICS by (2) was as large or larger with BN —
and that noisy BN, whose distributions are less stable than the plain network's, still trains
as well as BN. The study reports the final training loss and accuracy beside both measures.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import arraynorm as an
from arraynorm._array_api import xp_from_host

from ._backend import Backend, point_rng
from ._hessian import ModelLoss, hessian_operator, parameter_layout, set_flat
from ._plot import colors, figure
from ._result import register_plotter
from ._study import Context, Outcome, check_choices, study
from ._training import diverging, make_task, mean_over_seeds, spirals_data

__all__ = ["covariate_shift", "VARIANTS", "NoisyAffine", "gradient_ics", "preactivation_drift",
           "noise_drift"]

VARIANTS = ("none", "batch", "noisy_batch", "layer")


class NoisyAffine(an.nn.Module):
    """y = s ⊙ x + m with per-feature s, m fixed between draws (:meth:`use`,
    :meth:`resample`; no parameters): Santurkar et al.'s noise after BN. ∂L/∂x = s ⊙ ∂L/∂y.
    Identity before the first draw; in eval mode y = E[s]·x = (1 + a/2)·x."""

    def __init__(self, width: int, noise: float, *, xp: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.width, self.noise, self.xp, self.dtype = int(width), float(noise), xp, dtype
        self.scale: Any = None
        self.shift: Any = None

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A scale s ~ U(1, 1 + a) and a shift m ~ U(−a, a) per feature, (1, width) each."""
        a = self.noise
        return rng.uniform(1.0, 1.0 + a, (1, self.width)), rng.uniform(-a, a, (1, self.width))

    def use(self, noise: tuple[np.ndarray, np.ndarray]) -> None:
        """Apply the draw ``(s, m)`` from now on."""
        self.scale = xp_from_host(noise[0], self.xp, dtype=self.dtype)
        self.shift = xp_from_host(noise[1], self.xp, dtype=self.dtype)

    def resample(self, rng: np.random.Generator) -> None:
        """A new draw, applied from now on."""
        self.use(self.draw(rng))

    def forward(self, x: Any) -> Any:
        if self.scale is None:
            self._save(scale=None)
            return x
        # eval mode: the noise replaced by its expectation (s = 1 + a/2, m = 0), as dropout
        # is replaced by its mean at inference
        scale = self.scale if self.training else 1.0 + self.noise / 2
        self._save(scale=scale)
        return x * scale + self.shift if self.training else x * scale

    def backward(self, dy: Any) -> Any:
        scale = self._saved()["scale"]
        return dy if scale is None else dy * scale


def noise_drift(a: float) -> float:
    """The relative one-step drift that noisy BN's redrawn noise alone causes, for γ = 1,
    β = 0 and many units: the unit's mean s·β + m and standard deviation s·γ move by
    Δm and Δs·γ, with E(Δm)² = 2 Var m = 2a²/3 and E(Δs)² = 2 Var s = a²/6, against a scale
    E[m²] + E[s²] = a²/3 + 1 + a + a²/3, so the drift is √(5a²/6) / √(1 + a + 2a²/3)."""
    return float(np.sqrt(5 * a * a / 6) / np.sqrt(1 + a + 2 * a * a / 3))


def _norm(variant: str, noise: float, b: Backend) -> Any:
    if variant == "noisy_batch":
        return lambda w: an.nn.Sequential(an.nn.BatchNorm(w, xp=b.xp, dtype=b.dtype),
                                          NoisyAffine(w, noise, xp=b.xp, dtype=b.dtype))
    return variant


def layer_weight_slices(model: Any) -> list[tuple[int, slice]]:
    """``(block index, slice of its Linear weight in the flat parameters)`` per block of a
    ``deep_stack`` (hidden blocks ``"i.0.weight"``, the read-out ``"L.weight"``)."""
    out = []
    for name, _, start, stop in parameter_layout(model):
        parts = name.split(".")
        if parts[-1] == "weight" and (len(parts) == 2 or (len(parts) == 3 and parts[1] == "0")):
            out.append((int(parts[0]), slice(start, stop)))
    return out


def block_of(model: Any) -> np.ndarray:
    """The block index of every flat parameter."""
    layout = parameter_layout(model)
    blocks = np.empty(layout[-1][3] if layout else 0, dtype=np.int64)
    for name, _, start, stop in layout:
        blocks[start:stop] = int(name.split(".")[0])
    return blocks


def gradient_ics(f: ModelLoss, theta: np.ndarray, grad: np.ndarray, lr: float,
                 layers: list[tuple[int, slice]], blocks: np.ndarray,
                 hessian: Any = None) -> dict[str, list[float]]:
    """Santurkar et al.'s ICS of every layer (but the first, which has no preceding layer):
    ‖G_ℓ − G'_ℓ‖, the relative change, the cosine, and, when ``hessian`` (the batch loss's
    Hessian operator at θ) is given, the first-order prediction η‖[H G_{<ℓ}]_ℓ‖."""
    out: dict[str, list[float]] = {"ics": [], "relative": [], "cosine": [], "first_order": []}
    for block, sl in layers:
        before = blocks < block
        if not before.any():
            continue
        step = np.where(before, grad, 0.0)
        g_after = f(theta - lr * step)[sl]
        g0 = grad[sl]
        d = float(np.linalg.norm(g_after - g0))
        n0, n1 = float(np.linalg.norm(g0)), float(np.linalg.norm(g_after))
        out["ics"].append(d)
        out["relative"].append(d / n0 if n0 > 0 else float("nan"))
        out["cosine"].append(float(g0 @ g_after) / (n0 * n1) if n0 * n1 > 0 else float("nan"))
        if hessian is not None:
            out["first_order"].append(lr * float(np.linalg.norm((hessian @ step)[sl])))
    return out


def _preactivation_stats(model: Any, x: Any, b: Backend) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per block, the per-unit mean and standard deviation of the input of φ on ``x``."""
    out = []
    h = x
    for block in model:
        if isinstance(block, an.nn.Sequential):
            *pre, act = list(block)
            for layer in pre:
                h = layer.forward(h)
            z = b.to_numpy(h)
            out.append((z.mean(axis=0), z.std(axis=0)))
            h = act.forward(h)
        else:
            h = block.forward(h)
    return out


def preactivation_drift(before: list[tuple[np.ndarray, np.ndarray]],
                        after: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[float], list[float]]:
    """Per layer, √(meanⱼ[(Δμⱼ)² + (Δσⱼ)²]) and the same divided by √(meanⱼ[μⱼ² + σⱼ²])."""
    absolute, relative = [], []
    for (m0, s0), (m1, s1) in zip(before, after):
        d = float(np.sqrt(np.mean((m1 - m0) ** 2 + (s1 - s0) ** 2)))
        scale = float(np.sqrt(np.mean(m0 ** 2 + s0 ** 2)))
        absolute.append(d)
        relative.append(d / scale if scale > 0 else float("nan"))
    return absolute, relative


def _run(*, variant: str, rep: int, depth: int, width: int, samples: int, batch: int,
         activation: str, lr: float, steps: int, measurements: int, noise: float,
         first_order: bool, backend: str, dtype: str, seed: int) -> dict[str, Any]:
    """One variant: SGD with both ICS measures taken along the way."""
    b = Backend(backend, dtype)
    xh, yh = spirals_data(seed, rep, samples)
    model, loss, x_all, y_all = make_task(b, seed=seed, rep=rep, samples=samples, depth=depth,
                                          width=width, norm=_norm(variant, noise, b),
                                          activation=activation, loss="cross_entropy")
    noisy = [m for _, m in model.named_modules() if isinstance(m, NoisyAffine)]
    noise_rng = point_rng(seed, "covariate-shift", variant, rep, "noise")
    order = point_rng(seed, "covariate-shift", rep, "batches")  # the same for every variant
    f = ModelLoss(model, loss, x_all, y_all, b)
    theta = f.theta0.copy()
    layers, blocks = layer_weight_slices(model), block_of(model)
    at = set(np.unique(np.linspace(0, steps - 1, measurements).round().astype(int)).tolist())

    pilot = point_rng(seed, "covariate-shift", variant, rep, "pilot")

    def draw_noise() -> list[tuple[np.ndarray, np.ndarray]]:
        return [m.draw(noise_rng) for m in noisy]

    def use_noise(draw: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for m, d in zip(noisy, draw):
            m.use(d)

    rec: dict[str, list[Any]] = {k: [] for k in ("step", "drift", "drift_relative", "ics",
                                                 "ics_relative", "ics_cosine", "ics_first_order")}
    losses = np.empty(steps)
    nxt = draw_noise()
    with np.errstate(all="ignore"):
        for s in range(steps):
            cur, nxt = nxt, draw_noise()
            use_noise(cur)
            idx = order.integers(0, samples, batch)
            f.x, f.target = b.asarray(xh[idx]), b.xp.asarray(yh[idx].astype(np.int64))
            value, g = f.value_and_grad(theta)
            losses[s] = value
            if diverging(value, losses[0]):
                losses[s:] = np.inf
                break
            new = theta - lr * g
            if s in at:
                saved = model.state_dict()  # the extra passes must not move BN's running stats
                set_flat(model, theta, b)
                before = _preactivation_stats(model, x_all, b)
                hess = hessian_operator(f, theta, dtype=dtype, rng=pilot) if first_order else None
                ics = gradient_ics(f, theta, g, lr, layers, blocks, hess)
                use_noise(nxt)
                set_flat(model, new, b)
                after = _preactivation_stats(model, x_all, b)
                model.load_state_dict(saved)
                use_noise(cur)
                absolute, relative = preactivation_drift(before, after)
                rec["step"].append(s)
                rec["drift"].append(absolute)
                rec["drift_relative"].append(relative)
                rec["ics"].append(ics["ics"])
                rec["ics_relative"].append(ics["relative"])
                rec["ics_cosine"].append(ics["cosine"])
                rec["ics_first_order"].append(ics["first_order"])
            theta = new
    # evaluation on the whole data set in eval mode (running statistics, no noise)
    set_flat(model, theta, b)
    model.eval().requires_grad_(False)
    logits = b.to_numpy(model.forward(x_all))
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return {"record": rec, "losses": losses,
            "diverged": not bool(np.all(np.isfinite(losses))),
            "eval_loss": float(-np.mean(logp[np.arange(samples), yh])),
            "eval_accuracy": float(np.mean(np.argmax(logits, axis=1) == yh)),
            "layers": [blk for blk, _ in layers if blk > 0]}


@study("covariate-shift",
       quick=dict(depth=3, width=8, samples=128, batch=32, steps=40, measurements=4),
       report=dict(depth=5, width=16, samples=256, batch=64, steps=300, measurements=12, seeds=2))
def covariate_shift(ctx: Context, *, variants: tuple[str, ...] = ("none", "batch", "noisy_batch"),
                    depth: int = 6, width: int = 32, samples: int = 512, batch: int = 64,
                    activation: str = "relu", lr: float = 0.1, steps: int = 600,
                    measurements: int = 20, noise: float = 1.0, first_order: bool = True,
                    seeds: int = 1) -> Outcome:
    """Internal covariate shift by pre-activation drift and by Santurkar et al.'s gradient definition, with/without BN and with noisy BN.

    Parameters
    ----------
    variants : among "none", "batch", "noisy_batch" (BN + time-varying noise), "layer".
    depth, width : hidden blocks and their units (2-D inputs, 2 classes).
    samples : points of the spirals data set (also the probe set of the drift).
    batch : mini-batch size of SGD.
    activation : "relu" (default), "tanh", …
    lr : SGD step η (no momentum: the update of a layer is exactly −ηG).
    steps : SGD steps.
    measurements : steps (evenly spaced) at which both measures are taken.
    noise : a, the noisy BN's scale s ~ U(1, 1 + a) and shift m ~ U(−a, a).
    first_order : also compute the first-order prediction η‖[H G_{<ℓ}]_ℓ‖ (one Hessian–vector
        product per layer).
    seeds : independent repetitions (data, initial weights, batches, noise); every reported
        number is their mean (scalars of each repetition under ``per_seed``).
    """
    fname = "covariate-shift"
    variants = check_choices(fname, "variants", variants, VARIANTS)
    if depth < 2 or width < 2 or samples < 4 or not 2 <= batch <= samples or steps < 1 \
            or measurements < 1:
        raise ValueError(f"{fname}: need depth >= 2, width >= 2, samples >= 4, 2 <= batch <= "
                         f"samples, steps >= 1 and measurements >= 1, got depth={depth}, "
                         f"width={width}, samples={samples}, batch={batch}, steps={steps}, "
                         f"measurements={measurements}")
    if not lr > 0 or not noise >= 0:
        raise ValueError(f"{fname}: lr must be positive and noise >= 0, got lr={lr}, noise={noise}")
    if seeds < 1:
        raise ValueError(f"{fname}: seeds must be >= 1, got {seeds}")
    points = [dict(variant=v, rep=rep, depth=depth, width=width, samples=samples, batch=batch,
                   activation=activation, lr=lr, steps=steps, measurements=measurements,
                   noise=noise, first_order=first_order, **ctx.point_options())
              for v in variants for rep in range(seeds)]
    runs = ctx.map(_run, points, desc="covariate-shift")
    by: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for p, r in zip(points, runs):
        by[p["variant"]].append(r)
    measured: dict[str, Any] = {}
    theory: dict[str, Any] = {}
    table = []
    for v in variants:
        per = [_summarize(r, steps) for r in by[v]]
        m = mean_over_seeds([s for s, _ in per])
        # per-layer curves: the mean over repetitions too (the same layers in every one)
        for key in ("drift", "drift_relative", "gradient_ics", "gradient_ics_relative",
                    "gradient_ics_cosine"):
            m[key] = np.mean([s[key] for s, _ in per], axis=0).tolist()
        measured[v] = m
        theory[v] = {}
        if all(fo is not None for _, fo in per):
            fo = np.mean([fo for _, fo in per], axis=0)
            theory[v] = {"gradient_ics": fo.tolist(), "gradient_ics_mean": float(np.mean(fo))}
        if v == "noisy_batch":
            theory[v]["drift_relative_mean"] = noise_drift(noise)
        table.append({"variant": v, "train loss (last 20%)": m["train_loss_last"],
                      "eval acc": m["eval_accuracy"], "drift (rel.)": m["drift_relative_mean"],
                      "‖G−G'‖": m["gradient_ics_mean"],
                      "η‖H G<ℓ‖ (1st order)": theory.get(v, {}).get("gradient_ics_mean"),
                      "‖G−G'‖/‖G‖": m["gradient_ics_relative_mean"],
                      "cos(G, G')": m["gradient_ics_cosine_mean"]})
    verdict = _verdict(measured, theory, variants)
    if seeds > 1:
        verdict = verdict[:-1] + f" (means over {seeds} seeds)."
    return Outcome(measured, theory, verdict, table)


def _summarize(r: dict[str, Any], steps: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """One run's summary (per-layer means over the measurement steps) and its first-order
    prediction per layer (``None`` when not computed)."""
    rec = r["record"]
    tail = r["losses"][-max(1, steps // 5):]

    def per_layer(key: str) -> list[float]:
        return np.nanmean(np.array(rec[key], dtype=float), axis=0).tolist() if rec[key] else []

    m = {"layers": r["layers"], "steps": rec["step"], "diverged": r["diverged"],
         "train_loss_last": float(np.mean(tail)), "eval_loss": r["eval_loss"],
         "eval_accuracy": r["eval_accuracy"], "loss_curve": r["losses"],
         "drift": per_layer("drift"), "drift_relative": per_layer("drift_relative"),
         "gradient_ics": per_layer("ics"), "gradient_ics_relative": per_layer("ics_relative"),
         "gradient_ics_cosine": per_layer("ics_cosine")}
    for key in ("drift_relative", "gradient_ics", "gradient_ics_relative", "gradient_ics_cosine"):
        m[f"{key}_mean"] = float(np.mean(m[key])) if m[key] else float("nan")
    m["drift_relative_curve"] = [float(np.mean(d)) for d in rec["drift_relative"]]
    m["gradient_ics_relative_curve"] = [float(np.nanmean(d)) for d in rec["ics_relative"]]
    fo = rec["ics_first_order"]
    return m, (np.mean(np.array(fo, dtype=float), axis=0) if fo and fo[0] else None)


def _verdict(m: dict[str, Any], t: dict[str, Any], variants: tuple[str, ...]) -> str:
    parts = []
    if "none" in m and "batch" in m:
        a, b = m["none"], m["batch"]
        q = b["drift_relative_mean"] / a["drift_relative_mean"]
        parts.append(f"distributional ICS (relative one-step drift of pre-activations): BN "
                     f"{b['drift_relative_mean']:.3g} vs none {a['drift_relative_mean']:.3g} — BN "
                     + ("reduces it" if q < 0.8 else "does not reduce it") + f" (×{q:.2g})")
        qa = b["gradient_ics_mean"] / a["gradient_ics_mean"]
        qr = b["gradient_ics_relative_mean"] / a["gradient_ics_relative_mean"]
        reduced = qa < 0.8 and qr < 0.8
        parts.append(f"gradient ICS (Santurkar et al.): ‖G−G'‖ BN {b['gradient_ics_mean']:.3g} vs "
                     f"none {a['gradient_ics_mean']:.3g} (×{qa:.2g}), relative "
                     f"{b['gradient_ics_relative_mean']:.3g} vs {a['gradient_ics_relative_mean']:.3g}"
                     f" (×{qr:.2g}), cosine {b['gradient_ics_cosine_mean']:.3g} vs "
                     f"{a['gradient_ics_cosine_mean']:.3g} — BN "
                     + ("reduces it" if reduced else "does not reduce it"))
    if "noisy_batch" in m:
        nb = m["noisy_batch"]
        ref = m.get("batch")
        s = (f"noisy BN: drift {nb['drift_relative_mean']:.3g} (the noise alone: "
             f"{t['noisy_batch']['drift_relative_mean']:.3g})"
             + (f" (×{nb['drift_relative_mean'] / m['none']['drift_relative_mean']:.2g} the plain "
                f"network's)" if "none" in m else ""))
        s += f", train loss {nb['train_loss_last']:.3g}, accuracy {nb['eval_accuracy']:.3g}"
        if ref is not None:
            s += f" (BN {ref['train_loss_last']:.3g}, {ref['eval_accuracy']:.3g}"
            if "none" in m:
                s += f"; none {m['none']['train_loss_last']:.3g}, {m['none']['eval_accuracy']:.3g}"
            s += ")"
        parts.append(s)
    fo = [(v, m[v]["gradient_ics_mean"] / t[v]["gradient_ics_mean"]) for v in variants
          if t.get(v, {}).get("gradient_ics_mean", 0) > 0]
    if fo:
        parts.append("measured/first-order ‖G−G'‖: " + ", ".join(f"{v} {q:.3g}" for v, q in fo))
    return "; ".join(parts) + "."


@register_plotter("covariate-shift")
def _plot(r: Any) -> Any:
    m = r.measured
    variants = [v for v in VARIANTS if v in m]
    col = colors(VARIANTS)
    fig, ax = figure(4, title=f"internal covariate shift, SGD η={r.params['lr']:g}")
    for v in variants:
        d = m[v]
        ax[0].semilogy(np.arange(len(d["drift_relative"])), np.maximum(d["drift_relative"], 1e-300),
                       "o-", color=col[v], label=v)
        ax[1].semilogy(d["layers"], np.maximum(d["gradient_ics"], 1e-300), "o-", color=col[v], label=v)
        if "gradient_ics" in r.theory.get(v, {}):
            ax[1].semilogy(d["layers"], np.maximum(r.theory[v]["gradient_ics"], 1e-300), "x--",
                           color=col[v], lw=1)
        ax[2].plot(d["layers"], d["gradient_ics_cosine"], "o-", color=col[v], label=v)
        ax[3].plot(np.arange(len(d["loss_curve"])), d["loss_curve"], color=col[v], lw=0.8, label=v)
    ax[0].set(xlabel="block", ylabel="pre-activation drift per step (relative)")
    ax[1].set(xlabel="layer", ylabel="‖G − G'‖ (× first order)")
    ax[2].set(xlabel="layer", ylabel="cos(G, G')")
    ax[3].set(xlabel="SGD step", ylabel="training loss (batch)", yscale="log")
    for a in ax:
        a.legend(fontsize=7)
    return fig
