"""Write the task's shipped data files (deterministic: same `data` params, same bytes).

    python -m tools.make_data

Not a DVC stage on purpose: data/*.jsonl are inputs a user may replace with their own.
"""

from __future__ import annotations

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.files import write_jsonl
from dpo_pipeline.tasks import get_task, need


def main(params: Params) -> None:
    d = params.data
    splits = need(get_task(params.task), "generate")(d.seed, d.n_sft, d.n_prompts, d.n_eval)
    files = params.task_files
    for split, path in (("sft", files.sft_data), ("prompts", files.prompts), ("eval", files.eval_prompts)):
        write_jsonl(path, splits[split])
        print(f"wrote {len(splits[split])} rows to {path}")


if __name__ == "__main__":
    cli.run(main, cli.tool_parser(__doc__))
