"""Closed-form backward passes against SciPy finite differences of the forward passes (float64).

For every differentiable op and every array input it differentiates (x, weight, bias; style
for adain; never given statistics), two oracles:

(a) directional: ⟨dy, J v⟩ from ``scipy.differentiate.derivative`` of t ↦ ⟨dy, f(x + t v)⟩
    (adaptive central differences of order 8, evaluated with t looped) must equal
    ⟨Jᵀdy, v⟩ from the pullback, for random v and dy. Run on every ``xp`` backend (the finite
    differences are computed once, on NumPy; each backend's pullback is compared to them).
    Tolerance: |⟨Jᵀdy, v⟩ − ⟨dy, J v⟩| ≤ 1e-8·|⟨dy, J v⟩| + 1e-9·‖dy‖‖v‖; scipy's own
    error estimates are below 2e-10 on these cases and the worst case uses ~4% of it.
(b) full Jacobian on tiny shapes: ``scipy.optimize.approx_fprime`` (forward differences,
    step 1.49e-8, vector f) against the Jacobian assembled row by row from the pullback with
    dy = e_i. Forward differences are accurate to ~sqrt(machine eps) times the curvature, so
    the tolerance is rtol 1e-5, atol 1e-5·max|J| (NumPy backend; the worst case, a group
    of two values, reaches 2.4e-6·max|J|).

Non-smooth points are kept out of reach of the difference steps: ops with a clamp, a max or a
clip (l2_normalize near eps, p=1 and p=inf norms, batch_renorm's r and d) use an initial step
of 1e-3 and inputs whose kinks are farther than that.

batch_renorm treats r and d as constants in its backward pass (the paper's stop-gradient).
Where they clip they are locally constant and the forward is differentiated as it is; where
they do not, the oracle is the forward with r and d frozen at their values (an independent
NumPy formula, checked equal to the op at the base point).
"""

from __future__ import annotations

import functools
import inspect
import zlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
from scipy.differentiate import derivative
from scipy.optimize import approx_fprime

import arraynorm as an
from arraynorm.operation import GivenStatistics, LpScale, RMSScale, Standardize
from arraynorm.partition import Batch, GhostBatch, Group, Layer, Position
from _helpers import from_numpy, to_numpy

Conv = Callable[[np.ndarray], Any]

# largest observed error per (op, oracle), printed on teardown (``pytest -s`` shows it)
_ERRORS: dict[tuple[str, str], float] = defaultdict(float)


@pytest.fixture(scope="module", autouse=True)
def _print_error_table():
    yield
    if _ERRORS:
        print("\n\nfinite differences: directional |<J^T dy,v> - <dy,Jv>| / |<dy,Jv>|;"
              " Jacobian max|J_vjp - J_fd| / max|J_fd|")
        for (op, what), e in sorted(_ERRORS.items()):
            print(f"{op:<22}{what:<13}{e:12.3e}")


def _record(case: Case, what: str, err: float) -> None:
    key = (case.op.__name__, what)
    _ERRORS[key] = max(_ERRORS[key], err)


class Case(NamedTuple):
    id: str
    op: Callable[..., Any]
    build: Callable[[Conv], tuple[tuple, dict]]  # converter -> (args, kwargs) of op
    diff: tuple[int, ...]                        # positions of the differentiated arrays
    step: float = 0.05                           # initial step of scipy's derivative
    reference: Callable[..., np.ndarray] | None = None  # oracle forward; default the op
    claim: Callable[[], None] | None = None      # asserts the input is the edge case named


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(key.encode()))


def _wb(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    w = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    return w, rng.standard_normal(shape)


# ---------------------------------------------------------------------------------------
# independent float64 NumPy formulas (only where an oracle forward is needed)


def _bn_stats(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    red = tuple(a for a in range(x.ndim) if a != axis)
    return x.mean(axis=red, keepdims=True), x.var(axis=red, keepdims=True)


def _bcast(p: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = p.size
    return p.reshape(shape)


def _renorm_r_d(x, running_mean, running_var, rmax, dmax, eps, axis):
    mu_b, var_b = _bn_stats(x, axis)
    sigma = np.sqrt(_bcast(running_var, x.ndim, axis) + eps)
    r = np.clip(np.sqrt(var_b + eps) / sigma, 1.0 / rmax, rmax)
    d = np.clip((mu_b - _bcast(running_mean, x.ndim, axis)) / sigma, -dmax, dmax)
    return r, d


def _renorm_frozen(x0, running_mean, running_var, rmax, dmax, eps, axis=1):
    """y = γ·(r·BN(x) + d) + β with r, d fixed at their values at x0 (stop-gradient)."""
    r, d = _renorm_r_d(x0, running_mean, running_var, rmax, dmax, eps, axis)

    def f(x, w, b):
        mu_b, var_b = _bn_stats(x, axis)
        yhat = (x - mu_b) / np.sqrt(var_b + eps) * r + d
        return _bcast(w, x.ndim, axis) * yhat + _bcast(b, x.ndim, axis)

    return f


# ---------------------------------------------------------------------------------------
# cases


def c_batch_norm(shape, axis=1):
    key = f"batch_norm-{shape}-axis{axis}"
    rng = _rng(key)
    x = 1.0 + 2.0 * rng.standard_normal(shape)
    w, b = _wb(rng, (shape[axis],))
    return Case(key, an.batch_norm, lambda c: ((c(x), c(w), c(b)), {"axis": axis}), (0, 1, 2))


def c_batch_norm_infer(shape):
    key = f"batch_norm_infer-{shape}"
    rng = _rng(key)
    x = rng.standard_normal(shape)
    w, b = _wb(rng, (shape[1],))
    mean, var = rng.standard_normal(shape[1]), rng.uniform(0.3, 2.0, shape[1])
    return Case(key, an.batch_norm,
                lambda c: ((c(x), c(w), c(b)), {"mean": c(mean), "var": c(var)}), (0, 1, 2))


def c_layer_norm(shape, axis):
    key = f"layer_norm-{shape}-axis{axis}"
    rng = _rng(key)
    x = rng.standard_normal(shape) - 0.5
    axes = (axis,) if isinstance(axis, int) else axis
    w, b = _wb(rng, tuple(shape[a] for a in axes))
    return Case(key, an.layer_norm, lambda c: ((c(x), c(w), c(b)), {"axis": axis}), (0, 1, 2))


def c_instance_norm(shape, axis=1):
    key = f"instance_norm-{shape}-axis{axis}"
    rng = _rng(key)
    x = rng.standard_normal(shape)
    w, b = _wb(rng, (shape[axis],))
    return Case(key, an.instance_norm, lambda c: ((c(x), c(w), c(b)), {"axis": axis}),
                (0, 1, 2))


def c_group_norm(shape, groups, axis=1):
    key = f"group_norm-{shape}-G{groups}-axis{axis}"
    rng = _rng(key)
    x = 2.0 * rng.standard_normal(shape)
    w, b = _wb(rng, (shape[axis],))
    return Case(key, an.group_norm, lambda c: ((c(x), groups, c(w), c(b)), {"axis": axis}),
                (0, 2, 3))


def c_rms_norm(shape, axis, eps, with_weight=True):
    key = f"rms_norm-{shape}-axis{axis}-eps{eps}-w{with_weight}"
    rng = _rng(key)
    x = rng.standard_normal(shape) + 0.2
    axes = (axis,) if isinstance(axis, int) else axis
    w = _wb(rng, tuple(shape[a] for a in axes))[0]
    if with_weight:
        return Case(key, an.rms_norm, lambda c: ((c(x), c(w)), {"axis": axis, "eps": eps}),
                    (0, 1))
    return Case(key, an.rms_norm, lambda c: ((c(x),), {"axis": axis, "eps": eps}), (0,))


def c_position_norm(shape, axis=1):
    key = f"position_norm-{shape}-axis{axis}"
    rng = _rng(key)
    x = rng.standard_normal(shape)
    w, b = _wb(rng, (shape[axis],))
    return Case(key, an.position_norm, lambda c: ((c(x), c(w), c(b)), {"axis": axis}),
                (0, 1, 2))


def c_ghost_batch_norm(shape, k):
    key = f"ghost_batch_norm-{shape}-k{k}"
    rng = _rng(key)
    x = rng.standard_normal(shape) + 0.5
    w, b = _wb(rng, (shape[1],))
    return Case(key, an.ghost_batch_norm, lambda c: ((c(x), k, c(w), c(b)), {}), (0, 2, 3))


def c_batch_renorm(shape, regime):
    """regime: 'clip' (r and d both at their bounds), 'clip-r' (only r clips), 'free'
    (neither clips), 'bn' (rmax=1, dmax=0: r = 1, d = 0, plain BN)."""
    key = f"batch_renorm-{shape}-{regime}"
    rng = _rng(key)
    x = 0.5 + 1.5 * rng.standard_normal(shape)
    c = shape[1]
    w, b = _wb(rng, (c,))
    mu_b, var_b = (s.reshape(c) for s in _bn_stats(x, 1))
    eps = 1e-5
    if regime == "clip":
        # σ_B/σ = 1/10 and (μ_B − μ)/σ = −1: far beyond 1/rmax = 2/3 and dmax = 0.2
        rm, rv, rmax, dmax = mu_b + 10.0 * np.sqrt(var_b), 100.0 * var_b, 1.5, 0.2
    elif regime == "clip-r":
        # σ_B/σ ≈ 2 > rmax = 1.5, |d| ≈ 0.15 < dmax = 1
        rm, rv, rmax, dmax = mu_b - 0.3 * np.sqrt(var_b), var_b / 4.0, 1.5, 1.0
    elif regime == "free":
        rm, rv, rmax, dmax = mu_b + 0.2 * np.sqrt(var_b), 1.3 * var_b, 3.0, 5.0
    else:
        rm, rv, rmax, dmax = rng.standard_normal(c), rng.uniform(0.5, 2.0, c), 1.0, 0.0
    # where r or d does not clip it depends on x, and the stop-gradient backward is the
    # derivative of the forward with r, d frozen; where both clip, of the op itself
    frozen = regime in ("clip-r", "free")
    ref = _renorm_frozen(x, rm, rv, rmax, dmax, eps) if frozen else None
    kw = dict(rmax=rmax, dmax=dmax, eps=eps)

    def claim():
        # unclipped r and d, and how far each sits from its clip bounds
        r, d = _renorm_r_d(x, rm, rv, np.inf, np.inf, eps, 1)
        r_gap = np.minimum(np.abs(r - rmax), np.abs(r - 1.0 / rmax))
        d_gap = np.abs(np.abs(d) - dmax)
        r_clips = (r > rmax) | (r < 1.0 / rmax)
        d_clips = np.abs(d) > dmax
        expect_r, expect_d = {"clip": (True, True), "clip-r": (True, False),
                              "free": (False, False)}[regime]
        assert np.all(r_clips == expect_r) and np.all(d_clips == expect_d)
        assert r_gap.min() > 0.05 and d_gap.min() > 0.05, "too close to a clip bound"

    return Case(key, an.batch_renorm,
                lambda cv: ((cv(x), cv(w), cv(b)),
                            {"running_mean": cv(rm), "running_var": cv(rv), **kw}),
                (0, 1, 2), step=0.05 if regime == "free" else 1e-3, reference=ref,
                claim=None if regime == "bn" else claim)


def c_lrn(shape, size, alpha=1.0, beta=0.75, k=1.0):
    key = f"lrn-{shape}-size{size}-alpha{alpha}-beta{beta}-k{k}"
    rng = _rng(key)
    x = 1.5 * rng.standard_normal(shape)
    return Case(key, an.local_response_norm,
                lambda c: ((c(x), size), {"alpha": alpha, "beta": beta, "k": k}), (0,))


def c_l2(shape, p, axis, *, eps=1e-12, x=None, tag=""):
    key = f"l2_normalize-{shape}-p{p}-axis{axis}-eps{eps}{tag}"
    rng = _rng(key)
    if x is None:
        # magnitudes in [0.3, 1.5]: |x| (p = 1) is far from its kink at 0
        x = rng.uniform(0.3, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    step = 1e-3 if (p in (1.0, float("inf")) or eps > 1e-6) else 0.05

    def claim():
        axes = (axis,) if isinstance(axis, int) else axis
        ax = np.abs(x)
        if p == 1.0:
            assert ax.min() > 0.05, "an entry near 0, the kink of |x|"
        norm = (ax.max(axis=axes, keepdims=True) if p == float("inf")
                else (ax ** p).sum(axis=axes, keepdims=True) ** (1.0 / p))
        # the clamp max(‖x‖, eps) is at least 5% away, much farther than the FD steps
        assert np.all(np.abs(norm / eps - 1.0) > 0.05)
        if p == float("inf"):
            top2 = np.sort(np.moveaxis(ax, axes[0], -1), axis=-1)[..., -2:]
            assert np.all(top2[..., 1] - top2[..., 0] > 0.05), "tied maxima"

    return Case(key, an.l2_normalize, lambda c: ((c(x),), {"p": p, "axis": axis, "eps": eps}),
                (0,), step=step, claim=claim)


def _distinct_max_rows(shape, gap, seed_key):
    """Rows (along axis 1) whose largest |x| exceeds the next one by at least ``gap``."""
    rng = _rng(seed_key)
    x = rng.uniform(0.2, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    # put one clear maximum in each row, of either sign
    idx = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
    mag = 1.0 + gap + rng.uniform(0.0, 0.5, idx.shape)
    sign = rng.choice([-1.0, 1.0], idx.shape)
    np.put_along_axis(x, idx[:, None], (mag * sign)[:, None], axis=1)
    return x


def _norm_rows(x, p, scale):
    """Rescale each row (axis 1) so its L_p norm is ``scale`` times a target."""
    n = np.linalg.norm(x, ord=p, axis=1, keepdims=True)
    return x / n * scale


def c_adain(cshape, sshape):
    key = f"adain-{cshape}-{sshape}"
    rng = _rng(key)
    content = rng.standard_normal(cshape)
    style = 2.0 + 1.5 * rng.standard_normal(sshape)
    return Case(key, an.adain, lambda c: ((c(content), c(style)), {}), (0, 1))


def c_normalize(shape, label, make_partition, make_operation, with_w, with_b, pshape):
    key = f"normalize-{shape}-{label}"
    rng = _rng(key)
    x = rng.standard_normal(shape) + 0.3
    w, b = _wb(rng, pshape)
    stats = (rng.standard_normal(pshape), rng.uniform(0.5, 1.5, pshape))

    def build(c):
        op = make_operation(*(c(s) for s in stats))
        return (c(x), make_partition(), op, c(w) if with_w else None,
                c(b) if with_b else None), {"eps": 1e-4}

    diff = (0,) + ((3,) if with_w else ()) + ((4,) if with_b else ())
    return Case(key, an.normalize, build, diff)


INF = float("inf")
CASES = [
    c_batch_norm((5, 3)),
    c_batch_norm((3, 2, 2, 2)),
    c_batch_norm((3, 2, 2, 3), axis=-1),
    c_batch_norm_infer((4, 3)),
    c_batch_norm_infer((2, 3, 2, 2)),
    c_layer_norm((3, 5), -1),
    c_layer_norm((2, 3, 4), (1, 2)),
    c_layer_norm((2, 3, 4), (0, 2)),
    c_instance_norm((2, 3, 4)),
    c_instance_norm((2, 2, 2, 3)),
    c_instance_norm((2, 3, 2, 2), axis=-1),
    c_group_norm((2, 4, 3), 2),
    c_group_norm((2, 6, 2), 3),
    c_group_norm((2, 4, 3), 1),
    c_group_norm((2, 4, 3), 4),
    c_group_norm((3, 4), 2),
    c_group_norm((2, 2, 3, 4), 2, axis=-1),
    c_rms_norm((3, 4), -1, None),
    c_rms_norm((2, 3, 4), (1, 2), 1e-3),
    c_rms_norm((4, 3), -1, 0.5, with_weight=False),
    c_position_norm((2, 3, 2, 2)),
    c_position_norm((2, 4, 3), axis=-1),
    c_ghost_batch_norm((6, 2, 2), 3),
    c_ghost_batch_norm((4, 3, 2), 2),
    c_batch_renorm((4, 3), "clip"),
    c_batch_renorm((3, 2, 2, 2), "clip"),
    c_batch_renorm((4, 3), "clip-r"),
    c_batch_renorm((4, 3), "free"),
    c_batch_renorm((3, 2, 2, 2), "free"),
    c_batch_renorm((4, 3), "bn"),
    c_lrn((2, 5, 3), 3),
    c_lrn((2, 5, 3), 2),
    c_lrn((2, 4, 3), 4),
    c_lrn((2, 4, 3), 1),
    c_lrn((2, 4, 3), 7),                 # window wider than the channels, odd
    c_lrn((2, 3, 2, 2), 6),              # window wider than the channels, even
    c_lrn((2, 5, 2), 3, alpha=2.0, beta=1.5, k=0.5),
    c_l2((3, 5), 2.0, 1),
    c_l2((3, 5), 1.0, 1),
    c_l2((3, 5), 3.0, 1),
    c_l2((3, 5), 2.5, -1),
    c_l2((2, 3, 4), 2.0, (1, 2)),
    c_l2((2, 3, 4), 3.0, 0),
    # p = inf: one maximum per row, at least 0.1 above the rest
    c_l2((3, 5), INF, 1, x=_distinct_max_rows((3, 5), 0.1, "inf-2d"), tag="-distinct"),
    c_l2((2, 4, 3), INF, 1, x=_distinct_max_rows((2, 4, 3), 0.1, "inf-3d"), tag="-distinct"),
    # norms below eps (clamp active: y = x/eps) ...
    c_l2((3, 4), 2.0, 1, eps=0.5, x=_norm_rows(_rng("clamp2").standard_normal((3, 4)), 2, 0.4),
         tag="-below"),
    c_l2((3, 4), INF, 1, eps=0.5,
         x=_norm_rows(_distinct_max_rows((3, 4), 0.1, "clamp-inf"), INF, 0.4), tag="-below"),
    # ... and rows on both sides of the clamp in one input: 0.8·eps and 1.25·eps
    c_l2((4, 3), 2.0, 1, eps=2.0,
         x=_norm_rows(_rng("clamp-mixed").standard_normal((4, 3)), 2,
                      np.array([[1.6], [2.5], [1.8], [2.2]])), tag="-both-sides"),
    c_adain((2, 3, 4), (2, 3, 5)),
    c_adain((1, 2, 2, 3), (1, 2, 3, 2)),
    c_normalize((2, 4, 3), "group2-rms", lambda: Group(2), lambda m, v: RMSScale(),
                True, True, (4,)),
    c_normalize((2, 3, 2, 2), "position-standardize", lambda: Position(),
                lambda m, v: Standardize(), True, False, (3,)),
    c_normalize((2, 3, 4), "layer12-lp3", lambda: Layer((1, 2)), lambda m, v: LpScale(3.0),
                False, False, (3, 4)),
    c_normalize((4, 3), "ghost2", lambda: GhostBatch(2), lambda m, v: Standardize(),
                True, True, (3,)),
    c_normalize((3, 3, 2), "batch-given", lambda: Batch(), GivenStatistics, True, True, (3,)),
]
IDS = [c.id for c in CASES]


def _numpy_args(case: Case) -> tuple[tuple, dict]:
    return case.build(lambda a: a)


def _forward_numpy(case: Case) -> Callable[[list], np.ndarray]:
    """The oracle forward on NumPy float64, as a function of the positional args."""
    _, kwargs = _numpy_args(case)
    if case.reference is not None:
        return lambda args: case.reference(*(args[i] for i in case.diff))
    return lambda args: np.asarray(case.op(*args, **kwargs))


def _cotangents(case: Case, cts: tuple) -> tuple:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    n = sum(p.kind in kinds for p in inspect.signature(case.op).parameters.values())
    assert len(cts) == n, f"{case.id}: {len(cts)} cotangents for {n} positional parameters"
    return cts


@functools.cache
def _directional_fd(index: int) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, float, float]]]:
    """For case ``index``: a random cotangent dy and, per differentiated input i, (v,
    ⟨dy, J v⟩ by scipy, scipy's error estimate). Computed once, shared by every backend."""
    case = CASES[index]
    args, _ = _numpy_args(case)
    fwd = _forward_numpy(case)
    rng = _rng("directions-" + case.id)
    dy = rng.standard_normal(np.shape(fwd(list(args))))
    out = {}
    for i in case.diff:
        v = rng.standard_normal(np.shape(args[i]))

        def g(t: np.ndarray, i=i, v=v) -> np.ndarray:
            res = np.empty(t.shape)
            for j in np.ndindex(t.shape):
                a = list(args)
                a[i] = args[i] + t[j] * v
                res[j] = np.sum(dy * fwd(a))
            return res

        r = derivative(g, 0.0, initial_step=case.step, tolerances={"rtol": 1e-10})
        assert r.success or r.error < 1e-9, f"{case.id}: derivative failed ({r.status})"
        out[i] = (v, float(r.df), float(r.error))
    return dy, out


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_pullback_matches_directional_finite_difference(index: int, xp) -> None:
    case = CASES[index]
    dy, fd = _directional_fd(index)
    args, kwargs = case.build(lambda a: from_numpy(xp, a))
    _, pullback = an.vjp(case.op, *args, **kwargs)
    cts = _cotangents(case, pullback(from_numpy(xp, dy)))
    for i, ct in enumerate(cts):
        if i not in case.diff:
            assert ct is None, f"{case.id}: cotangent {i} is not of a differentiated array"
    for i in case.diff:
        v, jv, err = fd[i]
        ct = to_numpy(cts[i])
        assert ct.shape == np.shape(args[i]) and ct.dtype == np.float64
        vjp_v = float(np.sum(ct * v))
        tol = 1e-8 * abs(jv) + 1e-9 * np.linalg.norm(dy) * np.linalg.norm(v)
        _record(case, "directional", abs(vjp_v - jv) / max(abs(jv), 1e-300))
        assert abs(vjp_v - jv) <= tol, (
            f"{case.id}, input {i}: <J^T dy, v> = {vjp_v!r} but finite differences give "
            f"<dy, J v> = {jv!r} (scipy error estimate {err:.1e}, tolerance {tol:.1e})"
        )


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_full_jacobian_matches_approx_fprime(index: int) -> None:
    case = CASES[index]
    args, kwargs = _numpy_args(case)
    fwd = _forward_numpy(case)
    y, pullback = an.vjp(case.op, *args, **kwargs)
    y = np.asarray(y)
    np.testing.assert_allclose(y, fwd(list(args)), rtol=1e-12, atol=1e-12,
                               err_msg=f"{case.id}: oracle forward differs from the op")
    m = y.size
    rows = {i: np.empty((m, np.size(args[i]))) for i in case.diff}
    for r in range(m):
        e = np.zeros(m)
        e[r] = 1.0
        cts = _cotangents(case, pullback(e.reshape(y.shape)))
        for i in case.diff:
            rows[i][r] = np.asarray(cts[i]).ravel()
    for i in case.diff:
        shape = np.shape(args[i])

        def flat(z: np.ndarray, i=i, shape=shape) -> np.ndarray:
            a = list(args)
            a[i] = z.reshape(shape)
            return fwd(a).ravel()

        jac = approx_fprime(np.ravel(args[i]).copy(), flat)
        jac = jac.reshape(m, -1)
        scale = max(float(np.max(np.abs(jac))), 1e-300)
        _record(case, "jacobian", float(np.max(np.abs(rows[i] - jac))) / scale)
        np.testing.assert_allclose(rows[i], jac, rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=f"{case.id}: Jacobian w.r.t. input {i}")


@pytest.mark.parametrize("index", [i for i, c in enumerate(CASES) if c.claim],
                         ids=lambda i: IDS[i])
def test_edge_case_inputs_are_where_they_claim(index: int) -> None:
    """The clip / clamp / distinct-maximum cases really exercise that regime, away from the
    kink by more than the finite-difference steps reach."""
    CASES[index].claim()


def test_batch_renorm_without_clipping_is_affine_in_the_running_statistics() -> None:
    """Where r and d do not clip, r·(x − μ_B)/σ_B + d = (x − μ)/σ exactly (Ioffe 2017, §3):
    the forward the frozen-r,d oracle differentiates is the op's own."""
    rng = _rng("renorm-identity")
    x = rng.standard_normal((5, 3, 2))
    mu_b, var_b = (s.reshape(3) for s in _bn_stats(x, 1))
    rm, rv = mu_b + 0.1, 1.2 * var_b
    w, b = _wb(rng, (3,))
    y = an.batch_renorm(x, w, b, running_mean=rm, running_var=rv, rmax=3.0, dmax=5.0)
    expected = (_bcast(w, 3, 1) * (x - _bcast(rm, 3, 1)) / np.sqrt(_bcast(rv, 3, 1) + 1e-5)
                + _bcast(b, 3, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_every_op_of_the_brief_is_covered() -> None:
    ops = {"batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm",
           "position_norm", "ghost_batch_norm", "batch_renorm", "local_response_norm",
           "l2_normalize", "adain", "normalize"}
    covered = {c.op.__name__ for c in CASES}
    assert ops <= covered, f"not covered: {sorted(ops - covered)}"
