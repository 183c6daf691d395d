"""DPO-train a LoRA adapter on top of the SFT model with TRL's DPOTrainer.

    python -m stages.train          (run by `dvc repro` as stage `train`)
    python -m stages.train --round 2    (stage train_r2 of iterative DPO: on top of round 1's policy)

With `train.num_processes` > 1 the stage re-launches itself under torchrun (gloo on CPU, NCCL on GPUs): each
process trains on its share of every batch (the global batch stays `train.batch_size`) and measures KL on its
share of the held-out prompts; process 0 alone logs and writes the outputs. For multi-GPU, FSDP or
DeepSpeed, see the README.

The SFT adapter is merged into the base weights, and a fresh LoRA adapter is trained on top. With
`ref_model=None` TRL computes the reference log-probs with the adapter disabled, i.e. the reference policy
is exactly the SFT model: rewards start at ~0 (metrics/train.json keeps the first logged value).
A held-out slice of the pairs is the eval set, so the validation reward gap is logged too.
Round k > 1 of iterative DPO merges rounds 1..k-1's adapters into the SFT model and trains a fresh adapter on
top of that policy; its reference is that same policy (adapter disabled, `iterate.reference: previous`) or
the SFT model, loaded beside it (`sft`).
With `model.quantization: nf4` (QLoRA) the model trained on has 4-bit NF4 linear layers. A 4-bit layer cannot
take the SFT adapter merged into it without a second rounding, so the SFT model is merged in full precision on
the CPU, saved to a temporary folder and loaded from there in 4-bit; the fresh LoRA goes on top, and the
reference, the adapter disabled, is that quantized SFT model: the policy starts exactly at its reference (KL 0,
rewards 0), and the reference costs no memory beyond the policy's own 4-bit weights. The other choice, the SFT
adapter kept unmerged as a frozen second adapter on the 4-bit base, would avoid the temporary copy but leave
two adapters in every forward pass. metrics/train.json then records how many Linear4bit layers trained.
Training curves go through transformers' DVCLive callback to `paths.train_live` (dvc plots show).
"""

from __future__ import annotations

import copy
import math
import tempfile
import time

from rich import print

from dpo_pipeline import cli
from dpo_pipeline.config import Params, TrainParams
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import atomic_path, read_jsonl, write_json
from dpo_pipeline.rounds import round_paths


def split_pairs(rows: list[dict], cfg: TrainParams, seed: int):
    """The pairs with a seeded held-out slice (the validation reward gap), and the optimizer steps."""
    from datasets import Dataset

    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    split = ds.train_test_split(test_size=cfg.eval_fraction, seed=seed)
    steps = math.ceil(len(split["train"]) / cfg.batch_size) * cfg.epochs
    for key, what in (("logging_steps", "nothing would be logged"), ("eval_steps", "nothing would be validated")):
        if getattr(cfg, key) > steps:
            raise UserError(f"train.{key} ({getattr(cfg, key)}) is more than the {steps:.0f} optimizer steps "
                            f"of this run ({len(split['train'])} pairs): {what}")
    return split, steps


def policy_and_reference(params: Params, round_num: int):
    """The model the fresh LoRA goes on (the SFT model merged; round k: round k-1's policy) and the reference.
    None: the adapter disabled, i.e. the policy this round starts from; else the SFT model beside it, read
    once: the policy is merged into a copy of it (in 4-bit each is merged and quantized on its own)."""
    from dpo_pipeline.models.loading import load_merged, load_merged_4bit, load_sft

    sft_reference = round_num > 1 and params.iterate.reference == "sft"
    if params.model.quantization:
        reference = load_merged_4bit(params.paths, 0).eval() if sft_reference else None
        return load_merged_4bit(params.paths, round_num - 1).train(), reference
    reference = load_sft(params.paths).eval() if sft_reference else None
    sft = copy.deepcopy(reference) if reference else None
    return load_merged(params.paths, round_num - 1, sft=sft).train(), reference


def save(params: Params, paths, trainer, summary: dict, targets, train_seed: int, round_num: int) -> None:
    """The adapter with what made it beside it (README.md replaces PEFT's template card; the resolved trainer
    settings), and metrics/train.json."""
    from dpo_pipeline.models.card import dpo_card, write_settings
    from dpo_pipeline.models.loading import linear_4bit
    from dpo_pipeline.models.lora import save_adapter

    if params.model.quantization:  # what really trained, not what was asked for
        summary["quantization"] = {"method": params.model.quantization, "linear4bit": linear_4bit(trainer.model)}
    with atomic_path(paths.dpo_model) as out:
        save_adapter(trainer.model, out)
        write_settings(out, trainer.args, "training_args.json")
        (out / "README.md").write_text(dpo_card(params, summary["pairs_train"], summary["pairs_eval"], targets,
                                                train_seed, round_num))
    write_json(paths.train_metrics, summary)


def main(params: Params, round_num: int = 1) -> None:
    paths, cfg = round_paths(params.paths, round_num), params.train
    rows = read_jsonl(paths.preferences, required=("prompt", "chosen", "rejected"), strings=())  # message lists

    from transformers import PrinterCallback, set_seed
    from trl import DPOTrainer

    from dpo_pipeline.models import memory, parallel
    from dpo_pipeline.models.dpo import dpo_config, live_callback, live_run, shared_pairs, summarize
    from dpo_pipeline.models.kl import KLMonitor
    from dpo_pipeline.models.loading import load_tokenizer
    from dpo_pipeline.models.lora import lora_config
    from dpo_pipeline.models.training import TrainingProgress

    set_seed(train_seed := params.seed if cfg.seed is None else cfg.seed)
    split, steps = split_pairs(rows, cfg, params.seed)
    parallel.relaunch_if_needed("stages.train", cfg.num_processes)  # inputs checked once, then N processes
    world, main_process = parallel.world()[1], parallel.is_main()
    # --- model & tokenizer: the SFT model (merged; round k: round k-1's policy), a fresh LoRA goes on top
    tokenizer = load_tokenizer(paths)
    memory.check_fits(params, "train", tokenizer, round_num)  # before any weight loads: what to change if it cannot
    model, reference = policy_and_reference(params, round_num)
    # --- training
    start = time.time()
    if main_process:
        print(f"[bold]train[/]: DPO on {len(split['train'])} pairs, beta {cfg.beta}, {steps:.0f} steps, "
              f"{world} process{'es' if world > 1 else ''} ...")
    lora = lora_config(model, params.model.lora_target_modules, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    live = live_run(paths.train_live) if main_process else None
    kl_monitor = KLMonitor(tokenizer, [r["prompt"] for r in split["test"]][:cfg.kl_prompts], every=cfg.kl_every,
                           max_new_tokens=cfg.kl_max_new_tokens, seed=params.seed, live=live, reference=reference)
    with tempfile.TemporaryDirectory() as tmp:
        args = dpo_config(tmp, train_seed, cfg, params.model.max_length, world)
        with shared_pairs(split, args) as pairs:  # several processes: one copy on disk, read by all
            trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=pairs["train"],
                                 eval_dataset=pairs["test"], processing_class=tokenizer, peft_config=lora,
                                 callbacks=[live_callback(live), kl_monitor, TrainingProgress("DPO")]
                                 if main_process else [kl_monitor])  # every process measures a share of KL
            trainer.remove_callback(PrinterCallback)  # the log dicts go to dvclive, not the terminal
            kl_monitor.start(trainer.model)  # 0 by construction: the fresh adapter starts as the reference
            trainer.train()
    if not main_process:
        return
    live.end()
    # No wall-clock time in here: metrics must be identical for identical params.
    summary = {"pairs_train": len(split["train"]), "pairs_eval": len(split["test"]),
               **summarize(trainer.state.log_history), "kl": kl_monitor.summary()}
    save(params, paths, trainer, summary, lora.target_modules, train_seed, round_num)
    first, final, kl = summary["first_step"], summary["final"], summary["kl"]
    print(f"[bold]train[/]: margins {first['rewards/margins']} -> {final['rewards/margins']}, KL {kl['final']}, "
          f"eval accuracy {summary['eval_final']['rewards/accuracies']} in {time.time() - start:.0f}s "
          f"-> {paths.dpo_model}")


if __name__ == "__main__":
    cli.run(main)
