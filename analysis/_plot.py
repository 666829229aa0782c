"""Figures: matplotlib with the non-interactive Agg backend, one look for every study."""

from __future__ import annotations

import pathlib
from collections.abc import Iterable
from typing import Any

__all__ = ["figure", "save", "colors"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only: studies run headless (CI, clusters)
    import matplotlib.pyplot as plt

    return plt


def figure(ncols: int = 1, nrows: int = 1, *, width: float = 4.2, height: float = 3.3,
           title: str | None = None) -> tuple[Any, Any]:
    """``(fig, axes)``: a grid of panels (``axes`` always a flat list)."""
    plt = _pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, [ax for row in axes for ax in row]


def save(fig: Any, path: str | pathlib.Path) -> pathlib.Path:
    """Save ``fig`` as PNG and close it (figures are not kept open across a report)."""
    plt = _pyplot()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def colors(keys: Iterable[str]) -> dict[str, Any]:
    """A stable colour per key (the same normalization gets the same colour in every panel)."""
    plt = _pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {k: cycle[i % len(cycle)] for i, k in enumerate(dict.fromkeys(keys))}
