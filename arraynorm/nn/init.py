"""Weight initializations of the signal-propagation theory, drawn on the host and moved.

The array API has no random numbers, so weights are drawn with a NumPy ``Generator`` in
float64 and then converted to the layer's namespace, device and dtype: a model built with the
same seed is the same model on every backend.

========================  =====================================================  ============
scheme                    weight W (fan_out × fan_in)                            default gain
========================  =====================================================  ============
``"gaussian"``            N(0, σ_w² / fan_in), bias N(0, σ_b²)  (Poole et al.    σ_w = 1
                          2016; Schoenholz et al. 2017 mean-field notation)
``"he"``                  N(0, σ_w² / fan_in)  (He et al. 2015, Kaiming normal)  σ_w = √2
``"xavier"``              N(0, σ_w² · 2 / (fan_in + fan_out))  (Glorot 2010)     σ_w = 1
``"xavier_uniform"``      U(±σ_w · √(6 / (fan_in + fan_out)))                    σ_w = 1
``"orthogonal"``          σ_w · Q, Q with orthonormal rows or columns            σ_w = 1
                          (Saxe et al. 2014; QR of a Gaussian, signs fixed)
``"uniform"``             U(±1/√fan_in), bias too: PyTorch's ``nn.Linear``       —
========================  =====================================================  ============

The bias is N(0, σ_b²) for every scheme but ``"uniform"`` (σ_b defaults to 0: a zero bias).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["SCHEMES", "make_rng", "init_weight", "init_bias"]

SCHEMES = ("gaussian", "he", "xavier", "xavier_uniform", "orthogonal", "uniform")
_DEFAULT_GAIN = {"gaussian": 1.0, "he": math.sqrt(2.0), "xavier": 1.0, "xavier_uniform": 1.0,
                 "orthogonal": 1.0, "uniform": 1.0}


def make_rng(rng: Any) -> np.random.Generator:
    """A NumPy ``Generator`` from a seed, a ``Generator`` or ``None`` (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        return np.random.default_rng(None if rng is None else int(rng))
    raise TypeError(f"rng must be an int seed, a numpy.random.Generator or None, got {type(rng).__name__}")


def _check_scheme(fname: str, scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"{fname}: init must be one of {SCHEMES}, got {scheme!r}")


def init_weight(scheme: str, shape: tuple[int, ...], rng: np.random.Generator,
                sigma_w: float | None = None) -> np.ndarray:
    """A float64 weight of ``shape = (fan_out, fan_in)`` drawn by ``scheme`` (table above);
    ``sigma_w`` is the gain (None: the scheme's default).

    A convolution kernel (out, in/groups, k_h, k_w) is drawn with PyTorch's fans:
    fan_in = in/groups · k_h k_w and fan_out = out · k_h k_w; ``"orthogonal"`` makes the
    (out, in/groups · k_h k_w) matrix orthogonal, as ``torch.nn.init.orthogonal_``."""
    _check_scheme("init_weight", scheme)
    receptive = math.prod(shape[2:])
    fan_out, fan_in = shape[0] * receptive, shape[1] * receptive
    gain = _DEFAULT_GAIN[scheme] if sigma_w is None else float(sigma_w)
    if scheme in ("gaussian", "he"):
        return rng.standard_normal(shape) * (gain / math.sqrt(fan_in))
    if scheme == "xavier":
        return rng.standard_normal(shape) * (gain * math.sqrt(2.0 / (fan_in + fan_out)))
    if scheme == "xavier_uniform":
        a = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, shape)
    if scheme == "uniform":
        a = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-a, a, shape)
    # orthogonal: QR of a tall Gaussian; multiplying Q's columns by sign(diag R) makes Q
    # Haar-distributed (Mezzadri 2007) rather than biased by the QR convention
    mat = (shape[0], fan_in)
    rows, cols = max(mat), min(mat)
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    q = q * np.sign(np.diag(r))
    w = q if mat[0] >= mat[1] else q.T
    return gain * np.reshape(w, shape)


def init_bias(scheme: str, fan_in: int, fan_out: int, rng: np.random.Generator,
              sigma_b: float | None = None) -> np.ndarray:
    """A float64 bias of shape ``(fan_out,)``: N(0, σ_b²) (zero when σ_b is 0 or None), or
    U(±1/√fan_in) for ``"uniform"``."""
    _check_scheme("init_bias", scheme)
    if scheme == "uniform" and sigma_b is None:
        a = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-a, a, (fan_out,))
    if not sigma_b:
        return np.zeros((fan_out,))
    return rng.standard_normal((fan_out,)) * float(sigma_b)
