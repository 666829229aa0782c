"""The gan study: its measures (energy distance, mode coverage) against brute force, SciPy and
closed forms; its losses and the generator's gradient through the discriminator against finite
differences; spectral normalization's σ_max ≈ 1; determinism, executors, backends, JSON/plot/CLI."""

from __future__ import annotations

import concurrent.futures
import doctest
import importlib
import itertools
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import linalg, optimize, stats

import analysis
import arraynorm as an
from analysis._backend import Backend
from analysis.gan import (discriminator, discriminator_loss, energy_distance, energy_statistic,
                          generator_loss, mode_coverage, ring_centres, sample_ring, within_3sigma)

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(steps=12, seeds=2, width=8, batch=16, eval_samples=60, checkpoints=3, progress=False)


@pytest.fixture(scope="module")
def quick():
    return analysis.gan(quick=True, progress=False)


# ------------------------------------------------------------------------------ the measures
def _standard_error(values) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


@pytest.mark.parametrize("unbiased", [True, False])
def test_energy_statistic_equals_a_brute_force_double_loop(unbiased):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.4
    xy = np.mean([math.dist(a, b) for a in x for b in y])

    def within(s):
        pairs = [math.dist(a, b) for a, b in itertools.product(s, s)]
        return sum(pairs) / (len(s) * (len(s) - 1) if unbiased else len(s) ** 2)

    expect = 2 * xy - within(x) - within(y)
    assert energy_statistic(x, y, unbiased=unbiased) == pytest.approx(expect, rel=1e-13)


def test_energy_distance_is_scipys_in_one_dimension():
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal(40), rng.exponential(size=25)
    assert energy_distance(u, v) == pytest.approx(stats.energy_distance(u, v), rel=1e-12)
    assert energy_distance(u[:, None], v[:, None]) == pytest.approx(stats.energy_distance(u, v), rel=1e-12)


def test_energy_distance_of_identical_samples_is_zero_and_the_unbiased_estimate_centres_on_zero():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 2))
    assert energy_distance(x, x) == 0.0
    # two samples of one distribution: the U-statistic's expectation is exactly 0
    est = [energy_statistic(rng.standard_normal((300, 2)), rng.standard_normal((300, 2)))
           for _ in range(16)]
    assert abs(np.mean(est)) < 4 * _standard_error(est)
    # the V-statistic is biased upward by (1/n + 1/m) E‖X − X'‖ = (2/300)·√π for N(0, I₂)
    v = [energy_statistic(rng.standard_normal((300, 2)), rng.standard_normal((300, 2)),
                          unbiased=False) for _ in range(16)]
    assert np.mean(v) == pytest.approx(2 / 300 * math.sqrt(math.pi), abs=4 * _standard_error(v))
    assert 2 / 300 * math.sqrt(math.pi) > 8 * _standard_error(v)  # the bias is resolved


def test_energy_statistic_of_shifted_gaussians_is_the_rice_closed_form():
    # X ~ N(0, I₂), Y ~ N(δ, I₂): X − Y ~ N(−δ, 2I₂), whose norm is Rice(‖δ‖, √2)
    # and X − X' ~ N(0, 2I₂) with E‖·‖ = √π: E = 2·Rice mean − 2√π
    delta = np.array([1.0, 0.5])
    theory = (2 * stats.rice(b=np.linalg.norm(delta) / math.sqrt(2), scale=math.sqrt(2)).mean()
              - 2 * math.sqrt(math.pi))
    rng = np.random.default_rng(3)
    est = [energy_statistic(rng.standard_normal((400, 2)), rng.standard_normal((400, 2)) + delta)
           for _ in range(16)]
    assert np.mean(est) == pytest.approx(theory, abs=4 * _standard_error(est))
    assert theory > 10 * _standard_error(est)  # the test can tell the shift from nothing


def test_energy_statistic_rejects_bad_samples():
    with pytest.raises(ValueError, match="same dimension"):
        energy_statistic(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="n >= 2"):
        energy_statistic(np.zeros((1, 2)), np.zeros((3, 2)))


def test_within_3sigma_is_the_chi_square_closed_form():
    assert within_3sigma() == pytest.approx(1 - math.exp(-4.5), rel=1e-14)


def test_mode_coverage_of_the_true_mixture_is_all_eight_modes():
    rng = np.random.default_rng(4)
    n, std = 8000, 0.05
    x = sample_ring(n, rng, modes=8, radius=2.0, std=std)
    cov = mode_coverage(x, ring_centres(8, 2.0), std)
    assert cov.modes == 8
    p = within_3sigma()
    assert cov.high_quality == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    share = p / 8  # each mode's share, binomial error
    np.testing.assert_allclose(cov.fractions, share, atol=4 * math.sqrt(share * (1 - share) / n))


def test_mode_coverage_counts_only_modes_with_their_share_of_samples():
    c = ring_centres(8, 2.0)
    rng = np.random.default_rng(5)
    three = np.repeat(c[:3], 100, axis=0) + 0.01 * rng.standard_normal((300, 2))
    assert mode_coverage(three, c, 0.05).modes == 3
    # a mode with 1 sample of 301 holds less than a quarter of its fair share (1/8)
    assert mode_coverage(np.vstack([three, c[5:6]]), c, 0.05).modes == 3
    assert mode_coverage(np.vstack([three, c[5:6]]), c, 0.05, min_share=0.02).modes == 4
    far = mode_coverage(np.full((10, 2), 10.0), c, 0.05)
    assert far.modes == 0 and far.high_quality == 0.0


# ------------------------------------------------------------------------------ the losses
@pytest.mark.parametrize("kind", ["logistic", "hinge"])
def test_gan_loss_gradients_match_finite_differences(kind):
    rng = np.random.default_rng(6)
    # away from the hinge's kinks at ±1
    dr = rng.uniform(-3, 3, (5, 1))
    df = rng.uniform(-3, 3, (4, 1))
    dr[np.abs(np.abs(dr) - 1) < 0.1] += 0.3
    df[np.abs(np.abs(df) - 1) < 0.1] += 0.3
    _, gr, gf = discriminator_loss(np, dr, df, kind)
    num_r = optimize.approx_fprime(
        dr.ravel(), lambda v: float(discriminator_loss(np, v[:, None], df, kind)[0]), 1e-7)
    num_f = optimize.approx_fprime(
        df.ravel(), lambda v: float(discriminator_loss(np, dr, v[:, None], kind)[0]), 1e-7)
    np.testing.assert_allclose(gr.ravel(), num_r, atol=1e-7)
    np.testing.assert_allclose(gf.ravel(), num_f, atol=1e-7)
    _, gg = generator_loss(np, df, kind)
    num_g = optimize.approx_fprime(df.ravel(), lambda v: float(generator_loss(np, v[:, None], kind)[0]), 1e-7)
    np.testing.assert_allclose(gg.ravel(), num_g, atol=1e-7)


def test_logistic_losses_are_finite_for_huge_logits():
    big = np.array([[1e4], [-1e4]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        ld, gr, gf = discriminator_loss(np, big, big)
        lg, gg = generator_loss(np, big)
    assert float(ld) == pytest.approx(1e4 / 2 + 1e4 / 2) and float(lg) == pytest.approx(1e4 / 2)
    assert np.all(np.isfinite(gr)) and np.all(np.isfinite(gg))


@pytest.mark.parametrize("norm", ["none", "spectral_norm", "weight_norm"])
def test_generator_gradient_through_the_discriminator_matches_finite_differences(norm):
    b = Backend("numpy", "float64")
    G = an.nn.deep_stack(1, 5, in_features=2, out_features=2, activation="tanh", rng=0)
    D = discriminator(norm, depth=1, width=6, seed=0, rep=0, b=b)
    D.eval()  # SN keeps its u fixed in eval mode, so the loss is a fixed function of G
    z = np.random.default_rng(7).standard_normal((9, 2))
    w0 = G[0][0].params["weight"].copy()

    def loss(flat):
        G[0][0].params["weight"] = flat.reshape(w0.shape)
        return float(generator_loss(np, D(G(z)))[0])

    numeric = optimize.approx_fprime(w0.ravel(), loss, 1e-7)
    G[0][0].params["weight"] = w0
    _, g = generator_loss(np, D(G(z)))
    G.backward(D.backward(g))  # D.backward returns ∂L_G/∂x at the generated points
    np.testing.assert_allclose(G[0][0].grads["weight"].ravel(), numeric, rtol=1e-5, atol=1e-9)


def test_discriminators_of_a_seed_start_from_the_same_weights():
    b = Backend("numpy", "float64")
    plain = discriminator("none", depth=2, width=8, seed=3, rep=1, b=b)
    sn = discriminator("spectral_norm", depth=2, width=8, seed=3, rep=1, b=b)
    wn = discriminator("weight_norm", depth=2, width=8, seed=3, rep=1, b=b)
    for i in (0, 2, 4):
        w = plain[i].params["weight"]
        np.testing.assert_array_equal(sn[i].params["weight_orig"], w)
        np.testing.assert_allclose(wn[i].effective_weight(), w, rtol=1e-14)


# ------------------------------------------------------------------------------ spectral norm
def test_spectral_norm_holds_every_discriminator_layer_at_sigma_max_one(quick):
    # SpectralNormLinear divides W by σ̃ = ‖Wᵀu‖ ≤ σ_max(W) (u a unit vector), so the weight it
    # multiplies by has σ_max ≥ 1, and = 1 once the power iteration has converged
    # (one iteration per step tracks W as it moves, with a lag where W moves fast)
    sig = np.array(quick.measured["spectral_norm"]["sigma_max_per_seed"], dtype=float)
    assert np.all(sig >= 1 - 1e-12)
    assert np.all(sig <= 1.25) and np.median(sig) < 1.01
    np.testing.assert_allclose(sig[:, 0], 1.0, atol=1e-3)  # 15 warm-up iterations at creation
    plain = np.array(quick.measured["none"]["sigma_max_per_seed"], dtype=float)
    assert np.max(np.abs(plain - 1)) > 0.3  # without SN nothing holds them there
    assert quick.theory["spectral_norm"]["sigma_max_largest"] == 1.0


def test_spectral_norm_layer_reaches_sigma_max_one_exactly_when_its_power_iteration_converges():
    b = Backend("numpy", "float64")
    d = discriminator("spectral_norm", depth=1, width=8, seed=1, rep=0, b=b)
    x = np.ones((3, 2))
    for _ in range(200):  # each training forward runs one power iteration
        d(x)
    for layer in (d[0], d[2]):
        w = layer.params["weight_orig"]
        assert linalg.svdvals(layer.effective_weight())[0] == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(layer.effective_weight() * linalg.svdvals(w)[0], w, rtol=1e-9)


# ------------------------------------------------------------------------------ the study
def test_quick_study_scores_the_true_mixture_as_theory_says(quick):
    m, t = quick.measured["true_mixture"], quick.theory["true_mixture"]
    n = quick.params["eval_samples"]
    assert m["modes"] == t["modes"] == 8
    p = t["high_quality"]
    assert m["high_quality"] == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    # the unbiased energy statistic of two samples of one distribution: 0 ± O(E‖X−X'‖/n)
    assert abs(m["energy"]) < 10 * 2.6 / n
    for norm in ("none", "spectral_norm", "weight_norm"):
        d = quick.measured[norm]
        assert len(d["energy"]) == len(quick.measured["steps"]) == quick.params["checkpoints"] + 1
        assert d["final_modes_per_seed"] == [s[-1] for s in d["modes_per_seed"]]
        assert d["final_energy"] == pytest.approx(np.median(d["final_energy_per_seed"]))
        assert f"{norm}: {d['final_modes']:.1f}/8 modes" in quick.verdict
        # the generator of a seed is the same before training, whatever the discriminator
        first = [s[0] for s in quick.measured["none"]["energy_per_seed"]]
        assert [s[0] for s in d["energy_per_seed"]] == first


def test_serial_and_process_pool_give_identical_results_and_seeds_matter():
    ref = analysis.gan(**TINY)
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pooled = analysis.gan(**TINY, executor=pool)
    assert pooled.as_dict()["measured"] == ref.as_dict()["measured"]
    assert analysis.gan(**TINY).as_dict()["measured"] == ref.as_dict()["measured"]
    assert analysis.gan(**TINY, seed=1).as_dict()["measured"] != ref.as_dict()["measured"]


@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_backends_give_the_numpy_numbers(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    kw = dict(TINY, steps=6, seeds=1, checkpoints=2)
    ref = analysis.gan(**kw).measured
    got = analysis.gan(**kw, backend=backend).measured
    for norm in ("none", "spectral_norm", "weight_norm"):
        for key in ("energy_per_seed", "sigma_max_per_seed", "loss_d_per_seed"):
            a = np.array(ref[norm][key], dtype=float)
            np.testing.assert_allclose(np.array(got[norm][key], dtype=float), a, rtol=1e-9, atol=1e-12)
        assert got[norm]["modes_per_seed"] == ref[norm]["modes_per_seed"]


def test_result_json_skeleton_and_plot(quick, tmp_path):
    d = json.loads(quick.to_json())
    assert {"study", "params", "measured", "theory", "verdict", "table"} <= set(d)
    assert d["study"] == "gan" and d["params"]["norms"] == ["none", "spectral_norm", "weight_norm"]
    back = analysis.StudyResult.from_json(quick.to_json(tmp_path / "g.json"))
    back.plot(tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["discriminator"] for r in quick.table] == ["none", "spectral_norm", "weight_norm"]


def test_cli_writes_json_and_png(tmp_path):
    j, p = tmp_path / "r.json", tmp_path / "r.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "gan", "--quick", "--no-progress",
                          "--norms", "none,spectral_norm", "--steps", "8", "--loss", "hinge",
                          "--json", str(j), "--plot", str(p)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(j.read_text())
    assert d["params"]["norms"] == ["none", "spectral_norm"] and d["params"]["loss"] == "hinge"
    assert "energy" in out.stdout and p.read_bytes()[:4] == b"\x89PNG"


def test_docstring_examples_run():
    result = doctest.testmod(importlib.import_module("analysis.gan"))
    assert result.attempted > 0 and result.failed == 0


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="norms"):
        analysis.gan(norms=("batch",))
    with pytest.raises(ValueError, match="loss"):
        analysis.gan(loss="wasserstein")
    with pytest.raises(ValueError, match="overlap"):
        analysis.gan(std=0.5)
    with pytest.raises(ValueError, match="beta1"):
        analysis.gan(beta1=1.0)
    with pytest.raises(ValueError, match="steps"):
        analysis.gan(steps=0)
