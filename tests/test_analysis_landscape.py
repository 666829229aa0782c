"""The landscape study and its Hessian machinery (analysis._hessian) against oracles:
closed-form Hessians (quadratics, a linear layer under MSE, a softplus model), SciPy's
finite-difference Jacobian of the exact gradient, PyTorch autograd's Hessian of the same
BN network, ``numpy.linalg.eigvalsh`` of dense Hessians, and matrices with known spectra
for Hutchinson's estimator and stochastic Lanczos quadrature.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
from scipy import integrate, special
from scipy.sparse.linalg import aslinearoperator

import analysis
import arraynorm as an
from analysis._backend import Backend
from analysis._hessian import (ModelLoss, dense_matrix, get_flat, grad_flat, hessian_operator,
                               hutchinson_trace, lanczos, parameter_layout, set_flat, slq,
                               top_eigenvalues)
from analysis._training import make_task
from analysis.landscape import _along_gradient

from _helpers import torch_available

ROOT = Path(__file__).resolve().parents[1]

#: a run small enough to repeat (determinism, executors, backends): a fraction of a second
TINY = dict(norms=("none", "batch"), depth=1, width=4, samples=16, steps=6, measurements=2,
            top_k=1, trace_probes=2, lanczos_steps=3, slq_probes=1, probe_steps=(1.0,),
            exact=False, progress=False)


def _spectrum_matrix(eigenvalues, seed=0):
    """A symmetric matrix with the given eigenvalues (random orthogonal eigenvectors)."""
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * np.asarray(eigenvalues)) @ q.T


def _small_model(norm, rng=0, width=4, depth=2, samples=24):
    b = Backend()
    model, loss, x, t = make_task(b, seed=rng, samples=samples, depth=depth, width=width,
                                  norm=norm, activation="tanh", loss="mse")
    return ModelLoss(model, loss, x, t, b)


# --------------------------------------------------------------------------- flattening
def test_flat_parameters_round_trip_in_parameter_slot_order():
    f = _small_model("batch")
    layout = parameter_layout(f.model)
    names = [name for name, _, _ in f.model.parameter_slots()]
    assert [row[0] for row in layout] == names
    assert layout[-1][3] == sum(np.size(p) for p in f.model.parameters())
    theta = np.arange(layout[-1][3], dtype=float)
    set_flat(f.model, theta)
    np.testing.assert_array_equal(get_flat(f.model), theta)
    name, shape, start, stop = layout[2]
    np.testing.assert_array_equal(dict(f.model.named_parameters())[name],
                                  theta[start:stop].reshape(shape))
    with pytest.raises(ValueError, match="theta must have shape"):
        set_flat(f.model, theta[:-1])


def test_grad_flat_before_backward_names_the_parameter():
    model = an.nn.Linear(2, 3, rng=0)
    with pytest.raises(RuntimeError, match="weight has no gradient"):
        grad_flat(model)


# --------------------------------------------------------------------------- Hessian-vector products
def test_hvp_of_a_quadratic_is_its_matrix():
    rng = np.random.default_rng(1)
    a = _spectrum_matrix(rng.uniform(-2, 5, 12))
    c = rng.standard_normal(12)
    op = hessian_operator(lambda t: a @ t - c, rng.standard_normal(12))
    assert op.step.third < 1e-6 * op.step.scale      # no fourth derivative: h is the pilot's
    v = rng.standard_normal(12)
    np.testing.assert_allclose(op @ v, a @ v, rtol=0, atol=1e-9 * np.linalg.norm(a @ v))
    np.testing.assert_allclose(op @ (3 * v), 3 * (a @ v), rtol=1e-9)
    np.testing.assert_array_equal(op @ np.zeros(12), np.zeros(12))


def test_hvp_of_linear_layer_under_mse_is_the_closed_form_gauss_newton_matrix():
    # L = mean((X Wᵀ + b − T)²) over N·K entries is quadratic in (W, b):
    # ∂²L/∂W_ia ∂W_jb = 2/(NK) δ_ij (X̃ᵀX̃)_ab with X̃ = [X, 1] (the bias as a constant input)
    rng = np.random.default_rng(2)
    n, d, k = 20, 3, 2
    x, t = rng.standard_normal((n, d)), rng.standard_normal((n, k))
    model = an.nn.Linear(d, k, rng=3)
    f = ModelLoss(model, an.nn.MSELoss(), x, t)
    got = dense_matrix(hessian_operator(f, f.theta0))
    xt = np.hstack([x, np.ones((n, 1))])
    block = 2.0 / (n * k) * np.kron(np.eye(k), xt.T @ xt)   # order (i, a) over [W_i·, b_i]
    # the flat vector is W (k×d, C order) then b (k): permute (i, a) → that order
    order = [i * (d + 1) + a for i in range(k) for a in range(d)] + [i * (d + 1) + d for i in range(k)]
    expected = block[np.ix_(order, order)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def _softplus_problem(seed=4, n=10, m=14):
    """L = ½θᵀAθ + Σ softplus(Bθ): H = A + Bᵀ diag(σ(Bθ)(1 − σ(Bθ))) B in closed form."""
    rng = np.random.default_rng(seed)
    a = _spectrum_matrix(rng.uniform(0, 3, n), seed)
    bm = rng.standard_normal((m, n))
    grad = lambda th: a @ th + bm.T @ special.expit(bm @ th)          # noqa: E731
    hess = lambda th: a + bm.T @ ((special.expit(bm @ th) * special.expit(-bm @ th))[:, None] * bm)  # noqa: E731
    return grad, hess, rng.standard_normal(n), rng


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_hvp_error_is_within_the_stated_truncation_plus_rounding_budget(precision):
    grad64, hess, theta, rng = _softplus_problem()
    if precision == "float32":   # gradients computed in float32, as on a float32 backend
        def grad(th):
            g32 = grad64(th.astype(np.float32).astype(np.float64)).astype(np.float32)
            return g32.astype(np.float64)
    else:
        grad = grad64
    op = hessian_operator(grad, theta, dtype=precision, rng=rng)
    step = op.step
    assert step.truncation == pytest.approx(step.h ** 2 * step.third / 6)
    assert step.rounding == pytest.approx(step.grad_noise / step.h)
    eps = np.finfo(precision).eps
    assert step.relative_error < 10 * eps ** (2 / 3)   # the optimum's ε^{2/3} scaling
    h_exact = hess(theta)
    for _ in range(5):
        v = rng.standard_normal(theta.size)
        v /= np.linalg.norm(v)
        err = np.linalg.norm(op @ v - h_exact @ v)
        assert err <= 3 * step.error, (err, step.as_dict())


def test_hvp_of_small_network_matches_scipy_finite_difference_hessian():
    # the oracle: SciPy's forward-difference Jacobian of the exact gradient, with its own step
    for norm in ("none", "batch"):
        f = _small_model(norm)
        got = dense_matrix(hessian_operator(f, f.theta0))
        fd = scipy.optimize.approx_fprime(f.theta0, f, 1e-7)
        fd = 0.5 * (fd + fd.T)
        np.testing.assert_allclose(got, fd, rtol=0, atol=2e-6 * np.abs(fd).max(), err_msg=norm)


@pytest.mark.torch
@pytest.mark.skipif(not torch_available(), reason="torch is not importable")
def test_hvp_of_batchnorm_network_matches_torch_autograd_hessian_of_train_mode_loss():
    import torch

    f = _small_model("batch", width=3, samples=16)
    got = dense_matrix(hessian_operator(f, f.theta0))
    layout = parameter_layout(f.model)
    x = torch.tensor(np.asarray(f.x), dtype=torch.float64)
    t = torch.tensor(np.asarray(f.target), dtype=torch.float64)

    def loss(theta):
        p = {name: theta[a:b].reshape(shape) for name, shape, a, b in layout}
        h = x
        for i in range(2):  # blocks: Linear → BN (batch statistics, biased variance) → tanh
            h = h @ p[f"{i}.0.weight"].T + p[f"{i}.0.bias"]
            mu, var = h.mean(0), h.var(0, unbiased=False)
            h = torch.tanh((h - mu) / torch.sqrt(var + 1e-5) * p[f"{i}.1.weight"] + p[f"{i}.1.bias"])
        y = h @ p["2.weight"].T + p["2.bias"]
        return ((y - t) ** 2).mean()

    theta = torch.tensor(f.theta0, dtype=torch.float64)
    assert float(loss(theta)) == pytest.approx(f.value(f.theta0), rel=1e-12)
    ref = torch.autograd.functional.hessian(loss, theta).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-7 * np.abs(ref).max())


def test_eigsh_extremes_match_eigvalsh_of_the_dense_hessian():
    f = _small_model("batch", width=5)
    op = hessian_operator(f, f.theta0)
    exact = np.linalg.eigvalsh(dense_matrix(op))
    rng = np.random.default_rng(5)
    top, vecs = top_eigenvalues(op, 3, v0=rng.standard_normal(op.shape[0]), tol=1e-10)
    bottom, _ = top_eigenvalues(op, 2, which="SA", v0=rng.standard_normal(op.shape[0]), tol=1e-10)
    scale = np.abs(exact).max()
    np.testing.assert_allclose(top, exact[::-1][:3], rtol=0, atol=1e-7 * scale)
    np.testing.assert_allclose(bottom, exact[1::-1], rtol=0, atol=1e-7 * scale)
    np.testing.assert_allclose(op @ vecs[:, 0], top[0] * vecs[:, 0], atol=1e-6 * scale)
    with pytest.raises(ValueError, match="need 1 <= k < n"):
        top_eigenvalues(op, op.shape[0])


# --------------------------------------------------------------------------- Hutchinson, SLQ
def test_hutchinson_is_unbiased_with_the_rademacher_variance():
    rng = np.random.default_rng(6)
    a = _spectrum_matrix(rng.uniform(-1, 4, 40), 6)
    m = 800
    est = hutchinson_trace(aslinearoperator(a), m, rng)
    # Var zᵀAz = 2 Σ_{i≠j} a_ij² for Rademacher z (Hutchinson 1990)
    var = 2 * (np.sum(a * a) - np.sum(np.diag(a) ** 2))
    assert abs(est.estimate - np.trace(a)) < 4 * np.sqrt(var / m)
    # the sample variance of m draws is within ~4 standard errors of var (kurtosis-bounded)
    assert est.stderr ** 2 * m == pytest.approx(var, rel=0.25)
    lo, hi = est.confidence_interval(0.999)
    assert lo < np.trace(a) < hi


def test_hutchinson_is_exact_for_a_diagonal_matrix():
    d = np.random.default_rng(7).uniform(-3, 3, 30)
    est = hutchinson_trace(aslinearoperator(np.diag(d)), 3, np.random.default_rng(8))
    assert est.estimate == pytest.approx(d.sum(), rel=1e-14)
    assert est.stderr < 1e-12


def test_lanczos_gauss_quadrature_reproduces_moments_below_degree_2m():
    rng = np.random.default_rng(9)
    lam = np.concatenate([rng.uniform(0, 1, 60), [4.0, 7.0]])
    a = _spectrum_matrix(lam, 9)
    v = rng.choice([-1.0, 1.0], a.shape[0])
    m = 6
    dens = slq(aslinearoperator(a), v[None, :], m)
    u = v / np.linalg.norm(v)
    for k in range(2 * m):   # Σ τ² θᵏ = ûᵀAᵏû exactly for k < 2m (Golub & Meurant)
        exact = u @ np.linalg.matrix_power(a, k) @ u
        assert dens.moment(k) == pytest.approx(exact, rel=1e-9, abs=1e-12), k
    alpha, beta = lanczos(aslinearoperator(a), v, m)
    assert len(alpha) == m and len(beta) == m - 1


def test_slq_estimates_the_eigenvalue_distribution_of_a_known_matrix():
    rng = np.random.default_rng(10)
    lam = np.concatenate([rng.uniform(0, 1, 150), [3.0, 5.0]])
    a = _spectrum_matrix(lam, 10)
    dens = slq(aslinearoperator(a), 12, 24, rng)
    # moments: each probe's quadrature is exact (k < 48), so the error is the probes' sampling
    # error of ûᵀAᵏû around tr(Aᵏ)/n; its spread across probes gives the tolerance
    for k in (1, 2, 4):
        per_probe = [np.sum(w * t ** k) for t, w in zip(dens.nodes, dens.weights)]
        se = np.std(per_probe, ddof=1) / np.sqrt(len(per_probe))
        assert abs(dens.moment(k) - np.mean(lam ** k)) < 4 * se + 1e-12, k
    # the CDF against the exact eigenvalue CDF (Kolmogorov distance)
    grid = np.linspace(-0.5, 5.5, 400)
    exact_cdf = np.searchsorted(np.sort(lam), grid, side="right") / lam.size
    assert np.max(np.abs(dens.cdf(grid) - exact_cdf)) < 0.08
    # the broadened density is a probability density with the estimated mean
    sigma = 0.02
    wide = np.linspace(-1, 6, 4000)
    phi = dens.density(wide, sigma)
    assert integrate.trapezoid(phi, wide) == pytest.approx(1.0, abs=1e-6)
    assert integrate.trapezoid(wide * phi, wide) == pytest.approx(dens.moment(1), abs=1e-6)


def test_slq_rejects_bad_sizes():
    op = aslinearoperator(np.eye(3))
    with pytest.raises(ValueError, match="probes must be >= 1"):
        slq(op, 0, 2)
    with pytest.raises(ValueError, match="starts of length 3"):
        slq(op, np.ones((1, 4)), 2)
    with pytest.raises(ValueError, match="probes must be >= 1"):
        hutchinson_trace(op, 0, np.random.default_rng())


# --------------------------------------------------------------------------- Santurkar's measures
def test_effective_beta_smoothness_tends_to_the_hessian_along_the_gradient():
    # ‖∇L(θ − s g) − g‖ / ‖s g‖ → ‖H ĝ‖ as s → 0 (mean value theorem)
    f = _small_model("batch")
    value, g = f.value_and_grad(f.theta0)
    curves = {"loss_range": [], "grad_change": [], "beta": []}
    _along_gradient(f, f.theta0, value, g, 1e-6, (1.0,), curves)
    op = hessian_operator(f, f.theta0)
    expected = np.linalg.norm(op @ (g / np.linalg.norm(g)))
    assert curves["beta"][0] == pytest.approx(expected, rel=1e-4)
    # the loss range of a small step is the first-order decrease s‖g‖²
    assert curves["loss_range"][0] == pytest.approx(1e-6 * g @ g, rel=1e-3)


# --------------------------------------------------------------------------- the study
@pytest.fixture(scope="module")
def quick():
    return analysis.landscape(quick=True, progress=False)


def test_quick_study_estimators_agree_with_the_exact_hessian(quick):
    m, t = quick.measured, quick.theory
    for n in quick.params["norms"]:
        fin = m[n]["final"]
        # eigsh against eigvalsh of the dense Hessian (HVP error ~1e-9 relative)
        np.testing.assert_allclose(fin["top_eigenvalues"], fin["exact_top_eigenvalues"],
                                   rtol=1e-6)
        assert fin["sharpness"] == pytest.approx(t[n]["final"]["sharpness"], rel=1e-6)
        # Hutchinson within 5 of its standard errors (a t-variable on trace_probes − 1 dof)
        assert abs(fin["trace_z"]) < 5
        assert t[n]["sharpness_late"] == pytest.approx(2 / quick.params["lr"])
        assert fin["hvp"]["relative_error"] < 1e-8
    assert "edge of stability" in quick.verdict and "Hutchinson" in quick.verdict


def test_gradient_descent_self_stabilizes_below_two_over_lr():
    # Cohen et al. 2021 / Lewkowycz et al. 2020: started sharper than 2/η, GD does not diverge —
    # the sharpness falls below 2/η within a few steps (the catapult) and the loss decreases
    lr = 0.3
    r = analysis.landscape(norms=("none", "batch"), depth=2, width=8, samples=64, steps=20,
                           measurements=4, top_k=1, trace_probes=2, lanczos_steps=3,
                           slq_probes=1, probe_steps=(1.0,), exact=False, lr=lr, seed=1,
                           progress=False)
    for n in ("none", "batch"):
        s = r.measured[n]["curves"]["sharpness"]
        assert s[0] > 2 / lr, n          # the case the claim is about
        assert max(s[1:]) < 2 / lr, n
        assert r.measured[n]["loss_final"] < r.measured[n]["loss_initial"]


def test_result_json_skeleton_and_plot(quick, tmp_path):
    d = json.loads(quick.to_json())
    assert {"study", "params", "measured", "theory", "verdict"} <= set(d)
    assert d["study"] == "landscape"
    back = analysis.StudyResult.from_json(quick.to_json())
    png = tmp_path / "landscape.png"
    back.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_runs_quick_with_json_and_plot(tmp_path):
    j, p = tmp_path / "l.json", tmp_path / "l.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "landscape", "--quick", "--no-progress",
                          "--norms", "none,batch", "--steps", "10", "--json", str(j), "--plot",
                          str(p)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "edge of stability" in out.stdout
    assert json.loads(j.read_text())["study"] == "landscape" and p.stat().st_size > 0


def test_same_seed_is_deterministic_serial_and_in_a_process_pool():
    a = analysis.landscape(**TINY, seed=3)
    b = analysis.landscape(**TINY, seed=3)
    assert a.as_dict()["measured"] == b.as_dict()["measured"]
    with ProcessPoolExecutor(2) as pool:
        c = analysis.landscape(**TINY, seed=3, executor=pool)
    assert c.as_dict()["measured"] == a.as_dict()["measured"]


@pytest.mark.parametrize("backend", ["array_api_strict",
                                     pytest.param("torch", marks=pytest.mark.skipif(
                                         not torch_available(), reason="torch is not importable"))])
def test_other_backends_give_the_numpy_numbers(backend):
    ref = analysis.landscape(**TINY, seed=1).measured
    got = analysis.landscape(**TINY, seed=1, backend=backend).measured
    for n in TINY["norms"]:
        for key in ("sharpness", "loss", "loss_range", "beta"):
            np.testing.assert_allclose(got[n]["curves"][key], ref[n]["curves"][key], rtol=1e-6,
                                       err_msg=f"{n} {key}")
        assert got[n]["init"]["trace"] == pytest.approx(ref[n]["init"]["trace"], rel=1e-6)


def test_options_are_validated():
    with pytest.raises(ValueError, match="norms must be among"):
        analysis.landscape(norms=("spectral_norm",), progress=False)
    with pytest.raises(ValueError, match="lr and probe_steps must be positive"):
        analysis.landscape(lr=0.0, progress=False)
    with pytest.raises(ValueError, match="loss must be among"):
        analysis.landscape(loss="hinge", progress=False)


def test_docstring_examples_of_the_hessian_module_run():
    import doctest

    import analysis._hessian

    assert doctest.testmod(analysis._hessian).failed == 0
