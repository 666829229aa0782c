"""Free probability of deep Jacobians: the spectrum of JJᵀ for a deep network at initialization.

For a fully connected network hˡ = Wˡ φ(hˡ⁻¹) + bˡ at the mean-field fixed point q* of the
pre-activation variance, the input–output Jacobian is J = D_L W_L ⋯ D_1 W_1 with
Dˡ = diag φ'(hˡ). In the wide limit the factors are asymptotically free (Pennington,
Schoenholz & Ganguli 2017 "Resurrecting the sigmoid in deep learning through dynamical
isometry", 2018 "The emergence of spectral universality in deep networks"), so the
S-transform of JJᵀ is a product,

    S_JJᵀ(z) = S_{WWᵀ}(z)^L · S_{D²}(z)^L,

with S_{WWᵀ}(z) = 1/(σ_w²(1 + z)) for Gaussian N(0, σ_w²/N) weights (Marchenko–Pastur) and
1/σ_w² for scaled orthogonal ones. Conventions (theirs): G(λ) = E 1/(λ − x) the Stieltjes
transform, M(λ) = λG(λ) − 1 = Σ_k m_k λ^{-k} the moment generating function, and
S(z) = (1 + z)/(z M⁻¹(z)). The spectral density is ρ(λ) = −Im G(λ + i0)/π.

Solving it. Write D² = t ~ the law of φ'(h)², h ~ N(0, q*), as atoms t_j with weights w_j
— exact for linear (t = 1), ReLU and hard-tanh (φ'² ∈ {0, 1}). With the D²-variable z,
M = M_D(z) = Σ w_j t_j/(z − t_j) is explicit and the equation
λ = M_JJᵀ⁻¹(M) = (1 + M)/(M S_JJᵀ(M)) becomes one equation for z:

    log λ = a·log(1 + M) − (1 − L)·log M + L·log z + L·log σ_w²,   a = 1 − L + L·[Gaussian].

For λ in the upper half-plane the physical root has Im M < 0 and Im z > 0, where these
principal logarithms are continuous; it is followed by Newton's method
(``scipy.optimize.newton``, vectorized over a grid of λ, in the variable log z) from far above
the real axis (where M ≈ m₁/λ) down to λ = x + i·10⁻¹⁰x, x on the grid. Point masses are
known in closed form and subtracted: the dead units of ReLU/hard-tanh put an atom at λ = 0 of
mass P(φ' = 0); with orthogonal weights the part of the input that stays in every layer's
linear region is mapped isometrically, an atom at σ_w^{2L} (Bercovici–Voiculescu). tanh has
a continuous law of φ'², so only its moments are given here.

Moments follow from the S-transform's expansion S(z) = s₀ + s₁z + …: m₁ = 1/s₀ and
m₂/m₁² − 1 = −s₁/s₀, which adds over free factors, so

    m₁ = (σ_w² μ₁)^L = χ₁^L,    m₂/m₁² − 1 = L·(v_W + μ₂/μ₁² − 1),

μ_k = E φ'(h)^{2k}, v_W = 1 for Gaussian weights and 0 for orthogonal ones. For a deep linear
Gaussian network the moments are the Fuss–Catalan numbers: E tr (JJᵀ)^k / N →
σ_w^{2Lk} · C((L+1)k, k)/(Lk + 1).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import integrate, optimize, special, stats

__all__ = ["ACTIVATIONS", "INITS", "gaussian_expectation", "CriticalPoint", "critical_point", "DerivativeLaw",
           "derivative_law", "fuss_catalan", "jjt_moments", "FreeSpectrum", "jjt_spectrum",
           "DENSITY_ACTIVATIONS"]

#: activations with a mean-field critical point and a derivative law
ACTIVATIONS = ("linear", "relu", "hardtanh", "tanh")
#: weight distributions with a known S-transform
INITS = ("gaussian", "orthogonal")
#: activations whose law of φ'² is a finite set of atoms, so the density of JJᵀ is computed
DENSITY_ACTIVATIONS = ("linear", "relu", "hardtanh")

_HERMITE = special.roots_hermitenorm(101)  # probabilists' Gauss–Hermite: ∫ f dN(0, 1)


def gaussian_expectation(f: Any, q: float) -> float:
    """E f(√q·ξ), ξ ~ N(0, 1), by 101-point Gauss–Hermite quadrature (f smooth or with a
    kink at most: the error is far below the sampling errors it is compared with)."""
    x, w = _HERMITE
    return float(np.sum(w * f(math.sqrt(q) * x)) / math.sqrt(2 * math.pi))


def _erf_inside(q: float) -> float:
    """P(|h| < 1), h ~ N(0, q): the fraction of hard-tanh units in their linear part."""
    return float(special.erf(1.0 / math.sqrt(2.0 * q)))


def _hardtanh_second_moment(q: float) -> float:
    """E clip(h, −1, 1)², h ~ N(0, q), in closed form (the kink defeats quadrature):
    q·[P(|h|<1) − 2φ(1/√q)/√q] + P(|h| ≥ 1)."""
    s = math.sqrt(q)
    p = _erf_inside(q)
    return q * (p - 2.0 * stats.norm.pdf(1.0 / s) / s) + (1.0 - p)


@dataclass(frozen=True)
class CriticalPoint:
    """A point on the order-to-chaos critical line χ₁ = σ_w² E φ'(h)² = 1 at fixed point q*
    (q* = σ_w² E φ(h)² + σ_b², h ~ N(0, q*))."""

    activation: str
    q_star: float
    sigma_w: float
    sigma_b: float
    chi1: float


def critical_point(activation: str, q_star: float = 0.25) -> CriticalPoint:
    """σ_w, σ_b that put ``activation`` at criticality with pre-activation variance ``q_star``.

    linear: σ_w = 1, σ_b = 0 (any q*); ReLU: σ_w = √2, σ_b = 0 (any q*, ReLU is
    homogeneous); hard-tanh: σ_w² = 1/P(|h| < 1); tanh: σ_w² = 1/E sech⁴(h); then
    σ_b² = q* − σ_w² E φ(h)² (Pennington et al. 2017). Raises ``ValueError`` where σ_b² < 0
    (no critical point at that q*).

    >>> critical_point("relu").sigma_w ** 2
    2.0000000000000004
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"critical_point: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not (isinstance(q_star, (int, float)) and math.isfinite(q_star) and q_star > 0):
        raise ValueError(f"critical_point: q_star must be a positive finite number, got {q_star!r}")
    if activation == "linear":
        return CriticalPoint(activation, float(q_star), 1.0, 0.0, 1.0)
    if activation == "relu":
        return CriticalPoint(activation, float(q_star), math.sqrt(2.0), 0.0, 1.0)
    if activation == "hardtanh":
        sw2 = 1.0 / _erf_inside(q_star)
        second = _hardtanh_second_moment(q_star)
    else:
        sw2 = 1.0 / gaussian_expectation(lambda h: np.cosh(h) ** -4, q_star)
        second = gaussian_expectation(lambda h: np.tanh(h) ** 2, q_star)
    sb2 = q_star - sw2 * second
    if sb2 < -1e-14 * q_star:
        raise ValueError(f"critical_point: {activation} has no critical point at q_star={q_star} "
                         f"(σ_b² would be {sb2:.3g} < 0)")
    return CriticalPoint(activation, float(q_star), math.sqrt(sw2), math.sqrt(max(sb2, 0.0)), 1.0)


@dataclass(frozen=True)
class DerivativeLaw:
    """The law of t = φ'(h)², h ~ N(0, q*), as atoms ``t`` with weights ``w`` (summing to 1)."""

    t: np.ndarray
    w: np.ndarray

    @property
    def mu1(self) -> float:
        return float(np.sum(self.w * self.t))

    @property
    def mu2(self) -> float:
        return float(np.sum(self.w * self.t ** 2))

    @property
    def zero_mass(self) -> float:
        """P(φ'(h) = 0): the fraction of dead units (the atom of JJᵀ at 0)."""
        return float(np.sum(self.w[self.t == 0]))


@functools.lru_cache(maxsize=64)
def derivative_law(activation: str, q_star: float = 0.25) -> DerivativeLaw:
    """The law of φ'(h)² at the fixed point, h ~ N(0, q*): one atom at 1 for linear, atoms
    {0, 1} of mass ½ each for ReLU and of mass 1 − p, p = P(|h| < 1), for hard-tanh.

    >>> derivative_law("hardtanh", 1.0).w.round(4).tolist()
    [0.3173, 0.6827]
    """
    if activation == "linear":
        return DerivativeLaw(np.array([1.0]), np.array([1.0]))
    if activation == "relu":
        return DerivativeLaw(np.array([0.0, 1.0]), np.array([0.5, 0.5]))
    if activation == "hardtanh":
        p = _erf_inside(q_star)
        return DerivativeLaw(np.array([0.0, 1.0]), np.array([1.0 - p, p]))
    raise ValueError(f"derivative_law: the law of φ'² is a finite set of atoms for {DENSITY_ACTIVATIONS}, "
                     f"got {activation!r}")


def _exact_mu(activation: str, q_star: float) -> tuple[float, float]:
    """μ₁ = E φ'(h)², μ₂ = E φ'(h)⁴ without discretization (quadrature for tanh)."""
    if activation == "tanh":
        return (gaussian_expectation(lambda h: np.cosh(h) ** -4, q_star),
                gaussian_expectation(lambda h: np.cosh(h) ** -8, q_star))
    law = derivative_law(activation, q_star)
    return law.mu1, law.mu2


def fuss_catalan(depth: int, k: int) -> float:
    """The Fuss–Catalan number C((L+1)k, k)/(Lk + 1): the k-th moment of JJᵀ for a product
    of L Gaussian N(0, 1/N) matrices as N → ∞ (L = 1: the Catalan numbers, Marchenko–Pastur).

    >>> [fuss_catalan(1, k) for k in (1, 2, 3)], [fuss_catalan(2, k) for k in (1, 2, 3)]
    ([1.0, 2.0, 5.0], [1.0, 3.0, 12.0])
    """
    return float(special.comb((depth + 1) * k, k, exact=True)) / (depth * k + 1)


def jjt_moments(activation: str, init: str, depth: int, q_star: float = 0.25,
                sigma_w: float | None = None) -> tuple[float, float]:
    """(m₁, m₂) of the eigenvalues of JJᵀ: m₁ = (σ_w²μ₁)^L and
    m₂ = m₁²·(1 + L(v_W + μ₂/μ₁² − 1)), v_W = 1 (Gaussian) or 0 (orthogonal); σ_w defaults
    to the critical one."""
    _check(init, depth)
    sw = critical_point(activation, q_star).sigma_w if sigma_w is None else float(sigma_w)
    mu1, mu2 = _exact_mu(activation, q_star)
    m1 = (sw * sw * mu1) ** depth
    v_w = 1.0 if init == "gaussian" else 0.0
    return m1, m1 * m1 * (1.0 + depth * (v_w + mu2 / mu1 ** 2 - 1.0))


def _check(init: str, depth: int) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")


# ----------------------------------------------------------------------------- the solver
def _log_inverse(logz: np.ndarray, law: DerivativeLaw, depth: int, sigma_w2: float,
                 gaussian: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log M_JJᵀ⁻¹ as a function of log z (the D²-variable), its derivative in log z, and M."""
    z = np.exp(logz)
    d = z[..., None] - law.t
    r = law.w * law.t / d
    m = r.sum(-1)
    dm = -(r / d).sum(-1) * z  # dM/dlog z
    L = depth
    a = 1.0 - L + (L if gaussian else 0.0)
    val = a * np.log1p(m) - (1.0 - L) * np.log(m) + L * logz + L * math.log(sigma_w2)
    der = (a / (1.0 + m) - (1.0 - L) / m) * dm + L
    return val, der, m


def _solve_m(x: np.ndarray, law: DerivativeLaw, depth: int, sigma_w2: float, gaussian: bool,
             m1: float, *, ratio: float = 0.1, floor: float = 1e-10) -> np.ndarray:
    """M(x + i·floor·x) for real x > 0 on the physical branch, by continuation in the
    imaginary part from far above the support (see the module docstring); NaN where Newton
    did not converge."""
    eta0 = 50.0 * max(float(x.max()), m1)
    z0 = law.mu1 * (x + 1j * eta0) / m1  # M ≈ m₁/λ and M_D(z) ≈ μ₁/z far away
    logz = np.log(z0)
    eta_prev = np.full(x.shape, np.inf)
    last: dict[str, np.ndarray] = {}

    def f(u: np.ndarray, target: np.ndarray) -> np.ndarray:
        val, der, _ = _log_inverse(u, law, depth, sigma_w2, gaussian)
        last["der"] = der  # newton asks for f'(u) at the same u next: computed once
        return val - target

    s = 0
    while True:
        eta = np.maximum(eta0 * ratio ** s, floor * x)
        move = eta < eta_prev  # points already at their floor stay solved
        if not move.any():
            break
        target = np.log(x[move] + 1j * eta[move])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = optimize.newton(f, logz[move], fprime=lambda u, t: last["der"],
                                  args=(target,), tol=1e-12, maxiter=50, full_output=True)
        # near the edge the root is nearly double and |Δ| stalls at √ε: judged by the
        # residual below, not by Newton's step size
        logz[move] = res.root
        eta_prev, s = eta, s + 1
    with np.errstate(all="ignore"):
        val, _, m = _log_inverse(logz, law, depth, sigma_w2, gaussian)
        ok = (np.abs(val - np.log(x * (1 + 1j * floor))) < 1e-9) & (logz.imag > -1e-9)
    return np.where(ok, m, np.nan)


def _atoms(law: DerivativeLaw, depth: int, sigma_w2: float, gaussian: bool) -> list[tuple[float, float]]:
    """Point masses of JJᵀ's law: at 0 the dead units' mass P(φ' = 0) (every init); for
    orthogonal weights the Bercovici–Voiculescu atoms of a free product,
    (μ ⊠ ν)({ab}) = max(0, μ({a}) + ν({b}) − 1), at σ_w^{2L}·t^L for an atom t > 0 of mass
    w (mass max(0, 1 − L(1 − w))) — all of the law for a depth-1 orthogonal layer
    (JJᵀ = σ_w² D² exactly). Gaussian weights (Marchenko–Pastur) leave no other atom."""
    out = [(0.0, law.zero_mass)] if law.zero_mass > 0 else []
    if gaussian:
        return out
    if depth == 1:
        return out + [(sigma_w2 * t, w) for t, w in zip(law.t, law.w) if t > 0]
    for t, w in zip(law.t, law.w):
        mass = 1.0 - depth * (1.0 - w)
        if t > 0 and mass > 0:
            out.append((sigma_w2 ** depth * t ** depth, mass))
    return out


def _edge(law: DerivativeLaw, depth: int, sigma_w2: float, gaussian: bool) -> float:
    """The support's upper edge: the minimum of λ = M⁻¹(M) over real z > max t (real M > 0),
    or its limit at z → max t when the minimum sits there."""
    tmax = float(law.t.max())

    def loglam(u: float) -> float:
        val = _log_inverse(np.array([math.log(tmax + math.exp(u))], dtype=np.complex128), law,
                           depth, sigma_w2, gaussian)[0]
        return float(val[0].real)

    res = optimize.minimize_scalar(loglam, bounds=(-25.0, 25.0), method="bounded",
                                   options={"xatol": 1e-10})
    return math.exp(min(res.fun, loglam(-25.0)))


@dataclass
class FreeSpectrum:
    """The free-probability law of the eigenvalues λ of JJᵀ (singular values √λ of J).

    Attributes
    ----------
    grid, density : λ grid (ascending) and the density ρ(λ) of the continuous part on it.
    atoms : point masses ``(λ, mass)``: dead units at 0, and for orthogonal weights the
        isometric part at σ_w^{2L} (all of the law for a deep linear orthogonal network).
    edge : the upper edge of the support, λ_max.
    m1, m2 : the first two moments (closed form).
    """

    grid: np.ndarray
    density: np.ndarray
    atoms: list[tuple[float, float]]
    edge: float
    m1: float
    m2: float

    @property
    def atom_mass(self) -> float:
        return float(sum(m for _, m in self.atoms))

    @functools.cached_property
    def _upper(self) -> np.ndarray:
        # continuous mass above each grid point, integrated from the top: exact however much
        # mass sits below the grid (a deep Gaussian product has most of it at λ ≪ 1e-30)
        if self.grid.size < 2:
            return np.zeros(self.grid.shape)
        # in u = log λ, where the power laws at both ends of the support are smooth
        d = np.nan_to_num(self.density) * self.grid
        u = np.log(self.grid)
        return integrate.cumulative_simpson(d[::-1], x=-u[::-1], initial=0.0)[::-1]

    def cdf(self, lam: Any) -> np.ndarray:
        """P(λ' ≤ λ); NaN below the grid, where the continuous part is not resolved."""
        lam = np.asarray(lam, dtype=np.float64)
        out = np.zeros(lam.shape)
        for loc, mass in self.atoms:
            out = out + np.where(lam >= loc, mass, 0.0)
        if self.grid.size < 2:
            return out
        cont = 1.0 - self.atom_mass
        upper = np.interp(lam, self.grid, self._upper, left=np.nan, right=0.0)
        return out + np.where(lam < self.grid[0], np.nan, cont - upper)

    def quantile(self, p: float) -> float:
        """The smallest λ on the grid (or atom) with P(λ' ≤ λ) ≥ p."""
        pts = np.unique(np.concatenate([self.grid, [loc for loc, _ in self.atoms]]))
        f = self.cdf(pts)
        i = int(np.searchsorted(np.nan_to_num(f, nan=-1.0), p))
        return float(pts[min(i, len(pts) - 1)])

    def moment(self, k: int) -> float:
        """Σ atoms + ∫ λᵏ ρ(λ) dλ by Simpson's rule in log λ on the grid (λᵏ kills the unresolved
        mass near 0)."""
        total = sum(mass * loc ** k for loc, mass in self.atoms)
        if self.grid.size >= 2:
            total += float(integrate.simpson(np.nan_to_num(self.density) * self.grid ** (k + 1),
                                             x=np.log(self.grid)))
        return float(total)

    def continuous_mass(self) -> float:
        """∫ρ over the grid (all of it when the grid reaches low enough)."""
        return float(self._upper[0]) if self.grid.size >= 2 else 0.0

    def log10_density(self) -> tuple[np.ndarray, np.ndarray]:
        """(u, density of u = log₁₀ λ) = (log₁₀ λ, ρ(λ)·λ·ln 10) of the continuous part:
        the curve a histogram of log₁₀ λ is compared with."""
        return np.log10(self.grid), np.nan_to_num(self.density) * self.grid * math.log(10.0)


@functools.lru_cache(maxsize=256)
def jjt_spectrum(activation: str, init: str, depth: int, q_star: float = 0.25, *,
                 sigma_w: float | None = None, points: int = 300, lowest: float = 1e-26) -> FreeSpectrum:
    """The law of the eigenvalues of JJᵀ for a depth-``depth`` network of ``activation``
    (linear, ReLU or hard-tanh: φ'² takes the values 0 and 1 only) with ``init`` weights at
    the critical point of ``q_star`` (or the given σ_w), in the wide limit.

    The continuous density is computed on a grid log-spaced from ``lowest``·λ_max up to
    λ_max and a linear grid over the top of the support (``points`` each). Cached.

    >>> s = jjt_spectrum("relu", "gaussian", 4)
    >>> round(s.moment(1), 3), round(s.moment(2), 2), s.atoms       # m₁ = χ₁^L, m₂ = 1 + 2L
    (1.0, 9.0, [(0.0, 0.5)])
    """
    _check(init, depth)
    if activation not in DENSITY_ACTIVATIONS:
        raise ValueError(f"jjt_spectrum: the density is exact for {DENSITY_ACTIVATIONS} "
                         f"(φ'² in {{0, 1}}), got {activation!r}; jjt_moments covers any activation")
    cp = critical_point(activation, q_star)
    sw = cp.sigma_w if sigma_w is None else float(sigma_w)
    sw2 = sw * sw
    law = derivative_law(activation, q_star)
    m1, m2 = jjt_moments(activation, init, depth, q_star, sw)
    gaussian = init == "gaussian"
    atoms = _atoms(law, depth, sw2, gaussian)
    if sum(m for _, m in atoms) > 1 - 1e-12:  # all point masses: nothing to solve
        top = max(loc for loc, _ in atoms)
        return FreeSpectrum(np.array([]), np.array([]), atoms, top, m1, m2)
    edge = _edge(law, depth, sw2, gaussian)
    grid = np.unique(np.concatenate([
        edge * np.logspace(math.log10(lowest), 0.0, points),
        edge * (1.0 - np.logspace(-10, math.log10(0.7), points)),  # √ and 1/√ edges
        edge * (1.0 + np.logspace(-8, -1, 12))]))
    # a grid point on top of an atom would see its pole, not the continuous part
    for loc, _ in atoms:
        grid = grid[np.abs(grid - loc) > 1e-6 * max(loc, 1e-300)]
    m = _solve_m(grid, law, depth, sw2, gaussian, m1)
    lam = grid * (1 + 1e-10j)
    g = (1.0 + m) / lam - sum(mass / (lam - loc) for loc, mass in atoms)
    density = np.clip(-g.imag / math.pi, 0.0, None)
    return FreeSpectrum(grid, density, atoms, edge, m1, m2)
