"""Judges: one small interface, one class per backend.

A judge takes a batch of items and returns, for each, a pointwise 1-5 score or a pairwise verdict (A, B or
tie), each with a reason, or None when the judge's answer was invalid (excluded, never guessed). Batches
let a remote backend run requests concurrently; the offline rubric just loops.
`pairwise_both_orders` asks every pair twice with the positions swapped and calls a disagreement a tie, so
position bias cannot pick a winner. Backends are peers: `rubric` (offline, deterministic) and `anthropic`
(stages/anthropic_judge.py) implement the same two methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from stages.config import JudgeParams
from stages.tasks import Task


class Score(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: int = Field(ge=1, le=5, description="1 = ignores the policy or the schema, 5 = follows both")
    reason: str = Field(description="one sentence")


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    winner: Literal["A", "B", "tie"] = Field(description="the response that follows the policy better")
    reason: str = Field(description="one sentence")


@dataclass
class Usage:
    """What a judge's answers cost: tokens and USD of the judgments used (cached ones at what they cost
    when first paid), and what this run actually sent."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    requests_sent: int = 0
    cache_hits: int = 0
    invalid: int = 0
    answers: int = 0
    extra: dict = field(default_factory=dict)

    def as_metrics(self) -> dict:
        # Only what identical inputs reproduce: a re-run served from the cache has the same numbers.
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": round(self.cost_usd, 4), "answers": self.answers, "invalid": self.invalid}


class Judge(Protocol):
    name: str
    usage: Usage

    def score_all(self, items: list[tuple[str, str]]) -> list[Score | None]:
        """(prompt, response) -> score, or None for an invalid answer."""

    def pairwise_all(self, items: list[tuple[str, str, str]]) -> list[Verdict | None]:
        """(prompt, response A, response B) -> verdict, or None for an invalid answer."""


class RubricJudge:
    """Applies the task's written policy and schema to the prompt and responses; never sees a label."""

    name = "rubric"

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

    def pairwise_all(self, items: list[tuple[str, str, str]]) -> list[Verdict | None]:
        self.usage.answers += len(items)
        return [self.pairwise(*item) for item in items]


@dataclass
class Judged:
    """A pair's verdict after asking in both orders; `verdict` None = an invalid answer in either order."""

    verdict: Verdict | None
    consistent: bool
    picks: tuple[int, int] = (0, 1)  # the candidates the verdict's A and B are


def pairwise_both_orders(judge: Judge, items: list[tuple[str, str, str]]) -> list[Judged]:
    """Each (prompt, a, b) judged as (a, b) and as (b, a), all in one batch; disagreement -> tie."""
    answers = judge.pairwise_all(items + [(p, b, a) for p, a, b in items])
    out = []
    for first, second in zip(answers[:len(items)], answers[len(items):]):
        if first is None or second is None:
            out.append(Judged(None, False))
            continue
        swapped = {"A": "B", "B": "A", "tie": "tie"}[second.winner]
        if first.winner == swapped:
            out.append(Judged(first, True))
        else:
            out.append(Judged(Verdict(winner="tie", reason=f"position-inconsistent: {first.winner} then "
                                                            f"{swapped}"), False))
    return out


def make_judge(cfg: JudgeParams, task: Task, policy: str) -> Judge:
    if cfg.backend == "rubric":
        return RubricJudge(task)
    from stages.anthropic_judge import AnthropicJudge, api_key_from_env

    return AnthropicJudge(cfg, policy, api_key_from_env())
