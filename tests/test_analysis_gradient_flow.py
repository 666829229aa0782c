"""The gradient-flow study: its theories against independent oracles (plain-NumPy Monte Carlo of
batch-normalized networks, closed forms), its measurements against those theories, its fits,
backends, JSON, figure, CLI and determinism."""

from __future__ import annotations

import concurrent.futures
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import analysis
from analysis import fit_growth
from analysis._gradient_theory import (bn_fixed_point, bn_gradient_factor, bn_gradient_spectrum,
                                       gauss_mean, meanfield_grad_factor, pre_ln_stream_slope)
from analysis._probe import probe_stack, safe_norm
from analysis._result import StudyResult, to_builtin
from analysis.gradient_flow import _backward_fit, transformer_stack

from _helpers import torch_available

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The Monte Carlo oracles run many small products: BLAS threads only spin on them (the
    studies limit themselves the same way)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield

#: a tiny run of every part of the study (backends, determinism)
TINY = dict(depth=5, widths=(8,), batches=(6,), norms=("none", "batch", "layer", "weight_norm"),
            positions=("before",), connections=("plain", "residual"), bn_batches=(6,),
            bn_activations=("relu",), bn_depth=5, bn_width=8, bn_seeds=1, tf_depths=(1, 2),
            tf_width=8, tf_tokens=3, tf_seeds=1, theory_samples=500, progress=False)


def _flat(d, prefix=""):
    """Numeric leaves of nested dicts/lists, by path."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}"))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(_flat(v, f"{prefix}[{i}]"))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix] = float(d)
    else:
        out[prefix] = d
    return out


# ----------------------------------------------------------------------------- independent MC
def _bn_jacobians(h):
    """BN(h) = √B·Gh/‖Gh‖ per row of ``h`` (N, B) and its Jacobians (N, B, B), written out."""
    n_samples, B = h.shape
    G = np.eye(B) - 1.0 / B
    u = h @ G
    r = np.linalg.norm(u, axis=1)
    n = u / r[:, None]
    J = math.sqrt(B) / r[:, None, None] * (G[None] - n[:, :, None] * n[:, None, :])
    return math.sqrt(B) * n, J


def _mc_backward_rate(activation, B, n_samples, rng):
    """λ by brute force: h ~ N(0, Σ*) with Σ* the fixed point estimated from the same kind of
    samples, then E tr(J D G D J) / (B − 1) with every matrix formed (no factorization)."""
    G = np.eye(B) - 1.0 / B
    phi = (lambda x: x) if activation == "identity" else (lambda x: np.maximum(x, 0.0))
    dphi = (lambda x: np.ones_like(x)) if activation == "identity" else (lambda x: (x > 0) * 1.0)
    y, _ = _bn_jacobians(rng.standard_normal((n_samples, B)))
    f = phi(y)
    sigma = f.T @ f / n_samples                       # fixed point E φ(BN(h))φ(BN(h))ᵀ
    h = rng.standard_normal((n_samples, B)) @ np.linalg.cholesky(sigma + 1e-12 * np.eye(B)).T
    vals = []
    for chunk in np.array_split(h, max(1, n_samples // 2000)):
        y, J = _bn_jacobians(chunk)
        M = J * dphi(y)[:, None, :]                     # J · diag φ'
        vals.append(np.sum((M @ G) * M, axis=(1, 2)) / (B - 1))   # tr(M G Mᵀ)
    vals = np.concatenate(vals)
    return vals.mean(), vals.std(ddof=1) / math.sqrt(n_samples)


@pytest.mark.parametrize("B, samples", [(8, 20000), (16, 10000), (32, 5000)])
def test_bn_linear_explosion_rate_is_closed_form_and_matches_plain_numpy_monte_carlo(B, samples):
    lam = bn_gradient_factor("identity", B)
    assert lam == pytest.approx((B - 2) / (B - 3), rel=1e-15)
    est, se = _mc_backward_rate("identity", B, samples, np.random.default_rng(B))
    assert abs(est - lam) < 4 * se + 1e-3 * lam, (est, se, lam)
    assert se < 0.01 * lam  # the Monte Carlo is precise enough to mean something


@pytest.mark.parametrize("B", [6, 16])
def test_bn_relu_explosion_rate_closed_form_matches_plain_numpy_monte_carlo(B):
    lam = bn_gradient_factor("relu", B)
    est, se = _mc_backward_rate("relu", B, 10000, np.random.default_rng(100 + B))
    # the fixed point in the oracle is itself estimated: allow its O(1/√N) error as well
    assert abs(est - lam) < 4 * se + 5e-3 * lam, (est, se, lam)


def test_bn_relu_gram_map_iterated_from_a_random_gram_converges_to_the_bsb1_fixed_point():
    B, N = 8, 20000
    rng = np.random.default_rng(1)
    a = rng.standard_normal((B, 3 * B))
    sigma = a @ a.T / (3 * B)            # a generic Gram matrix, far from permutation symmetry
    iterates = []
    for it in range(30):                 # Σ ← E relu(BN(h)) relu(BN(h))ᵀ, h ~ N(0, Σ)
        h = rng.standard_normal((N, B)) @ np.linalg.cholesky(sigma).T
        y, _ = _bn_jacobians(h)
        f = np.maximum(y, 0.0)
        sigma = f.T @ f / N
        if it >= 15:                     # converged: average out the sampling noise
            iterates.append(sigma)
    sigma = np.mean(iterates, axis=0)
    q, p = bn_fixed_point("relu", B)
    off = sigma[~np.eye(B, dtype=bool)]
    assert np.diag(sigma) == pytest.approx(q, abs=0.015)
    assert off == pytest.approx(p, abs=0.006)
    assert (q, p) == pytest.approx((0.5, (math.sqrt(1 - 1 / 49) - (math.pi - math.acos(-1 / 7)) / 7)
                                    / (2 * math.pi)), rel=1e-12)


@pytest.mark.parametrize("activation", ["identity", "relu"])
def test_bn_spectrum_monte_carlo_leads_with_the_closed_form_eigenvalue(activation):
    for B in (4, 12, 64):
        s = bn_gradient_spectrum(activation, B, samples=8000, rng=B)
        lam = bn_gradient_factor(activation, B)
        assert abs(s["trivial"] - lam) < 4 * s["stderr"]["trivial"] + 1e-12
        assert s["leading"] == s["trivial"]
    # identity: the traceless eigenvalues are ((B−1)² − 2)/((B−1)² − 4) exactly
    if activation == "identity":
        k = 11
        s = bn_gradient_spectrum("identity", 12, samples=8000, rng=3)
        for e in ("standard", "two_row"):
            assert abs(s[e] - (k * k - 2) / (k * k - 4)) < 4 * s["stderr"][e]


def test_bn_relu_rate_tends_to_pi_over_pi_minus_one():
    assert bn_gradient_factor("relu", 10 ** 6) == pytest.approx(math.pi / (math.pi - 1), rel=1e-5)
    rates = [bn_gradient_factor("relu", B) for B in (4, 8, 16, 32, 64)]
    assert all(a > b > 1 for a, b in zip(rates, rates[1:]))


def test_bn_theory_refuses_batches_below_four():
    with pytest.raises(ValueError, match="batch >= 4"):
        bn_gradient_factor("relu", 3)


def test_per_sample_norm_factors_match_closed_forms_and_monte_carlo():
    # LayerNorm after ReLU, large width: ½ / Var relu(z) = π/(π − 1)
    assert meanfield_grad_factor("layer", "after", "relu", width=10 ** 6) == pytest.approx(
        math.pi / (math.pi - 1), rel=1e-9)
    # before φ with a finite group: (m − 2)/(m − 3) centred, (m − 1)/(m − 2) uncentred
    assert meanfield_grad_factor("layer", "before", "relu", width=64) == pytest.approx(62 / 61)
    assert meanfield_grad_factor("rms", "before", "identity", width=64) == pytest.approx(63 / 62)
    assert meanfield_grad_factor("group", "before", "relu", width=128) == pytest.approx(14 / 13)
    z = np.random.default_rng(0).standard_normal(2_000_000)
    mc = np.mean(1 / np.cosh(z) ** 4) / np.mean(np.tanh(z) ** 2)
    assert meanfield_grad_factor("layer", "before", "tanh") == pytest.approx(mc, rel=3e-3)
    assert gauss_mean(lambda x: np.maximum(x, 0) ** 2, 2.0, (0.0,)) == pytest.approx(2.0, rel=1e-10)
    # no normalization, He-initialized ReLU: χ₁ = 1; residual stacks have no closed value here
    assert meanfield_grad_factor("none", "before", "relu", init="he") == 1.0
    assert meanfield_grad_factor("none", "before", "relu", residual=True) is None


def test_pre_ln_reference_slope_tends_to_minus_one_half():
    assert pre_ln_stream_slope([2 ** 20, 2 ** 22, 2 ** 24], 0.5) == pytest.approx(-0.5, abs=1e-5)
    assert -0.5 < pre_ln_stream_slope([2, 4, 8, 16], 0.5) < pre_ln_stream_slope([2, 4, 8, 16], 0.1) < 0


# ----------------------------------------------------------------------------- fits and probes
def test_fit_growth_recovers_a_known_rate_with_its_interval():
    rng = np.random.default_rng(0)
    depth = np.arange(60)
    for rate in (0.8, 1.0, 1.37):
        values = 3.0 * rate ** depth * np.exp(0.05 * rng.standard_normal(60))
        fit = fit_growth(depth, values)
        lo, hi = fit.rate_interval()
        assert lo < rate < hi and hi / lo < 1.01
    # the study's backward fit reads rates from the output toward the input
    g = 2.0 * 1.25 ** np.arange(41)[::-1]       # ‖∂L/∂h_ℓ‖, ℓ = 0 … 40, growing toward ℓ = 0
    assert _backward_fit(g).rate == pytest.approx(1.25, rel=1e-12)


def test_probe_reproduces_the_stacks_own_forward_and_backward():
    import arraynorm as an

    rng = np.random.default_rng(0)
    model = an.nn.deep_stack(4, 6, norm="batch", residual=True, rng=1)
    x, c = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
    p = probe_stack(list(model), x, c)
    y = model.forward(x)
    dx = model.backward(c)
    assert p.activation_rms[-1] == pytest.approx(np.sqrt(np.mean(y ** 2)), rel=1e-14)
    assert p.grad_norm[0] == pytest.approx(np.linalg.norm(dx), rel=1e-14)
    assert p.grad_norm[-1] == pytest.approx(np.linalg.norm(c), rel=1e-14)
    wg = [np.linalg.norm(model.gradients()[f"{i}.block.0.weight"]) for i in range(4)]
    np.testing.assert_allclose(p.weight_grad_norm, wg, rtol=1e-14)
    assert safe_norm(np.full(4, 1e200)) == pytest.approx(2e200)
    with pytest.raises(ValueError, match="cotangent must have"):
        probe_stack(list(model), x, c[:2])


def test_xiong_initialization_zeroes_query_key_and_sets_identity_output():
    import arraynorm as an

    model = transformer_stack(2, 8, pre_ln=True, rng=0)
    blk = model[0]
    w = blk.self_attn.in_proj.params["weight"]
    assert np.all(w[:16] == 0) and np.std(w[16:]) == pytest.approx(1 / math.sqrt(8), rel=0.3)
    assert np.array_equal(blk.self_attn.out_proj.params["weight"], np.eye(8))
    assert blk.linear1.params["weight"].shape == (8, 8)
    assert isinstance(model[2], an.nn.LayerNorm)
    # uniform attention: every token's attention output is the mean of the value vectors
    x = np.random.default_rng(1).standard_normal((1, 5, 8))
    out = blk.self_attn.forward(x)
    v = x @ w[16:].T
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(axis=1, keepdims=True), out.shape),
                               rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- the study
def test_bn_networks_measured_rate_agrees_with_yang_et_al_at_moderate_width():
    r = analysis.gradient_flow(norms=(), tf_depths=(), bn_batches=(16, 32),
                               bn_activations=("identity", "relu"), bn_depth=30, bn_width=256,
                               bn_seeds=3, theory_samples=2000, progress=False)
    for a, B in (("identity", 32), ("relu", 16), ("relu", 32)):
        m = r.measured["bn_batch"][a][f"B={B}"]
        t = r.theory["bn_batch"][a][f"B={B}"]["grad_rate"]
        lo, hi = m["grad_rate_ci"]
        assert lo <= t <= hi, (a, B, m, t)
        assert hi / lo < 1.05 and lo > 1  # a real interval, and explosion resolved
    assert "explode at every batch size" in r.verdict


def test_pre_ln_last_layer_gradient_falls_as_inverse_sqrt_depth_and_post_ln_stays():
    r = analysis.gradient_flow(norms=(), bn_batches=(), tf_depths=(2, 4, 8, 16), tf_width=32,
                               tf_tokens=4, tf_seeds=2, progress=False)
    pre, post = r.measured["transformer"]["pre_ln"], r.measured["transformer"]["post_ln"]
    lo, hi = pre["depth_exponent_ci"]
    assert hi < 0 and lo < -0.5 < hi
    lo, hi = post["depth_exponent_ci"]
    assert lo < 0 < hi and abs(post["depth_exponent"]) < 0.15
    assert pre["stream_within_lemma2"] is True
    assert r.theory["transformer"]["pre_ln"]["depth_exponent"] == -0.5
    assert r.theory["transformer"]["post_ln"]["depth_exponent"] == 0.0


@pytest.fixture(scope="module")
def quick_result():
    return analysis.gradient_flow(quick=True, progress=False)


def test_quick_sweep_verdicts_follow_the_measured_rates(quick_result):
    sweep = quick_result.measured["sweep"]
    bn = sweep["batch/before/plain/relu/he/w32/b8"]
    assert bn["behaviour"] == "explodes" and bn["grad_rate_ci"][0] > 1
    assert quick_result.theory["sweep"]["batch/before/plain/relu/he/w32/b8"]["grad_rate"] == \
        pytest.approx(math.sqrt(bn_gradient_factor("relu", 8)))
    plain = sweep["none/before/plain/relu/he/w32/b8"]
    assert plain["behaviour"] == "within ×10"
    assert "batch·before" in quick_result.verdict.split("gradients explode")[1].split(";")[0]
    for v in sweep.values():
        assert len(v["grad_norm"]) == 21 and len(v["weight_grad_norm"]) == 20


def test_json_skeleton_plot_and_round_trip(quick_result, tmp_path):
    d = json.loads(quick_result.to_json(tmp_path / "g.json"))
    assert {"study", "params", "measured", "theory", "verdict"} <= set(d)
    assert d["study"] == "gradient-flow" and d["params"]["seed"] == 0
    back = StudyResult.from_json(tmp_path / "g.json")
    back.plot(tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keys = {row["quantity"] for row in back.compare()}
    assert "bn_batch.relu.B=8.grad_rate" in keys and "transformer.pre_ln.depth_exponent" in keys


def test_cli_runs_the_subcommand(tmp_path):
    j, p = tmp_path / "g.json", tmp_path / "g.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "gradient-flow", "--quick",
                          "--no-progress", "--norms", "none,batch", "--connections", "plain",
                          "--bn-batches", "8", "--tf-depths", "2", "4",
                          "--json", str(j), "--plot", str(p)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "gradient-flow" in out.stdout and j.exists() and p.exists()
    d = json.loads(j.read_text())
    assert d["params"]["norms"] == ["none", "batch"] and d["params"]["tf_depths"] == [2, 4]


def test_same_seed_same_measured_and_process_pool_is_bit_identical(quick_result):
    again = analysis.gradient_flow(quick=True, progress=False)
    assert again.as_dict()["measured"] == quick_result.as_dict()["measured"]
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        par = analysis.gradient_flow(quick=True, progress=False, executor=pool)
    assert par.as_dict()["measured"] == quick_result.as_dict()["measured"]
    other = analysis.gradient_flow(quick=True, progress=False, seed=1)
    assert other.as_dict()["measured"] != quick_result.as_dict()["measured"]


@pytest.mark.parametrize("backend", [
    "array_api_strict",
    pytest.param("torch", marks=pytest.mark.skipif(not torch_available(), reason="no torch"))])
def test_backends_give_the_numpy_numbers(backend):
    ref = _flat(to_builtin(analysis.gradient_flow(**TINY).measured))
    got = _flat(to_builtin(analysis.gradient_flow(backend=backend, **TINY).measured))
    assert set(got) == set(ref)
    for k, v in ref.items():
        if isinstance(v, float) and math.isfinite(v):
            assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-12), k
        else:
            assert got[k] == v, k


@pytest.mark.parametrize("bad, match", [
    (dict(norms=("foo",)), "norms must be among"),
    (dict(bn_batches=(3, 8)), "bn_batches must be >= 4"),
    (dict(tf_depths=(4,)), "two distinct depths"),
    (dict(tf_init="zero"), "tf_init must be among"),
    (dict(depth=2), "depth must be >= 3"),
])
def test_bad_options_raise_naming_the_option(bad, match):
    with pytest.raises(ValueError, match=match):
        analysis.gradient_flow(**{**TINY, **bad})


@pytest.mark.parametrize("name", ["analysis._gradient_theory", "analysis._probe",
                                  "analysis.gradient_flow"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
