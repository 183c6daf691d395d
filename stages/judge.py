"""Judge each sampled pair and write the preference set in TRL's conversational preference format.

    python -m stages.judge          (run by `dvc repro` as stage `judge`)

Rows: {id, prompt: [user msg], chosen: [assistant msg], rejected: [assistant msg], + provenance}.
Ties (and position-inconsistent verdicts) are dropped and counted in metrics/judge.json.
"""

from __future__ import annotations

from collections import Counter

from rich import print

from stages import cli
from stages.chat import assistant, user
from stages.config import UserError, load_params
from stages.files import read_jsonl, write_json, write_jsonl
from stages.judges import make_judge, pairwise_both_orders
from stages.tasks import get_task


def build_pairs(samples: list[dict], judge) -> tuple[list[dict], Counter]:
    pairs, counts = [], Counter()
    for row in samples:
        a, b = row["responses"][0], row["responses"][1]
        verdict, consistent = pairwise_both_orders(judge, row["prompt"], a["text"], b["text"])
        counts["calls"] += 2
        counts["position_consistent"] += consistent
        if verdict.winner == "tie":
            counts["ties"] += 1
            continue
        chosen, rejected = (a, b) if verdict.winner == "A" else (b, a)
        counts["chosen_at_T" + str(chosen["temperature"])] += 1
        pairs.append({
            "id": row["id"],
            "prompt": user(row["prompt"]),
            "chosen": assistant(chosen["text"]),
            "rejected": assistant(rejected["text"]),
            "chosen_temperature": chosen["temperature"],
            "rejected_temperature": rejected["temperature"],
            "judge": judge.name,
            "reason": verdict.reason,
        })
    return pairs, counts


def main() -> None:
    params = load_params()
    paths = params.paths
    samples = read_jsonl(paths.samples, required=("id", "prompt", "responses"))
    judge = make_judge(params.judge, get_task(params.task))
    pairs, counts = build_pairs(samples, judge)
    if not pairs:
        raise UserError(f"judge: all {len(samples)} pairs were ties, so there is no preference data; make the two "
                        "samples differ more (sample.temperatures) or train a better SFT model")
    metrics = {
        "backend": judge.name,
        "prompts": len(samples),
        "pairs": len(pairs),
        "ties": counts["ties"],
        "tie_rate": round(counts["ties"] / len(samples), 4),
        "calls": counts["calls"],
        "position_consistency": round(counts["position_consistent"] / len(samples), 4),
        "chosen_by_temperature": {k.removeprefix("chosen_at_T"): v for k, v in sorted(counts.items())
                                  if k.startswith("chosen_at_T")},
    }
    write_jsonl(paths.preferences, pairs)
    write_json(paths.judge_metrics, metrics)
    print(f"[bold]judge[/]: {len(pairs)} pairs kept, {counts['ties']} ties dropped -> {paths.preferences}")


if __name__ == "__main__":
    cli.run(main)
