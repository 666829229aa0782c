"""Mean-field theory of signal propagation through wide random networks (Poole et al. 2016;
Schoenholz et al. 2017), computed with SciPy.

A fully connected network h^{ℓ+1} = W^{ℓ+1} φ(h^ℓ) + b^{ℓ+1}, W_ij ~ N(0, σ_w²/N),
b_i ~ N(0, σ_b²), has at infinite width Gaussian pre-activations whose second moments follow
deterministic maps (Dz the standard normal measure, u₁ = √q z₁, u₂ = √q (c z₁ + √(1−c²) z₂)):

    length map        q_{ℓ+1} = V(q_ℓ) = σ_w² ∫ φ(√q_ℓ z)² Dz + σ_b²
    correlation map   c_{ℓ+1} = C(c_ℓ; q_ℓ) = (σ_w² ∫∫ φ(u₁) φ(u₂) Dz₁ Dz₂ + σ_b²) / V(q_ℓ)
    gradient factor   ‖∂L/∂h^ℓ‖² / ‖∂L/∂h^{ℓ+1}‖² = χ(q_ℓ) = σ_w² ∫ φ'(√q_ℓ z)² Dz

At the fixed point q* (V(q*) = q*) the slopes are χ₁ = χ(q*) (gradient factor; also the slope
of C at c = 1) and χ_q = V'(q*) = (σ_w²/√q*) ∫ z φ φ'(√q* z) Dz (Stein's lemma), and at the
correlation's fixed point c* the slope is χ_c = ∂C/∂c = σ_w² q ∫∫ φ'(u₁) φ'(u₂) / V(q) (Price's
theorem), = σ_w² ∫∫ φ'φ' at q = q*. The depth scales of the approach to the fixed points are
ξ_q = −1/log χ_q and ξ_c = −1/log χ_c (Schoenholz et al. eqs. 5 and 9). χ₁ < 1: ordered phase
(c* = 1, χ_c = χ₁, gradients vanish); χ₁ > 1: chaotic phase (c* < 1, gradients explode); the
order-to-chaos critical line is χ₁ = 1 at q*.

Layer normalization before φ (x̂ = (h − mean)/std over the units) feeds φ inputs of second
moment exactly 1 whatever q_ℓ is, so at large width the maps are evaluated at q = 1 instead of
q_ℓ: q_{ℓ+1} = V(1), c_{ℓ+1} = C(c_ℓ; 1), and the gradient through LN picks up 1/std², giving
the factor σ_w² ∫ φ'(z)² Dz / q_ℓ (= χ(1)/V(1) from the second layer on). :func:`trajectory`
and :func:`fixed_point` take ``norm="layer"`` for this (RMSNorm is the same at large width).

Gaussian integrals — why composite Gauss–Legendre: Gauss–Hermite quadrature converges
exponentially for smooth φ but only algebraically across a kink (measured: 100 nodes are off
by 3e-3 relative for hard-tanh's ∫φ², and for the shifted ReLU of the 2-D map's inner
integral), and ``scipy.integrate.quad``/``dblquad`` are accurate but slow — milliseconds per
1-D integral, and per 2-D one 0.1 s for tanh and about a minute for hard-tanh (measured on
this machine under load) — far too slow for a phase-diagram grid or a depth-by-depth
correlation map. Here the real line is cut at fixed points of z (±2.5, ±5, ±10: the
Gaussian's own scale) and at the activation's breakpoints mapped into z (its kinks, and for
tanh/GELU a geometric ladder ±½ … ±32 that resolves the sharp transition at large q); each
piece is smooth, so 12 Gauss–Legendre nodes per piece give ~1e-14 relative for q from 1e-4
to 1e6, vectorized over any array of (q, c) with NumPy (~0.3 ms per 1-D and ~4 ms per 2-D
integral, same conditions). The 2-D correlation integral is the same rule nested (outer over
z₁; the inner over z₂ is a 1-D Gaussian expectation of φ(m + s z₂), m = √q c z₁,
s = √(q(1−c²)), cut at the kinks (x_k − m)/s; the outer line is cut as well where the inner
expectation rounds a kink, a layer of width s/c that near c = 1 would fall between nodes).
The tests check them against closed forms, Monte Carlo and ``scipy.integrate.quad``/``dblquad``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy.optimize import elementwise

__all__ = ["ACTIVATIONS", "Activation", "get_activation", "gauss_expect", "pair_expect",
           "length_map", "chi", "chi_q", "correlation_map", "correlation_slope", "q_star",
           "c_star", "fixed_point", "trajectory", "critical_line", "critical_sigma_w2", "chi1_grid",
           "depth_scale"]

_GELU_C, _GELU_A = math.sqrt(2.0 / math.pi), 0.044715
_LADDER = (-32.0, -16.0, -8.0, -4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + _GELU_A * x ** 3)))


def _dgelu(x: np.ndarray) -> np.ndarray:
    t = np.tanh(_GELU_C * (x + _GELU_A * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * x * x)


@dataclass(frozen=True)
class Activation:
    """φ and φ' (NumPy, elementwise) as :mod:`arraynorm.nn` defines them, the points where
    the quadrature cuts the line (``breaks``, in x; ``kinks`` those where φ' jumps), and φ'(±∞) (the gradient factor's limit
    as q → ∞, where the length map of an unbounded φ has no fixed point)."""

    name: str
    phi: Callable[[np.ndarray], np.ndarray]
    dphi: Callable[[np.ndarray], np.ndarray]
    breaks: tuple[float, ...]
    dphi_inf: tuple[float, float]
    kinks: tuple[float, ...] = ()

    def chi_inf(self) -> float:
        """lim_{q→∞} ∫ φ'(√q z)² Dz = (φ'(−∞)² + φ'(+∞)²)/2."""
        return 0.5 * (self.dphi_inf[0] ** 2 + self.dphi_inf[1] ** 2)


#: the activations of :mod:`arraynorm.nn` (GELU in its tanh form, as the library computes it)
ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation("tanh", np.tanh, lambda x: 1.0 - np.tanh(x) ** 2, _LADDER, (0.0, 0.0)),
    "relu": Activation("relu", lambda x: np.maximum(x, 0.0), lambda x: (x > 0) * 1.0, (0.0,),
                       (0.0, 1.0), kinks=(0.0,)),
    "hardtanh": Activation("hardtanh", lambda x: np.clip(x, -1.0, 1.0),
                           lambda x: ((x > -1.0) & (x < 1.0)) * 1.0, (-1.0, 1.0), (0.0, 0.0),
                           kinks=(-1.0, 1.0)),
    "gelu": Activation("gelu", _gelu, _dgelu, _LADDER, (0.0, 1.0)),
    "identity": Activation("identity", lambda x: x, lambda x: np.ones_like(x), (), (1.0, 1.0)),
}


def get_activation(act: str | Activation) -> Activation:
    """The :class:`Activation` of a name in :data:`ACTIVATIONS` (or the object itself)."""
    if isinstance(act, Activation):
        return act
    try:
        return ACTIVATIONS[act]
    except (KeyError, TypeError):
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {act!r}") from None


# ----------------------------------------------------------------------------- quadrature
_Z_CUTS = np.array([-10.0, -5.0, -2.5, 0.0, 2.5, 5.0, 10.0])  # ∫_{|z|>10} is < 1e-22
_GL_T, _GL_W = np.polynomial.legendre.leggauss(12)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_CHUNK = 1 << 21
_LAYER_STEPS = np.array([-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0])  # evaluations per block of a vectorized integral (bounds the memory)


def _nodes(mean: np.ndarray, std: np.ndarray, breaks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights w (last axis) with Σ w f(z) ≈ ∫ f(z) Dz for f(z) = g(mean + std·z)
    smooth between the breaks of g (a tuple, or an array (..., K) of per-element breaks): the
    pieces are cut at :data:`_Z_CUTS` and at (break − mean)/std."""
    b = np.asarray(breaks, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        kz = (b - mean[..., None]) / std[..., None]
    kz = np.nan_to_num(kz, nan=0.0, posinf=_Z_CUTS[-1], neginf=_Z_CUTS[0])
    # a break outside |z| < 10 for every element cuts nothing: drop it (fewer nodes)
    if kz.shape[-1]:
        inside = (np.abs(kz) < _Z_CUTS[-1]).reshape(-1, kz.shape[-1]).any(axis=0)
        kz = np.clip(kz[..., inside], _Z_CUTS[0], _Z_CUTS[-1])
    cuts = np.sort(np.concatenate([np.broadcast_to(_Z_CUTS, mean.shape + _Z_CUTS.shape), kz],
                                  axis=-1), axis=-1)
    a, b = cuts[..., :-1, None], cuts[..., 1:, None]
    half = 0.5 * (b - a)
    z = 0.5 * (a + b) + half * _GL_T
    w = half * _GL_W * np.exp(-0.5 * z * z) / _SQRT_2PI
    shape = mean.shape + (-1,)
    return z.reshape(shape), w.reshape(shape)


def _blocks(fn: Callable[..., np.ndarray], arrays: list[np.ndarray], per_item: int) -> np.ndarray:
    """``fn(*arrays)`` on broadcast, flattened arrays in blocks of about :data:`_CHUNK`
    evaluations (``per_item`` each), reshaped back."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    flat = [np.broadcast_to(a, shape).ravel() for a in arrays]
    n = max(1, _CHUNK // max(per_item, 1))
    out = np.concatenate([fn(*(f[i:i + n] for f in flat)) for i in range(0, max(len(flat[0]), 1), n)])
    return out[:int(np.prod(shape))].reshape(shape)


def gauss_expect(f: Callable[[np.ndarray], np.ndarray], mean: Any, std: Any,
                 breaks: tuple[float, ...] = ()) -> np.ndarray:
    """E[f(mean + std·Z)], Z ~ N(0, 1), elementwise over broadcast ``mean`` and ``std``;
    ``breaks`` are the points in x where f is not smooth (kinks).

    >>> round(float(gauss_expect(lambda x: x * x, 0.0, 3.0)), 12)          # E[(3Z)²]
    9.0
    """
    def one(m: np.ndarray, s: np.ndarray) -> np.ndarray:
        z, w = _nodes(m, s, breaks)
        return np.sum(w * f(m[:, None] + s[:, None] * z), axis=-1)

    nodes = (len(_Z_CUTS) + len(breaks) - 1) * len(_GL_T)
    return _blocks(one, [mean, std], nodes)


def _expect_q(act: Activation, f: Callable[[np.ndarray], np.ndarray], q: Any) -> np.ndarray:
    """∫ f(√q z) Dz for the activation's breaks."""
    q = np.asarray(q, dtype=np.float64)
    return gauss_expect(f, np.zeros_like(q), np.sqrt(q), act.breaks)


def pair_expect(act: str | Activation, q: Any, c: Any, derivative: bool = False) -> np.ndarray:
    """∫∫ φ(u₁) φ(u₂) Dz₁ Dz₂ (``derivative=True``: φ'(u₁) φ'(u₂)) with u₁ = √q z₁,
    u₂ = √q (c z₁ + √(1−c²) z₂): the covariance of two pre-activations of second moment q and
    correlation c, elementwise over broadcast ``q`` and ``c``."""
    a = get_activation(act)
    g = a.dphi if derivative else a.phi
    nodes = (len(_Z_CUTS) + 10 * len(a.kinks) + len(a.breaks)) * len(_GL_T)

    def one(qq: np.ndarray, cc: np.ndarray) -> np.ndarray:
        sq = np.sqrt(qq)
        s = sq * np.sqrt(np.clip(1.0 - cc * cc, 0.0, None))    # std of u₂ given u₁
        # the inner expectation E φ(c u₁ + s z₂), as a function of u₁, rounds each kink x_k
        # of φ over a layer of width s/c around u₁ = x_k/c: cut the outer line there too,
        # or near c = 1 (s → 0) the layer falls between nodes
        kinks = np.asarray(a.kinks, dtype=np.float64)
        csafe = np.where(np.abs(cc) < 1e-12, 1e-12, cc)[:, None, None]
        layer = (kinks[None, :, None] + s[:, None, None] * _LAYER_STEPS) / csafe
        outer = np.concatenate([np.broadcast_to(np.asarray(a.breaks, dtype=np.float64),
                                                (len(qq), len(a.breaks))),
                                layer.reshape(len(qq), -1)], axis=-1)
        z1, w1 = _nodes(np.zeros_like(qq), sq, outer)                      # (n, M)
        mean = (sq * cc)[:, None] * z1
        std = np.broadcast_to(s[:, None], mean.shape)
        z2, w2 = _nodes(mean, std, a.breaks)                                 # (n, M, M')
        inner = np.sum(w2 * g(mean[..., None] + std[..., None] * z2), axis=-1)
        return np.sum(w1 * g(sq[:, None] * z1) * inner, axis=-1)

    return _blocks(one, [q, c], nodes * nodes)


# ----------------------------------------------------------------------------- maps
def _floor(q: np.ndarray) -> np.ndarray:
    # q* = 0 (σ_b = 0, ordered): the maps are taken in the limit q → 0⁺, where φ' is
    # sampled on both sides of a kink at 0 (ReLU's ∫ φ'² → ½, not φ'(0)² = 0)
    return np.maximum(q, 1e-150)


def length_map(act: str | Activation, q: Any, sigma_w2: Any, sigma_b2: Any) -> np.ndarray:
    """V(q) = σ_w² ∫ φ(√q z)² Dz + σ_b²."""
    a = get_activation(act)
    return np.asarray(sigma_w2) * _expect_q(a, lambda x: a.phi(x) ** 2, q) + np.asarray(sigma_b2)


def chi(act: str | Activation, q: Any, sigma_w2: Any) -> np.ndarray:
    """χ(q) = σ_w² ∫ φ'(√q z)² Dz, the per-layer factor of ‖∂L/∂h‖² (χ₁ at q = q*; at
    q = ∞ its limit σ_w² (φ'(−∞)² + φ'(∞)²)/2)."""
    a = get_activation(act)
    q = np.asarray(q, dtype=np.float64)
    val = _expect_q(a, lambda x: a.dphi(x) ** 2, _floor(np.where(np.isinf(q), 1.0, q)))
    return np.asarray(sigma_w2) * np.where(np.isinf(q), a.chi_inf(), val)


def chi_q(act: str | Activation, q: Any, sigma_w2: Any) -> np.ndarray:
    """V'(q) = (σ_w²/√q) ∫ z φ(√q z) φ'(√q z) Dz (Stein's lemma: d/dq E φ(√q z)²), the slope
    of the length map; at q*, exp(−1/ξ_q)."""
    a = get_activation(act)
    q = _floor(np.asarray(q, dtype=np.float64))
    # x = √q z: (1/√q) E[z φ φ'] = E[x φ(x) φ'(x)] / q
    return np.asarray(sigma_w2) * _expect_q(a, lambda x: x * a.phi(x) * a.dphi(x), q) / q


def correlation_map(act: str | Activation, c: Any, q: Any, sigma_w2: Any, sigma_b2: Any) -> np.ndarray:
    """C(c; q) = (σ_w² ∫∫ φ(u₁)φ(u₂) + σ_b²) / V(q): the next layer's correlation of two
    inputs whose pre-activations have second moment q and correlation c (C(1; q) = 1)."""
    q = _floor(np.asarray(q, dtype=np.float64))
    cov = np.asarray(sigma_w2) * pair_expect(act, q, c) + np.asarray(sigma_b2)
    return cov / length_map(act, q, sigma_w2, sigma_b2)


def correlation_slope(act: str | Activation, c: Any, q: Any, sigma_w2: Any, sigma_b2: Any) -> np.ndarray:
    """∂C/∂c = σ_w² q ∫∫ φ'(u₁)φ'(u₂) / V(q) (Price's theorem); χ_c at (q*, c*)."""
    q = _floor(np.asarray(q, dtype=np.float64))
    return (np.asarray(sigma_w2) * q * pair_expect(act, q, c, derivative=True)
            / length_map(act, q, sigma_w2, sigma_b2))


def depth_scale(slope: Any) -> np.ndarray:
    """ξ = −1/log χ for a fixed point's slope χ ∈ (0, 1] (∞ at χ = 1, 0 at χ = 0)."""
    s = np.asarray(slope, dtype=np.float64)
    # |χ − 1| at rounding level (ReLU at σ_w² = 2, σ_b = 0: a neutral map) counts as 1
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = -1.0 / np.log(np.clip(s, 1e-300, 1.0))
    return np.where(s >= 1.0 - 1e-12, np.inf, np.where(s <= 0.0, 0.0, xi))


# ----------------------------------------------------------------------------- fixed points
_Q_GRID = np.geomspace(1e-12, 1e12, 145)


@functools.lru_cache(maxsize=None)
def _second_moment_grid(name: str) -> np.ndarray:
    a = ACTIVATIONS[name]
    return _expect_q(a, lambda x: a.phi(x) ** 2, _Q_GRID)


def q_star(act: str | Activation, sigma_w2: Any, sigma_b2: Any, q1: Any = 1.0) -> np.ndarray:
    """The fixed point q* = V(q*) that the length map reaches from q₁ (the first layer's
    pre-activation second moment), elementwise over broadcast arguments.

    V is increasing, so the iterates move monotonically to the nearest fixed point in the
    direction of V(q₁) − q₁: a root of V(q) − q bracketed on a geometric grid of q and solved
    with ``scipy.optimize.elementwise.find_root`` (vectorized Chandrupatla). ``0`` where the
    iterates decay to zero (σ_b = 0, ordered), ``inf`` where they grow without bound (an
    unbounded φ with σ_w² (φ'(−∞)² + φ'(∞)²)/2 ≥ 1), q₁ itself where V(q₁) = q₁.

    >>> float(q_star("relu", 1.0, 0.5))                 # σ_b² / (1 − σ_w²/2)
    1.0
    """
    a = get_activation(act)
    sw2, sb2, q1 = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(sigma_w2, sigma_b2, q1))
    if np.any(q1 <= 0) or np.any(sw2 < 0) or np.any(sb2 < 0):
        raise ValueError("q_star: need q1 > 0, sigma_w2 >= 0 and sigma_b2 >= 0")
    m = (_second_moment_grid(a.name) if ACTIVATIONS.get(a.name) is a
         else _expect_q(a, lambda x: a.phi(x) ** 2, _Q_GRID))
    g = sw2[..., None] * m + sb2[..., None] - _Q_GRID                     # V(q) − q on the grid
    g1 = length_map(a, q1, sw2, sb2) - q1
    tol = 1e-12 * q1
    # upward: the first grid point above q₁ where V(q) ≤ q; downward: the last below with ≥
    above = (_Q_GRID > q1[..., None]) & (g <= 0)
    below = (_Q_GRID < q1[..., None]) & (g >= 0)
    k_up = np.argmax(above, axis=-1)
    k_dn = len(_Q_GRID) - 1 - np.argmax(below[..., ::-1], axis=-1)
    up, down = g1 > tol, g1 < -tol
    lo = np.where(up, np.maximum(q1, _Q_GRID[np.maximum(k_up - 1, 0)]), _Q_GRID[k_dn])
    hi = np.where(up, _Q_GRID[k_up], np.minimum(q1, _Q_GRID[np.minimum(k_dn + 1, len(_Q_GRID) - 1)]))
    solve = (up & above.any(-1)) | (down & below.any(-1))
    out = np.where(up, np.inf, np.where(down, 0.0, q1))
    if np.any(solve):
        res = elementwise.find_root(lambda q, w, b: length_map(a, q, w, b) - q,
                                    (lo[solve], hi[solve]), args=(sw2[solve], sb2[solve]))
        out[solve] = res.x
    return out[()] if out.ndim == 0 else out


def _nearest_root(g: Callable[[float], float], grid: np.ndarray, gv: np.ndarray, x0: float,
                  g0: float, lo_end: float, hi_end: float) -> float:
    """The fixed point an increasing 1-D map reaches from x0, given g = map − identity on a
    sorted grid: the nearest sign change in the direction of g(x0), refined with brentq."""
    if g0 > 0:
        idx = np.nonzero((grid > x0) & (gv <= 0))[0]
        if idx.size == 0:
            return hi_end
        k = idx[0]
        a = max(x0, grid[k - 1]) if k > 0 else x0
        return grid[k] if gv[k] == 0 else optimize.brentq(g, a, grid[k], xtol=1e-15)
    if g0 < 0:
        idx = np.nonzero((grid < x0) & (gv >= 0))[0]
        if idx.size == 0:
            return lo_end
        k = idx[-1]
        b = min(x0, grid[k + 1]) if k + 1 < len(grid) else x0
        return grid[k] if gv[k] == 0 else optimize.brentq(g, grid[k], b, xtol=1e-15)
    return x0


_C_GRID = np.concatenate([np.linspace(-1.0, 0.9, 12), 1.0 - np.geomspace(0.05, 1e-7, 14), [1.0]])


def c_star(act: str | Activation, q: float, sigma_w2: float, sigma_b2: float, c1: float = 0.5) -> float:
    """The fixed point c* = C(c*; q) that the correlation map at second moment ``q`` (q* for
    the plain network, 1 under LayerNorm) reaches from c₁. c = 1 is always a fixed point; in
    the chaotic phase the map crosses the diagonal below it, at c* < 1."""
    a = get_activation(act)
    if not -1.0 <= c1 <= 1.0:
        raise ValueError(f"c_star: c1 must be in [-1, 1], got {c1}")

    def g(c: Any) -> Any:
        return correlation_map(a, c, q, sigma_w2, sigma_b2) - c

    gv = g(_C_GRID)
    gv[-1] = 0.0  # C(1) = 1 exactly; the quadrature gives it to rounding
    g0 = 0.0 if c1 == 1.0 else float(g(c1))
    return float(_nearest_root(lambda c: float(g(c)), _C_GRID, gv, c1, g0, -1.0, 1.0))


def _argument(norm: str, q: Any) -> Any:
    """The second moment that φ sees: q itself, or 1 after LayerNorm/RMSNorm."""
    if norm in ("none", None):
        return q
    if norm in ("layer", "rms"):
        return np.ones_like(np.asarray(q, dtype=np.float64))
    raise ValueError(f"norm must be 'none', 'layer' or 'rms' for the mean-field maps, got {norm!r}")


def fixed_point(act: str | Activation, sigma_w2: float, sigma_b2: float, q_in: float = 1.0,
                c_in: float = 0.5, norm: str = "none") -> dict[str, float]:
    """q*, c*, χ₁, χ_q, χ_c, ξ_q, ξ_c of a network fed inputs of second moment ``q_in``
    (‖x‖²/N) and correlation ``c_in``: the first layer gives q₁ = σ_w² q_in + σ_b²,
    c₁ = (σ_w² q_in c_in + σ_b²)/q₁, and the maps take it from there.

    ``norm="layer"`` (or ``"rms"``): φ sees second moment 1, so q* = V(1), the correlation
    map is C(·; 1), χ₁ = χ(1)/V(1) (the gradient's per-layer factor through LN); ξ_q = 0.
    ``chi1`` is the gradient factor at the fixed point; at c* = 1 it is also χ_c.
    """
    q1 = sigma_w2 * q_in + sigma_b2
    c1 = (sigma_w2 * q_in * c_in + sigma_b2) / q1 if q1 > 0 else 1.0
    if norm in ("none", None):
        qs = float(q_star(act, sigma_w2, sigma_b2, q1))
        arg = qs
        chi1 = float(chi(act, qs, sigma_w2))
        cq = float(chi_q(act, qs, sigma_w2)) if math.isfinite(qs) else math.nan
    else:
        arg = 1.0
        qs = float(length_map(act, 1.0, sigma_w2, sigma_b2))
        chi1 = float(chi(act, 1.0, sigma_w2)) / qs
        cq = 0.0
    if not math.isfinite(qs):
        return dict(q_star=qs, c_star=math.nan, chi1=chi1, chi_q=cq, chi_c=math.nan,
                    xi_q=math.nan, xi_c=math.nan)
    cs = c_star(act, arg, sigma_w2, sigma_b2, c1)
    cc = float(correlation_slope(act, cs, arg, sigma_w2, sigma_b2))
    return dict(q_star=qs, c_star=cs, chi1=chi1, chi_q=cq, chi_c=cc,
                xi_q=float(depth_scale(cq)), xi_c=float(depth_scale(cc)))


def trajectory(act: str | Activation, sigma_w2: float, sigma_b2: float, q_in: float, c_in: float,
               depth: int, norm: str = "none") -> dict[str, np.ndarray]:
    """Per-layer theory of a ``depth``-block stack (Linear → [norm] → φ) fed inputs of second
    moment ``q_in`` and correlation ``c_in``: ``q`` and ``c`` of the Linear outputs h¹ … h^L
    and ``grad_factor``[ℓ] = ‖∂L/∂h^ℓ‖²/‖∂L/∂h^{ℓ+1}‖² for ℓ = 1 … L−1.

    With a = the second moment φ sees (q_ℓ, or 1 under LN): q_{ℓ+1} = V(a),
    c_{ℓ+1} = (σ_w² ∫∫φφ(a, c_ℓ) + σ_b²)/V(a), grad factor = χ(a)·a/q_ℓ.
    """
    q = np.empty(depth)
    c = np.empty(depth)
    q[0] = sigma_w2 * q_in + sigma_b2
    c[0] = (sigma_w2 * q_in * c_in + sigma_b2) / q[0]
    for ell in range(1, depth):
        a = float(_argument(norm, q[ell - 1]))
        q[ell] = float(length_map(act, a, sigma_w2, sigma_b2))
        if not math.isfinite(q[ell]) or q[ell] > 1e300:
            q[ell:], c[ell:] = np.inf, np.nan
            break
        c[ell] = float(correlation_map(act, c[ell - 1], a, sigma_w2, sigma_b2))
    args = np.asarray(_argument(norm, q[:-1]), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        grad = chi(act, args, sigma_w2) * args / q[:-1]
    return {"q": q, "c": c, "grad_factor": grad}


# ----------------------------------------------------------------------------- phase diagram
def _critical_sb2(a: Activation, q: Any) -> np.ndarray:
    """σ_b² on the critical line at fixed point q: χ(q) = 1 fixes σ_w² = 1/∫φ'², then
    V(q) = q fixes σ_b² = q − σ_w² ∫φ²."""
    return q - length_map(a, q, 1.0 / chi(a, q, 1.0), 0.0)


_LOGQ_CRIT = np.linspace(math.log(1e-8), math.log(1e8), 97)


def critical_line(act: str | Activation, sigma_b2: Any) -> np.ndarray:
    """The order-to-chaos critical line: for each σ_b², the σ_w² with χ₁ = 1 at q*.

    Along the line each q* gives σ_w² = 1/∫φ'(√q* z)² Dz and σ_b² = q* − σ_w² ∫φ(√q* z)² Dz
    (Poole et al. 2016), so for each σ_b² the line is solved for log q* with
    ``scipy.optimize.brentq`` (bracketed on one geometric scan of q* shared by all σ_b²) and
    σ_w² read off. Only stable fixed points count (V'(q*) ≤ 1: the network settles there).
    At σ_b² = 0 the fixed point is q* → 0⁺ with σ_w² = 1/φ'(0)² where 0 attracts (tanh and
    hard-tanh 1, ReLU 2, identity 1). For ReLU and identity χ₁ does not depend on q*, and
    for σ_b² > 0 the line is the edge of the bounded phase, q* → ∞: σ_w² = 2/(φ'(−∞)² +
    φ'(∞)²). NaN where no stable fixed point has χ₁ = 1 (GELU at small σ_b², whose χ₁ = 1
    points there are unstable fixed points of the length map).

    >>> critical_line("tanh", [0.0, 0.05]).round(3)
    array([1.   , 1.761])
    """
    a = get_activation(act)
    sb2 = np.atleast_1d(np.asarray(sigma_b2, dtype=np.float64))
    if np.any(sb2 < 0) or not np.all(np.isfinite(sb2)):
        raise ValueError(f"critical_line: sigma_b2 must be finite and >= 0, got {sigma_b2}")
    qs = np.exp(_LOGQ_CRIT)
    curve = _critical_sb2(a, qs)
    gain = chi(a, qs, 1.0)
    homogeneous = a.chi_inf() > 0 and np.ptp(gain) <= 1e-9 * np.max(gain)
    d0 = float(chi(a, 0.0, 1.0))
    # 0 attracts from above at σ_w² = 1/φ'(0)² when V(q) ≤ q for small q (not for GELU)
    zero_ok = d0 > 0 and float(length_map(a, 1e-6, 1.0 / d0, 0.0)) <= 1e-6 * (1 + 1e-9)
    out = np.full(sb2.shape, np.nan)
    for i, target in enumerate(sb2):
        if target == 0.0 and zero_ok:
            out[i] = 1.0 / d0
            continue
        vals = curve - target
        for k in np.nonzero(np.sign(vals[:-1]) * np.sign(vals[1:]) <= 0)[0]:
            s = optimize.brentq(lambda s: float(_critical_sb2(a, math.exp(s))) - target,
                                _LOGQ_CRIT[k], _LOGQ_CRIT[k + 1], xtol=1e-13)
            q, w = math.exp(s), 1.0 / float(chi(a, math.exp(s), 1.0))
            if float(chi_q(a, q, w)) <= 1.0 + 1e-9:
                out[i] = w
                break
        else:
            if homogeneous:
                out[i] = 1.0 / a.chi_inf()
    return out


def critical_sigma_w2(act: str | Activation, sigma_b2: float) -> float:
    """The σ_w² on the critical line (χ₁ = 1 at q*) at one σ_b² (see :func:`critical_line`).

    >>> round(critical_sigma_w2("tanh", 0.0), 12)
    1.0
    """
    return float(critical_line(act, sigma_b2)[0])


def chi1_grid(act: str | Activation, sigma_w2: Any, sigma_b2: Any, q_in: float = 1.0) -> dict[str, np.ndarray]:
    """q* and χ₁ on the grid ``sigma_w2 × sigma_b2`` (arrays of shape (len(σ_b²), len(σ_w²)),
    rows σ_b²), from inputs of second moment ``q_in``; χ₁ at q* = ∞ is its limit."""
    w, b = np.meshgrid(np.asarray(sigma_w2, dtype=np.float64), np.asarray(sigma_b2, dtype=np.float64))
    qs = q_star(act, w, b, w * q_in + b)
    return {"q_star": qs, "chi1": chi(act, qs, w)}
