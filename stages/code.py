"""What each stage computes with: one fingerprint file a stage in `paths.code`, which the stage depends on.

    python -m stages.code       (run by `dvc repro` as stage `code`, first)

A line per file the stage runs and the hash of its code without comments, docstrings or formatting
(dpo_pipeline/fingerprint.py). This stage depends on all the code, so any edit runs it (in a second); a
stage after it re-runs only when its own fingerprint changed: a comment re-runs nothing, a new loss re-runs
train.
"""

from __future__ import annotations

from pathlib import Path

from rich import print

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.files import write_text
from dpo_pipeline.fingerprint import fingerprint, stages

ROOT = Path(__file__).resolve().parents[1]


def main(params: Params) -> None:
    out, names = Path(params.paths.code), stages(ROOT)
    for stage in names:
        write_text(out / f"{stage}.txt", fingerprint(stage, ROOT, params.task.module))
    print(f"[bold]code[/]: the code of {len(names)} stages -> {out}/")


if __name__ == "__main__":
    cli.run(main)
