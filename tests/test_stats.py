from __future__ import annotations

import pytest

import numpy as np

from dpo_pipeline.evaluation.compare import paired_change, run_ci, shared_prompts, side_by_side
from dpo_pipeline.evaluation.schema import PAIRWISE
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


def run_records(values: list, outcomes: list | None = None, field: str = "severity_match") -> list[dict]:
    """eval_outputs.jsonl records with SFT+DPO's `field` per prompt (and an entry eval may add later)."""
    outcomes = outcomes or [None] * len(values)
    return [{"id": f"eval-{i:05d}", "prompt": "p", "dpo": {"text": "t", "tokens": 3, field: v},
             PAIRWISE: {"outcome": o, "reason": "r"}, "pairwise_dpo_vs_base": {"outcome": "win"}}
            for i, (v, o) in enumerate(zip(values, outcomes))]


def test_paired_change_flags_a_shift_and_not_noise():
    base = [1.0] * 140 + [0.0] * 60
    shifted = [0.0] * 10 + [1.0] * 130 + [1.0] * 40 + [0.0] * 20  # 40 prompts fixed, 10 broken: +0.15
    change = paired_change(run_records(base), run_records(shifted), "severity_match", "severity_match", 2000, 42)
    assert change.n == 200 and 0 < change.low < 0.15 < change.high
    assert change.beyond_noise
    noisy = [0.0] * 20 + [1.0] * 120 + [1.0] * 20 + [0.0] * 40   # 20 fixed, 20 broken: the same mean
    change = paired_change(run_records(base), run_records(noisy), "severity_match", "severity_match", 2000, 42)
    assert change.low < 0 < change.high and not change.beyond_noise
    assert change == paired_change(run_records(base), run_records(noisy), "severity_match", "severity_match",
                                   2000, 42)  # seeded


def test_pairing_sees_a_change_that_the_two_runs_cis_hide():
    """Faithfulness spread 1-5 across prompts; this branch scores a point higher on a fifth of them."""
    base = [1 + i % 5 for i in range(200)]
    head = [v + (1 if i % 5 == 0 else 0) for i, v in enumerate(base)]
    change = paired_change(run_records(base, field="faithfulness"), run_records(head, field="faithfulness"),
                           "faithfulness", "faithfulness", 2000, 0)
    assert change.beyond_noise and 0.1 < change.low < 0.2 < change.high
    apart = side_by_side(bootstrap_ci(base, 2000, 0), bootstrap_ci(head, 2000, 0))
    assert not apart.beyond_noise  # each run's own CI is ~0.4 wide: they overlap


def test_paired_change_skips_invalid_values_and_unshared_prompts():
    base = run_records([1.0] * 10, ["loss"] * 8 + [None, "tie"])
    head = run_records([1.0] * 12, ["win"] * 7 + [None] + ["win"] * 4)  # two prompts base did not have
    assert shared_prompts(base, head) == 10
    change = paired_change(base, head, PAIRWISE, "", 500, 0)
    assert change.n == 8  # prompt 7 invalid here, prompt 8 invalid there; 10 and 11 unshared
    # Seven losses became wins (+1 each), a tie became a win (+0.5): every resample's mean is in [0.5, 1].
    assert 0.5 < change.low < change.high == 1.0 and change.beyond_noise
    assert paired_change(base, head[:0], PAIRWISE, "", 500, 0) is None


def test_side_by_side_counts_only_cis_that_do_not_overlap():
    eval_metrics = {PAIRWISE: {"win_rate": 0.57, "ci_low": 0.54, "ci_high": 0.6}}
    eval_ci = {"severity_match": {"sft": {"low": 0.8, "high": 0.87}, "dpo": {"low": 0.94, "high": 0.98}}}
    assert run_ci(eval_metrics, eval_ci, PAIRWISE) == (0.54, 0.6)
    assert run_ci(eval_metrics, eval_ci, "severity_match") == (0.94, 0.98)
    assert run_ci({}, {}, "severity_match") is None and side_by_side(None, (0.1, 0.2)) is None
    assert side_by_side((0.94, 0.98), (0.85, 0.93)).beyond_noise
    assert not side_by_side((0.94, 0.98), (0.9, 0.95)).beyond_noise
