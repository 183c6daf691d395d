"""Judge the sampled responses and write the preference set in TRL's conversational preference format.

    python -m stages.judge          (run by `dvc repro` as stage `judge`)
    python -m stages.estimate       (before paying: calls, tokens and USD the judge and eval stages will need)

Rows: {id, prompt: [user msg], chosen: [assistant msg], rejected: [assistant msg], + provenance}.
Two candidates a prompt: the pair is judged in both orders; ties, position-inconsistent and invalid verdicts
are dropped. More candidates: each is scored 1-5 and the best and the worst make the pair (UltraFeedback
style); equal scores are a tie, dropped. All is counted in metrics/judge.json, with the judge's cost and,
for an LLM judge, its agreement with the rubric.
With `preferences.source` set to a dataset, nothing is judged: the dataset is converted to the same rows
(stages/preference_sources.py).
"""

from __future__ import annotations

import random
from collections import Counter
from rich import print

from stages import cli
from stages.chat import assistant, user
from stages.config import UserError, load_params
from stages.files import read_jsonl, read_text, write_json, write_jsonl
from stages.judges import Judged, RubricJudge, Verdict, make_judge, pairwise_both_orders
from stages.tasks import get_task


def best_vs_worst(judge, samples: list[dict]) -> list[Judged]:
    """Score every candidate; the verdict says which of the best ("A") and the worst ("B") won, with the
    candidates' indices in `picks`. Fewer than two valid scores: invalid. Equal best and worst: a tie."""
    items = [(row["prompt"], r["text"]) for row in samples for r in row["responses"]]
    scores = iter(judge.score_all(items))
    out = []
    for row in samples:
        valid = [(s.score, i) for i, s in enumerate(next(scores) for _ in row["responses"]) if s is not None]
        if len(valid) < 2:
            out.append(Judged(None, False))
            continue
        best = min(valid, key=lambda x: (-x[0], x[1]))  # the highest score, the first candidate among equals
        worst = min(valid)                               # the lowest score, the first among equals
        winner = "tie" if best[0] == worst[0] else "A"
        out.append(Judged(Verdict(winner=winner, reason=f"best {best[0]} vs worst {worst[0]} of {len(valid)}"),
                          True, picks=(best[1], worst[1])))
    return out


def build_pairs(samples: list[dict], judge) -> tuple[list[dict], list[Judged], Counter]:
    if len(samples[0]["responses"]) > 2:
        judged = best_vs_worst(judge, samples)
    else:
        items = [(row["prompt"], row["responses"][0]["text"], row["responses"][1]["text"]) for row in samples]
        judged = pairwise_both_orders(judge, items)
    pairs, counts = [], Counter()
    for row, j in zip(samples, judged):
        counts["position_consistent"] += j.consistent
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


def from_dataset(params) -> None:
    from stages.preference_sources import load_preferences

    cfg = params.preferences
    pairs, info = load_preferences(cfg.source, cfg.split, cfg.max_pairs)
    if not pairs:
        raise UserError(f"preferences.source: no usable pairs in {cfg.source} ({info['rows']} rows read)")
    pairs, flipped = add_label_noise(pairs, params.judge.label_noise, params.seed)
    write_jsonl(params.paths.preferences, pairs)
    write_json(params.paths.judge_metrics, {"backend": "dataset", **info, "prompts": info["rows"],
                                            "label_noise": {"rate": params.judge.label_noise, "flipped": flipped}})
    print(f"[bold]judge[/]: {len(pairs)} pairs from {cfg.source} ({info['format']}), nothing judged "
          f"-> {params.paths.preferences}")


def main() -> None:
    params = load_params()
    paths = params.paths
    if not params.preferences.generated:
        return from_dataset(params)
    samples = read_jsonl(paths.samples, required=("id", "prompt", "responses"))
    task = get_task(params.task)
    judge = make_judge(params.judge, task, read_text(params.task_files.policy))
    pairs, judged, counts = build_pairs(samples, judge)
    if not pairs:
        raise UserError(f"judge: no preference pairs from {len(samples)} prompts ({counts['ties']} ties, "
                        f"{counts['invalid']} invalid); make the two samples differ more (sample.temperatures) "
                        "or train a better SFT model")
    pairs, flipped = add_label_noise(pairs, params.judge.label_noise, params.seed)
    n = len(samples)
    metrics = {
        "backend": judge.name,
        "prompts": n,
        "pairs": len(pairs),
        "ties": counts["ties"],
        "tie_rate": round(counts["ties"] / n, 4),
        "invalid_rate": round(counts["invalid"] / n, 4),
        "candidates": len(samples[0]["responses"]),
        "calls": judge.usage.answers,
        # Only pairs are asked in both orders; best-vs-worst scores each candidate on its own.
        "position_consistency": round(counts["position_consistent"] / n, 4) if len(samples[0]["responses"]) == 2
        else None,
        "chosen_by_temperature": {k.removeprefix("chosen_at_T"): v for k, v in sorted(counts.items())
                                  if k.startswith("chosen_at_T")},
        "usage": judge.usage.as_metrics(),
        "label_noise": {"rate": params.judge.label_noise, "flipped": flipped},
    }
    if judge.name != "rubric":
        _, reference, _ = build_pairs(samples, RubricJudge(task))
        metrics["agreement_with_rubric"] = agreement(judged, reference)
    write_jsonl(paths.preferences, pairs)
    write_json(paths.judge_metrics, metrics)
    u = judge.usage
    print(f"[bold]judge[/]: {len(pairs)} pairs kept, {counts['ties']} ties and {counts['invalid']} invalid dropped "
          f"-> {paths.preferences}" + (f"; {u.requests_sent} requests sent (${judge.spent:.4f}), "
                                        f"{u.cache_hits} from cache" if judge.name != "rubric" else ""))


if __name__ == "__main__":
    cli.run(main)
