"""The covariate-shift study: Santurkar et al.'s gradient definition of internal covariate
shift against a by-hand computation on a two-layer linear network, its first-order theory
against the measured change as η → 0, the drift measure against the 2-Wasserstein distance
of Gaussians computed from their quantile functions, the noisy-BN layer against finite
differences, and the study's JSON/CLI/plot/determinism/backends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, optimize, stats

import analysis
import arraynorm as an
from analysis._backend import Backend
from analysis._hessian import ModelLoss, hessian_operator
from analysis.covariate_shift import (NoisyAffine, _preactivation_stats, block_of,
                                      gradient_ics, layer_weight_slices, noise_drift,
                                      preactivation_drift)

from _helpers import torch_available

ROOT = Path(__file__).resolve().parents[1]

TINY = dict(variants=("none", "batch", "noisy_batch"), depth=2, width=4, samples=24, batch=8,
            steps=6, measurements=2, progress=False)


def _linear_net(seed=0):
    """x → W₁ → W₂ (no bias, identity activation) under MSE, as a deep_stack."""
    model = an.nn.deep_stack(1, 4, in_features=3, out_features=2, activation="identity",
                             bias=False, rng=seed)
    rng = np.random.default_rng(seed + 1)
    x, t = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    return model, x, t


def test_gradient_ics_matches_a_by_hand_two_layer_linear_network():
    model, x, t = _linear_net()
    w1, w2 = np.array(model[0][0].weight), np.array(model[1].weight)
    f = ModelLoss(model, an.nn.MSELoss(), x, t)
    theta = f.theta0.copy()
    lr = 0.05
    _, g = f.value_and_grad(theta)
    layers, blocks = layer_weight_slices(model), block_of(model)
    assert [blk for blk, _ in layers] == [0, 1]
    got = gradient_ics(f, theta, g, lr, layers, blocks)

    # by hand: Y = X W₁ᵀ W₂ᵀ, L = mean((Y − T)²), ∂L/∂Y = 2(Y − T)/(N·K)
    n, k = t.shape
    def grads(a1, a2):
        h = x @ a1.T
        dy = 2 * (h @ a2.T - t) / (n * k)
        return (dy @ a2).T @ x, dy.T @ h            # G₁ (4×3), G₂ (2×4)
    g1, g2 = grads(w1, w2)
    _, g2_after = grads(w1 - lr * g1, w2)            # only the preceding layer moved
    d = np.linalg.norm(g2_after - g2)
    assert got["ics"] == [pytest.approx(d, rel=1e-12)]
    assert got["relative"] == [pytest.approx(d / np.linalg.norm(g2), rel=1e-12)]
    cos = np.sum(g2 * g2_after) / (np.linalg.norm(g2) * np.linalg.norm(g2_after))
    assert got["cosine"] == [pytest.approx(cos, rel=1e-12)]
    np.testing.assert_allclose(g[layers[1][1]], g2.ravel(), rtol=1e-12)


def test_gradient_ics_tends_to_its_first_order_hessian_prediction():
    # G'_ℓ − G_ℓ = −η [H G_{<ℓ}]_ℓ + O(η²): the ratio measured/first order → 1 as η → 0
    model = an.nn.deep_stack(3, 5, in_features=2, out_features=2, norm="batch",
                             activation="tanh", rng=2)
    rng = np.random.default_rng(3)
    f = ModelLoss(model, an.nn.CrossEntropyLoss(), rng.standard_normal((16, 2)),
                  rng.integers(0, 2, 16))
    theta = f.theta0.copy()
    _, g = f.value_and_grad(theta)
    hess = hessian_operator(f, theta)
    layers, blocks = layer_weight_slices(model), block_of(model)
    dev = {}
    for lr in (1e-3, 1e-4):
        got = gradient_ics(f, theta, g, lr, layers, blocks, hess)
        dev[lr] = np.abs(np.array(got["ics"]) / np.array(got["first_order"]) - 1)
    # the relative deviation is the O(η) second-order term: ten times smaller for η/10
    assert np.all(dev[1e-3] < 2e-2)
    assert np.all(dev[1e-4] < 0.15 * dev[1e-3] + 1e-6)


def test_preactivation_drift_is_the_rms_wasserstein_distance_of_gaussian_fits():
    rng = np.random.default_rng(4)
    before = [(rng.standard_normal(3), rng.uniform(0.5, 2, 3))]
    after = [(rng.standard_normal(3), rng.uniform(0.5, 2, 3))]
    absolute, relative = preactivation_drift(before, after)

    def w2(m0, s0, m1, s1):   # W₂² = ∫₀¹ (F₀⁻¹(u) − F₁⁻¹(u))² du, from the quantile functions
        val, _ = integrate.quad(lambda u: (stats.norm.ppf(u, m0, s0) - stats.norm.ppf(u, m1, s1)) ** 2,
                                0, 1, limit=200)
        return val

    (m0, s0), (m1, s1) = before[0], after[0]
    expected = np.sqrt(np.mean([w2(*args) for args in zip(m0, s0, m1, s1)]))
    assert absolute[0] == pytest.approx(expected, rel=1e-6)
    assert relative[0] == pytest.approx(expected / np.sqrt(np.mean(m0 ** 2 + s0 ** 2)), rel=1e-6)


def test_batchnorm_preactivation_statistics_are_its_affine_parameters():
    # in train mode on the probe batch itself, BN's output has mean β and std γ·√(v/(v+eps))
    model = an.nn.deep_stack(2, 6, in_features=2, out_features=2, norm="batch", rng=5)
    bn = model[1][1]
    bn.weight = np.linspace(0.5, 2.0, 6)
    bn.bias = np.linspace(-1.0, 1.0, 6)
    x = np.random.default_rng(6).standard_normal((200, 2))
    stats_ = _preactivation_stats(model, x, Backend())
    assert len(stats_) == 2
    mean, std = stats_[1]
    np.testing.assert_allclose(mean, bn.bias, atol=1e-12)
    np.testing.assert_allclose(std, bn.weight, rtol=1e-3)


def test_noisy_affine_forward_backward_and_eval_expectation():
    layer = NoisyAffine(3, 0.5)
    x = np.random.default_rng(7).standard_normal((4, 3))
    np.testing.assert_array_equal(layer(x), x)        # no draw yet: identity
    layer.resample(np.random.default_rng(8))
    s, m = np.asarray(layer.scale), np.asarray(layer.shift)
    assert np.all((s >= 1) & (s <= 1.5)) and np.all(np.abs(m) <= 0.5)
    np.testing.assert_allclose(layer(x), x * s + m)
    dy = np.random.default_rng(9).standard_normal((4, 3))
    _ = layer(x)
    jac = optimize.approx_fprime(x.ravel(), lambda v: np.sum(dy * layer.forward(v.reshape(4, 3))), 1e-7)
    _ = layer(x)
    np.testing.assert_allclose(layer.backward(dy).ravel(), jac, rtol=1e-6)
    layer.eval()
    np.testing.assert_allclose(layer(x), 1.25 * x)    # E[s] = 1 + a/2, E[m] = 0


@pytest.fixture(scope="module")
def quick():
    return analysis.covariate_shift(quick=True, progress=False)


def test_quick_study_noisy_bn_drift_is_the_noise_theory_and_dwarfs_the_others(quick):
    m, t = quick.measured, quick.theory
    # the redrawn noise alone gives √(5a²/6)/√(1 + a + 2a²/3) (γ ≈ 1, β ≈ 0 early on); the
    # measured value is a ratio of means over width × layers × steps ≈ 100 unit draws
    assert m["noisy_batch"]["drift_relative_mean"] == pytest.approx(
        t["noisy_batch"]["drift_relative_mean"], rel=0.15)
    assert m["noisy_batch"]["drift_relative_mean"] > 5 * max(m["none"]["drift_relative_mean"],
                                                            m["batch"]["drift_relative_mean"])
    for v in quick.params["variants"]:
        assert len(m[v]["gradient_ics"]) == quick.params["depth"]   # hidden blocks 1.. + read-out
        assert all(-1 <= c <= 1 for c in m[v]["gradient_ics_cosine"])
    assert "distributional ICS" in quick.verdict and "gradient ICS" in quick.verdict


def test_noise_drift_theory_matches_monte_carlo():
    rng = np.random.default_rng(11)
    a, n = 0.7, 200_000
    s0, s1 = rng.uniform(1, 1 + a, (2, n))
    m0, m1 = rng.uniform(-a, a, (2, n))
    mc = np.sqrt(np.mean((m1 - m0) ** 2 + (s1 - s0) ** 2)) / np.sqrt(np.mean(m0 ** 2 + s0 ** 2))
    assert noise_drift(a) == pytest.approx(mc, rel=5e-3)


def test_small_lr_study_matches_the_first_order_theory():
    r = analysis.covariate_shift(**{**TINY, "lr": 1e-4})
    for v in TINY["variants"]:
        assert r.measured[v]["gradient_ics_mean"] == pytest.approx(
            r.theory[v]["gradient_ics_mean"], rel=2e-3), v


def test_result_json_skeleton_and_plot(quick, tmp_path):
    d = json.loads(quick.to_json())
    assert {"study", "params", "measured", "theory", "verdict"} <= set(d)
    assert d["study"] == "covariate-shift"
    png = tmp_path / "cs.png"
    analysis.StudyResult.from_json(quick.to_json()).plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_runs_quick_with_json_and_plot(tmp_path):
    j, p = tmp_path / "c.json", tmp_path / "c.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "covariate-shift", "--quick",
                          "--no-progress", "--steps", "10", "--json", str(j), "--plot", str(p)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "gradient ICS" in out.stdout
    assert json.loads(j.read_text())["study"] == "covariate-shift" and p.stat().st_size > 0


def test_same_seed_is_deterministic_serial_and_in_a_process_pool():
    a = analysis.covariate_shift(**TINY, seed=2)
    b = analysis.covariate_shift(**TINY, seed=2)
    assert a.as_dict()["measured"] == b.as_dict()["measured"]
    with ProcessPoolExecutor(2) as pool:
        c = analysis.covariate_shift(**TINY, seed=2, executor=pool)
    assert c.as_dict()["measured"] == a.as_dict()["measured"]


@pytest.mark.parametrize("backend", ["array_api_strict",
                                     pytest.param("torch", marks=pytest.mark.skipif(
                                         not torch_available(), reason="torch is not importable"))])
def test_other_backends_give_the_numpy_numbers(backend):
    ref = analysis.covariate_shift(**TINY, seed=1).measured
    got = analysis.covariate_shift(**TINY, seed=1, backend=backend).measured
    for v in TINY["variants"]:
        for key in ("gradient_ics", "drift_relative", "loss_curve"):
            np.testing.assert_allclose(got[v][key], ref[v][key], rtol=1e-7, err_msg=f"{v} {key}")


def test_options_are_validated():
    with pytest.raises(ValueError, match="variants must be among"):
        analysis.covariate_shift(variants=("group",), progress=False)
    with pytest.raises(ValueError, match="2 <= batch <= samples"):
        analysis.covariate_shift(batch=1, progress=False)
    with pytest.raises(ValueError, match="noise >= 0"):
        analysis.covariate_shift(noise=-1.0, progress=False)
