"""The Jacobian study: free-probability theory of JJᵀ against closed forms and Monte Carlo,
the dense and operator Jacobians against independent constructions, the null directions of
each normalization, the measured spectra against the theory, backends, CLI, determinism."""

from __future__ import annotations

import concurrent.futures
import doctest
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg as sla
from scipy import integrate, stats
from threadpoolctl import threadpool_limits

import analysis
import analysis._free as free
import importlib
import arraynorm.nn as nn
from analysis._operator import dense_jacobian
from analysis._free import critical_point, fuss_catalan, jjt_moments, jjt_spectrum
from analysis.jacobian import (_point, batch_jacobians, ks_distance, null_directions,
                               restricted_singular_values, sample_jacobians)

ROOT = pathlib.Path(__file__).resolve().parents[1]
# the module (``analysis.jacobian`` as an attribute is the study function)
jac_mod = importlib.import_module("analysis.jacobian")


def _gauss(f, q):
    """E f(√q ξ) by adaptive quadrature (independent of the study's Gauss–Hermite rule)."""
    return integrate.quad(lambda z: f(np.sqrt(q) * z) * stats.norm.pdf(z), -np.inf, np.inf,
                          limit=200, points=None)[0]


# ------------------------------------------------------------------------------ theory
@pytest.mark.parametrize("activation", ["tanh", "hardtanh"])
@pytest.mark.parametrize("q_star", [1 / 64, 0.25, 1.0])
def test_critical_point_is_a_fixed_point_of_the_length_map_with_unit_chi(activation, q_star):
    cp = critical_point(activation, q_star)
    phi = np.tanh if activation == "tanh" else (lambda h: np.clip(h, -1, 1))
    dphi2 = ((lambda h: np.cosh(np.clip(h, -50, 50)) ** -4) if activation == "tanh"
             else (lambda h: (np.abs(h) < 1) * 1.0))
    q_next = cp.sigma_w ** 2 * _gauss(lambda h: phi(h) ** 2, q_star) + cp.sigma_b ** 2
    chi = cp.sigma_w ** 2 * _gauss(dphi2, q_star)
    assert q_next == pytest.approx(q_star, rel=1e-7)
    assert chi == pytest.approx(1.0, rel=1e-7)


def test_fuss_catalan_numbers_are_the_moments_of_complex_gaussian_products():
    # products of L complex Ginibre N(0, 1/N) matrices (finite-N corrections O(1/N²)),
    # plain NumPy; the tolerance is 4 standard errors over the independent trials
    rng = np.random.default_rng(0)
    n, trials = 128, 16
    with threadpool_limits(1):  # small products: BLAS threads only spin on a loaded machine
        runs = {depth: _ginibre_product_moments(rng, n, depth, trials) for depth in (2, 3)}
    for depth, moments in runs.items():
        se = moments.std(axis=0, ddof=1) / np.sqrt(trials)
        for k in (1, 2, 3):
            assert abs(moments[:, k - 1].mean() - fuss_catalan(depth, k)) < 4 * se[k - 1] + 1e-9


def _ginibre_product_moments(rng, n, depth, trials):
    out = []
    for _ in range(trials):
        j = np.eye(n)
        for _ in range(depth):
            g = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / np.sqrt(2 * n)
            j = g @ j
        lam = np.linalg.eigvalsh(j @ j.conj().T)
        out.append([np.mean(lam ** k) for k in (1, 2, 3)])
    return np.array(out)


@pytest.mark.parametrize("depth", [2, 3])
def test_density_of_deep_linear_gaussian_networks_has_fuss_catalan_moments(depth):
    s = jjt_spectrum("linear", "gaussian", depth)
    for k in (1, 2, 3):
        assert s.moment(k) == pytest.approx(fuss_catalan(depth, k), rel=2e-4)
    m1, m2 = jjt_moments("linear", "gaussian", depth)
    assert (m1, m2) == (1.0, pytest.approx(fuss_catalan(depth, 2)))


def test_density_of_one_gaussian_layer_is_marchenko_pastur():
    s = jjt_spectrum("linear", "gaussian", 1)
    lam = s.grid[(s.grid > 1e-6) & (s.grid < 4 * (1 - 1e-6))]
    mp = np.sqrt(4 - lam) / (2 * np.pi * np.sqrt(lam))
    got = np.interp(lam, s.grid, s.density)
    np.testing.assert_allclose(got, mp, rtol=1e-4)
    assert s.edge == pytest.approx(4.0, rel=1e-8) and s.atoms == []


def test_density_of_two_orthogonal_relu_layers_is_the_arcsine_law_of_free_projections():
    # JJᵀ = 4·PQP with P, Q free projections of trace ½: ½δ₀ + density 1/(2π√(λ(4 − λ)))
    s = jjt_spectrum("relu", "orthogonal", 2)
    lam = s.grid[(s.grid > 1e-6) & (s.grid < 4 * (1 - 1e-6))]
    exact = 1 / (2 * np.pi * np.sqrt(lam * (4 - lam)))
    np.testing.assert_allclose(np.interp(lam, s.grid, s.density), exact, rtol=1e-3)
    assert s.atoms == [(0.0, 0.5)] and s.edge == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize("activation,q_star", [("relu", 1.0), ("hardtanh", 0.5)])
@pytest.mark.parametrize("init", ["gaussian", "orthogonal"])
@pytest.mark.parametrize("depth", [1, 3, 6])
def test_free_density_integrates_to_one_with_unit_mean_and_the_second_moment_formula(activation, q_star, init, depth):
    s = jjt_spectrum(activation, init, depth, q_star)
    # p = P(φ' ≠ 0) from the normal CDF; μ₁ = p, μ₂ = p (φ'² ∈ {0, 1}); χ₁ = σ_w² p = 1
    p = 0.5 if activation == "relu" else stats.norm.cdf(1 / np.sqrt(q_star)) - stats.norm.cdf(-1 / np.sqrt(q_star))
    v_w = 1.0 if init == "gaussian" else 0.0
    assert s.continuous_mass() + s.atom_mass == pytest.approx(1.0, abs=2e-3)
    assert dict(s.atoms).get(0.0) == pytest.approx(1 - p, rel=1e-12)
    assert s.moment(1) == pytest.approx(1.0, rel=2e-3)                 # χ₁^L = 1
    assert s.moment(2) == pytest.approx(1 + depth * (v_w + 1 / p - 1), rel=3e-3)
    if init == "orthogonal" and activation == "hardtanh":
        # the isometric subspace: an atom at σ_w^{2L} of mass 1 − L(1 − p) while positive
        top = max(1 - depth * (1 - p), 0.0)
        at_top = [m for loc, m in s.atoms if abs(loc - p ** -depth) < 1e-9 * loc]
        assert sum(at_top) == pytest.approx(top, rel=1e-9)


def test_ks_distance_equals_scipys_kstest_for_a_continuous_law_and_handles_atoms():
    s = jjt_spectrum("linear", "gaussian", 1)
    lam = np.random.default_rng(3).uniform(0.05, 3.9, 200)
    ours = ks_distance(lam, s, floor=1e-3)
    ref = stats.kstest(lam, lambda x: s.cdf(x)).statistic
    assert ours == pytest.approx(ref, abs=1e-12)
    iso = jjt_spectrum("linear", "orthogonal", 5)
    assert ks_distance(np.ones(10) * (1 + 1e-14), iso, floor=1e-20) == 0.0
    assert ks_distance(np.r_[np.ones(9), 0.5], iso, floor=1e-20) == pytest.approx(0.1)


# ------------------------------------------------------------------------------ Jacobians
def test_layer_norm_jacobian_rank_and_singular_values_follow_its_formula():
    # J = rstd (I − 11ᵀ/n − ŷŷᵀ/n): rstd n − 2 times, 0 along 1 and ŷ (eps = 0)
    n = 9
    x = np.random.default_rng(1).standard_normal(n) * 1.5 + 0.7
    layer = nn.LayerNorm(n, eps=0.0)
    jac = dense_jacobian(layer, x[None])
    rstd = 1 / x.std()
    yhat = (x - x.mean()) * rstd
    np.testing.assert_allclose(jac, rstd * (np.eye(n) - 1 / n - np.outer(yhat, yhat) / n), atol=1e-13)
    assert np.linalg.matrix_rank(jac) == n - 2
    np.testing.assert_allclose(sla.svdvals(jac)[:n - 2], rstd, rtol=1e-12)
    null = null_directions("layer", x, np.eye(n))
    assert np.abs(jac @ null).max() < 1e-13
    np.testing.assert_allclose(restricted_singular_values(jac, null), np.full(n - 2, rstd), rtol=1e-12)


@pytest.mark.parametrize("norm", ["none", "weight_norm", "spectral_norm", "layer", "rms", "group",
                                  "batch", "batch_uncentered", "weight_standardization",
                                  "centered_weight_norm"])
def test_stated_null_directions_are_the_whole_null_space_of_a_stack(norm):
    # tanh (φ' > 0) and a bias: every zero singular value of the whole-batch Jacobian
    # (formed by dense_jacobian's VJPs, not by the study's JVP paths) is a stated one
    d, n, depth = 8, 5, 3
    kw = {"eps": 0.0} if norm in ("layer", "rms", "batch", "batch_uncentered") else {}
    if norm == "group":
        kw = {"eps": 0.0, "num_groups": 2}
    model = nn.deep_stack(depth, d, activation="tanh", norm=norm, init="gaussian", sigma_w=1.3,
                          sigma_b=0.3, norm_kwargs=kw or None, rng=4)
    x = np.random.default_rng(5).standard_normal((n, d))
    jac = dense_jacobian(model, x, mode="vjp")
    w, b = model[0][0].effective_weight(), model[0][0].params["bias"]
    h = x @ w.T + b
    if norm in jac_mod.BATCH_COUPLED:
        null = null_directions(norm, h, w)
    else:  # per sample: sample i's directions in row i of the batch
        groups = 2 if norm == "group" else 1
        cols = []
        for i in range(n):
            v = null_directions(norm, h[i], w, groups)
            for c in v.T:
                e = np.zeros((n, d))
                e[i] = c
                cols.append(e.ravel())
        null = np.stack(cols, axis=1) if cols else np.zeros((n * d, 0))
    k = np.linalg.matrix_rank(null) if null.size else 0
    expected = {"none": 0, "weight_norm": 0, "spectral_norm": 0, "layer": 2 * n, "rms": n,
                "group": 4 * n, "batch": 2 * d, "batch_uncentered": d,
                "weight_standardization": n, "centered_weight_norm": n}[norm]
    assert k == expected
    top = sla.svdvals(jac)[0]
    if k:
        assert np.abs(jac @ null).max() <= 1e-12 * top * np.abs(null).max()
    assert np.linalg.matrix_rank(jac, tol=1e-9 * top) == n * d - k


def test_deep_linear_stack_jacobian_is_the_product_of_its_weights():
    d, depth = 6, 7
    model = nn.deep_stack(depth, d, activation="identity", init="gaussian", sigma_w=1.0,
                          sigma_b=0.5, rng=6)
    rng = np.random.default_rng(7)
    depths = (1, 3, 7)
    jacs = sample_jacobians(model, rng.standard_normal(d), depths)
    batch = batch_jacobians(model, rng.standard_normal((3, d)), depths)
    prod = np.eye(d)
    for ell in range(1, depth + 1):
        prod = model[ell - 1][0].weight @ prod
        if ell in depths:
            np.testing.assert_allclose(jacs[ell], prod, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(batch[ell], np.kron(np.eye(3), prod), rtol=1e-12, atol=1e-13)


def test_batch_jacobians_of_a_batch_norm_stack_equal_the_vjp_rows():
    model = nn.deep_stack(4, 5, activation="relu", norm="batch", rng=8)
    x = np.random.default_rng(9).standard_normal((6, 5))
    got = batch_jacobians(model, x, (2, 4))
    np.testing.assert_allclose(got[4], dense_jacobian(model, x, mode="vjp"), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(got[2], dense_jacobian(model[:2], x, mode="vjp"), rtol=1e-11, atol=1e-12)


def test_operator_svds_and_hutchinson_moments_match_the_dense_spectrum_of_a_bn_stack():
    kw = dict(activation="tanh", init="gaussian", norm="batch", width=6, batch=4, depths=(1, 3),
              q_star=0.25, eps=0.0, rep=0, backend="numpy", dtype="float64", seed=11, probes=200)
    dense = _point(**kw, dense_max=10_000)
    op = _point(**kw, dense_max=1)
    assert (dense["method"], op["method"]) == ("dense", "operator")
    # the same network: rebuild it to get the dense Jacobian and its null space independently
    rng = analysis._backend.point_rng(11, "jacobian", "tanh", "gaussian", "batch", 6, 0)
    model = jac_mod._build("tanh", "gaussian", "batch", 6, 3, 0.25, 0.0, rng, analysis._backend.Backend())
    x = jac_mod._PHI["tanh"](np.sqrt(0.25) * rng.standard_normal((4, 6)))
    w, b = model[0][0].weight, model[0][0].params["bias"]
    p = np.eye(24) - (q := np.linalg.qr(null_directions("batch", x @ w.T + b, w))[0]) @ q.T
    for ell in (1, 3):
        d_rec, o_rec = dense["depths"][ell][0], op["depths"][ell][0]
        assert o_rec["s_max"] == pytest.approx(d_rec["s_max"], rel=1e-6)
        jac = dense_jacobian(model[:ell], x, mode="vjp")
        b_mat = p @ jac.T @ jac @ p
        dim = 24 - 12
        assert d_rec["lam"].mean() == pytest.approx(np.trace(b_mat) / dim, rel=1e-10)
        # Rademacher quadratic forms: Var vᵀBv = 2(‖B‖_F² − Σ B_ii²)
        se = np.sqrt(2 * (np.sum(b_mat ** 2) - np.sum(np.diag(b_mat) ** 2)) / 200) / dim
        assert abs(o_rec["m1"] - d_rec["lam"].mean()) < 5 * se
        assert o_rec["null_residual"] < 1e-12


# ------------------------------------------------------------------------------ the study
def test_deep_linear_orthogonal_stack_has_every_singular_value_one():
    r = analysis.jacobian(width=12, batch=2, depths=(1, 10, 40), activations=("linear",),
                          inits=("orthogonal",), norms=("none",), seeds=1, progress=False)
    m = r.measured["linear/orthogonal/none"]
    np.testing.assert_allclose(m["s_max"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(m["kappa"], 1.0, rtol=1e-12)
    assert m["var"] == [0.0, 0.0, 0.0] and m["ks"] == [0.0, 0.0, 0.0]
    assert "concentrated for linear orthogonal" in r.verdict


def test_measured_spectra_follow_free_probability_and_isometry_needs_orthogonal_weights():
    r = analysis.jacobian(width=64, batch=4, depths=(2, 8), activations=("relu", "hardtanh", "tanh"),
                          norms=("none",), q_star=0.5, seeds=1, progress=False)
    for key in ("relu/gaussian/none", "relu/orthogonal/none", "hardtanh/gaussian/none",
                "hardtanh/orthogonal/none"):
        # 256 eigenvalues per depth; DKW's 99.9% band for as many independent draws is 0.12
        assert max(r.measured[key]["ks"]) < 0.12, key
    # the free dead-unit atom: half of a ReLU network's singular values are exactly zero
    assert r.measured["relu/gaussian/none"]["rank_fraction"][0] == pytest.approx(0.5, abs=0.1)
    # Gaussian weights spread the spectrum at least like L, orthogonal ones far less for tanh
    assert r.measured["tanh/gaussian/none"]["var_final"] > 4
    assert r.measured["tanh/orthogonal/none"]["var_final"] < 0.5 * r.measured["tanh/gaussian/none"]["var_final"]
    assert r.theory["tanh/orthogonal/none"]["var_final"] == pytest.approx(
        jjt_moments("tanh", "orthogonal", 8, 0.5)[1] - 1)


def test_quick_study_verdict_follows_its_numbers():
    r = analysis.jacobian(quick=True, progress=False)
    plain = [k for k in r.measured if k.endswith("/none")]
    concentrated = {k for k in plain if r.measured[k]["var_final"] < 1}
    assert concentrated == {"linear/orthogonal/none", "tanh/orthogonal/none"}
    assert "concentrated for linear orthogonal, tanh orthogonal" in r.verdict
    bn = [r.measured[k]["m1_rate"] for k in r.measured if k.endswith("/batch")]
    assert min(bn) > 1.02 and "batch: m₁ explodes" in r.verdict
    assert all(r.measured[k]["null_residual"] < 1e-12 for k in r.measured if "/" in k)


@pytest.mark.parametrize("backend", ["torch", "array_api_strict", "dask"])
def test_backends_give_the_numpy_numbers(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    # dask builds a graph per op: its case is the smallest that still has every path
    acts = ("tanh",) if backend == "dask" else ("relu", "tanh")
    kw = dict(width=6, batch=3, depths=(1, 3), activations=acts, inits=("gaussian",),
              norms=("none", "batch", "layer"), seeds=1, progress=False)
    ref = analysis.jacobian(**kw).measured
    got = analysis.jacobian(**kw, backend=backend).measured
    for key in (k for k in ref if "/" in k):
        for q in ("m1", "var", "s_max", "kappa"):
            np.testing.assert_allclose(got[key][q], ref[key][q], rtol=1e-9, err_msg=f"{key} {q}")


def test_same_seed_same_json_and_a_process_pool_is_bit_identical():
    a = analysis.jacobian(quick=True, progress=False).as_dict()["measured"]
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        b = analysis.jacobian(quick=True, progress=False, executor=pool).as_dict()["measured"]
    c = analysis.jacobian(quick=True, progress=False, seed=1).as_dict()["measured"]
    assert a == b and a != c


def test_cli_writes_json_and_png(tmp_path):
    j, p = tmp_path / "j.json", tmp_path / "j.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "jacobian", "--quick", "--no-progress",
                          "--norms", "none,layer", "--json", str(j), "--plot", str(p)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(j.read_text())
    assert {"study", "params", "measured", "theory", "verdict"} <= set(d)
    assert d["study"] == "jacobian" and d["params"]["norms"] == ["none", "layer"]
    assert "dynamical isometry" in out.stdout and p.read_bytes()[:4] == b"\x89PNG"
    r = analysis.StudyResult.from_json(j)
    assert r.plot(tmp_path / "again.png") is not None


def test_bad_options_are_rejected_with_the_option_named():
    with pytest.raises(ValueError, match="activations"):
        analysis.jacobian(activations=("gelu",))
    with pytest.raises(ValueError, match="width >= 2"):
        analysis.jacobian(width=1)
    with pytest.raises(ValueError, match="q_star"):
        analysis.jacobian(q_star=0.0)
    with pytest.raises(ValueError, match="hist_range"):
        analysis.jacobian(hist_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="density is exact"):
        jjt_spectrum("tanh", "gaussian", 2)
    with pytest.raises(ValueError, match="per sample"):
        null_directions("layer", np.ones((2, 3)), np.eye(3))


@pytest.mark.parametrize("module", [free, jac_mod])
def test_docstring_examples_run(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
