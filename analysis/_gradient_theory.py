"""Mean-field theory of gradient norms at initialization: batch-normalized networks (Yang,
Pennington, Rao, Sohl-Dickstein & Schoenholz 2019), per-sample normalizations and plain
networks (Schoenholz et al. 2017's χ₁), and the Pre-LN residual stream (Xiong et al. 2020).

Batch normalization before the activation (Yang et al. 2019, ICLR)
-------------------------------------------------------------------
A hidden block maps a batch X (B × d) to φ(BN(X Wᵀ)), W with N(0, σ²/d) entries. BN acts on
each feature's column h ∈ ℝᴮ as BN(h) = √B·Gh/‖Gh‖, G = I − 11ᵀ/B the centring projection
(eps and the affine map, γ = 1, β = 0 at initialization, are left out). As d → ∞ a
feature's pre-activations are h ~ N(0, σ²Σ) with Σ = XXᵀ/d the batch Gram matrix, so the
Gram map is Σ ↦ V(Σ) = E φ(BN(h)) φ(BN(h))ᵀ. For every Σ with GΣG ∝ G — in particular the
permutation-symmetric ("BSB1") fixed point Σ* = q·I + p·(11ᵀ − I) — the direction
n = Gh/‖Gh‖ is uniform on the unit sphere of 1^⊥ and independent of the radius, so BN(h) = √B·n
and the fixed point is a single expectation, no iteration needed:

    Σ* = E φ(√B n) φ(√B n)ᵀ;   identity: q = 1, p = −1/(B−1);   ReLU: q = ½, p = κ(ρ),
    κ(ρ) = (√(1−ρ²) + (π − arccos ρ)·ρ)/(2π),  ρ = −1/(B−1)   (the arc-cosine kernel).

Backward, BN's Jacobian is J = (√B/‖Gh‖)(G − nnᵀ) (symmetric), so with gradient independence
(the backward weights independent of the forward ones, exact as d → ∞) the cotangent Gram
Π = ΔΔᵀ of ∂L/∂X obeys the linear map

    Π_{ℓ−1} = T(Π_ℓ) = c · E_n[(G − nnᵀ) D Π_ℓ D (G − nnᵀ)],   D = diag φ'(√B n),
    c = σ²·E[B/‖Gh‖²] = B / ((q − p)(B − 3))      (‖Gh‖² = σ²(q−p)·χ²_{B−1}),

whose leading eigenvalue λ is the factor per layer of E‖∂L/∂X‖² (σ cancels: BN is scale
invariant). T commutes with permutations of the batch; on symmetric matrices of 1^⊥ it has
three eigenvalues, one per irreducible piece (trivial: Π = G; standard: G·diag(v)·G, v ⊥ 1;
two-row: (e₁−e₂)(e₃−e₄)ᵀ + transpose), each the Rayleigh quotient of one representative.
The trivial one leads and has closed forms:

    identity: λ = (B − 2)/(B − 3)      [c = (B−1)/(B−3), E tr(G − nnᵀ) = B − 2]
    ReLU:     λ = c · [ (B−1)²/(2B) + (B−1)P₂/B − ½ + (½ + (B−1)κ)/B ] / (B − 1),
              P₂ = ¼ + arcsin(ρ)/(2π)  (both of two coordinates positive),

so gradients explode at every batch size B ≥ 4 (λ → 1 for the linear network and
λ → π/(π − 1) ≈ 1.467 for ReLU as B → ∞) and no choice of σ removes it. The three
eigenvalues are also estimated by Monte Carlo over n (any activation), which is how tanh and
GELU get theirs; this module states the sample count and standard errors.

Per-sample normalizations, plain networks
-----------------------------------------
A per-sample normalization over a group of m features (LayerNorm and PositionNorm: all d
features; GroupNorm: d/groups) is the batch case transposed: a sample's pre-activations
h = Wx are N(0, σ²‖x‖²/d · I_m), so the centred direction n is uniform on the sphere of 1^⊥ ⊂ ℝᵐ,
E m/‖Gh‖² = m·d/(σ²‖x‖²(m − 3)), and Wᵀ makes the next cotangent isotropic. Before an
identity or ReLU φ this gives χ = (m − 2)/(m − 3) per layer (RMSNorm, uncentred, n uniform on
the whole sphere: (m − 1)/(m − 2)), up to O(1/d); for other φ its large-m limit
χ = E φ'(z)²/E φ(z)². After φ (large m), h ~ N(0, σ²) and χ = σ² E φ'(σz)² / s²,
s² = Var φ(σz) (centred) or E φ(σz)² (RMSNorm): π/(π − 1) for ReLU with LayerNorm.
Without normalization and with a positively homogeneous φ (identity, ReLU)
χ = σ_w² E φ'(z)² (Schoenholz et al. 2017's χ₁), σ_w² the weight's gain: 1 for centred
weight normalization (unit rows), the fan-in for weight standardization (unit-variance
entries), and 1/4 for spectral normalization of i.i.d. weights (σ_max → 2σ_w, the
Marchenko–Pastur edge of a square matrix; 1 for orthogonal weights).

Pre-LN residual stream (Xiong et al. 2020, Lemma 2)
---------------------------------------------------
(1 + ℓ/2)·d ≤ E‖x_ℓ‖² ≤ (1 + 3ℓ/2)·d for a token of the Pre-LN stream after ℓ blocks, so the
final LayerNorm divides the last layer's gradient by ‖x_L‖ ∝ √L: ‖∂L/∂W_L‖ ∝ L^{−½}
asymptotically; for Post-LN the last block's input is a LayerNorm output of norm √d at every
depth, so ‖∂L/∂W_L‖ does not depend on L.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import integrate

__all__ = ["ACTIVATIONS", "activation_pair", "gauss_mean", "sphere_directions",
           "bn_fixed_point", "bn_gradient_factor", "bn_gradient_spectrum", "bn_backward_value",
           "weight_gain2", "meanfield_grad_factor", "pre_ln_stream_slope"]

_C_GELU = math.sqrt(2.0 / math.pi)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_C_GELU * (x + 0.044715 * x ** 3)))


def _dgelu(x: np.ndarray) -> np.ndarray:
    t = np.tanh(_C_GELU * (x + 0.044715 * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _C_GELU * (1.0 + 3 * 0.044715 * x * x)


#: activation -> (φ, φ', points where φ' jumps) in NumPy, as arraynorm.nn computes them
#: (GELU in its tanh form, HardTanh clipping to [−1, 1])
ACTIVATIONS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any], tuple[float, ...]]] = {
    "identity": (lambda x: x, lambda x: np.ones_like(x), ()),
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(np.float64), (0.0,)),
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2, ()),
    "hardtanh": (lambda x: np.clip(x, -1.0, 1.0), lambda x: (np.abs(x) < 1).astype(np.float64),
                 (-1.0, 1.0)),
    "gelu": (_gelu, _dgelu, ()),
}


def activation_pair(name: str) -> tuple[Callable[[Any], Any], Callable[[Any], Any], tuple[float, ...]]:
    """(φ, φ', kinks) of an activation by its arraynorm name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)} for the theory, got {name!r}")
    return ACTIVATIONS[name]


def gauss_mean(f: Callable[[Any], Any], sigma: float = 1.0, kinks: Sequence[float] = ()) -> float:
    """E f(σz), z ~ N(0, 1), by adaptive quadrature (``scipy.integrate.quad``) on ±12σ, split at
    the kinks of f (in units of its argument)."""
    pts = sorted({float(k) for k in kinks if abs(k) < 12 * sigma})
    edges = [-12.0 * sigma, *pts, 12.0 * sigma]
    dens = lambda x: f(np.asarray(x)) * np.exp(-0.5 * (x / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    return float(sum(integrate.quad(dens, a, b, limit=200, epsabs=1e-13, epsrel=1e-12)[0]
                     for a, b in zip(edges[:-1], edges[1:])))


def sphere_directions(batch: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` directions uniform on the unit sphere of 1^⊥ ⊂ ℝᴮ (rows): Gz/‖Gz‖, z ~ N(0, I)."""
    z = rng.standard_normal((n, batch))
    u = z - z.mean(axis=1, keepdims=True)
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def _check_batch(fname: str, batch: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 4:
        raise ValueError(f"{fname}: the BN gradient theory needs batch >= 4 (E 1/χ²_(B−1) is "
                         f"infinite for B <= 3), got {batch!r}")


def _relu_kernel(rho: float) -> float:
    """E relu(u) relu(v) for unit-variance Gaussians with correlation ρ (Cho & Saul 2009)."""
    return (math.sqrt(1.0 - rho * rho) + (math.pi - math.acos(rho)) * rho) / (2.0 * math.pi)


def bn_fixed_point(activation: str, batch: int, *, samples: int = 20000,
                   rng: Any = 0) -> tuple[float, float]:
    """(q, p): diagonal and off-diagonal of the BSB1 fixed point Σ* = E φ(√B n)φ(√B n)ᵀ of the
    batch-normalized Gram map; closed forms for identity and ReLU, Monte Carlo over ``samples``
    directions otherwise."""
    _check_batch("bn_fixed_point", batch)
    B = int(batch)
    if activation == "identity":
        return 1.0, -1.0 / (B - 1)
    if activation == "relu":
        return 0.5, _relu_kernel(-1.0 / (B - 1))
    phi = activation_pair(activation)[0]
    n = sphere_directions(B, samples, np.random.default_rng(rng))
    f = phi(math.sqrt(B) * n)
    q = float(np.mean(f * f))
    s = f.sum(axis=1)
    p = float(np.mean(s * s - np.sum(f * f, axis=1)) / (B * (B - 1)))
    return q, p


def bn_gradient_factor(activation: str, batch: int) -> float:
    """λ: the factor per layer of E‖∂L/∂X‖² of a deep φ(BN(XWᵀ)) network at initialization,
    closed form (module docstring) for ``"identity"`` and ``"relu"``; the norm grows by √λ.

    >>> bn_gradient_factor("identity", 8)
    1.2
    >>> round(bn_gradient_factor("relu", 32), 4)
    1.522
    """
    _check_batch("bn_gradient_factor", batch)
    B = int(batch)
    if activation == "identity":
        return (B - 2) / (B - 3)
    if activation == "relu":
        rho = -1.0 / (B - 1)
        q, p = 0.5, _relu_kernel(rho)
        p2 = 0.25 + math.asin(rho) / (2 * math.pi)
        t1 = (B - 1) ** 2 / (2 * B) + (B - 1) * p2 / B
        t2 = 0.5 - (0.5 + (B - 1) * p) / B
        return B / ((q - p) * (B - 3)) * (t1 - t2) / (B - 1)
    raise ValueError(f"bn_gradient_factor: closed form only for 'identity' and 'relu', got "
                     f"{activation!r}; use bn_gradient_spectrum")


def bn_backward_value(pi: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """⟨Π, (G − nnᵀ) D Π D (G − nnᵀ)⟩ for each row of ``n`` (directions in 1^⊥) and ``d``
    (φ' at √B n), Π symmetric with range in 1^⊥, in O(B²) per row:

        dᵀ(Π∘Π)d − 2 (d∘n)ᵀ Π (d∘Πn) + (nᵀΠn) (d∘n)ᵀ Π (d∘n).
    """
    pn = n @ pi
    dn = d * n
    dnp = dn @ pi
    return (np.sum((d @ (pi * pi)) * d, axis=1) - 2 * np.sum(dnp * (d * pn), axis=1)
            + np.sum(n * pn, axis=1) * np.sum(dnp * dn, axis=1))


def bn_gradient_spectrum(activation: str, batch: int, *, samples: int = 20000,
                         rng: Any = 0) -> dict[str, Any]:
    """The three eigenvalues of the backward Gram map T at the BSB1 fixed point (module
    docstring), by Monte Carlo over ``samples`` uniform directions n, with standard errors.

    Returns ``{"trivial": λ₀, "standard": λ₁, "two_row": λ₂, "stderr": {...}, "leading": max,
    "q": q, "p": p, "samples": samples}``; ``trivial`` is the rate of the gradient norm.

    >>> s = bn_gradient_spectrum("tanh", 16, samples=4000, rng=0)
    >>> s["leading"] == s["trivial"], round(s["trivial"], 2)
    (True, 1.25)
    """
    _check_batch("bn_gradient_spectrum", batch)
    B = int(batch)
    g = np.random.default_rng(rng)
    q, p = bn_fixed_point(activation, B, samples=samples, rng=g)
    _, dphi, _ = activation_pair(activation)
    n = sphere_directions(B, samples, g)
    d = dphi(math.sqrt(B) * n)
    c = B / ((q - p) * (B - 3))
    eye = np.eye(B)
    G = eye - 1.0 / B
    w = np.outer(eye[0] - eye[1], eye[2] - eye[3])
    reps = {"trivial": G, "standard": G @ np.diag(eye[0] - eye[1]) @ G, "two_row": w + w.T}
    out: dict[str, Any] = {"stderr": {}}
    for key, pi in reps.items():
        v = c * bn_backward_value(pi, n, d) / np.sum(pi * pi)
        out[key] = float(v.mean())
        out["stderr"][key] = float(v.std(ddof=1) / math.sqrt(samples))
    out.update(leading=max(out[k] for k in reps), q=q, p=p, samples=samples)
    return out


def weight_gain2(norm: str, init: str, width: int) -> float | None:
    """σ_w²: E‖Wᵀδ‖²/‖δ‖² of a square hidden layer at initialization with the scheme's default
    gain (``None`` where it is not a fixed number, e.g. spectral normalization's estimated
    σ_max)."""
    if norm == "centered_weight_norm":
        return 1.0  # rows centred and of unit norm
    if norm == "weight_standardization":
        return float(width)  # rows centred with unit-variance entries: squared norm fan_in
    if norm == "spectral_norm":
        # W/σ_max: σ_max = σ_w for orthogonal weights, → 2σ_w (Marchenko–Pastur edge) for
        # square i.i.d. ones (finite width: a few per cent smaller, so the gain a bit larger)
        return 1.0 if init == "orthogonal" else 0.25
    # xavier and xavier_uniform give variance 1/fan_in on a square layer; uniform U(±1/√fan_in)
    gains = {"gaussian": 1.0, "he": 2.0, "xavier": 1.0, "xavier_uniform": 1.0, "orthogonal": 1.0,
             "uniform": 1.0 / 3.0}
    return gains.get(init)


def _default_groups(width: int) -> int:
    """GroupNorm's group count in ``deep_stack`` by default: the largest g <= 8 dividing the width."""
    return max(g for g in range(1, min(8, width) + 1) if width % g == 0)


def meanfield_grad_factor(norm: str, position: str, activation: str, *, init: str = "he",
                          width: int = 256, batch: int = 32, residual: bool = False) -> float | None:
    """χ: the factor per layer of E‖∂L/∂h‖² in a deep plain stack at initialization (module
    docstring), or ``None`` where no closed mean-field value applies (residual stacks, whose
    growth is sub-exponential or set by the stream; whitening and renormalized BN; BN or
    GroupNorm after φ; non-homogeneous φ without normalization)."""
    if residual or activation not in ACTIVATIONS:
        return None
    phi, dphi, kinks = ACTIVATIONS[activation]
    if norm in ("none", "weight_norm", "centered_weight_norm", "weight_standardization",
                "spectral_norm"):
        s2 = weight_gain2(norm, init, width)
        if s2 is None or activation not in ("identity", "relu"):
            return None
        return s2 * (1.0 if activation == "identity" else 0.5)
    if norm == "batch":
        if position != "before" or batch < 4:
            return None
        if activation in ("identity", "relu"):
            return bn_gradient_factor(activation, batch)
        return None
    if norm in ("layer", "rms", "position", "group"):
        m = width // _default_groups(width) if norm == "group" else width
        if position == "before":
            if activation in ("identity", "relu") and m > 3:
                return (m - 1) / (m - 2) if norm == "rms" else (m - 2) / (m - 3)
            if norm == "group":
                return None
            return gauss_mean(lambda x: dphi(x) ** 2, 1.0, kinks) / gauss_mean(lambda x: phi(x) ** 2, 1.0, kinks)
        if norm == "group":
            return None  # small groups after φ: no closed form here
        s2 = weight_gain2("none", init, width)
        if s2 is None:
            return None
        sig = math.sqrt(s2)
        second = gauss_mean(lambda x: phi(x) ** 2, sig, kinks)
        var = second - gauss_mean(phi, sig, kinks) ** 2 if norm != "rms" else second
        return s2 * gauss_mean(lambda x: dphi(x) ** 2, sig, kinks) / var
    return None


def pre_ln_stream_slope(depths: Sequence[int], a: float) -> float:
    """Log-log slope over ``depths`` of (1 + a·L)^{−½}: the last-layer gradient of a Pre-LN
    stack whose stream grows as E‖x_L‖² = (1 + a·L)·d (Xiong et al.'s Lemma 2 bounds are
    a = ½ and a = 3/2); it tends to −½ as the depths grow."""
    x = np.log(np.asarray(depths, dtype=np.float64))
    y = -0.5 * np.log1p(a * np.asarray(depths, dtype=np.float64))
    return float(np.polyfit(x, y, 1)[0])

