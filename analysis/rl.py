"""Normalization in policy-gradient reinforcement learning (the survey's §7 application): an
advantage actor–critic on gymnasium's CartPole-v1 with and without the library's observation
normalizer, reward (return-scale) normalizer and per-batch advantage normalization.

The agent (synchronous advantage actor–critic, Mnih et al. 2016, with generalized advantage
estimation, Schulman et al. 2016): ``envs`` CartPole environments step in lock-step, each
restarting when its episode ends; every ``horizon`` steps the batch of envs·horizon
transitions gives

    δ_t = r_t + γ(1 − terminated_t)·V(s'_t) − V(s_t),   A_t = δ_t + γλ(1 − done_t)·A_{t+1}

(bootstrapped at the rollout's end and at the 500-step time limit, not at a real
termination), one Adam step of the value network on (V(s_t) − (A_t + V(s_t)))² and one of the
policy network on the score-function surrogate

    L(θ) = −(1/N) Σ_t A_t log π_θ(a_t | s_t),   ∂L/∂z_t = −(A_t/N)(e_{a_t} − softmax(z_t)),

whose gradient is the policy-gradient estimate (Williams 1992); z are the policy's logits, the
log-softmax and its exact backward come from :mod:`arraynorm.nn.functional`. Policy and value
networks are small tanh MLPs of :mod:`arraynorm.nn`. A configuration adds any of

* ``obs`` — :class:`arraynorm.rl.ObservationNormalizer`: o ↦ clip((o − μ)/σ, ±10) with the
  exact running mean and variance of every observation seen;
* ``reward`` — :class:`arraynorm.rl.RewardNormalizer`: r ↦ r/σ_R with σ_R the running
  standard deviation of the discounted return R ← γR + r (Engstrom et al. 2020);
* ``adv`` — :func:`arraynorm.rl.normalize_advantages`: A ↦ (A − mean A)/std A per batch.

Measured, per configuration and seed (the runs of one seed share the initial weights, the
environments' seeds and the uniforms that pick the actions): the return (length) of every
finished episode over environment steps, and at a few checkpoints the **noise of the
policy-gradient estimate at fixed parameters**: ``probes`` independent rollouts from the same
environment states (copies), with the parameters and normalizer statistics frozen, each give
an estimate ĝ_k; the trace of their covariance tr Cov(ĝ), the relative variance
tr Cov(ĝ)/‖mean ĝ‖² (scale-free: reward and advantage normalization rescale ĝ, Adam's step
ignores the scale; E‖mean ĝ‖² = ‖E ĝ‖² + tr Cov(ĝ)/probes, so the measured ratio is the true
one divided by ≈ 1 + (true ratio)/probes, alike for every configuration) and the mean cosine between
independent estimates. Configurations train to different policies, so their probes compare
different parameters (a longer-lived policy visits other states). Each probe computes the
estimate twice, with raw and with normalized advantages, so their relative variances compare
the two estimators at the same parameters and on the same transitions.

No closed form gives CartPole's learning curves; there is no theory column. Runs need
gymnasium (``pip install "arraynorm[applications]"``); nothing is downloaded.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np

import arraynorm as an
from arraynorm._array_api import xp_from_host
from arraynorm.nn.functional import log_softmax, log_softmax_backward, softmax
from arraynorm.optim import Adam
from arraynorm.rl import ObservationNormalizer, RewardNormalizer, normalize_advantages

from ._backend import Backend, point_rng
from ._plot import colors, figure
from ._result import register_plotter
from ._study import Context, Outcome, study

__all__ = ["rl", "FLAGS", "parse_config", "policy_surrogate", "gae", "gradient_noise",
           "require_gymnasium"]

#: what a configuration may normalize, joined by "+" ("none": nothing)
FLAGS = ("obs", "reward", "adv")
ENV_ID = "CartPole-v1"


def require_gymnasium() -> Any:
    """The ``gymnasium`` module, or an ImportError saying how to install it."""
    try:
        import gymnasium
    except ImportError as exc:
        raise ImportError('the rl study runs CartPole-v1 from gymnasium, which is not installed: '
                          'pip install "arraynorm[applications]"') from exc
    return gymnasium


def parse_config(config: str) -> frozenset[str]:
    """The normalizations of a configuration name.

    >>> sorted(parse_config("obs+adv")), sorted(parse_config("none"))
    (['adv', 'obs'], [])
    """
    parts = [] if config == "none" else config.split("+")
    if not isinstance(config, str) or any(p not in FLAGS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"rl: a configuration is 'none' or a '+'-joined set of {FLAGS}, "
                         f"got {config!r}")
    return frozenset(parts)


# ------------------------------------------------------------------------------ the estimator
def policy_surrogate(xp: Any, logits: Any, actions: Any, advantages: Any) -> tuple[Any, Any]:
    """``(L, ∂L/∂logits)`` of the score-function surrogate of a categorical policy,

        L = −(1/N) Σ_i A_i log softmax(z_i)[a_i],   ∂L/∂z_i = −(A_i/N)(e_{a_i} − softmax(z_i)),

    for logits z (N, K), integer actions a (N,) and advantages A (N,) (constants: no gradient
    flows into them). ∇_θ L through the policy network is minus the policy-gradient estimate.
    """
    n, k = logits.shape
    logp = log_softmax(xp, logits, axis=-1)
    onehot = xp.astype(xp.reshape(actions, (n, 1)) == xp.reshape(xp.arange(k, dtype=actions.dtype), (1, k)),
                       logits.dtype)
    g = -(xp.reshape(advantages, (n, 1)) * onehot) / n   # ∂L/∂logp
    return xp.sum(g * logp), log_softmax_backward(xp, g, logp, axis=-1)


def gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray,
        terminated: np.ndarray, done: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """Generalized advantage estimates (T, E) of a rollout of T steps of E environments:
    δ_t = r_t + γ(1 − terminated_t) V(s'_t) − V(s_t), A_t = δ_t + γλ(1 − done_t) A_{t+1},
    A_T = 0. ``done`` = terminated or truncated (the episode does not continue into t + 1);
    a truncated step still bootstraps from V(s'_t)."""
    delta = rewards + gamma * (1.0 - terminated) * next_values - values
    adv = np.zeros_like(delta)
    last = np.zeros(delta.shape[1:])
    for t in range(len(delta) - 1, -1, -1):
        last = delta[t] + gamma * lam * (1.0 - done[t]) * last
        adv[t] = last
    return adv


def gradient_noise(grads: np.ndarray) -> dict[str, float]:
    """Noise of K independent gradient estimates (rows of ``grads``, K >= 2):
    ``trace_cov`` = Σ_p Var(ĝ_p) (unbiased), ``relative_variance`` = trace_cov/‖mean ĝ‖²,
    ``cosine`` = the mean cosine between distinct estimates, ``mean_norm2`` = ‖mean ĝ‖²."""
    g = np.asarray(grads, dtype=np.float64)
    k = len(g)
    mean = g.mean(axis=0)
    tr = float(((g - mean) ** 2).sum() / (k - 1))
    m2 = float(mean @ mean)
    norms = np.linalg.norm(g, axis=1)
    u = g / np.where(norms > 0, norms, 1.0)[:, None]
    c = u @ u.T
    cos = float((c.sum() - np.trace(c)) / (k * (k - 1)))
    return {"trace_cov": tr, "relative_variance": tr / m2 if m2 > 0 else math.inf,
            "cosine": cos, "mean_norm2": m2}


# ------------------------------------------------------------------------------ the agent
class _Agent:
    """Policy and value networks, their optimizers and the configured normalizers."""

    def __init__(self, flags: frozenset[str], b: Backend, *, envs: int, width: int, lr: float,
                 lr_value: float, gamma: float, rng: np.random.Generator) -> None:
        where = dict(xp=b.xp, dtype=b.dtype)
        self.b, self.flags = b, flags
        self.policy = an.nn.deep_stack(2, width, in_features=4, out_features=2, activation="tanh",
                                       init="xavier", rng=rng, **where)
        self.value = an.nn.deep_stack(2, width, in_features=4, out_features=1, activation="tanh",
                                      init="xavier", rng=rng, **where)
        self.opt_policy = Adam(self.policy, lr)
        self.opt_value = Adam(self.value, lr_value)
        self.obs_norm = ObservationNormalizer(4, **where) if "obs" in flags else None
        self.reward_norm = RewardNormalizer(envs, gamma=gamma, **where) if "reward" in flags else None

    def observe(self, obs: np.ndarray, update: bool) -> Any:
        o = self.b.asarray(obs)
        return self.obs_norm(o, update=update) if self.obs_norm is not None else o

    def scale_rewards(self, r: np.ndarray, done: np.ndarray, update: bool) -> np.ndarray:
        if self.reward_norm is None:
            return r
        xp = self.b.xp
        out = self.reward_norm(self.b.asarray(r), xp_from_host(done, xp, dtype=xp.bool), update=update)
        return self.b.to_numpy(out)


class _Envs:
    """E CartPole environments stepping in lock-step; each restarts when its episode ends.
    Records (environment step, return) of every finished episode."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        gym = require_gymnasium()
        self.envs = [gym.make(ENV_ID, disable_env_checker=True) for _ in range(n)]
        self.obs = np.stack([e.reset(seed=int(rng.integers(2**31)))[0] for e in self.envs]).astype(np.float64)
        self.running = np.zeros(n)
        self.steps = 0
        self.episodes: list[tuple[int, float]] = []

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step every env; returns (rewards, next observations, terminated, done) and moves
        ``obs`` on (to a fresh episode's first observation where one ended)."""
        n = len(self.envs)
        r, nxt = np.empty(n), np.empty_like(self.obs)
        term, done = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        for i, e in enumerate(self.envs):
            o, r[i], term[i], trunc, _ = e.step(int(actions[i]))
            nxt[i], done[i] = o, term[i] or trunc
        self.steps += n
        self.running += r
        self.obs = nxt.copy()
        for i in np.flatnonzero(done):
            self.episodes.append((self.steps, float(self.running[i])))
            self.running[i] = 0.0
            self.obs[i] = self.envs[i].reset()[0]
        return r, nxt, term, done


def _rollout(agent: _Agent, envs: _Envs, horizon: int, rng: np.random.Generator,
             update: bool) -> dict[str, Any]:
    """``horizon`` lock-step steps with actions sampled from the policy by inverse CDF on
    ``rng``'s uniforms; the normalizers' statistics move only with ``update``."""
    b, xp = agent.b, agent.b.xp
    obs, acts, rews, nexts, terms, dones = [], [], [], [], [], []
    for _ in range(horizon):
        o = agent.observe(envs.obs, update)
        p = b.to_numpy(softmax(xp, agent.policy(o), axis=-1))
        a = np.minimum((rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1), p.shape[1] - 1)
        r, nxt, term, done = envs.step(a)
        obs.append(o), acts.append(a), nexts.append(nxt), terms.append(term), dones.append(done)
        rews.append(agent.scale_rewards(r, done, update))
    return {"obs": xp.concat(obs, axis=0), "actions": np.stack(acts), "rewards": np.stack(rews),
            "next_obs": np.stack(nexts), "terminated": np.stack(terms).astype(np.float64),
            "done": np.stack(dones).astype(np.float64)}


def _advantages(agent: _Agent, batch: dict[str, Any], gamma: float, lam: float
                ) -> tuple[Any, np.ndarray, np.ndarray]:
    """``(V(s_t) on the backend (T·E, 1), V(s_t) on the host (T, E), GAE advantages (T, E))``;
    leaves the value network's cache at V(s_t), ready for its backward."""
    b = agent.b
    t, e = batch["actions"].shape
    nxt = agent.observe(batch["next_obs"].reshape(t * e, 4), update=False)
    v_next = b.to_numpy(agent.value(nxt)).reshape(t, e)
    v_dev = agent.value(batch["obs"])
    v = b.to_numpy(v_dev).reshape(t, e)
    return v_dev, v, gae(batch["rewards"], v, v_next, batch["terminated"], batch["done"], gamma, lam)


def _policy_gradient(agent: _Agent, batch: dict[str, Any], adv: np.ndarray, normalize: bool) -> Any:
    """Backward of the surrogate through the policy (sets its gradients)."""
    b, xp = agent.b, agent.b.xp
    a = b.asarray(adv.reshape(-1))
    if normalize:
        a = normalize_advantages(a)
    actions = xp_from_host(batch["actions"].reshape(-1), xp, dtype=xp.int64)
    _, dz = policy_surrogate(xp, agent.policy(batch["obs"]), actions, a)
    agent.policy.backward(dz)


def _flat_grads(model: an.nn.Module, b: Backend) -> np.ndarray:
    return np.concatenate([b.to_numpy(g).ravel() for g in model.gradients().values()])


def _probe(agent: _Agent, envs: _Envs, *, probes: int, horizon: int, gamma: float, lam: float,
           rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Noise of the policy-gradient estimate at the current parameters: ``probes`` rollouts
    from copies of the current environments and normalizers (statistics frozen), each
    giving the estimate with raw and with normalized advantages."""
    grads: dict[str, list[np.ndarray]] = {"raw": [], "normalized": []}
    saved = (agent.obs_norm, agent.reward_norm)
    for _ in range(probes):
        agent.obs_norm, agent.reward_norm = copy.deepcopy(saved)
        batch = _rollout(agent, copy.deepcopy(envs), horizon, rng, update=False)
        adv = _advantages(agent, batch, gamma, lam)[2]
        for kind in grads:
            _policy_gradient(agent, batch, adv, kind == "normalized")
            grads[kind].append(_flat_grads(agent.policy, agent.b))
    agent.obs_norm, agent.reward_norm = saved
    return {k: gradient_noise(np.stack(v)) for k, v in grads.items()}


def _rl_point(*, config: str, rep: int, steps: int, envs: int, horizon: int, width: int,
              lr: float, lr_value: float, gamma: float, lam: float, checkpoints: int,
              probes: int, backend: str, dtype: str, seed: int) -> dict[str, Any]:
    """One training run of configuration ``config``: its episodes and its gradient probes."""
    b = Backend(backend, dtype)
    flags = parse_config(config)
    # weights, environment seeds and action uniforms depend on the seed and rep only, so the
    # configurations of a repetition are a paired comparison (common random numbers)
    agent = _Agent(flags, b, envs=envs, width=width, lr=lr, lr_value=lr_value, gamma=gamma,
                   rng=point_rng(seed, "rl-init", rep))
    env = _Envs(envs, point_rng(seed, "rl-env", rep))
    act_rng = point_rng(seed, "rl-actions", rep)
    probe_rng = point_rng(seed, "rl-probe", rep)
    iterations = max(1, math.ceil(steps / (envs * horizon)))
    probe_at = {max(1, round(iterations * (k + 1) / checkpoints)) for k in range(checkpoints)}
    mse = an.nn.MSELoss()
    probes_out = []
    for it in range(1, iterations + 1):
        batch = _rollout(agent, env, horizon, act_rng, update=True)
        v_dev, v, adv = _advantages(agent, batch, gamma, lam)
        mse(v_dev, b.asarray((adv + v).reshape(-1, 1)))  # the value regresses on the λ-return
        agent.value.backward(mse.backward())
        agent.opt_value.step()
        _policy_gradient(agent, batch, adv, "adv" in flags)
        agent.opt_policy.step()
        if it in probe_at:
            noise = _probe(agent, env, probes=probes, horizon=horizon, gamma=gamma, lam=lam,
                           rng=probe_rng)
            recent = [r for _, r in env.episodes[-20:]]
            probes_out.append({"step": env.steps, "recent_return": float(np.mean(recent)) if recent else None,
                               "own": noise["normalized" if "adv" in flags else "raw"], **noise})
    return {"episodes": env.episodes, "steps": env.steps, "probes": probes_out}


# ------------------------------------------------------------------------------ the study
@study("rl", quick=dict(configs=("none", "obs+reward+adv"), steps=1536, seeds=2, envs=8,
                        horizon=16, probes=3, checkpoints=1, windows=4),
       report=dict(steps=24576, seeds=3, probes=8, checkpoints=2, windows=12))
def rl(ctx: Context, *, configs: tuple[str, ...] = ("none", "obs", "reward", "adv", "obs+reward+adv"),
       steps: int = 100_000, envs: int = 16, horizon: int = 16, width: int = 32, lr: float = 1e-3,
       lr_value: float = 1e-3, gamma: float = 0.99, lam: float = 0.95, checkpoints: int = 3,
       probes: int = 16, seeds: int = 3, windows: int = 20) -> Outcome:
    """Actor–critic on CartPole with and without observation, reward, advantage normalization: returns, gradient noise.

    Parameters
    ----------
    configs : "none" or "+"-joined sets of "obs" (ObservationNormalizer), "reward"
        (RewardNormalizer), "adv" (normalize_advantages).
    steps : environment steps per run (rounded up to whole rollouts of envs·horizon).
    envs, horizon : environments stepping in lock-step and steps per rollout (one update each).
    width : hidden width of the policy and value MLPs (two tanh layers each).
    lr, lr_value : Adam's learning rates of the policy and the value network.
    gamma, lam : discount and GAE λ.
    checkpoints : gradient-noise probes, evenly spaced over the run (the last at its end).
    probes : independent rollouts per probe (>= 2).
    seeds : independent runs per configuration.
    windows : points of the return curves (windows of environment steps).
    """
    fname = "rl"
    configs = tuple(dict.fromkeys(configs))
    if not configs:
        raise ValueError(f"{fname}: configs must name at least one configuration")
    for c in configs:
        parse_config(c)
    for name, v in (("steps", steps), ("envs", envs), ("horizon", horizon), ("width", width),
                    ("checkpoints", checkpoints), ("seeds", seeds), ("windows", windows)):
        if v < 1:
            raise ValueError(f"{fname}: {name} must be >= 1, got {v}")
    if probes < 2:
        raise ValueError(f"{fname}: probes must be >= 2 (a variance needs two estimates), got {probes}")
    for name, v in (("lr", lr), ("lr_value", lr_value)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{fname}: {name} must be a positive finite number, got {v}")
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"{fname}: gamma and lam must be in [0, 1], got {gamma}, {lam}")
    require_gymnasium()  # fail before any point runs
    common = dict(steps=steps, envs=envs, horizon=horizon, width=width, lr=lr, lr_value=lr_value,
                  gamma=gamma, lam=lam, checkpoints=checkpoints, probes=probes, **ctx.point_options())
    points = [dict(config=c, rep=r, **common) for c in configs for r in range(seeds)]
    runs = ctx.map(_rl_point, points, desc="rl")
    total = runs[0]["steps"]
    edges = np.linspace(0, total, windows + 1)
    by: dict[str, list[dict[str, Any]]] = {}
    for p, r in zip(points, runs):
        by.setdefault(p["config"], []).append(r)
    measured: dict[str, Any] = {"env": ENV_ID, "steps": total,
                                "window_steps": ((edges[:-1] + edges[1:]) / 2).tolist()}
    table = []
    for c in configs:
        measured[c] = m = _summary(by[c], edges)
        table.append({"config": c, "final return": m["final_return"],
                      "± (seeds)": m["final_return_std"],
                      "per seed": "/".join(f"{v:.0f}" for v in m["final_return_per_seed"]),
                      "peak": m["peak_return"], "episodes": m["episodes"],
                      "rel. var. (median)": m["relative_variance_median"],
                      "cosine (last probe)": m["cosine"][-1]})
    verdict = _verdict(measured, configs)
    return Outcome(measured, {}, verdict, table)


def _summary(runs: list[dict[str, Any]], edges: np.ndarray) -> dict[str, Any]:
    """Return curves and final returns (mean, std over seeds) and the probes' noise."""
    curves, finals = [], []
    for r in runs:
        at = np.array([s for s, _ in r["episodes"]], dtype=float)
        ret = np.array([v for _, v in r["episodes"]], dtype=float)
        idx = np.clip(np.searchsorted(edges, at, side="left") - 1, 0, len(edges) - 2)
        curves.append([float(ret[idx == w].mean()) if np.any(idx == w) else math.nan
                       for w in range(len(edges) - 1)])
        # the final return: episodes that ended in the last fifth of the run
        last = ret[at > edges[0] + 0.8 * (edges[-1] - edges[0])]
        finals.append(float(last.mean()) if last.size else math.nan)
    curves_a = np.array(curves)
    peaks = [float(np.nanmax(c)) if np.any(np.isfinite(c)) else math.nan for c in curves_a]
    with warnings.catch_warnings():  # a window where no episode ended is NaN (null in JSON)
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_curve = np.nanmean(curves_a, axis=0)
        std_curve = np.nanstd(curves_a, axis=0)
        final, final_std = float(np.nanmean(finals)), float(np.nanstd(finals))

    def probe(key: str, field: str) -> list[list[float]]:
        return [[p[key][field] for p in r["probes"]] for r in runs]

    rel = np.array(probe("own", "relative_variance"))
    return {
        "return_curve": mean_curve.tolist(), "return_curve_std": std_curve.tolist(),
        "return_curve_per_seed": curves,
        "final_return": final, "final_return_std": final_std,
        "final_return_per_seed": finals,
        # the best window of each seed's curve: a run can peak and then collapse
        "peak_return": float(np.mean(peaks)), "peak_return_per_seed": peaks,
        "episodes": float(np.mean([len(r["episodes"]) for r in runs])),
        "probe_steps": [p["step"] for p in runs[0]["probes"]],
        "probe_return_per_seed": [[p["recent_return"] for p in r["probes"]] for r in runs],
        # the run's own estimator (normalized advantages where it trains with them)
        "relative_variance": np.median(rel, axis=0).tolist(),
        "relative_variance_per_seed": rel.tolist(),
        "relative_variance_median": float(np.median(rel)),   # over every probe of every seed
        "cosine": np.median(np.array(probe("own", "cosine")), axis=0).tolist(),
        "trace_cov_per_seed": probe("own", "trace_cov"),
        # both estimators on the same transitions and parameters
        "relative_variance_raw_per_seed": probe("raw", "relative_variance"),
        "relative_variance_normalized_per_seed": probe("normalized", "relative_variance"),
    }


def _verdict(m: dict[str, Any], configs: tuple[str, ...]) -> str:
    parts = [f"{c}: final return {m[c]['final_return']:.0f} ± {m[c]['final_return_std']:.0f} "
             f"(seeds {'/'.join(f'{v:.0f}' for v in m[c]['final_return_per_seed'])}; peak "
             f"{m[c]['peak_return']:.0f})" for c in configs]
    text = f"{m['env']}, {m['steps']} steps per run — " + "; ".join(parts)
    if "none" in configs and len(configs) > 1:
        base = m["none"]["final_return"]
        best = max(configs, key=lambda c: m[c]["final_return"])
        if best == "none":
            text += ". No normalization learns best here: the claim is not supported at these sizes"
        else:
            spread = m[best]["final_return_std"] + m["none"]["final_return_std"]
            text += (f". Best: {best} ({m[best]['final_return'] - base:+.0f} over none"
                     + ("; within the seeds' spread" if m[best]["final_return"] - base < spread else "")
                     + ")")
    ratios = [n / r for c in configs
              for rr, nn in zip(m[c]["relative_variance_raw_per_seed"],
                                m[c]["relative_variance_normalized_per_seed"])
              for r, n in zip(rr, nn) if r > 0 and math.isfinite(r) and math.isfinite(n)]
    if ratios:
        q = np.quantile(ratios, [0.25, 0.5, 0.75])
        text += (f". At the same parameters and transitions, normalizing the advantages multiplies "
                 f"the relative variance of the policy-gradient estimate by ×{q[1]:.2f} (median; "
                 f"quartiles ×{q[0]:.2f}–×{q[2]:.2f} over {len(ratios)} probes)")
    text += ("; relative variance of each run's own estimator (median over probes and seeds): "
             + ", ".join(f"{c} {m[c]['relative_variance_median']:.3g}" for c in configs))
    return text + "."


@register_plotter("rl")
def _plot(r: Any) -> Any:
    m = r.measured
    configs = [c for c in r.params["configs"] if c in m]
    col = colors(configs)
    fig, ax = figure(3, title=f"actor–critic on {m['env']} ({r.params['seeds']} seeds, "
                              f"{m['steps']} steps per run)")
    x = np.asarray(m["window_steps"], dtype=float)
    for c in configs:
        d = m[c]
        mu = np.array([np.nan if v is None else v for v in d["return_curve"]], dtype=float)
        sd = np.array([np.nan if v is None else v for v in d["return_curve_std"]], dtype=float)
        ax[0].plot(x, mu, color=col[c], label=c)
        ax[0].fill_between(x, mu - sd, mu + sd, color=col[c], alpha=0.15)
        steps = np.asarray(d["probe_steps"], dtype=float)
        for k, rel in enumerate(d["relative_variance_per_seed"]):
            ax[1].semilogy(steps, rel, "o-", color=col[c], ms=3, lw=0.8, alpha=0.7,
                           label=c if k == 0 else None)
        raw = np.asarray(d["relative_variance_raw_per_seed"], dtype=float).ravel()
        nrm = np.asarray(d["relative_variance_normalized_per_seed"], dtype=float).ravel()
        ax[2].loglog(raw, nrm, "o", color=col[c], ms=4, label=c)
    lo, hi = ax[2].get_xlim()
    ax[2].plot([lo, hi], [lo, hi], "k--", lw=0.7, label="equal")
    ax[0].set(xlabel="environment step", ylabel="episode return (mean ± std over seeds)")
    ax[1].set(xlabel="environment step", ylabel="tr Cov(ĝ)/‖mean ĝ‖² (each seed)")
    ax[2].set(xlabel="relative variance, raw advantages",
              ylabel="… normalized advantages (same transitions)")
    for a in ax:
        a.legend(fontsize=7)
    return fig
