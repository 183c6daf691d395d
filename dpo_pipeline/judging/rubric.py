"""The offline judge: applies the task's written policy and schema (the task's `rubric_score`)."""

from __future__ import annotations

from dpo_pipeline.judging.base import Estimate, Judge, Score, Usage, Verdict
from dpo_pipeline.tasks import Task


class RubricJudge(Judge):
    """Applies the task's written policy and schema to the prompt and responses; never sees a label.
    Deterministic and free: nothing is sent, nothing is cached, and a repeat is the same answer (its
    self-consistency is 1 by construction)."""

    name = "rubric"
    remote = False

    def __init__(self, task: Task):
        self.task = task
        self.usage = Usage()

    def score(self, prompt: str, response: str) -> Score:
        score, reason = self.task.rubric_score(prompt, response)
        return Score(score=score, reason=reason)

    def pairwise(self, prompt: str, a: str, b: str) -> Verdict:
        sa, sb = self.score(prompt, a), self.score(prompt, b)
        if sa.score == sb.score:
            return Verdict(winner="tie", reason=f"both score {sa.score}")
        winner = "A" if sa.score > sb.score else "B"
        return Verdict(winner=winner, reason=f"A {sa.score} ({sa.reason}) vs B {sb.score} ({sb.reason})")

    def score_all(self, items: list[tuple[str, str]]) -> list[Score | None]:
        self.usage.answers += len(items)
        return [self.score(*item) for item in items]

    def pairwise_all(self, items: list[tuple[str, str, str]], repeat: int = 0) -> list[Verdict | None]:
        self.usage.answers += len(items)
        return [self.pairwise(*item) for item in items]

    def estimate(self, kind: str, items: list[tuple], repeat: int = 0) -> Estimate:
        return Estimate(calls=len(items), unique=len(set(items)), cached=0, to_send=0)
