"""Batch size: the classification error of a small CNN with BN, GN, LN, IN and no
normalization across batch sizes (Wu & He 2018, "Group Normalization", Fig. 1 and §4.1).

BN normalizes each channel with the mean and variance of the current batch,

    y = γ (x − μ_B) / sqrt(σ²_B + eps) + β,   μ_B, σ²_B over (N, H, W),

so its output for one image depends on the other images of the batch. With small batches
these statistics are noisy in training, and at evaluation they are replaced by running
averages (momentum 0.1, PyTorch's convention) that the small-batch network was never trained
with. Wu & He report that BN's ImageNet error rises from 23.6% at 32 images per batch to 34.7%
at 2, while GN — statistics per sample over groups of channels, the same in training and at
evaluation — stays at 24.1% ± 0.2 over the whole range; LN (GN with one group) and IN (one
channel per group) are batch-independent too, at a higher error.

The measurement: :func:`arraynorm.nn.cnn_stack` (conv–norm–ReLU blocks with max pooling
between them, global average pooling, a linear head; He initialization, no conv bias before
a normalization) on scikit-learn's bundled 8×8 digits (no download; a fixed split, see
:mod:`._digits`), trained by SGD with momentum on the cross-entropy for the same number of
epochs at every batch size B, with the learning rate scaled linearly, lr(B) = lr · B / 16
(Goyal et al. 2017; Wu & He use the same rule): at a fixed number of epochs, k steps of batch
B with lr(B) approximate one step of batch kB with lr(kB), so the optimization trajectory is
nearly batch-size independent and what changes with B is the normalization's statistics.
(A fixed per-sample learning rate lr/B is the same rule.) Seed r draws the conv weights and
the minibatch order; every normalization and batch size of seed r starts from the same
weights (a paired comparison).

Test error, per normalization and batch size (mean, standard deviation and range over seeds):

* BN with its running statistics (the usual evaluation, ``model.eval()``);
* BN with batch statistics at evaluation: the test set fed in consecutive batches of B
  images (sizes B to 2B − 1), each normalized by its own statistics — what the network saw
  in training;
* BN with the whole test set's statistics (one batch of all test images): exact population
  statistics of the test features, free of the running average's lag and noise;
* GN, LN, IN and none: per-sample statistics, the same in training and evaluation.

There is no closed form for these errors (no theory column). A run whose loss becomes
non-finite is stopped and scored as error 1.0 (no valid prediction).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

import arraynorm as an

from ._backend import Backend, point_rng
from ._digits import classification_error, digits_split, require_sklearn, train_classifier
from ._plot import colors, figure
from ._result import register_plotter
from ._study import Context, Outcome, check_choices, study

__all__ = ["batch_size", "NORMS", "REFERENCE_BATCH", "batch_statistics"]

NORMS = ("batch", "group", "layer", "instance", "none")
#: the batch size at which the learning rate equals the ``lr`` option
REFERENCE_BATCH = 16
#: BN's evaluations: running statistics, statistics of test batches of the training size,
#: statistics of the whole test set
BN_EVALS = ("error", "error_batch_stats", "error_test_stats")


@contextlib.contextmanager
def batch_statistics(model: an.nn.Module) -> Iterator[an.nn.Module]:
    """Inside the block, every :class:`BatchNorm` of ``model`` normalizes with the statistics
    of the batch it is given and leaves its running statistics as they are (eval mode with
    ``track_running_stats`` off); restored afterwards."""
    bns = [m for _, m in model.named_modules() if isinstance(m, an.nn.BatchNorm)]
    saved = [m.track_running_stats for m in bns]
    try:
        for m in bns:
            m.track_running_stats = False
        yield model
    finally:
        for m, s in zip(bns, saved):
            m.track_running_stats = s


def _train_point(*, norm: str, batch: int, rep: int, lr: float, momentum: float, epochs: float,
                 channels: tuple[int, ...], groups: int, test: int, backend: str, dtype: str,
                 seed: int) -> dict[str, Any]:
    """One training run: the test errors (three evaluations for BN), the mean minibatch loss
    over the last tenth of the steps, and whether it diverged."""
    b = Backend(backend, dtype)
    train, held_out = digits_split(test)
    model = an.nn.cnn_stack(channels, norm=norm, num_classes=10,
                            norm_kwargs={"num_groups": groups} if norm == "group" else None,
                            rng=point_rng(seed, "weights", rep), xp=b.xp, dtype=b.dtype)
    losses, diverged = train_classifier(
        model, train, b, batch=batch, lr=lr * batch / REFERENCE_BATCH, momentum=momentum,
        samples=round(epochs * train.n), rng=point_rng(seed, "batches", rep, batch))
    out: dict[str, Any] = {"diverged": diverged,
                           "train_loss": math.inf if diverged else
                           float(np.mean(losses[-max(len(losses) // 10, 1):]))}
    model.eval()
    if diverged:
        return {**out, **{k: 1.0 for k in BN_EVALS if norm == "batch" or k == "error"}}
    out["error"] = classification_error(model, held_out, b)
    if norm == "batch":
        with batch_statistics(model):
            out["error_batch_stats"] = classification_error(model, held_out, b,
                                                            chunks=max(held_out.n // batch, 1))
            out["error_test_stats"] = classification_error(model, held_out, b)
    return out


def _spread(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


@study("batch-size",
       quick=dict(norms=("batch", "group"), batches=(2, 16), seeds=1, epochs=0.5, test=297),
       report=dict(norms=("batch", "group"), batches=(2, 4, 8, 16), seeds=2, epochs=2.0))
def batch_size(ctx: Context, *, norms: tuple[str, ...] = NORMS,
               batches: tuple[int, ...] = (2, 4, 8, 16, 32), seeds: int = 3,
               epochs: float = 6.0, lr: float = 0.05, momentum: float = 0.9,
               channels: tuple[int, ...] = (8, 16, 32), groups: int = 4,
               test: int = 797) -> Outcome:
    """Test error of a small CNN on the digits across batch sizes: BN degrades at small batches, GN does not (Wu & He).

    Parameters
    ----------
    norms : among "batch", "group", "layer" (GN with one group), "instance", "none".
    batches : training batch sizes (each >= 2).
    seeds : independent runs (initial weights and minibatch order) per configuration.
    epochs : passes over the training set, the same for every batch size (samples seen =
        epochs × training-set size; minibatches drawn with replacement).
    lr : learning rate at batch size 16; batch B trains with lr · B / 16 (linear scaling).
    momentum : SGD momentum (PyTorch's convention).
    channels : output channels of the conv blocks of :func:`arraynorm.nn.cnn_stack`.
    groups : GN's groups per layer (must divide every entry of ``channels``).
    test : held-out images (the rest of the 1797 train).
    """
    fname = "batch-size"
    require_sklearn()
    norms = check_choices(fname, "norms", norms, NORMS)
    if not batches or min(batches) < 2:
        raise ValueError(f"{fname}: batches must be batch sizes >= 2, got {batches}")
    if seeds < 1 or not (epochs > 0 and math.isfinite(epochs)):
        raise ValueError(f"{fname}: need seeds >= 1 and epochs > 0, got seeds={seeds}, "
                         f"epochs={epochs}")
    if not (lr > 0 and math.isfinite(lr)) or not 0 <= momentum < 1:
        raise ValueError(f"{fname}: need lr > 0 and 0 <= momentum < 1, got lr={lr}, "
                         f"momentum={momentum}")
    if "group" in norms and (groups < 1 or any(c % groups for c in channels)):
        raise ValueError(f"{fname}: groups must divide every entry of channels={channels}, "
                         f"got {groups}")
    digits_split(test)  # validates test
    batches = tuple(sorted(set(batches)))
    points = [dict(norm=n, batch=bs, rep=r, lr=lr, momentum=momentum, epochs=epochs,
                   channels=channels, groups=groups, test=test, **ctx.point_options())
              for n in norms for bs in batches for r in range(seeds)]
    runs = ctx.map(_train_point, points, desc="batch-size")
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for p, r in zip(points, runs):
        by.setdefault((p["norm"], p["batch"]), []).append(r)

    measured: dict[str, Any] = {"batches": list(batches)}
    table = []
    for n in norms:
        m: dict[str, Any] = {}
        for key in (BN_EVALS if n == "batch" else ("error",)) + ("train_loss",):
            cells = [_spread([r[key] for r in by[(n, bs)]]) for bs in batches]
            m[key] = [c["mean"] for c in cells]
            for stat in ("std", "min", "max"):
                m[f"{key}_{stat}"] = [c[stat] for c in cells]
            m[f"{key}_per_seed"] = [[r[key] for r in by[(n, bs)]] for bs in batches]
        m["diverged"] = [sum(bool(r["diverged"]) for r in by[(n, bs)]) for bs in batches]
        m["range_over_batches"] = float(max(m["error"]) - min(m["error"]))
        measured[n] = m
        for i, bs in enumerate(batches):
            row = {"norm": n, "batch": bs, "lr": lr * bs / REFERENCE_BATCH,
                   "test error": m["error"][i], "± std": m["error_std"][i]}
            if n == "batch":
                row["error, batch stats"] = m["error_batch_stats"][i]
                row["error, test-set stats"] = m["error_test_stats"][i]
            row["train loss"] = m["train_loss"][i]
            table.append(row)
    return Outcome(measured, {}, _verdict(measured, norms, batches, seeds), table)


def _pm(m: dict[str, Any], key: str, i: int) -> str:
    return f"{100 * m[key][i]:.1f} ± {100 * m[f'{key}_std'][i]:.1f}%"


def _verdict(meas: dict[str, Any], norms: tuple[str, ...], batches: tuple[int, ...],
             seeds: int) -> str:
    lo, hi = batches[0], batches[-1]
    parts = []

    def loss_ratio(m: dict[str, Any]) -> float:
        return m["train_loss"][0] / m["train_loss"][-1]

    if "batch" in norms:
        bn = meas["batch"]
        rises = bn["error"][0] > bn["error"][-1]
        parts.append(f"BN with running statistics {_pm(bn, 'error', 0)} at batch {lo} vs "
                     f"{_pm(bn, 'error', -1)} at {hi} ("
                     + ("higher at the small batch" if rises else "not higher at the small batch")
                     + f"); with batch statistics at evaluation {_pm(bn, 'error_batch_stats', 0)} vs "
                     f"{_pm(bn, 'error_batch_stats', -1)}; with the whole test set's statistics "
                     f"{_pm(bn, 'error_test_stats', 0)} at {lo}; training loss ×{loss_ratio(bn):.2g} "
                     f"at batch {lo} vs {hi}")
    for n, label in (("group", "GN"), ("layer", "LN"), ("instance", "IN"), ("none", "none")):
        if n in norms:
            m = meas[n]
            parts.append(f"{label} {100 * min(m['error']):.1f}–{100 * max(m['error']):.1f}% "
                         f"across batches (seed std up to {100 * max(m['error_std']):.1f}), "
                         f"training loss ×{loss_ratio(m):.2g}")
    div = sum(sum(meas[n]["diverged"]) for n in norms)
    tail = f" ({seeds} seed{'s' if seeds > 1 else ''}, mean ± std" + \
        (f"; {div} runs diverged, scored 1.0" if div else "") + ")"
    return "; ".join(parts) + tail + "."


@register_plotter("batch-size")
def _plot(r: Any) -> Any:
    m = r.measured
    norms = [n for n in NORMS if n in m]
    col = colors(NORMS)
    x = np.asarray(m["batches"], dtype=float)
    fig, ax = figure(3, title=f"test error vs batch size (digits, cnn_stack {tuple(r.params['channels'])}, "
                              f"{r.params['epochs']:g} epochs, lr ∝ batch, {r.params['seeds']} seeds)")
    labels = {"batch": "BN", "group": "GN", "layer": "LN", "instance": "IN", "none": "none"}

    def band(a: Any, key: str, d: dict[str, Any], color: str, label: str, ls: str = "-") -> None:
        a.plot(x, 100 * np.asarray(d[key], dtype=float), ls, marker="o", ms=3, color=color,
               label=label)
        a.fill_between(x, 100 * np.asarray(d[f"{key}_min"], dtype=float),
                       100 * np.asarray(d[f"{key}_max"], dtype=float), color=color, alpha=0.15)

    def bars(a: Any, key: str, d: dict[str, Any], i: int, color: str, label: str,
             scale: float = 100.0) -> None:
        # mean ± std over seeds, the norms side by side (a small shift along the log axis)
        xs = x * 2.0 ** (0.06 * (i - (len(norms) - 1) / 2))
        a.errorbar(xs, scale * np.asarray(d[key], dtype=float),
                   yerr=scale * np.asarray(d[f"{key}_std"], dtype=float), marker="o", ms=3,
                   capsize=2, lw=1.2, color=color, label=label)

    for i, n in enumerate(norms):
        bars(ax[0], "error", m[n], i, col[n], labels[n])
        bars(ax[2], "train_loss", m[n], i, col[n], labels[n], scale=1.0)
    if "batch" in m:
        bn, c = m["batch"], col["batch"]
        band(ax[1], "error", bn, c, "running statistics")
        band(ax[1], "error_batch_stats", bn, "k", "batch statistics (test batches of B)", "--")
        band(ax[1], "error_test_stats", bn, "0.5", "whole test set's statistics", ":")
        ax[0].plot(x, 100 * np.asarray(bn["error_batch_stats"], dtype=float), "--", color=c,
                   lw=1, label="BN, batch statistics at eval")
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xticks(x, [f"{int(v)}" for v in x])
        a.set_xlabel("training batch size (images)")
        a.legend(fontsize=7)
    ax[0].set(ylabel="test error (%), mean ± std over seeds")
    ax[1].set(ylabel="BN test error (%); band: range over seeds",
              title="BN: statistics used at evaluation")
    ax[2].set(ylabel="training loss (last 10% of steps)", yscale="log")
    return fig
