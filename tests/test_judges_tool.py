"""`python -m tools.judges`: judges of different backends and models in one call, as a user checks a served
judge against Claude before paying for all: each over real HTTP, the official SDKs against the Messages API
server and an OpenAI-compatible server on 127.0.0.1 (tests/support/)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpo_pipeline.config import load_params
from dpo_pipeline.tasks import incident_triage as task
from dpo_pipeline.tasks.incident_triage_data import generate
from tests.support.fake_anthropic import FakeAnthropic, policy_answer
from tests.support.fake_openai import FakeOpenAI
from tools.judges import judge_settings, parse_spec

ROOT = Path(__file__).resolve().parents[1]
FREE = {"input_per_mtok": 0.0, "output_per_mtok": 0.0}


def workspace(tmp_path: Path, **judge) -> Path:
    """A project folder the tool runs in: params.yaml, the task's policy and sampled candidates of known quality
    (the policy's answer against a malformed one)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["task"]["module"] = str(ROOT / raw["task"]["module"])
    raw["judge"] |= {"cache_dir": str(tmp_path / "cache"), "max_retries": 2, "timeout_s": 30, **judge}
    raw["judge"]["prices"]["local-judge"] = FREE
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "data/incident_triage").mkdir(parents=True)
    (tmp_path / "data/incident_triage/policy.md").write_text((ROOT / "data/incident_triage/policy.md").read_text())
    rows = generate(seed=5, n_sft=16, n_prompts=1, n_eval=1)["sft"]
    samples = []
    for i, r in enumerate(rows):
        service = task.parse_report(r["prompt"]).service
        good = '{"severity": "%s", "service": "%s", "summary": "%s incident"}' % (
            task.policy_severity(r["prompt"]), service, service)
        samples.append({"id": f"s{i}", "prompt": r["prompt"],
                        "responses": [{"text": good, "temperature": 0.7}, {"text": good[:30], "temperature": 1.2}]})
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts/samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return tmp_path


def run_tool(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    return subprocess.run([sys.executable, "-m", "tools.judges", *args], cwd=cwd, capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(ROOT), **env}, timeout=300)


def test_claude_and_a_served_judge_side_by_side_in_one_call(tmp_path):
    work = workspace(tmp_path, backend="rubric")
    with FakeAnthropic(policy_answer) as claude, FakeOpenAI() as served:
        proc = run_tool(work, "--judges", "rubric", "anthropic:claude-haiku-4-5-20251001",
                        f"openai:local-judge@{served.base_url}", "--n", "12", "--json",
                        ANTHROPIC_API_KEY="sk-ant-test", ANTHROPIC_BASE_URL=claude.base_url,
                        CI="1")  # progress bars kept in the log, and still out of the JSON
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        sent_claude = {r["body"]["model"] for r in claude.requests if r["path"] == "/v1/messages"}
        sent_served = {r["body"]["model"] for r in served.completions}
    assert sent_claude == {"claude-haiku-4-5-20251001"} and sent_served == {"local-judge"}
    specs = ["rubric", "anthropic:claude-haiku-4-5-20251001", f"openai:local-judge@{served.base_url}"]
    assert list(out["judges"]) == specs and out["pairs"] == 12
    for spec in specs[1:]:  # both orders of every pair, all answered
        assert out["judges"][spec]["answered"] == 12 and out["judges"][spec]["invalid"] == 0
        assert out["judges"][spec]["position_flips"] == 0
    assert [row["judges"] for row in out["agreement"]] == [specs[:2], [specs[0], specs[2]], specs[1:]]
    # Both servers apply the written policy to a whole answer against a cut one, as the rubric does
    assert all(row["all"]["agreement"] == 1.0 and row["all"]["n"] == 12 for row in out["agreement"])


def test_a_bad_judge_is_one_line_before_anything_is_asked(tmp_path):
    work = workspace(tmp_path, backend="rubric")
    with FakeOpenAI() as served:
        for spec, words in ((f"openai:unpriced@{served.base_url}", "judge.prices.unpriced"),
                            ("openai:local-judge@127.0.0.1:8000", "a URL"), ("rubric:big", "no model"), ("reward_model@http://x", "no server"),
                            ("sglang", "the backend is one of")):
            proc = run_tool(work, "--judges", "anthropic", spec, ANTHROPIC_API_KEY="sk-ant-test",
                            ANTHROPIC_BASE_URL=served.base_url)
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
            assert "--judges" in proc.stderr and spec in proc.stderr and words in proc.stderr, proc.stderr
        assert served.requests == []


def test_a_judge_of_another_backend_leaves_params_server_alone(tmp_path):
    """params.yaml's judge.base_url is its own backend's server: a Claude judge named beside a served one must
    not be sent there."""
    params = load_params(workspace(tmp_path, backend="openai", model="local-judge",
                                   base_url="http://127.0.0.1:8000/v1") / "params.yaml")
    def settings(spec: str) -> dict:
        return judge_settings(params, parse_spec(spec))

    assert settings("openai")["base_url"] == "http://127.0.0.1:8000/v1"
    assert settings("openai:other")["model"] == "other"
    claude = settings("anthropic:claude-haiku-4-5-20251001")
    assert claude["base_url"] is None and claude["model"] == "claude-haiku-4-5-20251001"
    assert settings("anthropic@https://proxy.example/v1")["base_url"] == "https://proxy.example/v1"
    assert settings("reward_model:org/rm-8b")["reward_model"] == "org/rm-8b"
    for bad in ("rubric:x", "reward_model@http://x", "openai:m@localhost", "claude"):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(bad))):
            parse_spec(bad)
