"""`make pr-report BASE=<ref>` against a real git history: the changed params and metrics are named, and each
headline metric's change is judged against noise (paired over the shared eval prompts when both runs'
per-prompt outputs are at hand, the two runs' CIs side by side when not)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

LOCKED = "artifacts/eval_outputs.jsonl"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def base_repo(root: Path, tmp_path: Path) -> Path:
    """A git repo with the project's DVC files and metrics committed once, as the base branch."""
    repo = tmp_path / "repo"
    for f in ("Makefile", "params.yaml", "dvc.yaml", "dvc.lock", ".dvc/config", ".dvcignore", ".gitignore",
              "metrics/eval.json", "metrics/eval_ci.json", "metrics/train.json", "metrics/judge.json",
              "dpo_pipeline/tasks/incident_triage.py"):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / f, repo / f)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    return repo


def pr_report(root: Path, repo: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(root),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    venv = Path(sys.executable).parent.parent
    proc = subprocess.run(["make", "-s", "-o", f"{venv}/.installed", "pr-report", "BASE=HEAD~1", f"VENV={venv}"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def committed(repo: Path, metric: str = "severity_match", file: str = "metrics/eval.json"):
    """The base branch's value (eval.json) or 95% CI (eval_ci.json) of SFT+DPO's metric, as committed."""
    return json.loads((repo / file).read_text())[metric]["dpo"]


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def records(severity: list[float]) -> str:
    """eval_outputs.jsonl with SFT+DPO's severity match per prompt, the other headline fields constant."""
    return "".join(json.dumps({"id": f"eval-{i:05d}", "prompt": "p", "sft": {"text": "t"},
                               "dpo": {"text": "t", "tokens": 3, "format_conformance": 1.0, "severity_match": s,
                                       "faithfulness": 5},
                               "pairwise_dpo_vs_sft": {"outcome": "tie", "reason": "r"}}) + "\n"
                   for i, s in enumerate(severity))


def lock_base_outputs(repo: Path, text: str) -> Path:
    """Commit `text` as the base's eval outputs in dvc.lock (amending the base); returns its DVC 3 cache path."""
    md5 = hashlib.md5(text.encode()).hexdigest()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    next(o for o in lock["stages"]["eval"]["outs"] if o["path"] == LOCKED)["md5"] = md5
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    git(repo, "commit", "-qa", "--amend", "--no-edit")
    return Path("files", "md5", md5[:2], md5[2:])


def test_pr_report_names_changed_params_and_metrics(root, tmp_path):
    repo = base_repo(root, tmp_path)
    old = committed(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["beta"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    edit_json(repo / "metrics/eval.json", lambda ev: ev["severity_match"].update(dpo=0.9))
    git(repo, "commit", "-qam", "beta 0.3")

    out = pr_report(root, repo)
    assert out.startswith("## DPO pipeline: this branch vs `HEAD~1`")
    assert "train.beta" in out and "0.3" in out
    assert "severity_match.dpo" in out and "0.9" in out
    assert "| Path" in out  # markdown tables
    # The headline section labels the change by the metric schema: severity match went down, which is worse.
    assert f"| Severity match | {old} | 0.9 | {round(0.9 - old, 4):+.4g} | worse |" in out


def test_pr_report_without_base_outputs_sets_the_two_cis_side_by_side(root, tmp_path):
    repo = base_repo(root, tmp_path)  # its dvc.lock names eval outputs that no cache here holds
    base = committed(repo, file="metrics/eval_ci.json")
    assert base["low"] > 0.88  # the CI set below lies wholly under the committed one
    edit_json(repo / "metrics/eval.json", lambda ev: ev["severity_match"].update(dpo=0.84))
    edit_json(repo / "metrics/eval_ci.json", lambda ci: ci["severity_match"]["dpo"].update(low=0.80, high=0.88))
    (repo / "artifacts").mkdir()
    (repo / LOCKED).write_text(records([1.0] * 50))  # this branch's own outputs are there: base's are not
    git(repo, "commit", "-qam", "worse")

    out = pr_report(root, repo)
    assert "Per-prompt outputs of `HEAD~1` not available (not in the DVC cache, and no DVC remote is " \
           "configured): the two runs' 95% CIs side by side" in out
    assert "only where they do not overlap" in out
    assert "| SFT+DPO metric | base | this branch | change | | 95% CIs, base / this branch | beyond noise? |\n" \
           "|---|---|---|---|---|---|---|\n" in out
    severity = next(line for line in out.splitlines() if line.startswith("| Severity match |"))
    assert severity.endswith(f"| worse | [{base['low']:.4f}, {base['high']:.4f}] / [0.8000, 0.8800] | **yes** |")
    faithfulness = next(line for line in out.splitlines() if line.startswith("| Faithfulness"))
    assert faithfulness.endswith("| no |")  # unchanged: the same CI on both sides


def test_pr_report_pairs_the_prompts_of_both_runs_outputs(root, tmp_path):
    repo = base_repo(root, tmp_path)
    base = [1.0] * 80 + [0.0] * 20
    cached = repo / ".dvc" / "cache" / lock_base_outputs(repo, records(base))
    cached.parent.mkdir(parents=True)
    cached.write_text(records(base))
    # This branch: 15 of the 80 right answers broken, 3 of the 20 wrong ones fixed, 10 new prompts.
    head = [0.0] * 15 + [1.0] * 65 + [1.0] * 3 + [0.0] * 17 + [1.0] * 10
    (repo / "artifacts").mkdir()
    (repo / LOCKED).write_text(records(head))
    edit_json(repo / "metrics/eval.json", lambda ev: ev["severity_match"].update(dpo=0.76))
    git(repo, "commit", "-qam", "worse")

    out = pr_report(root, repo)
    assert "paired bootstrap over the 100 eval prompts both runs share" in out
    severity = next(line for line in out.splitlines() if line.startswith("| Severity match |"))
    assert "| worse | [-0." in severity and severity.endswith("| **yes** |")
    # Format conformance and the pairwise outcome are the same on every prompt: a CI of exactly 0.
    assert "| [+0.0000, +0.0000] | no |" in next(line for line in out.splitlines() if line.startswith("| Format"))
    assert "| [+0.0000, +0.0000] | no |" in next(line for line in out.splitlines() if line.startswith("| Preferred"))


def test_pr_report_fetches_base_outputs_from_the_dvc_remote(root, tmp_path):
    repo = base_repo(root, tmp_path)
    old = committed(repo)
    base = [1.0] * 80 + [0.0] * 20
    remote = tmp_path / "remote"
    with (repo / ".dvc/config").open("a") as f:  # as `dvc remote add -d store <dir>` writes it
        f.write(f"    remote = store\n['remote \"store\"']\n    url = {remote}\n")
    stored = remote / lock_base_outputs(repo, records(base))  # a local remote has the cache's layout
    stored.parent.mkdir(parents=True)
    stored.write_text(records(base))
    (repo / "artifacts").mkdir()
    (repo / LOCKED).write_text(records([1.0] * 100))  # the 20 wrong answers fixed
    edit_json(repo / "metrics/eval.json", lambda ev: ev["severity_match"].update(dpo=1.0))
    git(repo, "commit", "-qam", "better")

    out = pr_report(root, repo)
    assert "paired bootstrap over the 100 eval prompts both runs share" in out
    severity = next(line for line in out.splitlines() if line.startswith("| Severity match |"))
    assert f"| {round(1.0 - old, 4):+.4g} | better | [+0.1" in severity and severity.endswith("| **yes** |")
    assert (repo / ".dvc/cache" / stored.relative_to(remote)).is_file()  # fetched into the cache
