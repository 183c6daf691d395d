"""The report's diagnostics: each rule fires on the evidence it names, and a clean run is called healthy."""

from __future__ import annotations

import copy

import pytest

from dpo_pipeline.config import ReportParams
from dpo_pipeline.evaluation.schema import model_metrics
from dpo_pipeline.reporting.diagnostics import diagnose, healthy_evidence, reflection
from dpo_pipeline.tasks import incident_triage

METRICS = model_metrics(incident_triage)
CFG = ReportParams(examples=3, flat_margin=0.1, flat_accuracy=0.6, kl_drift=10.0, kl_spike=2.0, length_ratio=1.2,
                   page_max_mb=20)


def delta(low, high):
    return {"delta_dpo_sft": {"low": low, "high": high}}


HEALTHY = {
    "ev": {"format_conformance": {"sft": 0.9, "dpo": 0.95}, "severity_match": {"sft": 0.8, "dpo": 0.9},
           "faithfulness": {"sft": 4.4, "dpo": 4.7}, "mean_tokens": {"sft": 33.0, "dpo": 32.0},
           "pairwise_dpo_vs_sft": {"win_rate": 0.57, "ci_low": 0.54, "ci_high": 0.6, "wins": 50, "losses": 10,
                                   "ties": 240},
           "kl_dpo_vs_sft": {"kl": 1.9, "kl_per_token": 0.06}},
    "cis": {"format_conformance": delta(0.01, 0.07), "severity_match": delta(0.05, 0.15),
            "faithfulness": delta(0.2, 0.4)},
    "train": {"eval_final": {"rewards/margins": 2.4, "rewards/accuracies": 0.94},
              "kl": {"final": 2.0, "max": 2.5}},
}


def run(**changes):
    case = copy.deepcopy(HEALTHY)
    for path, value in changes.items():
        *keys, last = path.split("__")
        node = case
        for k in keys:
            node = node[k]
        node[last] = value
    return [f.rule for f in diagnose(case["ev"], case["cis"], case["train"], CFG, METRICS)]


def test_a_clean_run_is_healthy_with_its_evidence():
    assert run() == []
    text = healthy_evidence(HEALTHY["ev"], HEALTHY["cis"], HEALTHY["train"], METRICS)
    assert "win rate 57.0%" in text and "format conformance, severity match, faithfulness" in text


@pytest.mark.parametrize("changes, rule", [
    ({"train__eval_final": {"rewards/margins": 0.02, "rewards/accuracies": 0.52}}, "no preference learning"),
    ({"train__kl": {"final": 14.0, "max": 15.0}}, "beta too low"),
    ({"train__kl": {"final": 2.0, "max": 6.0}}, "KL spike"),
    ({"ev__pairwise_dpo_vs_sft__ci_low": 0.48}, "reward gap grew but DPO did not win"),
    ({"cis__faithfulness": delta(-0.3, -0.1)}, "DPO wins one metric and loses another"),
    ({"ev__mean_tokens": {"sft": 30.0, "dpo": 45.0}}, "length exploitation"),
])
def test_each_rule_fires_on_its_evidence(changes, rule):
    rules = run(**changes)
    assert len(rules) == 1 and rules[0].startswith(rule)


def test_reflection_states_what_moved_and_what_did_not():
    case = copy.deepcopy(HEALTHY)
    case["cis"]["faithfulness"] = delta(-0.05, 0.3)
    text = "\n".join(reflection(case["ev"], case["cis"], case["train"], METRICS))
    assert "faithfulness: SFT 4.4 -> SFT+DPO 4.7 (+0.3, 95% CI [-0.05, +0.3], not significant)" in text
    assert "What it did: format conformance, severity match." in text
    assert "What it didn't: faithfulness." in text


@pytest.mark.parametrize("kl, rule", [
    ({"final": 2.0, "max": 6.0, "final_ci": [1.5, 2.6], "max_ci": [4.0, 8.0]}, ["KL spike"]),
    # The same readings, but one sampled sequence a prompt leaves them too noisy to call a spike.
    ({"final": 2.0, "max": 6.0, "final_ci": [0.8, 3.4], "max_ci": [2.5, 9.9]}, []),
    ({"final": 14.0, "max": 15.0, "final_ci": [12.0, 16.0], "max_ci": [13.0, 17.0]}, ["beta too low: KL drift"]),
    ({"final": 14.0, "max": 15.0, "final_ci": [6.0, 22.0], "max_ci": [7.0, 23.0]}, []),
])
def test_kl_rules_fire_only_when_the_ci_says_so(kl, rule):
    assert run(train__kl=kl) == rule


def test_length_exploitation_reads_the_length_controlled_win_rate():
    won_by_length = {"win_rate": 0.6, "ci_low": 0.55, "ci_high": 0.65, "wins": 60, "losses": 20, "ties": 120,
                     "lc_win_rate": 0.51, "lc_ci_low": 0.46, "lc_ci_high": 0.56}
    assert run(ev__pairwise_dpo_vs_sft=won_by_length, ev__mean_tokens={"sft": 30.0, "dpo": 33.0}) == [
        "length exploitation"]
    # Much longer, yet the win survives length control: the judge is not rewarding length.
    honest = dict(won_by_length, lc_win_rate=0.6, lc_ci_low=0.55)
    assert run(ev__pairwise_dpo_vs_sft=honest, ev__mean_tokens={"sft": 30.0, "dpo": 45.0}) == []
