"""The reward-model judge on a tiny reward model trained here on the rubric's pairs: it ranks held-out candidates
as the rubric does far more often than chance; batched scoring equals one-at-a-time scoring with and without a
pad token, when the pad token ends every conversation, and with absolute positions; rewards are cached by the
model's content; best vs worst with a margin; eval's judged metrics; and tools.judges on rubric vs reward model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dpo_pipeline.config import load_params
from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.schema import FAITHFULNESS, JUDGED, REWARD, model_metrics
from dpo_pipeline.evaluation.scoring import aggregate, records
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.judging.base import pairwise_both_orders
from dpo_pipeline.judging.pairs import build_pairs, reward_gaps
from dpo_pipeline.judging.reliability import reliability
from dpo_pipeline.judging.reward_model import RewardModelJudge
from dpo_pipeline.judging.rubric import RubricJudge
from dpo_pipeline.tasks import incident_triage
from tests.support.models import rubric_pairs, train_reward_model
from tests.support.stages import ROOT

SFT = read_jsonl(ROOT / "data/incident_triage/sft.jsonl", required=("prompt", "response"))
PARAMS = load_params(ROOT / "params.yaml")
REPORT = "Ticket from support. payments is completely down. All customers are affected. There is no workaround."
GOOD = '{"severity": "SEV1", "service": "payments", "summary": "payments outage for all customers"}'
BROKEN = GOOD[:20]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    return train_reward_model(tmp_path_factory.mktemp("rm"), SFT[:150])


def judge(model: Path, cache: Path, **settings) -> RewardModelJudge:
    cfg = PARAMS.judge.model_copy(update={"backend": "reward_model", "reward_model": str(model),
                                          "cache_dir": str(cache), **settings})
    return RewardModelJudge(cfg)


def test_it_ranks_held_out_candidates_as_the_rubric_does(reward_model, tmp_path):
    """Held-out prompts (rows the model never saw), their candidates labelled by the rubric: measured 0.88 of
    the 689 pairs ranked as the rubric ranks them; chance is 0.5."""
    held_out = rubric_pairs(SFT[3000:3200], seed=1)
    verdicts = judge(reward_model, tmp_path).pairwise_all(held_out)  # the rubric's chosen is always A
    accuracy = sum({"A": 1.0, "tie": 0.5, "B": 0.0}[v.winner] for v in verdicts) / len(verdicts)
    assert len(held_out) > 500 and accuracy >= 0.7, accuracy


def variant(model: Path, out: Path, tokenizer=None, config=None) -> Path:
    """A copy of `model` with its tokenizer or config changed."""
    from transformers import AutoTokenizer

    shutil.copytree(model, out)
    if tokenizer:
        tok = AutoTokenizer.from_pretrained(model)
        tokenizer(tok)
        tok.save_pretrained(out)
    if config:
        cfg = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps(cfg | config))
    return out


def no_pad(tok) -> None:
    tok.pad_token = None


def pad_is_eos_and_ends_every_conversation(tok) -> None:
    tok.pad_token = tok.eos_token
    tok.chat_template = tok.chat_template.replace("<|end|>\n{% endfor %}", "<|end|>{% endfor %}")


def gpt2_reward_model(out: Path) -> Path:
    """Absolute position embeddings: left padding without positions counted from the first real token would
    move every token of a shorter row."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from dpo_pipeline.models.tiny import build_tokenizer
    from tests.support.models import TEXTS

    tok = build_tokenizer(TEXTS, 320)
    torch.manual_seed(0)
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=512,
                                             num_labels=1, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
                                             eos_token_id=tok.eos_token_id)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_batched_scoring_equals_one_at_a_time(reward_model, tmp_path):
    """Conversations of many lengths, scored 7 at a time (left-padded) and one at a time, equal each other and
    the model's own output on the unpadded conversation: with the model as trained, without a pad token, with
    the pad token the end-of-turn token every conversation ends with (where the model's own way to find the
    last token, looking for the pad token, scores the wrong one), and with absolute positions (GPT-2)."""
    items = [(SFT[i]["prompt"], SFT[i]["response"][:7 * (i % 9) + 3]) for i in range(3900, 3912)]
    models = {"as trained": reward_model,
              "no pad token": variant(reward_model, tmp_path / "no-pad", no_pad, {"pad_token_id": None}),
              "pad = eos, last": variant(reward_model, tmp_path / "eos", pad_is_eos_and_ends_every_conversation,
                                         {"pad_token_id": 1}),
              "gpt2": gpt2_reward_model(tmp_path / "gpt2")}
    from transformers import AutoModelForSequenceClassification

    for name, model in models.items():
        batched = judge(model, tmp_path / name / "7", reward_batch_size=7)
        rewards = batched.rewards(items)
        single = judge(model, tmp_path / name / "1", reward_batch_size=1).rewards(items)
        assert rewards == pytest.approx(single, abs=1e-5), name
        # the model's own output on each conversation alone, unpadded: without a pad id it reads the last token
        hf = AutoModelForSequenceClassification.from_pretrained(model).eval()
        hf.config.pad_token_id = None
        ids = [batched.tokenizer(batched.conversation(*item), add_special_tokens=False)["input_ids"] for item in items]
        with torch.no_grad():
            alone = [hf(input_ids=torch.tensor([x])).logits[0, 0].item() for x in ids]
        assert rewards == pytest.approx(alone, abs=1e-5), name
        assert len(set(map(len, ids))) > 6  # the rows really were padded
    # the trap the scoring avoids: with the pad token ending every conversation, the model's own pooling of
    # input ids scores the token before it
    model = models["pad = eos, last"]
    hf, scorer = AutoModelForSequenceClassification.from_pretrained(model).eval(), judge(model, tmp_path / "trap")
    x = scorer.tokenizer(scorer.conversation(*items[0]), add_special_tokens=False)["input_ids"]
    assert x[-1] == hf.config.pad_token_id
    with torch.no_grad():
        own = hf(input_ids=torch.tensor([x])).logits[0, 0].item()
    assert abs(own - scorer.rewards(items[:1])[0]) > 1e-4


def test_rewards_are_cached_by_the_models_content(reward_model, tmp_path):
    items = [(REPORT, GOOD), (REPORT, BROKEN), (REPORT, GOOD)]
    first = judge(reward_model, tmp_path / "cache")
    rewards = first.rewards(items)
    assert first.usage.requests_sent == 2 and rewards[0] == rewards[2]  # the same conversation scored once
    copy = shutil.copytree(reward_model, tmp_path / "copy")  # another folder, the same content
    again = judge(copy, tmp_path / "cache")
    assert again.rewards(items) == rewards and again.usage.requests_sent == 0 and again.usage.cache_hits == 2
    assert again._model is None  # nothing to score: the model was never loaded
    other = judge(variant(reward_model, tmp_path / "other", config={"rms_norm_eps": 1e-5}), tmp_path / "cache")
    other.rewards(items)
    assert other.usage.requests_sent == 2  # other weights or config: other rewards
    estimate = judge(reward_model, tmp_path / "cache").estimate("pairwise", [(REPORT, GOOD, BROKEN), (REPORT, GOOD, GOOD)])
    assert (estimate.unique, estimate.cached, estimate.to_send, estimate.usd) == (2, 2, 0, 0.0)


def candidates(*texts: str) -> dict:
    return {"id": "x", "prompt": REPORT, "responses": [{"text": t, "temperature": 1.0} for t in texts]}


def test_two_candidates_are_scored_once_each_and_the_margin_makes_ties(reward_model, tmp_path):
    rm = judge(reward_model, tmp_path)
    pairs, judged, counts = build_pairs([candidates(BROKEN, GOOD), candidates(GOOD, GOOD)], rm)
    assert rm.usage.answers == 4 and rm.usage.requests_sent == 2  # scored, not asked in both orders
    assert [p["chosen"][0]["content"] for p in pairs] == [GOOD] and judged[0].picks == (1, 0)
    assert judged[0].gap > 0 and judged[0].verdict.reason.startswith("best ")
    assert judged[1].verdict.winner == "tie" and counts["ties"] == 1  # identical candidates: equal rewards
    assert reward_gaps(judged) == {"n": 1, **{k: round(judged[0].gap, 4) for k in ("mean", "median", "min", "max")}}
    wide = judge(reward_model, tmp_path, reward_margin=judged[0].gap + 1)
    pairs, judged, counts = build_pairs([candidates(BROKEN, GOOD)], wide)
    assert pairs == [] and counts["ties"] == 1 and reward_gaps(judged) is None
    [verdict] = pairwise_both_orders(rm, [(REPORT, GOOD, BROKEN)])
    assert verdict.verdict.winner == "A" and verdict.consistent and verdict.second is None  # one order


def test_eval_reports_mean_reward_instead_of_faithfulness(reward_model, tmp_path):
    """A reward model's pointwise answer is a reward, not a 1-5 score: eval's per-model judged metric is the mean
    reward under its own name, its pairwise verdicts compare rewards, and position flips are not measured."""
    rm = judge(reward_model, tmp_path)
    metrics = model_metrics(incident_triage, JUDGED[rm.pointwise])
    assert REWARD in metrics and FAITHFULNESS not in metrics and REWARD.scale is None and REWARD.per_prompt
    rows = [{"id": f"e{i}", "prompt": REPORT} for i in range(4)]
    texts = {"base": [BROKEN] * 4, "sft": [BROKEN, GOOD, BROKEN, GOOD], "dpo": [GOOD] * 4}
    outputs = {m: [{"text": t, "tokens": len(t)} for t in ts] for m, ts in texts.items()}
    scores = rm.score_all([(REPORT, t) for m in ("base", "sft", "dpo") for t in texts[m]])
    items = [(REPORT, a, b) for a, b in [*zip(texts["dpo"], texts["sft"]), *zip(texts["dpo"], texts["base"]),
                                         *zip(texts["sft"], texts["base"])]]
    judged = pairwise_both_orders(rm, items)
    recs = records(rows, outputs, scores, judged, incident_triage, metrics)
    assert isinstance(recs[0]["dpo"]["reward"], float) and "faithfulness" not in recs[0]["dpo"]
    ev, cis = aggregate(recs, metrics, 200, 0)
    assert ev["reward"]["dpo"] > ev["reward"]["base"] and "delta_dpo_sft" in cis["reward"]
    assert ev["pairwise_dpo_vs_base"]["win_rate"] == 1.0 and ev["pairwise_dpo_vs_sft"]["ties"] == 2
    trust = reliability(rm, items, judged, repeats=3, seed=0, task=incident_triage, reference=RubricJudge(incident_triage))
    assert trust["position_flip_rate"] is None and trust["self_consistency"] == 1.0
    assert trust["reference_agreement"] == 1.0  # the rubric agrees on these clear cases


def test_a_model_that_is_not_a_reward_model_is_refused(reward_model, tmp_path):
    from tests.support.models import save_tiny

    chat_model = save_tiny("qwen2", tmp_path / "qwen2")  # a causal LM: no reward head
    with pytest.raises(UserError, match="2 outputs"):
        judge(chat_model, tmp_path).rewards([(REPORT, GOOD)])
    untemplated = variant(reward_model, tmp_path / "plain", lambda tok: setattr(tok, "chat_template", None))
    (untemplated / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(UserError, match="no chat template"):
        judge(untemplated, tmp_path).rewards([(REPORT, GOOD)])
    with pytest.raises(UserError, match="not a model folder"):
        judge(tmp_path / "nowhere" / "rm", tmp_path)


def test_the_backend_needs_its_model(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["judge"]["backend"] = "reward_model"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="judge.reward_model"):
        load_params(tmp_path / "params.yaml")


def test_tools_judges_puts_the_rubric_and_the_reward_model_side_by_side(reward_model, tmp_path):
    """`python -m tools.judges --judges rubric reward_model` on sampled candidates, as a user runs it."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["task"]["module"] = str(ROOT / raw["task"]["module"])
    raw["judge"] |= {"reward_model": str(reward_model), "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "data/incident_triage").mkdir(parents=True)
    shutil.copy(ROOT / "data/incident_triage/policy.md", tmp_path / "data/incident_triage/policy.md")
    (tmp_path / "artifacts").mkdir()
    samples = [{"id": f"s{i}", "prompt": p, "responses": [{"text": c, "temperature": 0.7}, {"text": r, "temperature": 1.2}]}
               for i, (p, c, r) in enumerate(rubric_pairs(SFT[3200:3240], seed=2))]
    (tmp_path / "artifacts/samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tools.judges", "--judges", "rubric", "reward_model", "--n", "60",
                           "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    [pair] = out["agreement"]
    assert out["pairs"] == 60 and pair["judges"] == ["rubric", "reward_model"]
    assert out["judges"]["reward_model"]["position_flips"] is None and out["judges"]["rubric"]["position_flips"] == 0
    agree = pair["all"]
    assert agree["n"] == 60 and agree["ci_low"] <= agree["agreement"] <= agree["ci_high"]
    assert agree["agreement"] >= 0.65  # measured 0.87; chance is 1/2 (neither judge ties on these pairs)
    table = subprocess.run([sys.executable, "-m", "tools.judges", "--judges", "rubric", "reward_model", "--n", "60"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0 and "rubric vs reward_model" in table.stdout, table.stderr
    raw["judge"]["reward_model"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "tools.judges", "--judges", "rubric", "reward_model"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "judge.reward_model" in proc.stderr, proc.stderr


def test_the_memory_plan_counts_the_reward_model_in_the_judge_stage_and_eval(reward_model):
    from transformers import AutoModelForSequenceClassification

    from dpo_pipeline.models import memory

    params = memory.with_settings(PARAMS, {"judge.backend": "reward_model", "judge.reward_model": str(reward_model)})
    shape, lens = memory.model_shape(params), memory.lengths(params)
    n = sum(p.numel() for p in AutoModelForSequenceClassification.from_pretrained(reward_model).parameters())
    judge_stage = memory.estimate(params, "judge", "cuda", shape, lens)
    assert judge_stage.phase.name == "reward model scoring" and judge_stage.phase.parts["pass"] > 0
    assert judge_stage.phase.parts["weights"] == pytest.approx(2 * n, rel=0.01)  # bf16; the one-output head
    assert [p.name for p in memory.reward_model_phases(params, "cpu", lens, "eval")] == ["reward model scoring",
                                                                                         "loading"]
    assert memory.estimate(PARAMS, "judge", "cuda", shape, lens).peak == 0  # the rubric loads no model
