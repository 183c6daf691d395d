"""`make pr-report BASE=<ref>` against a real git history: the changed params and metrics are named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_pr_report_names_changed_params_and_metrics(root, tmp_path):
    repo = tmp_path / "repo"
    for f in ("Makefile", "params.yaml", "dvc.yaml", "dvc.lock", ".dvc/config", ".dvcignore", "metrics/eval.json",
              "metrics/train.json", "metrics/judge.json", "dpo_pipeline/tasks/incident_triage.py"):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / f, repo / f)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["beta"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ev = json.loads((repo / "metrics/eval.json").read_text())
    ev["severity_match"]["dpo"] = 0.9
    (repo / "metrics/eval.json").write_text(json.dumps(ev))
    git(repo, "commit", "-qam", "beta 0.3")

    env = {**os.environ, "PYTHONPATH": str(root),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    venv = Path(sys.executable).parent.parent
    proc = subprocess.run(["make", "-s", "-o", f"{venv}/.installed", "pr-report", "BASE=HEAD~1", f"VENV={venv}"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("## DPO pipeline: this branch vs `HEAD~1`")
    assert "train.beta" in out and "0.3" in out
    assert "severity_match.dpo" in out and "0.9" in out
    assert "| Path" in out  # markdown tables
    # The headline section labels the change by the metric schema: severity match went down, which is worse.
    assert "| Severity match | " in out and "| worse |" in out
