"""The beta-sweep reader and the regression gate's comparison (pure units)."""

from __future__ import annotations

import copy

from dpo_pipeline.config import GateParams
from dpo_pipeline.evaluation.schema import model_metrics
from dpo_pipeline.tasks import incident_triage
from tools.gate import problems
from tools.sweep import kl_trend, rows_from


def run_data(beta: float, kl: float, win: float) -> dict:
    task = {"name": "incident_triage", "module": "dpo_pipeline/tasks/incident_triage.py"}
    return {"params": {"params.yaml": {"data": {"task": task, "train": {"beta": beta}}}},
            "metrics": {"metrics/train.json": {"data": {"kl": {"final": kl, "max": kl},
                                                        "eval_final": {"rewards/margins": 1.0,
                                                                       "rewards/accuracies": 0.9}}},
                        "metrics/eval.json": {"data": {"pairwise_dpo_vs_sft": {"win_rate": win, "ci_low": win - .03,
                                                                               "ci_high": win + .03},
                                                       "format_conformance": {"dpo": 1.0},
                                                       "severity_match": {"dpo": 0.9}}}}}


def test_rows_from_exp_show_reads_baseline_and_experiments_sorted_by_beta():
    shown = [
        {"rev": "workspace", "name": None, "data": run_data(0.1, 2.0, 0.56)},
        {"rev": "abc1234def", "name": "main", "data": run_data(0.1, 2.0, 0.56), "experiments": [
            {"revs": [{"rev": "e1", "name": "exp-high", "data": run_data(0.5, 0.45, 0.55)}]},
            {"revs": [{"rev": "e2", "name": "exp-low", "data": run_data(0.01, 1.9, 0.54)}]},
            {"revs": [{"rev": "e3", "name": "failed", "data": {"params": {}, "metrics": {}}}]},
        ]},
    ]
    rows = rows_from(shown)
    assert [(r["beta"], r["experiment"]) for r in rows] == [(0.01, "exp-low"), (0.1, "main"), (0.5, "exp-high")]
    low, high = kl_trend(rows)
    assert low["kl"] == 1.9 and high["kl"] == 0.45


EVAL = {"format_conformance": {"base": 0.94, "sft": 0.94, "dpo": 0.98},
        "severity_match": {"base": 0.71, "sft": 0.83, "dpo": 0.95},
        "faithfulness": {"base": 4.24, "sft": 4.52, "dpo": 4.86},
        "pairwise_dpo_vs_sft": {"win_rate": 0.567, "ci_low": 0.542}}
GATE = GateParams(rate_band=0.03, score_band=0.1, min_ci_low=0.5)
METRICS = model_metrics(incident_triage)


def test_gate_passes_within_bands_and_names_what_left_them():
    assert problems(EVAL, EVAL, GATE, METRICS) == []
    new = copy.deepcopy(EVAL)
    new["severity_match"]["dpo"] = 0.90
    new["faithfulness"]["sft"] = 4.6  # within 0.1
    assert problems(new, EVAL, GATE, METRICS) == ["severity_match.dpo: 0.9 vs committed 0.95 (band ±0.03)"]


def test_gate_fails_when_dpo_stops_beating_sft():
    new = copy.deepcopy(EVAL)
    new["pairwise_dpo_vs_sft"] = {"win_rate": 0.545, "ci_low": 0.49}
    assert problems(new, EVAL, GATE, METRICS) == ["pairwise_dpo_vs_sft.ci_low: 0.49 <= 0.5: DPO no longer beats SFT"]
