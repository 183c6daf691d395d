from __future__ import annotations

import pytest

from dpo_pipeline.evaluation.stats import bootstrap_ci, pairwise_summary, win_rate


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
