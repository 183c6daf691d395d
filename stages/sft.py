"""Supervised fine-tuning: a LoRA adapter on the base model with TRL's SFTTrainer, or your SFT model.

    python -m stages.sft            (run by `dvc repro` as stage `sft`)

With `model.sft: null` the data is the task's SFT pairs, as a conversational prompt/completion dataset: TRL
applies the chat template and trains on the completion tokens only. With `model.sft` set (a PEFT adapter
trained on model.base, or a full model; a folder or a hub id), nothing is trained: the adapter is checked
against the base and `paths.sft_model` gets a manifest.json naming it, with its content hash.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from rich import print

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import atomic_path, sft_pairs


def use_existing(params: Params) -> dict:
    """Resolve model.sft, check it fits model.base, and say what it is."""
    from dpo_pipeline.models.loading import load_base

    from dpo_pipeline.models.manifest import resolve
    name = params.model.sft
    info = resolve("model.sft", name)
    folder = Path(info["path"])
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        declared = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        try:  # PEFT raises on a shape or module-name mismatch: an adapter made for another base
            PeftModel.from_pretrained(load_base(params.paths), str(folder))
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"model.sft: the adapter in {name!r} (made for {declared!r}) does not fit model.base "
                            f"{params.model.base!r}: {str(e).strip().splitlines()[0][:200]}") from None
        return {"kind": "adapter", "adapter_base": declared, **info}
    if (folder / "config.json").exists():
        return {"kind": "full", **info}
    raise UserError(f"model.sft: {name!r} holds neither adapter_config.json (a PEFT adapter) nor config.json "
                    "(a full model)")


def main(params: Params) -> None:
    paths, cfg = params.paths, params.sft
    start = time.time()
    if params.model.sft is not None:
        from dpo_pipeline.models.manifest import write_manifest

        info = use_existing(params)
        with atomic_path(paths.sft_model) as out:
            write_manifest(out, info)
        print(f"[bold]sft[/]: using the {info['kind']} SFT model {params.model.sft} -> {paths.sft_model}")
        return

    rows = sft_pairs(params, "the sft stage trains the SFT adapter on them (or set model.sft to your SFT model)")
    rows = rows[:cfg.max_rows]

    from transformers import set_seed

    from dpo_pipeline.models import memory
    from dpo_pipeline.models.card import sft_card, write_settings
    from dpo_pipeline.models.loading import linear_4bit, load_base, load_tokenizer
    from dpo_pipeline.models.lora import save_adapter
    from dpo_pipeline.models.training import sft_trainer

    set_seed(params.seed)
    # --- model & tokenizer
    tokenizer = load_tokenizer(paths)
    memory.check_fits(params, "sft", tokenizer)  # before the weights load: names what to change if they cannot
    model = load_base(paths, params.model.quantization)  # nf4: 4-bit linear layers under the LoRA (QLoRA)
    # --- training: the pairs as a conversational prompt/completion dataset (models/training.sft_trainer)
    bits = f" ({linear_4bit(model)} linear layers in {params.model.quantization})" if params.model.quantization else ""
    print(f"[bold]sft[/]: training a LoRA adapter on {len(rows)} examples{bits} ...")
    with tempfile.TemporaryDirectory() as tmp:
        trainer, lora = sft_trainer(params, model, tokenizer, rows, tmp)
        result = trainer.train()
    with atomic_path(paths.sft_model) as out:
        save_adapter(trainer.model, out)
        write_settings(out, trainer.args, "sft_args.json")  # and the card (PEFT's template replaced): models/card.py
        (out / "README.md").write_text(sft_card(params, len(rows), lora.target_modules))
    print(f"[bold]sft[/]: {len(rows)} examples, loss {result.training_loss:.4f}, "
          f"{time.time() - start:.0f}s -> {paths.sft_model}")


if __name__ == "__main__":
    cli.run(main)
