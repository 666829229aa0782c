"""Training demo: a deep MLP with and without BatchNorm on two interleaved spirals.

    python -m arraynorm.demo                    # about 10 s on 2 CPU cores
    python -m arraynorm.demo --depth 20 --lr 0.1 --steps 1000

The survey's first claim for BN (Huang et al., arXiv 2009.12836, §1 and §5: "accelerating
convergence", "allowing larger learning rates") shown on a fixed synthetic task: the same
deep ReLU network (same He initialization, same seed, same mini-batches), trained by the same
SGD with momentum at the same learning rate, once plain and once with BatchNorm before every
activation. The script prints both training-loss curves (mean over each window of steps)
and the final loss and accuracy on the whole data set, in eval mode (running statistics).

Everything runs on NumPy through :mod:`arraynorm.nn` and :mod:`arraynorm.optim`; no autodiff.
The script sits above both (it is the top of the training layer, not part of ``nn``); its data
come from :mod:`arraynorm.data`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data import spirals
from .nn import CrossEntropyLoss, deep_stack
from .optim import SGD

__all__ = ["train", "run_demo", "main", "Result"]


@dataclass
class Result:
    """One training run: per-step training losses and the final full-data evaluation."""

    norm: str | None
    losses: np.ndarray
    final_loss: float
    final_accuracy: float
    seconds: float
    curve: list[float] = field(default_factory=list)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    # the matrices here are tiny (width 64): a multi-threaded BLAS spends more time waking
    # its threads than multiplying, and on a shared 2-core machine it is ~10x slower
    try:  # an optional dependency (the bench extra), imported only when the demo runs
        from threadpoolctl import threadpool_limits
    except ImportError:  # the demo is only slower without it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def train(norm: str | None, *, depth: int = 10, width: int = 64, lr: float = 0.05,
          momentum: float = 0.9, steps: int = 600, batch: int = 128, n_points: int = 2048,
          seed: int = 0, every: int = 50) -> Result:
    """Train ``deep_stack(depth, width, norm=norm)`` on :func:`spirals` by SGD; return the run.

    Deterministic for a given ``seed``: the data, the initialization and the mini-batch order
    are drawn from NumPy generators seeded by it (the same for both normalizations).
    """
    x, y = spirals(n_points, seed=1000 + seed)
    model = deep_stack(depth, width, in_features=2, out_features=2, norm=norm, activation="relu",
                       init="he", rng=seed)
    opt = SGD(model, lr=lr, momentum=momentum)
    loss = CrossEntropyLoss()
    order = np.random.default_rng(seed + 1)
    losses = np.empty(steps)
    t0 = time.perf_counter()
    with _one_blas_thread(), np.errstate(all="ignore"):
        for s in range(steps):
            idx = order.integers(0, n_points, batch)
            losses[s] = float(loss(model(x[idx]), y[idx]))
            model.backward(loss.backward())
            opt.step()
        model.eval().requires_grad_(False)
        logits = model(x)
        final = float(loss(logits, y))
        acc = float(np.mean(np.argmax(logits, axis=1) == y))
    seconds = time.perf_counter() - t0
    k = max(1, min(every, steps))
    curve = [float(np.mean(losses[i:i + k])) for i in range(0, steps, k)]
    return Result(norm, losses, final, acc, seconds, curve)


def _fmt(v: float) -> str:
    return "   diverged" if not math.isfinite(v) else f"{v:11.4f}"


def run_demo(*, depth: int = 10, width: int = 64, lr: float = 0.05, momentum: float = 0.9,
             steps: int = 600, batch: int = 128, seed: int = 0, every: int = 50,
             out: Any = None) -> tuple[Result, Result]:
    """Train plain and BatchNorm MLPs with identical settings and print both loss curves."""
    out = sys.stdout if out is None else out
    print(f"Two spirals, {depth} hidden layers x {width} ReLU units, SGD lr={lr} "
          f"momentum={momentum}, batch {batch}, {steps} steps, seed {seed}", file=out)
    plain = train(None, depth=depth, width=width, lr=lr, momentum=momentum, steps=steps,
                  batch=batch, seed=seed, every=every)
    bn = train("batch", depth=depth, width=width, lr=lr, momentum=momentum, steps=steps,
               batch=batch, seed=seed, every=every)
    k = max(1, min(every, steps))
    print(f"\ntraining loss (mean over {k} steps)", file=out)
    print(f"{'steps':>11} {'plain':>11} {'BatchNorm':>11}", file=out)
    for i, (a, b) in enumerate(zip(plain.curve, bn.curve)):
        print(f"{f'{i * k + 1}-{min((i + 1) * k, steps)}':>11} {_fmt(a)} {_fmt(b)}", file=out)
    print("\nwhole data set, eval mode", file=out)
    print(f"{'':>11} {'plain':>11} {'BatchNorm':>11}", file=out)
    print(f"{'loss':>11} {_fmt(plain.final_loss)} {_fmt(bn.final_loss)}", file=out)
    print(f"{'accuracy':>11} {plain.final_accuracy:11.3f} {bn.final_accuracy:11.3f}", file=out)
    print(f"{'seconds':>11} {plain.seconds:11.1f} {bn.seconds:11.1f}", file=out)
    return plain, bn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arraynorm.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=10, help="hidden layers (default 10)")
    p.add_argument("--width", type=int, default=64, help="units per hidden layer (default 64)")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate, both runs (default 0.05)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    p.add_argument("--batch", type=int, default=128, help="mini-batch size (default 128)")
    p.add_argument("--every", type=int, default=50, help="steps per row of the table (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, weights and batches")
    a = p.parse_args(argv)
    run_demo(depth=a.depth, width=a.width, lr=a.lr, momentum=a.momentum, steps=a.steps,
             batch=a.batch, seed=a.seed, every=a.every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
