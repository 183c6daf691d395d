"""Write the task's shipped data files (deterministic: same `data` params, same bytes).

    python -m stages.make_data

Not a DVC stage on purpose: data/*.jsonl are inputs a user may replace with their own.
"""

from __future__ import annotations

from stages import cli
from stages.config import load_params
from stages.files import write_jsonl
from stages.tasks import get_task


def main() -> None:
    params = load_params()
    d, paths = params.data, params.paths
    splits = get_task(params.task).generate(d.seed, d.n_sft, d.n_prompts, d.n_eval)
    for split, path in (("sft", params.task_files.sft_data), ("prompts", params.task_files.prompts), ("eval", params.task_files.eval_prompts)):
        write_jsonl(path, splits[split])
        print(f"wrote {len(splits[split])} rows to {path}")


if __name__ == "__main__":
    cli.run(main)
