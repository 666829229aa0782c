"""Gradient flow through deep stacks at initialization: per-layer norms of activations, input
gradients ∂L/∂h_ℓ and weight gradients ∂L/∂W_ℓ, their growth rate per layer, and two theories.

Measured. A deep MLP (``arraynorm.nn.deep_stack``: Linear → norm → φ or Linear → φ → norm per
block, residual or not) runs forward on a Gaussian batch X (B × d) and backward from a random
cotangent C (i.i.d. N(0, 1), the loss L = ⟨C, h_L⟩); every block's closed-form ``backward``
gives g_ℓ = ∂L/∂h_ℓ (:mod:`._probe`). The growth rate per layer is the fitted slope of
log‖g_ℓ‖ against the distance from the output, L − ℓ (``fit_growth``, Student-t interval; the
first and last tenth of the layers are left out as transients): rate r means ‖g‖ is
multiplied by r per layer on the way from the output to the input (r > 1: explosion). The
same for the RMS of h_ℓ (forward, per layer) and ‖∂L/∂W_ℓ‖.

Why a random cotangent: it is the gradient-independence setting of the mean-field theory
(the backward signal independent of the forward one) at the top, and unlike a linear read-out
summed over the batch its columns are not constant over the batch — a batch-constant
cotangent lies in the null space of batch normalization's backward (∂L/∂h ⊥ 1 per feature)
and would measure nothing. An MSE loss would tie the top cotangent to the outputs; the rate
per layer, a property of the stack, is the same.

Theory (a), Yang et al. 2019 ("A mean field theory of batch normalization", ICLR): in a
network of blocks φ(BN(XWᵀ)) the gradient's squared norm grows per layer by λ(B), the leading
eigenvalue of the backward Gram map at the BSB1 fixed point (:mod:`._gradient_theory`):
λ = (B − 2)/(B − 3) for linear networks, a closed form through the arc-cosine kernel for ReLU
(→ π/(π − 1) as B → ∞), whatever the weight variance. Measured beside it over batch sizes on
wide networks (several seeds; t-interval over seeds). The theory is the d → ∞ limit; at
B = 4 the per-feature factor B/‖Gh‖² ∝ 1/χ²₃ has infinite variance, so a finite-width
network's typical (log-average) rate approaches it only slowly.

Theory (b), Xiong et al. 2020 ("On layer normalization in the Transformer architecture",
ICML): with Post-LN the last layer's weight gradient does not depend on the depth L
(‖∂L/∂W^{2,L}‖ = O(d√(ln d))); with Pre-LN and a final LayerNorm it falls as L^{−½}
(O(d√(ln d / L))), because the residual stream grows as E‖x_L‖² ∈ [(1 + L/2)d, (1 + 3L/2)d].
Stacks of ``arraynorm.nn.TransformerEncoderBlock`` are built with the initialization of
their analysis (``tf_init="xiong"``): one head, zero query and key projections (uniform
attention), value projection N(0, 1/d), identity output projection, FFN of width d with
N(0, 1/d) weights, zero biases, LayerNorm γ = 1, β = 0 (``"library"``: the block's own
initialization). Measured: the last block's ‖∂L/∂W₂‖ against L with its fitted log-log slope
(theory 0 and −½), the per-layer gradient norms of the deepest stack, and the stream norm.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

import arraynorm as an
from arraynorm._array_api import xp_from_host
from arraynorm.nn.stack import NORMS as STACK_NORMS

from ._backend import Backend, point_rng
from ._fit import LineFit, fit_growth, fit_power
from ._gradient_theory import (ACTIVATIONS, bn_gradient_factor, bn_gradient_spectrum,
                               meanfield_grad_factor, pre_ln_stream_slope)
from ._plot import figure
from ._probe import probe_stack
from ._result import register_plotter
from ._study import Context, Outcome, check_choices, study

__all__ = ["gradient_flow", "NORMS", "transformer_stack"]

NORMS = STACK_NORMS
POSITIONS = ("before", "after")
CONNECTIONS = ("plain", "residual")
INITS = ("he", "gaussian", "orthogonal", "xavier", "xavier_uniform", "uniform")
TF_INITS = ("xiong", "library")
#: normalizations whose placement relative to φ means nothing (none, or the weight is normalized)
_NO_POSITION = ("none", "weight_norm", "spectral_norm", "weight_standardization",
                "centered_weight_norm")


# ----------------------------------------------------------------------------- fits
def _trimmed(n_layers: int) -> slice:
    """Layers kept for a fit: the first and last tenth (at least one layer) are transients."""
    t = max(1, n_layers // 10)
    return slice(t, max(t + 2, n_layers + 1 - t))


def _backward_fit(curve: np.ndarray) -> LineFit:
    """Growth per layer of a backward curve given at ℓ = 0 … L (or 1 … L), fitted against the
    distance from the output."""
    curve = np.asarray(curve, dtype=np.float64)
    dist = np.arange(len(curve))[::-1].astype(np.float64)
    keep = _trimmed(len(curve) - 1)
    return fit_growth(dist[keep], curve[keep])


def _forward_fit(curve: np.ndarray) -> LineFit:
    curve = np.asarray(curve, dtype=np.float64)
    keep = _trimmed(len(curve) - 1)
    return fit_growth(np.arange(len(curve))[keep].astype(np.float64), curve[keep])


def _combine(fits: list[LineFit], level: float = 0.95) -> tuple[float, list[float]]:
    """(rate, rate interval) from one fit per independent network: the fit's own interval
    for one network, the Student-t interval of the mean slope over several."""
    slopes = np.array([f.slope for f in fits], dtype=np.float64)
    slopes = slopes[np.isfinite(slopes)]
    if slopes.size == 0:
        return math.nan, [math.nan, math.nan]
    if len(fits) == 1:
        return fits[0].rate, list(fits[0].rate_interval(level))
    m = float(slopes.mean())
    if slopes.size < 2:
        return math.exp(m), [0.0, math.inf]
    half = float(stats.t.ppf(0.5 + level / 2, slopes.size - 1) * slopes.std(ddof=1)
                 / math.sqrt(slopes.size))
    return math.exp(m), [math.exp(m - half), math.exp(m + half)]


def _geo_mean(curves: list[np.ndarray]) -> np.ndarray:
    """Geometric mean over networks, layer by layer (NaN where any is not finite and positive)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(np.array(curves, dtype=np.float64))
    return np.exp(np.mean(logs, axis=0))


def _behaviour(rate: float, ci: list[float], depth: int) -> str:
    """'explodes' / 'vanishes' when the rate's interval excludes 1 and the stack changes the
    norm more than tenfold at this depth, else 'stable'."""
    if not math.isfinite(rate):
        return "overflows"
    total = depth * math.log(rate)
    if ci[0] > 1 and total > math.log(10):
        return "explodes"
    if ci[1] < 1 and total < -math.log(10):
        return "vanishes"
    return "within ×10"


# ----------------------------------------------------------------------------- MLP points
def _mlp_point(*, norm: str, position: str, connection: str, activation: str, init: str,
               width: int, batch: int, depth: int, rep: int, backend: str, dtype: str,
               seed: int) -> dict[str, list[float]]:
    """Per-layer norms of one deep MLP at initialization (random batch, random cotangent)."""
    b = Backend(backend, dtype)
    rng = point_rng(seed, "gradient-flow", norm, position, connection, activation, init, width,
                    batch, depth, rep)
    model = an.nn.deep_stack(depth, width, activation=activation, norm=norm,
                             norm_position=position, residual=connection == "residual",
                             init=init, bias=False, rng=rng, xp=b.xp, dtype=b.dtype)
    x = b.asarray(rng.standard_normal((batch, width)))
    c = b.asarray(rng.standard_normal((batch, width)))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is a finding here, not an error
        p = probe_stack(list(model), x, c, backend=b)
    return {"activation_rms": p.activation_rms.tolist(), "grad_norm": p.grad_norm.tolist(),
            "weight_grad_norm": p.weight_grad_norm.tolist()}


def _label(norm: str, position: str, connection: str, activation: str, init: str, width: int,
           batch: int) -> str:
    return f"{norm}/{position}/{connection}/{activation}/{init}/w{width}/b{batch}"


# ----------------------------------------------------------------------------- transformers
def transformer_stack(depth: int, d_model: int, *, pre_ln: bool, num_heads: int = 1,
                      init: str = "xiong", rng: Any = None, xp: Any = None,
                      dtype: Any = None) -> an.nn.Sequential:
    """``depth`` Transformer encoder blocks (Post-LN, or Pre-LN followed by a final LayerNorm)
    as a Sequential. ``init="xiong"`` sets the weights of Xiong et al. 2020's analysis after
    construction: zero query/key projections, value N(0, 1/d), identity output projection,
    FFN of width d with N(0, 1/d) weights, zero biases; ``"library"`` keeps the block's own
    initialization (Xavier-uniform attention, He FFN of width 4d).

    >>> model = transformer_stack(4, 16, pre_ln=True, rng=0)
    >>> len(model), type(model[-1]).__name__
    (5, 'LayerNorm')
    """
    g = an.nn.init.make_rng(rng)
    ff = d_model if init == "xiong" else None
    blocks: list[Any] = []
    for _ in range(depth):
        blk = an.nn.TransformerEncoderBlock(d_model, num_heads, ff, norm_first=pre_ln, rng=g,
                                            xp=xp, dtype=dtype)
        if init == "xiong":
            d, f = d_model, blk.linear1.params["weight"].shape[0]
            w_in = np.zeros((3 * d, d))
            w_in[2 * d:] = g.standard_normal((d, d)) / math.sqrt(d)
            setting = {blk.self_attn.in_proj: (w_in, 3 * d), blk.self_attn.out_proj: (np.eye(d), d),
                       blk.linear1: (g.standard_normal((f, d)) / math.sqrt(d), f),
                       blk.linear2: (g.standard_normal((d, f)) / math.sqrt(f), d)}
            for layer, (w, n_out) in setting.items():
                layer.params["weight"] = xp_from_host(w, xp, None, dtype)
                if layer.params.get("bias") is not None:
                    layer.params["bias"] = xp_from_host(np.zeros(n_out), xp, None, dtype)
        blocks.append(blk)
    if pre_ln:
        blocks.append(an.nn.LayerNorm(d_model, xp=xp, dtype=dtype))
    return an.nn.Sequential(*blocks)


def _transformer_point(*, pre_ln: bool, depth: int, width: int, tokens: int, batch: int,
                       heads: int, init: str, rep: int, backend: str, dtype: str,
                       seed: int) -> dict[str, Any]:
    """Per-layer norms of one Transformer stack at initialization."""
    b = Backend(backend, dtype)
    rng = point_rng(seed, "gradient-flow/transformer", pre_ln, depth, width, tokens, batch,
                    heads, init, rep)
    model = transformer_stack(depth, width, pre_ln=pre_ln, num_heads=heads, init=init, rng=rng,
                              xp=b.xp, dtype=b.dtype)
    x = b.asarray(rng.standard_normal((batch, tokens, width)))
    c = b.asarray(rng.standard_normal((batch, tokens, width)))
    p = probe_stack(list(model), x, c, backend=b, weight="linear2.weight")
    # the stream entering the final LayerNorm (Pre-LN) or leaving the last block (Post-LN)
    stream = p.activation_rms[depth] ** 2
    return {"weight_grad_norm": p.weight_grad_norm[:depth].tolist(),
            "grad_norm": p.grad_norm[:depth + 1].tolist(), "stream_norm2": float(stream)}


# ----------------------------------------------------------------------------- the study
@study("gradient-flow",
       quick=dict(depth=20, widths=(32,), batches=(8,), norms=("none", "batch", "layer"),
                  positions=("before",), connections=("plain", "residual"), bn_batches=(8, 16),
                  bn_depth=16, bn_width=64, bn_seeds=2, tf_depths=(2, 4, 8), tf_width=16,
                  tf_tokens=4, tf_seeds=2, theory_samples=4000),
       report=dict(depth=60, widths=(128,), batches=(32,), bn_depth=40, bn_width=256,
                   bn_seeds=3, tf_depths=(2, 4, 8, 16, 32, 64), tf_width=64, tf_tokens=8,
                   tf_seeds=3, theory_samples=10000))
def gradient_flow(ctx: Context, *, depth: int = 200, widths: tuple[int, ...] = (256,),
                  batches: tuple[int, ...] = (32,), norms: tuple[str, ...] = NORMS,
                  positions: tuple[str, ...] = POSITIONS,
                  connections: tuple[str, ...] = CONNECTIONS,
                  activations: tuple[str, ...] = ("relu",), inits: tuple[str, ...] = ("he",),
                  seeds: int = 1, bn_batches: tuple[int, ...] = (4, 8, 16, 32, 64),
                  bn_activations: tuple[str, ...] = ("identity", "relu"), bn_depth: int = 50,
                  bn_width: int = 256, bn_seeds: int = 4,
                  tf_depths: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128), tf_width: int = 64,
                  tf_tokens: int = 16, tf_batch: int = 2, tf_init: str = "xiong",
                  tf_seeds: int = 3, theory_samples: int = 20000) -> Outcome:
    """Gradient flow at initialization: per-layer gradient growth of deep stacks for every normalization, BN's explosion rate vs batch size (Yang et al. 2019), Post-LN vs Pre-LN (Xiong et al. 2020).

    Parameters
    ----------
    depth : hidden blocks of each MLP in the sweep.
    widths, batches : widths d and batch sizes B of the sweep.
    norms : normalizations of ``deep_stack`` (default all of ``arraynorm.nn.stack.NORMS``).
    positions : "before" and/or "after" the activation (ignored where the weight is
        normalized or there is no normalization).
    connections : "plain" and/or "residual" blocks.
    activations : "relu", "identity", "tanh", "gelu", "hardtanh".
    inits : weight initializations ("he", "gaussian", "orthogonal", "xavier", …).
    seeds : networks per sweep configuration (rates: the fit's interval for one, the
        t-interval over networks for several).
    bn_batches : batch sizes (>= 4) of theory (a); empty to skip it.
    bn_activations : activations of theory (a): "identity" and "relu" have closed forms,
        "tanh"/"gelu" use the Monte Carlo spectrum.
    bn_depth, bn_width, bn_seeds : the BN networks of theory (a).
    tf_depths : depths L of the Transformer stacks of theory (b); empty to skip it.
    tf_width, tf_tokens, tf_batch : d_model, sequence length and batch of those stacks.
    tf_init : "xiong" (the initialization of their analysis) or "library".
    tf_seeds : stacks per depth.
    theory_samples : Monte Carlo directions for the BN backward map's spectrum.

    Examples
    --------
    >>> r = gradient_flow(norms=("batch",), positions=("before",), connections=("plain",),
    ...                   depth=20, widths=(64,), batches=(8,), bn_batches=(), tf_depths=(),
    ...                   progress=False)
    >>> m = r.measured["sweep"]["batch/before/plain/relu/he/w64/b8"]
    >>> m["behaviour"], round(r.theory["sweep"]["batch/before/plain/relu/he/w64/b8"]["grad_rate"], 3)
    ('explodes', 1.337)
    """
    fname = "gradient-flow"
    norms = check_choices(fname, "norms", norms, NORMS) if norms else ()
    positions = check_choices(fname, "positions", positions, POSITIONS)
    connections = check_choices(fname, "connections", connections, CONNECTIONS)
    activations = check_choices(fname, "activations", activations, tuple(ACTIVATIONS))
    inits = check_choices(fname, "inits", inits, INITS)
    bn_activations = check_choices(fname, "bn_activations", bn_activations, tuple(ACTIVATIONS))
    check_choices(fname, "tf_init", tf_init, TF_INITS)
    for name, v, lo in (("depth", depth, 3), ("seeds", seeds, 1), ("bn_depth", bn_depth, 3),
                        ("bn_width", bn_width, 2), ("bn_seeds", bn_seeds, 1),
                        ("tf_width", tf_width, 2), ("tf_tokens", tf_tokens, 1),
                        ("tf_batch", tf_batch, 1), ("tf_seeds", tf_seeds, 1),
                        ("theory_samples", theory_samples, 100)):
        if v < lo:
            raise ValueError(f"{fname}: {name} must be >= {lo}, got {v}")
    if norms and (not widths or min(widths) < 2 or not batches or min(batches) < 2):
        raise ValueError(f"{fname}: widths and batches must be non-empty and >= 2, got "
                         f"widths={widths}, batches={batches}")
    if bn_batches and min(bn_batches) < 4:
        raise ValueError(f"{fname}: bn_batches must be >= 4 (the theory's E 1/χ²_(B−1) is "
                         f"infinite below), got {bn_batches}")
    if tf_depths and (min(tf_depths) < 1 or len(set(tf_depths)) < 2):
        raise ValueError(f"{fname}: tf_depths needs at least two distinct depths >= 1, got {tf_depths}")

    measured: dict[str, Any] = {}
    theory: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    if norms:
        m, t, rows = _sweep(ctx, depth, widths, batches, norms, positions, connections,
                            activations, inits, seeds, theory_samples)
        measured["sweep"], theory["sweep"] = m, t
        table += rows
    if bn_batches:
        m, t, rows = _bn_batch(ctx, tuple(sorted(set(bn_batches))), bn_activations, bn_depth,
                               bn_width, bn_seeds, theory_samples)
        measured["bn_batch"], theory["bn_batch"] = m, t
        table += rows
    if tf_depths:
        m, t, rows = _transformers(ctx, tuple(sorted(set(tf_depths))), tf_width, tf_tokens,
                                   tf_batch, tf_init, tf_seeds)
        measured["transformer"], theory["transformer"] = m, t
        table += rows
    return Outcome(measured, theory, _verdict(measured, theory, depth), table)


def _sweep(ctx: Context, depth: int, widths: tuple[int, ...], batches: tuple[int, ...],
           norms: tuple[str, ...], positions: tuple[str, ...], connections: tuple[str, ...],
           activations: tuple[str, ...], inits: tuple[str, ...], seeds: int, samples: int
           ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    configs = []
    for norm in norms:
        for pos in (positions[:1] if norm in _NO_POSITION else positions):
            for conn in connections:
                for act in activations:
                    for init in inits:
                        for w in widths:
                            for bsz in batches:
                                configs.append((norm, pos, conn, act, init, w, bsz))
    points = [dict(norm=n, position=p, connection=c, activation=a, init=i, width=w, batch=bs,
                   depth=depth, rep=r, **ctx.point_options())
              for (n, p, c, a, i, w, bs) in configs for r in range(seeds)]
    runs = ctx.map(_mlp_point, points, desc="gradient-flow: stacks")
    measured: dict[str, Any] = {}
    theory: dict[str, Any] = {}
    rows = []
    for k, cfg in enumerate(configs):
        reps = runs[k * seeds:(k + 1) * seeds]
        norm, pos, conn, act, init, w, bsz = cfg
        label = _label(*cfg)
        m: dict[str, Any] = {"layers": list(range(depth + 1))}
        for key, fit in (("activation_rms", _forward_fit), ("grad_norm", _backward_fit),
                         ("weight_grad_norm", _backward_fit)):
            m[key] = _geo_mean([np.asarray(r[key]) for r in reps])
            rate, ci = _combine([fit(np.asarray(r[key])) for r in reps])
            short = {"activation_rms": "activation", "grad_norm": "grad",
                     "weight_grad_norm": "weight_grad"}[key]
            m[f"{short}_rate"], m[f"{short}_rate_ci"] = rate, ci
        m["behaviour"] = _behaviour(m["grad_rate"], m["grad_rate_ci"], depth)
        chi = meanfield_grad_factor(norm, pos, act, init=init, width=w, batch=bsz,
                                    residual=conn == "residual")
        if chi is None and norm == "batch" and pos == "before" and conn == "plain" and bsz >= 4:
            chi = bn_gradient_spectrum(act, bsz, samples=samples,
                                       rng=point_rng(ctx.seed, "bn-theory", act, bsz))["leading"]
        measured[label] = m
        if chi is not None:
            theory[label] = {"grad_rate": math.sqrt(chi)}
        rows.append({"part": "stack", "norm": norm,
                     "position": "—" if norm in _NO_POSITION else pos, "residual": conn == "residual",
                     "φ": act, "init": init, "width": w, "batch": bsz,
                     "‖∂L/∂h‖ ×/layer": m["grad_rate"],
                     "theory ×/layer": math.sqrt(chi) if chi is not None else None,
                     "‖∂L/∂W‖ ×/layer": m["weight_grad_rate"],
                     "RMS(h) ×/layer": m["activation_rate"], "gradients": m["behaviour"]})
    return measured, theory, rows


def _bn_point(*, activation: str, batch: int, width: int, depth: int, rep: int, backend: str,
              dtype: str, seed: int) -> list[float]:
    """‖∂L/∂h_ℓ‖ of one deep φ(BN(XWᵀ)) network (Yang et al.'s setting: no bias, BN before φ)."""
    b = Backend(backend, dtype)
    rng = point_rng(seed, "gradient-flow/bn", activation, batch, width, depth, rep)
    model = an.nn.deep_stack(depth, width, activation=activation, norm="batch",
                             norm_position="before", init="gaussian", bias=False, rng=rng,
                             xp=b.xp, dtype=b.dtype)
    x = b.asarray(rng.standard_normal((batch, width)))
    c = b.asarray(rng.standard_normal((batch, width)))
    return probe_stack(list(model), x, c, backend=b).grad_norm.tolist()


def _bn_batch(ctx: Context, batches: tuple[int, ...], activations: tuple[str, ...], depth: int,
              width: int, seeds: int, samples: int
              ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    points = [dict(activation=a, batch=B, width=width, depth=depth, rep=r, **ctx.point_options())
              for a in activations for B in batches for r in range(seeds)]
    runs = ctx.map(_bn_point, points, desc="gradient-flow: BN batch sizes")
    measured: dict[str, Any] = {}
    theory: dict[str, Any] = {}
    rows = []
    k = 0
    for a in activations:
        measured[a], theory[a] = {"batches": list(batches)}, {"batches": list(batches)}
        for B in batches:
            reps = runs[k:k + seeds]
            k += seeds
            rate, ci = _combine([_backward_fit(np.asarray(r)) for r in reps])
            spec = bn_gradient_spectrum(a, B, samples=samples,
                                        rng=point_rng(ctx.seed, "bn-theory", a, B))
            closed = a in ("identity", "relu")
            lam = bn_gradient_factor(a, B) if closed else spec["leading"]
            key = f"B={B}"
            measured[a][key] = {"grad_rate": rate, "grad_rate_ci": ci, "lambda": rate ** 2}
            theory[a][key] = {"grad_rate": math.sqrt(lam), "lambda": lam,
                              "method": "closed form" if closed else f"Monte Carlo ({samples} directions)",
                              "eigenvalues": {e: spec[e] for e in ("trivial", "standard", "two_row")},
                              "eigenvalues_stderr": spec["stderr"], "q": spec["q"], "p": spec["p"]}
            rows.append({"part": "BN vs batch", "norm": "batch", "position": "before",
                         "residual": False, "φ": a, "init": "gaussian", "width": width,
                         "batch": B, "‖∂L/∂h‖ ×/layer": rate, "theory ×/layer": math.sqrt(lam),
                         "gradients": _behaviour(rate, ci, depth)})
    return measured, theory, rows


def _transformers(ctx: Context, depths: tuple[int, ...], width: int, tokens: int, batch: int,
                  init: str, seeds: int
                  ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    points = [dict(pre_ln=pre, depth=L, width=width, tokens=tokens, batch=batch, heads=1,
                   init=init, rep=r, **ctx.point_options())
              for pre in (False, True) for L in depths for r in range(seeds)]
    runs = ctx.map(_transformer_point, points, desc="gradient-flow: transformers")
    measured: dict[str, Any] = {}
    theory: dict[str, Any] = {}
    rows = []
    deepest = max(depths)
    for pre in (False, True):
        name = "pre_ln" if pre else "post_ln"
        mine = [(p, r) for p, r in zip(points, runs) if p["pre_ln"] == pre]
        last = {L: [r["weight_grad_norm"][-1] for p, r in mine if p["depth"] == L] for L in depths}
        xs = [L for L in depths for _ in last[L]]
        ys = [v for L in depths for v in last[L]]
        fit = fit_power(xs, ys)
        deep = [r for p, r in mine if p["depth"] == deepest]
        layer_w = _geo_mean([np.asarray(r["weight_grad_norm"]) for r in deep])
        layer_g = _geo_mean([np.asarray(r["grad_norm"]) for r in deep])
        wrate, wci = _combine([_backward_fit(np.asarray(r["weight_grad_norm"])) for r in deep])
        stream = [float(np.mean([r["stream_norm2"] for p, r in mine if p["depth"] == L]))
                  for L in depths]
        measured[name] = {"depths": list(depths),
                          "last_weight_grad": [float(np.exp(np.mean(np.log(last[L])))) for L in depths],
                          "depth_exponent": fit.slope, "depth_exponent_ci": list(fit.confidence_interval()),
                          "layer_weight_grad": layer_w, "layer_grad": layer_g,
                          "layer_weight_grad_rate": wrate, "layer_weight_grad_rate_ci": wci,
                          "stream_norm2": stream}
        t: dict[str, Any] = {"depth_exponent": -0.5 if pre else 0.0}
        if pre and init == "xiong":
            t["depth_exponent_lemma2"] = [pre_ln_stream_slope(depths, 0.5),
                                          pre_ln_stream_slope(depths, 1.5)]
            t["stream_norm2_bounds"] = [[1 + L / 2 for L in depths], [1 + 1.5 * L for L in depths]]
            measured[name]["stream_within_lemma2"] = all(
                1 + L / 2 <= s2 <= 1 + 1.5 * L for L, s2 in zip(depths, stream))
        theory[name] = t
        rows.append({"part": "Transformer", "norm": "Pre-LN" if pre else "Post-LN",
                     "position": "—", "residual": True, "φ": "relu", "init": init,
                     "width": width, "batch": batch,
                     "‖∂L/∂W‖ ×/layer": wrate, "last ‖∂L/∂W₂‖ ∝ L^k": fit.slope,
                     "theory k": t["depth_exponent"]})
    return measured, theory, rows


def _verdict(m: dict[str, Any], t: dict[str, Any], depth: int) -> str:
    parts = []
    if "sweep" in m:
        groups: dict[str, list[str]] = {}
        for label, v in m["sweep"].items():
            groups.setdefault(v["behaviour"], []).append(_short(label))
        verbs = {"explodes": "explode", "vanishes": "vanish", "overflows": "overflow"}
        for beh, verb in verbs.items():
            if beh in groups:
                names = ", ".join(dict.fromkeys(groups[beh]))
                parts.append(f"gradients {verb} over {depth} layers with {names}")
        if "within ×10" in groups:
            parts.append(f"they stay within ×10 in the {len(groups['within ×10'])} other stacks")
    if "bn_batch" in m:
        for a, byb in m["bn_batch"].items():
            pairs = ", ".join(f"B={B} ×{byb[f'B={B}']['grad_rate']:.3f} "
                              f"(×{t['bn_batch'][a][f'B={B}']['grad_rate']:.3f})"
                              for B in byb["batches"])
            every = all(byb[f"B={B}"]["grad_rate_ci"][0] > 1 for B in byb["batches"])
            parts.append(f"BN+{a} gradients {'explode at every batch size' if every else 'change'}"
                         f" per layer by (Yang et al.'s theory in brackets) {pairs}")
    if "transformer" in m:
        post, pre = m["transformer"]["post_ln"], m["transformer"]["pre_ln"]
        within = pre.get("stream_within_lemma2")
        stream = ("" if within is None else
                  f"; the Pre-LN stream E‖x_L‖²/d {'stays' if within else 'does not stay'} within "
                  f"Xiong et al.'s [1 + L/2, 1 + 3L/2]")
        parts.append(f"last-layer weight gradient ∝ L^{post['depth_exponent']:.2f} for Post-LN "
                     f"(theory 0) and ∝ L^{pre['depth_exponent']:.2f} for Pre-LN (theory −½); "
                     f"per layer toward the input ‖∂L/∂W₂‖ ×{post['layer_weight_grad_rate']:.3f} "
                     f"(Post-LN) vs ×{pre['layer_weight_grad_rate']:.3f} (Pre-LN){stream}")
    return "; ".join(parts) + "."


# ----------------------------------------------------------------------------- figure
def _short(label: str) -> str:
    """'batch/after/residual/relu/he/w128/b32' -> 'batch·after·res' (what varies most)."""
    norm, pos, conn = label.split("/")[:3]
    return norm + ("" if norm in _NO_POSITION else f"·{pos}") + ("·res" if conn == "residual" else "")


@register_plotter("gradient-flow")
def _plot(r: Any) -> Any:
    m, t = r.measured, r.theory
    sweep = m.get("sweep", {})
    n = len(sweep)
    fig, ax = figure(4, width=4.0, height=max(3.4, 0.1 * n + 1.2),
                     title="gradient flow at initialization")
    if sweep:
        col = _norm_colors()
        finals = []
        for label, v in sweep.items():
            if "/residual/" in label or ("/after/" in label and label.split("/")[0] not in _NO_POSITION):
                continue  # the curves panel shows plain stacks with the norm before φ
            g = np.asarray([np.nan if x is None else x for x in v["grad_norm"]], dtype=float)
            ratio = g / g[-1]
            finals.append(ratio[0])
            ax[0].semilogy(np.arange(len(g))[::-1], ratio, color=col[label.split("/")[0]], lw=1,
                           label=label.split("/")[0])
        fin = np.asarray(finals, dtype=float)
        fin = fin[np.isfinite(fin) & (fin > 0)]
        if fin.size:
            ax[0].set_ylim(max(1e-12, fin.min() / 10), min(1e12, fin.max() * 10))
        ax[0].set(xlabel="layers from the output", ylabel="‖∂L/∂h_ℓ‖ / ‖∂L/∂h_L‖",
                  title="plain stacks, norm before φ")
        ax[0].legend(fontsize=5, ncol=2)
        labels = list(sweep)
        y = np.arange(len(labels))[::-1]
        rate = np.array([_num(sweep[k]["grad_rate"]) for k in labels])
        ci = np.array([[_num(c) for c in sweep[k]["grad_rate_ci"]] for k in labels])
        ax[1].errorbar(rate, y, xerr=[np.abs(rate - ci[:, 0]), np.abs(ci[:, 1] - rate)], fmt="o",
                       ms=3, color="k", lw=0.8, label="measured")
        th = np.array([_num(t.get("sweep", {}).get(k, {}).get("grad_rate")) for k in labels])
        ax[1].plot(th, y, "x", color="C3", ms=5, label="mean-field theory")
        ax[1].axvline(1.0, color="0.6", lw=0.8)
        ax[1].set_xscale("log")
        lo, hi = np.nanmin(np.r_[rate, th, 1.0]), np.nanmax(np.r_[rate, th, 1.0])
        ticks = [v for v in (0.25, 0.5, 0.7, 1.0, 1.4, 2.0, 4.0, 8.0, 16.0) if lo / 1.5 <= v <= hi * 1.5]
        ax[1].set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax[1].minorticks_off()
        ax[1].set_yticks(y, [_short(k) for k in labels], fontsize=5)
        ax[1].set(xlabel="‖∂L/∂h‖ factor per layer (toward the input)")
        ax[1].legend(fontsize=6)
    if "bn_batch" in m:
        for a, byb in m["bn_batch"].items():
            bs = np.asarray(byb["batches"], dtype=float)
            rate = np.array([byb[f"B={int(B)}"]["grad_rate"] for B in bs], dtype=float)
            ci = np.array([byb[f"B={int(B)}"]["grad_rate_ci"] for B in bs], dtype=float)
            th = np.array([t["bn_batch"][a][f"B={int(B)}"]["grad_rate"] for B in bs], dtype=float)
            line = ax[2].errorbar(bs, rate, yerr=[rate - ci[:, 0], ci[:, 1] - rate], fmt="o",
                                  ms=3, label=f"{a} measured")
            ax[2].plot(bs, th, "-", color=line[0].get_color(), lw=1, label=f"{a} theory")
        ax[2].set_xscale("log", base=2)
        ax[2].set(xlabel="batch size B", ylabel="‖∂L/∂h‖ factor per layer",
                  title="BN before φ (Yang et al. 2019)")
        ax[2].legend(fontsize=7)
    if "transformer" in m:
        for name, lab in (("post_ln", "Post-LN"), ("pre_ln", "Pre-LN")):
            v = m["transformer"][name]
            d = np.asarray(v["depths"], dtype=float)
            yv = np.asarray(v["last_weight_grad"], dtype=float)
            line = ax[3].loglog(d, yv, "o-", ms=3, label=f"{lab} (k={v['depth_exponent']:.2f})")
            k = t["transformer"][name]["depth_exponent"]
            ax[3].loglog(d, yv[-1] * (d / d[-1]) ** k, ":", color=line[0].get_color(), lw=1,
                         label=f"theory L^{k:g}")
        ax[3].set_xticks(d, [str(int(x)) for x in d])
        ax[3].minorticks_off()
        ax[3].set(xlabel="depth L", ylabel="last block ‖∂L/∂W₂‖",
                  title="Transformers (Xiong et al. 2020)")
        ax[3].legend(fontsize=7)
    return fig


def _norm_colors() -> dict[str, Any]:
    """One colour per normalization of NORMS (13: more than the default colour cycle holds)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {n: cmap(i % 20) for i, n in enumerate(NORMS)}


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)
