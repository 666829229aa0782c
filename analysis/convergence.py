"""Convergence: learning-rate sweeps on fixed synthetic tasks, with and without normalization,
and with gradient normalization or clipping (the survey's §1 and §5 claims that normalization
"accelerates convergence" and "allows larger learning rates").

Each point of the sweep is one training run — one (task, method, learning rate, seed) — by
SGD with momentum (arraynorm.optim, PyTorch's update rule) on a task of :mod:`._tasks`:
the two spirals of :mod:`arraynorm.data` (the demo's) (cross-entropy), a teacher–student regression
(MSE) and a majority-token sequence task for Transformer stacks (cross-entropy). A method is
a normalization known to :func:`arraynorm.nn.deep_stack` (``"none"``, ``"batch"``,
``"layer"``, ``"group"``, ``"rms"``, ``"weight_norm"`` …), optionally with a gradient
transform of the survey's third family: ``"+clip"`` (global-norm clipping to ``clip_norm``,
``max_grad_norm=``) or ``"+ngd"`` (:class:`arraynorm.optim.NormalizedSGD`, block-normalized
gradient: every parameter array moves by lr per step before momentum).

Definitions (the measurement, precisely):

* L₀, L_T — the loss on the whole training set before the first and after the last step,
  in training mode (batch statistics over the whole set, so BN is judged on the objective it
  optimizes, not on its running averages).
* a run is **stable** when L_T is finite and L_T < L₀; a run whose minibatch loss becomes
  non-finite or exceeds 10⁴·max(L₀, 1) is stopped and counted diverged. A learning rate is
  stable for a method when every seed's run is.
* the **largest stable learning rate** is the largest grid value η* such that every grid
  value ≤ η* is stable (a lucky isolated point above the first failure does not count); "≥"
  when η* is the top of the grid (the method never failed: the limit is censored).

No closed form gives a deep network's stability limit, so there is no theory column; the
mechanism the ``scale-invariance`` study measures is reported beside it: for scale-invariant
weights the effective learning rate η/‖W‖² falls as ‖W‖ grows, so for each method with such
weights the sweep records by what factor ‖W‖² grew over the run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import arraynorm as an
from arraynorm.optim import SGD, NormalizedSGD

from ._backend import Backend, point_rng
from ._plot import colors, figure
from ._result import register_plotter
from ._study import Context, Outcome, check_choices, study
from ._tasks import (SEQUENCE_NORMS, TASKS, build_model, evaluate, loss_and_backward,
                     make_task, minibatches, scale_invariant_groups)

__all__ = ["convergence", "GRADIENT_METHODS", "parse_method", "largest_stable"]

#: gradient transforms a method may add after "+"
GRADIENT_METHODS = ("clip", "ngd")
#: stop a run whose loss exceeds this multiple of max(L₀, 1)
DIVERGED = 1e4
_LRS = (0.001, 0.003162, 0.01, 0.03162, 0.1, 0.3162, 1.0, 3.162, 10.0)


def parse_method(method: str) -> tuple[str, str | None]:
    """A method's normalization and gradient transform.

    >>> parse_method("batch+clip"), parse_method("layer")
    (('batch', 'clip'), ('layer', None))
    """
    norm, _, grad = method.partition("+")
    if norm not in an.nn.NORMS or (grad and grad not in GRADIENT_METHODS):
        raise ValueError(f"convergence: a method is a normalization among {an.nn.NORMS}, "
                         f"optionally '+' one of {GRADIENT_METHODS}; got {method!r}")
    return norm, grad or None


def largest_stable(lrs: list[float], stable: list[bool]) -> float | None:
    """The largest ``lr`` such that every grid value up to it is stable (``None`` if the
    smallest is not).

    >>> largest_stable([0.1, 1.0, 10.0], [True, False, True])   # 10 is above a failure
    0.1
    """
    best = None
    for lr, ok in sorted(zip(lrs, stable)):
        if not ok:
            break
        best = lr
    return best


def _optimizer(model: an.nn.Module, grad: str | None, lr: float, momentum: float,
               clip_norm: float) -> SGD:
    if grad == "ngd":
        return NormalizedSGD(model, lr, momentum)
    return SGD(model, lr, momentum, max_grad_norm=clip_norm if grad == "clip" else None)


def _train_point(*, task: str, method: str, lr: float, rep: int, steps: int, batch: int,
                 samples: int, depth: int, width: int, momentum: float, clip_norm: float,
                 windows: int, backend: str, dtype: str, seed: int) -> dict[str, Any]:
    """One training run: initial and final whole-set loss and score, the windowed loss curve,
    the step it diverged at (or None) and the growth of ‖W‖² of the scale-invariant weights."""
    b = Backend(backend, dtype)
    # the data, the initial weights and the minibatch order depend on the task and the seed
    # only, so every method and learning rate starts from the same point (paired comparison)
    data = make_task(task, samples, point_rng(seed, "data", task))
    norm, grad = parse_method(method)
    model = build_model(data, norm, depth=depth, width=width, rng=point_rng(seed, "init", task, rep),
                        b=b)
    # the biases before a normalization break exact invariance but barely move ‖W‖
    groups = scale_invariant_groups(model, strict=False) if task != "sequence" else []
    sq0 = [float(np.sum(Backend.to_numpy(m.params[k]) ** 2)) for m, k in groups]
    loss = data.loss()
    opt = _optimizer(model, grad, lr, momentum, clip_norm)
    order = minibatches(point_rng(seed, "batches", task, rep), data.n, batch, steps)
    with np.errstate(all="ignore"):
        l0, s0 = evaluate(model, data, b)
        losses = np.full(steps, np.nan)
        diverged = None
        for t in range(steps):
            xb, yb = data.arrays(b, order[t])
            losses[t] = loss_and_backward(model, loss, xb, yb)
            if not math.isfinite(losses[t]) or losses[t] > DIVERGED * max(l0, 1.0):
                diverged = t
                break
            opt.step()
        lt, st = (math.inf, math.nan) if diverged is not None else evaluate(model, data, b)
    sq = [float(np.sum(Backend.to_numpy(m.params[k]) ** 2)) for m, k in groups]
    growth = float(np.mean(np.array(sq) / np.array(sq0))) if groups and diverged is None else None
    curve = [float(np.mean(w)) if np.all(np.isfinite(w)) else math.nan
             for w in np.array_split(losses, min(windows, steps))]
    return {"initial_loss": l0, "initial_score": s0, "final_loss": lt, "final_score": st,
            "diverged_step": diverged, "curve": curve, "weight_norm_growth": growth}


def _applies(task: str, method: str) -> bool:
    return task != "sequence" or parse_method(method)[0] in SEQUENCE_NORMS


@study("convergence",
       quick=dict(tasks=("spirals", "teacher", "sequence"), methods=("none", "batch", "layer", "none+clip"),
                  lrs=(0.03162, 0.1, 0.3162, 1.0, 3.162), steps=30, samples=256, depth=6, width=16,
                  seq_depth=1, seq_width=8),
       report=dict(steps=60, samples=512, lrs=_LRS[2:]))
def convergence(ctx: Context, *, tasks: tuple[str, ...] = TASKS,
                methods: tuple[str, ...] = ("none", "batch", "layer", "group", "rms", "weight_norm",
                                            "none+ngd", "none+clip"),
                lrs: tuple[float, ...] = _LRS, steps: int = 300, batch: int = 64,
                samples: int = 1024, depth: int = 6, width: int = 32, seq_depth: int = 1,
                seq_width: int = 16, momentum: float = 0.9, clip_norm: float = 1.0,
                seeds: int = 1, windows: int = 20) -> Outcome:
    """Learning-rate sweeps: final loss, accuracy and the largest stable learning rate per normalization.

    Parameters
    ----------
    tasks : among "spirals" (demo data, cross-entropy), "teacher" (regression, MSE; the score
        is R²), "sequence" (majority token, Transformer blocks; cross-entropy).
    methods : normalizations of :func:`arraynorm.nn.deep_stack` ("none", "batch", "layer",
        "group", "rms", "weight_norm", …; the sequence task takes none/batch/layer/rms),
        each optionally with "+clip" (global-norm clipping) or "+ngd" (normalized SGD).
    lrs : the learning-rate grid (log-spaced by default, 10⁻³ … 10).
    steps, batch : SGD steps and minibatch size of every run.
    samples : training-set size of every task.
    depth, width : hidden blocks and width of the MLPs (spirals, teacher).
    seq_depth, seq_width : Transformer blocks and model width of the sequence task.
    momentum : SGD momentum (PyTorch's convention), the same for every run.
    clip_norm : the global gradient norm of "+clip".
    seeds : independent runs (initializations and minibatch orders) per point.
    windows : points of each stored loss curve (means over windows of steps).
    """
    fname = "convergence"
    tasks = check_choices(fname, "tasks", tasks, TASKS)
    for m in methods:
        parse_method(m)
    if not lrs or min(lrs) <= 0 or not all(math.isfinite(v) for v in lrs):
        raise ValueError(f"{fname}: lrs must be positive finite learning rates, got {lrs}")
    for name, v in (("steps", steps), ("batch", batch), ("samples", samples), ("depth", depth),
                    ("width", width), ("seq_depth", seq_depth), ("seq_width", seq_width),
                    ("seeds", seeds), ("windows", windows)):
        if v < 1:
            raise ValueError(f"{fname}: {name} must be >= 1, got {v}")
    if seq_width % 2:
        raise ValueError(f"{fname}: seq_width must be even (two attention heads), got {seq_width}")
    if not 0 <= momentum < 1 or clip_norm <= 0:
        raise ValueError(f"{fname}: need 0 <= momentum < 1 and clip_norm > 0, got "
                         f"momentum={momentum}, clip_norm={clip_norm}")
    lrs = tuple(sorted(set(lrs)))
    methods = tuple(dict.fromkeys(methods))
    points = []
    for task in tasks:
        d, w = (seq_depth, seq_width) if task == "sequence" else (depth, width)
        for m in methods:
            if not _applies(task, m):
                continue
            for lr in lrs:
                for r in range(seeds):
                    points.append(dict(task=task, method=m, lr=lr, rep=r, steps=steps, batch=batch,
                                       samples=samples, depth=d, width=w, momentum=momentum,
                                       clip_norm=clip_norm, windows=windows, **ctx.point_options()))
    runs = ctx.map(_train_point, points, desc="convergence")
    by: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for p, r in zip(points, runs):
        by.setdefault((p["task"], p["method"], p["lr"]), []).append(r)

    measured: dict[str, Any] = {"lrs": list(lrs)}
    table = []
    for task in tasks:
        mt: dict[str, Any] = {}
        for m in methods:
            if not _applies(task, m):
                continue
            cells = [by[(task, m, lr)] for lr in lrs]
            final = [float(np.mean([r["final_loss"] for r in c])) for c in cells]
            score = [float(np.mean([r["final_score"] for r in c])) for c in cells]
            stable = [all(math.isfinite(r["final_loss"]) and r["final_loss"] < r["initial_loss"]
                          for r in c) for c in cells]
            top = largest_stable(list(lrs), stable)
            finite = [i for i, f in enumerate(final) if math.isfinite(f)]
            best = min(finite, key=lambda i: final[i]) if finite else None
            curves = np.array([[r["curve"] for r in c] for c in cells], dtype=float)
            growth = [None if any(r["weight_norm_growth"] is None for r in c)
                      else float(np.mean([r["weight_norm_growth"] for r in c])) for c in cells]
            mt[m] = {
                "initial_loss": float(np.mean([r["initial_loss"] for r in cells[0]])),
                "final_loss": final, "score": score, "stable": stable,
                "diverged_step": [[r["diverged_step"] for r in c] for c in cells],
                "largest_stable_lr": top, "censored": top == lrs[-1],
                "best_lr": None if best is None else lrs[best],
                "best_final_loss": None if best is None else final[best],
                "best_score": None if best is None else score[best],
                "curve_at_best_lr": None if best is None else curves[best].mean(axis=0).tolist(),
                "weight_norm_growth": growth,
            }
            i_top = None if top is None else lrs.index(top)
            table.append({
                "task": task, "method": m,
                "largest stable lr": None if top is None else (f"≥{top:g}" if top == lrs[-1] else f"{top:g}"),
                "best lr": mt[m]["best_lr"], "best final loss": mt[m]["best_final_loss"],
                "best score": mt[m]["best_score"],
                "‖W‖² growth @ η*": None if i_top is None else growth[i_top],
            })
        measured[task] = mt
    verdict = _verdict(measured, tasks, methods, lrs)
    return Outcome(measured, {}, verdict, table)


def _fmt_lr(m: dict[str, Any]) -> str:
    top = m["largest_stable_lr"]
    if top is None:
        return "none stable"
    return f"≥{top:g}" if m["censored"] else f"{top:g}"


def _verdict(meas: dict[str, Any], tasks: tuple[str, ...], methods: tuple[str, ...],
             lrs: tuple[float, ...]) -> str:
    parts, holds, compared = [], 0, 0
    for task in tasks:
        mt = meas[task]
        bits = []
        if "none" in mt and "batch" in mt:
            compared += 1
            holds += (mt["batch"]["largest_stable_lr"] or 0.0) >= (mt["none"]["largest_stable_lr"] or 0.0)
            bits.append(f"largest stable lr BN {_fmt_lr(mt['batch'])} vs none {_fmt_lr(mt['none'])}")
        widest = max(mt, key=lambda m: mt[m]["largest_stable_lr"] or 0.0)
        bits.append(f"widest {widest} ({_fmt_lr(mt[widest])})")
        done = [m for m in mt if mt[m]["best_final_loss"] is not None]
        if done:
            best = min(done, key=lambda m: mt[m]["best_final_loss"])
            bits.append(f"lowest loss {mt[best]['best_final_loss']:.3g} with {best} "
                        f"at lr {mt[best]['best_lr']:g}")
        parts.append(f"{task}: " + ", ".join(bits))
    head = (f"BN's largest stable learning rate ≥ the unnormalized network's on {holds} of "
            f"{compared} tasks" if compared else "no BN/none pair to compare")
    return head + " (" + "; ".join(parts) + ")."


@register_plotter("convergence")
def _plot(r: Any) -> Any:
    m = r.measured
    tasks = [t for t in TASKS if t in m]
    methods = list(dict.fromkeys(k for t in tasks for k in m[t]))
    col = colors(methods)
    fig, ax = figure(len(tasks), 2, title="learning-rate sweeps (final whole-set loss; curves at the best lr)")
    lrs = np.asarray(m["lrs"], dtype=float)
    for j, t in enumerate(tasks):
        top, bottom = ax[j], ax[len(tasks) + j]
        for meth, d in m[t].items():
            y = np.array([np.nan if v is None else v for v in d["final_loss"]], dtype=float)
            top.loglog(lrs, y, "o-", ms=3, color=col[meth], label=f"{meth} (η* {_fmt_lr(d)})")
            if d["largest_stable_lr"] is not None:
                top.axvline(d["largest_stable_lr"], color=col[meth], lw=0.6, ls=":")
            if d["curve_at_best_lr"] is not None:
                c = np.array([np.nan if v is None else v for v in d["curve_at_best_lr"]], dtype=float)
                bottom.semilogy(np.linspace(0, r.params["steps"], len(c)), c, color=col[meth],
                                label=f"{meth} (lr {d['best_lr']:g})")
            top.axhline(d["initial_loss"], color=col[meth], lw=0.6, ls="--")
        top.set(title=t, xlabel="learning rate", ylabel="final loss (dashed: L₀; dotted: η*)")
        bottom.set(xlabel="step", ylabel="minibatch loss")
        top.legend(fontsize=6)
        bottom.legend(fontsize=6)
    return fig
