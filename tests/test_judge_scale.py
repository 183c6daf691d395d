"""Claude judging at scale (issue 15): a job past one Message Batch, resumed after a kill, and the rate
limits held client-side, all through the real SDK against the local Messages + Message Batches API server."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from dpo_pipeline.config import load_params
from dpo_pipeline.errors import UserError
from dpo_pipeline.judging.claude import AnthropicJudge
from dpo_pipeline.judging.limits import (BATCH_MAX_BYTES, BATCH_MAX_REQUESTS, ENVELOPE_BYTES, RateLimiter,
                                         request_bytes, split_batches)
from dpo_pipeline.judging.pairs import build_pairs
from dpo_pipeline.judging.rubric import RubricJudge
from dpo_pipeline.tasks import incident_triage as task
from dpo_pipeline.tasks.incident_triage_data import generate
from tests.support.fake_anthropic import FakeAnthropic, policy_answer

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-ant-test-SECRET-0123456789"
POLICY = (ROOT / "data" / "incident_triage" / "policy.md").read_text()
REPORT = "Ticket from support. payments is completely down. All customers are affected. There is no workaround."
SLACK_S = 0.15  # how late a request may reach the server after its turn (a new client's first request)


def rows(n: int = 12) -> list[dict]:
    """`n` prompts, two different responses each: 2n pairwise requests (both orders)."""
    out = []
    for i, r in enumerate(generate(seed=11, n_sft=n, n_prompts=1, n_eval=1)["sft"]):
        report = task.parse_report(r["prompt"])
        good = '{"severity": "%s", "service": "%s", "summary": "%s incident"}' % (
            task.policy_severity(r["prompt"]), report.service, report.service)
        out.append({"id": f"p{i}", "prompt": r["prompt"],
                    "responses": [{"text": good, "temperature": 0.7},
                                  {"text": [r["response"], good[:25]][i % 2], "temperature": 1.2}]})
    return out


def rubric_pairs(data: list[dict]) -> list[tuple]:
    pairs, _, _ = build_pairs(data, RubricJudge(task))
    return [(p["id"], p["chosen"], p["rejected"]) for p in pairs]


def judge_params(**judge) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["judge"].update({"backend": "anthropic", "max_retries": 4, "timeout_s": 5, "concurrency": 4,
                         "batch_poll_s": 0.05, **judge})
    return raw


def judge_for(tmp_path: Path, **judge) -> AnthropicJudge:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(judge_params(cache_dir=str(tmp_path / "cache"), **judge)))
    return AnthropicJudge(load_params(path).judge, POLICY, KEY, strict_validation=True)


def both_orders(data: list[dict]) -> list[tuple[str, str, str]]:
    items = [(r["prompt"], r["responses"][0]["text"], r["responses"][1]["text"]) for r in data]
    return items + [(p, b, a) for p, a, b in items]


def sent(fake: FakeAnthropic, path: str = "/v1/messages", method: str = "POST") -> list[dict]:
    return [r for r in fake.requests if r["method"] == method and r["path"] == path]


# --- what one batch may hold ---------------------------------------------------------------------------------


def test_a_job_is_cut_into_batches_within_both_limits():
    requests = {f"k{i:02d}": {"text": "x" * (i % 4)} for i in range(24)}
    assert BATCH_MAX_REQUESTS == 100_000 and BATCH_MAX_BYTES == 256_000_000  # the API's caps
    assert split_batches(requests) == [requests]
    cut = split_batches(requests, max_requests=5)
    assert [len(b) for b in cut] == [5, 5, 5, 5, 4] and [k for b in cut for k in b] == list(requests)
    # By size: each batch's JSON within the cap, and none could have taken the next request too.
    cap = ENVELOPE_BYTES + 3 * request_bytes("k00", {"text": "xxx"})
    cut = split_batches(requests, max_bytes=cap)
    size = [ENVELOPE_BYTES + sum(request_bytes(k, b) for k, b in batch.items()) for batch in cut]
    assert [k for b in cut for k in b] == list(requests) and all(s <= cap for s in size)
    assert all(s + request_bytes(next(iter(after)), {}) > cap for s, after in zip(size, cut[1:]))
    with pytest.raises(UserError, match="more than a Message Batch holds"):
        split_batches({"big": {"text": "x" * 1000}}, max_bytes=500)


def test_a_job_past_the_batch_limit_is_several_batches_polled_at_once(tmp_path):
    data = rows(12)
    with FakeAnthropic(policy_answer, batch_polls=3) as fake:
        judge = judge_for(tmp_path, base_url=fake.base_url, mode="batch", batch_max_requests=5, batch_poll_s=0.3)
        estimate = judge.estimate("pairwise", both_orders(data))
        assert (estimate.to_send, estimate.batches) == (24, 5)
        pairs, _, _ = build_pairs(data, judge)
        assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == rubric_pairs(data)
        assert fake.batch_creations == len(fake.batches) == 5 and fake.message_count == 0
        assert [len(b["requests"]) for b in fake.batches.values()] == [5, 5, 5, 5, 4]
        ids = [r["custom_id"] for b in fake.batches.values() for r in b["requests"]]
        assert len(ids) == len(set(ids)) == 24  # every request in exactly one batch
        # Polled at once: all five were polled before the first one's results were fetched.
        gets = [r["path"].split("/")[4:] for r in fake.requests if r["method"] == "GET"]
        first_results = next(i for i, parts in enumerate(gets) if parts[1:] == ["results"])
        assert {parts[0] for parts in gets[:first_results]} == set(fake.batches)
        # The size counted is never less than what the SDK sent.
        for post in sent(fake, "/v1/messages/batches"):
            counted = ENVELOPE_BYTES + sum(request_bytes(r["custom_id"], r["params"]) for r in post["body"]["requests"])
            assert int(post["headers"]["content-length"]) <= counted
    assert judge.cache.open_batches(judge.cfg.model) == []
    assert judge.usage.spent_usd > 0


def cached(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]


def test_each_batch_is_cached_as_it_ends_while_the_next_is_being_created(tmp_path):
    data, out = rows(12), {}

    def run() -> None:  # the judge (and its SQLite connection) lives in this thread
        judge = judge_for(tmp_path, base_url=fake.base_url, mode="batch", batch_max_requests=5)
        out["pairs"] = build_pairs(data, judge)[0]

    with FakeAnthropic(policy_answer, batch_polls=2) as fake:
        fake.hold_batches_after = 2
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 10
        while fake.batch_creations < 3 and time.monotonic() < deadline:  # the judge and its cache exist
            time.sleep(0.02)
        db = sqlite3.connect(tmp_path / "cache" / "judge.sqlite")
        while cached(db) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        # Two batches' answers are cached while the run still waits to create the third.
        assert cached(db) == 10
        assert thread.is_alive() and len(fake.batches) == 2 and fake.batch_creations >= 3
        fake.release()  # the held creation fails without an answer; the SDK retries it
        thread.join(30)
        assert len(fake.batches) == 5 and fake.message_count == 0
    assert [(p["id"], p["chosen"], p["rejected"]) for p in out["pairs"]] == rubric_pairs(data)


# --- the judge stage killed after 2 of 5 batches, then resumed --------------------------------------------------


def judge_process(work: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ANTHROPIC_API_KEY": KEY}
    return subprocess.Popen([sys.executable, "-m", "stages.judge"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stage_dir(tmp_path: Path, data: list[dict], **judge) -> Path:
    work = tmp_path / "work"
    (work / "data" / "incident_triage").mkdir(parents=True)
    (work / "data" / "incident_triage" / "policy.md").write_text(POLICY)
    raw = judge_params(cache_dir=str(tmp_path / "cache"), **judge)
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    path = work / raw["paths"]["samples"]
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return work


def test_a_run_killed_after_two_of_five_batches_polls_them_and_creates_only_the_rest(tmp_path):
    data = rows(12)
    with FakeAnthropic(policy_answer, batch_polls=10**9) as fake:  # no batch ends while the first run lives
        fake.hold_batches_after = 2
        work = stage_dir(tmp_path, data, base_url=fake.base_url, mode="batch", batch_max_requests=5)
        proc, deadline = judge_process(work), time.monotonic() + 20
        while fake.batch_creations < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        first = set(fake.batches)
        db = sqlite3.connect(tmp_path / "cache" / "judge.sqlite")
        assert len(first) == 2 and {r[0] for r in db.execute("SELECT id FROM batches WHERE status = 'submitted'")} == first
        killed_at = len(fake.requests)
        fake.batch_polls = 1  # the two the killed run created have ended meanwhile
        fake.release()
        proc = judge_process(work)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        # 3 creations before the kill (the third held, never created), 3 after: the first two were polled.
        assert fake.batch_creations == 6 and len(fake.batches) == 5 and fake.message_count == 0
        polled = {r["path"].split("/")[4] for r in fake.requests[killed_at:] if r["method"] == "GET"}
        assert first <= polled and all(f"resuming message batch {b}" in stdout for b in first)
        ids = [r["custom_id"] for b in fake.batches.values() for r in b["requests"]]
        assert len(ids) == len(set(ids)) == 24  # nothing paid twice
    assert db.execute("SELECT COUNT(*) FROM batches WHERE status = 'submitted'").fetchone()[0] == 0
    written = [json.loads(x) for x in (work / "artifacts" / "preferences.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == [p[0] for p in rubric_pairs(data)]


# --- rate limits held client-side ------------------------------------------------------------------------------


def test_the_limiter_books_the_slower_of_its_two_limits_from_when_each_request_passes():
    now, late = [0.0], [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds + late[0]

    async def passes(*tokens: int) -> list[float]:
        out = []
        for n in tokens:
            await limiter.wait(n)
            out.append(now[0])
        return out

    async def scenario() -> list[list[float]]:
        first = await passes(50, 50, 50, 50)  # 50 tokens take 0.5 s to earn, as long as the request gap
        now[0] = 10.0  # idle: no burst saved up, the next goes at once and the one after waits its turn
        second = await passes(300, 10, 10)  # 300 tokens hold the next back 3 s
        late[0] = 0.2  # a busy CPU wakes each sleeper 0.2 s late: the next is booked from then, not bunched
        return [first, second, await passes(10, 10, 10)]

    limiter = RateLimiter(120, 6000, clock=lambda: now[0], sleep=sleep)  # 2 requests, 100 input tokens a second
    assert asyncio.run(scenario()) == [[0.0, 0.5, 1.0, 1.5], [10.0, 13.0, 13.5], pytest.approx([14.2, 14.9, 15.6])]
    assert not RateLimiter(None, None).limited


def arrivals(fake: FakeAnthropic) -> list[float]:
    return sorted(r["time"] for r in sent(fake))


def assert_spaced(times: list[float], gap: float) -> None:
    """The k-th request after any other arrived at least k gaps later: no window of w seconds holds more
    than w / gap requests, plus one."""
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            assert times[j] - times[i] >= (j - i) * gap - SLACK_S, (i, j, times[j] - times[i])


def test_requests_per_minute_is_held_against_the_server(tmp_path):
    with FakeAnthropic(policy_answer) as fake:
        judge = judge_for(tmp_path, base_url=fake.base_url, requests_per_minute=120, concurrency=4)
        scores = judge.score_all([(REPORT, f"response {i:02d}") for i in range(12)])
        times = arrivals(fake)
    assert len(times) == 12 and all(s is not None for s in scores)
    assert_spaced(times, 60 / 120)
    rate = (len(times) - 1) / (times[-1] - times[0]) * 60
    print(f"\nrequests_per_minute 120: {rate:.1f} requests/min achieved at the server")
    assert 0.75 * 120 <= rate <= 120 * 1.03


def test_input_tokens_per_minute_delays_requests_too(tmp_path):
    items = [(REPORT, f"response {i:02d}") for i in range(8)]
    with FakeAnthropic(policy_answer) as fake:
        probe = judge_for(tmp_path / "probe", base_url=fake.base_url)
        tokens = probe._tokens(probe.body("score", items[0]))[0]  # every request the same length
        limit = int(tokens * 60 * 2.5)  # 2.5 requests' worth of input tokens a second; no request limit
        judge = judge_for(tmp_path, base_url=fake.base_url, input_tokens_per_minute=limit, concurrency=8)
        judge.score_all(items)
        times = arrivals(fake)
    assert len(times) == 8
    assert_spaced(times, tokens / (limit / 60))
    rate = tokens * (len(times) - 1) / (times[-1] - times[0]) * 60
    print(f"\ninput_tokens_per_minute {limit:,}: {rate:,.0f} input tokens/min achieved (estimated, {tokens} a request)")
    assert 0.75 * limit <= rate <= limit * 1.03
