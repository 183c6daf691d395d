"""The DPO trainer's settings and logging: TRL's DPOConfig from `train` params (the stage and the bench's
bare TRL script build it here), transformers' DVCLive callback against the optimizer step, and the summary
metrics/train.json keeps."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dpo_pipeline.config import TrainParams
from dpo_pipeline.models.training import batching, common_args


def dpo_config(output_dir: str, seed: int, cfg: TrainParams, max_length: int, world_size: int = 1):
    """TRL's DPOConfig from `train` params. The global batch stays `cfg.batch_size` whatever the number of
    processes (each takes an equal share) and micro batch (each share in forward passes of
    `micro_batch_size` pairs, gradients accumulated), so runs with 1 or N processes, 1 or N passes compare.

    Micro-batches are equal slices of the shuffled order (`batching` without rebalance). The DPO loss is then
    the whole batch's, up to float rounding; the `sft` term is not quite: TRL averages it over the chosen
    tokens of each micro-batch (it takes no token count), so micro-batches with fewer tokens weigh their
    tokens more. The validation pass runs at the micro batch too, and so does the reference's pass before
    training (precompute_ref_log_probs, sized by these two); TRL averages validation rewards per batch, so
    with held-out pairs that do not divide into the micro batch they move a little with it."""
    from trl import DPOConfig

    per_process, micro = cfg.batch_size // world_size, cfg.micro_batch_size

    return DPOConfig(
        beta=cfg.beta, learning_rate=cfg.learning_rate,
        # RPO-style: an NLL term on the chosen response keeps its likelihood from falling with the rejected
        loss_type=[cfg.loss_type, "sft"] if cfg.sft_weight else [cfg.loss_type],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight else None,
        label_smoothing=cfg.label_smoothing, discopop_tau=cfg.discopop_tau,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        num_train_epochs=cfg.epochs, **batching(per_process, micro, rebalance=False),
        per_device_eval_batch_size=cfg.batch_size if micro is None else micro,
        # transformers reads a warmup_steps below 1 as a share of the steps (rounded up); config.py keeps it < 1
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        max_length=max_length, logging_steps=cfg.logging_steps, eval_strategy="steps",
        eval_steps=cfg.eval_steps, eval_on_start=True,
        **common_args(output_dir, seed, cfg.activation_checkpointing),
    )


@contextmanager
def shared_pairs(split, args):
    """The pairs as every process must see them. With several processes and precomputed reference log-probs,
    TRL writes the log-probs next to the dataset's files and the other processes read them from there; an
    in-memory dataset has no files, so each process would look in a temporary folder of its own, where only
    process 0's file exists (FileNotFoundError on rank 1). So process 0 writes the pairs to one folder first
    and every process reads them from it; the folder goes when training is done."""
    if args.world_size == 1 or not args.precompute_ref_log_probs:
        yield split
        return
    from datasets import DatasetDict, load_from_disk

    run = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "0")  # one value for all ranks
    folder = Path(tempfile.gettempdir()) / f"dpo-pipeline-pairs-{run}"
    try:
        with args.main_process_first(local=True, desc="the pairs to a folder every process reads"):
            if args.local_process_index == 0:
                DatasetDict(split).save_to_disk(str(folder))
            pairs = load_from_disk(str(folder))
        yield pairs
    finally:
        if args.local_process_index == 0:
            shutil.rmtree(folder, ignore_errors=True)


def without_timings(logs: dict) -> dict:
    """Wall-clock keys (runtime, samples/s, steps/s) differ run to run; identical params must give
    identical logged curves, so they are not logged."""
    return {k: v for k, v in logs.items() if not k.endswith(("runtime", "per_second"))}


def live_run(folder: str):
    """dvclive's Live for the training curves: no dvc.yaml of its own (dvc.yaml declares the plots) and no
    experiment of its own (dvc exp run makes it)."""
    from dvclive import Live

    return Live(dir=folder, dvcyaml=None, save_dvc_exp=False)


def live_callback(live):
    """transformers' own DVCLive callback, plotting against the optimizer step (train and eval logs of one
    step share an x value) and without wall-clock keys."""
    from transformers.integrations import DVCLiveCallback

    class StepLive(DVCLiveCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.live is not None:
                self.live.step = state.global_step
            super().on_log(args, state, control, logs=without_timings(logs or {}), **kwargs)

    return StepLive(live=live)


def summarize(log_history: list[dict]) -> dict:
    """The numbers a reader checks: where rewards started, where margins and accuracies ended."""
    train = [h for h in log_history if "rewards/margins" in h]
    evals = [h for h in log_history if "eval_rewards/margins" in h]
    pick = lambda h, k: round(h[k], 4) + 0.0  # noqa: E731 - + 0.0: a margin of exactly 0 reads 0.0, not -0.0
    return {
        "first_step": {k: pick(train[0], k) for k in ("rewards/chosen", "rewards/rejected", "rewards/margins")},
        "final": {k: pick(train[-1], k) for k in ("loss", "rewards/margins", "rewards/accuracies")},
        "eval_first": {k: pick(evals[0], "eval_" + k) for k in ("rewards/margins", "rewards/accuracies")},
        "eval_final": {k: pick(evals[-1], "eval_" + k) for k in ("loss", "rewards/margins", "rewards/accuracies")},
    }
