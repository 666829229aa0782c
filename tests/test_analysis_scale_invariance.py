"""The scale-invariance study: the identities to float64 rounding, the eps > 0 defect against
its first-order and Euler-identity predictions, Li–Arora's norm identity, spherical motion
dynamics (theory vs an independent Monte Carlo, and vs the study's own training), weight decay
≡ exponential learning rate, backends, executors, JSON/plot/CLI."""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import analysis

SI = sys.modules["analysis.scale_invariance"]
ROOT = pathlib.Path(__file__).resolve().parents[1]
# small sizes shared by the tests that run the whole study (about a second)
SMALL = dict(norms=("batch", "layer", "weight_norm"), depth=3, width=8, batch=16, samples=64,
             eps_grid=(1e-8, 1e-6, 1e-4), gd_steps=20, smd_steps=20, explr_steps=30,
             momenta=(0.0, 0.9), progress=False)


@pytest.fixture(scope="module")
def small():
    return analysis.scale_invariance(**SMALL)


# ------------------------------------------------------------------------------- theory
def _simulate_smd(eta, lam, mu, *, d=64, steps=20000, burn=2000, seed=0):
    """SGD with momentum μ and L2 weight decay λ (PyTorch's form) on a scale-invariant loss
    whose gradient is isotropic noise on the tangent space: g = P⊥ξ/‖w‖, ξ ~ N(0, I_d), so
    E‖g‖²‖w‖² = d − 1 and every assumption of Wan et al. holds exactly."""
    rng = np.random.default_rng(seed)
    w, v = rng.standard_normal(d), np.zeros(d)
    ang, n = np.empty(steps), np.empty(steps)
    for t in range(steps):
        norm = np.sqrt(w @ w)
        unit = w / norm
        xi = rng.standard_normal(d)
        g = (xi - (xi @ unit) * unit) / norm
        v = mu * v + g + lam * w
        w_new = w - eta * v
        ang[t] = 2 * np.arcsin(np.linalg.norm(w_new / np.linalg.norm(w_new) - unit) / 2)
        n[t] = w @ w
        w = w_new
    return ang[burn:], n[burn:], d - 1


def _batch_means_se(x, k=30):
    means = np.array([b.mean() for b in np.array_split(x, k)])
    return means.std(ddof=1) / np.sqrt(k)


@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_smd_angular_update_and_norm_match_a_monte_carlo_of_the_dynamics(mu):
    eta, lam = 0.05, 0.05
    ang, n, unit_sq = _simulate_smd(eta, lam, mu)
    rms = np.sqrt(np.mean(ang ** 2))
    norm = np.sqrt(np.mean(n))
    # batch-means standard errors are ≤ 1.2e-3 relative here; 5e-3 is ~4 SE plus the
    # second-order bias of averaging ratios (O(ηλ) and O(1/d), ~1e-3)
    assert 0.5 * _batch_means_se(ang ** 2) / np.mean(ang ** 2) < 1.5e-3
    assert rms == pytest.approx(SI.smd_angular_update(eta, lam, mu), rel=5e-3)
    assert norm == pytest.approx(SI.smd_equilibrium_norm(eta, lam, mu, unit_sq), rel=1e-2)


def test_smd_angle_tends_to_the_papers_square_root_for_small_steps():
    for mu in (0.0, 0.5, 0.9):
        for el in (1e-6, 1e-4):
            approx = np.sqrt(2 * el / (1 + mu))  # Wan et al.: √(2ηλ/(1+μ))
            assert SI.smd_angular_update(el, 1.0, mu) == pytest.approx(approx, rel=el)


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_exp_lr_alpha_is_the_larger_root_of_li_aroras_quadratic(mu):
    eta, lam = 0.1, 0.01
    roots = np.roots([1.0, -(1 + mu - eta * lam), mu])
    assert SI.exp_lr_alpha(eta, lam, mu) == pytest.approx(max(roots.real), rel=1e-14)
    if mu == 0:
        assert SI.exp_lr_alpha(eta, lam, mu) == pytest.approx(1 - eta * lam, rel=1e-15)


def test_stationarity_defect_is_an_exact_identity_of_any_momentum_run():
    # an arbitrary (not stationary, not scale-invariant) run of the update rule: the
    # identity mean‖u‖²/mean‖w‖² = 2ηλ/(1+μ)(1+d) must hold to rounding anyway
    rng = np.random.default_rng(3)
    eta, lam, mu, steps, start = 0.07, 0.3, 0.8, 200, 50
    w, v = rng.standard_normal(5), np.zeros(5)
    n, a, b, rho = [w @ w], [], [], []
    for _ in range(steps):
        g = rng.standard_normal(5)
        v = mu * v + g + lam * w
        u = -eta * v
        a.append(w @ u), b.append(u @ u), rho.append(w @ g)
        w = w + u
        n.append(w @ w)
    n, a, b, rho = map(np.asarray, (n, a, b, rho))
    d = SI.stationarity_defect(n, a, b, rho, eta, lam, mu, start)
    lhs = b[start:].mean() / n[start:-1].mean()
    assert lhs == pytest.approx(2 * eta * lam / (1 + mu) * (1 + d), rel=1e-12)


# ------------------------------------------------------------------------------- the study
def test_identities_hold_to_float64_rounding_with_eps_zero(small):
    for norm, d in small.measured["identities"].items():
        for where, m in d.items():
            e = m["eps0"]
            assert max(e["loss_residual"], e["grad_residual"], e["radial_cosine"],
                       *e["whole_stack"].values()) < 1e-14, (norm, where)


def test_default_eps_breaks_invariance_exactly_as_eulers_identity_says(small):
    for norm in ("batch", "layer"):
        for where in ("layer", "stack"):
            e = small.measured["identities"][norm][where]["default_eps"]
            assert e["grad_residual"] > 1e-8  # not rounding: eps = 1e-5 is visible
            # ⟨W, ∇L⟩ = −2 eps ∂L/∂eps, ∂L/∂eps from SciPy finite differences of the forward
            assert e["radial_gradient"] == pytest.approx(e["radial_gradient_theory"], rel=1e-6)
            # |L(cW) − L(W)| = (1 − c⁻²)/2 |⟨W, ∇L⟩| + O(eps²)
            assert e["loss_residual"] == pytest.approx(e["loss_residual_first_order"], rel=1e-2)
    wn = small.measured["identities"]["weight_norm"]["stack"]["default_eps"]
    assert wn["grad_residual"] < 1e-14  # WN has no eps


def test_radial_gradient_is_first_order_in_eps_over_sigma_squared(small):
    for norm, sw in small.measured["eps_sweep"].items():
        assert sw["slope"] == pytest.approx(1.0, abs=0.01), norm
        # at the smallest eps the loss residual is its first-order prediction
        assert sw["loss_residual_to_first_order"] == pytest.approx(1.0, abs=1e-4), norm
        np.testing.assert_allclose(np.asarray(sw["ratio"]) * sw["sigma2"], sw["eps"], rtol=1e-12)


def test_li_arora_norm_identity_is_exact_for_plain_sgd(small):
    for norm, d in small.measured["li_arora"].items():
        assert d["eps0"]["residual"] < 1e-14, norm
        assert all(g >= 1.0 for g in d["eps0"]["norm_growth"])  # norms only grow
        eff = np.asarray(d["eps0"]["effective_lr"])
        assert np.all(eff[-1] <= eff[0])  # so the effective lr only falls
        if "default_eps" in d:  # with eps the missing term is −2η⟨w, g⟩
            assert d["default_eps"]["residual"] == pytest.approx(
                small.theory["li_arora"][norm]["default_eps"]["residual"], rel=1e-6)


def test_weight_decay_and_exponential_lr_coincide_in_direction(small):
    for key, d in small.measured["exp_lr"].items():
        assert d["eps0"]["max_angle"] < 1e-10, key
        assert d["eps0"]["scale_error"] < 1e-10, key  # w̃_t = α^{−t} w_t
        assert d["eps0"]["other_params_difference"] < 1e-10, key
        assert d["default_eps"]["max_angle"] > 1e3 * d["eps0"]["max_angle"], key


@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_trained_bn_weights_reach_the_smd_angular_update(mu):
    """The study's own training reaches the spherical-motion equilibrium.

    Tolerance: the exact windowed identity makes mean‖u‖²/mean‖w‖² equal the theory times
    1 + d, d the measured stationarity defect; we first check the identity and that the run
    is at equilibrium (|d| < 0.02, so d moves the angle by < 1%), then allow 3% between the
    rms angle and Δ*: the rest — the radial part of each step and the weighting of the
    angle by the norm — is second order in the per-step norm fluctuation (< 1% here).
    """
    eta, lam = 0.1 * (1 - mu), 0.1
    r = SI._train_point(kind="smd", norm="batch", eps_mode="default_eps", momentum=mu, lr=eta,
                        weight_decay=lam, depth=2, width=16, batch=32, samples=256, d_in=8,
                        steps=1000, window=0.5, windows=10, backend="numpy", dtype="float64",
                        seed=0, affine=False)
    d = np.asarray(r["stationarity_defect"])
    np.testing.assert_allclose(r["chord_ratio"], 1 + d, rtol=1e-10)
    assert np.all(np.abs(d) < 0.02)
    np.testing.assert_allclose(r["angular_update"], SI.smd_angular_update(eta, lam, mu), rtol=0.03)


# ------------------------------------------------------------------------------- plumbing
@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_backends_give_the_numpy_numbers(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    kw = dict(SMALL, norms=("batch", "weight_norm"), depth=2, eps_grid=(1e-6, 1e-4), gd_steps=8,
              smd_steps=8, explr_steps=8)
    got = analysis.scale_invariance(**kw, backend=backend).as_dict()["measured"]
    ref = analysis.scale_invariance(**kw).as_dict()["measured"]

    def close(a, b, rel, abs=0.0):
        np.testing.assert_allclose(np.asarray(b, dtype=float), np.asarray(a, dtype=float),
                                   rtol=rel, atol=abs)

    # quantities that are not small differences agree to float64 rounding; residuals that
    # are themselves rounding (eps = 0) only have to be rounding on every backend
    for norm, d in ref["identities"].items():
        for where, m in d.items():
            g = got["identities"][norm][where]
            assert max(g["eps0"]["loss_residual"], g["eps0"]["grad_residual"]) < 1e-14
            close(m["default_eps"]["per_layer"]["radial_gradient"],
                  g["default_eps"]["per_layer"]["radial_gradient"], 1e-7, 1e-13)
            close(m["default_eps"]["grad_residual"], g["default_eps"]["grad_residual"], 1e-6, 1e-14)
    for norm, sw in ref["eps_sweep"].items():
        close(sw["radial_cosine"], got["eps_sweep"][norm]["radial_cosine"], 1e-6, 1e-15)
    for norm, d in ref["li_arora"].items():
        for mode, m in d.items():
            for k in ("norm_growth", "effective_lr", "loss"):
                close(m[k], got["li_arora"][norm][mode][k], 1e-9)
    for key, m in ref["smd"].items():
        for k in ("angular_update", "equilibrium_norm", "unit_grad_sq"):
            close(m[k], got["smd"][key][k], 1e-9)
    for key, m in ref["exp_lr"].items():
        assert got["exp_lr"][key]["eps0"]["max_angle"] < 1e-10
        close(m["default_eps"]["max_angle"], got["exp_lr"][key]["default_eps"]["max_angle"], 1e-5)


def test_serial_and_process_pool_give_identical_results_and_seeds_matter(small):
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pooled = analysis.scale_invariance(**SMALL, executor=pool)
    assert pooled.as_dict()["measured"] == small.as_dict()["measured"]
    other = analysis.scale_invariance(**SMALL, seed=1)
    assert other.as_dict()["measured"] != small.as_dict()["measured"]


def test_result_json_skeleton_plot_and_verdict(small, tmp_path):
    d = json.loads(small.to_json())
    assert {"study", "params", "measured", "theory", "verdict", "table"} <= set(d)
    assert d["study"] == "scale-invariance" and d["params"]["depth"] == 3
    back = analysis.StudyResult.from_json(small.to_json(tmp_path / "s.json"))
    back.plot(tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert "hold to rounding" in small.verdict and "exponential lr" in small.verdict
    keys = {row["quantity"] for row in small.compare()}
    assert "smd.momentum 0.9.angular_update_mean" in keys


def test_cli_writes_json_and_png(tmp_path):
    j, p = tmp_path / "r.json", tmp_path / "r.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "scale-invariance", "--quick",
                          "--no-progress", "--norms", "batch", "--smd-steps", "10",
                          "--gd-steps", "10", "--explr-steps", "10", "--momenta", "0.9",
                          "--json", str(j), "--plot", str(p)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(j.read_text())
    assert d["study"] == "scale-invariance" and d["params"]["norms"] == ["batch"]
    assert "Li–Arora" in out.stdout and p.read_bytes()[:4] == b"\x89PNG"


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="norms"):
        analysis.scale_invariance(norms=("none",))
    with pytest.raises(ValueError, match="train_norm"):
        analysis.scale_invariance(train_norm="weight_norm")
    with pytest.raises(ValueError, match="scale"):
        analysis.scale_invariance(scale=1.0)
    with pytest.raises(ValueError, match="momenta"):
        analysis.scale_invariance(momenta=(1.0,))
    with pytest.raises(ValueError, match="eps_grid"):
        analysis.scale_invariance(eps_grid=(0.0,))


def test_docstring_examples_run():
    import doctest

    for module in (SI, sys.modules["analysis.convergence"], sys.modules["analysis._tasks"]):
        assert doctest.testmod(module).failed == 0, module.__name__
