"""The beta-sweep reader and the regression gate's comparison (pure units)."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess

import pytest

from dpo_pipeline.evaluation.schema import model_metrics
from dpo_pipeline.tasks import incident_triage
from tools.gate import GateParams, problems
from tools import sweep
from tools.sweep import kl_trend, rows_from


def run_data(beta: float, kl: float, win: float, **changed) -> dict:
    """A run of `dvc exp show --json`: the defaults at `beta`, with `changed` params (section__key=value)."""
    params = {"seed": 42, "task": {"name": "incident_triage", "module": "dpo_pipeline/tasks/incident_triage.py"},
              "model": {"base": "builtin:tiny"}, "paths": {"reports": "reports"}, "rounds": 1,
              "train": {"beta": beta, "seed": None}}
    for key, value in changed.items():
        section, _, name = key.partition("__")
        if name:
            params[section][name] = value
        else:
            params[section] = value
    return {"params": {"params.yaml": {"data": params}},
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


def exp(name: str, data: dict) -> dict:
    return {"revs": [{"rev": f"{name}-rev", "name": name, "data": data, "experiments": None}], "name": name}


# The repository's experiments of every kind beside the sweep's (make seeds, make real, make rounds, a
# user's own): each is left out, whatever its beta; those at 0.01 and 0.9 would decide --check if counted.
OTHERS = [exp("seed-1", run_data(0.1, 9.0, 0.50, train__seed=1)),
          exp("real-smollm2", run_data(0.1, 0.2, 0.70, model__base="builtin:smollm2-135m",
                                       paths__reports="reports/real-smollm2")),
          exp("real-smollm2-rounds2", run_data(0.9, 7.0, 0.60, model__base="builtin:smollm2-135m", rounds=2)),
          exp("rounds-2", run_data(0.1, 3.0, 0.60, rounds=2, paths__reports="reports/rounds-2")),
          exp("low-beta-seed-3", run_data(0.01, 0.1, 0.50, train__seed=3))]
SWEEP = [exp("sweep-beta0.5", run_data(0.5, 2.5, 0.55)), exp("e7f3a21", run_data(0.01, 1.9, 0.54))]


def shown(*experiments: dict, base_kl: float = 5.5) -> list[dict]:
    return [{"rev": "workspace", "name": None, "data": run_data(0.1, 1.0, 0.5, rounds=2)},
            {"rev": "abc1234def", "name": "main", "data": run_data(0.1, base_kl, 0.56),
             "experiments": list(experiments)}]


def test_the_sweep_is_the_baseline_and_the_experiments_that_change_train_beta_alone():
    rows = rows_from(shown(*OTHERS, *SWEEP))
    assert [(r["beta"], r["experiment"]) for r in rows] == [(0.01, "e7f3a21"), (0.1, "main"), (0.5, "sweep-beta0.5")]
    low, high = kl_trend(rows)
    assert (low["experiment"], high["experiment"]) == ("e7f3a21", "sweep-beta0.5")


def test_kl_trend_compares_the_lowest_beta_with_the_highest_whatever_else_shares_a_beta():
    rows = rows_from(shown(exp("sweep-beta0.5", run_data(0.5, 2.5, 0.55)), exp("again", run_data(0.5, 2.4, 0.55)),
                          exp("sweep-beta0.3", run_data(0.3, 9.0, 0.55))))
    low, high = kl_trend(rows)  # the pair least likely to pass: 0.1's lowest KL against 0.5's highest
    assert (low["beta"], low["experiment"], high["beta"], high["kl"]) == (0.1, "main", 0.5, 2.5)
    with pytest.raises(Exception, match="at least two values of train.beta"):
        kl_trend(rows_from(shown(*OTHERS)))  # the baseline alone: the other experiments are no sweep


@pytest.mark.parametrize("base_kl, code", [(5.5, 0), (2.0, 1)])
def test_sweep_check_passes_or_fails_on_the_sweeps_runs_only(base_kl, code, tmp_path, monkeypatch, capsys):
    """The whole tool on `dvc exp show --json` output with every kind of experiment in it: at 0.1 the other
    experiments' KL runs from 0.2 to 9.0, and only the baseline's decides."""
    out = json.dumps(shown(*OTHERS, exp("sweep-beta0.5", run_data(0.5, 2.5, 0.55)), base_kl=base_kl))
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, out, ""))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    if code:
        with pytest.raises(SystemExit) as stopped:
            sweep.main(argparse.Namespace(check=True))
        assert stopped.value.code == 1
        assert "sweep: KL 2.0 at beta 0.1 (main) is not above KL 2.5 at beta 0.5 (sweep-beta0.5)" in \
            capsys.readouterr().err
    else:
        sweep.main(argparse.Namespace(check=True))
        assert "sweep: KL falls from 5.5 at beta 0.1 (main) to 2.5 at beta 0.5 (sweep-beta0.5)" in capsys.readouterr().out
    table = (tmp_path / "reports/sweep.md").read_text()
    assert "| main |" in table and "| sweep-beta0.5 |" in table
    assert not any(f"| {name} |" in table for name in ("seed-1", "real-smollm2", "rounds-2", "low-beta-seed-3"))


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
