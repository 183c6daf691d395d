"""How far a judge's pairwise verdicts can be trusted, as flat metrics for one backend.

Measured on the items a stage already judged in both orders (`pairwise_both_orders`), so the only new
requests are the repeats:

- position_flip_rate: of the items with both answers valid, the share whose two orders disagree (not
  `consistent`): the verdict moved with the order. A judge that always picks the first position flips on
  every item, even where the responses are equal and an unbiased judge would tie both ways. None for a judge
  that scores each response on its own (a reward model: not `positional`), asked in one order only.
- self_consistency: a seeded sample of `repeats` items whose first answer was valid (numpy
  `default_rng(seed)`) is asked again in the first order, as repeat 1: for the anthropic judge a real second
  request with its own cache entry, so a re-run pays nothing and a repeat is never served the first answer.
  The share whose new verdict equals the first, over those valid both times. The rubric is deterministic:
  1 by construction.
- truth_agreement: only where the task has ground truth (its optional `correct` hook; incident triage: the
  policy severity the report was generated from, never shown to the judge). Over the `truth_n` items where
  exactly one response is correct, the share where the both-orders verdict prefers it; a tie counts 0.5,
  so a judge whose position bias the swap turned into ties scores chance, 0.5.
- reference_agreement: how often the both-orders verdicts equal the reference judge's (the rubric, see
  registry.reference_judge) on the same items, over those both judged validly (pairs.agreement).

None means not measured: no valid item, `repeats` 0, no ground truth (then `truth_n` is None too; 0 means
no item had exactly one correct response), or no reference / the judge is the reference (then
`reference_backend` is None).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dpo_pipeline.judging.base import Judge, Judged, pairwise_both_orders
from dpo_pipeline.judging.pairs import agreement
from dpo_pipeline.tasks import Task, ground_truth

Item = tuple[str, str, str]  # (prompt, response a, response b)


def reliability(judge: Judge, items: list[Item], judged: list[Judged], *, repeats: int, seed: int,
                task: Task, reference: Judge | None = None) -> dict:
    """The judge's reliability on `items`, which `judged` (pairwise_both_orders) holds in order. Sends only
    the `repeats` requests (and runs `reference` on the items); the keys are listed in the module docstring."""
    # Two identical responses were never asked (a tie by rule): they say nothing about the judge.
    kept = [i for i, j in enumerate(judged) if j.asked]
    items, judged = [items[i] for i in kept], [judged[i] for i in kept]
    valid = [j for j in judged if j.verdict is not None]
    return {
        "backend": judge.name,
        "n": len(items),
        "n_valid": len(valid),
        "position_flip_rate": share([not j.consistent for j in valid]) if judge.positional else None,
        **self_consistency(judge, items, judged, repeats, seed),
        **truth_agreement(items, judged, ground_truth(task)),
        **reference_agreement(judge, items, judged, reference),
    }


def share(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def repeat_sample(candidates: list[int], repeats: int, seed: int) -> list[int]:
    """The seeded `repeats` of `candidates` asked again (all of them when there are fewer), in order."""
    k = min(repeats, len(candidates))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(candidates, size=k, replace=False))


def self_consistency(judge: Judge, items: list[Item], judged: list[Judged], repeats: int, seed: int) -> dict:
    asked = repeat_sample([i for i, j in enumerate(judged) if j.first is not None], repeats, seed)
    if not asked:
        return {"self_consistency": None, "repeats": 0}
    again = judge.pairwise_all([items[i] for i in asked], repeat=1)
    same = [v.winner == judged[i].first.winner for i, v in zip(asked, again) if v is not None]
    return {"self_consistency": share(same), "repeats": len(asked)}


def truth_agreement(items: list[Item], judged: list[Judged],
                    correct: Callable[[str, str], bool | None] | None) -> dict:
    if correct is None:
        return {"truth_agreement": None, "truth_n": None}
    credit = {"A": 1.0, "B": 0.0, "tie": 0.5}  # credit for the verdict when A is the correct response
    scores = []
    for (prompt, a, b), j in zip(items, judged):
        right = (correct(prompt, a), correct(prompt, b))
        if j.verdict is None or None in right or right[0] == right[1]:
            continue  # invalid, undecidable, or both (or neither) correct: the truth prefers neither
        scores.append(credit[j.verdict.winner] if right[0] else 1.0 - credit[j.verdict.winner])
    return {"truth_agreement": share(scores), "truth_n": len(scores)}


def reference_agreement(judge: Judge, items: list[Item], judged: list[Judged], reference: Judge | None) -> dict:
    if reference is None or reference.name == judge.name:
        return {"reference_agreement": None, "reference_backend": None}
    return {"reference_agreement": agreement(judged, pairwise_both_orders(reference, items)),
            "reference_backend": reference.name}
