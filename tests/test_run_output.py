"""What a run shows a user besides its own lines: each library warning once, and no library's progress bar
(a stage draws its own, rich's). pytest keeps its own warning filters: a test run still lists every warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A run as a stage makes one: a library warns at every model it wraps, entering warnings.catch_warnings in
# between as torch and transformers do (which makes Python forget what it showed), and draws tqdm bars.
SCRIPT = """
import warnings

from dpo_pipeline import cli


def main():
    from tqdm.auto import tqdm

    for _ in range(3):
        with warnings.catch_warnings():
            pass
        warnings.warn("an old API", FutureWarning)
    warnings.warn("another old API", FutureWarning)
    for _ in tqdm(range(3), desc="a library's bar"):
        pass
    import datasets

    print("datasets' bars:", datasets.utils.is_progress_bar_enabled())


cli.run(main, needs_params=False)
"""


def test_a_run_shows_each_warning_once_and_no_library_progress_bar(tmp_path):
    unset = ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
    env = {k: v for k, v in os.environ.items() if k not in unset}  # this process may have imported cli
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("FutureWarning: an old API") == 1, proc.stderr
    assert proc.stderr.count("FutureWarning: another old API") == 1, proc.stderr
    assert "a library's bar" not in proc.stderr and "\r" not in proc.stderr, proc.stderr
    assert proc.stdout == "datasets' bars: False\n"
