"""The entry point of every stage and tool: load and validate params.yaml once, call `main(params)`, and
turn the library's `UserError` / `ServiceError` into one line and an exit code (2 / 1). This is the one
place a user mistake becomes a message."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Callable

from dpo_pipeline.config import load_params
from dpo_pipeline.errors import ServiceError, UserError

# Stages draw their own progress (rich); the libraries' bars for loading weights or files would only
# interleave with it. Set before transformers / huggingface_hub are imported, which read it then.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run(main: Callable[..., None], needs_params: bool = True) -> None:
    """`main(params)` with the validated params.yaml (or `main()` for a tool that reads none)."""
    # The libraries' deprecation chatter is for their maintainers, not for someone reading a dvc repro log.
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        main(load_params()) if needs_params else main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
