"""Iterative DPO's wiring: the round stages tools.rounds writes into dvc.yaml, round k's files and prompts,
the eval pairs and the report's verdict on each round. The run itself: tests/test_e2e.py (two rounds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpo_pipeline.config import load_params
from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.schema import pair_label, pairs
from dpo_pipeline.reporting.iterative import findings
from dpo_pipeline.reporting.tables import header, table_rows
from dpo_pipeline.rounds import adapters, prompt_block, round_paths
from tools.rounds import render

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = (ROOT / "dvc.yaml").read_text()
PARAMS = load_params(ROOT / "params.yaml")
ONE_ROUND = {("sft_data", "prepare"), ("sft_data", "sft"), ("sft_data", "eval_baselines"),
             ("prepare", "sft"), ("prepare", "sample"), ("sft", "sample"), ("sample", "judge"), ("prepare", "train"),
             ("sft", "train"), ("judge", "train"), ("prepare", "eval_baselines"), ("sft", "eval_baselines"),
             ("prepare", "eval"), ("sft", "eval"), ("train", "eval"), ("eval_baselines", "eval"),
             ("judge", "report"), ("train", "report"), ("eval", "report"),
             ("sample", "report")}  # the report page shows the dropped prompts' candidates


def edges(text: str) -> set[tuple[str, str]]:
    """(a, b) for every stage b that depends on an output or metric of stage a, paths as dvc.yaml writes them."""
    stages = yaml.safe_load(text)["stages"]
    produced = {}
    for name, spec in stages.items():
        for entry in spec.get("outs", []) + spec.get("metrics", []):
            produced[next(iter(entry)) if isinstance(entry, dict) else entry] = name
    return {(produced[d], name) for name, spec in stages.items() for d in spec.get("deps", []) if d in produced}


def test_the_committed_dvc_yaml_matches_params_rounds():
    proc = subprocess.run([sys.executable, "-m", "tools.rounds", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert PARAMS.rounds == 1 and render(DVC_YAML, 1) == DVC_YAML


def test_one_round_is_the_plain_pipeline():
    assert edges(render(DVC_YAML, 1)) == ONE_ROUND
    assert set(yaml.safe_load(render(DVC_YAML, 1))["stages"]) == {"code", "sft_data", "prepare", "sft", "sample",
                                                                  "judge", "train", "eval_baselines", "eval", "report"}


def test_round_k_depends_on_the_rounds_before_it_only():
    three = render(DVC_YAML, 3)
    stages, graph = yaml.safe_load(three)["stages"], edges(three)
    assert graph >= ONE_ROUND
    assert {a for a, b in graph if b == "sample_r3"} == {"prepare", "sft", "train", "train_r2"}
    assert {a for a, b in graph if b == "train_r3"} == {"prepare", "sft", "train", "train_r2", "judge_r3"}
    assert {a for a, b in graph if b == "judge_r2"} == {"sample_r2"}
    # nothing of round 1 depends on a later round, nothing of round 2 on round 3
    assert not {(a, b) for a, b in graph if a.endswith("_r2") and b in ("prepare", "sft", "sample", "judge", "train")}
    assert not {(a, b) for a, b in graph if a.endswith("_r3") and b.endswith("_r2")}
    assert {a for a, b in graph if b == "eval"} == {"prepare", "sft", "eval_baselines", "train", "train_r2", "train_r3"}
    assert {a for a, b in graph if b == "eval_baselines"} == {"sft_data", "prepare", "sft"}  # no round re-runs them
    # round 1's stages are written exactly as with one round; later rounds read `iterate`, round 1 never does
    one = yaml.safe_load(render(DVC_YAML, 1))["stages"]
    assert all(stages[s] == one[s] for s in ("prepare", "sft", "sample", "judge", "train", "eval_baselines"))
    assert "iterate.reference" in stages["train_r3"]["params"] and stages["train_r3"]["cmd"].endswith("--round 3")
    assert not any("iterate" in str(one[s]["params"]) for s in one)
    # and back: the regions hold nothing again
    assert render(three, 1) == DVC_YAML


def test_round_files_and_policies():
    assert round_paths(PARAMS.paths, 1) == PARAMS.paths
    two = round_paths(PARAMS.paths, 2)
    assert (two.samples, two.dpo_model, two.train_metrics) == ("rounds/2/samples.jsonl", "rounds/2/dpo",
                                                               "rounds/2/train.json")
    assert two.base_model == PARAMS.paths.base_model and two.eval_metrics == PARAMS.paths.eval_metrics
    assert adapters(PARAMS.paths, 0) == [] and adapters(PARAMS.paths, 3) == ["models/dpo", "rounds/2/dpo",
                                                                             "rounds/3/dpo"]


def with_params(**over):
    data = PARAMS.model_dump()
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            data[section] = {**data[section], field: value}
        else:
            data[section] = value
    return type(PARAMS).model_validate(data)


def test_which_prompts_each_round_samples():
    reuse = with_params(rounds=3, sample__max_prompts=100)
    assert prompt_block(reuse, 1, 1000) == prompt_block(reuse, 3, 1000) == slice(0, 100)
    fresh = with_params(rounds=3, sample__max_prompts=100, iterate__prompts="fresh")
    assert [prompt_block(fresh, k, 1000) for k in (1, 2, 3)] == [slice(0, 100), slice(100, 200), slice(200, 300)]
    with pytest.raises(UserError, match="iterate.prompts fresh: round 3 needs new prompts"):
        prompt_block(fresh, 3, 250)
    with pytest.raises(UserError, match="sample.max_prompts takes all of them"):
        prompt_block(with_params(rounds=2, iterate__prompts="fresh"), 2, 1000)


def test_rounds_params_are_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        with_params(rounds=0)
    with pytest.raises(ValidationError, match="needs preferences.source generated"):
        with_params(rounds=2, preferences__source="hf:HuggingFaceH4/ultrafeedback_binarized")
    with pytest.raises(ValidationError):
        with_params(iterate__reference="base")


def test_a_round_number_on_the_command_line_is_checked(capsys):
    from dpo_pipeline.cli import stage_parser
    from dpo_pipeline.rounds import check

    parser = stage_parser("A stage.", with_round=True)
    assert parser.parse_args([]).round_num == 1 and parser.parse_args(["--round", "3"]).round_num == 3
    for bad in (["--round", "x"], ["--round", "1"], ["--round2"]):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(bad)
        assert stop.value.code == 2
    assert "--round: expected a round number >= 2" in capsys.readouterr().err
    check(PARAMS, 1)
    with pytest.raises(UserError, match="--round 2: params.yaml's rounds is 1, so there is no round 2"):
        check(PARAMS, 2)


def test_each_round_is_judged_against_sft_and_the_round_before():
    keys = pairs(3)
    assert list(keys)[:3] == ["pairwise_dpo_vs_sft", "pairwise_dpo_vs_base", "pairwise_sft_vs_base"]
    assert keys["pairwise_dpo_r2_vs_dpo"] == ("dpo_r2", "dpo") and keys["pairwise_dpo_r3_vs_dpo_r2"] == ("dpo_r3", "dpo_r2")
    assert pair_label("pairwise_dpo_r3_vs_dpo_r2") == "DPO round 3 vs DPO round 2"
    assert pairs(1) == dict(list(keys.items())[:3])


def win(rate, low, high):
    return {"win_rate": rate, "ci_low": low, "ci_high": high, "wins": 1, "losses": 1, "ties": 0,
            "lc_win_rate": rate, "lc_ci_low": low, "lc_ci_high": high}


def kl(value, low, high):
    return {"kl": value, "kl_ci_low": low, "kl_ci_high": high, "kl_per_token": value / 10}


def two_rounds(vs_before, kl2=kl(1.0, 0.8, 1.2)):
    return {"pairwise_dpo_vs_sft": win(0.6, 0.55, 0.65), "pairwise_dpo_r2_vs_sft": win(0.62, 0.56, 0.68),
            "pairwise_dpo_r2_vs_dpo": vs_before, "kl_dpo_vs_sft": kl(1.0, 0.8, 1.2), "kl_dpo_r2_vs_sft": kl2}


def test_the_report_says_when_a_round_stopped_helping_or_drifted():
    from dpo_pipeline.evaluation.schema import FAITHFULNESS

    cfg, metrics = PARAMS.report, [FAITHFULNESS]
    flat_metric = {"faithfulness": {"delta_dpo_r2_dpo": {"low": -0.1, "high": 0.1}}}
    up_metric = {"faithfulness": {"delta_dpo_r2_dpo": {"low": 0.02, "high": 0.15}}}
    down_metric = {"faithfulness": {"delta_dpo_r2_dpo": {"low": -0.3, "high": -0.1}}}
    assert findings(two_rounds(win(0.58, 0.53, 0.63)), flat_metric, metrics, 2, cfg) == []
    flat = findings(two_rounds(win(0.51, 0.46, 0.56)), flat_metric, metrics, 2, cfg)
    assert [f.rule for f in flat] == ["round 2 stopped helping"]
    # a pairwise tie with a significant metric gain is still help (the judge's ceiling, measured on the defaults)
    assert findings(two_rounds(win(0.51, 0.50, 0.53)), up_metric, metrics, 2, cfg) == []
    drifting = findings(two_rounds(win(0.51, 0.46, 0.56), kl(3.0, 2.5, 3.5)), flat_metric, metrics, 2, cfg)
    assert [f.rule for f in drifting] == ["round 2 stopped helping while drifting from SFT"]
    assert "grew from 1.0 [0.8, 1.2] to 3.0 [2.5, 3.5]" in drifting[0].evidence
    worse = findings(two_rounds(win(0.40, 0.35, 0.45), kl(12.0, 11.0, 13.0)), flat_metric, metrics, 2, cfg)
    assert [f.rule for f in worse] == ["round 2 made the model worse", "round 2 drifted from SFT"]
    lost_metric = findings(two_rounds(win(0.51, 0.46, 0.56)), down_metric, metrics, 2, cfg)
    assert [f.rule for f in lost_metric] == ["round 2 made the model worse"]
    assert "significantly worse: faithfulness" in lost_metric[0].evidence


def test_the_table_grows_a_column_per_round():
    names = ("base", "sft", "dpo", "dpo_r2")
    ev = {"faithfulness": dict(zip(names, (2.0, 3.0, 3.2, 3.4))), **two_rounds(win(0.58, 0.53, 0.63))}
    cis = {"faithfulness": {**{n: {"low": 1.0, "high": 4.0} for n in names},
                            "delta_dpo_sft": {"low": 0.1, "high": 0.3}, "delta_dpo_r2_sft": {"low": 0.2, "high": 0.6}}}
    from dpo_pipeline.evaluation.schema import FAITHFULNESS

    head = header(names)
    assert head == ["Metric", "Base", "SFT", "SFT+DPO", "DPO round 2", "Δ DPO round 2 over SFT"]
    rows = table_rows(ev, cis, [FAITHFULNESS], names)
    assert all(len(r) == len(head) for r in rows)
    assert rows[0][-1] == "+0.40 [+0.20, +0.60]"  # the last round's gain over SFT
    assert rows[-1][-2] == "58.0% [53.0%, 63.0%]"  # round 2 against round 1
    assert header() == ["Metric", "Base", "SFT", "SFT+DPO", "Δ DPO over SFT"]


def test_the_rounds_section_gives_each_round_against_the_one_before():
    from dpo_pipeline.evaluation.schema import FAITHFULNESS
    from dpo_pipeline.reporting.iterative import section

    names = ("base", "sft", "dpo", "dpo_r2")
    ev = {"faithfulness": dict(zip(names, (2.0, 3.0, 3.2, 3.5))), **two_rounds(win(0.58, 0.53, 0.63))}
    cis = {"faithfulness": {"delta_dpo_r2_dpo": {"low": 0.1, "high": 0.5}}}
    train = {"eval_final": {"rewards/margins": 1.0, "rewards/accuracies": 0.9}, "kl": {"final": 1.5}}
    rounds = [{"round": k, "judge": {"pairs": 50, "prompts": 80}, "train": train} for k in (1, 2)]
    lines = section(ev, cis, [FAITHFULNESS], rounds, PARAMS.report)
    assert lines[0] == "## Iterative DPO: 2 rounds"
    assert "- Round 2 over round 1 (paired over prompts, 95% CI): faithfulness +0.3 [+0.1, +0.5]." in lines
    assert any(line.startswith("| 2 | 50 of 80 prompts |") and line.endswith("| 58.0% [53.0%, 63.0%] |")
               for line in lines)
    assert "- **Every round helped**: against the round before, round 2 preferred pairwise 58.0% [53.0%, 63.0%], " \
           "significantly better on faithfulness." in lines
