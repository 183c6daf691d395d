"""What `python -m tools.make_data` runs and no stage does: a task's data generator, and the splits the
builtin generators draw.

A task's generator is `generate(seed, n_sft, n_prompts, n_eval) -> {"sft": [...], "prompts": [...],
"eval": [...]}` in <task>_data.py beside the task module: dpo_pipeline/tasks/incident_triage_data.py for the
builtin incident_triage, my_task_data.py beside your my_task.py (which it may import: its folder is
importable while it loads). It is a file of its own because a stage's fingerprint (dpo_pipeline/fingerprint.py)
hashes the task module whole: kept apart, editing the generator re-runs no stage. tools/make_data.py loads
the generators through this module; no stage imports either (tests/test_dvc_wiring.py checks).
"""

from __future__ import annotations

import random
from pathlib import PurePosixPath
from typing import Any, Callable

from dpo_pipeline.config import TaskParams
from dpo_pipeline.errors import UserError
from dpo_pipeline.tasks import import_file

Generator = Callable[[int, int, int, int], dict[str, list[dict]]]


def data_module(cfg: TaskParams) -> str:
    """The file a task's generator is in: <task>_data.py beside `task.module`."""
    path = PurePosixPath(cfg.module)
    return str(path.with_name(f"{path.stem}_data.py"))


def generator(cfg: TaskParams) -> Generator:
    """The task's `generate`, or a one-line error naming the file it belongs in."""
    path = data_module(cfg)
    module = import_file(path, path, search_beside=True)
    fn = getattr(module, "generate", None)
    if fn is None:
        where = "no such file" if module is None else "it defines no generate()"
        raise UserError(f"task {cfg.name}: python -m tools.make_data writes the task's data files with generate() "
                        f"in {path} ({where}; see examples/task_template.py)")
    return fn


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
