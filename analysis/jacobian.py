"""Input–output Jacobians of deep stacks: their singular values with depth, against free
probability, and the null directions normalization puts in them (dynamical isometry).

For a stack y = f(x) built by :func:`arraynorm.nn.deep_stack` (blocks Linear → norm → φ)
the study forms the Jacobian J_ℓ of the first ℓ blocks at a batch of inputs from
arraynorm's exact forward-mode products (``model.jvp``; :class:`arraynorm.nn.Probe` records
the tangent after every block, so one pass gives every depth) and measures the eigenvalues
λ = s² of J_ℓJ_ℓᵀ:

* a per-sample stack (no normalization, LN, RMS, GN, weight normalizations) has one d × d
  Jacobian per input: pushing the d basis tangents through a batch of d copies of the input
  gives it densely in one pass, and ``scipy.linalg.svdvals`` its spectrum;
* a batch-normalized stack maps the whole batch: its Jacobian is (N·d) × (N·d). Up to
  ``dense_max`` it is formed column by column (N·d JVPs); above, it stays a SciPy
  ``LinearOperator`` (matvec = JVP, rmatvec = VJP): ``scipy.sparse.linalg.svds`` gives its
  largest singular value, Hutchinson estimates E‖Jv‖², E‖JᵀJv‖² over Rademacher v its
  first two moments (the condition number is then not measured).

Known null directions (exact at eps = 0; with eps > 0 the x̂ direction has singular value
rstd·eps/(var + eps) instead of 0). In the space of the first normalization's input h:

==========================  ===============================================  ============
normalization               null directions of its Jacobian                  count
==========================  ===============================================  ============
LayerNorm                   per sample: 1 (the mean) and ĥ = h − mean h       2 per sample
RMSNorm                     per sample: h (the scale)                        1 per sample
GroupNorm (G groups)        per sample and group: 1_g and ĥ_g                2G per sample
BatchNorm                   per feature c: 1_N ⊗ e_c and ĥ_{:,c} ⊗ e_c        2d per batch
scale-only BatchNorm        per feature c: h_{:,c} ⊗ e_c                      d per batch
weight standardization,     the input direction 1 (each row of W sums to 0)  1 per sample
centred weight norm
none, WN, spectral norm     —                                                0
==========================  ===============================================  ============

Pulled back through the first Linear (h = Wx + b, W square and invertible: x-directions
W⁻¹u), these are null directions of the whole stack — later layers' null directions meet the
range of the layers before them only in 0, generically — and the study checks
‖J v‖ ≈ 0 for them (``null_residual``: ‖Jv‖/(s_max‖v‖)), projects them out (the singular
values of J Q, Q an orthonormal basis of their complement) and measures on the range: the
moments m₁ = E λ and var = E λ²/m₁² − 1, s_max, the condition number κ = s_max/s_min
(singular values below n·ε·s_max — dead ReLU units, the floating-point floor — count as zero;
``kappa_at_floor`` marks κ set by that floor), a histogram of log₁₀ λ, and the per-layer
growth of m₁.

Theory (:mod:`analysis._free`; no normalization, weights at the critical point χ₁ = 1 of the
mean-field theory at pre-activation variance ``q_star``, inputs x = φ(√q*·ξ) at the fixed
point): the moments m₁ = χ₁^L = 1 and var = L(v_W + μ₂/μ₁² − 1) for every activation, and for
linear, ReLU and hard-tanh the whole law of λ from the S-transform (Pennington, Schoenholz &
Ganguli 2017, 2018): its CDF against the measured one (the Kolmogorov–Smirnov distance over
the resolvable λ ≥ (10³·n·ε·s_max)²), and the classical location of the largest of n
eigenvalues (the 1 − 1/(2n) quantile) beside the measured s_max. Gaussian weights spread the
spectrum (var ≥ L for any φ), orthogonal weights with a nearly linear φ (small q*) keep it
concentrated: dynamical isometry.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import svds

import arraynorm as an

from ._backend import Backend, point_rng
from ._fit import fit_growth
from ._free import ACTIVATIONS, DENSITY_ACTIVATIONS, INITS, critical_point, jjt_moments, jjt_spectrum
from ._operator import jacobian_operator
from ._plot import colors, figure
from ._result import register_plotter
from ._study import Context, Outcome, check_choices, study

__all__ = ["jacobian", "NORMS", "null_directions", "restricted_singular_values", "ks_distance",
           "sample_jacobians", "batch_jacobians"]

#: normalizations with a stated null space (see the module docstring)
NORMS = ("none", "batch", "batch_uncentered", "layer", "rms", "group", "weight_norm",
         "spectral_norm", "weight_standardization", "centered_weight_norm")
#: normalizations whose Jacobian couples the batch
BATCH_COUPLED = ("batch", "batch_uncentered")
_ACTIVATION_NORMS = ("batch", "batch_uncentered", "layer", "rms", "group")
_LIBRARY_ACTIVATION = {"linear": "identity", "relu": "relu", "hardtanh": "hardtanh", "tanh": "tanh"}
_PHI = {"linear": lambda h: h, "relu": lambda h: np.maximum(h, 0.0),
        "hardtanh": lambda h: np.clip(h, -1.0, 1.0), "tanh": np.tanh}


# ------------------------------------------------------------------------- null directions
def _centred(a: np.ndarray, axis: int) -> np.ndarray:
    return a - a.mean(axis=axis, keepdims=True)


def null_directions(norm: str, h: np.ndarray, weight: np.ndarray, groups: int = 1) -> np.ndarray:
    """The known null directions of a stack whose first block is Linear(W) → ``norm``, at the
    pre-normalization activation ``h``, as columns in the stack's input space.

    ``h`` is one sample's (d,) for a per-sample normalization, the batch's (N, d) for a
    batch-coupled one (then the columns are flattened (N, d) directions, row-major, as
    ``x.ravel()``). Directions u of h are pulled back as W⁻¹u (δh = W δx). Returns a
    (dimension, k) array, k from the table in the module docstring (0 columns: none known).

    >>> w = np.eye(3); v = null_directions("layer", np.array([1.0, 2.0, 6.0]), w)
    >>> v.shape, v[:, 0].tolist(), v[:, 1].tolist()
    ((3, 2), [1.0, 1.0, 1.0], [-2.0, -1.0, 3.0])
    """
    h = np.asarray(h, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    d = w.shape[1]
    if norm in ("none", "weight_norm", "spectral_norm"):
        return np.zeros((h.size, 0))
    if norm in ("weight_standardization", "centered_weight_norm"):
        return np.ones((d, 1))  # W·1 = 0: already in the input space
    if norm in BATCH_COUPLED:
        if h.ndim != 2:
            raise ValueError(f"null_directions: {norm} needs the batch's h of shape (N, d), got {h.shape}")
        n = h.shape[0]
        cols = []
        patterns = [h] if norm == "batch_uncentered" else [np.ones_like(h), _centred(h, 0)]
        for pat in patterns:
            for c in range(d):
                u = np.zeros_like(h)
                u[:, c] = pat[:, c]
                cols.append(np.linalg.solve(w, u.T).T.ravel())  # δx = δh W⁻ᵀ, row by row
        return np.stack(cols, axis=1).reshape(n * d, -1)
    if h.ndim != 1:
        raise ValueError(f"null_directions: {norm} is per sample, h must be one sample's (d,), got {h.shape}")
    if norm == "rms":
        us = [h]
    elif norm == "layer":
        us = [np.ones(d), _centred(h, 0)]
    elif norm == "group":
        size = d // groups
        us = []
        for g in range(groups):
            part = slice(g * size, (g + 1) * size)
            one, hat = np.zeros(d), np.zeros(d)
            one[part], hat[part] = 1.0, _centred(h[part], 0)
            us += [one, hat]
    else:
        raise ValueError(f"null_directions: norm must be one of {NORMS}, got {norm!r}")
    return np.linalg.solve(w, np.stack(us, axis=1))


def restricted_singular_values(jac: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Singular values of J on the orthogonal complement of the columns of ``null``: those of
    J·Q, Q an orthonormal basis of the complement (descending; length n − rank(null))."""
    if null.shape[1] == 0:
        return scipy.linalg.svdvals(jac)
    q = scipy.linalg.null_space(null.T)
    return scipy.linalg.svdvals(jac @ q)


def ks_distance(lam: np.ndarray, spectrum: Any, floor: float, snap: float = 1e-8) -> float:
    """sup |F_measured − F_theory| over λ ≥ ``floor`` (and at the floor itself, so the mass
    below it — dead units, unresolvable λ — is compared too). Measured λ within ``snap``
    (relative) of a theory atom count as on it (rounding)."""
    lam = np.sort(np.asarray(lam, dtype=np.float64))
    for loc, _ in spectrum.atoms:
        if loc > 0:
            lam[np.abs(lam - loc) <= snap * loc] = loc
    lam = np.sort(lam)
    n = lam.size
    pts = np.concatenate([[floor], lam[lam >= floor]])
    f_th = spectrum.cdf(pts)
    upper = np.searchsorted(lam, pts, side="right") / n  # F_emp(λ)
    lower = np.searchsorted(lam, pts, side="left") / n   # F_emp(λ⁻)
    # the theory's jump at an atom lies between its left and right limits
    f_th_left = f_th - sum(np.where(pts == loc, mass, 0.0) for loc, mass in spectrum.atoms)
    d = np.maximum(np.abs(upper - f_th), np.abs(lower - f_th_left))
    return float(np.nanmax(d))


# ------------------------------------------------------------------------- one network
def _build(activation: str, init: str, norm: str, width: int, depth: int, q_star: float,
           eps: float, rng: np.random.Generator, b: Backend) -> Any:
    cp = critical_point(activation, q_star)
    kw = {"eps": eps} if norm in _ACTIVATION_NORMS else None
    return an.nn.deep_stack(depth, width, activation=_LIBRARY_ACTIVATION[activation], norm=norm,
                            init=init, sigma_w=cp.sigma_w, sigma_b=cp.sigma_b, bias=True,
                            norm_kwargs=kw, rng=rng, xp=b.xp, dtype=b.dtype)


def _first_layer(model: Any, b: Backend) -> tuple[np.ndarray, np.ndarray, int]:
    block = model[0]
    lin = block[0]
    w = b.to_numpy(lin.effective_weight())
    bias = lin.params.get("bias")
    bias = np.zeros(w.shape[0]) if bias is None else b.to_numpy(bias)
    groups = getattr(block[1], "num_groups", 1) if len(block) > 2 else 1
    return w, bias, groups


def _spectrum_record(jac: np.ndarray, null: np.ndarray, eps: float) -> dict[str, Any]:
    """What one dense Jacobian contributes: λ on the range, s_max, κ and its floor flag,
    the numerical rank, the null residual."""
    s = restricted_singular_values(jac, null)
    top = float(s[0]) if s.size else 0.0
    tol = top * max(jac.shape) * eps
    kept = s[s > tol]
    smin = float(kept[-1]) if kept.size else 0.0
    resid = 0.0
    if null.shape[1] and top > 0:
        resid = float(np.max(np.linalg.norm(jac @ null, axis=0) / np.linalg.norm(null, axis=0)) / top)
    return {"lam": s * s, "s_max": top, "kappa": top / smin if smin > 0 else math.inf,
            "at_floor": bool(smin < 1e3 * tol), "rank": int(kept.size), "dim": int(s.size),
            "null_residual": resid}


def _point(*, activation: str, init: str, norm: str, width: int, batch: int,
           depths: tuple[int, ...], q_star: float, eps: float, dense_max: int, probes: int,
           rep: int, backend: str, dtype: str, seed: int) -> dict[str, Any]:
    """The Jacobian spectra of one network at every depth of ``depths``."""
    b = Backend(backend, dtype)
    rng = point_rng(seed, "jacobian", activation, init, norm, width, rep)
    model = _build(activation, init, norm, width, max(depths), q_star, eps, rng, b)
    model.requires_grad_(True)
    x = _PHI[activation](math.sqrt(q_star) * rng.standard_normal((batch, width)))
    w, bias, groups = _first_layer(model, b)
    feps = float(np.finfo(np.float32 if dtype == "float32" else np.float64).eps)
    if norm not in BATCH_COUPLED:
        model.eval()  # per-sample maps; spectral norm then skips its per-forward power step
        per_depth = _per_sample(model, x, w, bias, norm, groups, depths, feps, b)
        method = "dense"
    elif batch * width <= dense_max:
        per_depth = _coupled_dense(model, x, w, bias, norm, depths, feps, b)
        method = "dense"
    else:
        per_depth = _coupled_operator(model, x, w, bias, norm, depths, probes, rng, b)
        method = "operator"
    return {"method": method, "depths": per_depth}


def sample_jacobians(model: Any, x: Any, depths: tuple[int, ...], backend: Backend | None = None) -> dict[int, np.ndarray]:
    """The d × d Jacobian of the first ℓ blocks of a per-sample ``model`` at one input ``x``
    (shape (d,), host NumPy), for every ℓ in ``depths``, as float64 NumPy arrays.

    A per-sample map on d copies of x, pushed along the d basis tangents, gives row j of the
    tangent after block ℓ as J_ℓ e_j: every depth's Jacobian from one forward and one JVP
    (:class:`arraynorm.nn.Probe` records the tangent after each block).
    """
    b = backend or Backend()
    d = x.shape[0]
    model.forward(b.asarray(np.repeat(np.asarray(x, dtype=np.float64)[None], d, axis=0)))
    with an.nn.Probe(model, depth=1) as p:
        model.jvp(b.asarray(np.eye(d)))
    return {ell: b.to_numpy(p.tangents[str(ell - 1)]).T for ell in depths}


def batch_jacobians(model: Any, x: Any, depths: tuple[int, ...], backend: Backend | None = None) -> dict[int, np.ndarray]:
    """The whole-batch (N·d) × (N·d) Jacobian of the first ℓ blocks of ``model`` at the batch
    ``x`` (N, d) for every ℓ in ``depths`` (flattened row-major), column by column: N·d JVPs,
    each recorded after every block."""
    b = backend or Backend()
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    model.forward(b.asarray(x))
    cols: dict[int, list[np.ndarray]] = {ell: [] for ell in depths}
    with an.nn.Probe(model, depth=1) as p:
        for k in range(n):
            e = np.zeros(n)
            e[k] = 1.0
            model.jvp(b.asarray(e.reshape(x.shape)))
            for ell in depths:
                cols[ell].append(b.to_numpy(p.tangents[str(ell - 1)]).ravel())
    return {ell: np.stack(cols[ell], axis=1) for ell in depths}


def _per_sample(model: Any, x: np.ndarray, w: np.ndarray, bias: np.ndarray, norm: str,
                groups: int, depths: tuple[int, ...], feps: float, b: Backend) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {ell: [] for ell in depths}
    for xi in x:
        jacs = sample_jacobians(model, xi, depths, b)
        null = null_directions(norm, w @ xi + bias, w, groups)
        for ell in depths:
            out[ell].append(_spectrum_record(jacs[ell], null, feps))
    return out


def _coupled_dense(model: Any, x: np.ndarray, w: np.ndarray, bias: np.ndarray, norm: str,
                   depths: tuple[int, ...], feps: float, b: Backend) -> dict[int, list[dict[str, Any]]]:
    jacs = batch_jacobians(model, x, depths, b)
    null = null_directions(norm, x @ w.T + bias, w)
    return {ell: [_spectrum_record(jacs[ell], null, feps)] for ell in depths}


def _coupled_operator(model: Any, x: np.ndarray, w: np.ndarray, bias: np.ndarray, norm: str,
                      depths: tuple[int, ...], probes: int, rng: np.random.Generator,
                      b: Backend) -> dict[int, list[dict[str, Any]]]:
    null = null_directions(norm, x @ w.T + bias, w)
    basis = np.linalg.qr(null)[0]
    n, k = x.size, null.shape[1]
    out = {}
    for ell in depths:
        op, _ = jacobian_operator(model[:ell], b.asarray(x), b)
        top = float(svds(op, k=1, return_singular_vectors=False, tol=1e-6,
                         rng=np.random.default_rng(rng.integers(2**32)))[0])
        m1 = m2 = 0.0
        for _ in range(probes):
            # Rademacher probes on the range: tr(P JᵀJ P) = E vᵀPJᵀJPv
            v = rng.choice([-1.0, 1.0], size=n)
            v = v - basis @ (basis.T @ v)
            jv = op.matvec(v)
            m1 += float(jv @ jv)
            jtjv = op.rmatvec(jv)
            m2 += float(jtjv @ jtjv)
        dim = n - k
        combo = null @ rng.standard_normal(k) if k else np.zeros(n)
        resid = (float(np.linalg.norm(op.matvec(combo)) / (top * np.linalg.norm(combo)))
                 if k and top > 0 else 0.0)
        out[ell] = [{"m1": m1 / probes / dim, "m2": m2 / probes / dim, "s_max": top,
                     "dim": dim, "null_residual": resid}]
    return out


# ------------------------------------------------------------------------- theory
def _var(m1: float, m2: float) -> float:
    """m₂/m₁² − 1, the spread of λ in units of its mean (0 for an isometry; below 10⁻¹²,
    rounding, it is 0)."""
    if not m1 > 0:
        return math.nan
    v = m2 / (m1 * m1) - 1.0
    return 0.0 if v < 1e-12 else v


def _theory(activation: str, init: str, depths: tuple[int, ...], q_star: float, dimension: int,
            u_grid: np.ndarray) -> tuple[dict[str, Any], dict[int, Any]]:
    """Free-probability predictions for a stack without normalization, per depth, and the
    spectra (for the KS distances)."""
    out: dict[str, Any] = {k: [] for k in ("m1", "var")}
    spectra: dict[int, Any] = {}
    dens = activation in DENSITY_ACTIVATIONS
    if dens:
        out.update(s_max=[], s_edge=[], atoms=[], density=[])
    for ell in depths:
        m1, m2 = jjt_moments(activation, init, ell, q_star)
        out["m1"].append(m1)
        out["var"].append(_var(m1, m2))
        if dens:
            sp = spectra[ell] = jjt_spectrum(activation, init, ell, q_star)
            # the largest of n eigenvalues sits near the 1 − 1/(2n) quantile
            out["s_max"].append(math.sqrt(sp.quantile(1.0 - 0.5 / dimension)))
            out["s_edge"].append(math.sqrt(sp.edge))
            out["atoms"].append([[float(loc), float(mass)] for loc, mass in sp.atoms])
            u, y = sp.log10_density()
            out["density"].append(np.interp(u_grid, u, y, left=0.0, right=0.0) if u.size else
                                  np.zeros_like(u_grid))
    out["m1_rate"] = critical_point(activation, q_star).chi1
    # m₁ itself is log-normal across networks at finite width (log-variance ∝ L/d): its rate
    # over depth is the quantity compared, not its value at the deepest layer
    for k in ("var", "s_max"):
        if k in out:
            out[f"{k}_final"] = out[k][-1]
    return out, spectra


# ------------------------------------------------------------------------- the study
def _key(activation: str, init: str, norm: str) -> str:
    return f"{activation}/{init}/{norm}"


@study("jacobian",
       quick=dict(width=24, batch=4, depths=(1, 3, 8), activations=("linear", "relu", "tanh"),
                  norms=("none", "batch", "layer"), seeds=1),
       report=dict(width=96, batch=4, depths=(1, 4, 16, 48), norms=("none", "batch", "layer"),
                   seeds=2))
def jacobian(ctx: Context, *, width: int = 128, batch: int = 8,
             depths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
             activations: tuple[str, ...] = ACTIVATIONS, inits: tuple[str, ...] = INITS,
             norms: tuple[str, ...] = ("none", "batch", "layer", "rms", "weight_norm"),
             q_star: float = 1 / 64, eps: float = 0.0, seeds: int = 2, dense_max: int = 256,
             probes: int = 8, bins: int = 48, hist_range: tuple[float, ...] = (-12.0, 4.0)) -> Outcome:
    """Jacobian spectra of deep stacks with depth: free-probability theory, null directions, isometry.

    Parameters
    ----------
    width : units d of every block (square layers: the Jacobian of one sample is d × d).
    batch : inputs per network: each gives a per-sample Jacobian; the batch a BN stack
        normalizes over (its Jacobian is (batch·d) × (batch·d)).
    depths : the Jacobian of the first ℓ blocks is measured for every ℓ here (one stack of
        the largest depth per network).
    activations : among "linear", "relu", "hardtanh", "tanh" (each at its critical point).
    inits : "gaussian" (N(0, σ_w²/d)) and/or "orthogonal" (σ_w·Haar).
    norms : among "none", "batch", "batch_uncentered", "layer", "rms", "group",
        "weight_norm", "spectral_norm", "weight_standardization", "centered_weight_norm"
        (theory for "none").
    q_star : the fixed-point pre-activation variance that sets σ_w, σ_b on the critical line
        (Pennington et al.: small q* makes tanh and hard-tanh nearly linear).
    eps : eps of the activation normalizations (0: their x̂ directions are exactly null).
    seeds : independent networks per configuration (spectra are pooled).
    dense_max : a batch-coupled Jacobian larger than this (batch·d) is left as a
        LinearOperator (svds and Hutchinson moments) instead of formed densely.
    probes : Rademacher probes of the Hutchinson moments on the operator path.
    bins, hist_range : histogram of log₁₀ λ (bins over the range; the mass outside is kept
        as "below"/"above").
    """
    fname = "jacobian"
    activations = check_choices(fname, "activations", activations, ACTIVATIONS)
    inits = check_choices(fname, "inits", inits, INITS)
    norms = check_choices(fname, "norms", norms, NORMS)
    depths = tuple(sorted(set(depths)))
    if width < 2 or batch < 2 or seeds < 1 or not depths or depths[0] < 1 or probes < 1:
        raise ValueError(f"{fname}: need width >= 2, batch >= 2, seeds >= 1, probes >= 1 and "
                         f"depths >= 1, got width={width}, batch={batch}, seeds={seeds}, "
                         f"probes={probes}, depths={depths}")
    if not (math.isfinite(q_star) and q_star > 0) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{fname}: need q_star > 0 and eps >= 0, got q_star={q_star}, eps={eps}")
    if len(hist_range) != 2 or not hist_range[0] < hist_range[1] or bins < 1:
        raise ValueError(f"{fname}: hist_range must be (low, high) with low < high and bins >= 1, "
                         f"got {hist_range} and {bins}")
    for a in activations:
        critical_point(a, q_star)  # fail before any work where there is no critical point
    configs = [(a, i, n) for a in activations for i in inits for n in norms]
    points = [dict(activation=a, init=i, norm=n, width=width, batch=batch, depths=depths,
                   q_star=q_star, eps=eps, dense_max=dense_max, probes=probes, rep=r,
                   **ctx.point_options())
              for a, i, n in configs for r in range(seeds)]
    runs = ctx.map(_point, points, desc="jacobian")
    feps = float(np.finfo(np.float32 if ctx.backend.dtype_name == "float32" else np.float64).eps)

    edges = np.linspace(hist_range[0], hist_range[1], bins + 1)
    u_grid = np.linspace(hist_range[0], hist_range[1], 4 * bins + 1)
    measured: dict[str, Any] = {"depths": list(depths), "hist_edges": edges}
    theory: dict[str, Any] = {"density_u": u_grid}
    table = []
    for a, i, n in configs:
        recs = [r for p, r in zip(points, runs) if (p["activation"], p["init"], p["norm"]) == (a, i, n)]
        key = _key(a, i, n)
        spectra = None
        if n == "none":
            theory[key], spectra = _theory(a, i, depths, q_star, width, u_grid)
        measured[key] = _summarize(recs, depths, edges, spectra, width, feps)
        table.append(_row(a, i, n, measured[key], theory.get(key), depths[-1]))
    verdict = _verdict(measured, theory, configs, depths[-1], width, q_star)
    return Outcome(measured, theory, verdict, table)


def _summarize(recs: list[dict[str, Any]], depths: tuple[int, ...], edges: np.ndarray,
               spectra: dict[int, Any] | None, dimension: int, feps: float) -> dict[str, Any]:
    """Pool one configuration's networks: per-depth curves, the deepest values, m₁'s rate."""
    method = recs[0]["method"]
    keys = ("m1", "var", "s_max", "kappa", "kappa_at_floor", "rank_fraction", "ks", "hist",
            "below", "above")
    cols: dict[str, list[Any]] = {k: [] for k in keys}
    resid = 0.0
    for ell in depths:
        items = [it for r in recs for it in r["depths"][ell]]
        resid = max(resid, *(it["null_residual"] for it in items))
        s_max = float(np.mean([it["s_max"] for it in items]))
        cols["s_max"].append(s_max)
        if method == "operator":
            m1 = float(np.mean([it["m1"] for it in items]))
            m2 = float(np.mean([it["m2"] for it in items]))
            cols["m1"].append(m1)
            cols["var"].append(_var(m1, m2))
            for k in keys[3:]:
                cols[k].append(None)
            continue
        lam = np.concatenate([it["lam"] for it in items])
        m1 = float(lam.mean())
        cols["m1"].append(m1)
        cols["var"].append(_var(m1, float(np.mean(lam * lam))))
        cols["kappa"].append(float(np.median([it["kappa"] for it in items])))
        cols["kappa_at_floor"].append(bool(any(it["at_floor"] for it in items)))
        cols["rank_fraction"].append(sum(it["rank"] for it in items) / sum(it["dim"] for it in items))
        with np.errstate(divide="ignore"):
            u = np.log10(lam)
        counts, _ = np.histogram(u, bins=edges)
        cols["hist"].append(counts / (lam.size * np.diff(edges)))  # a density of log₁₀ λ
        cols["below"].append(float(np.mean(u < edges[0])))
        cols["above"].append(float(np.mean(u > edges[-1])))
        # the theory CDF is compared where float64 resolves λ: above (10³·n·ε·s_max)²
        floor = (1e3 * dimension * feps * s_max) ** 2
        snap = max(1e-8, 1e3 * feps)  # an atom measured through float32 rounding
        cols["ks"].append(ks_distance(lam, spectra[ell], floor, snap) if spectra else None)
    out: dict[str, Any] = {"method": method, **cols, "null_residual": resid}
    fit = fit_growth(depths, cols["m1"])
    out["m1_rate"], out["m1_rate_ci"] = fit.rate, list(fit.rate_interval())
    for k in ("m1", "var", "s_max", "kappa", "ks"):
        out[f"{k}_final"] = cols[k][-1]
    return out


def _row(a: str, i: str, n: str, m: dict[str, Any], t: dict[str, Any] | None, depth: int) -> dict[str, Any]:
    t = t or {}
    kappa = m["kappa_final"]
    if kappa is not None and m["kappa_at_floor"][-1]:
        kappa = f"≥{kappa:.0e} (floor)"
    return {"activation": a, "init": i, "norm": n, "method": m["method"],
            f"m₁ @{depth}": m["m1_final"], "m₁ ×/layer": m["m1_rate"], "theory ×": t.get("m1_rate"),
            "var λ/m₁²": m["var_final"], "theory var": t.get("var_final"),
            "s_max": m["s_max_final"], "theory s_max": t.get("s_max_final"),
            "κ on range": kappa, "KS": m["ks_final"]}


def _names(keys: list[str]) -> str:
    return ", ".join(k.replace("/none", "").replace("/", " ") for k in keys)


def _verdict(m: dict[str, Any], t: dict[str, Any], configs: list[tuple[str, str, str]], depth: int,
             width: int, q_star: float) -> str:
    parts = []
    plain = [_key(a, i, n) for a, i, n in configs if n == "none"]
    if plain:
        conc = [k for k in plain if m[k]["var_final"] < 1.0]
        spread = [k for k in plain if k not in conc]
        head = f"dynamical isometry at depth {depth} (width {width}, q*={q_star:.4g})"
        if conc:
            best = min(conc, key=lambda k: m[k]["var_final"])
            parts.append(f"{head}: the spectrum of JJᵀ stays concentrated for {_names(conc)} "
                         f"(var λ/m₁² {m[best]['var_final']:.3g} for {_names([best])}, theory "
                         f"{t[best]['var_final']:.3g})")
        else:
            parts.append(f"{head}: no configuration keeps the spectrum concentrated")
        if spread:
            worst = max(spread, key=lambda k: m[k]["var_final"])
            smax = (f"; s_max {m[worst]['s_max_final']:.3g}, theory {t[worst]['s_max_final']:.3g}"
                    if "s_max_final" in t[worst] else "")
            parts.append(f"it spreads for {_names(spread)} (var λ/m₁² {m[worst]['var_final']:.3g} "
                         f"for {_names([worst])}, theory {t[worst]['var_final']:.3g}{smax})")
        ks = [m[k]["ks_final"] for k in plain if m[k]["ks_final"] is not None]
        if ks:
            # a KS distance of 0.1 is what a few hundred independent draws already miss by
            how = "matches" if max(ks) < 0.1 else "is only approached at this width by"
            parts.append(f"the free-probability law {how} the measured one (KS ≤ {max(ks):.3f} "
                         f"at depth {depth})")
    for n in dict.fromkeys(n for _, _, n in configs if n != "none"):
        keys = [_key(a, i, nn) for a, i, nn in configs if nn == n]
        rates = [m[k]["m1_rate"] for k in keys]
        var = [m[k]["var_final"] for k in keys]
        lo, hi = min(rates), max(rates)
        trend = ("explodes" if lo > 1.02 else "vanishes" if hi < 0.98 else "stays of order one"
                 if 0.98 <= lo and hi <= 1.02 else "varies")
        resid = max(m[k]["null_residual"] for k in keys)
        parts.append(f"{n}: m₁ {trend} (×{lo:.3g}–{hi:.3g} per layer), var λ/m₁² "
                     f"{min(var):.3g}–{max(var):.3g}; its null directions give ‖Jv‖ ≤ "
                     f"{resid:.1e}·s_max‖v‖")
    return "; ".join(parts) + "."


# ------------------------------------------------------------------------- figure
@register_plotter("jacobian")
def _plot(r: Any) -> Any:
    m, t = r.measured, r.theory
    depths = m["depths"]
    keys = [k for k in m if k.count("/") == 2]
    plain = [k for k in keys if k.endswith("/none")]
    shown = plain[:8] or keys[:8]
    ncols = 4
    nrows = (len(shown) + ncols - 1) // ncols + 1
    fig, ax = figure(ncols, nrows, width=3.6, height=2.9,
                     title=f"Jacobian spectra with depth: histograms of log₁₀ λ, λ = s² "
                           f"(dashed: free probability; dotted: its atoms), width {r.params['width']}")
    dcol = colors([str(d) for d in depths])
    edges = np.asarray(m["hist_edges"])
    centers = 0.5 * (edges[1:] + edges[:-1])
    for a, key in zip(ax, shown):
        mk = m[key]
        for j, d in enumerate(depths):
            if mk["hist"][j] is None:
                continue
            a.step(centers, np.maximum(mk["hist"][j], 1e-4), where="mid", color=dcol[str(d)], lw=1,
                   label=f"L={d}")
            if key in t and "density" in t[key]:
                a.plot(t["density_u"], np.maximum(t[key]["density"][j], 1e-4), "--",
                       color=dcol[str(d)], lw=0.8)
                for loc, _ in t[key]["atoms"][j]:
                    if loc > 0:
                        a.axvline(math.log10(loc), color=dcol[str(d)], ls=":", lw=0.8)
        a.set(title=key.replace("/none", "").replace("/", " "), xlabel="log₁₀ λ", ylabel="density",
              yscale="log", ylim=(1e-3, None))
    ax[0].legend(fontsize=6)
    for a in ax[len(shown):(nrows - 1) * ncols]:
        a.axis("off")
    summary = ax[(nrows - 1) * ncols:]
    pcol = colors(plain)
    for key in plain:
        c, label = pcol[key], key.replace("/none", "").replace("/", " ")
        summary[0].plot(depths, np.maximum(np.asarray(m[key]["var"], dtype=float), 1e-4), color=c,
                        label=label)
        summary[1].plot(depths, m[key]["s_max"], color=c, label=label)
        if key in t:
            summary[0].plot(depths, np.maximum(np.asarray(t[key]["var"]), 1e-4), "o", mfc="none",
                            color=c, ms=4)
            if "s_max" in t[key]:
                summary[1].plot(depths, t[key]["s_max"], "o", mfc="none", color=c, ms=4)
    ncol = colors(dict.fromkeys(k.split("/")[2] for k in keys))
    seen: set[str] = set()
    for key in keys:
        norm = key.split("/")[2]
        label = None if norm in seen else norm
        seen.add(norm)
        summary[2].plot(depths, m[key]["m1"], color=ncol[norm], lw=0.8, label=label)
        kappa = [np.nan if v is None else v for v in m[key]["kappa"]]
        summary[3].plot(depths, kappa, color=ncol[norm], lw=0.8, label=label)
    summary[0].set(xscale="log", yscale="log", xlabel="depth", ylabel="var λ/m₁² (○ theory)",
                   title="spread of the spectrum (no norm)")
    summary[1].set(xscale="log", yscale="log", xlabel="depth", ylabel="s_max (○ theory)",
                   title="largest singular value (no norm)")
    summary[2].set(xscale="log", yscale="log", xlabel="depth", ylabel="m₁ = E λ",
                   title="mean of JJᵀ, every configuration")
    summary[3].set(xscale="log", yscale="log", xlabel="depth", ylabel="κ on the range",
                   title="condition number (dense Jacobians)")
    from matplotlib.ticker import NullFormatter  # function-level: matplotlib is optional
    for a in summary:
        a.legend(fontsize=5, ncol=2)
        # the measured depths as the ticks: under a decade of depths (--quick) the log axis
        # would otherwise label its minor ticks on top of each other
        a.set_xticks(depths, [str(d) for d in depths])
        a.xaxis.set_minor_formatter(NullFormatter())
    return fig
