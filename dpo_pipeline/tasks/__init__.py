"""Tasks: the domain a pipeline is about. A task is one module that provides what `Task` lists; its files
(the written policy, SFT pairs, sampling and held-out prompts) are in <paths.data>/<task.name>/.

`task.module` in params.yaml is the task's file: a builtin (dpo_pipeline/tasks/incident_triage.py,
dpo_pipeline/tasks/number_summary.py) or your own, anywhere, e.g.
    task: {name: support_replies, module: ../my_tasks/support_replies.py}
with its files in data/support_replies/. dvc.yaml depends on exactly that file, so editing it re-runs the
stages that use the task and editing another task re-runs nothing. Copy examples/task_template.py to
start one.

A task's data generator, if it has one, is a file of its own beside it, <task>_data.py, which only
`python -m tools.make_data` runs (tasks/synthetic.py): no stage depends on it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Callable, Protocol

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
}
# A data generator is not a hook: it lives in <task>_data.py, which no stage runs (tasks/synthetic.py).


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


def import_file(module: str, label: str, search_beside: bool = False) -> ModuleType | None:
    """The module in file `module`, or None when there is no such file: a builtin (in BUILTIN_TASKS) by its
    package name, any other file loaded from its path (with its own folder importable if `search_beside`).
    An error inside it is one line, prefixed with `label`."""
    path = PurePosixPath(module)
    if str(path.parent) == BUILTIN_TASKS:
        name = f"dpo_pipeline.tasks.{path.stem}"
        return importlib.import_module(name) if importlib.util.find_spec(name) else None
    if not Path(path).is_file():
        return None
    name = f"dpo_pipeline_user_task_{path.stem}"
    folder = str(Path(path).resolve().parent)
    if search_beside:
        sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(name, Path(path))
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded  # dataclasses and pickling look their module up here
        spec.loader.exec_module(loaded)
        return loaded
    except Exception as e:  # the user's own code: any error in it is theirs to fix, shown in one line
        sys.modules.pop(name, None)
        raise UserError(f"{label}: cannot import it ({type(e).__name__}: {e})") from None
    finally:
        if search_beside:
            sys.path.remove(folder)


def get_task(cfg: TaskParams) -> Task:
    """The task module `task.module` names: a builtin by its package name, any other file loaded from its
    path."""
    module = import_file(cfg.module, f"task.module: {cfg.module}")
    if module is None:
        builtin = str(PurePosixPath(cfg.module).parent) == BUILTIN_TASKS
        raise UserError(f"task.module: {cfg.module}: {'no such builtin task' if builtin else 'not found'}")
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise UserError(f"task.module: {cfg.module} lacks {', '.join(missing)} (see examples/task_template.py)")
    if not isinstance(module.METRICS, dict) or not module.METRICS:
        raise UserError(f"task.module: {cfg.module}: METRICS must be a non-empty dict of metric key -> label")
    if not hasattr(module, "NAME"):
        module.NAME = cfg.name
    return module  # type: ignore[return-value]
