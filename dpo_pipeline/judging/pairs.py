"""Preference pairs from a judge's verdicts: two candidates judged in both orders, or best vs worst of
more; and label noise on purpose (garbage in, to watch garbage out)."""

from __future__ import annotations

import random
import statistics
from collections import Counter

from dpo_pipeline.chat import assistant, user
from dpo_pipeline.judging.base import Judge, Judged, Verdict, pairwise_both_orders


def best_vs_worst(judge: Judge, samples: list[dict]) -> list[Judged]:
    """Score every candidate; the verdict says which of the best ("A") and the worst ("B") won, with the
    candidates' indices in `picks` and the best's value minus the worst's in `gap`. Fewer than two valid
    scores: invalid. Best and worst within `judge.margin` of each other (equal, for a 1-5 score): a tie."""
    items = [(row["prompt"], r["text"]) for row in samples for r in row["responses"]]
    scores = iter(judge.score_all(items))
    out = []
    for row in samples:
        valid = [(s.value, i) for i, s in enumerate(next(scores) for _ in row["responses"]) if s is not None]
        if len(valid) < 2:
            out.append(Judged(None, False))
            continue
        best = min(valid, key=lambda x: (-x[0], x[1]))  # the highest score, the first candidate among equals
        worst = min(valid)                               # the lowest score, the first among equals
        winner = "tie" if best[0] - worst[0] <= judge.margin else "A"
        out.append(Judged(Verdict(winner=winner, reason=f"best {shown(best[0])} vs worst {shown(worst[0])} of "
                                                        f"{len(valid)}"),
                          True, picks=(best[1], worst[1]), gap=best[0] - worst[0]))
    return out


def shown(value: float) -> str:
    """A 1-5 score as it is; a reward to 4 decimals."""
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def build_pairs(samples: list[dict], judge: Judge) -> tuple[list[dict], list[Judged], Counter]:
    """Two candidates are judged as a pair, in both orders; more, or a judge that scores each response on its
    own (not `positional`: a reward model), are scored each and make best vs worst."""
    if len(samples[0]["responses"]) > 2 or not judge.positional:
        judged = best_vs_worst(judge, samples)
    else:
        items = [(row["prompt"], row["responses"][0]["text"], row["responses"][1]["text"]) for row in samples]
        judged = pairwise_both_orders(judge, items)
    pairs, counts = [], Counter()
    for row, j in zip(samples, judged):
        counts["position_consistent"] += j.consistent and j.asked  # identical responses were never asked
        counts["asked"] += j.asked
        if j.verdict is None:
            counts["invalid"] += 1
            continue
        if j.verdict.winner == "tie":
            counts["ties"] += 1
            continue
        a, b = (row["responses"][i] for i in j.picks)
        chosen, rejected = (a, b) if j.verdict.winner == "A" else (b, a)
        counts[f"chosen_at_T{chosen['temperature']}"] += 1
        pairs.append({
            "id": row["id"],
            "prompt": user(row["prompt"]),
            "chosen": assistant(chosen["text"]),
            "rejected": assistant(rejected["text"]),
            "chosen_temperature": chosen["temperature"],
            "rejected_temperature": rejected["temperature"],
            "judge": judge.name,
            "reason": j.verdict.reason,
        })
    return pairs, judged, counts


def judgments(samples: list[dict], judged: list[Judged]) -> list[dict]:
    """One row a prompt: what the judge said and why its pair was kept or dropped (the report's page reads it;
    preferences.jsonl keeps only the kept pairs, in TRL's format). `orders` are the answers as asked: the
    candidates in `picks` order, then swapped (that answer's "A" is the second pick); one answer when
    every candidate was scored on its own."""
    def answer(v: Verdict | None) -> dict | None:
        return None if v is None else {"winner": v.winner, "reason": v.reason}

    rows = []
    for row, j in zip(samples, judged):
        dropped = ("invalid" if j.verdict is None else "identical" if not j.asked
                   else "position" if not j.consistent else "tie" if j.verdict.winner == "tie" else None)
        orders = [answer(j.first), answer(j.second)] if j.first or j.second else [answer(j.verdict)]
        rows.append({"id": row["id"], "picks": list(j.picks), "kept": dropped is None, "dropped": dropped,
                     "winner": None if j.verdict is None else j.verdict.winner, "orders": orders})
    return rows


def reward_gaps(judged: list[Judged]) -> dict | None:
    """The kept pairs' gaps, best minus worst (a reward model's: on its own scale): n, mean, median, min, max;
    None when no kept pair has one."""
    gaps = sorted(j.gap for j in judged if j.gap is not None and j.verdict is not None and j.verdict.winner != "tie")
    if not gaps:
        return None
    return {"n": len(gaps), "mean": round(statistics.fmean(gaps), 4), "median": round(statistics.median(gaps), 4),
            "min": round(gaps[0], 4), "max": round(gaps[-1], 4)}


def add_label_noise(pairs: list[dict], rate: float, seed: int) -> tuple[list[dict], int]:
    """Swap chosen and rejected on a seeded `rate` share of the pairs: garbage in, to see garbage out."""
    rng = random.Random(seed)
    flip = set(rng.sample(range(len(pairs)), round(rate * len(pairs))))
    noisy = [{**p, "chosen": p["rejected"], "rejected": p["chosen"], "label_flipped": True} if i in flip else p
             for i, p in enumerate(pairs)]
    return noisy, len(flip)


def agreement(judged: list[Judged], reference: list[Judged]) -> float | None:
    """How often two judges' final verdicts agree, over the pairs both judged validly."""
    both = [(a.verdict.winner, b.verdict.winner) for a, b in zip(judged, reference) if a.verdict and b.verdict]
    return round(sum(x == y for x, y in both) / len(both), 4) if both else None
