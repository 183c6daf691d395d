"""Tasks: the domain a pipeline is about. A task is one module that provides what `Task` lists; its files
(the written policy, SFT pairs, sampling and held-out prompts) are in <paths.data>/<task>/.

`task:` in params.yaml names a builtin (TASKS) or the import path of your own module, e.g.
`task: my_tasks.support_replies` with my_tasks/support_replies.py on the Python path (the repository root
is) and its files in data/my_tasks.support_replies/. Copy stages/tasks/number_summary.py to start one.
"""

from __future__ import annotations

import importlib
import random
from typing import Any, Callable, Protocol

from stages.config import UserError


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


TASKS = {"incident_triage": "stages.tasks.incident_triage", "number_summary": "stages.tasks.number_summary"}
REQUIRED = ("NAME", "METRICS", "generate", "rubric_score", "response_metrics", "pretrain_text")


def get_task(name: str) -> Task:
    module_name = TASKS.get(name, name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"task: cannot import {name!r} ({e}); use a builtin ({', '.join(TASKS)}) or the import "
                        "path of your task module") from None
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise UserError(f"task: module {module_name} lacks {', '.join(missing)} (see stages/tasks/__init__.py)")
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
