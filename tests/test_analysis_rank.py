"""The rank-collapse study: Lyapunov theory of Gaussian products, the measured collapse, BN's
width scaling, backends, CLI."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import integrate, stats

import analysis
from analysis.rank import lyapunov_ratio_rate, mean_log_sin2

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("d", [4, 16, 64])
def test_lyapunov_gap_equals_the_chi_square_log_moments(d):
    # 2(λ₂ − λ₁) = E log χ²_{d−1} − E log χ²_d, integrated against the χ² densities
    def elog(k):
        return integrate.quad(lambda t: np.log(t) * stats.chi2.pdf(t, k), 0, np.inf)[0]

    assert np.log(lyapunov_ratio_rate(d)) == pytest.approx(elog(d - 1) - elog(d), rel=1e-7)


def test_mean_log_sin2_of_orthogonal_and_nearly_collinear_rows():
    assert mean_log_sin2(np.eye(3)) == pytest.approx(0.0, abs=1e-15)
    a = np.array([[1.0, 0.0], [1.0, 1e-6]])
    assert mean_log_sin2(a) == pytest.approx(np.log(1e-12), rel=1e-6)  # no cancellation


def test_monte_carlo_of_gaussian_layers_matches_the_theory_rate():
    # an independent simulation with plain NumPy: two vectors through d×d N(0, 1/d) layers
    rng = np.random.default_rng(0)
    d, depth, trials = 8, 30, 400
    slopes = []
    for _ in range(trials):
        h = rng.standard_normal((2, d))
        start = mean_log_sin2(h)
        for _ in range(depth):
            h = h @ (rng.standard_normal((d, d)) / np.sqrt(d)).T
        slopes.append((mean_log_sin2(h) - start) / depth)
    se = np.std(slopes, ddof=1) / np.sqrt(trials)
    assert abs(np.mean(slopes) - np.log(lyapunov_ratio_rate(d))) < 4 * se


def test_study_measures_the_theoretical_collapse_of_linear_networks():
    r = analysis.rank(depth=24, widths=(8, 16), batch=4, norms=("none",), seeds=16, progress=False)
    for w in ("width 8", "width 16"):
        lo, hi = r.measured["collapse_exponent_ci"][w]
        assert lo <= r.theory["collapse_exponent"][w] <= hi
    assert r.measured["none"]["stable_rank"][-1] < r.measured["none"]["stable_rank"][0]


def test_scale_only_bn_avoids_collapse_with_a_gap_falling_like_inverse_sqrt_width():
    r = analysis.rank(depth=30, widths=(16, 32, 64, 128), batch=8,
                      norms=("none", "batch_uncentered"), seeds=4, progress=False)
    bn, plain = r.measured["batch_uncentered"], r.measured["none"]
    assert bn["stable_rank_final"] > 1.5 * plain["stable_rank_final"]
    assert bn["gap_final"] < plain["gap_final"]
    assert -0.75 < bn["width_exponent"] < -0.3  # theory: −½ (Daneshmand et al. 2021)


@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_backends_give_the_numpy_numbers(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    kw = dict(depth=6, widths=(8,), batch=4, norms=("none", "batch", "layer"), seeds=1,
              progress=False)
    ref = analysis.rank(**kw).measured
    got = analysis.rank(**kw, backend=backend).measured
    for n in ("none", "batch", "layer"):
        np.testing.assert_allclose(got[n]["gap"], ref[n]["gap"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got[n]["stable_rank"], ref[n]["stable_rank"], rtol=1e-10)


def test_same_seed_same_result_and_another_seed_differs():
    a = analysis.rank(quick=True, progress=False).as_dict()["measured"]
    b = analysis.rank(quick=True, progress=False).as_dict()["measured"]
    c = analysis.rank(quick=True, progress=False, seed=1).as_dict()["measured"]
    assert a == b and a != c


def test_cli_writes_json_and_png(tmp_path):
    j, p = tmp_path / "r.json", tmp_path / "r.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "rank", "--quick", "--no-progress",
                          "--norms", "none,batch", "--json", str(j), "--plot", str(p)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(j.read_text())
    assert d["study"] == "rank" and d["params"]["norms"] == ["none", "batch"]
    assert "collapses" in out.stdout and p.read_bytes()[:4] == b"\x89PNG"


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="depth >= 2"):
        analysis.rank(depth=1)
