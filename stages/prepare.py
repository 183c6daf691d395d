"""Prepare the base model: train the builtin tiny model, or copy a hub model / local folder into place.

    python -m stages.prepare        (run by `dvc repro` as stage `prepare`)

Later stages load `paths.base_model` with AutoModelForCausalLM / AutoTokenizer only, so the builtin
model and a real one travel the same road from here on.
"""

from __future__ import annotations

import time

from rich import print

from stages import cli
from stages.config import load_params
from stages.files import atomic_path, read_jsonl
from stages.tasks import get_task


def main() -> None:
    params = load_params()
    paths, cfg = params.paths, params.model
    start = time.time()
    if cfg.base == "builtin:tiny":
        from stages.models import train_tiny_base

        task = get_task(params.task)
        rows = read_jsonl(paths.sft_data, required=("prompt", "response"))
        texts = [task.pretrain_text(r["prompt"], r["response"]) for r in rows]
        print(f"[bold]prepare[/]: training {cfg.base} from scratch on {len(texts)} documents ...")
        with atomic_path(paths.base_model) as out:
            info = train_tiny_base(texts, cfg, params.seed, out)
    else:
        from stages.models import load_pretrained

        with atomic_path(paths.base_model) as out:
            info = load_pretrained(cfg.base, out)
    print(f"[bold]prepare[/]: {cfg.base} -> {paths.base_model} {info} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    cli.run(main)
