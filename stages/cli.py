"""The one place a user mistake becomes a message: library code raises `UserError`, this prints it."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Callable

from stages.config import ServiceError, UserError

# Stages draw their own progress (rich); the libraries' bars for loading weights or files would only
# interleave with it. Set before transformers / huggingface_hub are imported, which read it then.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run(main: Callable[[], None]) -> None:
    # The libraries' deprecation chatter is for their maintainers, not for someone reading a dvc repro log.
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
