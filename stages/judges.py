"""Judges: one small interface, one class per backend.

A judge gives a pointwise 1-5 score with a reason, and a pairwise verdict (A, B or tie) with a reason.
`pairwise_both_orders` asks twice with the positions swapped and calls a disagreement a tie, so position
bias cannot pick a winner. Backends are peers: `rubric` (offline, deterministic) is one; an LLM judge is
another class with the same two methods.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, Field

from stages.config import JudgeParams
from stages.tasks import Task


class Score(BaseModel):
    score: int = Field(ge=1, le=5)
    reason: str


class Verdict(BaseModel):
    winner: Literal["A", "B", "tie"]
    reason: str


class Judge(Protocol):
    name: str

    def score(self, prompt: str, response: str) -> Score: ...

    def pairwise(self, prompt: str, a: str, b: str) -> Verdict: ...


class RubricJudge:
    """Applies the task's written policy and schema to the prompt and responses; never sees a label."""

    name = "rubric"

    def __init__(self, task: Task):
        self.task = task

    def score(self, prompt: str, response: str) -> Score:
        score, reason = self.task.rubric_score(prompt, response)
        return Score(score=score, reason=reason)

    def pairwise(self, prompt: str, a: str, b: str) -> Verdict:
        sa, sb = self.score(prompt, a), self.score(prompt, b)
        if sa.score == sb.score:
            return Verdict(winner="tie", reason=f"both score {sa.score}")
        winner = "A" if sa.score > sb.score else "B"
        return Verdict(winner=winner, reason=f"A {sa.score} ({sa.reason}) vs B {sb.score} ({sb.reason})")


def pairwise_both_orders(judge: Judge, prompt: str, a: str, b: str) -> tuple[Verdict, bool]:
    """The verdict for (a, b) asked in both orders, and whether the two orders agreed."""
    first = judge.pairwise(prompt, a, b)
    second = judge.pairwise(prompt, b, a)
    swapped = {"A": "B", "B": "A", "tie": "tie"}[second.winner]
    if first.winner == swapped:
        return first, True
    return Verdict(winner="tie", reason=f"position-inconsistent: {first.winner} then {swapped}"), False


def make_judge(cfg: JudgeParams, task: Task) -> Judge:
    if cfg.backend == "rubric":
        return RubricJudge(task)
    raise ValueError(f"unknown judge backend {cfg.backend!r}")  # config validation refuses this first
