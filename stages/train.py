"""DPO-train a LoRA adapter on top of the SFT model with TRL's DPOTrainer.

    python -m stages.train          (run by `dvc repro` as stage `train`)

With `train.num_processes` > 1 the stage re-launches itself under torchrun (gloo on CPU, NCCL on GPUs): each
process trains on its share of every batch (the global batch stays `train.batch_size`), and process 0 alone
logs, measures KL and writes the outputs. For multi-GPU, FSDP or DeepSpeed, see the README.

The SFT adapter is merged into the base weights, and a fresh LoRA adapter is trained on top. With
`ref_model=None` TRL computes the reference log-probs with the adapter disabled, i.e. the reference policy
is exactly the SFT model: rewards start at ~0 (metrics/train.json keeps the first logged value).
A held-out slice of the pairs is the eval set, so the validation reward gap is logged too.
Training curves go through transformers' DVCLive callback to `paths.train_live` (dvc plots show).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time

from rich import print

from stages import cli
from stages.config import UserError, load_params
from stages.files import atomic_path, read_jsonl, write_json


def without_timings(logs: dict) -> dict:
    """Wall-clock keys (runtime, samples/s, steps/s) differ run to run; identical params must give
    identical logged curves, so they are not logged."""
    return {k: v for k, v in logs.items() if not k.endswith(("runtime", "per_second"))}


def summarize(log_history: list[dict]) -> dict:
    """The numbers a reader checks: where rewards started, where margins and accuracies ended."""
    train = [h for h in log_history if "rewards/margins" in h]
    evals = [h for h in log_history if "eval_rewards/margins" in h]
    pick = lambda h, k: round(h[k], 4)  # noqa: E731
    return {
        "first_step": {k: pick(train[0], k) for k in ("rewards/chosen", "rewards/rejected", "rewards/margins")},
        "final": {k: pick(train[-1], k) for k in ("loss", "rewards/margins", "rewards/accuracies")},
        "eval_first": {k: pick(evals[0], "eval_" + k) for k in ("rewards/margins", "rewards/accuracies")},
        "eval_final": {k: pick(evals[-1], "eval_" + k) for k in ("loss", "rewards/margins", "rewards/accuracies")},
    }


def main() -> None:
    params = load_params()
    paths, cfg = params.paths, params.train
    rows = read_jsonl(paths.preferences, required=("prompt", "chosen", "rejected"), strings=())  # message lists

    from datasets import Dataset
    from dvclive import Live
    from transformers import PrinterCallback, TrainerCallback, set_seed
    from transformers.integrations import DVCLiveCallback
    from trl import DPOConfig, DPOTrainer

    from stages.models import (TrainingProgress, device, load_policy, load_tokenizer, lora_config, save_adapter,
                               sequence_kl, use_bf16)

    class KLMonitor(TrainerCallback):
        """Every `train.kl_every` steps: KL(policy || SFT reference) on held-out prompts, logged beside rewards."""

        def __init__(self, prompts: list[list[dict]]):
            self.prompts, self.history = prompts, []

        def measure(self, model, step: int) -> None:
            kl = sequence_kl(model, tokenizer, self.prompts, max_new_tokens=cfg.kl_max_new_tokens, seed=params.seed)
            self.history.append({"step": step, **kl})
            live.step = step
            live.log_metric("kl", kl["kl"])

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % cfg.kl_every == 0 or state.global_step == state.max_steps:
                self.measure(model, state.global_step)

    class Callback(DVCLiveCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            # Plot against the optimizer step: train and eval logs of one step share an x value.
            if self.live is not None:
                self.live.step = state.global_step
            super().on_log(args, state, control, logs=without_timings(logs or {}), **kwargs)

    set_seed(params.seed)
    # --- dataset: a seeded held-out slice for the validation reward gap
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    split = ds.train_test_split(test_size=cfg.eval_fraction, seed=params.seed)
    steps = math.ceil(len(split["train"]) / cfg.batch_size) * cfg.epochs
    if cfg.logging_steps > steps:
        raise UserError(f"train.logging_steps ({cfg.logging_steps}) is more than the {steps:.0f} optimizer steps "
                        f"of this run ({len(split['train'])} pairs): nothing would be logged")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if cfg.num_processes > 1 and world == 1:  # checked the inputs here once; now the real run, N processes
        sys.exit(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 f"--nproc_per_node={cfg.num_processes}", "-m", "stages.train"]).returncode)
    main_process = int(os.environ.get("RANK", 0)) == 0
    # --- model & tokenizer: the SFT model (merged), a fresh LoRA goes on top
    tokenizer = load_tokenizer(paths)
    model = load_policy("sft", paths).train()
    # --- training
    start = time.time()
    if main_process:
        print(f"[bold]train[/]: DPO on {len(split['train'])} pairs, beta {cfg.beta}, {steps:.0f} steps, "
              f"{world} process{'es' if world > 1 else ''} ...")
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp, beta=cfg.beta, learning_rate=cfg.learning_rate,
            # RPO-style: an NLL term on the chosen response keeps its likelihood from falling with the rejected
            loss_type=[cfg.loss_type, "sft"] if cfg.sft_weight else [cfg.loss_type],
            loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight else None,
            label_smoothing=cfg.label_smoothing, discopop_tau=cfg.discopop_tau,
            precompute_ref_log_probs=cfg.precompute_ref_log_probs,
            num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size // world,
            per_device_eval_batch_size=cfg.batch_size, lr_scheduler_type="linear", warmup_steps=0.1,
            max_length=params.model.max_length, logging_steps=cfg.logging_steps, eval_strategy="steps",
            eval_steps=cfg.logging_steps * 2, eval_on_start=True, save_strategy="no", report_to="none",
            seed=params.seed, data_seed=params.seed, bf16=use_bf16(), gradient_checkpointing=False,
            use_cpu=device() == "cpu", disable_tqdm=True,
        )
        lora = lora_config(model, params.model.lora_target_modules, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        kl_monitor = KLMonitor([r["prompt"] for r in split["test"]][:cfg.kl_prompts])
        if main_process:
            live = Live(dir=paths.train_live, dvcyaml=None, save_dvc_exp=False)
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=split["train"],
                             eval_dataset=split["test"], processing_class=tokenizer, peft_config=lora,
                             callbacks=[Callback(live=live), kl_monitor, TrainingProgress("DPO")] if main_process
                             else [])
        trainer.remove_callback(PrinterCallback)  # the log dicts go to dvclive, not the terminal
        if main_process:
            kl_monitor.measure(trainer.model, 0)  # 0 by construction: the fresh adapter starts as the reference
        trainer.train()
        if not main_process:
            return
        live.end()
    # No wall-clock time in here: metrics must be identical for identical params.
    summary = {"pairs_train": len(split["train"]), "pairs_eval": len(split["test"]),
               **summarize(trainer.state.log_history),
               "kl": {"final": round(kl_monitor.history[-1]["kl"], 4),
                      "max": round(max(h["kl"] for h in kl_monitor.history), 4),
                      "final_per_token": round(kl_monitor.history[-1]["kl_per_token"], 5),
                      "prompts": len(kl_monitor.prompts)}}
    with atomic_path(paths.dpo_model) as out:
        save_adapter(trainer.model, out)
    write_json(paths.train_metrics, summary)
    print(f"[bold]train[/]: margins {summary['first_step']['rewards/margins']} -> {summary['final']['rewards/margins']}, "
          f"KL {summary['kl']['final']}, "
          f"eval accuracy {summary['eval_final']['rewards/accuracies']} in {time.time() - start:.0f}s -> {paths.dpo_model}")


if __name__ == "__main__":
    cli.run(main)
