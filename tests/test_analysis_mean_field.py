"""The mean-field study: its theory against closed forms, Monte Carlo and SciPy quadrature, and
its measurements against the theory within the finite-width error.

Oracles: the ReLU maps (q* = σ_b²/(1 − σ_w²/2), χ₁ = σ_w²/2, the arc-cosine kernel of Cho &
Saul 2009), the identity's linear maps, hard-tanh's Gaussian probabilities
(``scipy.stats``), Monte Carlo with NumPy written here, ``scipy.integrate.quad``/``dblquad``,
``scipy.differentiate.derivative``, iterating the maps by hand, and tanh's critical point
σ_w² = 1 at σ_b² = 0 (Poole et al. 2016).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import differentiate, integrate, stats

import analysis
from analysis import _meanfield as mf
from analysis._result import StudyResult, _leaves

ROOT = pathlib.Path(__file__).resolve().parents[1]

_C, _A = math.sqrt(2 / math.pi), 0.044715


def gelu_tanh(x):
    """GELU, tanh form (Hendrycks & Gimpel), written here independently of the module."""
    return 0.5 * x * (1 + np.tanh(_C * (x + _A * x ** 3)))


def central_difference(f, x, h=1e-5):
    return (f(x + h) - f(x - h)) / (2 * h)


PHI = {"tanh": np.tanh, "gelu": gelu_tanh, "relu": lambda x: np.maximum(x, 0),
       "hardtanh": lambda x: np.clip(x, -1, 1), "identity": lambda x: x}


# ----------------------------------------------------------------------------- theory
@pytest.mark.parametrize("sw2,sb2", [(0.5, 0.1), (1.0, 0.5), (1.5, 0.05), (1.9, 1.0)])
def test_relu_fixed_point_chi1_and_chi_q_match_closed_forms(sw2, sb2):
    q = mf.q_star("relu", sw2, sb2, q1=3.0)
    np.testing.assert_allclose(q, sb2 / (1 - sw2 / 2), rtol=1e-12)
    np.testing.assert_allclose(mf.chi("relu", q, sw2), sw2 / 2, rtol=1e-13)
    # the length map is linear, V(q) = σ_w² q/2 + σ_b²: its slope is χ₁ too
    np.testing.assert_allclose(mf.chi_q("relu", q, sw2), sw2 / 2, rtol=1e-12)
    fp = mf.fixed_point("relu", sw2, sb2, q_in=1.0, c_in=0.3)
    assert fp["c_star"] == 1.0 and fp["chi_c"] == pytest.approx(sw2 / 2, rel=1e-9)


def test_relu_length_map_diverges_beyond_sigma_w2_two_with_a_bias():
    assert np.all(np.isinf(mf.q_star("relu", [2.0, 2.5, 3.0], 0.1, 1.0)))
    # σ_b = 0, σ_w² = 2: every q is a fixed point (He initialization preserves q)
    assert mf.q_star("relu", 2.0, 0.0, 0.7) == pytest.approx(0.7, rel=1e-12)


def arccos_kernel(q, c, order):
    """Cho & Saul (2009): E[Θ(u₁)Θ(u₂) (u₁u₂)^n] for n = 0, 1 at second moment q, correlation c."""
    th = np.arccos(np.clip(c, -1, 1))
    if order == 0:
        return (np.pi - th) / (2 * np.pi)
    return q / (2 * np.pi) * (np.sin(th) + (np.pi - th) * np.cos(th))


def test_relu_correlation_integrals_are_the_arc_cosine_kernels():
    c = np.array([-0.999, -0.5, 0.0, 0.3, 0.9, 0.99, 1 - 1e-4, 1 - 1e-7, 1.0])
    for q in (0.05, 1.0, 30.0):
        got = mf.pair_expect("relu", q, c)
        # (at c = −0.999 the kernel is 1e-5 of q/2 and the closed form itself cancels)
        np.testing.assert_allclose(got, arccos_kernel(q, c, 1), rtol=1e-12, atol=1e-15 * q)
        # near c = 1 the map's distance from 1 (what ξ_c is made of) is resolved too
        np.testing.assert_allclose(q / 2 - got, q / 2 - arccos_kernel(q, c, 1), rtol=2e-6, atol=1e-13 * q)
        np.testing.assert_allclose(mf.pair_expect("relu", q, c, derivative=True),
                                   arccos_kernel(q, c, 0), rtol=1e-12)


@pytest.mark.parametrize("sw2,sb2", [(0.5, 0.2), (0.9, 0.01)])
def test_identity_maps_are_the_exact_linear_ones(sw2, sb2):
    q = np.array([0.1, 1.0, 7.0])
    np.testing.assert_allclose(mf.length_map("identity", q, sw2, sb2), sw2 * q + sb2, rtol=1e-13)
    c = np.array([-0.4, 0.2, 0.8])
    np.testing.assert_allclose(mf.correlation_map("identity", c, 2.0, sw2, sb2),
                               (sw2 * 2.0 * c + sb2) / (sw2 * 2.0 + sb2), rtol=1e-13)
    fp = mf.fixed_point("identity", sw2, sb2, q_in=1.0, c_in=0.2)
    assert fp["q_star"] == pytest.approx(sb2 / (1 - sw2), rel=1e-12)
    assert fp["c_star"] == 1.0
    for k in ("chi1", "chi_q", "chi_c"):
        assert fp[k] == pytest.approx(sw2, rel=1e-12)
    assert fp["xi_c"] == pytest.approx(-1 / math.log(sw2), rel=1e-10)
    t = mf.trajectory("identity", sw2, sb2, 1.0, 0.2, 6)
    qs = [sw2 + sb2]
    for _ in range(5):
        qs.append(sw2 * qs[-1] + sb2)
    np.testing.assert_allclose(t["q"], qs, rtol=1e-13)
    np.testing.assert_allclose(t["grad_factor"], sw2, rtol=1e-13)


def test_hardtanh_integrals_match_gaussian_probabilities():
    for q in (0.04, 0.7, 5.0):
        a = 1 / math.sqrt(q)
        inside = 2 * stats.norm.cdf(a) - 1                         # P(|u| < 1)
        second = q * (inside - 2 * a * stats.norm.pdf(a)) + (1 - inside)
        np.testing.assert_allclose(mf.length_map("hardtanh", q, 1.0, 0.0), second, rtol=1e-12)
        np.testing.assert_allclose(mf.chi("hardtanh", q, 1.0), inside, rtol=1e-12)
        for c in (-0.6, 0.3, 0.95, 0.9999):
            mvn = stats.multivariate_normal(cov=q * np.array([[1, c], [c, 1]]))
            p = mvn.cdf([1, 1]) - mvn.cdf([-1, 1]) - mvn.cdf([1, -1]) + mvn.cdf([-1, -1])
            np.testing.assert_allclose(mf.pair_expect("hardtanh", q, c, derivative=True), p,
                                       rtol=1e-7)   # the MVN cdf is itself ~1e-8 accurate


@pytest.mark.parametrize("act", ["tanh", "gelu", "hardtanh"])
def test_gaussian_integrals_match_monte_carlo(act):
    rng = np.random.default_rng(7)
    n = 200_000
    phi = PHI[act]
    z1, z2 = rng.standard_normal((2, n))
    for q, c in ((0.3, 0.2), (2.5, -0.7), (1.0, 0.9)):
        u1 = math.sqrt(q) * z1
        u2 = math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2)
        samples = {
            "second": (phi(u1) ** 2, mf.length_map(act, q, 1.0, 0.0)),
            "gain": (central_difference(phi, u1) ** 2, mf.chi(act, q, 1.0)),
            "pair": (phi(u1) * phi(u2), mf.pair_expect(act, q, c)),
            "pair'": (central_difference(phi, u1) * central_difference(phi, u2),
                      mf.pair_expect(act, q, c, derivative=True)),
        }
        for name, (s, got) in samples.items():
            se = s.std() / math.sqrt(n)
            assert abs(s.mean() - got) < 5 * se + 1e-6, (act, q, c, name, s.mean(), got, se)


def test_gaussian_integrals_match_scipy_quad_and_dblquad():
    for act in ("tanh", "gelu"):
        phi = PHI[act]
        for q in (1e-3, 0.5, 40.0, 1e4):
            s = math.sqrt(q)
            ref = integrate.quad(lambda x: phi(x) ** 2 * stats.norm.pdf(x, scale=s), -12 * s, 12 * s,
                                 points=[-3, 0, 3] if s > 0.25 else None, limit=500,
                                 epsabs=0, epsrel=1e-13)[0]
            np.testing.assert_allclose(mf.length_map(act, q, 1.0, 0.0), ref, rtol=1e-10)
        for q, c in ((0.8, 0.6), (3.0, -0.3)):
            s, r = math.sqrt(q), math.sqrt(1 - c * c)

            def f(z2, z1):
                return (phi(s * z1) * phi(s * (c * z1 + r * z2))
                        * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi))

            ref = integrate.dblquad(f, -9, 9, -9, 9, epsabs=1e-13, epsrel=1e-12)[0]
            np.testing.assert_allclose(mf.pair_expect(act, q, c), ref, rtol=1e-10)


@pytest.mark.parametrize("act", ["tanh", "gelu", "hardtanh", "relu"])
def test_chi_q_is_the_slope_of_the_length_map(act):
    q = np.array([0.2, 1.0, 3.0])
    ref = differentiate.derivative(lambda x: mf.length_map(act, x, 1.7, 0.1), q, initial_step=0.02).df
    np.testing.assert_allclose(mf.chi_q(act, q, 1.7), ref, rtol=1e-8)


@pytest.mark.parametrize("act", ["tanh", "hardtanh", "gelu"])
def test_correlation_slope_is_the_derivative_of_the_correlation_map(act):
    c = np.array([-0.3, 0.4, 0.8])
    ref = differentiate.derivative(lambda x: mf.correlation_map(act, x, 0.9, 2.0, 0.05), c,
                                   initial_step=0.02).df
    np.testing.assert_allclose(mf.correlation_slope(act, c, 0.9, 2.0, 0.05), ref, rtol=1e-7)


def iterate(f, x, n=3000):
    """x ← f(x) until it stops moving (|Δx| < 1e-14·max(1, |x|)) or n steps."""
    for _ in range(n):
        x, old = f(x), x
        if abs(x - old) < 1e-14 * max(1.0, abs(x)):
            break
    return x


@pytest.mark.parametrize("act,sw2,sb2,q1", [("tanh", 1.3, 0.02, 5.0), ("hardtanh", 2.0, 0.3, 0.01),
                                            ("gelu", 3.0, 0.01, 0.05), ("gelu", 1.2, 0.4, 9.0)])
def test_q_star_is_where_iterating_the_length_map_goes(act, sw2, sb2, q1):
    ref = iterate(lambda q: float(mf.length_map(act, q, sw2, sb2)), q1)
    assert mf.q_star(act, sw2, sb2, q1) == pytest.approx(ref, rel=1e-10)


def test_q_star_follows_the_basin_of_its_starting_point():
    # GELU with σ_w² = 3 > 2 and a tiny bias: a stable small fixed point, an unstable one
    # above it, and unbounded growth beyond
    lo, hi = mf.q_star("gelu", 3.0, 0.01, [0.05, 50.0])
    assert 0 < lo < 0.1 and np.isinf(hi)
    # tanh at σ_b = 0 and σ_w² < 1: q decays to the fixed point 0
    assert mf.q_star("tanh", 0.8, 0.0, 2.0) == 0.0


@pytest.mark.parametrize("act,sw2,sb2", [("tanh", 3.0, 0.05), ("hardtanh", 2.5, 0.05),
                                         ("tanh", 1.0, 0.05), ("gelu", 1.5, 0.05)])
def test_c_star_is_where_iterating_the_correlation_map_goes(act, sw2, sb2):
    fp = mf.fixed_point(act, sw2, sb2, q_in=1.0, c_in=0.5)
    q = fp["q_star"]
    ref = iterate(lambda c: float(mf.correlation_map(act, c, q, sw2, sb2)), 0.5)
    assert fp["c_star"] == pytest.approx(ref, abs=1e-8)
    if fp["chi1"] < 1:      # ordered: c* = 1 and χ_c = χ₁
        assert fp["c_star"] == 1.0 and fp["chi_c"] == pytest.approx(fp["chi1"], rel=1e-9)
    else:                   # chaotic: a stable fixed point below 1
        assert fp["c_star"] < 1 and fp["chi_c"] < 1 < fp["chi1"]


def test_tanh_and_hardtanh_are_critical_at_unit_weight_variance_without_bias():
    assert mf.critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, abs=1e-12)
    assert mf.critical_sigma_w2("hardtanh", 0.0) == pytest.approx(1.0, abs=1e-12)
    assert mf.critical_sigma_w2("relu", 0.0) == pytest.approx(2.0, abs=1e-12)
    assert mf.critical_sigma_w2("identity", 0.0) == pytest.approx(1.0, abs=1e-12)
    # the ReLU and identity lines are vertical (χ₁ = σ_w²/2 and σ_w², whatever q*)
    np.testing.assert_allclose(mf.critical_line("relu", [0.1, 1.0]), 2.0, rtol=1e-12)
    np.testing.assert_allclose(mf.critical_line("identity", [0.1, 1.0]), 1.0, rtol=1e-12)


@pytest.mark.parametrize("act,sb2", [("tanh", (0.01, 0.05, 0.3, 1.0)), ("hardtanh", (0.02, 0.5)),
                                     ("gelu", (0.3, 1.0))])
def test_critical_line_has_chi1_one_at_a_stable_fixed_point(act, sb2):
    w = mf.critical_line(act, sb2)
    for wi, bi in zip(w, sb2):
        q = mf.q_star(act, wi, bi, wi + bi)
        assert np.isfinite(q) and mf.chi_q(act, q, wi) < 1
        assert mf.chi(act, q, wi) == pytest.approx(1.0, abs=1e-9)
    if act == "tanh":      # more bias needs more weight variance to reach chaos
        assert np.all(np.diff(w) > 0) and w[0] > 1


def test_chi1_grid_agrees_with_the_pointwise_functions():
    w, b = [0.5, 1.5, 3.0], [0.0, 0.2]
    g = mf.chi1_grid("tanh", w, b)
    for i, bi in enumerate(b):
        for j, wj in enumerate(w):
            q = mf.q_star("tanh", wj, bi, wj + bi)
            assert g["q_star"][i, j] == pytest.approx(q, rel=1e-12, abs=1e-300)
            assert g["chi1"][i, j] == pytest.approx(float(mf.chi("tanh", q, wj)), rel=1e-12)


def test_layer_norm_maps_evaluate_the_plain_maps_at_unit_second_moment():
    fp = mf.fixed_point("tanh", 1.0, 0.05, q_in=1.0, c_in=0.5, norm="layer")
    v1 = float(mf.length_map("tanh", 1.0, 1.0, 0.05))
    assert fp["q_star"] == pytest.approx(v1, rel=1e-14)
    assert fp["chi1"] == pytest.approx(float(mf.chi("tanh", 1.0, 1.0)) / v1, rel=1e-14)
    t = mf.trajectory("tanh", 1.0, 0.05, 1.0, 0.5, 5, norm="layer")
    np.testing.assert_allclose(t["q"][1:], v1, rtol=1e-14)
    assert t["c"][2] == pytest.approx(float(mf.correlation_map("tanh", t["c"][1], 1.0, 1.0, 0.05)), rel=1e-14)


def test_bad_theory_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="activation must be one of"):
        mf.length_map("swish", 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="q1 > 0"):
        mf.q_star("tanh", 1.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="c1 must be in"):
        mf.c_star("tanh", 1.0, 1.0, 0.0, c1=1.5)
    with pytest.raises(ValueError, match="sigma_b2"):
        mf.critical_line("tanh", [-0.1])


def test_docstring_examples_run():
    import doctest

    # the package binds the name mean_field to the study function; the module is here
    for mod in (mf, sys.modules["analysis.mean_field"]):
        assert doctest.testmod(mod).failed == 0


# ----------------------------------------------------------------------------- the study
# q_in = 0.15 starts ordered tanh (σ_w² = 1, σ_b² = 0.05) at q₁ = 0.2 ≈ q* = 0.194, so its
# correlation's approach is exponential from the first layers on
WIDE = dict(configs=("tanh:1.0:0.05", "tanh:3.0:0.05", "tanh:1.0:0.05:layer"),
            depth=12, width=512, batch=8, seeds=8, q_in=0.15, grid=5, critical_points=3,
            progress=False)


@pytest.fixture(scope="module")
def wide():
    return analysis.mean_field(**WIDE)


@pytest.fixture(scope="module")
def quick():
    return analysis.mean_field(quick=True, progress=False)


def test_width_512_networks_match_the_theory_within_the_finite_width_error(wide):
    """Tail averages within 5 standard errors (over 8 networks: Student t with 7 degrees of
    freedom exceeds 5 with probability 0.2%) plus 0.5% for O(1/width) corrections; per-layer
    curves with an RMS z-score below 2.5."""
    for label, m in wide.measured["configs"].items():
        t = wide.theory["configs"][label]
        for key in ("q", "c", "grad_factor"):
            err = abs(m[f"{key}_tail"] - t[f"{key}_tail"])
            assert err <= 5 * m[f"{key}_tail_se"] + 0.005 * abs(t[f"{key}_tail"]), (label, key)
        for key in ("q", "grad_factor"):
            meas, se, th = (np.asarray(v, dtype=float) for v in (m[key], m[f"{key}_se"], t[key]))
            z = (meas - th) / np.maximum(se, 1e-3 * np.abs(th))
            assert math.sqrt(np.mean(z ** 2)) < 2.5, (label, key, z)


def test_layer_norm_fixes_q_and_turns_ordered_tanh_chaotic(wide):
    m = wide.measured["configs"]
    ln, plain = m["tanh σw²=1 σb²=0.05 +LN"], m["tanh σw²=1 σb²=0.05"]
    v1 = float(mf.length_map("tanh", 1.0, 1.0, 0.05))
    q = np.asarray(ln["q"][1:])
    assert np.all(np.abs(q / v1 - 1) < 0.05)        # every layer, not only on average
    assert plain["grad_factor_tail"] < 0.8 and ln["grad_factor_tail"] > 1.0
    assert "LN on tanh σw²=1 σb²=0.05 (unnormalized: ordered" in wide.verdict
    assert "χ(1)/V(1) = 1.045: chaotic" in wide.verdict


def test_measured_correlation_depth_scale_matches_theory_in_the_ordered_phase(wide):
    """ξ_c fitted to the measured approach of c to 1 against the same fit of the theory curve
    (its 95% interval over the 8 networks) and against −1/log χ₁ (Schoenholz et al.), which the
    finite-depth curve approaches from below."""
    m = wide.measured["configs"]["tanh σw²=1 σb²=0.05"]
    t = wide.theory["configs"]["tanh σw²=1 σb²=0.05"]
    lo, hi = m["xi_c_fit_ci"]
    assert lo <= t["xi_c_fit"] <= hi
    assert t["xi_c_fit"] == pytest.approx(t["xi_c"], rel=0.02)
    assert t["xi_c"] == pytest.approx(-1 / math.log(t["chi1"]), rel=1e-12)


def test_batch_norm_makes_he_relu_gradients_explode_and_pins_q(quick):
    m = quick.measured["configs"]
    bn, plain = m["relu σw²=2 σb²=0 +BN"], m["relu σw²=2 σb²=0"]
    assert bn["grad_factor_tail"] - 5 * bn["grad_factor_tail_se"] > 1.2
    assert abs(plain["grad_factor_tail"] - 1) < 5 * plain["grad_factor_tail_se"] + 0.02
    assert bn["q_tail"] == pytest.approx(1.0, rel=0.05)        # V(1) = σ_w²/2 = 1
    assert "BN on relu" in quick.verdict


def test_json_has_the_common_skeleton_and_plots_after_a_round_trip(quick, tmp_path):
    d = json.loads(quick.to_json())
    assert {"study", "params", "measured", "theory", "verdict", "table"} <= set(d)
    assert d["study"] == "mean-field" and d["params"]["seed"] == 0
    assert d["params"]["configs"] == list(analysis.mean_field.study.quick["configs"])
    keys = {k for k, _ in _leaves(d["measured"])} & {k for k, _ in _leaves(d["theory"])}
    assert any(k.endswith(".grad_factor_tail") for k in keys)
    back = StudyResult.from_json(quick.to_json())
    path = back.plot(tmp_path / "mf.png") and tmp_path / "mf.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(quick.table) == len(quick.measured["configs"])


def _measured(r):
    return json.dumps(json.loads(r.to_json())["measured"], sort_keys=True)


def test_same_seed_same_numbers_in_process_and_in_a_process_pool(quick):
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pooled = analysis.mean_field(quick=True, progress=False, executor=pool)
    assert _measured(pooled) == _measured(quick)
    other = analysis.mean_field(quick=True, progress=False, seed=1,
                                configs=("tanh:3.0:0.05",), grid=3, critical_points=2)
    assert not np.array_equal(other.measured["configs"]["tanh σw²=3 σb²=0.05"]["q"],
                              quick.measured["configs"]["tanh σw²=3 σb²=0.05"]["q"])


TINY = dict(configs=("tanh:3.0:0.05", "hardtanh:crit:0.05:layer", "relu:2.0:0.0:batch"),
            depth=5, width=16, batch=4, seeds=2, grid=3, critical_points=2, progress=False)


@pytest.mark.parametrize("backend", ["torch", "array_api_strict", "dask"])
def test_backends_give_the_numpy_numbers(backend):
    pytest.importorskip({"dask": "dask.array"}.get(backend, backend))
    # dask recomputes its graph at every per-layer read-out: one network type is enough
    kw = dict(TINY, configs=TINY["configs"][:1]) if backend == "dask" else TINY
    ref = analysis.mean_field(**kw)
    got = analysis.mean_field(**kw, backend=backend)
    a, b = dict(_leaves(json.loads(_measured(ref)))), dict(_leaves(json.loads(_measured(got))))
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is None:
            assert b[k] is None, k
        else:
            assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), k


def test_cli_writes_json_and_png(tmp_path):
    j, p = tmp_path / "mf.json", tmp_path / "mf.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "mean-field", "--quick", "--no-progress",
                          "--configs", "tanh:crit:0.05,relu:2.0:0.0:batch", "--grid", "5",
                          "--critical-points", "3", "--activations", "tanh",
                          "--json", str(j), "--plot", str(p)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "tanh σw²=1.761" in out.stdout and "critical" in out.stdout
    assert json.loads(j.read_text())["study"] == "mean-field"
    assert p.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kwargs,match", [
    (dict(configs=("tanh:1.0",)), "activation:sigma_w2:sigma_b2"),
    (dict(configs=("swish:1.0:0.1",)), "activation must be one of"),
    (dict(configs=("tanh:1.0:0.1:group",)), "norm must be one of"),
    (dict(configs=("tanh:abc:0.1",)), "sigma_w2 must be a number or 'crit'"),
    (dict(configs=("tanh:-1:0.1",)), "sigma_w2 > 0"),
    (dict(configs=("gelu:crit:0.01",)), "no critical point"),
    (dict(configs=("tanh:1:0.1", "tanh:1.0:0.1")), "repeat"),
    (dict(seeds=1), "seeds >= 2"),
    (dict(batch=1), "batch"),
    (dict(c_in=1.0), "c_in"),
    (dict(sigma_b2_range=(0.5, 0.1)), "sigma_b2_range"),
    (dict(phase_activation="elu"), "phase_activation"),
])
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        analysis.mean_field(**kwargs, progress=False)
