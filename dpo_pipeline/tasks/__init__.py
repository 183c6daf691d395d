"""Tasks: the domain a pipeline is about. A task is one module that provides what `Task` lists; its files
(the written policy, SFT pairs, sampling and held-out prompts) are in <paths.data>/<task.name>/.

`task.module` in params.yaml is the task's file: a builtin (dpo_pipeline/tasks/incident_triage.py,
dpo_pipeline/tasks/number_summary.py) or your own, anywhere, e.g.
    task: {name: support_replies, module: ../my_tasks/support_replies.py}
with its files in data/support_replies/. dvc.yaml depends on exactly that file, so editing it re-runs the
stages that use the task and editing another task re-runs nothing. Copy examples/task_template.py to
start one.
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
    """What every task defines. The rest are hooks a run needs only in some settings (HOOKS)."""

    # response_metrics' keys -> labels for tables and charts, in display order.
    METRICS: dict[str, str]

    def response_metrics(self, prompt: str, response: str) -> dict[str, float]:
        """Per-response heuristic metrics in [0, 1] (the keys of METRICS), averaged by the eval stage."""

    # Optional: NAME (default: task.name), the hooks in HOOKS, and `correct(prompt, response) -> bool | None`,
    # whether the response is right by the ground truth the data was generated from (never shown to a judge;
    # None: not decidable). Without `correct` the judge's agreement with ground truth is reported as None.


REQUIRED = ("METRICS", "response_metrics")
# Hooks only some runs call, and why: a run that needs a missing one stops with this reason (`need`).
HOOKS = {
    # rubric_score(prompt, response) -> (1-5, reason): the offline judge's score by the written policy
    "rubric_score": "judge.backend rubric scores responses with it",
    # pretrain_text(prompt, response) -> str: how an SFT pair reads as raw text
    "pretrain_text": "model.base builtin:tiny is pre-trained on the SFT pairs as text through it",
    # generate(seed, n_sft, n_prompts, n_eval) -> {"sft": [...], "prompts": [...], "eval": [...]}
    "generate": "python -m tools.make_data writes the task's data files with it",
}


def need(task: Task, hook: str) -> Callable:
    """The task's `hook`, or a one-line error naming it and what needs it."""
    fn = getattr(task, hook, None)
    if fn is None:
        raise UserError(f"task {task.NAME}: its module defines no {hook}(), and {HOOKS[hook]} "
                        "(see examples/task_template.py)")
    return fn


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
        raise UserError(f"task.module: {cfg.module} lacks {', '.join(missing)} (see examples/task_template.py)")
    if not isinstance(module.METRICS, dict) or not module.METRICS:
        raise UserError(f"task.module: {cfg.module}: METRICS must be a non-empty dict of metric key -> label")
    if not hasattr(module, "NAME"):
        module.NAME = cfg.name
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
