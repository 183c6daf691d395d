"""The eval stage's arithmetic: per-prompt records of the three models' outputs, scores and verdicts, and
their aggregation into metrics/eval.json ({metric: {base, sft, dpo}}) and the 95% CIs (metrics/eval_ci.json),
driven by the metric schema."""

from __future__ import annotations

import numpy as np

from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.schema import MODELS, PAIRS, Metric
from dpo_pipeline.evaluation.stats import OUTCOME, bootstrap_ci, length_controlled, pairwise_summary
from dpo_pipeline.judging.base import Judged, Reward, Score
from dpo_pipeline.tasks import Task

OUTCOMES = {"A": "win", "B": "loss", "tie": "tie"}  # the verdict on (first, second), as the first's outcome


def pair_items(rows: list[dict], outputs: dict[str, list[dict]],
               pairs: dict[str, tuple[str, str]] = PAIRS) -> list[tuple[str, str, str]]:
    """(prompt, first's text, second's text) for every pair of models (`pairs` order), one pair after another."""
    return [(row["prompt"], outputs[a][i]["text"], outputs[b][i]["text"])
            for a, b in pairs.values() for i, row in enumerate(rows)]


def records(rows: list[dict], outputs: dict[str, list[dict]], scores: list[Score | Reward | None],
            judged: list[Judged], task: Task, metrics: list[Metric], models: tuple[str, ...] = MODELS,
            pairs: dict[str, tuple[str, str]] = PAIRS) -> list[dict]:
    """One record a prompt: each model's text, tokens, heuristic metrics and judge score, and each pair's
    verdict. `scores` holds the models' scores one model after another, in `models` order; `judged` the pairs'
    verdicts one pair after another, in `pairs` order (`pair_items`). More than MODELS and PAIRS: the later
    rounds of iterative DPO (schema.models, schema.pairs)."""
    judge = next(m for m in metrics if m.source == "judge")  # faithfulness 1-5, or a reward model's reward
    declared = {m.source_field for m in metrics if m.source != "judge"} - {"tokens"}
    out = []
    for i, row in enumerate(rows):
        rec = {"id": row["id"], "prompt": row["prompt"]}
        for k, name in enumerate(models):
            text, score = outputs[name][i]["text"], scores[k * len(rows) + i]
            heuristics = task.response_metrics(row["prompt"], text)
            if set(heuristics) != declared:  # the schema is the task's METRICS: what it computes must match
                raise UserError(f"task {task.NAME}: response_metrics gives {sorted(heuristics)} but METRICS "
                                f"declares {sorted(declared)}")
            rec[name] = {"text": text, "tokens": outputs[name][i]["tokens"], **heuristics,
                         judge.source_field: None if score is None else score.value}
        for k, key in enumerate(pairs):
            j = judged[k * len(rows) + i]
            rec[key] = {"outcome": None if j.verdict is None else OUTCOMES[j.verdict.winner],
                        "reason": j.verdict and j.verdict.reason, "consistent": j.consistent}
        out.append(rec)
    return out


def aggregate(recs: list[dict], metrics: list[Metric], bootstrap_samples: int, seed: int,
              models: tuple[str, ...] = MODELS, pairs: dict[str, tuple[str, str]] = PAIRS) -> tuple[dict, dict]:
    """(eval.json's per-model metrics and pairwise summary, the 95% CIs). Invalid judge answers (None) are
    left out of the means; the DPO - SFT CI is paired over the prompts both have (and each later round's,
    `delta_dpo_r<k>_sft`, and its gain over the round before, `delta_dpo_r<k>_<round before>`)."""
    def values(model: str, m: Metric) -> list[float]:
        return [r[model][m.source_field] for r in recs if r[model][m.source_field] is not None]

    def ci95(xs: list[float]) -> dict:
        lo, hi = bootstrap_ci(xs, bootstrap_samples, seed)
        return {"low": round(lo, 4), "high": round(hi, 4)}

    # eval.json's order, kept since the first release: the per-prompt metrics by name, then the counts.
    ordered = sorted(metrics, key=lambda m: (not m.per_prompt, m.key))
    out, intervals = {}, {}
    for m in ordered:
        digits = 4 if m.per_prompt else 2
        out[m.key] = {model: round(float(np.mean(values(model, m))), digits) for model in models}
        if m.per_prompt:
            intervals[m.key] = {model: ci95(values(model, m)) for model in models}
            f = m.source_field
            # each DPO round against SFT, and each later round against the round before
            for policy, other in [*((p, "sft") for p in models[2:]), *zip(models[3:], models[2:])]:
                intervals[m.key][f"delta_{policy}_{other}"] = ci95([r[policy][f] - r[other][f] for r in recs if
                                                                    r[policy][f] is not None and r[other][f] is not None])
    for key, (a, b) in pairs.items():
        judged = [r for r in recs if r[key]["outcome"]]
        outcomes = [r[key]["outcome"] for r in judged]
        out[key] = pairwise_summary(outcomes, bootstrap_samples, seed)
        if judged:
            out[key] |= length_controlled([OUTCOME[o] for o in outcomes],
                                          [r[a]["tokens"] - r[b]["tokens"] for r in judged], bootstrap_samples, seed)
    return out, intervals
