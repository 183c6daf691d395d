"""Judge the sampled responses and write the preference set in TRL's conversational preference format.

    python -m stages.judge          (run by `dvc repro` as stage `judge`)
    python -m stages.judge --round 2    (stage judge_r2 of iterative DPO: round 2's samples)
    python -m tools.estimate       (before paying: calls, tokens and USD the judge and eval stages will need)

Rows: {id, prompt: [user msg], chosen: [assistant msg], rejected: [assistant msg], + provenance}; beside them
`paths.judgments`, one row a prompt with the judge's answers and why a pair was dropped (the report's page).
Two candidates a prompt: the pair is judged in both orders; ties, position-inconsistent and invalid verdicts
are dropped. More candidates: each is scored 1-5 and the best and the worst make the pair (UltraFeedback
style); equal scores are a tie, dropped. A reward model scores every candidate, two as well as more, and the
highest and lowest reward make the pair, a tie within `judge.reward_margin`. All is counted in
metrics/judge.json, with the judge's cost, a reward model's reward gap of the kept pairs and, for any judge but
the rubric, its agreement with the rubric.
With `preferences.source` set to a dataset, nothing is judged: the dataset is converted to the same rows
(dpo_pipeline/judging/sources.py).
"""

from __future__ import annotations

from rich import print

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import read_jsonl, read_text, write_json, write_jsonl
from dpo_pipeline.judging.pairs import add_label_noise, agreement, build_pairs, judgments, reward_gaps
from dpo_pipeline.judging.registry import make_judge, reference_judge
from dpo_pipeline.rounds import round_paths
from dpo_pipeline.tasks import get_task


def from_dataset(params: Params) -> None:
    from dpo_pipeline.judging.sources import load_preferences

    cfg = params.preferences
    pairs, info = load_preferences(cfg.source, cfg.split, cfg.max_pairs)
    if not pairs:
        raise UserError(f"preferences.source: no usable pairs in {cfg.source} ({info['rows']} rows read)")
    pairs, flipped = add_label_noise(pairs, params.judge.label_noise, params.seed)
    write_jsonl(params.paths.preferences, pairs)
    write_jsonl(params.paths.judgments, [])  # nothing judged
    write_json(params.paths.judge_metrics, {**info, "prompts": info["rows"],
                                            "label_noise": {"rate": params.judge.label_noise, "flipped": flipped}})
    print(f"[bold]judge[/]: {len(pairs)} pairs from {cfg.source} ({info['format']}), nothing judged "
          f"-> {params.paths.preferences}")


def main(params: Params, round_num: int = 1) -> None:
    paths = round_paths(params.paths, round_num)  # the cache is shared: a response judged in any round is paid once
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
        # Only pairs are asked in both orders; best-vs-worst (and a reward model) scores each candidate on its own.
        "position_consistency": round(counts["position_consistent"] / max(counts["asked"], 1), 4)
        if len(samples[0]["responses"]) == 2 and judge.positional else None,
        "chosen_by_temperature": {k.removeprefix("chosen_at_T"): v for k, v in sorted(counts.items())
                                  if k.startswith("chosen_at_T")},
        "usage": judge.usage.as_metrics(),
        "label_noise": {"rate": params.judge.label_noise, "flipped": flipped},
    }
    if judge.pointwise == "reward":  # how far apart the kept pairs are, on the reward model's scale
        metrics["reward_gap"] = reward_gaps(judged)
    if (rubric := reference_judge(task)) is not None and rubric.name != judge.name:
        _, reference, _ = build_pairs(samples, rubric)
        metrics["agreement_with_rubric"] = agreement(judged, reference)
    write_jsonl(paths.preferences, pairs)
    write_jsonl(paths.judgments, judgments(samples, judged))
    write_json(paths.judge_metrics, metrics)
    print(f"[bold]judge[/]: {len(pairs)} pairs kept, {counts['ties']} ties and {counts['invalid']} invalid dropped "
          f"-> {paths.preferences}" + (f"; {judge.usage.spending()}" if judge.remote else ""))


if __name__ == "__main__":
    cli.run(main)
