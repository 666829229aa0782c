"""Scale invariance and the effective learning rate: what normalization does to the geometry of
training (survey §5.1; Arora, Li & Lyu 2019; Li & Arora 2020; Wan, Zhu, Zhang & Sun 2021).

**Identities.** A weight W that feeds a normalization (BN, LN, GN, RMS, without a bias) or the
direction parameter v of weight normalization leaves the loss unchanged when scaled, so for
c > 0 (Euler's theorem for a homogeneous function of degree 0)

    L(cW) = L(W),     ∇L(cW) = ∇L(W)/c,     ⟨W, ∇_W L⟩ = 0.

With eps > 0 in (x − μ)/√(σ² + eps) the identities break: scaling W by c is the same as
dividing eps by c², L(cW; eps) = L(W; eps/c²), so exactly ⟨W, ∇_W L⟩ = −2 eps ∂L/∂eps (the
theory column, ∂L/∂eps by ``scipy.differentiate`` on the layer's eps), which is of first order
in eps/σ², and L(cW) − L(W) ≈ (1 − c⁻²)/2 · ⟨W, ∇_W L⟩ to first order. The study measures the
three residuals with eps = 0 (rounding only) and the layers' default eps, and the slope of
the radial gradient against eps/σ² on a grid of eps (theory 1). WN has no eps: exact always.

**Norm growth (Li & Arora 2020; Arora, Li & Lyu 2019).** Plain SGD, w_{t+1} = w_t − η g_t,
with ⟨w_t, g_t⟩ = 0 gives exactly ‖w_{t+1}‖² = ‖w_t‖² + η²‖g_t‖²: the norm only grows and
the effective learning rate η/‖w‖² of the direction w/‖w‖ only falls. Measured: the relative
residual of the identity per step (rounding with eps = 0; 2η⟨w, g⟩/‖w‖² otherwise) and
η/‖w_ℓ‖² per layer through training.

**Spherical motion dynamics (Wan et al. 2021).** SGD with momentum μ and L2 weight decay λ
in PyTorch's form (v ← μv + g + λw, w ← w − ηv). With u_t = w_{t+1} − w_t and ⟨w, g⟩ = 0,
‖w_{t+1}‖² − ‖w_t‖² = 2⟨w_t, u_t⟩ + ‖u_t‖² and ⟨w_t, u_t⟩ = μ(⟨w_{t−1}, u_{t−1}⟩ +
‖u_{t−1}‖²) − ηλ‖w_t‖² hold exactly; at equilibrium (stationary ‖w‖, ⟨w, u⟩, ‖u‖) they give
‖u‖²/‖w‖² = 2ηλ/(1 + μ), hence the angular update per step

    Δ* = arccos(1 − ηλ/(1 + μ)) ≈ √(2ηλ/(1 + μ)),

independent of the loss, and (assuming E⟨u_{t−1}, g_t⟩ = 0) the equilibrium norm
‖w*‖⁴ = η L̃ / (λ(1 − μ)(2 − ηλ/(1 + μ))), L̃ = E‖g‖²‖w‖² the squared gradient norm on
the unit sphere (Wan et al.'s Theorem 2 in PyTorch's convention). These runs use
normalizations without γ, β (a γ under weight decay shrinks on its own slow time scale and
drags the equilibrium with it) and weight decay on every parameter. Summed over a window,
the two exact relations give the mean ‖u‖²/‖w‖² as 2ηλ/(1+μ) times (1 + d), where the
*stationarity defect* d is a boundary term (the window's norm drift, and 2η⟨w, g⟩ when
eps > 0) — the measured distance from equilibrium, reported beside the angle.

**Weight decay ≡ exponential learning rate (Li & Arora 2020, Theorem 2.12).** For a
scale-invariant w, SGD with momentum μ, learning rate η and weight decay λ is, in direction,
SGD with momentum μ, no weight decay and learning rate η̃_t = η α^{−2t−1}, α the larger root
of α² − (1 + μ − ηλ)α + μ = 0, the weights related by w̃_t = α^{−t} w_t; in PyTorch's form
the momentum buffer must start at ṽ = −(α^{−1} − 1) w₀/η (zero for μ = 0). The two runs are
made side by side (weight decay and the schedule on the scale-invariant weights only, every
other parameter trained identically) and the angle between w_t and w̃_t is tracked: zero up
to rounding with eps = 0, and the size of the eps > 0 defect otherwise.

The task is the teacher–student regression of :mod:`._tasks`; the networks are
:func:`arraynorm.nn.deep_stack` stacks (Linear without bias → norm → ReLU, linear read-out).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import differentiate

import arraynorm as an
from arraynorm.optim import SGD

from ._backend import Backend, point_rng
from ._fit import fit_power
from ._plot import colors, figure
from ._result import register_plotter
from ._study import Context, Outcome, check_choices, study
from ._tasks import (build_model, loss_and_backward, make_task, minibatches,
                     scale_invariant_groups, set_norm_eps)

__all__ = ["scale_invariance", "NORMS", "smd_angular_update", "smd_equilibrium_norm",
           "exp_lr_alpha", "stationarity_defect"]

#: normalizations whose hidden weights are scale-invariant (identities measured for these)
NORMS = ("batch", "layer", "group", "rms", "weight_norm")
#: the eps-free ones: exact at their default too
_NO_EPS = ("weight_norm",)
_ACTIVATION_NORMS = ("batch", "layer", "group", "rms")
#: keyword that turns off γ, β of each activation normalization
_NO_AFFINE = {"batch": {"affine": False}, "group": {"affine": False},
              "layer": {"elementwise_affine": False}, "rms": {"elementwise_affine": False}}


# ----------------------------------------------------------------------------- theory
def smd_angular_update(lr: float, weight_decay: float, momentum: float = 0.0) -> float:
    """Δ* = arccos(1 − ηλ/(1 + μ)): the equilibrium angle between w_t and w_{t+1} of a
    scale-invariant weight under SGD (momentum μ, L2 weight decay λ, PyTorch's form).

    >>> round(smd_angular_update(0.1, 0.1), 4), round(smd_angular_update(0.01, 0.1, 0.9), 4)
    (0.1415, 0.0324)
    """
    return float(np.arccos(1.0 - lr * weight_decay / (1.0 + momentum)))


def smd_equilibrium_norm(lr: float, weight_decay: float, momentum: float,
                         unit_grad_sq: Any) -> Any:
    """‖w*‖ = [η L̃ / (λ(1 − μ)(2 − ηλ/(1 + μ)))]^{1/4}, L̃ = E‖∇L(w)‖²‖w‖² (Wan et al.).

    >>> round(float(smd_equilibrium_norm(0.1, 0.1, 0.0, 63.0)), 4)   # L̃ = d − 1 for d = 64
    2.372
    """
    eta, lam, mu = lr, weight_decay, momentum
    return (eta * np.asarray(unit_grad_sq) / (lam * (1 - mu) * (2 - eta * lam / (1 + mu)))) ** 0.25


def exp_lr_alpha(lr: float, weight_decay: float, momentum: float) -> float:
    """α, the larger root of α² − (1 + μ − ηλ)α + μ = 0 (Li & Arora 2020): weight decay λ is
    the learning-rate schedule η α^{−2t−1} without it. For μ = 0, α = 1 − ηλ.

    >>> exp_lr_alpha(0.1, 0.01, 0.0), round(exp_lr_alpha(0.1, 0.01, 0.9), 6)
    (0.999, 0.988873)
    """
    p = 1.0 + momentum - lr * weight_decay
    return float((p + math.sqrt(p * p - 4.0 * momentum)) / 2.0)


def stationarity_defect(n: np.ndarray, a: np.ndarray, b: np.ndarray, rho: np.ndarray, lr: float,
                        weight_decay: float, momentum: float, start: int) -> float:
    """d in mean_t ‖u_t‖²/mean_t ‖w_t‖² = (2ηλ/(1+μ))(1 + d) over the window t ≥ ``start``,
    from the exact relations (``n`` = ‖w_t‖², ``a`` = ⟨w_t, u_t⟩, ``b`` = ‖u_t‖²,
    ``rho`` = ⟨w_t, g_t⟩, arrays over t = 0 … T−1 with ``n`` one longer):

        Σ b (1+μ)/2 = ηλ Σ n + η Σ ρ + (1−μ)(n_T − n_S)/2
                      − μ (a_{S−1} + b_{S−1} − a_{T−1} − b_{T−1}).
    """
    eta, lam, mu, s = lr, weight_decay, momentum, start
    tail = (a[s - 1] + b[s - 1] if s > 0 else 0.0) - a[-1] - b[-1]
    extra = eta * rho[s:].sum() + (1 - mu) * (n[-1] - n[s]) / 2 - mu * tail
    return float(extra / (eta * lam * n[s:-1].sum()))


# ----------------------------------------------------------------------------- helpers
def _model(norm: str, depth: int, width: int, seed: int, key: Any, b: Backend,
           d_in: int, affine: bool = True) -> an.nn.Sequential:
    """The bias-free stack (He initialization); ``affine=False`` drops the normalizations' γ, β."""
    dummy = make_task("teacher", 2, point_rng(seed, "shape"), d_in=d_in)
    return build_model(dummy, norm, depth=depth, width=width, rng=point_rng(seed, "init", *key),
                       b=b, bias=False, norm_kwargs=None if affine else _NO_AFFINE[norm])


def _loss_grads(model: an.nn.Module, loss: an.nn.Module, x: Any, y: Any) -> tuple[float, dict[str, np.ndarray]]:
    value = loss_and_backward(model, loss, x, y)
    return value, {k: Backend.to_numpy(g) for k, g in model.gradients().items() if g is not None}


def _names(model: an.nn.Module, groups: list[tuple[an.nn.Module, str]]) -> list[str]:
    slot = {(id(m), k): name for name, m, k in model.parameter_slots()}
    return [slot[(id(m), k)] for m, k in groups]


def _grad_residual(g: dict[str, np.ndarray], gc: dict[str, np.ndarray], factor: dict[str, float]) -> float:
    """‖(c·∇L(cW)) − ∇L(W)‖/‖∇L(W)‖ over all parameters (c = 1 for the unscaled ones)."""
    num = sum(float(np.sum((factor.get(k, 1.0) * gc[k] - g[k]) ** 2)) for k in g)
    den = sum(float(np.sum(g[k] ** 2)) for k in g)
    return math.sqrt(num / den)


def _norm_layers(model: an.nn.Module) -> list[an.nn.Normalization]:
    return [m for _, m in model.named_modules() if isinstance(m, an.nn.Normalization)]


def _default_eps(layer: an.nn.Normalization, dtype: str) -> float:
    return float(np.finfo(dtype).eps) if layer.eps is None else float(layer.eps)  # RMSNorm: None


def _pre_norm_scale(norm: str, z: np.ndarray) -> float:
    """σ̄²: the mean of the statistic the normalization divides by (variance, or mean square
    for RMS) over its groups, for the (N, width) pre-activations z."""
    if norm == "batch":
        return float(z.var(axis=0).mean())
    if norm == "rms":
        return float((z * z).mean(axis=1).mean())
    if norm == "group":
        g = max(k for k in range(1, min(8, z.shape[1]) + 1) if z.shape[1] % k == 0)
        return float(z.reshape(z.shape[0], g, -1).var(axis=2).mean())
    return float(z.var(axis=1).mean())


# ----------------------------------------------------------------------------- points
def _identity_point(*, norm: str, depth: int, width: int, batch: int, d_in: int, scale: float,
                    eps_grid: tuple[float, ...], backend: str, dtype: str, seed: int) -> dict[str, Any]:
    """The three identities per layer (eps = 0 and default), for the whole stack at once, and
    the radial gradient of the last hidden layer along the eps grid."""
    b = Backend(backend, dtype)
    data = make_task("teacher", batch, point_rng(seed, "identity-data"), d_in=d_in)
    x, y = data.arrays(b)
    model = _model(norm, depth, width, seed, ("identity", norm, depth), b, d_in)
    loss = data.loss()
    groups = scale_invariant_groups(model)
    names = _names(model, groups)
    layers = _norm_layers(model)
    default = {id(l): l.eps for l in layers}
    cs = point_rng(seed, "identity-scales", norm, depth).uniform(0.25, 4.0, len(groups))
    out: dict[str, Any] = {}
    for mode in ("eps0", "default_eps"):
        for l in layers:
            l.eps = 0.0 if mode == "eps0" else default[id(l)]
        value, g = _loss_grads(model, loss, x, y)
        res: dict[str, list[float]] = {"loss_residual": [], "grad_residual": [], "radial_cosine": [],
                                       "radial_gradient": []}
        for (m, k), name in zip(groups, names):
            w = m.params[k]
            wn = Backend.to_numpy(w)
            radial = float(np.sum(wn * g[name]))
            m.params[k] = w * scale
            vc, gc = _loss_grads(model, loss, x, y)
            m.params[k] = w
            res["loss_residual"].append(abs(vc - value) / abs(value))
            res["grad_residual"].append(_grad_residual(g, gc, {name: scale}))
            res["radial_cosine"].append(radial / (np.linalg.norm(wn) * np.linalg.norm(g[name])))
            res["radial_gradient"].append(radial)
        originals = [m.params[k] for m, k in groups]
        for (m, k), c in zip(groups, cs):
            m.params[k] = m.params[k] * float(c)
        vc, gc = _loss_grads(model, loss, x, y)
        for (m, k), w in zip(groups, originals):
            m.params[k] = w
        res["whole_loss_residual"] = abs(vc - value) / abs(value)
        res["whole_grad_residual"] = _grad_residual(g, gc, dict(zip(names, map(float, cs))))
        res["loss"] = value
        if mode == "default_eps":
            res["eps"] = _default_eps(layers[0], dtype) if layers else 0.0
            res["radial_gradient_theory"] = [_euler_radial(model, loss, x, y, l) for l in layers]
            res["loss_residual_first_order"] = [abs((1 - scale ** -2) / 2 * r) / abs(value)
                                                for r in res["radial_gradient"]]
        out[mode] = res
    for l in layers:
        l.eps = default[id(l)]
    if layers:
        out["eps_sweep"] = _eps_sweep(model, loss, x, y, norm, groups[-1], layers, eps_grid, scale)
    return out


def _euler_radial(model: an.nn.Module, loss: an.nn.Module, x: Any, y: Any,
                  layer: an.nn.Normalization) -> float:
    """−2 eps ∂L/∂eps of one normalization layer (forward passes only, ``scipy.differentiate``
    in log eps so that the stencil never reaches eps ≤ 0); 0 where eps = 0."""
    e0 = layer.eps or 0.0
    if e0 == 0.0:
        return 0.0

    def f(s: np.ndarray) -> np.ndarray:
        vals = []
        for si in np.ravel(s):
            layer.eps = e0 * math.exp(float(si))
            vals.append(float(loss(model(x), y)))
        layer.eps = e0
        return np.reshape(vals, np.shape(s))

    d = differentiate.derivative(f, 0.0, initial_step=0.5)  # = eps ∂L/∂eps
    return float(-2.0 * d.df)


def _eps_sweep(model: an.nn.Module, loss: an.nn.Module, x: Any, y: Any, norm: str,
               group: tuple[an.nn.Module, str], layers: list[an.nn.Normalization],
               eps_grid: tuple[float, ...], scale: float) -> dict[str, list[float]]:
    """Radial cosine and loss residual of the last hidden layer for every eps in the grid
    (all layers at that eps), with that layer's σ̄²."""
    m, k = group
    default = [l.eps for l in layers]
    h = x
    blocks = list(model)
    for blk in blocks[:-2]:
        h = blk(h)
    z = Backend.to_numpy(blocks[-2][0](h))
    sigma2 = _pre_norm_scale(norm, z)
    name = _names(model, [group])[0]
    out: dict[str, list[float]] = {"eps": list(eps_grid), "ratio": [], "radial_cosine": [],
                                   "loss_residual": [], "loss_residual_first_order": []}
    for eps in eps_grid:
        for l in layers:
            l.eps = float(eps)
        value, g = _loss_grads(model, loss, x, y)
        w = m.params[k]
        wn = Backend.to_numpy(w)
        radial = float(np.sum(wn * g[name]))
        m.params[k] = w * scale
        vc = float(loss(model(x), y))
        m.params[k] = w
        out["ratio"].append(eps / sigma2)
        out["radial_cosine"].append(abs(radial) / (np.linalg.norm(wn) * np.linalg.norm(g[name])))
        out["loss_residual"].append(abs(vc - value) / abs(value))
        out["loss_residual_first_order"].append(abs((1 - scale ** -2) / 2 * radial) / abs(value))
    for l, e in zip(layers, default):
        l.eps = e
    out["sigma2"] = sigma2
    return out


def _sample(curve: np.ndarray, windows: int) -> list[Any]:
    """Means over ``windows`` equal windows of steps (axis 0)."""
    return [np.mean(w, axis=0).tolist() for w in np.array_split(curve, min(windows, len(curve)))]


def _train_point(*, kind: str, norm: str, eps_mode: str, momentum: float, lr: float,
                 weight_decay: float, depth: int, width: int, batch: int, samples: int,
                 d_in: int, steps: int, window: float, windows: int, backend: str, dtype: str,
                 seed: int, affine: bool = True) -> dict[str, Any]:
    """One SGD run recording, per scale-invariant layer and step, ‖w_t‖², ‖g_t‖², ⟨w_t, g_t⟩,
    the step u_t = w_{t+1} − w_t and the angle between w_t and w_{t+1}.

    ``kind`` "gd": no momentum, no weight decay (Li–Arora); "smd": momentum and weight decay.
    ``affine=False`` drops γ, β, which under weight decay shrink slowly and with them the
    gradient scale of the layer before, so the equilibrium would keep moving."""
    b = Backend(backend, dtype)
    data = make_task("teacher", samples, point_rng(seed, "train-data"), d_in=d_in)
    model = _model(norm, depth, width, seed, ("train", norm), b, d_in, affine)
    if eps_mode == "eps0":
        set_norm_eps(model, 0.0)
    loss = data.loss()
    groups = scale_invariant_groups(model)
    opt = SGD(model, lr, momentum, weight_decay=weight_decay)
    order = minibatches(point_rng(seed, "train-batches"), data.n, batch, steps)
    L = len(groups)
    n, g2, rho, a, bb, ang, losses = (np.zeros((steps + 1, L)), np.zeros((steps, L)),
                                      np.zeros((steps, L)), np.zeros((steps, L)),
                                      np.zeros((steps, L)), np.zeros((steps, L)), np.zeros(steps))
    w_old = [Backend.to_numpy(m.params[k]) for m, k in groups]
    n[0] = [np.sum(w * w) for w in w_old]
    for t in range(steps):
        xb, yb = data.arrays(b, order[t])
        losses[t] = loss_and_backward(model, loss, xb, yb)
        grads = [Backend.to_numpy(m.grads[k]) for m, k in groups]
        opt.step()
        w_new = [Backend.to_numpy(m.params[k]) for m, k in groups]
        for i, (w0, w1, g) in enumerate(zip(w_old, w_new, grads)):
            u = w1 - w0
            n[t + 1, i], g2[t, i], rho[t, i] = np.sum(w1 * w1), np.sum(g * g), np.sum(w0 * g)
            a[t, i], bb[t, i] = np.sum(w0 * u), np.sum(u * u)
            # the angle from the chord between unit vectors: accurate for tiny angles
            chord = np.linalg.norm(w1 / math.sqrt(n[t + 1, i]) - w0 / math.sqrt(n[t, i]))
            ang[t, i] = 2.0 * math.asin(min(1.0, chord / 2.0))
        w_old = w_new
    out: dict[str, Any] = {"loss": _sample(losses, windows),
                           "effective_lr": _sample(lr / n[:-1], windows),
                           "norm_growth": (n[-1] / n[0]).tolist()}
    if kind == "gd":
        # Li–Arora: ‖w_{t+1}‖² = ‖w_t‖² + η²‖g_t‖² (exact when ⟨w, g⟩ = 0)
        resid = np.abs(n[1:] - n[:-1] - lr * lr * g2) / n[1:]
        out["li_arora_residual"] = float(resid.max())
        out["li_arora_residual_predicted"] = float((np.abs(2 * lr * rho) / n[1:]).max())
        return out
    s = int(steps * (1 - window))
    unit = (g2 * n[:-1])[s:].mean(axis=0)
    out.update(
        angular_update=np.sqrt((ang[s:] ** 2).mean(axis=0)).tolist(),
        angular_update_curve=np.sqrt(np.asarray(_sample(ang ** 2, windows))).tolist(),
        equilibrium_norm=np.sqrt(n[s:-1].mean(axis=0)).tolist(),
        unit_grad_sq=unit.tolist(),
        equilibrium_effective_lr=(lr / n[s:-1].mean(axis=0)).tolist(),
        stationarity_defect=[stationarity_defect(n[:, i], a[:, i], bb[:, i], rho[:, i], lr,
                                                 weight_decay, momentum, s) for i in range(L)],
        chord_ratio=((bb[s:].mean(axis=0) / n[s:-1].mean(axis=0))
                     / (2 * lr * weight_decay / (1 + momentum))).tolist(),
        window_start=s)
    return out


def _leaf_optimizers(model: an.nn.Module, invariant: set[int], lr: float, momentum: float,
                     weight_decay: float, explr: bool, beta: float) -> list[tuple[SGD, bool]]:
    """One SGD per module that owns parameters: on the scale-invariant ones either weight
    decay or (``explr``) none with the buffer Li & Arora's equivalence needs; the others
    plain SGD with momentum in both runs."""
    out = []
    for _, m in model.named_modules():
        if not m.params or m.children():
            continue
        if id(m) not in invariant:
            out.append((SGD(m, lr, momentum), False))
        elif not explr:
            out.append((SGD(m, lr, momentum, weight_decay=weight_decay), True))
        else:
            opt = SGD(m, lr, momentum)
            if momentum:
                opt.state["weight"] = {"momentum_buffer": m.params["weight"] * (-(beta - 1.0) / lr)}
            out.append((opt, True))
    return out


def _explr_point(*, norm: str, eps_mode: str, momentum: float, lr: float, weight_decay: float,
                 depth: int, width: int, batch: int, samples: int, d_in: int, steps: int,
                 windows: int, backend: str, dtype: str, seed: int) -> dict[str, Any]:
    """Weight decay vs the exponential learning rate, side by side on the same minibatches."""
    b = Backend(backend, dtype)
    data = make_task("teacher", samples, point_rng(seed, "train-data"), d_in=d_in)
    beta = 1.0 / exp_lr_alpha(lr, weight_decay, momentum)
    runs = []
    for explr in (False, True):
        model = _model(norm, depth, width, seed, ("explr", norm), b, d_in)
        if eps_mode == "eps0":
            set_norm_eps(model, 0.0)
        groups = scale_invariant_groups(model)
        opts = _leaf_optimizers(model, {id(m) for m, _ in groups}, lr, momentum, weight_decay,
                                explr, beta)
        runs.append((model, groups, opts))
    loss = data.loss()
    order = minibatches(point_rng(seed, "train-batches"), data.n, batch, steps)
    angle, scale_err, other = np.zeros(steps), np.zeros(steps), np.zeros(steps)
    for t in range(steps):
        xb, yb = data.arrays(b, order[t])
        for explr, (model, _, opts) in zip((False, True), runs):
            loss_and_backward(model, loss, xb, yb)
            for opt, inv in opts:
                if explr and inv:
                    opt.lr = lr * beta ** (2 * t + 1)
                opt.step()
        (ma, ga, _), (mb, gb, _) = runs
        worst, err = 0.0, 0.0
        for (m1, k), (m2, _) in zip(ga, gb):
            w1, w2 = Backend.to_numpy(m1.params[k]), Backend.to_numpy(m2.params[k])
            n1, n2 = np.linalg.norm(w1), np.linalg.norm(w2)
            worst = max(worst, 2.0 * math.asin(min(1.0, np.linalg.norm(w1 / n1 - w2 / n2) / 2.0)))
            err = max(err, abs(n2 / (n1 * beta ** (t + 1)) - 1.0))
        inv_ids = {id(m) for m, _ in ga}
        diff = [np.linalg.norm(Backend.to_numpy(m1.params[k]) - Backend.to_numpy(m2.params[k]))
                / np.linalg.norm(Backend.to_numpy(m1.params[k]))
                for (_, m1, k), (_, m2, _) in zip(ma.parameter_slots(), mb.parameter_slots())
                if id(m1) not in inv_ids]
        angle[t], scale_err[t], other[t] = worst, err, max(diff)
    return {"max_angle": float(angle.max()), "angle_curve": _sample(angle, windows),
            "scale_error": float(scale_err.max()), "other_params_difference": float(other.max()),
            "lr_growth": beta ** (2 * steps)}


# ----------------------------------------------------------------------------- the study
@study("scale-invariance",
       quick=dict(norms=("batch", "layer", "weight_norm"), depth=3, width=16,
                  eps_grid=(1e-8, 1e-6, 1e-4, 1e-2), gd_steps=60, smd_steps=300, explr_steps=60,
                  samples=128),
       report=dict(smd_steps=1200, gd_steps=200, explr_steps=200))
def scale_invariance(ctx: Context, *, norms: tuple[str, ...] = NORMS, depth: int = 4,
                     width: int = 32, batch: int = 32, samples: int = 256, d_in: int = 8,
                     scale: float = 3.7,
                     eps_grid: tuple[float, ...] = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
                     train_norm: str = "batch", lr: float = 0.1, gd_steps: int = 300,
                     smd_lr: float = 0.1, weight_decay: float = 0.1,
                     momenta: tuple[float, ...] = (0.0, 0.9), smd_steps: int = 2000,
                     window: float = 0.5, explr_lr: float = 0.01, explr_steps: int = 300,
                     windows: int = 40) -> Outcome:
    """Scale invariance of normalized weights: identities, effective learning rate, spherical motion, weight decay ≡ exponential lr.

    Parameters
    ----------
    norms : normalizations whose identities are measured (among "batch", "layer", "group",
        "rms", "weight_norm"); each both as one layer (depth 1) and as a stack of ``depth``;
        each also trained by plain SGD for the Li–Arora identity (eps = 0 and default).
    depth, width : the stacks (Linear without bias → norm → ReLU, linear read-out).
    batch, samples, d_in : minibatch size, training-set size and input width of the
        teacher–student regression every part uses.
    scale : the factor c of the identities (the whole-stack check draws one per layer).
    eps_grid : eps values of the sweep of the radial gradient against eps/σ².
    train_norm : the activation normalization of the spherical-motion and exponential-lr
        runs ("batch", "layer", "group", "rms").
    lr, gd_steps : plain SGD (no momentum, no weight decay) of the Li–Arora runs.
    smd_lr : the effective learning rate η/(1 − μ) of the spherical-motion runs (η = smd_lr·(1 − μ),
        so that every momentum relaxes on the same time scale); weight_decay : λ (L2, PyTorch's form).
    momenta : momentum values μ of the spherical-motion and exponential-lr runs.
    smd_steps, window : length of the spherical-motion runs and the final fraction averaged.
    explr_lr, explr_steps : η and length of the weight-decay/exponential-lr pairs (same λ).
    windows : points of each stored curve.
    """
    fname = "scale-invariance"
    norms = check_choices(fname, "norms", norms, NORMS)
    check_choices(fname, "train_norm", train_norm, _ACTIVATION_NORMS)
    for name, v in (("depth", depth), ("width", width), ("batch", batch), ("samples", samples),
                    ("d_in", d_in), ("gd_steps", gd_steps), ("smd_steps", smd_steps),
                    ("explr_steps", explr_steps), ("windows", windows)):
        if v < 1:
            raise ValueError(f"{fname}: {name} must be >= 1, got {v}")
    if batch < 2 or scale <= 0 or scale == 1 or not 0 < window < 1 or smd_steps < 4:
        raise ValueError(f"{fname}: need batch >= 2, scale > 0 and != 1, 0 < window < 1, "
                         f"smd_steps >= 4; got batch={batch}, scale={scale}, window={window}, "
                         f"smd_steps={smd_steps}")
    if not eps_grid or min(eps_grid) <= 0:
        raise ValueError(f"{fname}: eps_grid must hold positive eps values, got {eps_grid}")
    if not momenta or any(not 0 <= m < 1 for m in momenta):
        raise ValueError(f"{fname}: momenta must be in [0, 1), got {momenta}")
    if min(lr, smd_lr, weight_decay, explr_lr) <= 0:
        raise ValueError(f"{fname}: lr, smd_lr, weight_decay and explr_lr must be > 0")
    common = dict(width=width, d_in=d_in, **ctx.point_options())
    train = dict(common, depth=depth, batch=batch, samples=samples, windows=windows)

    id_points = [dict(norm=n, depth=d, batch=batch, scale=scale, eps_grid=tuple(eps_grid), **common)
                 for n in norms for d in dict.fromkeys((1, depth))]
    gd_points = [dict(kind="gd", norm=n, eps_mode=e, momentum=0.0, lr=lr, weight_decay=0.0,
                      steps=gd_steps, window=window, **train)
                 for n in norms for e in (("eps0",) if n in _NO_EPS else ("eps0", "default_eps"))]
    smd_points = [dict(kind="smd", norm=train_norm, eps_mode="default_eps", momentum=mu,
                       lr=smd_lr * (1 - mu), weight_decay=weight_decay, steps=smd_steps,
                       window=window, affine=False, **train) for mu in momenta]
    ex_points = [dict(norm=train_norm, eps_mode=e, momentum=mu, lr=explr_lr,
                      weight_decay=weight_decay, steps=explr_steps, **train)
                 for mu in momenta for e in ("eps0", "default_eps")]
    ids = ctx.map(_identity_point, id_points, desc="identities")
    runs = ctx.map(_train_point, gd_points + smd_points, desc="training")
    exs = ctx.map(_explr_point, ex_points, desc="weight decay vs exp lr")
    gds, smds = runs[:len(gd_points)], runs[len(gd_points):]

    parts = ("identities", "eps_sweep", "li_arora", "smd", "exp_lr")
    measured: dict[str, Any] = {k: {} for k in parts}
    theory: dict[str, Any] = {k: {} for k in parts}
    table: list[dict[str, Any]] = []

    def row(part: str, config: str, quantity: str, meas: Any, th: Any) -> None:
        table.append({"part": part, "configuration": config, "quantity": quantity,
                      "measured": meas, "theory": th})

    for p, r in zip(id_points, ids):
        n, where = p["norm"], ("layer" if p["depth"] == 1 else "stack")
        m = _identity_summary(r)
        measured["identities"].setdefault(n, {})[where] = m
        th_eps = {"radial_gradient": m["default_eps"]["radial_gradient_theory"],
                  "loss_residual": (0.0 if n in _NO_EPS
                                    else m["default_eps"]["loss_residual_first_order"])}
        theory["identities"].setdefault(n, {})[where] = {
            "eps0": {"loss_residual": 0.0, "grad_residual": 0.0, "radial_cosine": 0.0},
            "default_eps": th_eps}
        config = f"{n}, {'one layer' if where == 'layer' else f'stack of {depth}'}"
        for mode in (("eps0",) if n in _NO_EPS else ("eps0", "default_eps")):
            mm = m[mode]
            ws = mm["whole_stack"]
            row("identities", config + (", eps=0" if mode == "eps0" else f", eps={mm['eps']:.3g}"),
                "worst |ΔL|/L, ‖c∇L(cW)−∇L‖/‖∇L‖, |cos(W,∇L)| (layers and whole stack)",
                [max(max(mm["per_layer"]["loss_residual"]), ws["loss_residual"]),
                 max(mm["grad_residual"], ws["grad_residual"]), mm["radial_cosine"]],
                "0 (rounding)" if mode == "eps0" else "first order in eps/σ²")
        if n not in _NO_EPS:
            de = m["default_eps"]
            row("identities", config + f", eps={de['eps']:.3g}",
                "largest ⟨W,∇_W L⟩ (theory −2eps∂L/∂eps)", de["radial_gradient"],
                de["radial_gradient_theory"])
            row("identities", config + f", eps={de['eps']:.3g}",
                "its layer's |ΔL|/L (theory (1−c⁻²)/2·|⟨W,∇L⟩|/L)", de["loss_residual"],
                de["loss_residual_first_order"])
        if where == "stack" and "eps_sweep" in r:
            sw = r["eps_sweep"]
            # the first-order regime: eps/σ² ≤ 1e-3 (at least the two smallest eps)
            keep = max(2, sum(v <= 1e-3 for v in sw["ratio"]))
            fit = fit_power(sw["ratio"][:keep], sw["radial_cosine"][:keep])
            fo = float(sw["loss_residual"][0] / sw["loss_residual_first_order"][0])
            measured["eps_sweep"][n] = {**sw, "slope": fit.slope,
                                        "slope_ci": list(fit.confidence_interval()),
                                        "loss_residual_to_first_order": fo}
            theory["eps_sweep"][n] = {"slope": 1.0, "loss_residual_to_first_order": 1.0}
            row("eps sweep", f"{n}, stack of {depth}, last hidden layer",
                "k in |cos(W,∇L)| ∝ (eps/σ²)^k", fit.slope, 1.0)
            row("eps sweep", f"{n}, stack of {depth}, eps/σ² = {sw['ratio'][0]:.1e}",
                "|ΔL| / ((1−c⁻²)/2·|⟨W,∇L⟩|)", fo, 1.0)
    for p, r in zip(gd_points, gds):
        n, mode = p["norm"], p["eps_mode"]
        measured["li_arora"].setdefault(n, {})[mode] = {
            "residual": r["li_arora_residual"], "norm_growth": r["norm_growth"],
            "effective_lr": r["effective_lr"], "loss": r["loss"]}
        pred = 0.0 if mode == "eps0" else r["li_arora_residual_predicted"]
        theory["li_arora"].setdefault(n, {})[mode] = {"residual": pred}
        config = f"{n}, plain SGD η={lr:g}, " + ("eps=0" if mode == "eps0" else "default eps")
        row("Li–Arora", config, "max |‖w_t+1‖² − ‖w_t‖² − η²‖g_t‖²| / ‖w_t+1‖²",
            r["li_arora_residual"], "0 (rounding)" if mode == "eps0" else f"2η|⟨w,g⟩|/‖w‖² ≤ {pred:.3g}")
        if mode == "eps0":
            row("Li–Arora", config, "‖w_T‖²/‖w_0‖² = η/‖w_0‖² ÷ η/‖w_T‖², per layer", r["norm_growth"], "≥ 1")
    for p, r in zip(smd_points, smds):
        mu, eta = p["momentum"], p["lr"]
        key = f"momentum {mu:g}"
        th_angle = smd_angular_update(eta, weight_decay, mu)
        th_norm = smd_equilibrium_norm(eta, weight_decay, mu, r["unit_grad_sq"])
        ratio = np.asarray(r["equilibrium_norm"]) / th_norm
        measured["smd"][key] = {**r, "lr": eta, "angular_update_mean": float(np.mean(r["angular_update"])),
                                "norm_to_theory": float(np.mean(ratio)),
                                "equilibrium_norm_theory": th_norm.tolist(),
                                "effective_lr_mean": float(np.mean(r["equilibrium_effective_lr"]))}
        theory["smd"][key] = {"angular_update_mean": th_angle, "norm_to_theory": 1.0,
                              "effective_lr_mean": float(np.mean(eta / th_norm ** 2)),
                              "angular_update_sqrt_approx": math.sqrt(2 * eta * weight_decay / (1 + mu))}
        config = f"{train_norm} (no affine), SGD η={eta:g} μ={mu:g} λ={weight_decay:g}"
        row("SMD", config, "angular update per step (rms over the window, per layer)",
            r["angular_update"], th_angle)
        row("SMD", config, "‖w‖ / ‖w*‖ (per layer)", ratio.tolist(), 1.0)
        row("SMD", config, "stationarity defect d (per layer)", r["stationarity_defect"], "0 at equilibrium")
    for p, r in zip(ex_points, exs):
        key = f"momentum {p['momentum']:g}"
        measured["exp_lr"].setdefault(key, {})[p["eps_mode"]] = r
        if p["eps_mode"] == "eps0":
            theory["exp_lr"].setdefault(key, {})["eps0"] = {"max_angle": 0.0, "scale_error": 0.0}
        row("WD ≡ exp lr", f"{train_norm}, η={explr_lr:g} μ={p['momentum']:g} λ={weight_decay:g}, "
            + ("eps=0" if p["eps_mode"] == "eps0" else "default eps"),
            "max angle between the runs (rad); max |‖w̃‖/(α⁻ᵗ‖w‖) − 1|",
            [r["max_angle"], r["scale_error"]],
            "0 (rounding)" if p["eps_mode"] == "eps0" else "broken by eps > 0")
    verdict = _verdict(measured, theory, norms)
    return Outcome(measured, theory, verdict, table)


def _identity_summary(r: dict[str, Any]) -> dict[str, Any]:
    """Per eps mode: the worst residuals over the layers scaled one at a time
    (``loss_residual``, ``grad_residual``, ``radial_cosine``), the whole stack scaled at once,
    the per-layer lists; with the default eps also the largest radial gradient ⟨W, ∇_W L⟩,
    its Euler-identity theory and, for that same layer, the loss residual and its first-order
    prediction."""
    out: dict[str, Any] = {}
    for mode in ("eps0", "default_eps"):
        d = r[mode]
        m = {"loss_residual": max(d["loss_residual"]), "grad_residual": max(d["grad_residual"]),
             "radial_cosine": float(np.max(np.abs(d["radial_cosine"]))),
             "per_layer": {k: d[k] for k in ("loss_residual", "grad_residual", "radial_cosine",
                                             "radial_gradient")},
             "whole_stack": {"loss_residual": d["whole_loss_residual"],
                             "grad_residual": d["whole_grad_residual"]}}
        if mode == "default_eps":
            i = int(np.argmax(np.abs(d["radial_gradient"])))
            m.update(eps=d["eps"], radial_gradient=d["radial_gradient"][i],
                     radial_gradient_theory=(d["radial_gradient_theory"][i]
                                             if d["radial_gradient_theory"] else 0.0),
                     loss_residual=d["loss_residual"][i],
                     loss_residual_first_order=d["loss_residual_first_order"][i],
                     radial_gradient_theory_per_layer=d["radial_gradient_theory"])
        out[mode] = m
    return out


def _verdict(m: dict[str, Any], t: dict[str, Any], norms: tuple[str, ...]) -> str:
    ident = m["identities"]
    worst0 = max(max(v["eps0"]["loss_residual"], v["eps0"]["grad_residual"], v["eps0"]["radial_cosine"],
                     *v["eps0"]["whole_stack"].values())
                 for n in ident.values() for v in n.values())
    with_eps = {n: max(v["default_eps"]["grad_residual"] for v in d.values())
                for n, d in ident.items() if n not in _NO_EPS}
    parts = [f"with eps = 0 the identities hold to rounding (worst residual {worst0:.1e} over "
             f"{', '.join(norms)}, single layers and stacks)"]
    if with_eps:
        worst_n = max(with_eps, key=with_eps.get)
        slopes = [v["slope"] for v in m["eps_sweep"].values()]
        parts.append(f"the default eps breaks them by up to {with_eps[worst_n]:.1e} in the gradient "
                     f"({worst_n}); the radial gradient grows as (eps/σ²)^k, k = "
                     f"{min(slopes):.3f}–{max(slopes):.3f} (theory 1)" if slopes else "")
    la = [v["residual"] for d in m["li_arora"].values() for e, v in d.items() if e == "eps0"]
    if la:
        growth = [g for d in m["li_arora"].values() for v in d.values() for g in v["norm_growth"]]
        parts.append(f"Li–Arora's ‖w_{{t+1}}‖² = ‖w_t‖² + η²‖g_t‖² holds to {max(la):.1e} under plain "
                     f"SGD (norms grow ×{min(growth):.2f}–{max(growth):.2f}, effective lr falls as much)")
    for key, d in m["smd"].items():
        th = t["smd"][key]["angular_update_mean"]
        worst = max(d["stationarity_defect"], key=abs)
        state = ("at equilibrium" if abs(worst) < 0.05
                 else "not yet at equilibrium: run longer")
        parts.append(f"SMD {key}: angular update {d['angular_update_mean']:.4f} rad (theory {th:.4f}), "
                     f"‖w‖ at {d['norm_to_theory']:.3f} of the predicted equilibrium "
                     f"(stationarity defect up to {worst:+.3f}, {state})")
    for key, d in m["exp_lr"].items():
        s = f"weight decay ≡ exponential lr ({key}): directions coincide to {d['eps0']['max_angle']:.1e} rad"
        if "default_eps" in d:
            s += f" with eps = 0, {d['default_eps']['max_angle']:.1e} with the default eps"
        parts.append(s)
    return "; ".join(p for p in parts if p) + "."


@register_plotter("scale-invariance")
def _plot(r: Any) -> Any:
    m, t = r.measured, r.theory
    fig, ax = figure(3, 2, title="scale invariance and the effective learning rate")
    norms = list(m["identities"])
    col = colors(list(NORMS) + ["momentum 0", "momentum 0.9"])
    x = np.arange(len(norms))
    for j, (mode, label) in enumerate((("eps0", "eps = 0"), ("default_eps", "default eps"))):
        vals = [max(max(v[mode]["grad_residual"], v[mode]["loss_residual"],
                        *v[mode]["whole_stack"].values(), 1e-18)
                    for v in m["identities"][n].values()) for n in norms]
        ax[0].bar(x + 0.4 * j - 0.2, vals, 0.4, label=label, color=("C0", "C3")[j])
    ax[0].set_yscale("log")
    ax[0].set_xticks(x, norms, fontsize=7)
    ax[0].set(ylabel="worst residual of L(cW)=L(W), c∇L(cW)=∇L(W)", title="identities")
    for n, sw in m["eps_sweep"].items():
        ratio = np.asarray(sw["ratio"])
        ax[1].loglog(ratio, sw["radial_cosine"], "o-", ms=3, color=col[n], label=f"{n} (k={sw['slope']:.2f})")
    if m["eps_sweep"]:
        ax[1].loglog(ratio, ratio * sw["radial_cosine"][0] / ratio[0], "k--", lw=0.8, label="slope 1")
    ax[1].set(xlabel="eps/σ²", ylabel="|cos(W, ∇L)|", title="eps breaks invariance at first order")
    for n, d in m["li_arora"].items():
        e = d.get("eps0")
        if e is None:
            continue
        curve = np.asarray(e["effective_lr"])
        steps = np.linspace(0, r.params["gd_steps"], len(curve))
        for i in range(curve.shape[1]):
            ax[2].semilogy(steps, curve[:, i], color=col[n], lw=1, label=n if i == 0 else None)
    ax[2].set(xlabel="step", ylabel="η/‖W_ℓ‖²", title="plain SGD: effective lr per layer falls")
    for key, d in m["smd"].items():
        curve = np.asarray(d["effective_lr"])
        steps = np.linspace(0, r.params["smd_steps"], len(curve))
        c = col.get(key, "k")
        for i in range(curve.shape[1]):
            ax[3].semilogy(steps, curve[:, i], color=c, lw=1, label=key if i == 0 else None)
        for v in d["lr"] / np.asarray(d["equilibrium_norm_theory"]) ** 2:
            ax[3].axhline(v, color=c, lw=0.6, ls="--")
        ang = np.asarray(d["angular_update_curve"])
        steps = np.linspace(0, r.params["smd_steps"], len(ang))
        for i in range(ang.shape[1]):
            ax[4].plot(steps, ang[:, i], color=c, lw=1, label=key if i == 0 else None)
        ax[4].axhline(t["smd"][key]["angular_update_mean"], color=c, ls="--", lw=0.8)
    ax[3].set(xlabel="step", ylabel="η/‖W_ℓ‖²", title="with weight decay: equilibrium (dashed: SMD)")
    ax[4].set(xlabel="step", ylabel="angle(w_t, w_t+1) (rad)", title="angular update per layer (dashed: Δ* of SMD)")
    for key, d in m["exp_lr"].items():
        for mode, ls in (("eps0", "-"), ("default_eps", ":")):
            if mode in d:
                c = np.maximum(np.asarray(d[mode]["angle_curve"], dtype=float), 1e-17)
                ax[5].semilogy(np.linspace(0, r.params["explr_steps"], len(c)), c, ls=ls,
                               color=col.get(key, "k"), label=f"{key}, {mode}")
    ax[5].set(xlabel="step", ylabel="angle between the runs (rad)", title="weight decay vs exponential lr")
    for a in ax:
        a.legend(fontsize=6)
    return fig
