from __future__ import annotations

import pytest

import numpy as np

from dpo_pipeline.evaluation.stats import bootstrap_ci, length_controlled, pairwise_summary, win_rate


def test_win_rate_counts_ties_as_half():
    assert win_rate(["win", "loss", "tie", "tie"]) == 0.5
    assert win_rate(["win", "win", "tie", "loss"]) == pytest.approx(0.625)


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    values = [1.0] * 60 + [0.5] * 100 + [0.0] * 40
    lo, hi = bootstrap_ci(values, samples=2000, seed=1)
    assert lo < 0.55 < hi
    assert (lo, hi) == bootstrap_ci(values, samples=2000, seed=1)
    # The normal approximation: half-width ~ 1.96 * sd / sqrt(n) ~ 0.048 here.
    assert 0.08 < hi - lo < 0.11


def test_bootstrap_ci_narrows_with_more_prompts():
    small = bootstrap_ci([1.0, 0.0] * 25, 1000, 0)
    large = bootstrap_ci([1.0, 0.0] * 400, 1000, 0)
    assert large[1] - large[0] < (small[1] - small[0]) / 3


def test_pairwise_summary():
    s = pairwise_summary(["win"] * 30 + ["tie"] * 60 + ["loss"] * 10, samples=1000, seed=0)
    assert (s["wins"], s["losses"], s["ties"], s["n"]) == (30, 10, 60, 100)
    assert s["win_rate"] == 0.6
    assert 0.5 < s["ci_low"] < 0.6 < s["ci_high"]
    unanimous = pairwise_summary(["win"] * 20, samples=500, seed=0)
    assert unanimous["ci_low"] == unanimous["ci_high"] == 1.0


def synthetic(n: int, intercept: float, slope: float, mean_diff: float, seed: int = 0):
    """Outcomes drawn from P(win) = sigmoid(intercept + slope * tanh(d / sd(d))): the true length-controlled
    win rate is sigmoid(intercept)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(mean_diff, 20, n)
    p = 1 / (1 + np.exp(-(intercept + slope * np.tanh(d / d.std()))))
    return list((rng.random(n) < p).astype(float)), list(d)


def test_length_controlled_win_rate_removes_a_known_length_effect():
    # The judge likes length (slope 2) and the first model writes longer answers: it wins 2 in 3 raw,
    # yet at equal length it is no better (intercept 0: 50%).
    y, d = synthetic(3000, intercept=0.0, slope=2.0, mean_diff=15)
    assert np.mean(y) > 0.62
    lc = length_controlled(y, d, samples=300, seed=0)
    assert lc["lc_ci_low"] < 0.5 < lc["lc_ci_high"]
    assert abs(lc["lc_win_rate"] - 0.5) < 0.04 and lc["length_coef"] > 1.5
    assert lc == length_controlled(y, d, samples=300, seed=0)


def test_without_a_length_effect_the_controlled_rate_is_the_raw_one():
    y, d = synthetic(3000, intercept=0.8, slope=0.0, mean_diff=15)  # sigmoid(0.8) = 0.69
    lc = length_controlled(y, d, samples=300, seed=0)
    assert abs(lc["lc_win_rate"] - np.mean(y)) < 0.02 and abs(lc["length_coef"]) < 0.3
    assert lc["lc_ci_low"] < 0.69 < lc["lc_ci_high"]


def test_length_controlled_handles_ties_equal_lengths_and_unanimity():
    ties = length_controlled([0.5] * 40, [3.0, -3.0] * 20, samples=100, seed=0)
    assert ties["lc_win_rate"] == 0.5 and ties["length_coef"] == 0.0
    same_length = length_controlled([1.0, 0.0, 1.0, 1.0] * 10, [0.0] * 40, samples=100, seed=0)
    assert same_length["lc_win_rate"] == 0.75  # no length difference: nothing to control for
    assert length_controlled([1.0] * 20, [5.0] * 20, samples=100, seed=0)["lc_win_rate"] == 1.0
