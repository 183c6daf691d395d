"""Evaluate base vs SFT vs SFT+DPO on the held-out prompts.

    python -m stages.eval           (run by `dvc repro` as stage `eval`)

All three models decode with the same params and seeds. Metrics (metrics/eval.json):
format conformance, severity match and mean length per model ({metric: {base, sft, dpo}}), KL(SFT+DPO || SFT)
on the eval prompts, faithfulness
(the judge's pointwise 1-5 score), and DPO vs SFT pairwise preference judged in both orders, with a 95%
bootstrap CI over prompts. The per-model 95% CIs go to `paths.eval_ci`; per-prompt outputs, scores and
verdicts to `paths.eval_outputs`.
"""

from __future__ import annotations

import numpy as np
from rich import print

from stages import cli
from stages.config import UserError, load_params
from stages.files import read_jsonl, read_text, write_json, write_jsonl
from stages.judges import pairwise_both_orders, make_judge
from stages.stats import bootstrap_ci, pairwise_summary
from stages.tasks import get_task

MODELS = ("base", "sft", "dpo")


def refuse_overlap(params, rows: list[dict]) -> None:
    """Held-out means held out: an eval prompt that is also an SFT or sampling prompt is refused."""
    files = params.task_files
    for path in (files.sft_data, files.prompts):
        seen = {r["prompt"]: r["id"] for r in read_jsonl(path, required=("id", "prompt"))}
        for r in rows:
            if r["prompt"] in seen:
                raise UserError(f"{files.eval_prompts}: id {r['id']!r} has the prompt of {path} id "
                                f"{seen[r['prompt']]!r}; held-out prompts must be in no other split")


def main() -> None:
    params = load_params()
    paths, cfg = params.paths, params.eval
    rows = read_jsonl(params.task_files.eval_prompts, required=("id", "prompt"))
    refuse_overlap(params, rows)
    task = get_task(params.task)
    judge = make_judge(params.judge, task, read_text(params.task_files.policy))

    from stages.models import fitting, generate, load_policy, load_tokenizer, sequence_kl

    # --- generate with each model, same prompts, decoding params and seeds
    tokenizer = load_tokenizer(paths)
    outputs, n_read = {}, len(rows)
    for name in MODELS:
        model = load_policy(name, paths)
        if name == "base":  # one architecture, one context: the base decides what fits
            rows = [rows[i] for i in fitting(model, tokenizer, [r["prompt"] for r in rows], cfg.max_new_tokens)]
            prompts = [r["prompt"] for r in rows]
            if not rows:
                raise UserError(f"{params.task_files.eval_prompts}: every prompt is too long for the model's "
                                f"context with eval.max_new_tokens {cfg.max_new_tokens}")
        outputs[name] = generate(model, tokenizer, prompts, temperature=cfg.temperature, top_p=cfg.top_p,
                                 max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                 seed=params.seed, label=f"eval {name}")
        if name == "dpo":  # KL(SFT+DPO || SFT): the DPO adapter disabled is exactly the SFT model
            kl = sequence_kl(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, seed=params.seed)
        del model

    # --- score each response; judge DPO vs SFT in both orders (invalid judge answers are excluded)
    scores = judge.score_all([(row["prompt"], outputs[m][i]["text"]) for m in MODELS for i, row in enumerate(rows)])
    judged = pairwise_both_orders(judge, [(row["prompt"], outputs["dpo"][i]["text"], outputs["sft"][i]["text"])
                                          for i, row in enumerate(rows)])
    records, outcomes = [], []
    for i, row in enumerate(rows):
        rec = {"id": row["id"], "prompt": row["prompt"]}
        for k, name in enumerate(MODELS):
            text, score = outputs[name][i]["text"], scores[k * len(rows) + i]
            rec[name] = {"text": text, "tokens": outputs[name][i]["tokens"],
                         **task.response_metrics(row["prompt"], text),
                         "faithfulness": None if score is None else score.score}
        verdict = judged[i].verdict
        outcome = None if verdict is None else {"A": "win", "B": "loss", "tie": "tie"}[verdict.winner]
        rec["pairwise_dpo_vs_sft"] = {"outcome": outcome, "reason": verdict and verdict.reason}
        if outcome:
            outcomes.append(outcome)
        records.append(rec)

    # --- aggregate: {metric: {base, sft, dpo}} for dvc metrics/exp show; the 95% CIs in their own file,
    # so `dvc exp show` stays readable
    keys = sorted(records[0]["base"].keys() - {"text", "tokens"})

    def values(model: str, key: str) -> list[float]:
        return [r[model][key] for r in records if r[model][key] is not None]

    def ci95(xs: list[float]) -> dict:
        lo, hi = bootstrap_ci(xs, cfg.bootstrap_samples, params.seed)
        return {"low": round(lo, 4), "high": round(hi, 4)}

    metrics: dict = {k: {m: round(float(np.mean(values(m, k))), 4) for m in MODELS} for k in keys}
    metrics["mean_tokens"] = {m: round(float(np.mean([r[m]["tokens"] for r in records])), 2) for m in MODELS}
    metrics["pairwise_dpo_vs_sft"] = pairwise_summary(outcomes, cfg.bootstrap_samples, params.seed)
    metrics["kl_dpo_vs_sft"] = {k: round(v, 4) for k, v in kl.items()}
    metrics["n_prompts"] = len(records)
    metrics["dropped_too_long"] = n_read - len(records)  # prompts that left no room for max_new_tokens
    metrics["judge"] = {"backend": judge.name, **judge.usage.as_metrics()}
    intervals = {k: {m: ci95(values(m, k)) for m in MODELS} for k in keys}
    for k in keys:  # paired over prompts: the CI of DPO's gain on the same prompts
        both = [r["dpo"][k] - r["sft"][k] for r in records if r["dpo"][k] is not None and r["sft"][k] is not None]
        intervals[k]["delta_dpo_sft"] = ci95(both)
    write_jsonl(paths.eval_outputs, records)
    write_json(paths.eval_ci, intervals)
    write_json(paths.eval_metrics, metrics)
    pw = metrics["pairwise_dpo_vs_sft"]
    print(f"[bold]eval[/]: DPO vs SFT win rate {pw['win_rate']} [{pw['ci_low']}, {pw['ci_high']}] over "
          f"{len(records)} prompts -> {paths.eval_metrics}")


if __name__ == "__main__":
    cli.run(main)
