"""Judge reliability metrics: the arithmetic on tiny in-test judges, then the anthropic judge through the real
SDK against the local Messages API server, unbiased and position-biased on purpose."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dpo_pipeline.config import load_params
from dpo_pipeline.judging.base import Estimate, Judge, Judged, Usage, Verdict, pairwise_both_orders
from dpo_pipeline.judging.cache import request_key
from dpo_pipeline.judging.claude import AnthropicJudge
from dpo_pipeline.judging.reliability import reliability, repeat_sample
from dpo_pipeline.judging.rubric import RubricJudge
from dpo_pipeline.tasks import incident_triage as task
from dpo_pipeline.tasks import number_summary
from dpo_pipeline.tasks.incident_triage_data import generate
from tests.support.fake_anthropic import FakeAnthropic, policy_answer

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-ant-test-SECRET-0123456789"
POLICY = (ROOT / "data" / "incident_triage" / "policy.md").read_text()


# --- the arithmetic, on judges written here -----------------------------------------------------------------


class Scripted(Judge):
    """A judge whose verdict is `rule(prompt, a, b, repeat)`; it records every call it gets."""

    remote = False

    def __init__(self, rule, name: str = "scripted"):
        self.rule, self.name, self.usage, self.calls = rule, name, Usage(), []

    def score_all(self, items):
        raise NotImplementedError

    def pairwise_all(self, items, repeat=0):
        self.calls.append((list(items), repeat))
        return [None if (w := self.rule(*item, repeat)) is None else Verdict(winner=w, reason="scripted")
                for item in items]

    def estimate(self, kind, items, repeat=0):
        return Estimate(calls=len(items), unique=len(set(items)), cached=0, to_send=0)


RIGHT = SimpleNamespace(correct=lambda prompt, response: response.startswith("right"))


def longer(prompt, a, b, repeat):
    """Content-based and order-free: the longer response wins; equal lengths tie."""
    return "tie" if len(a) == len(b) else ("A" if len(a) > len(b) else "B")


def first_position(prompt, a, b, repeat):
    return "A"


ITEMS = [("p0", "right answer", "wrong"), ("p1", "wrong and long", "right"), ("p2", "right", "right"),
         ("p3", "wrong!", "wrong?"), ("p4", "right, long", "wrong")]


def test_an_order_free_judge_never_flips_and_is_scored_against_the_truth():
    judge = Scripted(longer)
    judged = pairwise_both_orders(judge, ITEMS)
    m = reliability(judge, ITEMS, judged, repeats=0, seed=0, task=RIGHT)
    # p2's two responses are identical: a tie by rule, never asked, left out of the judge's reliability
    assert m["position_flip_rate"] == 0.0 and m["n"] == m["n_valid"] == 4 and judge.usage.identical_skipped == 1
    assert ("p2", "right", "right") not in judge.calls[0][0] and len(judge.calls[0][0]) == 8
    # Exactly one right in p0, p1, p4; "longer" picks the right one in p0 and p4, the wrong one in p1.
    assert m["truth_n"] == 3 and m["truth_agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["self_consistency"] is None and m["repeats"] == 0 and len(judge.calls) == 1  # nothing asked again


def test_a_position_biased_judge_flips_everywhere_and_scores_chance_against_the_truth():
    judge = Scripted(first_position, name="biased")
    judged = pairwise_both_orders(judge, ITEMS)
    m = reliability(judge, ITEMS, judged, repeats=0, seed=0, task=RIGHT, reference=Scripted(longer, "ref"))
    assert m["position_flip_rate"] == 1.0
    assert m["truth_agreement"] == 0.5  # every verdict became a tie: half credit each
    # Its verdicts are all ties; of the four items asked (not p2) the reference ties only on p3.
    assert m["reference_agreement"] == 0.25 and m["reference_backend"] == "ref"


def test_flip_rate_counts_only_items_answered_validly_in_both_orders():
    tie, a = Verdict(winner="tie", reason=""), Verdict(winner="A", reason="")
    judged = [Judged(a, True, first=a), Judged(tie, False, first=a), Judged(None, False, first=a),
              Judged(tie, True, first=tie)]
    m = reliability(Scripted(longer), ITEMS[:4], judged, repeats=0, seed=0, task=RIGHT)
    assert (m["n"], m["n_valid"], m["position_flip_rate"]) == (4, 3, pytest.approx(1 / 3, abs=1e-4))


def test_self_consistency_asks_a_seeded_sample_again_as_repeat_one():
    items = [(f"p{i}", "x" * (i % 3), "x") for i in range(30)]

    def moody(prompt, a, b, repeat):  # changes its mind on repeats, for prompts ending in 0-4
        return "B" if repeat and int(prompt[-1]) < 5 else longer(prompt, a, b, repeat)

    judge = Scripted(moody)
    judged = pairwise_both_orders(judge, items)
    m = reliability(judge, items, judged, repeats=10, seed=7, task=RIGHT)
    [(asked, repeat)] = judge.calls[1:]
    assert repeat == 1 and len(asked) == m["repeats"] == 10
    kept = [item for item in items if item[1] != item[2]]  # identical responses: a tie, never asked
    assert [p for p, _, _ in asked] == [kept[i][0] for i in repeat_sample(list(range(len(kept))), 10, 7)]
    changed = [p for p, a, b in asked if int(p[-1]) < 5 and longer(p, a, b, 0) != "B"]
    assert m["self_consistency"] == pytest.approx(1 - len(changed) / 10, abs=1e-4)
    assert repeat_sample(list(range(30)), 10, 7) == repeat_sample(list(range(30)), 10, 7)  # seeded
    assert repeat_sample(list(range(3)), 10, 7) == [0, 1, 2]  # fewer items than repeats: all of them


def test_repeats_skip_items_whose_first_answer_was_invalid():
    judge = Scripted(lambda p, a, b, repeat: None if p == "p0" else "tie")
    judged = pairwise_both_orders(judge, ITEMS)
    m = reliability(judge, ITEMS, judged, repeats=10, seed=0, task=RIGHT)
    # p0 answered invalidly, p2's responses are identical (never asked): p1, p3 and p4 are asked again
    assert "p0" not in [p for p, _, _ in judge.calls[-1][0]] and m["repeats"] == 3
    assert m["self_consistency"] == 1.0 and m["n_valid"] == 3


def test_no_ground_truth_and_no_reference_are_none_not_zero():
    judge = Scripted(longer)
    judged = pairwise_both_orders(judge, ITEMS)
    m = reliability(judge, ITEMS, judged, repeats=0, seed=0, task=number_summary,
                    reference=Scripted(first_position, name="scripted"))  # the judge's own backend
    assert (m["truth_agreement"], m["truth_n"]) == (None, None)
    assert (m["reference_agreement"], m["reference_backend"]) == (None, None)


def test_the_rubric_is_self_consistent_by_construction_and_agrees_with_the_truth():
    items = mixed_items()
    judge = RubricJudge(task)
    m = reliability(judge, items, pairwise_both_orders(judge, items), repeats=5, seed=0, task=task,
                    reference=RubricJudge(task))
    assert m["self_consistency"] == 1.0 and m["position_flip_rate"] == 0.0
    assert m["truth_agreement"] == 1.0 and m["truth_n"] == 9
    assert m["reference_agreement"] is None  # the rubric is the reference


def test_incident_triage_truth_is_the_policy_severity_whatever_the_format():
    prompt, good = mixed_items()[0][:2]
    assert task.correct(prompt, good) and task.correct(prompt, "Sure! " + good)  # severity right, form broken
    assert not task.correct(prompt, good[:25]) and not task.correct(prompt, wrong_severity(prompt, good))


def test_a_repeat_has_its_own_cache_key_and_repeat_zero_keeps_the_old_one():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    old = hashlib.sha256(json.dumps({"backend": "anthropic", "template": "1", "request": body},
                                    sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert request_key("anthropic", "1", body) == old  # nothing cached before repeats existed is lost
    assert len({request_key("anthropic", "1", body, r) for r in (0, 1, 2)}) == 3


# --- the anthropic judge against the local Messages API server ----------------------------------------------


def wrong_severity(prompt: str, good: str) -> str:
    want = task.policy_severity(prompt)
    other = task.SEVERITIES[(task.SEVERITIES.index(want) + 2) % 4]
    return good.replace(f'"{want}"', f'"{other}"')


def mixed_items(n: int = 12) -> list[tuple[str, str, str]]:
    """Right vs wrong severity both ways round, malformed vs right, and identical (a tie), in turn."""
    out = []
    for i, r in enumerate(generate(seed=11, n_sft=n, n_prompts=1, n_eval=1)["sft"]):
        p = r["prompt"]
        service = task.parse_report(p).service
        good = json.dumps({"severity": task.policy_severity(p), "service": service,
                           "summary": f"{service} incident"})
        wrong = wrong_severity(p, good)
        out.append([(p, good, wrong), (p, wrong, good), (p, good[:25], good), (p, good, good)][i % 4])
    return out


def judge_on(fake: FakeAnthropic, cache: Path, **judge) -> AnthropicJudge:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["judge"].update({"backend": "anthropic", "base_url": fake.base_url, "cache_dir": str(cache),
                         "max_retries": 2, "timeout_s": 5, "concurrency": 4, "batch_poll_s": 0.01, **judge})
    path = cache.parent / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return AnthropicJudge(load_params(path).judge, POLICY, KEY, strict_validation=True)


def measure(judge: AnthropicJudge, items, repeats: int = 5) -> dict:
    judged = pairwise_both_orders(judge, items)
    return reliability(judge, items, judged, repeats=repeats, seed=3, task=task, reference=RubricJudge(task))


BOTH_ORDERS = 2 * 9  # 12 items, 3 of them two identical responses: a tie without a request


def test_an_unbiased_claude_judge_is_reliable(tmp_path):
    with FakeAnthropic(policy_answer) as fake:
        m = measure(judge_on(fake, tmp_path / "cache"), mixed_items())
        assert fake.message_count == BOTH_ORDERS + 5  # the repeats were sent, not read from the cache
    assert m == {"backend": "anthropic", "n": 9, "n_valid": 9, "position_flip_rate": 0.0,
                 "self_consistency": 1.0, "repeats": 5, "truth_agreement": 1.0, "truth_n": 9,
                 "reference_agreement": 1.0, "reference_backend": "rubric"}


def test_the_metrics_reveal_a_position_biased_claude_judge(tmp_path):
    with FakeAnthropic(policy_answer, position_bias="A") as fake:
        judge = judge_on(fake, tmp_path / "cache")
        m = measure(judge, mixed_items())
        assert fake.message_count == BOTH_ORDERS + 5
    assert m["position_flip_rate"] == 1.0  # the verdict follows the order on every item
    assert m["truth_agreement"] == 0.5     # both-orders turns every verdict into a tie: chance
    assert m["reference_agreement"] == 0.0  # the rubric ties only on the identical items, never asked
    assert m["self_consistency"] == 1.0    # consistently biased: repeats alone would not reveal it
    assert judge.usage.answers == BOTH_ORDERS + 5 and judge.usage.identical_skipped == 3


def test_repeats_are_real_requests_cached_once(tmp_path):
    seen: Counter = Counter()

    def flaky(body: dict) -> dict:
        """The policy's verdict the first time a request is seen, a different one every time after."""
        answer = policy_answer(body)
        key = json.dumps(body, sort_keys=True)
        seen[key] += 1
        if seen[key] > 1 and "winner" in answer:
            answer["winner"] = {"A": "B", "B": "A", "tie": "A"}[answer["winner"]]
        return answer

    with FakeAnthropic(flaky) as fake:
        m = measure(judge_on(fake, tmp_path / "cache"), mixed_items())
        assert fake.message_count == BOTH_ORDERS + 5
    assert m["self_consistency"] == 0.0  # a repeat served from the first answer's entry would score 1
    assert sqlite3.connect(tmp_path / "cache" / "judge.sqlite").execute(
        "SELECT COUNT(*) FROM judgments").fetchone()[0] == BOTH_ORDERS + 5
    with FakeAnthropic(flaky) as fake:  # a re-run pays nothing and measures the same
        judge = judge_on(fake, tmp_path / "cache")
        assert measure(judge, mixed_items()) == m and fake.message_count == 0
        assert judge.usage.spent_usd == 0


def test_repeats_go_through_the_message_batches_api_in_batch_mode(tmp_path):
    with FakeAnthropic(policy_answer, position_bias="B") as fake:
        m = measure(judge_on(fake, tmp_path / "cache", mode="batch"), mixed_items())
        assert len(fake.batches) == 2 and fake.message_count == 0  # both orders, then the repeats
        assert [len(b["requests"]) for b in fake.batches.values()] == [BOTH_ORDERS, 5]
    assert m["position_flip_rate"] == 1.0 and m["self_consistency"] == 1.0


def test_the_estimate_counts_a_repeat_as_a_request_to_send(tmp_path):
    with FakeAnthropic(policy_answer) as fake:
        judge = judge_on(fake, tmp_path / "cache")
        items = mixed_items()
        measure(judge, items)
        first = judge.estimate("pairwise", items[:4])
        again = judge.estimate("pairwise", items[:4], repeat=2)  # repeat 2 was never asked
        assert fake.message_count == BOTH_ORDERS + 5
    # items[3]'s two responses are identical: never sent, so not counted either way
    assert first.to_send == 0 and again.to_send == 3 and again.usd > 0
