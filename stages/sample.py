"""Sample two responses per prompt from the SFT model, one at each of `sample.temperatures`.

    python -m stages.sample         (run by `dvc repro` as stage `sample`)

Output rows: {id, prompt, responses: [{text, temperature, tokens}, {...}]}, the judge's input.
"""

from __future__ import annotations

import time

from rich import print

from stages import cli
from stages.config import load_params
from stages.files import read_jsonl, write_jsonl


def main() -> None:
    params = load_params()
    paths, cfg = params.paths, params.sample
    rows = read_jsonl(paths.prompts, required=("id", "prompt"))

    from stages.models import generate, load_policy, load_tokenizer

    tokenizer = load_tokenizer(paths.base_model)
    model = load_policy("sft", paths)
    prompts = [r["prompt"] for r in rows]
    start = time.time()
    by_temp = [
        generate(model, tokenizer, prompts, temperature=t, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                 batch_size=cfg.batch_size, seed=params.seed + 1000 * i, label=f"sampling T={t}")
        for i, t in enumerate(cfg.temperatures)
    ]
    out = [{"id": r["id"], "prompt": r["prompt"],
            "responses": [{**gen[j], "temperature": t} for gen, t in zip(by_temp, cfg.temperatures)]}
           for j, r in enumerate(rows)]
    write_jsonl(paths.samples, out)
    print(f"[bold]sample[/]: {len(out)} prompts x {len(cfg.temperatures)} responses in {time.time() - start:.0f}s "
          f"-> {paths.samples}")


if __name__ == "__main__":
    cli.run(main)
