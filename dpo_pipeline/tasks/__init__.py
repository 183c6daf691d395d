"""Tasks: the domain a pipeline is about. A task is one module that provides what `Task` lists; its files
(the written policy, SFT pairs, sampling and held-out prompts) are in <paths.data>/<task.name>/.

`task.module` in params.yaml is the task's file: a builtin (dpo_pipeline/tasks/incident_triage.py,
dpo_pipeline/tasks/number_summary.py) or your own, anywhere, e.g.
    task: {name: support_replies, module: ../my_tasks/support_replies.py}
with its files in data/support_replies/. dvc.yaml depends on exactly that file, so editing it re-runs the
stages that use the task and editing another task re-runs nothing. Copy number_summary.py to start one.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Protocol

from dpo_pipeline.config import BUILTIN_TASKS, TaskParams
from dpo_pipeline.errors import UserError


class Task(Protocol):
    NAME: str
    # response_metrics' keys -> labels for tables and charts, in display order. Every task has
    # "format_conformance" (the response is in the required form) and at least one task-specific match.
    METRICS: dict[str, str]

    def generate(self, seed: int, n_sft: int, n_prompts: int, n_eval: int) -> dict[str, list[dict]]:
        """The shipped splits {"sft": [{id, prompt, response}], "prompts": [{id, prompt}], "eval": [...]}."""

    def rubric_score(self, prompt: str, response: str) -> tuple[int, str]:
        """Deterministic 1-5 score and reason by the task's written policy (the offline `rubric` judge)."""

    def response_metrics(self, prompt: str, response: str) -> dict[str, float]:
        """Per-response heuristic metrics in [0, 1] (the keys of METRICS), averaged by the eval stage."""

    def pretrain_text(self, prompt: str, response: str) -> str:
        """How one SFT example reads as raw text, for training the builtin base model from scratch."""

    # Optional: `correct(prompt, response) -> bool | None`, whether the response is right by the ground truth
    # the data was generated from (never shown to a judge); None: not decidable for this response. A task
    # without it has no ground truth, and the judge's agreement with one is reported as None (ground_truth).


REQUIRED = ("NAME", "METRICS", "generate", "rubric_score", "response_metrics", "pretrain_text")


def ground_truth(task: Task) -> Callable[[str, str], bool | None] | None:
    """The task's optional `correct` hook, or None when it has no ground truth."""
    return getattr(task, "correct", None)


def get_task(cfg: TaskParams) -> Task:
    """The task module `task.module` names: a builtin by its package name, any other file loaded from its
    path."""
    path = PurePosixPath(cfg.module)
    if str(path.parent) == BUILTIN_TASKS:
        try:
            module = importlib.import_module(f"dpo_pipeline.tasks.{path.stem}")
        except ModuleNotFoundError:
            raise UserError(f"task.module: {cfg.module}: no such builtin task") from None
    elif not Path(path).is_file():
        raise UserError(f"task.module: {cfg.module}: not found")
    else:
        name = f"dpo_pipeline_user_task_{path.stem}"
        try:
            spec = importlib.util.spec_from_file_location(name, Path(path))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look their module up here
            spec.loader.exec_module(module)
        except Exception as e:  # the user's own code: any error in it is theirs to fix, shown in one line
            sys.modules.pop(name, None)
            raise UserError(f"task.module: {cfg.module}: cannot import it ({type(e).__name__}: {e})") from None
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise UserError(f"task.module: {cfg.module} lacks {', '.join(missing)} (see dpo_pipeline/tasks/__init__.py)")
    return module  # type: ignore[return-value]


def disjoint_splits(seed: int, sizes: dict[str, int], draw: Callable[[random.Random], tuple[str, Any]],
                    annotate: Callable[[Any, random.Random], str]) -> dict[str, list[dict]]:
    """A task's shipped splits from its generator: `draw` makes (prompt, item), `annotate` an SFT response for
    the item. Splits are drawn in the order of `sizes` from one seeded RNG; a prompt text appears in at most
    one split, which is what held-out means."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, n in sizes.items():
        rows: list[dict] = []
        while len(rows) < n:
            prompt, item = draw(rng)
            if prompt in seen:
                continue
            seen.add(prompt)
            row = {"id": f"{split}-{len(rows):05d}", "prompt": prompt}
            if split == "sft":
                row["response"] = annotate(item, rng)
            rows.append(row)
        splits[split] = rows
    return splits
