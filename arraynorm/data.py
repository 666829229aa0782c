"""Small synthetic data sets, seeded and on the host (NumPy float64): what the demo
(``python -m arraynorm.demo``), the examples and the studies of ``analysis`` train on."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["spirals"]


def spirals(n: int, seed: int = 0, *, turns: float = 2.0, noise: float = 0.02
            ) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals: ``n`` points in 2-D (float64, radius up to 2) and their
    class (0 or 1). Each arm winds ``turns`` times; ``noise`` is the Gaussian jitter."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.0, 1.0, n)) * turns * 2.0 * math.pi
    cls = rng.integers(0, 2, n)
    radius = 2.0 * t / (turns * 2.0 * math.pi)
    angle = t + math.pi * cls
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return x + noise * rng.standard_normal((n, 2)), cls
