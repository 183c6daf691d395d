"""Tasks: the domain a pipeline is about. A task is a module that provides the functions of `Task`;
adding a task is adding a module and naming it in `TASKS`, nothing else."""

from __future__ import annotations

import importlib
from typing import Protocol


class Task(Protocol):
    NAME: str

    def generate(self, seed: int, n_sft: int, n_prompts: int, n_eval: int) -> dict[str, list[dict]]:
        """The shipped splits {"sft": [{id, prompt, response}], "prompts": [{id, prompt}], "eval": [...]}."""

    def rubric_score(self, prompt: str, response: str) -> tuple[int, str]:
        """Deterministic 1-5 score and reason by the task's written policy."""

    def response_metrics(self, prompt: str, response: str) -> dict[str, float]:
        """Per-response heuristic metrics in [0, 1], averaged by the eval stage."""

    def pretrain_text(self, prompt: str, response: str) -> str:
        """How one SFT example reads as raw text, for training the builtin base model from scratch."""


TASKS = {"incident_triage": "stages.tasks.incident_triage"}


def get_task(name: str) -> Task:
    return importlib.import_module(TASKS[name])  # type: ignore[return-value]
