"""Supervised fine-tuning: a LoRA adapter on the base model with TRL's SFTTrainer.

    python -m stages.sft            (run by `dvc repro` as stage `sft`)

The data is the task's SFT pairs, as a conversational prompt/completion dataset: TRL applies the chat
template and trains on the completion tokens only.
"""

from __future__ import annotations

import tempfile
import time

from rich import print

from stages import cli
from stages.chat import assistant, user
from stages.config import load_params
from stages.files import atomic_path, read_jsonl
from stages.models import device, save_adapter


def main() -> None:
    params = load_params()
    paths, cfg = params.paths, params.sft
    rows = read_jsonl(paths.sft_data, required=("prompt", "response"))

    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer
    from transformers import PrinterCallback, set_seed

    from stages.models import load_base, load_tokenizer

    set_seed(params.seed)
    # --- model & tokenizer
    tokenizer = load_tokenizer(paths.base_model)
    model = load_base(paths)
    # --- dataset
    ds = Dataset.from_list([{"prompt": user(r["prompt"]), "completion": assistant(r["response"])} for r in rows])
    # --- training
    start = time.time()
    print(f"[bold]sft[/]: training a LoRA adapter on {len(rows)} examples ...")
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
            max_length=params.model.max_length, logging_steps=25, save_strategy="no", report_to="none",
            seed=params.seed, data_seed=params.seed, bf16=False, gradient_checkpointing=False, use_cpu=device() == "cpu", disable_tqdm=True,
        )
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                             peft_config=lora)
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    with atomic_path(paths.sft_model) as out:
        save_adapter(trainer.model, out)
    print(f"[bold]sft[/]: {len(rows)} examples, loss {result.training_loss:.4f}, "
          f"{time.time() - start:.0f}s -> {paths.sft_model}")


if __name__ == "__main__":
    cli.run(main)
