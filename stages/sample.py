"""Sample one response per prompt from the SFT model at each of `sample.temperatures`.

    python -m stages.sample         (run by `dvc repro` as stage `sample`)
    python -m stages.sample --round 2   (stage sample_r2 of iterative DPO: from round 1's policy)

Output rows: {id, prompt, responses: [{text, temperature, tokens}, ...]}, the judge's input. When the
preference pairs come from a dataset (`preferences.source` is not `generated`) there is nothing to sample:
the stage writes an empty file and loads no model. With `sample.num_processes` > 1 the stage re-launches
itself under torchrun and each process generates a share of the batches. Each prompt is seeded by itself, so
the output is byte-identical whatever the batch size or number of processes (models/generation.py).
Round k > 1 of iterative DPO samples from round k-1's policy, on the prompts `iterate.prompts` gives it, with
seeds of its own (dpo_pipeline/rounds.py). `generation.engine` picks what generates (dpo_pipeline/models/engines/:
vLLM, in its own environment, with the same seeds, temperatures and limits).
"""

from __future__ import annotations

import time

from rich import print

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import read_jsonl, write_jsonl
from dpo_pipeline.rounds import prompt_block, round_paths


def main(params: Params, round_num: int = 1) -> None:
    paths, cfg = round_paths(params.paths, round_num), params.sample
    if not params.preferences.generated:
        write_jsonl(paths.samples, [])
        print(f"[bold]sample[/]: skipped, the preference pairs come from {params.preferences.source}")
        return
    rows = read_jsonl(params.task_files.prompts, required=("id", "prompt"))
    rows = rows[prompt_block(params, round_num, len(rows))]

    from dpo_pipeline.models.generation import fitting
    from dpo_pipeline.models.loading import base_config, load_tokenizer

    tokenizer = load_tokenizer(paths)
    keep = fitting(base_config(params.paths), tokenizer, [r["prompt"] for r in rows], cfg.max_new_tokens)
    if len(keep) < len(rows):
        print(f"[bold]sample[/]: dropped {len(rows) - len(keep)} prompts too long for the model's context with "
              f"{cfg.max_new_tokens} new tokens")
    rows = [rows[i] for i in keep]
    if not rows:
        raise UserError(f"{params.task_files.prompts}: every prompt is too long for the model's context with "
                        f"sample.max_new_tokens {cfg.max_new_tokens}")
    prompts = [r["prompt"] for r in rows]
    # Each temperature's own seed; a later round's too, so round k's samples are not round 1's again
    seeds = [params.seed + 1000 * i + 100_003 * (round_num - 1) for i in range(len(cfg.temperatures))]
    label = "sampling" + (f", round {round_num}" if round_num > 1 else "")
    start = time.time()

    from dpo_pipeline.models import parallel
    from dpo_pipeline.models.engines.base import Decoding, Job, Policy
    from dpo_pipeline.models.engines.registry import make_engine

    engine = make_engine(params, "sample")
    parallel.relaunch_if_needed("stages.sample", engine.processes)  # inputs checked once, then N processes
    parallel.init()
    policy = Policy(round_num - 1)  # round 1: the SFT model; round k: round k-1's policy
    by_temp = engine.generate([Job(policy, prompts, Decoding(t, cfg.top_k, cfg.top_p, cfg.max_new_tokens, seed),
                                   f"T={t}") for t, seed in zip(cfg.temperatures, seeds)], label)
    parallel.finish()
    if not parallel.is_main():
        return
    out = [{"id": r["id"], "prompt": r["prompt"],
            "responses": [{**gen[j], "temperature": t} for gen, t in zip(by_temp, cfg.temperatures)]}
           for j, r in enumerate(rows)]
    write_jsonl(paths.samples, out)
    print(f"[bold]sample[/]: {len(out)} prompts x {cfg.num_candidates} responses in {time.time() - start:.0f}s "
          f"-> {paths.samples}")


if __name__ == "__main__":
    cli.run(main)
