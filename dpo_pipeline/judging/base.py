"""The judge interface: what every backend is, and what callers may ask of it.

A judge takes a batch of items and returns, for each, a pointwise answer or a pairwise verdict (A, B or
tie), or None when the judge's answer was invalid (excluded, never guessed). The pointwise answer is what the
judge gives (`pointwise`): a 1-5 `Score` with a reason (rubric, LLM judges), or a `Reward`, an unbounded float
with no reason (a reward model); callers rank either by its `value`. Batches
let a remote backend run requests concurrently; the offline rubric just loops. It also says, before
anything is sent, what a batch would cost (`estimate`), and after, what was spent (`usage`).
`pairwise_both_orders` asks every pair twice with the positions swapped and calls a disagreement a tie, so
position bias cannot pick a winner. `repeat` asks the same items again as a separate judgment (its own
cache entry), for self-consistency (reliability.py); a deterministic backend may ignore it. Backends are
peers (rubric.py, claude.py, openai_compat.py, reward_model.py), built only by registry.py: no caller names a
backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from abc import ABC, abstractmethod
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field



class Score(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: int = Field(ge=1, le=5, description="1 = ignores the policy or the schema, 5 = follows both")
    reason: str = Field(description="one sentence")

    @property
    def value(self) -> int:  # a property: not in the schema an LLM judge is asked to fill
        return self.score


class Reward(BaseModel):
    """A reward model's answer: an unbounded float, higher is better, on the model's own scale, and no reason."""

    model_config = ConfigDict(extra="forbid")
    reward: float

    @property
    def value(self) -> float:
        return self.reward


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
    spent_usd: float = 0.0  # what this run's requests cost (cache hits cost nothing)
    cache_hits: int = 0
    invalid: int = 0
    answers: int = 0
    identical_skipped: int = 0  # pairwise questions about two identical responses: a tie, never asked
    stops: dict = field(default_factory=dict)  # invalid answers by stop reason (refusal, max_tokens, ...)
    token_scale: float = 1.0  # the API's token count over the ~3.5-characters heuristic (a sample's largest)
    fallback_answers: int = 0  # answered by judge.refusal_fallback after the judge model refused

    def as_metrics(self) -> dict:
        # Only what identical inputs reproduce: a re-run served from the cache has the same numbers.
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": round(self.cost_usd, 4), "answers": self.answers, "invalid": self.invalid,
                "identical_skipped": self.identical_skipped,
                "refusals": self.stops.get("refusal", 0), "max_tokens_stops": self.stops.get("max_tokens", 0),
                "other_stops": sum(v for k, v in self.stops.items() if k not in ("refusal", "max_tokens")),
                "fallback_answers": self.fallback_answers}

    def spending(self) -> str:
        return f"{self.requests_sent} requests sent (${self.spent_usd:.4f}), {self.cache_hits} from cache"


@dataclass
class Estimate:
    """Before sending: a batch's calls, how many are distinct and already cached, tokens (output at the
    max, thinking room included) and USD: an estimate (input at ~3.5 characters a token, a heuristic)."""

    calls: int
    unique: int
    cached: int
    to_send: int
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    batches: int = 0  # Message Batches the requests to send take (batch mode; each job is batched on its own)


class Judge(ABC):
    name: str       # recorded as `backend` in metrics
    remote: bool    # sends paid requests: the stages then report spend and agreement with the rubric
    usage: Usage
    pointwise: Literal["score", "reward"] = "score"  # what score_all returns: a 1-5 Score, or a float Reward
    # Asked about a pair, may its answer depend on which response comes first? Then a pair is asked in both
    # orders; a judge that scores each response on its own (a reward model) scores both once instead.
    positional: bool = True
    margin: float = 0.0  # best - worst <= margin is a tie (a reward model: judge.reward_margin)

    @abstractmethod
    def score_all(self, items: list[tuple[str, str]]) -> list[Score | Reward | None]:
        """(prompt, response) -> score (or reward, as `pointwise` says), or None for an invalid answer."""

    @abstractmethod
    def pairwise_all(self, items: list[tuple[str, str, str]], repeat: int = 0) -> list[Verdict | None]:
        """(prompt, response A, response B) -> verdict, or None for an invalid answer. `repeat` > 0: the
        same question asked anew, never answered with repeat 0's (or another repeat's) judgment."""

    @abstractmethod
    def estimate(self, kind: Literal["score", "pairwise"], items: list[tuple], repeat: int = 0) -> Estimate:
        """What judging `items` (as `repeat`) would cost, sending nothing."""


@dataclass
class Judged:
    """A pair's verdict after asking in both orders; `verdict` None = an invalid answer in either order."""

    verdict: Verdict | None
    consistent: bool
    picks: tuple[int, int] = (0, 1)  # the candidates the verdict's A and B are
    first: Verdict | None = None     # the answer in the order given, before the swap (self-consistency)
    second: Verdict | None = None    # the answer with the positions swapped, its winner as the judge named it
    asked: bool = True               # False: two identical responses, a tie without asking the judge
    gap: float | None = None         # best vs worst: the best's value minus the worst's (a reward gap)


IDENTICAL = Verdict(winner="tie", reason="identical responses")


def pairwise_both_orders(judge: Judge, items: list[tuple[str, str, str]]) -> list[Judged]:
    """Each (prompt, a, b) judged as (a, b) and as (b, a), all in one batch; disagreement -> tie. Two
    identical responses are a tie without a request: no judgment could change that outcome, and with a paid
    judge they were 18% of the defaults' bill. A judge that is not `positional` (it scores each response on
    its own) is asked once: there is no position to swap."""
    out = [Judged(IDENTICAL, True, asked=False) for _ in items]
    distinct = [i for i, (_, a, b) in enumerate(items) if a != b]
    asked = [items[i] for i in distinct]
    judge.usage.identical_skipped += len(items) - len(asked)
    if not judge.positional:
        for i, verdict in zip(distinct, judge.pairwise_all(asked)):
            out[i] = Judged(verdict, verdict is not None, first=verdict)
        return out
    answers = judge.pairwise_all(asked + [(p, b, a) for p, a, b in asked])
    for i, first, second in zip(distinct, answers[:len(asked)], answers[len(asked):]):
        if first is None or second is None:
            out[i] = Judged(None, False, first=first, second=second)
            continue
        swapped = {"A": "B", "B": "A", "tie": "tie"}[second.winner]
        if first.winner == swapped:
            out[i] = Judged(first, True, first=first, second=second)
        else:
            out[i] = Judged(Verdict(winner="tie", reason=f"position-inconsistent: {first.winner} then "
                                                         f"{swapped}"), False, first=first, second=second)
    return out
