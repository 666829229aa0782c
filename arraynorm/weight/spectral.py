"""Spectral normalization: the weight divided by its largest singular value, estimated by
power iteration (:func:`spectral_norm`, PyTorch's) or computed by an SVD
(:func:`spectral_norm_exact`); see :mod:`arraynorm.weight`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from .._array_api import (xp_backend_name, xp_check_eps, xp_check_floating, xp_check_int,
                          xp_compute_dtype, xp_device, xp_namespace)
from .._kernels import fast_paths_enabled
from .._statistics import lp_norm
from .._typing import Array, Namespace, Pullback
from .._vjp import defvjp
from ..operation import LpScale
from .per_unit import per_unit, unit_axis

__all__ = ["spectral_norm", "spectral_norm_exact", "spectral_norm_init_u"]


# ---------------------------------------------------------------------------------------------
# spectral normalization

def _as_matrix(xp: Namespace, w: Array, d: int) -> Array:
    """``w`` as a (w.shape[d], rest) matrix, ``d`` moved first (PyTorch's reshape)."""
    if d != 0:
        w = xp.permute_dims(w, (d,) + tuple(a for a in range(w.ndim) if a != d))
    return xp.reshape(w, (w.shape[0], -1))


def _outer_in_layout(xp: Namespace, u: Array, v: Array, shape: tuple[int, ...], d: int) -> Array:
    """The matrix u vᵀ laid out like the weight (inverse of :func:`_as_matrix`), by
    broadcasting u along ``d`` against v shaped as the other axes: no transpose copy."""
    ub = xp.reshape(u, tuple(n if a == d else 1 for a, n in enumerate(shape)))
    vb = xp.expand_dims(xp.reshape(v, tuple(n for a, n in enumerate(shape) if a != d)), axis=d)
    return ub * vb


def _l2_normalize(xp: Namespace, x: Array, eps: float) -> Array:
    """x / max(‖x‖₂, eps), ``torch.nn.functional.normalize`` of a vector; the norm without
    overflow or underflow (:func:`arraynorm.operation.lp_norm`)."""
    norm = lp_norm(xp, x, 2.0, (0,))
    return x / xp.maximum(norm, xp.asarray(eps, dtype=x.dtype, device=xp_device(x)))


def _divide_by_sigma(xp: Namespace, wc: Array, sigma: Array, u: Array, v: Array, d: int,
                     dtype: Any) -> tuple[Array, Callable[[Array], Array]]:
    """w/σ and the pullback dw ↦ dW for σ = uᵀ W v with u, v held constant:
    ∂σ/∂W = u vᵀ, so dW = dw/σ − (Σ dw·W/σ)/σ · u vᵀ (never σ², which overflows in float32
    for σ beyond ~1e19)."""
    shape = tuple(wc.shape)
    w = wc / sigma

    def pullback(dw: Array) -> Array:
        dw = xp.astype(dw, wc.dtype, copy=False)
        if _blocked_lane(dw, w, d):
            return _pullback_in_row_blocks(dw, w, sigma, u, v).astype(dtype, copy=False)
        c = xp.sum(dw * w) / sigma
        dweight = dw / sigma - c * _outer_in_layout(xp, u, v, shape, d)
        return xp.astype(dweight, dtype, copy=False)

    return xp.astype(w, dtype, copy=False), pullback


#: elements per row block of :func:`_pullback_in_row_blocks` (a few hundred KiB: its
#: temporaries stay in cache)
_BLOCK_ELEMS = 1 << 16


def _blocked_lane(dw: Array, w: Array, d: int) -> bool:
    """The NumPy lane of the pullback: fast paths on, C-ordered NumPy dw and w whose memory is
    the (units, rest) matrix (unit axis first), large enough for the passes to matter."""
    return (d == 0 and type(dw) is np.ndarray and type(w) is np.ndarray and dw.dtype == w.dtype
            and dw.flags.c_contiguous and w.flags.c_contiguous and dw.size >= _BLOCK_ELEMS
            and fast_paths_enabled())


def _pullback_in_row_blocks(dw: np.ndarray, w: np.ndarray, sigma: Any, u: np.ndarray,
                            v: np.ndarray) -> np.ndarray:
    """dW = dw/σ − c·u vᵀ with c = Σ dw·w / σ, the generic formula's operations and roundings
    per element, in blocks of rows: each block's products sit in cache, so dw and w are read
    twice and dW written once, where the whole-array expressions made five weight-sized
    temporaries (4096×4096 float32, 2-core AMD EPYC, ``python -m benchmarks --cases sn``,
    two runs: backward 49–60 → 29–33 ms, forward+backward peak memory 4.0 → 2.0× the weight).
    c's sum is pairwise within a block, the blocks' sums added in float64 (the whole array's
    pairwise sum, in the array's dtype, rounded otherwise)."""
    m = dw.reshape(dw.shape[0], -1)
    wm = w.reshape(m.shape)
    rows = max(1, _BLOCK_ELEMS // m.shape[1])
    buf = np.empty((min(rows, m.shape[0]), m.shape[1]), dw.dtype)
    total = 0.0
    for i in range(0, m.shape[0], rows):
        t = buf[:min(rows, m.shape[0] - i)]
        total += float(np.multiply(m[i:i + rows], wm[i:i + rows], out=t).sum())
    c = np.asarray(total, dw.dtype) / sigma
    out = np.empty_like(m)
    for i in range(0, m.shape[0], rows):
        o, t = out[i:i + rows], buf[:min(rows, m.shape[0] - i)]
        np.divide(m[i:i + rows], sigma, out=o)
        np.multiply(u[i:i + rows, None], v[None, :], out=t)
        np.subtract(o, np.multiply(c, t, out=t), out=o)
    return out.reshape(dw.shape)


def _power_iteration_args(fname: str, weight: Array, u: Array | None, n_power_iterations: Any,
                          eps: Any, dim: Any) -> tuple[Any, int, float, int]:
    """Validated (xp, iterations, eps, unit axis) of the power-iteration functions."""
    xp = xp_namespace(fname, weight=weight, u=u)
    xp_check_floating(fname, "weight", weight, xp)
    n_it = xp_check_int(fname, "n_power_iterations", n_power_iterations, minimum=0,
                        strict_type=True)
    eps = xp_check_eps(fname, eps)
    d = unit_axis(fname, dim, weight, "weight")
    if d is None:
        raise TypeError(f"{fname}: dim must be an int, got None")
    return xp, n_it, eps, d


def _spectral_norm(weight: Array, u: Array | None, n_power_iterations: int, eps: float,
                   dim: int) -> tuple[tuple[Array, Array | None], Pullback]:
    fname = "spectral_norm"
    xp, n_it, eps, d = _power_iteration_args(fname, weight, u, n_power_iterations, eps, dim)
    ct = xp_compute_dtype(xp, weight.dtype)
    if weight.ndim == 1:
        # PyTorch: a vector's spectral norm is its L2 norm, no power iteration, no u
        what, pb_unit = per_unit(fname, xp, weight, None, LpScale(2.0), eps, ct)

        def pullback_vec(dy: tuple[Array, Any]) -> tuple[Array, None]:
            dw = dy[0]
            return (pb_unit(xp.astype(dw, ct, copy=False)) if dw is not None else xp.zeros_like(weight)), None

        return (xp.astype(what, weight.dtype, copy=False), u), pullback_vec
    if u is None:
        raise TypeError(
            f"{fname}: u must be an array of shape ({weight.shape[d]},) for a weight of rank "
            f"{weight.ndim}; create one with spectral_norm_init_u(weight, seed, dim={dim})"
        )
    xp_check_floating(fname, "u", u, xp)
    if tuple(u.shape) != (weight.shape[d],):
        raise ValueError(
            f"{fname}: u must have shape ({weight.shape[d]},) (weight.shape[dim], dim={d}), "
            f"got {tuple(u.shape)}"
        )
    if math.prod(weight.shape) == 0:
        # an empty weight (a layer with no inputs or no outputs): an empty result and u
        # unchanged, as PyTorch's parametrization returns the empty weight
        return (xp.asarray(weight, copy=True), u), lambda dy: (xp.zeros_like(weight), None)
    wc = xp.astype(weight, ct, copy=False)
    mat = _as_matrix(xp, wc, d)
    # only u's direction is state: a u off the unit sphere (a caller's own draw) would
    # otherwise scale σ̃ when n_power_iterations=0
    uc = _l2_normalize(xp, xp.astype(u, ct, copy=False), eps)
    for _ in range(n_it):
        vc = _l2_normalize(xp, xp.matmul(uc, mat), eps)
        uc = _l2_normalize(xp, xp.matmul(mat, vc), eps)
    # a last v from the final u, as parametrizations.spectral_norm ends each call with
    # v ← normalize(Wᵀu): then n_power_iterations=0 is its eval mode, σ = ‖Wᵀu‖
    vc = _l2_normalize(xp, xp.matmul(uc, mat), eps)
    sigma = xp.sum(uc * xp.matmul(mat, vc))
    w_sn, pb = _divide_by_sigma(xp, wc, sigma, uc, vc, d, weight.dtype)

    def pullback(dy: tuple[Array, Any]) -> tuple[Array, None]:
        dw = dy[0]
        return (pb(dw) if dw is not None else xp.zeros_like(weight)), None

    u_new = u if n_it == 0 else xp.astype(uc, u.dtype, copy=False)
    return (w_sn, u_new), pullback


def spectral_norm(weight: Array, u: Array | None, *, n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int = 0) -> tuple[Array, Array | None]:
    """Spectral normalization by power iteration: w_sn = weight / σ̃ (Miyato et al. 2018).

    The semantics of ``torch.nn.utils.parametrizations.spectral_norm``, written functionally:
    ``weight`` is seen as the matrix W of shape (weight.shape[dim], rest) (``dim`` moved
    first, the other axes flattened in order), and from the caller's persistent vector ``u``

        repeat n_power_iterations times:  v ← N(Wᵀu),  u ← N(W v)
        then  v ← N(Wᵀu),  σ̃ = uᵀ W v,  w_sn = weight / σ̃

    with N(x) = x / max(‖x‖₂, eps) (``u`` is normalized first: only its direction is state,
    PyTorch's buffer is always unit). Returns ``(w_sn, u_new)``; keep ``u_new`` for the next
    call (PyTorch's ``_u`` buffer). σ̃ = ‖Wᵀu‖ ≤ σ_max(W) and converges to it as
    (σ₂/σ₁)^(4k) for k iterations (u's direction as (σ₂/σ₁)^(2k)).

    Shapes: ``weight`` rank >= 1; ``u`` (weight.shape[dim],), see
    :func:`spectral_norm_init_u`. A 1-D ``weight`` is normalized exactly, weight / max(‖weight‖,
    eps), as PyTorch does; ``u`` is then unused (may be ``None``) and returned unchanged.
    ``u_new`` has ``u``'s dtype, ``w_sn`` the weight's; float16/bfloat16 compute in float32.
    An empty weight (a layer with no inputs or no outputs) gives an empty ``w_sn``, ``u``
    unchanged and a zero cotangent, as PyTorch's parametrization returns the empty weight.

    Backward, as PyTorch's autograd of the parametrization: u and v are constants (they
    come from buffers computed without gradient), so with ∂σ̃/∂W = u vᵀ,
    ``vjp(spectral_norm, weight, u)`` pulls ``(dw, None)`` back to
    ``(dw/σ̃ − (Σ dw·W/σ̃²)·u vᵀ, None)``.

    Differences from PyTorch: the state is ``u`` alone; PyTorch also keeps ``_v`` from the
    previous call (computed with the previous weights) and starts from it, while here the
    starting v is N(Wᵀu) with the current weights. The two coincide whenever PyTorch's
    ``_v`` equals N(Wᵀ_u) — after its construction, or with unchanged weights — and then
    ``u_new``, ``w_sn`` and the gradient agree exactly. ``n_power_iterations=0`` is allowed
    (PyTorch's eval mode: u is not updated). Differs from the older
    ``torch.nn.utils.spectral_norm``, which uses σ̃ = uᵀW v with the v of the last iteration.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> w = np.diag([3.0, 1.0])
    >>> u = an.spectral_norm_init_u(w, seed=0)
    >>> w_sn, u = an.spectral_norm(w, u, n_power_iterations=20)
    >>> np.round(np.diag(w_sn), 6)
    array([1.      , 0.333333])
    """
    return _spectral_norm(weight, u, n_power_iterations, eps, dim)[0]


@defvjp(spectral_norm)
def _spectral_norm_vjp(weight: Array, u: Array | None, *, n_power_iterations: int = 1,
                       eps: float = 1e-12, dim: int = 0) -> tuple[Array, Pullback]:
    return _spectral_norm(weight, u, n_power_iterations, eps, dim)


def _no_exact_mode(fname: str, xp: Namespace, why: str) -> NotImplementedError:
    return NotImplementedError(
        f"{fname}: the {xp_backend_name(xp)} backend cannot compute the singular value "
        f"decomposition this needs ({why}); use spectral_norm (power iteration) or convert "
        f"the weight to another backend"
    )


def _top_singular(fname: str, xp: Namespace, mat: Array,
                  vectors: bool) -> tuple[Array, Array | None, Array | None]:
    """σ_max of ``mat`` and, when ``vectors``, its singular vectors u₁, v₁."""
    linalg = getattr(xp, "linalg", None)
    if linalg is None or not hasattr(linalg, "svd"):
        raise _no_exact_mode(fname, xp, "it has no linalg.svd")
    try:
        if not vectors and hasattr(linalg, "svdvals"):
            try:
                return linalg.svdvals(mat)[0], None, None
            except (NotImplementedError, ValueError):
                pass  # e.g. Dask's svdvals wrapper; the full SVD may still work
        u, s, vh = linalg.svd(mat, full_matrices=False)
    except (NotImplementedError, ValueError) as e:
        # Dask's SVD exists only for matrices chunked along one dimension
        raise _no_exact_mode(fname, xp, str(e).splitlines()[0]) from e
    return s[0], u[:, 0], vh[0, :]


def _spectral_norm_exact(weight: Array, dim: int,
                         vectors: bool) -> tuple[Array, Pullback | None]:
    fname = "spectral_norm_exact"
    xp = xp_namespace(fname, weight=weight)
    xp_check_floating(fname, "weight", weight, xp)
    d = unit_axis(fname, dim, weight, "weight")
    if d is None:
        raise TypeError(f"{fname}: dim must be an int, got None")
    ct = xp_compute_dtype(xp, weight.dtype)
    if math.prod(weight.shape) == 0:  # σ of an empty matrix is 0 and w/0 is empty: say so
        empty = xp.asarray(weight, copy=True)
        return empty, (lambda dw: (xp.zeros_like(weight),)) if vectors else None
    wc = xp.astype(weight, ct, copy=False)
    sigma, u1, v1 = _top_singular(fname, xp, _as_matrix(xp, wc, d), vectors)
    if not vectors:
        return xp.astype(wc / sigma, weight.dtype, copy=False), None
    w_sn, pb = _divide_by_sigma(xp, wc, sigma, u1, v1, d, weight.dtype)
    return w_sn, lambda dw: (pb(dw),)


def spectral_norm_exact(weight: Array, *, dim: int = 0) -> Array:
    """Exact spectral normalization: w = weight / σ_max(W), σ_max from a singular value decomposition.

    W is ``weight`` as the (weight.shape[dim], rest) matrix of :func:`spectral_norm`; σ_max
    comes from ``xp.linalg.svdvals`` (forward) or ``xp.linalg.svd`` (with ``vjp``), computed
    in float32 at least. A 1-D weight is the (n, 1) matrix, so σ_max = ‖weight‖₂.

    Backward: ∂σ_max/∂W = u₁ v₁ᵀ (the top singular pair; its sign ambiguity cancels), so
    ``vjp(spectral_norm_exact, weight)`` pulls dw back to ``(dw/σ − (Σ dw·W/σ²)·u₁v₁ᵀ,)``.
    Where σ₁ = σ₂ the derivative does not exist and the one returned belongs to whichever
    pair the SVD routine reports.

    An empty weight gives an empty result (σ_max of an empty matrix is 0).

    Backends: needs the linalg extension. Dask's SVD handles only matrices chunked along one
    dimension (tall-and-skinny / short-and-fat); otherwise — and on any backend without an
    SVD — this raises ``NotImplementedError`` naming the backend. PyTorch has no equivalent
    (its spectral norm is power iteration only).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> w_sn = an.spectral_norm_exact(np.array([[3.0, 0.0], [0.0, -6.0]]))
    >>> float(np.linalg.norm(w_sn, 2))
    1.0
    """
    return _spectral_norm_exact(weight, dim, False)[0]


@defvjp(spectral_norm_exact)
def _spectral_norm_exact_vjp(weight: Array, *, dim: int = 0) -> tuple[Array, Pullback]:
    w_sn, pullback = _spectral_norm_exact(weight, dim, True)
    assert pullback is not None  # vectors=True always builds one
    return w_sn, pullback


def spectral_norm_init_u(weight: Array, seed: int | np.random.Generator, *, dim: int = 0,
                         eps: float = 1e-12, n_power_iterations: int = 0) -> Array:
    """A starting vector u for :func:`spectral_norm`: N(z), z ~ Normal(0, 1)^(weight.shape[dim]).

    As PyTorch's ``normal_(0, 1)`` followed by ``F.normalize(·, eps)``, but drawn from NumPy's
    generator so that it is reproducible on every backend: ``seed`` is an int or a
    ``numpy.random.Generator`` (required — the array API has no random numbers). The vector
    is moved to ``weight``'s namespace, device and dtype.

    ``n_power_iterations`` warm-up iterations are then run on ``weight`` (PyTorch's
    parametrization runs 15 at construction; pass 15 to match it). Shape: (weight.shape[dim],).

    u = z / max(‖z‖₂, eps),   z ~ Normal(0, 1)^(weight.shape[dim])

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> w = np.random.default_rng(0).standard_normal((4, 6))
    >>> u = an.spectral_norm_init_u(w, 0)
    >>> u.shape, bool(np.isclose(np.linalg.norm(u), 1.0))
    ((4,), True)
    """
    fname = "spectral_norm_init_u"
    xp, n_it, eps, d = _power_iteration_args(fname, weight, None, n_power_iterations, eps, dim)
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.random.Generator)):
        raise TypeError(
            f"{fname}: seed must be an int or a numpy.random.Generator, got {type(seed).__name__}"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))
    z = rng.standard_normal(weight.shape[d])
    z = z / max(float(np.linalg.norm(z)), eps)
    u = xp.asarray(z, device=xp_device(weight))
    u = xp.astype(u, weight.dtype, copy=False)
    if n_it and weight.ndim > 1:
        u = spectral_norm(weight, u, n_power_iterations=n_it, eps=eps, dim=d)[1]
    return u
