"""The entry point of every stage and tool: load and validate params.yaml once, call `main(params)`, and
turn the library's `UserError` / `ServiceError` into one line and an exit code (2 / 1). This is the one
place a user mistake becomes a message."""

from __future__ import annotations

import inspect
import json
import logging
import os
import resource
import sys
import time
import warnings
from typing import Callable

from dpo_pipeline import rounds
from dpo_pipeline.config import load_params
from dpo_pipeline.errors import ServiceError, UserError

# Stages draw their own progress (rich); the libraries' bars for loading weights or files would only
# interleave with it. Set before transformers / huggingface_hub are imported, which read it then.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Stages import this module first, before torch: the stage log's clock counts their imports and model loads.
STARTED = time.perf_counter()
# Set, each finished stage appends a line {stage, seconds, peak_rss_mib} there (`make real` keeps its run's).
# Kept out of metrics/: wall time differs run to run, and identical params must give identical metrics.
STAGE_LOG = "DPO_PIPELINE_STAGE_LOG"


def run(main: Callable[..., None], needs_params: bool = True) -> None:
    """`main(params)` with the validated params.yaml (or `main()` for a tool that reads none); a stage every
    round of iterative DPO runs takes `round_num` too, from `--round K` (1 without it)."""
    # The libraries' deprecation chatter is for their maintainers, not for someone reading a dvc repro log.
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        if not needs_params:
            main()
        elif "round_num" in inspect.signature(main).parameters:
            params, k = load_params(), round_arg(sys.argv[1:])
            rounds.check(params, k)
            main(params, round_num=k)
        else:
            main(load_params())
        if os.environ.get(STAGE_LOG):
            log_stage(os.environ[STAGE_LOG], module_of(main).rsplit(".", 1)[-1])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def round_arg(argv: list[str]) -> int:
    """`--round K` (the stages dvc.yaml runs for round K > 1 of iterative DPO); 1 without it."""
    if "--round" not in argv:
        return 1
    i = argv.index("--round")
    value = argv[i + 1] if i + 1 < len(argv) else ""
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"--round: expected a round number >= 1, got {value!r}")
    return int(value)


def module_of(main: Callable) -> str:
    """"stages.train" also when it runs as `python -m stages.train` (where main's module is "__main__")."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    return spec.name if spec is not None else main.__module__


def log_stage(path: str, stage: str) -> None:
    """Append this process's wall time and peak resident memory (Linux reports KiB) to the stage log."""
    line = {"stage": stage, "seconds": round(time.perf_counter() - STARTED, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
