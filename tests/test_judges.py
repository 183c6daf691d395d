"""The judge seam, the rubric backend, position-bias handling and building preference pairs."""

from __future__ import annotations

from dpo_pipeline.judging.pairs import add_label_noise, agreement, build_pairs
from dpo_pipeline.judging.base import Usage, Verdict, pairwise_both_orders
from dpo_pipeline.judging.rubric import RubricJudge
from dpo_pipeline.tasks import incident_triage

REPORT = "Ticket from support. payments is completely down. All customers are affected. There is no workaround."
GOOD = '{"severity": "SEV1", "service": "payments", "summary": "payments outage for all customers"}'
WRONG = GOOD.replace("SEV1", "SEV2")
BROKEN = GOOD[:20]


class FirstPositionJudge:
    """A judge with pure position bias: always prefers whatever is shown first."""

    name, positional = "biased", True

    def __init__(self):
        self.usage = Usage()

    def pairwise_all(self, items):
        return [Verdict(winner="A", reason="first") for _ in items]


class InvalidJudge:
    """A judge whose every answer failed validation."""

    name, positional = "invalid", True

    def __init__(self):
        self.usage = Usage()

    def pairwise_all(self, items):
        return [None for _ in items]


def test_rubric_pairwise_prefers_policy_and_schema():
    judge = RubricJudge(incident_triage)
    assert judge.score(REPORT, GOOD).score == 5
    assert judge.pairwise(REPORT, GOOD, WRONG).winner == "A"
    assert judge.pairwise(REPORT, BROKEN, WRONG).winner == "B"
    assert judge.pairwise(REPORT, GOOD, GOOD).winner == "tie"


def test_both_orders_agree_for_a_consistent_judge():
    [judged] = pairwise_both_orders(RubricJudge(incident_triage), [(REPORT, WRONG, GOOD)])
    assert judged.verdict.winner == "B" and judged.consistent


def test_position_bias_becomes_a_tie():
    [judged] = pairwise_both_orders(FirstPositionJudge(), [(REPORT, GOOD, WRONG)])
    assert judged.verdict.winner == "tie" and not judged.consistent


def test_an_invalid_answer_in_either_order_excludes_the_pair():
    [judged] = pairwise_both_orders(InvalidJudge(), [(REPORT, GOOD, WRONG)])
    assert judged.verdict is None


def sample_row(i, a, b):
    return {"id": f"p{i}", "prompt": REPORT,
            "responses": [{"text": a, "temperature": 0.7, "tokens": 30}, {"text": b, "temperature": 1.2, "tokens": 40}]}


def test_build_pairs_keeps_winners_in_trl_format_and_counts_ties():
    samples = [sample_row(0, GOOD, WRONG), sample_row(1, BROKEN, GOOD), sample_row(2, GOOD, GOOD)]
    pairs, _, counts = build_pairs(samples, RubricJudge(incident_triage))
    assert [p["id"] for p in pairs] == ["p0", "p1"]
    assert pairs[0]["prompt"] == [{"role": "user", "content": REPORT}]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": GOOD}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": WRONG}]
    assert (pairs[1]["chosen_temperature"], pairs[1]["rejected_temperature"]) == (1.2, 0.7)
    # p2's two responses are identical: a tie without asking, so not counted as position-consistent
    assert counts["ties"] == 1 and counts["position_consistent"] == 2 and counts["asked"] == 2


def test_build_pairs_drops_position_inconsistent_and_invalid_verdicts():
    pairs, _, counts = build_pairs([sample_row(0, GOOD, WRONG)], FirstPositionJudge())
    assert pairs == [] and counts["ties"] == 1 and counts["position_consistent"] == 0
    pairs, _, counts = build_pairs([sample_row(0, GOOD, WRONG)], InvalidJudge())
    assert pairs == [] and counts["invalid"] == 1 and counts["ties"] == 0


def test_agreement_between_judges():
    same = pairwise_both_orders(RubricJudge(incident_triage), [(REPORT, GOOD, WRONG), (REPORT, WRONG, GOOD)])
    biased = pairwise_both_orders(FirstPositionJudge(), [(REPORT, GOOD, WRONG), (REPORT, WRONG, GOOD)])
    assert agreement(same, same) == 1.0
    assert agreement(biased, same) == 0.0  # the biased judge ties both; the rubric picks a winner
    assert agreement(pairwise_both_orders(InvalidJudge(), [(REPORT, GOOD, WRONG)]), same[:1]) is None


def test_label_noise_flips_a_seeded_share_of_pairs():
    pairs = [{"id": i, "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(50)]
    noisy, flipped = add_label_noise(pairs, 0.2, seed=1)
    assert flipped == 10 == sum(p.get("label_flipped", False) for p in noisy)
    assert all(p["chosen"].startswith("bad") == p.get("label_flipped", False) for p in noisy)
    assert add_label_noise(pairs, 0.2, seed=1) == (noisy, 10)  # the same pairs every run
    assert add_label_noise(pairs, 0.0, seed=1) == (pairs, 0)


def candidates(*texts: str) -> dict:
    return {"id": "p", "prompt": REPORT, "responses": [{"text": t, "temperature": 0.5 + i / 10, "tokens": 1}
                                                       for i, t in enumerate(texts)]}


def test_more_than_two_candidates_pair_the_best_with_the_worst():
    judge = RubricJudge(incident_triage)
    samples = [candidates(WRONG, GOOD, BROKEN, WRONG),   # scores 3, 5, 1, 3
               candidates(GOOD, GOOD, GOOD, GOOD),       # all 5: a tie, dropped
               candidates(BROKEN, WRONG, GOOD, GOOD)]    # 1, 3, 5, 5: the first of the best
    pairs, judged, counts = build_pairs(samples, judge)
    assert judge.usage.answers == 12  # one score per candidate: num_candidates calls a prompt
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [(GOOD, BROKEN)] * 2
    assert [(p["chosen_temperature"], p["rejected_temperature"]) for p in pairs] == [(0.6, 0.7), (0.7, 0.5)]
    assert counts["ties"] == 1 and counts["invalid"] == 0
    assert [j.picks for j in judged] == [(1, 2), (0, 0), (2, 0)]


class PartlyInvalidScorer:
    """Scores the candidates in `valid` (flat indices over all prompts' candidates); the rest are invalid."""

    name, positional, margin = "partly", True, 0.0

    def __init__(self, valid: dict[int, int]):
        self.valid = valid

    def score_all(self, items):
        from dpo_pipeline.judging.base import Score

        return [Score(score=self.valid[i], reason="") if i in self.valid else None for i in range(len(items))]


def test_best_vs_worst_uses_valid_scores_only_and_needs_two():
    samples = [candidates(GOOD, WRONG, BROKEN), candidates(GOOD, WRONG, BROKEN)]
    pairs, judged, counts = build_pairs(samples, PartlyInvalidScorer({0: 2, 2: 4, 4: 5}))
    assert [j.picks for j in judged[:1]] == [(2, 0)]  # the invalid middle candidate is skipped
    assert judged[1].verdict is None and counts["invalid"] == 1  # one valid score of three: invalid
    assert len(pairs) == 1 and pairs[0]["chosen"][0]["content"] == BROKEN
