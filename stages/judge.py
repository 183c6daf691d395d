"""Judge each sampled pair and write the preference set in TRL's conversational preference format.

    python -m stages.judge          (run by `dvc repro` as stage `judge`)
    python -m stages.estimate       (before paying: calls, tokens and USD the judge and eval stages will need)

Rows: {id, prompt: [user msg], chosen: [assistant msg], rejected: [assistant msg], + provenance}.
Each pair is judged in both orders; ties, position-inconsistent and invalid verdicts are dropped and
counted in metrics/judge.json, with the judge's cost and, for an LLM judge, its agreement with the rubric.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from rich import print

from stages import cli
from stages.chat import assistant, user
from stages.config import UserError, load_params
from stages.files import read_jsonl, write_json, write_jsonl
from stages.judges import Judged, RubricJudge, make_judge, pairwise_both_orders
from stages.tasks import get_task


def build_pairs(samples: list[dict], judge) -> tuple[list[dict], list[Judged], Counter]:
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
        a, b = row["responses"][0], row["responses"][1]
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


def main() -> None:
    params = load_params()
    paths = params.paths
    samples = read_jsonl(paths.samples, required=("id", "prompt", "responses"))
    task = get_task(params.task)
    judge = make_judge(params.judge, task, Path(paths.policy).read_text())
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
        "calls": 2 * n,
        "position_consistency": round(counts["position_consistent"] / n, 4),
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
