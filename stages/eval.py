"""Evaluate base vs SFT vs SFT+DPO on the held-out prompts: SFT+DPO's outputs, its KL, judging and metrics.

    python -m stages.eval           (run by `dvc repro` as stage `eval`, after stage `eval_baselines`)

The base's and SFT's outputs come from stage eval_baselines (stages/eval_baselines.py): nothing DPO does changes
them, so `dvc exp run -S train.beta=0.3` re-runs this stage without generating two of its three models again.
All three decode with the same params and seeds. Metrics (metrics/eval.json): the task's rates, the judge's
faithfulness (a reward model: its mean reward instead) and the mean length per model (as
dpo_pipeline/evaluation/schema.py declares them) ({metric: {base, sft, dpo}}), KL(SFT+DPO || SFT) on the eval
prompts, and pairwise preference for every pair of models (DPO vs SFT, DPO vs base, SFT vs base) judged in both
orders (a reward model: the higher reward wins), raw and length-controlled, each with a
95% bootstrap CI over prompts; the judge's reliability on those verdicts (dpo_pipeline/judging/reliability.py).
The per-model 95% CIs go to `paths.eval_ci`; per-prompt outputs, scores and verdicts to `paths.eval_outputs`.
With `rounds` > 1 (iterative DPO) every round's policy is one more model ("dpo_r2", ...) on the same prompts,
judged against SFT and against the round before, with its KL from SFT (`kl_dpo_r2_vs_sft`).
"""

from __future__ import annotations

from functools import partial

from rich import print

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.held_out import decoding
from dpo_pipeline.evaluation.schema import JUDGED, PAIRWISE, model_metrics, models, pairs
from dpo_pipeline.evaluation.scoring import aggregate, pair_items, records
from dpo_pipeline.files import read_jsonl, read_text, write_json, write_jsonl
from dpo_pipeline.judging.base import pairwise_both_orders
from dpo_pipeline.judging.registry import make_judge, reference_judge
from dpo_pipeline.judging.reliability import reliability
from dpo_pipeline.models.engines.base import Engine, Job, Policy
from dpo_pipeline.rounds import check_declared, model_key
from dpo_pipeline.tasks import get_task


def policy_kls(params: Params, prompts: list[str]) -> dict[str, dict]:
    """Each DPO round's KL(policy || SFT) on the prompts, in transformers whatever generates (a share of the
    batches each under torchrun): for round 1 the adapter disabled is the SFT model; a later round's disabled
    adapter is the round before, so the SFT model is the reference."""
    from dpo_pipeline.models import parallel
    from dpo_pipeline.models.kl import kl_summary, sequence_kls
    from dpo_pipeline.models.loading import load_sft, load_tokenizer, round_policies

    cfg, tokenizer = params.eval, load_tokenizer(params.paths)
    sft, kls = load_sft(params.paths).eval(), {}
    for name, model in round_policies(params.paths, params.rounds, sft):
        values = parallel.map_batches(partial(sequence_kls, model, tokenizer, max_new_tokens=cfg.max_new_tokens,
                                              seed=params.seed, batch_size=cfg.batch_size,
                                              reference=None if name == "dpo" else sft), prompts, cfg.batch_size)
        kls[name] = kl_summary(values, cfg.bootstrap_samples, params.seed)
        del model
    return kls


def policy_outputs(params: Params, engine: Engine, prompts: list[str]) -> dict[str, list[dict]]:
    """Each DPO round's outputs on the baselines' prompts, decoded as the baselines were, from the weights its KL
    is measured with (its own adapter unmerged)."""
    jobs = [Job(Policy(k, unmerged=True), prompts, decoding(params), model_key(k))
            for k in range(1, params.rounds + 1)]
    return dict(zip([job.name for job in jobs], engine.generate(jobs, "eval")))


def main(params: Params) -> None:
    paths, cfg = params.paths, params.eval
    check_declared(params)  # rounds in params.yaml = the rounds dvc.yaml has stages for
    names, compared = models(params.rounds), pairs(params.rounds)
    held_out = read_jsonl(params.task_files.eval_prompts, required=("id", "prompt"))[:cfg.max_prompts]
    rows = read_jsonl(paths.eval_baselines, required=("id", "prompt", "outputs"))
    if not {r["id"]: r["prompt"] for r in rows}.items() <= {r["id"]: r["prompt"] for r in held_out}.items():
        raise UserError(f"{paths.eval_baselines}: not the baselines of {params.task_files.eval_prompts} "
                        f"(eval.max_prompts {cfg.max_prompts}): run `dvc repro eval_baselines` first")
    task = get_task(params.task)
    judge = make_judge(params.judge, task, read_text(params.task_files.policy))

    from dpo_pipeline.models import parallel
    from dpo_pipeline.models.engines.registry import make_engine
    from dpo_pipeline.evaluation.machine import machine

    # --- each DPO round's KL from SFT, then its outputs (base's and SFT's are the baselines'); num_processes: the
    # stage's processes, a share each, or as many engines as the engine runs itself (vLLM, KL in this process)
    engine = make_engine(params, "eval")
    parallel.relaunch_if_needed("stages.eval", engine.processes)
    parallel.init()
    prompts = [r["prompt"] for r in rows]
    kls = policy_kls(params, prompts)
    outputs = policy_outputs(params, engine, prompts)
    parallel.finish()
    if not parallel.is_main():
        return
    outputs = {m: [r["outputs"][m] for r in rows] for m in ("base", "sft")} | outputs

    # --- score each response; judge each pair of models in both orders (invalid judge answers are excluded)
    scores = judge.score_all([(row["prompt"], outputs[m][i]["text"]) for m in names for i, row in enumerate(rows)])
    items = pair_items(rows, outputs, compared)
    judged = pairwise_both_orders(judge, items)
    # How far those verdicts can be trusted: position flips, repeats, ground truth, agreement with the rubric
    trust = reliability(judge, items, judged, repeats=params.judge.reliability_repeats, seed=params.seed, task=task,
                        reference=reference_judge(task))
    schema = model_metrics(task, JUDGED[judge.pointwise])  # faithfulness 1-5, or a reward model's mean reward
    recs = records(rows, outputs, scores, judged, task, schema, names, compared)

    # --- aggregate: {metric: {base, sft, dpo}} for dvc metrics/exp show; the 95% CIs in their own file,
    # so `dvc exp show` stays readable
    metrics, intervals = aggregate(recs, schema, cfg.bootstrap_samples, params.seed, names, compared)
    for name, kl in kls.items():
        metrics[f"kl_{name}_vs_sft"] = {k: round(v, 4) for k, v in kl.items()}
    metrics |= {"n_prompts": len(recs), "dropped_too_long": len(held_out) - len(recs),  # no room for max_new_tokens
                "judge": {"backend": judge.name, **judge.usage.as_metrics()}, "judge_reliability": trust,
                "machine": machine()}  # the same params give the same numbers on this kind of machine only
    write_jsonl(paths.eval_outputs, recs)
    write_json(paths.eval_ci, intervals)
    write_json(paths.eval_metrics, metrics)
    pw = metrics[PAIRWISE]
    print(f"[bold]eval[/]: DPO vs SFT win rate {pw['win_rate']} [{pw['ci_low']}, {pw['ci_high']}], length-controlled "
          f"{pw['lc_win_rate']} [{pw['lc_ci_low']}, {pw['lc_ci_high']}] over {len(recs)} prompts -> {paths.eval_metrics}")


if __name__ == "__main__":
    cli.run(main)
