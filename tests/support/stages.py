"""A stage run as dvc runs it, in another working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_stage(module: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m stages.<module>` in `cwd` as dvc would, with our package importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"stages.{module}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
