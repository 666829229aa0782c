"""The Hessian of a model's loss as a SciPy ``LinearOperator``, and PyHessian's three
measurements on it — the largest eigenvalues (``eigsh``), the trace (Hutchinson) and the
spectral density (stochastic Lanczos quadrature) — SciPy-native.

Parameters are the flattened concatenation of ``model.parameter_slots()`` (registration order,
each array raveled in C order): :func:`parameter_layout`, :func:`get_flat`, :func:`set_flat`,
:func:`grad_flat`. :class:`ModelLoss` is θ ↦ (L(θ), ∇L(θ)) of a model and a loss on fixed data,
with the model's exact closed-form ``backward``; the vectors are float64 NumPy (SciPy's side),
the model computes on its own backend and dtype. A model with batch normalization in train
mode computes its loss with the batch's statistics, so the Hessian is that of the full-batch
train-mode loss (every sample's output depends on every other through the batch mean and
variance).

Hessian–vector products are central differences of exact gradients along the unit direction
v̂ = v/‖v‖ (Pearlmutter's R-operator would need second-order passes the layers do not have)::

    Hv ≈ ‖v‖ · [∇L(θ + h v̂) − ∇L(θ − h v̂)] / (2h).

Error (Taylor's theorem with g = ∇L): the difference quotient is Hv̂ + (h²/6) D³g(θ)[v̂,v̂,v̂]
+ O(h⁴), and each computed gradient carries a rounding error of size ε_g, so

    ‖error‖ ≲ h² M / 6 + ε_g / h,    M = ‖D³g[v̂,v̂,v̂]‖ (L's fourth derivative along v̂),
    ε_g = ε · (‖g(θ)‖ + ‖Hv̂‖ (‖θ‖ + p))

with ε the dtype's machine epsilon: the gradient at θ ± hv̂ is a value of size up to
‖g(θ)‖ + p‖Hv̂‖ (h ≤ p, the pilot step below) computed to relative precision ε, and rounding
θ ± hv̂ to the dtype moves it by up to ε‖θ‖, which changes the gradient by ε‖θ‖‖Hv̂‖. The
sum is least at h* = (3ε_g/M)^{1/3}, where it is 1.5 · 3^{-1/3} ε_g^{2/3} M^{1/3}: about
ε^{2/3} relative (≈ 4e-11 in float64, ≈ 2e-5 in float32). :func:`choose_step` estimates M
and ‖Hv̂‖ from pilot third differences (step p = ε^{1/5}, the optimum for a third
difference) and returns h* with both error terms; the operator carries them (``op.step``).

References: Pearlmutter 1994 (Hessian–vector products); Yao, Gholami, Keutzer & Mahoney 2020
(PyHessian); Hutchinson 1990; Avron & Toledo 2011 (the estimator's variance); Golub & Meurant
2010 and Ubaru, Chen & Saad 2017 (stochastic Lanczos quadrature); Ghorbani, Krishnan & Xiao
2019 (Hessian spectral densities of networks, Gaussian broadening).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import LinearOperator, eigsh

from ._backend import Backend

__all__ = ["parameter_layout", "get_flat", "set_flat", "grad_flat", "ModelLoss", "StepChoice",
           "choose_step", "HessianOperator", "hessian_operator", "top_eigenvalues",
           "TraceEstimate", "hutchinson_trace", "lanczos", "SpectralDensity", "slq",
           "dense_matrix"]


# --------------------------------------------------------------------------- flattening
def parameter_layout(model: Any) -> list[tuple[str, tuple[int, ...], int, int]]:
    """``(name, shape, start, stop)`` of every parameter in the flat vector, in the order of
    ``model.parameter_slots()``."""
    out, start = [], 0
    for name, m, k in model.parameter_slots():
        shape = tuple(int(s) for s in m.params[k].shape)
        size = math.prod(shape)
        out.append((name, shape, start, start + size))
        start += size
    return out


def get_flat(model: Any, backend: Backend | None = None) -> np.ndarray:
    """Every parameter of ``model`` raveled and concatenated, as float64 NumPy."""
    b = backend or Backend()
    parts = [b.to_numpy(m.params[k]).ravel() for _, m, k in model.parameter_slots()]
    return np.concatenate(parts) if parts else np.zeros(0)


def set_flat(model: Any, theta: np.ndarray, backend: Backend | None = None) -> None:
    """Set every parameter of ``model`` from the flat vector ``theta`` (on ``backend``, in its
    dtype); the inverse of :func:`get_flat`."""
    b = backend or Backend()
    theta = np.asarray(theta, dtype=np.float64)
    layout = parameter_layout(model)
    n = layout[-1][3] if layout else 0
    if theta.shape != (n,):
        raise ValueError(f"set_flat: theta must have shape ({n},) (the model's parameter count), "
                         f"got {theta.shape}")
    for (_, m, k), (_, shape, start, stop) in zip(model.parameter_slots(), layout):
        m.params[k] = b.asarray(theta[start:stop].reshape(shape))


def grad_flat(model: Any, backend: Backend | None = None) -> np.ndarray:
    """Every parameter's gradient (set by the last ``backward``) raveled and concatenated."""
    b = backend or Backend()
    parts = []
    for name, m, k in model.parameter_slots():
        g = m.grads.get(k)
        if g is None:
            raise RuntimeError(f"grad_flat: parameter {name} has no gradient (run backward first)")
        parts.append(b.to_numpy(g).ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


class ModelLoss:
    """θ ↦ L(θ), ∇L(θ) of ``loss(model(x), target)`` on fixed data, θ the flat parameters.

    Each call sets the model's parameters to θ (float64 host vector, cast to the backend's
    dtype), runs the exact forward and backward, and returns float64 NumPy. The model is left
    at the last θ evaluated (:meth:`reset` puts back the parameters it had when built).
    ``evaluations`` counts gradient evaluations. The model's mode is the caller's: in train
    mode a BN layer normalizes with the statistics of ``x`` (and updates its running
    statistics, which the train-mode loss does not read).
    """

    def __init__(self, model: Any, loss: Any, x: Any, target: Any,
                 backend: Backend | None = None) -> None:
        self.model, self.loss, self.x, self.target = model, loss, x, target
        self.backend = backend or Backend()
        self.theta0 = get_flat(model, self.backend)
        self.evaluations = 0
        model.requires_grad_(True)

    @property
    def size(self) -> int:
        return int(self.theta0.size)

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        set_flat(self.model, theta, self.backend)
        value = self.loss(self.model(self.x), self.target)
        self.model.backward(self.loss.backward())
        self.evaluations += 1
        return self._scalar(value), grad_flat(self.model, self.backend)

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        """∇L(θ)."""
        return self.value_and_grad(theta)[1]

    def value(self, theta: np.ndarray) -> float:
        """L(θ) (forward only)."""
        set_flat(self.model, theta, self.backend)
        return self._scalar(self.loss(self.model(self.x), self.target))

    def _scalar(self, value: Any) -> float:
        # NumPy reductions give NumPy scalars, which have no DLPack to cross with; so does a
        # 0-d Dask array once computed (xp_to_host_numpy would hand it to from_dlpack)
        if callable(getattr(value, "compute", None)):
            value = value.compute()
        if isinstance(value, (float, np.generic, np.ndarray)):
            return float(value)
        return float(self.backend.to_numpy(value))

    def reset(self) -> None:
        set_flat(self.model, self.theta0, self.backend)


# --------------------------------------------------------------------------- the operator
@dataclass(frozen=True)
class StepChoice:
    """The difference step h of a Hessian–vector product and its error budget (absolute, in
    ‖Hv̂‖ units for a unit v̂): ``truncation`` = h²M/6, ``rounding`` = ε_g/h; ``scale`` is
    ‖Hv̂‖ along the pilot direction, so ``error / scale`` is a relative error."""

    h: float
    third: float        # M, the pilot's ‖D³g[v̂,v̂,v̂]‖
    grad_noise: float   # ε_g
    scale: float        # ‖Hv̂‖ on the pilot direction
    eps: float          # machine epsilon of the gradients' dtype

    @property
    def truncation(self) -> float:
        return self.h * self.h * self.third / 6.0

    @property
    def rounding(self) -> float:
        return self.grad_noise / self.h

    @property
    def error(self) -> float:
        return self.truncation + self.rounding

    @property
    def relative_error(self) -> float:
        return self.error / self.scale if self.scale > 0 else math.inf

    def as_dict(self) -> dict[str, float]:
        return {"h": self.h, "third_derivative": self.third, "grad_noise": self.grad_noise,
                "truncation": self.truncation, "rounding": self.rounding,
                "relative_error": self.relative_error, "eps": self.eps}


def choose_step(grad: Callable[[np.ndarray], np.ndarray], theta: np.ndarray, eps: float,
                rng: np.random.Generator | None = None) -> StepChoice:
    """The step h* = (3ε_g/M)^{1/3} of the central difference, from pilots with step
    p = ε^{1/5}·max(1, rms θ) (the optimum for a third difference) along a unit direction v̂:

        Hv̂ ≈ [g(θ+pv̂) − g(θ−pv̂)] / 2p,
        D³g[v̂,v̂,v̂] ≈ [g(θ+2pv̂) − 2g(θ+pv̂) + 2g(θ−pv̂) − g(θ−2pv̂)] / 2p³.

    M is the larger over two directions: a random one and Hv̂ of it (which leans toward the
    top eigenvectors — the directions eigsh works in, and where normalized networks'
    higher derivatives are largest: 10²–10³× a random direction's for BN/LN stacks, through
    the 1/‖w‖ᵏ growth of the k-th derivative of a scale-invariant loss). Coordinate
    directions along small weights can be larger still, so an error stated for them would
    be optimistic. Where M is zero (a quadratic: no truncation error) or h* would exceed p,
    h = p (a step larger than the pilot's is not vouched for by it). Nine gradients.
    """
    theta = np.asarray(theta, dtype=np.float64)
    rng = np.random.default_rng(0) if rng is None else rng
    p = eps ** 0.2 * max(1.0, float(np.sqrt(np.mean(theta * theta))) if theta.size else 1.0)

    def pilot(v: np.ndarray) -> tuple[np.ndarray, float]:
        v = v / np.linalg.norm(v)
        gp1, gm1 = grad(theta + p * v), grad(theta - p * v)
        gp2, gm2 = grad(theta + 2 * p * v), grad(theta - 2 * p * v)
        return (gp1 - gm1) / (2 * p), float(np.linalg.norm(gp2 - 2 * gp1 + 2 * gm1 - gm2) / (2 * p ** 3))

    g0 = grad(theta)
    hv, third = pilot(rng.standard_normal(theta.size))
    scale = float(np.linalg.norm(hv))
    if scale > 0:
        hv2, third2 = pilot(hv)
        scale, third = max(scale, float(np.linalg.norm(hv2))), max(third, third2)
    noise = eps * (float(np.linalg.norm(g0)) + scale * (float(np.linalg.norm(theta)) + p))
    h = (3 * noise / third) ** (1 / 3) if third > 0 else p
    return StepChoice(min(h, p) if math.isfinite(h) and h > 0 else p, third, noise, scale, eps)


class HessianOperator(LinearOperator):
    """H = ∇²L(θ) as a symmetric float64 ``LinearOperator``: each product is two gradient
    evaluations (central difference, see the module docstring); ``step`` holds h and the error
    budget; ``products`` counts products."""

    def __init__(self, grad: Callable[[np.ndarray], np.ndarray], theta: np.ndarray,
                 step: StepChoice) -> None:
        theta = np.array(theta, dtype=np.float64).ravel()
        super().__init__(np.float64, (theta.size, theta.size))
        self.grad, self.theta, self.step = grad, theta, step
        self.products = 0

    def _matvec(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64).ravel()
        nv = float(np.linalg.norm(v))
        if nv == 0.0:
            return np.zeros_like(self.theta)
        u, h = v / nv, self.step.h
        self.products += 1
        return (self.grad(self.theta + h * u) - self.grad(self.theta - h * u)) * (nv / (2 * h))

    def _rmatvec(self, v: np.ndarray) -> np.ndarray:
        return self._matvec(v)

    def _adjoint(self) -> HessianOperator:
        return self


def hessian_operator(grad: Callable[[np.ndarray], np.ndarray], theta: np.ndarray, *,
                     dtype: Any = np.float64, h: float | None = None,
                     rng: np.random.Generator | None = None) -> HessianOperator:
    """The Hessian at ``theta`` of the function whose gradient is ``grad`` (e.g. a
    :class:`ModelLoss`), with the step chosen by :func:`choose_step` for gradients computed in
    ``dtype`` (a NumPy dtype or its name: the backend's, "float32" or "float64"), or ``h``.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[2.0, 1.0], [1.0, 3.0]])
    >>> H = hessian_operator(lambda t: A @ t + t ** 3 / 3, np.zeros(2))
    >>> np.allclose(H @ np.array([1.0, 0.0]), [2.0, 1.0], rtol=0, atol=1e-9)
    True
    """
    eps = _machine_eps(dtype)
    theta = np.asarray(theta, dtype=np.float64).ravel()
    step = (choose_step(grad, theta, eps, rng) if h is None
            else StepChoice(float(h), math.nan, math.nan, math.nan, eps))
    return HessianOperator(grad, theta, step)


def _machine_eps(dtype: Any) -> float:
    """ε of a NumPy dtype, its name, or another library's dtype (``torch.float32``)."""
    try:
        return float(np.finfo(dtype).eps)
    except (TypeError, ValueError):
        return float(np.finfo(str(dtype).split(".")[-1]).eps)


def dense_matrix(op: LinearOperator) -> np.ndarray:
    """``op`` as a dense matrix (n products), symmetrized for a Hessian: ½(A + Aᵀ)."""
    a = op.matmat(np.eye(op.shape[1]))
    return 0.5 * (a + a.T)


# --------------------------------------------------------------------------- measurements
def top_eigenvalues(op: LinearOperator, k: int = 1, *, which: str = "LA",
                    v0: np.ndarray | None = None, tol: float = 1e-6,
                    maxiter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` eigenvalues of the symmetric ``op`` at the end ``which`` ("LA" largest
    algebraic — the sharpness for k=1 —, "SA", "LM") and their eigenvectors, by
    ``scipy.sparse.linalg.eigsh`` (implicitly restarted Lanczos, ARPACK); sorted largest first.
    ``v0`` warm-starts Lanczos (the previous step's top eigenvector along a training run)."""
    n = op.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"top_eigenvalues: need 1 <= k < n = {n}, got k={k}")
    vals, vecs = eigsh(op, k=k, which=which, v0=v0, tol=tol, maxiter=maxiter,
                       ncv=min(n, max(2 * k + 1, 12)))
    order = np.argsort(vals)[::-1]
    return vals[order], vecs[:, order]


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's estimate of tr A: the mean of zᵀAz over Rademacher probes z, and its
    standard error s/√m (s the probes' sample standard deviation). For Rademacher probes
    Var zᵀAz = 2 Σ_{i≠j} A_ij² (Hutchinson 1990; Avron & Toledo 2011): diagonal matrices are
    estimated exactly."""

    estimate: float
    stderr: float
    samples: np.ndarray = field(repr=False)

    def confidence_interval(self, level: float = 0.95) -> tuple[float, float]:
        from scipy import stats

        m = len(self.samples)
        if m < 2:
            return (-math.inf, math.inf)
        t = float(stats.t.ppf(0.5 + level / 2, m - 1))
        return (self.estimate - t * self.stderr, self.estimate + t * self.stderr)


def hutchinson_trace(op: LinearOperator, probes: int, rng: np.random.Generator) -> TraceEstimate:
    """tr A ≈ (1/m) Σ zᵢᵀ A zᵢ with m = ``probes`` Rademacher vectors zᵢ ∈ {±1}ⁿ."""
    if probes < 1:
        raise ValueError(f"hutchinson_trace: probes must be >= 1, got {probes}")
    n = op.shape[0]
    samples = np.empty(probes)
    for i in range(probes):
        z = rng.choice(np.array([-1.0, 1.0]), size=n)
        samples[i] = z @ op.matvec(z)
    se = float(samples.std(ddof=1) / np.sqrt(probes)) if probes > 1 else math.inf
    return TraceEstimate(float(samples.mean()), se, samples)


def lanczos(op: LinearOperator, v0: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(α, β)``: the tridiagonal Jacobi matrix T (diagonal α, off-diagonal β) of ``steps``
    Lanczos iterations of the symmetric ``op`` from ``v0``, with full reorthogonalization
    (the Hessians here are small enough that keeping the basis is cheaper than the
    loss of orthogonality that makes plain Lanczos report spurious copies of eigenvalues).
    Stops early at an invariant subspace (β below 1e-10 of the largest |α|, β so far)."""
    n = op.shape[0]
    steps = min(int(steps), n)
    q = np.asarray(v0, dtype=np.float64) / np.linalg.norm(v0)
    basis = np.empty((steps, n))
    alpha, beta = [], []
    for j in range(steps):
        basis[j] = q
        w = op.matvec(q)
        a = float(q @ w)
        alpha.append(a)
        w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)  # twice is enough (Kahan, Parlett)
        b = float(np.linalg.norm(w))
        scale = max(max(abs(x) for x in alpha), max(beta, default=0.0))
        if j == steps - 1 or b <= 1e-10 * scale:
            break
        beta.append(b)
        q = w / b
    return np.array(alpha), np.array(beta)


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature: for each probe v (unit norm), the Gauss quadrature of
    vᵀf(A)v = Σₖ τₖ² f(θₖ) — nodes θₖ the Ritz values of the probe's Lanczos tridiagonal T,
    weights τₖ² the squared first components of T's eigenvectors — exact for polynomials of
    degree < 2m after m steps. Averaged over probes it estimates (1/n) tr f(A), i.e. the
    spectral density φ(t) = (1/n) Σᵢ δ(t − λᵢ) (Ubaru, Chen & Saad 2017)."""

    nodes: list[np.ndarray]
    weights: list[np.ndarray]

    def moment(self, k: int) -> float:
        """(1/n) tr Aᵏ estimated: the mean over probes of Σ τ² θᵏ."""
        return float(np.mean([np.sum(w * t ** k) for t, w in zip(self.nodes, self.weights)]))

    def cdf(self, t: Any) -> np.ndarray:
        """The estimated fraction of eigenvalues ≤ t."""
        t = np.asarray(t, dtype=np.float64)
        return np.mean([np.sum(w[:, None] * (th[:, None] <= t.ravel()[None, :]), axis=0)
                        for th, w in zip(self.nodes, self.weights)], axis=0).reshape(t.shape)

    def density(self, grid: Any, sigma: float) -> np.ndarray:
        """φ on ``grid`` with each node broadened into a Gaussian of width ``sigma`` (so it
        integrates to 1 over the real line), as Ghorbani et al. and PyHessian plot it."""
        grid = np.asarray(grid, dtype=np.float64)
        out = np.zeros_like(grid)
        for th, w in zip(self.nodes, self.weights):
            z = (grid[:, None] - th[None, :]) / sigma
            out += np.exp(-0.5 * z * z) @ w
        return out / (len(self.nodes) * sigma * math.sqrt(2 * math.pi))

    @property
    def support(self) -> tuple[float, float]:
        return (float(min(t.min() for t in self.nodes)), float(max(t.max() for t in self.nodes)))


def slq(op: LinearOperator, probes: int | np.ndarray, steps: int,
        rng: np.random.Generator | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature of the symmetric ``op``: ``steps`` Lanczos iterations from
    each of ``probes`` Rademacher starts drawn from ``rng`` — or from the rows of ``probes``
    when it is a (p, n) array of start vectors (see :class:`SpectralDensity`)."""
    if isinstance(probes, np.ndarray):
        starts = np.atleast_2d(np.asarray(probes, dtype=np.float64))
    else:
        if probes < 1:
            raise ValueError(f"slq: probes must be >= 1, got {probes}")
        rng = np.random.default_rng(0) if rng is None else rng
        starts = rng.choice(np.array([-1.0, 1.0]), size=(probes, op.shape[0]))
    if steps < 1 or starts.shape[1] != op.shape[0]:
        raise ValueError(f"slq: need steps >= 1 and starts of length {op.shape[0]}, got "
                         f"steps={steps} and starts of shape {starts.shape}")
    nodes, weights = [], []
    for v in starts:
        alpha, beta = lanczos(op, v, steps)
        theta, vecs = scipy.linalg.eigh_tridiagonal(alpha, beta)
        nodes.append(theta)
        weights.append(vecs[0] ** 2)
    return SpectralDensity(nodes, weights)
