"""What every training in the pipeline shares (the builtin base model, SFT, DPO and the bench's bare TRL
script): the trainer settings written once, and the progress bar."""

from __future__ import annotations

from transformers import TrainerCallback

from dpo_pipeline.models.loading import device, use_bf16
from dpo_pipeline.progress import progress as progress_bar


def common_args(output_dir: str, seed: int) -> dict:
    """Settings every trainer here takes: seeded data order, no checkpoints (the stage saves what it
    keeps), logs to our own callbacks only, bf16 on a GPU that has it, float32 on CPU (reproducible)."""
    return dict(output_dir=output_dir, seed=seed, data_seed=seed, save_strategy="no", report_to="none",
                bf16=use_bf16(), gradient_checkpointing=False, use_cpu=device() == "cpu", disable_tqdm=True)


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
