"""Write the task's shipped data files (deterministic: same flags, same bytes).

    python -m tools.make_data                     (`make data`: the shipped files)
    python -m tools.make_data --n-sft 2000 --seed 1

Not a DVC stage on purpose: data/*.jsonl are inputs a user may replace with their own. The task is
params.yaml's `task`; its generator is generate() in <task>_data.py beside the task module, which no stage
runs; the generator's settings are these flags, not params (no stage reads them).
"""

from __future__ import annotations

import argparse

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.files import write_jsonl
from dpo_pipeline.tasks.synthetic import generator

# The settings the shipped data/ files were written with: generate(seed, n_sft, n_prompts, n_eval).
DEFAULTS = {"seed": 0,            # the generator's seed
            "n_sft": 4000,        # rows of sft.jsonl
            "n_prompts": 1000,    # rows of prompts.jsonl
            "n_eval": 300}        # rows of eval.jsonl


def main(params: Params, args: argparse.Namespace) -> None:
    splits = generator(params.task)(args.seed, args.n_sft, args.n_prompts, args.n_eval)
    files = params.task_files
    for split, path in (("sft", files.sft_data), ("prompts", files.prompts), ("eval", files.eval_prompts)):
        write_jsonl(path, splits[split])
        print(f"wrote {len(splits[split])} rows to {path}")


count = cli.arg_type(int, lambda n: n > 0, "a whole number > 0")


def parser() -> argparse.ArgumentParser:
    p = cli.tool_parser(__doc__)
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="the generator's seed (default: %(default)s)")
    p.add_argument("--n-sft", type=count, default=DEFAULTS["n_sft"], metavar="N",
                   help="rows of sft.jsonl (default: %(default)s)")
    p.add_argument("--n-prompts", type=count, default=DEFAULTS["n_prompts"], metavar="N",
                   help="rows of prompts.jsonl (default: %(default)s)")
    p.add_argument("--n-eval", type=count, default=DEFAULTS["n_eval"], metavar="N",
                   help="rows of eval.jsonl, the held-out prompts (default: %(default)s)")
    return p


if __name__ == "__main__":
    cli.run(main, parser())
