"""The rl study: the score-function gradient against finite differences and the exact gradient
of a bandit's expected reward; GAE against its definition; the normalizers' statistics against
NumPy over what the agent saw; the gradient-noise measures; determinism, executors, backends,
the missing-gymnasium error, JSON/plot/CLI."""

from __future__ import annotations

import concurrent.futures
import doctest
import importlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, special

import analysis
import arraynorm as an
from analysis._backend import Backend, point_rng
from analysis.rl import gae, gradient_noise, parse_config, policy_surrogate

rl_mod = importlib.import_module("analysis.rl")  # the module (``analysis.rl`` is the study)

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(configs=("none", "obs+reward+adv"), steps=256, seeds=2, envs=4, horizon=8, width=8,
            probes=3, checkpoints=2, windows=3, progress=False)


@pytest.fixture(scope="module")
def quick():
    return analysis.rl(quick=True, progress=False)


# ------------------------------------------------------------------------------ the estimator
def _surrogate_numpy(z, actions, adv):
    """−(1/N) Σ A_i log softmax(z_i)[a_i], written independently with SciPy's logsumexp."""
    logp = z[np.arange(len(z)), actions] - special.logsumexp(z, axis=1)
    return -np.mean(adv * logp)


def test_policy_surrogate_value_and_gradient_match_finite_differences():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 3)) * 2
    a, adv = rng.integers(0, 3, 6), rng.standard_normal(6)
    value, dz = policy_surrogate(np, z, a, adv)
    assert float(value) == pytest.approx(_surrogate_numpy(z, a, adv), rel=1e-13)
    numeric = optimize.approx_fprime(z.ravel(), lambda v: _surrogate_numpy(v.reshape(z.shape), a, adv), 1e-7)
    np.testing.assert_allclose(dz.ravel(), numeric, atol=1e-7)


def test_policy_surrogate_gradient_through_the_policy_network_matches_finite_differences():
    rng = np.random.default_rng(1)
    net = an.nn.deep_stack(2, 5, in_features=4, out_features=2, activation="tanh", init="xavier", rng=2)
    x, a, adv = rng.standard_normal((7, 4)), rng.integers(0, 2, 7), rng.standard_normal(7)
    w0 = net[0][0].params["weight"].copy()

    def f(flat):
        net[0][0].params["weight"] = flat.reshape(w0.shape)
        return _surrogate_numpy(net(x), a, adv)

    numeric = optimize.approx_fprime(w0.ravel(), f, 1e-7)
    net[0][0].params["weight"] = w0
    net.backward(policy_surrogate(np, net(x), a, adv)[1])
    np.testing.assert_allclose(net[0][0].grads["weight"].ravel(), numeric, rtol=1e-5, atol=1e-9)


def test_expected_score_function_gradient_is_the_gradient_of_a_bandits_expected_reward():
    # a K-armed bandit with softmax policy π = softmax(θ): J(θ) = Σ_a π_a r_a. The score
    # function identity: ∇J = Σ_a π_a r_a ∇log π_a = E_a[r_a ∇log π_a]
    theta, r = np.array([0.3, -1.0, 0.8, 0.1]), np.array([1.0, 3.0, -0.5, 2.0])
    k = len(theta)
    p = special.softmax(theta)
    exact = optimize.approx_fprime(theta, lambda t: float(special.softmax(t) @ r), 1e-8)
    # every arm once, weighted by its probability: the expectation, exactly
    _, dz = policy_surrogate(np, np.tile(theta, (k, 1)), np.arange(k), k * p * r)
    np.testing.assert_allclose(-dz.sum(axis=0), exact, atol=1e-7)
    # sampled arms (inverse CDF on uniforms, as the study samples): the estimate's mean
    rng = np.random.default_rng(3)
    n = 200_000
    arms = np.minimum((rng.random(n)[:, None] > np.cumsum(p)).sum(axis=1), k - 1)
    np.testing.assert_allclose(np.bincount(arms, minlength=k) / n, p, atol=4 * np.sqrt(0.25 / n))
    _, dz = policy_surrogate(np, np.tile(theta, (n, 1)), arms, r[arms])
    per_sample = -dz * n
    se = per_sample.std(axis=0) / np.sqrt(n)
    np.testing.assert_allclose(per_sample.mean(axis=0), exact, atol=float(4 * se.max()))


def test_gae_is_the_discounted_sum_of_td_errors_until_the_episode_ends():
    rng = np.random.default_rng(4)
    t_len, e, gamma, lam = 9, 3, 0.9, 0.8
    r, v, vn = (rng.standard_normal((t_len, e)) for _ in range(3))
    term = (rng.random((t_len, e)) < 0.2).astype(float)
    done = np.maximum(term, (rng.random((t_len, e)) < 0.1).astype(float))  # some truncations
    got = gae(r, v, vn, term, done, gamma, lam)
    delta = r + gamma * (1 - term) * vn - v
    for j in range(e):
        for t in range(t_len):
            expect, w = 0.0, 1.0
            for s in range(t, t_len):
                expect += w * delta[s, j]
                if done[s, j]:
                    break
                w *= gamma * lam
            assert got[t, j] == pytest.approx(expect, rel=1e-12, abs=1e-14)


def test_gae_with_lambda_one_gives_the_bootstrapped_monte_carlo_return():
    rng = np.random.default_rng(5)
    r, v, vn = rng.standard_normal((6, 1)), rng.standard_normal((6, 1)), rng.standard_normal((6, 1))
    vn[:-1] = v[1:]  # within an episode the next state's value is the next step's
    zero = np.zeros((6, 1))
    adv = gae(r, v, vn, zero, zero, 0.95, 1.0)  # no episode end inside the rollout
    ret = sum(0.95 ** k * r[k, 0] for k in range(6)) + 0.95 ** 6 * vn[-1, 0]
    assert adv[0, 0] + v[0, 0] == pytest.approx(ret, rel=1e-12)
    term = zero.copy()
    term[-1] = 1.0  # a real termination: no bootstrap
    adv = gae(r, v, vn, term, term, 0.95, 1.0)
    assert adv[0, 0] + v[0, 0] == pytest.approx(ret - 0.95 ** 6 * vn[-1, 0], rel=1e-12)


def test_gradient_noise_matches_numpys_covariance_and_pairwise_cosines():
    g = np.random.default_rng(6).standard_normal((5, 7)) + 0.5
    out = gradient_noise(g)
    assert out["trace_cov"] == pytest.approx(np.trace(np.cov(g.T)), rel=1e-12)
    mean = g.mean(axis=0)
    assert out["relative_variance"] == pytest.approx(np.trace(np.cov(g.T)) / (mean @ mean), rel=1e-12)
    cos = [g[i] @ g[j] / np.linalg.norm(g[i]) / np.linalg.norm(g[j])
           for i in range(5) for j in range(5) if i != j]
    assert out["cosine"] == pytest.approx(np.mean(cos), rel=1e-12)
    same = gradient_noise(np.ones((3, 4)))
    assert same["trace_cov"] == 0.0 and same["cosine"] == pytest.approx(1.0)


def test_configurations_parse_and_bad_ones_are_rejected():
    assert parse_config("none") == frozenset()
    assert parse_config("reward+obs") == {"obs", "reward"}
    for bad in ("obs+obs", "batch", "", "obs+"):
        with pytest.raises(ValueError, match="configuration"):
            parse_config(bad)


# ------------------------------------------------------------------------------ normalizers
def test_normalizer_statistics_equal_numpys_over_what_the_agent_saw():
    b, e, gamma = Backend("numpy", "float64"), 4, 0.97
    agent = rl_mod._Agent(frozenset({"obs", "reward"}), b, envs=e, width=8, lr=1e-3,
                          lr_value=1e-3, gamma=gamma, rng=point_rng(0, "init"))
    envs = rl_mod._Envs(e, point_rng(0, "env"))
    seen, rewards, dones = [], [], []
    step = envs.step

    def spy(actions):  # the observation each step normalizes is envs.obs before it
        seen.append(envs.obs.copy())
        r, nxt, term, done = step(actions)
        rewards.append(r), dones.append(done)
        return r, nxt, term, done

    envs.step = spy
    rng = np.random.default_rng(1)
    for _ in range(5):
        rl_mod._rollout(agent, envs, 10, rng, update=True)
    obs = np.concatenate(seen)
    assert agent.obs_norm.rms.count == len(obs) == 5 * 10 * e
    np.testing.assert_allclose(agent.obs_norm.rms.mean, obs.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(agent.obs_norm.rms.var, obs.var(axis=0), rtol=1e-12)
    # the reward normalizer's statistics are those of the discounted returns R ← γR + r,
    # R reset to 0 after an episode ends, per environment
    big_r, returns = np.zeros(e), []
    for r, d in zip(rewards, dones):
        big_r = gamma * big_r + r
        returns.append(big_r.copy())
        big_r[d] = 0.0
    returns = np.concatenate(returns)
    assert any(np.any(d) for d in dones)  # an episode ended in the window
    np.testing.assert_allclose(agent.reward_norm.rms.mean, returns.mean(), rtol=1e-12)
    np.testing.assert_allclose(agent.reward_norm.rms.var, returns.var(), rtol=1e-12)


def test_probes_leave_the_normalizers_and_the_environments_as_they_were():
    b = Backend("numpy", "float64")
    agent = rl_mod._Agent(frozenset({"obs", "reward"}), b, envs=3, width=8, lr=1e-3,
                          lr_value=1e-3, gamma=0.99, rng=point_rng(0, "init"))
    envs = rl_mod._Envs(3, point_rng(0, "env"))
    rl_mod._rollout(agent, envs, 12, np.random.default_rng(0), update=True)
    before = (agent.obs_norm.rms.mean.copy(), agent.obs_norm.rms.count,
              agent.reward_norm.returns.copy(), envs.obs.copy(), envs.steps, len(envs.episodes))
    w = agent.policy[0][0].params["weight"].copy()
    noise = rl_mod._probe(agent, envs, probes=3, horizon=6, gamma=0.99, lam=0.95,
                          rng=np.random.default_rng(1))
    after = (agent.obs_norm.rms.mean, agent.obs_norm.rms.count, agent.reward_norm.returns,
             envs.obs, envs.steps, len(envs.episodes))
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(agent.policy[0][0].params["weight"], w)
    assert set(noise) == {"raw", "normalized"} and noise["raw"]["trace_cov"] > 0


# ------------------------------------------------------------------------------ the study
def test_quick_study_learns_and_reports_what_it_measured(quick):
    m = quick.measured
    for c in quick.params["configs"]:
        d = m[c]
        assert len(d["final_return_per_seed"]) == quick.params["seeds"]
        assert d["final_return"] == pytest.approx(np.mean(d["final_return_per_seed"]))
        # CartPole's return is the episode length: at least 8 (the shortest possible fall)
        assert all(8 <= v <= 500 for v in d["final_return_per_seed"])
        assert f"{c}: final return {d['final_return']:.0f}" in quick.verdict
        assert len(d["relative_variance"]) == quick.params["checkpoints"]
        assert all(v > 0 for v in d["relative_variance"]) and all(-1 <= v <= 1 for v in d["cosine"])
    # whole rollouts: 1536 steps = 12 updates of 8 environments × 16 steps
    assert quick.measured["steps"] == 1536


def test_serial_and_process_pool_give_identical_results_and_seeds_matter():
    ref = analysis.rl(**TINY)
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pooled = analysis.rl(**TINY, executor=pool)
    assert pooled.as_dict()["measured"] == ref.as_dict()["measured"]
    assert analysis.rl(**TINY).as_dict()["measured"] == ref.as_dict()["measured"]
    assert analysis.rl(**TINY, seed=1).as_dict()["measured"] != ref.as_dict()["measured"]


@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_backends_give_the_numpy_numbers(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    kw = dict(TINY, seeds=1)
    ref = analysis.rl(**kw).measured
    got = analysis.rl(**kw, backend=backend).measured
    for c in kw["configs"]:
        assert got[c]["final_return_per_seed"] == ref[c]["final_return_per_seed"]
        assert got[c]["episodes"] == ref[c]["episodes"]
        for key in ("trace_cov_per_seed", "relative_variance_raw_per_seed",
                    "relative_variance_normalized_per_seed"):
            np.testing.assert_allclose(np.array(got[c][key], dtype=float),
                                       np.array(ref[c][key], dtype=float), rtol=1e-8)


def test_missing_gymnasium_raises_an_import_error_that_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    with pytest.raises(ImportError, match=r'pip install "arraynorm\[applications\]"'):
        analysis.rl(**TINY)


def test_result_json_skeleton_and_plot(quick, tmp_path):
    d = json.loads(quick.to_json())
    assert {"study", "params", "measured", "theory", "verdict", "table"} <= set(d)
    assert d["study"] == "rl" and d["measured"]["env"] == "CartPole-v1"
    back = analysis.StudyResult.from_json(quick.to_json(tmp_path / "r.json"))
    back.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["config"] for r in quick.table] == list(quick.params["configs"])


def test_cli_writes_json_and_png(tmp_path):
    j, p = tmp_path / "r.json", tmp_path / "r.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "rl", "--quick", "--no-progress",
                          "--configs", "none,obs", "--steps", "128", "--envs", "4",
                          "--json", str(j), "--plot", str(p)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(j.read_text())
    assert d["params"]["configs"] == ["none", "obs"] and d["params"]["envs"] == 4
    assert "final return" in out.stdout and p.read_bytes()[:4] == b"\x89PNG"


def test_docstring_examples_run():
    result = doctest.testmod(importlib.import_module("analysis.rl"))
    assert result.attempted > 0 and result.failed == 0


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="configuration"):
        analysis.rl(configs=("batchnorm",))
    with pytest.raises(ValueError, match="probes"):
        analysis.rl(probes=1)
    with pytest.raises(ValueError, match="gamma"):
        analysis.rl(gamma=1.5)
    with pytest.raises(ValueError, match="steps"):
        analysis.rl(steps=0)
