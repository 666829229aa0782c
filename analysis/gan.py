"""Spectral normalization in GANs (Miyato, Kataoka, Koyama & Yoshida 2018), measured on the
classic two-dimensional benchmark: a mixture of ``modes`` Gaussians N(μ_k, std²·I) with centres
μ_k = radius·(cos 2πk/modes, sin 2πk/modes) on a ring (Metz et al. 2017's eight Gaussians).

A generator G (an MLP from z ~ N(0, I) to R²) and a discriminator D (an MLP from R² to a
logit) are trained by alternating Adam steps (β₁ = 0.5, as in the GAN literature) on the
non-saturating logistic loss of Goodfellow et al. (2014),

    L_D = E softplus(−D(x)) + E softplus(D(G(z))),     L_G = E softplus(−D(G(z))),

or the hinge loss of Miyato et al. (L_D = E relu(1 − D(x)) + E relu(1 + D(G(z))),
L_G = −E D(G(z))). The generator's gradient is the exact chain through the discriminator:
``D.backward`` returns ∂L_G/∂x at the generated points, which ``G.backward`` pulls back to G's
parameters. The discriminator's Linear layers are plain (``"none"``, no gradient penalty),
spectrally normalized (``"spectral_norm"``: W/σ̃(W), σ̃ by one power iteration per step, so
every layer has σ_max ≈ 1 and D is ≈1-Lipschitz) or weight normalized (``"weight_norm"``:
W = g·v/‖v‖, which reparameterizes but does not bound σ_max).

Measured over training, per seed (the paired runs of one seed share the generator's weights,
the discriminator's Linear weights, the data and the noise):

* **mode coverage** — mode k is covered when at least ``min_share``/modes of the generated
  samples lie within 3·std of μ_k; for the true mixture each mode holds
  P(χ²₂ ≤ 9)/modes = (1 − e^{−9/2})/modes of the samples (the theory column: all modes
  covered, a fraction 1 − e^{−9/2} = 0.9889 of samples within 3σ of some mode);
* the **energy distance** (Székely & Rizzo 2013) between generated samples and a fixed sample
  of the true mixture, E = 2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (≥ 0, zero only for equal
  distributions; ``scipy.stats.energy_distance`` is its square root, in 1-D only), estimated
  without bias (U-statistics, so a perfect generator scores 0 ± sampling noise, theory 0);
* the discriminator's layer spectral norms σ_max of the weights it multiplies by
  (``scipy.linalg.svdvals``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy import linalg, stats

import arraynorm as an
from arraynorm.optim import Adam

from ._backend import Backend, point_rng
from ._plot import colors, figure
from ._result import register_plotter
from ._study import Context, Outcome, check_choices, study

__all__ = ["gan", "NORMS", "LOSSES", "ring_centres", "sample_ring", "energy_statistic",
           "energy_distance", "mode_coverage", "ModeCoverage", "within_3sigma", "discriminator_loss",
           "generator_loss", "discriminator"]

#: the discriminator's Linear layers: plain, spectrally normalized, weight normalized
NORMS = ("none", "spectral_norm", "weight_norm")
LOSSES = ("logistic", "hinge")
_LINEAR = {"none": an.nn.Linear, "spectral_norm": an.nn.SpectralNormLinear,
           "weight_norm": an.nn.WeightNormLinear}
#: samples of each run kept for the figure's scatter
_KEEP = 400


# ------------------------------------------------------------------------------ the data
def ring_centres(modes: int, radius: float) -> np.ndarray:
    """(modes, 2) centres radius·(cos 2πk/modes, sin 2πk/modes)."""
    ang = 2.0 * np.pi * np.arange(modes) / modes
    return radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)


def sample_ring(n: int, rng: np.random.Generator, *, modes: int = 8, radius: float = 2.0,
                std: float = 0.05) -> np.ndarray:
    """(n, 2) samples of the ring mixture: a uniform mode, then μ_k + std·N(0, I₂)."""
    k = rng.integers(0, modes, n)
    return ring_centres(modes, radius)[k] + std * rng.standard_normal((n, 2))


def within_3sigma() -> float:
    """P(‖N(0, I₂)‖ ≤ 3) = P(χ²₂ ≤ 9) = 1 − e^{−9/2}: the share of a 2-D Gaussian mode's
    samples within 3σ of its centre."""
    return float(stats.chi2.cdf(9.0, df=2))


# ------------------------------------------------------------------------------ the measures
def _pair_sum(a: np.ndarray, b: np.ndarray, block: int = 512) -> float:
    """Σ over all pairs (i, j) of ‖a_i − b_j‖, by blocks of rows so that memory stays
    block·len(b)·d."""
    total = 0.0
    for i in range(0, len(a), block):
        diff = a[i:i + block, None, :] - b[None, :, :]
        # the distances themselves, not ‖a‖² + ‖b‖² − 2a·b, which cancels for close points
        total += float(np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)).sum())
    return total


def _within_mean(a: np.ndarray, unbiased: bool) -> float:
    """mean‖a_i − a_j‖ over pairs i ≠ j (``unbiased``) or over all n² pairs (V-statistic)."""
    n = len(a)
    return _pair_sum(a, a) / (n * (n - 1) if unbiased else n * n)


def _as_samples(fname: str, name: str, x: Any, unbiased: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) < (2 if unbiased else 1):
        raise ValueError(f"{fname}: {name} must be samples of shape (n, d) or (n,) with n >= "
                         f"{2 if unbiased else 1}, got shape {x.shape}")
    return x


def energy_statistic(x: Any, y: Any, *, unbiased: bool = True) -> float:
    """Székely & Rizzo's energy distance E = 2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖, estimated
    from samples ``x`` (n, d) and ``y`` (m, d) (or 1-D samples (n,)).

    E ≥ 0 with equality only for equal distributions (it is the squared MMD of the distance
    kernel). ``unbiased=True`` (default) averages the within-sample distances over pairs
    i ≠ j (U-statistics): the estimate's expectation is E itself, 0 for two samples of one
    distribution, so it may come out slightly negative. ``unbiased=False`` averages over all
    pairs (V-statistics, ≥ 0, biased upward by (1/n + 1/m)·E‖X − X'‖).

    >>> x = np.array([[0.0, 0.0], [1.0, 0.0]])
    >>> round(energy_statistic(x, x + [0.0, 1.0], unbiased=False), 6)   # 2(1+√2)/2 − 1/2 − 1/2
    1.414214
    """
    fname = "energy_statistic"
    x = _as_samples(fname, "x", x, unbiased)
    y = _as_samples(fname, "y", y, unbiased)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{fname}: x and y must have the same dimension, got {x.shape[1]} and "
                         f"{y.shape[1]}")
    return _energy(x, y, _within_mean(y, unbiased), unbiased)


def energy_distance(x: Any, y: Any) -> float:
    """``scipy.stats.energy_distance`` in any dimension: the square root of the V-statistic
    :func:`energy_statistic` of the empirical distributions of ``x`` (n, d) and ``y`` (m, d).

    >>> x = np.array([[0.0, 0.0], [1.0, 0.0]])
    >>> energy_distance(x, x)
    0.0
    """
    # rounding may leave −1e-17 for identical samples
    return math.sqrt(max(energy_statistic(x, y, unbiased=False), 0.0))


def _energy(x: np.ndarray, y: np.ndarray, yy: float, unbiased: bool) -> float:
    """The energy statistic with the reference sample's term E‖Y − Y'‖ given (computed once)."""
    return 2.0 * _pair_sum(x, y) / (len(x) * len(y)) - _within_mean(x, unbiased) - yy


class ModeCoverage(NamedTuple):
    """Mode coverage of a sample: ``modes`` covered, each mode's share of the samples within
    3σ of its centre (``fractions``), and the share within 3σ of any mode (``high_quality``)."""

    modes: int
    fractions: list[float]
    high_quality: float


def mode_coverage(x: Any, centres: np.ndarray, std: float, *, min_share: float = 0.25
                  ) -> ModeCoverage:
    """How many modes of a mixture the samples ``x`` (n, 2) cover: mode k is covered when at
    least ``min_share``/K of the samples lie within 3·std of its centre (K = len(centres)).

    >>> c = ring_centres(4, 1.0)
    >>> mode_coverage(np.repeat(c[:2], 10, axis=0), c, 0.05)[:1]    # two modes of four
    (2,)
    """
    x = np.asarray(x, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != centres.shape[1] or len(x) < 1:
        raise ValueError(f"mode_coverage: x must have shape (n, {centres.shape[1]}), got {x.shape}")
    diff = x[:, None, :] - centres[None, :, :]
    near = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)) <= 3.0 * std
    fractions = near.mean(axis=0)
    covered = int(np.sum(fractions >= min_share / len(centres)))
    return ModeCoverage(covered, fractions.tolist(), float(near.any(axis=1).mean()))


# ------------------------------------------------------------------------------ the losses
def _softplus(xp: Any, u: Any) -> Any:
    """log(1 + e^u) without overflow: max(u, 0) + log1p(e^{−|u|})."""
    return xp.where(u > 0, u, xp.zeros_like(u)) + xp.log1p(xp.exp(-xp.abs(u)))


def _sigmoid(xp: Any, u: Any) -> Any:
    """1/(1 + e^{−u}) = (1 + tanh(u/2))/2, finite for every u."""
    return 0.5 * (1.0 + xp.tanh(0.5 * u))


def discriminator_loss(xp: Any, d_real: Any, d_fake: Any, kind: str = "logistic"
                       ) -> tuple[Any, Any, Any]:
    """``(L_D, ∂L_D/∂d_real, ∂L_D/∂d_fake)`` from the discriminator's logits on real (n, 1)
    and generated (m, 1) samples.

    logistic: L_D = mean softplus(−d_real) + mean softplus(d_fake);
    ∂/∂d_real = −σ(−d_real)/n, ∂/∂d_fake = σ(d_fake)/m.
    hinge: L_D = mean relu(1 − d_real) + mean relu(1 + d_fake);
    ∂/∂d_real = −[d_real < 1]/n, ∂/∂d_fake = [d_fake > −1]/m (0 at the kinks, as PyTorch).
    """
    n, m = d_real.shape[0], d_fake.shape[0]
    if kind == "logistic":
        loss = xp.mean(_softplus(xp, -d_real)) + xp.mean(_softplus(xp, d_fake))
        return loss, -_sigmoid(xp, -d_real) / n, _sigmoid(xp, d_fake) / m
    if kind == "hinge":
        zr, zf = xp.zeros_like(d_real), xp.zeros_like(d_fake)
        loss = (xp.mean(xp.where(d_real < 1, 1.0 - d_real, zr))
                + xp.mean(xp.where(d_fake > -1, 1.0 + d_fake, zf)))
        return (loss, xp.where(d_real < 1, xp.ones_like(d_real) * (-1.0 / n), zr),
                xp.where(d_fake > -1, xp.ones_like(d_fake) * (1.0 / m), zf))
    raise ValueError(f"discriminator_loss: kind must be one of {LOSSES}, got {kind!r}")


def generator_loss(xp: Any, d_fake: Any, kind: str = "logistic") -> tuple[Any, Any]:
    """``(L_G, ∂L_G/∂d_fake)``: the non-saturating L_G = mean softplus(−d_fake)
    (∂ = −σ(−d_fake)/m) or, for the hinge loss, L_G = −mean d_fake (∂ = −1/m)."""
    m = d_fake.shape[0]
    if kind == "logistic":
        return xp.mean(_softplus(xp, -d_fake)), -_sigmoid(xp, -d_fake) / m
    if kind == "hinge":
        return -xp.mean(d_fake), xp.ones_like(d_fake) * (-1.0 / m)
    raise ValueError(f"generator_loss: kind must be one of {LOSSES}, got {kind!r}")


# ------------------------------------------------------------------------------ the models
def discriminator(norm: str, *, depth: int, width: int, seed: int, rep: int, b: Backend,
                  init: str = "he") -> an.nn.Sequential:
    """D: ``depth`` hidden (Linear → ReLU) blocks of ``width`` and a Linear read-out to one
    logit, every Linear of kind ``norm`` (the read-out too: Miyato et al. normalize every
    layer). Layer ℓ draws its weights from its own stream (``seed``, ``rep``, ℓ), so plain,
    spectrally and weight normalized discriminators of a repetition start from the same W."""
    cls = _LINEAR[norm]
    sizes = [2] + [width] * depth + [1]
    layers: list[an.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(cls(n_in, n_out, init=init, rng=point_rng(seed, "gan-D", rep, i),
                          xp=b.xp, dtype=b.dtype))
        if i < depth:
            layers.append(an.nn.ReLU())
    return an.nn.Sequential(*layers)


def _linear_layers(model: an.nn.Module) -> list[an.nn.Module]:
    return [m for _, m in model.named_modules() if hasattr(m, "effective_weight")]


def _sigma_max(model: an.nn.Module, b: Backend) -> list[float]:
    """σ_max of the weight each Linear layer multiplies by (SN: W/σ̃ with the current u)."""
    return [float(linalg.svdvals(b.to_numpy(m.effective_weight()))[0]) for m in _linear_layers(model)]


# ------------------------------------------------------------------------------ one run
def _gan_point(*, norm: str, rep: int, steps: int, batch: int, width: int, depth: int,
               z_dim: int, lr: float, beta1: float, beta2: float, loss: str, modes: int,
               radius: float, std: float, min_share: float, init: str, eval_samples: int,
               checkpoints: int, backend: str, dtype: str, seed: int) -> dict[str, Any]:
    """One GAN training run; measures at ``checkpoints`` + 1 evenly spaced steps (0 … steps)."""
    b = Backend(backend, dtype)
    xp = b.xp
    G = an.nn.deep_stack(depth, width, in_features=z_dim, out_features=2, activation="relu",
                         init=init, rng=point_rng(seed, "gan-G", rep), xp=xp, dtype=b.dtype)
    D = discriminator(norm, depth=depth, width=width, seed=seed, rep=rep, b=b, init=init)
    opt_g = Adam(G, lr, betas=(beta1, beta2))
    opt_d = Adam(D, lr, betas=(beta1, beta2))
    data = point_rng(seed, "gan-data", rep)      # real batches and noise, shared by every norm
    ev = point_rng(seed, "gan-eval", rep)
    z_eval = b.asarray(ev.standard_normal((eval_samples, z_dim)))
    ring = dict(modes=modes, radius=radius, std=std)
    reference = sample_ring(eval_samples, ev, **ring)
    ref_term = _within_mean(reference, True)
    centres = ring_centres(modes, radius)
    at = sorted(set(np.linspace(0, steps, checkpoints + 1).round().astype(int).tolist()))
    out: dict[str, Any] = {"steps": at, "modes": [], "high_quality": [], "energy": [],
                           "sigma_max": [], "loss_d": [], "loss_g": [], "diverged_step": None}
    window_d, window_g = [], []

    def measure() -> np.ndarray:
        x = b.to_numpy(G(z_eval))
        cov = mode_coverage(x, centres, std, min_share=min_share)
        out["modes"].append(cov.modes)
        out["high_quality"].append(cov.high_quality)
        out["energy"].append(_energy(x, reference, ref_term, True))
        out["sigma_max"].append(_sigma_max(D, b))
        out["loss_d"].append(float(np.mean(window_d)) if window_d else None)
        out["loss_g"].append(float(np.mean(window_g)) if window_g else None)
        window_d.clear(), window_g.clear()
        return x

    x = measure()
    with np.errstate(all="ignore"):
        for t in range(1, steps + 1):
            real = b.asarray(sample_ring(batch, data, **ring))
            fake = G(b.asarray(data.standard_normal((batch, z_dim))))
            logits = D(xp.concat([real, fake], axis=0))
            ld, g_real, g_fake = discriminator_loss(xp, logits[:batch, ...], logits[batch:, ...], loss)
            D.backward(xp.concat([g_real, g_fake], axis=0))
            opt_d.step()
            # a fresh noise batch for the generator's step; its gradient flows through D's
            # exact backward to the generated points, then through G
            fake = G(b.asarray(data.standard_normal((batch, z_dim))))
            lg, g_fake = generator_loss(xp, D(fake), loss)
            G.backward(D.backward(g_fake))
            opt_g.step()
            window_d.append(float(ld)), window_g.append(float(lg))
            if not (math.isfinite(window_d[-1]) and math.isfinite(window_g[-1])):
                out["diverged_step"] = t
                break
            if t in at:
                x = measure()
    out["samples"] = x[:_KEEP].tolist()
    return out


# ------------------------------------------------------------------------------ the study
@study("gan", quick=dict(steps=60, seeds=2, width=16, batch=32, eval_samples=200, checkpoints=3),
       report=dict(steps=600, seeds=3, eval_samples=500, checkpoints=6))
def gan(ctx: Context, *, norms: tuple[str, ...] = NORMS, steps: int = 2000, batch: int = 64,
        width: int = 64, depth: int = 2, z_dim: int = 2, lr: float = 1e-3, beta1: float = 0.5,
        beta2: float = 0.999, loss: str = "logistic", modes: int = 8, radius: float = 2.0,
        std: float = 0.05, min_share: float = 0.25, init: str = "uniform", eval_samples: int = 1000,
        checkpoints: int = 10, seeds: int = 3) -> Outcome:
    """GAN on a ring of Gaussians: mode coverage, energy distance and D's spectral norms with and without SN.

    Parameters
    ----------
    norms : the discriminator's Linear layers, among "none" (no gradient penalty either),
        "spectral_norm" (Miyato et al.), "weight_norm" (Salimans & Kingma).
    steps : training steps (one discriminator and one generator Adam step each).
    batch : real and generated samples per step.
    width, depth : hidden width and number of hidden ReLU layers of G and D.
    z_dim : dimension of the generator's Gaussian noise.
    lr, beta1, beta2 : Adam's for both networks (β₁ = 0.5, the GAN literature's).
    loss : "logistic" (non-saturating, Goodfellow et al.) or "hinge" (Miyato et al.).
    modes, radius, std : the mixture: ``modes`` Gaussians of standard deviation ``std`` on a
        circle of ``radius`` (their 3σ discs must not overlap).
    min_share : a mode is covered when it holds at least ``min_share``/modes of the generated
        samples within 3σ (its fair share is 1/modes).
    init : initialization of every Linear (see :mod:`arraynorm.nn.init`).
    eval_samples : generated and reference samples at every measurement.
    checkpoints : measurements after 0, steps/checkpoints, …, steps steps.
    seeds : independent repetitions (weights, data, noise) of every normalization.
    """
    fname = "gan"
    norms = check_choices(fname, "norms", norms, NORMS)
    check_choices(fname, "loss", loss, LOSSES)
    for name, v in (("steps", steps), ("batch", batch), ("width", width), ("depth", depth),
                    ("z_dim", z_dim), ("modes", modes), ("eval_samples", eval_samples),
                    ("checkpoints", checkpoints), ("seeds", seeds)):
        if v < 1:
            raise ValueError(f"{fname}: {name} must be >= 1, got {v}")
    for name, v in (("lr", lr), ("radius", radius), ("std", std), ("min_share", min_share)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{fname}: {name} must be a positive finite number, got {v}")
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"{fname}: beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
    if modes > 1 and 2 * radius * math.sin(math.pi / modes) <= 6 * std:
        raise ValueError(f"{fname}: the modes' 3σ discs overlap (centres "
                         f"{2 * radius * math.sin(math.pi / modes):.3g} apart, 6·std = {6 * std:.3g}); "
                         f"use a larger radius or a smaller std")
    norms = tuple(dict.fromkeys(norms))
    common = dict(steps=steps, batch=batch, width=width, depth=depth, z_dim=z_dim, lr=lr,
                  beta1=beta1, beta2=beta2, loss=loss, modes=modes, radius=radius, std=std,
                  min_share=min_share, init=init, eval_samples=eval_samples,
                  checkpoints=checkpoints, **ctx.point_options())
    points = [dict(norm=n, rep=r, **common) for n in norms for r in range(seeds)]
    runs = ctx.map(_gan_point, points, desc="gan")
    by: dict[str, list[dict[str, Any]]] = {}
    for p, r in zip(points, runs):
        by.setdefault(p["norm"], []).append(r)

    measured: dict[str, Any] = {"steps": runs[0]["steps"], "true_mixture": _true_mixture(ctx.seed, common)}
    theory: dict[str, Any] = {"true_mixture": {"modes": modes, "high_quality": within_3sigma(),
                                               "energy": 0.0}}
    table = []
    for n in norms:
        measured[n] = _summary(by[n], modes)
        m = measured[n]
        table.append({"discriminator": n,
                      f"modes (of {modes})": m["final_modes"],
                      "per seed": "/".join(str(v) for v in m["final_modes_per_seed"]),
                      "energy (median)": m["final_energy"],
                      "min–max": f"{min(m['final_energy_per_seed']):.3g}–"
                                 f"{max(m['final_energy_per_seed']):.3g}",
                      "within 3σ": m["final_high_quality"],
                      "failed": f"{m['failed']}/{seeds}",
                      "D σ_max (largest)": m["sigma_max_largest"]})
    if "spectral_norm" in norms:
        theory["spectral_norm"] = {"sigma_max_largest": 1.0}
    verdict = _verdict(measured, norms, modes, steps)
    return Outcome(measured, theory, verdict, table)


def _true_mixture(seed: int, o: dict[str, Any]) -> dict[str, float]:
    """The measures on a fresh sample of the true mixture (what a perfect generator scores)."""
    rng = point_rng(seed, "gan-true")
    ring = dict(modes=o["modes"], radius=o["radius"], std=o["std"])
    x, y = sample_ring(o["eval_samples"], rng, **ring), sample_ring(o["eval_samples"], rng, **ring)
    cov = mode_coverage(x, ring_centres(o["modes"], o["radius"]), o["std"], min_share=o["min_share"])
    return {"modes": cov.modes, "high_quality": cov.high_quality,
            "energy": energy_statistic(x, y)}


def _summary(runs: list[dict[str, Any]], modes: int) -> dict[str, Any]:
    """Curves (mean over seeds and per seed) and final values with their spread."""
    def per_seed(key: str) -> list[list[Any]]:
        return [r[key] for r in runs]

    def across_seeds(key: str, stat: Any = np.nanmean) -> list[float]:
        # a diverged run stops early: its missing checkpoints are NaN (null in JSON)
        n = max(len(r[key]) for r in runs)
        a = np.array([list(r[key]) + [math.nan] * (n - len(r[key])) for r in runs], dtype=float)
        with np.errstate(all="ignore"):
            return stat(a, axis=0).tolist()

    done = [r["diverged_step"] is None for r in runs]
    final = [r["energy"][-1] if ok else math.inf for r, ok in zip(runs, done)]
    final_modes = [int(r["modes"][-1]) if ok else 0 for r, ok in zip(runs, done)]
    sig = [np.array(r["sigma_max"]) for r in runs]          # (checkpoints, layers) per seed
    return {
        # the mean of modes and within-3σ share; the median of the energy distance, whose
        # failed runs are orders of magnitude above the others
        "modes": across_seeds("modes"), "energy": across_seeds("energy", np.nanmedian),
        "high_quality": across_seeds("high_quality"),
        "modes_per_seed": per_seed("modes"), "energy_per_seed": per_seed("energy"),
        "sigma_max": np.mean([s for s in sig if s.shape == sig[0].shape], axis=0).tolist(),
        "sigma_max_per_seed": [s.tolist() for s in sig],
        "loss_d_per_seed": per_seed("loss_d"), "loss_g_per_seed": per_seed("loss_g"),
        "final_modes": float(np.mean(final_modes)),
        "final_modes_per_seed": final_modes,
        "all_modes_runs": int(sum(v == modes for v in final_modes)),
        "final_energy": float(np.median(final)),
        "final_energy_per_seed": final,
        "final_high_quality": float(np.mean([r["high_quality"][-1] for r in runs])),
        # a failed run ended farther from the data than its untrained generator (step 0,
        # the same generator for every discriminator of a seed), or diverged
        "failed": int(sum(e > r["energy"][0] for e, r in zip(final, runs))),
        "diverged": int(sum(not ok for ok in done)),
        "sigma_max_largest": float(max(s.max() for s in sig)),
        "sigma_max_final": [float(v) for v in np.mean([s[-1] for s in sig], axis=0)],
        "samples": runs[0]["samples"],
    }


def _verdict(m: dict[str, Any], norms: tuple[str, ...], modes: int, steps: int) -> str:
    def one(n: str) -> str:
        d = m[n]
        e = d["final_energy_per_seed"]
        return (f"{n}: {d['final_modes']:.1f}/{modes} modes (seeds "
                f"{'/'.join(str(v) for v in d['final_modes_per_seed'])}), energy distance "
                f"{d['final_energy']:.3g} (median; {min(e):.3g}–{max(e):.3g}), {d['failed']} of "
                f"{len(e)} runs ended farther from the data than at initialization")

    text = f"after {steps} steps: " + "; ".join(one(n) for n in norms)
    if "spectral_norm" in norms:
        text += f". SN holds every D layer at σ_max ≤ {m['spectral_norm']['sigma_max_largest']:.3f}"
        others = [n for n in norms if n != "spectral_norm"]
        if others:
            text += " (" + ", ".join(f"{n}: up to {m[n]['sigma_max_largest']:.2f}" for n in others) + ")"
            key = {n: (-m[n]["final_modes"], m[n]["final_energy"]) for n in norms}
            best = min(norms, key=key.__getitem__)
            wins = best == "spectral_norm" and all(key[n] > key[best] for n in others)
            text += ("; SN covers the most modes (ties: the lowest median energy distance)" if wins
                     else f"; {best} does better than SN here (most modes, then the lowest median "
                          f"energy distance): the claim is not supported at these sizes")
    return text + "."


@register_plotter("gan")
def _plot(r: Any) -> Any:
    from matplotlib.patches import Circle

    m, p = r.measured, r.params
    norms = [n for n in NORMS if n in m]
    col = colors(NORMS)
    ncol = max(3, len(norms))
    fig, ax = figure(ncol, 2, width=3.8, height=3.4,
                     title=f"GAN on {p['modes']} Gaussians ({p['loss']} loss, {p['steps']} steps, "
                           f"{p['seeds']} seeds)")
    centres = ring_centres(p["modes"], p["radius"])
    steps = np.asarray(m["steps"])
    lim = 1.6 * p["radius"]
    for j, n in enumerate(norms):
        a = ax[j]
        s = np.asarray(m[n]["samples"], dtype=float)
        for c in centres:
            a.add_patch(Circle(c, 3 * p["std"], fill=False, color="k", lw=0.6))
        a.scatter(s[:, 0], s[:, 1], s=3, color=col[n], alpha=0.6)
        a.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal",
              title=f"{n}, seed 0: {m[n]['final_modes_per_seed'][0]}/{p['modes']} modes")
    for a in ax[len(norms):ncol]:
        a.axis("off")
    ed, md, sg = ax[ncol], ax[ncol + 1], ax[ncol + 2]
    for n in norms:
        d = m[n]
        for k, curve in enumerate(d["energy_per_seed"]):
            c = np.array([np.nan if v is None else v for v in curve], dtype=float)
            ed.plot(steps[:len(c)], c, color=col[n], lw=0.7, alpha=0.5)
            mc = np.array(d["modes_per_seed"][k], dtype=float)
            md.plot(steps[:len(mc)], mc + 0.08 * (k - 1), color=col[n], lw=0.7, alpha=0.5)
        ed.plot(steps, np.array(d["energy"], dtype=float), color=col[n], lw=2, label=n)
        md.plot(steps, np.array(d["modes"], dtype=float), color=col[n], lw=2, label=n)
        sig = np.asarray(d["sigma_max"], dtype=float)
        for layer in range(sig.shape[1]):
            sg.semilogy(steps[:len(sig)], sig[:, layer], color=col[n], lw=1.2,
                        ls=("-", "--", ":", "-.")[layer % 4], label=n if layer == 0 else None)
    # the unbiased estimate is ~0 ± noise for the true mixture: linear near 0, log above
    ed.set_yscale("symlog", linthresh=1e-2)
    ed.axhline(m["true_mixture"]["energy"], color="k", lw=0.6, ls=":", label="true vs true")
    ed.set(xlabel="step", ylabel="energy distance E to the data (median; thin: seeds)")
    md.set(xlabel="step", ylabel=f"modes covered (of {p['modes']}; mean, thin: seeds)",
           ylim=(-0.5, p["modes"] + 0.5))
    sg.set(xlabel="step", ylabel="D layer σ_max (line style: layer)")
    for a in (ed, md, sg):
        a.legend(fontsize=7)
    return fig
