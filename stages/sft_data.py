"""The task's SFT pairs, or none: <paths.data>/<task.name>/sft.jsonl checked and copied to `paths.sft_data`.

    python -m stages.sft_data       (run by `dvc repro` as stage `sft_data`)

Only two settings read SFT pairs: `model.base: builtin:tiny` (pre-trained on them) and `model.sft: null`
(the sft stage trains the adapter on them); eval_baselines reads them to refuse held-out prompts that are
also training prompts. A task that brings its own SFT model needs no sft.jsonl, but DVC cannot depend on a
file that may not exist. So this stage depends on the task's data folder and writes the rows it found (an
empty file when there is no sft.jsonl); prepare, sft and eval_baselines depend on that copy, which changes
only when the SFT pairs do, so an edit to prompts.jsonl re-runs this stage and nothing after it.
"""

from __future__ import annotations

from pathlib import Path

from rich import print

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.files import read_jsonl, write_jsonl


def main(params: Params) -> None:
    source = Path(params.task_files.sft_data)
    rows = read_jsonl(source, required=("id", "prompt", "response")) if source.exists() else []
    write_jsonl(params.paths.sft_data, rows)
    print(f"[bold]sft_data[/]: {len(rows)} SFT pairs from {source}" + ("" if rows else " (none: no such file)")
          + f" -> {params.paths.sft_data}")


if __name__ == "__main__":
    cli.run(main)
