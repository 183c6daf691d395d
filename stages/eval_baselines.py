"""Generate the base's and SFT's outputs on the held-out prompts: what eval compares SFT+DPO with.

    python -m stages.eval_baselines     (run by `dvc repro` as stage `eval_baselines`)

A stage of its own because nothing DPO does changes these outputs: a change to `train.*` (a beta sweep:
`dvc exp run -S train.beta=0.3`) re-runs train and eval, and eval reads them instead of generating two of its
three models again. Eval decodes SFT+DPO with the same params and seeds (dpo_pipeline/evaluation/held_out.py).
Prompts that leave no room for `eval.max_new_tokens` in the base's context are dropped (eval reports how many),
and a held-out prompt that is also a training prompt is refused. `generation.engine` generates
(dpo_pipeline/models/engines/); with `eval.num_processes` > 1 the stage re-launches itself under torchrun, each
process a share of the batches (the same output), or vLLM starts that many engines.
Output rows: {id, prompt, outputs: {base: {text, tokens}, sft: {text, tokens}}}.
"""

from __future__ import annotations

from rich import print

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.held_out import decoding, refuse_overlap
from dpo_pipeline.files import read_jsonl, write_jsonl


def main(params: Params) -> None:
    cfg, files = params.eval, params.task_files
    rows = read_jsonl(files.eval_prompts, required=("id", "prompt"))[:cfg.max_prompts]
    refuse_overlap(params, rows)

    from dpo_pipeline.models.generation import fitting
    from dpo_pipeline.models.loading import base_config, load_tokenizer

    tokenizer = load_tokenizer(params.paths)
    # One architecture, one context: the base decides what fits, for every model
    rows = [rows[i] for i in fitting(base_config(params.paths), tokenizer, [r["prompt"] for r in rows],
                                     cfg.max_new_tokens)]
    if not rows:
        raise UserError(f"{files.eval_prompts}: every prompt is too long for the model's context with "
                        f"eval.max_new_tokens {cfg.max_new_tokens}")
    prompts = [r["prompt"] for r in rows]

    from dpo_pipeline.models import parallel
    from dpo_pipeline.models.engines.base import BASE, SFT, Job
    from dpo_pipeline.models.engines.registry import make_engine

    engine = make_engine(params, "eval")
    parallel.relaunch_if_needed("stages.eval_baselines", engine.processes)  # inputs checked once
    parallel.init()
    jobs = [Job(policy, prompts, decoding(params), policy.name) for policy in (BASE, SFT)]  # no DPO adapter is read
    outputs = dict(zip([job.name for job in jobs], engine.generate(jobs, "eval")))
    parallel.finish()
    if not parallel.is_main():
        return
    write_jsonl(params.paths.eval_baselines, [{**r, "outputs": {m: outputs[m][i] for m in outputs}}
                                              for i, r in enumerate(rows)])
    print(f"[bold]eval_baselines[/]: base and SFT on {len(rows)} held-out prompts -> {params.paths.eval_baselines}")


if __name__ == "__main__":
    cli.run(main)
