"""What every training in the pipeline shares (the builtin base model, SFT, DPO and the bench's bare TRL
script): the trainer settings written once, and the progress bar."""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.trainer_pt_utils import BatchRebalanceSampler

from dpo_pipeline.models.device import device, use_bf16
from dpo_pipeline.progress import progress as progress_bar


def common_args(output_dir: str, seed: int, activation_checkpointing: bool = False) -> dict:
    """Settings every trainer here takes: seeded data order, no checkpoints (the stage saves what it
    keeps), logs to our own callbacks only, bf16 on a GPU that has it, float32 on CPU (reproducible).
    Activation checkpointing by its new name (TRL's configs turn it on by default; the old name warns), off
    unless asked for; on, non-reentrant: the reentrant kind gives the LoRA weights inside a checkpointed layer
    no gradient unless the layer's input requires one, which a frozen base's embeddings do not."""
    return dict(output_dir=output_dir, seed=seed, data_seed=seed, save_strategy="no", report_to="none",
                bf16=use_bf16(), activation_checkpointing=activation_checkpointing,
                activation_checkpointing_kwargs={"use_reentrant": False} if activation_checkpointing else None,
                use_cpu=device() == "cpu", disable_tqdm=True)


def batching(batch_size: int, micro_batch_size: int | None, rebalance: bool = True) -> dict:
    """Trainer settings for optimizer steps of `batch_size` examples (per process), each step's examples cut
    into forward passes of `micro_batch_size` (None: one pass), gradient accumulation doing the rest.

    rebalance (the tiny base's pre-training, SFT): transformers' batch_rebalance sampler cuts each step's
    examples into micro-batches of similar lengths, `micro_batch_size` on average (fewer long examples, more
    short ones). A batch padded to its longest example computes 1.5x its real tokens on the default task; cut
    this way, 1.1x. The loss stays the whole batch's token-weighted mean (transformers counts the tokens
    across the micro-batches), so results equal one padded batch's within float noise.
    Not for DPO: TRL's DPO loss is a mean over each micro-batch's pairs (it takes no token count), which the
    trainer averages over the micro-batches, so a pair weighs the same only when every micro-batch has the
    same size: consecutive slices of the default shuffled order, the same pairs a step as one batch."""
    if micro_batch_size is None or micro_batch_size >= batch_size:
        return dict(per_device_train_batch_size=batch_size)
    return dict(per_device_train_batch_size=micro_batch_size,
                gradient_accumulation_steps=batch_size // micro_batch_size,
                **(dict(train_sampling_strategy="batch_rebalance") if rebalance else {}))


class _SeededBatches:
    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, BatchRebalanceSampler):
            sampler.seed = self.args.data_seed
        return sampler


def seeded_batches(trainer_class: type) -> type:
    """`trainer_class` (Trainer, SFTTrainer) with its batch_rebalance sampler seeded by `data_seed`, as the
    default sampler is: each step gets the examples one padded batch would.

    A shim, checked 2026-12-06 against transformers 5.x: `Trainer._get_train_sampler` builds
    BatchRebalanceSampler without a seed, so it shuffles with its default 42 whatever the trainer's seed. It
    overrides that private method; tests/test_models.py checks both that the mend works and that transformers
    still needs it, and fails (drop this) the day transformers seeds the sampler itself."""
    return type(trainer_class.__name__, (_SeededBatches, trainer_class), {})


class TrainingProgress(TrainerCallback):
    """A progress bar over optimizer steps for transformers/TRL trainers (their tqdm bars are off: the log
    dicts go to dvclive). Drawn by the main process only; it touches no RNG, so results do not change."""

    def __init__(self, description: str) -> None:
        self.description, self.bar = description, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            # Once a second, not rich's 10: a step takes seconds to minutes on CPU, and each redraw is a third
            # thread taking a core from torch's two (measured: 0.8-1.9% of a core at 10 a second).
            self.bar = progress_bar("steps", refresh_per_second=1)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def sft_trainer(params, model, tokenizer, rows: list[dict], output_dir: str):
    """TRL's SFTTrainer as the sft stage trains it (the bench times the same one): the pairs as a
    conversational prompt/completion dataset, the sft section's settings, a fresh LoRA, our progress bar in
    place of transformers' printer. Returns the trainer and its LoRA config."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from dpo_pipeline.chat import assistant, user
    from dpo_pipeline.models.lora import lora_config

    cfg = params.sft
    ds = Dataset.from_list([{"prompt": user(r["prompt"]), "completion": assistant(r["response"])} for r in rows])
    args = SFTConfig(num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
                     lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,  # < 1: a share
                     max_length=params.model.max_length, logging_steps=25,
                     **batching(cfg.batch_size, cfg.micro_batch_size),
                     **common_args(output_dir, params.seed, cfg.activation_checkpointing))
    lora = lora_config(model, params.model.lora_target_modules, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    trainer = seeded_batches(SFTTrainer)(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                                         peft_config=lora, callbacks=[TrainingProgress("sft")])
    trainer.remove_callback(PrinterCallback)
    return trainer, lora
