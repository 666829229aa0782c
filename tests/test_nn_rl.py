"""RL normalization: running statistics merged from batches equal NumPy's statistics of the
concatenated stream (the oracle), on every backend; the normalizers follow their definitions
(baselines' VecNormalize: observation clipping, reward scaling by the discounted return's
standard deviation; PPO's per-batch advantage normalization)."""

from __future__ import annotations

import numpy as np
import pytest

from arraynorm.rl import (
    ObservationNormalizer,
    RewardNormalizer,
    RunningMeanStd,
    merge_moments,
    normalize_advantages,
)
from _helpers import assert_close, from_numpy, to_numpy


def _stream(seed=0):
    rng = np.random.default_rng(seed)
    # batches of uneven size, a large offset (|mean| ≫ std) and a drifting scale
    sizes = [1, 7, 3, 20, 2, 11, 1, 5]
    return [1e4 + rng.standard_normal((n, 3)) * (1 + i) + i for i, n in enumerate(sizes)]


def test_running_statistics_equal_numpy_over_the_concatenated_stream(xp):
    batches = _stream()
    rms = RunningMeanStd(3, xp=xp, dtype=xp.float64)
    seen = []
    for b in batches:
        rms.update(from_numpy(xp, b))
        seen.append(b)
        allx = np.concatenate(seen)
        assert_close(rms.mean, allx.mean(axis=0), xp=xp, rtol=1e-13, atol=0)
        assert_close(rms.var, allx.var(axis=0), xp=xp, rtol=1e-11, atol=0)
        assert rms.count == len(allx)


def test_float32_statistics_stay_accurate_with_a_large_offset(xp):
    batches = [b.astype(np.float32) for b in _stream(1)]
    rms = RunningMeanStd(3, xp=xp, dtype=xp.float32)
    for b in batches:
        rms.update(from_numpy(xp, b))
    allx = np.concatenate(batches).astype(np.float64)
    assert_close(rms.mean, allx.mean(axis=0), xp=xp, rtol=1e-6, atol=0)
    # E[x²] − E[x]² at mean 1e4 in float32 would lose every digit of a variance ~20; two-pass
    # batch moments merged exactly keep ~1e-5 (NumPy) to ~1e-4 (torch float32 reductions)
    assert_close(rms.var, allx.var(axis=0), xp=xp, rtol=5e-4, atol=0)


def test_merge_moments_is_exact_for_two_halves():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((13, 2)) + 5, rng.standard_normal((4, 2)) * 3
    mean, var, n = merge_moments(a.mean(0), a.var(0), 13, b.mean(0), b.var(0), 4)
    both = np.concatenate([a, b])
    np.testing.assert_allclose(mean, both.mean(0), rtol=1e-14)
    np.testing.assert_allclose(var, both.var(0), rtol=1e-13)
    assert n == 17
    with pytest.raises(ValueError, match="count_a must be an int >= 0"):
        merge_moments(a.mean(0), a.var(0), -1, b.mean(0), b.var(0), 4)


def test_observation_normalizer_standardizes_and_clips(xp):
    rng = np.random.default_rng(3)
    norm = ObservationNormalizer(2, clip=1.5, xp=xp, dtype=xp.float64)
    seen = []
    for _ in range(4):
        obs = rng.standard_normal((6, 2)) * [1.0, 10.0] + [0.0, 3.0]
        seen.append(obs)
        out = norm(from_numpy(xp, obs))
        allx = np.concatenate(seen)
        expected = np.clip((obs - allx.mean(0)) / np.sqrt(allx.var(0) + 1e-8), -1.5, 1.5)
        assert_close(out, expected, xp=xp, rtol=1e-10, atol=1e-12)
    frozen = norm(from_numpy(xp, np.zeros((1, 2))), update=False)
    assert norm.rms.count == 24 and to_numpy(frozen).shape == (1, 2)


def test_reward_normalizer_scales_by_the_discounted_return_std(xp):
    rng = np.random.default_rng(4)
    gamma, envs = 0.9, 3
    norm = RewardNormalizer(envs, gamma=gamma, clip=5.0, xp=xp, dtype=xp.float64)
    ret = np.zeros(envs)
    returns_seen = []
    for step in range(12):
        r = rng.standard_normal(envs) * 2 + 1
        done = rng.uniform(size=envs) < 0.25
        ret = gamma * ret + r
        returns_seen.append(ret.copy())
        expected = np.clip(r / np.sqrt(np.var(np.concatenate(returns_seen)) + 1e-8), -5, 5)
        ret[done] = 0.0
        out = norm(from_numpy(xp, r), from_numpy(xp, done))
        assert_close(out, expected, xp=xp, rtol=1e-10, atol=1e-12, err_msg=f"step {step}")


def test_advantages_are_standardized(xp):
    adv = np.random.default_rng(5).standard_normal((4, 5)) * 3 + 2
    out = normalize_advantages(from_numpy(xp, adv))
    assert_close(out, (adv - adv.mean()) / (adv.std() + 1e-8), xp=xp)


def test_bad_rl_inputs_are_refused():
    with pytest.raises(ValueError, match=r"RunningMeanStd.update: batch must have shape \(B, \*\(3,\)\)"):
        RunningMeanStd(3).update(np.ones((4, 2)))
    with pytest.raises(ValueError, match="RewardNormalizer: gamma must be in"):
        RewardNormalizer(2, gamma=1.5)
    with pytest.raises(ValueError, match=r"rewards must have shape \(2,\)"):
        RewardNormalizer(2)(np.ones(3))
    with pytest.raises(ValueError, match="normalize_advantages: advantages must hold at least 2 values"):
        normalize_advantages(np.ones(1))
    with pytest.raises(TypeError, match="batch must have a real floating dtype"):
        RunningMeanStd(()).update(np.ones(3, dtype=np.int64))
