"""Every tool's command line, as a user meets it: run by the venv's python with the venv NOT on PATH, `--help`
prints usage and does nothing else, a bad flag or argument is one line and exit 2, the dvc the tools run is
the venv's; and `make rounds`, interrupted or failing, leaves dvc.yaml and params.yaml as they were."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("estimate", "gate", "judges", "make_data", "pr_report", "rounds", "seeds", "sweep")
BARE_PATH = "/usr/bin:/bin"  # no venv on it: the tools must find the venv's dvc by themselves


def environ(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return {**env, "PATH": BARE_PATH, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", **extra}


def tool(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m tools.<name> ARGS` from `cwd`, the project importable from anywhere, the venv not on PATH."""
    return subprocess.run([sys.executable, "-m", f"tools.{name}", *args], cwd=cwd, env=environ(PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr


# --- --help and bad flags ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TOOLS)
def test_help_prints_usage_and_the_description_and_does_nothing_else(name, tmp_path):
    proc = tool(name, "--help", cwd=tmp_path)  # no params.yaml, no repository here: nothing may be read
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout.startswith(f"usage: python -m tools.{name} ")
    doc = __import__(f"tools.{name}", fromlist=["_"]).__doc__
    assert doc.strip().splitlines()[0] in " ".join(proc.stdout.split())
    assert list(tmp_path.iterdir()) == []  # make_data wrote no data, sweep no report


BAD = [("estimate", "--no-such-flag"), ("estimate", "extra"), ("gate", "--no-such-flag"), ("gate", "HEAD", "extra"),
       ("make_data", "--no-such-flag"), ("make_data", "extra"), ("pr_report", "--no-such-flag", "HEAD"),
       ("pr_report",), ("pr_report", "HEAD", "--plots"), ("rounds", "--no-such-flag"), ("rounds", "0"),
       ("rounds", "two"), ("seeds", "--no-such-flag"), ("seeds", "x"), ("seeds", "1", "--no-such-flag"),
       ("sweep", "--no-such-flag"), ("sweep", "extra"), ("make_data", "--n-sft", "0"), ("make_data", "--n-eval", "x"),
       ("make_data", "--seed", "1.5"), ("gate", "--rate-band", "0"), ("gate", "--score-band", "-1"),
       ("gate", "--min-ci-low", "1"), ("judges", "--no-such-flag"), ("judges",), ("judges", "--judges", "rubric"),
       ("judges", "--judges", "rubric", "rubric"), ("judges", "--judges", "rubric", "nope"),
       ("judges", "--judges", "rubric", "reward_model", "--n", "0"),
       ("judges", "--judges", "rubric", "reward_model", "--from", "elsewhere")]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) for a in BAD])
def test_a_bad_flag_or_argument_is_one_line_and_exit_2(args, tmp_path):
    proc = tool(*args, cwd=tmp_path)
    one_line_error(proc)
    assert "usage: python -m tools." in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("args, message", [
    (("seeds",), "give at least one training SEED"),
    (("seeds", "42"), "seed 42 is the workspace's"),
    (("rounds", "2", "--check", "--exp-run"), "--check and --exp-run do not go together"),
])
def test_a_mistake_found_after_reading_params_is_one_line_and_exit_2(args, message):
    proc = tool(*args)
    one_line_error(proc)
    assert message in proc.stderr


# --- the venv's dvc, the venv not on PATH ---------------------------------------------------------------------

def test_sweep_runs_the_venvs_dvc(tmp_path):
    proc = tool("sweep", cwd=tmp_path)  # dvc itself answers: this is no DVC repository
    one_line_error(proc)
    assert "not inside of a DVC repository" in proc.stderr


def test_pr_report_runs_the_venvs_dvc(tmp_path):
    repo = tmp_path / "repo"
    for f in ("params.yaml", "dvc.yaml", "dvc.lock", ".dvc/config", ".dvcignore", ".gitignore", "metrics/eval.json",
              "metrics/eval_ci.json", "metrics/train.json", "metrics/judge.json",
              "dpo_pipeline/tasks/incident_triage.py"):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, repo / f)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["beta"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-qam", "beta 0.3")
    proc = tool("pr_report", "HEAD~1", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert "train.beta" in proc.stdout and "0.3" in proc.stdout  # dvc params diff ran


# --- make rounds leaves dvc.yaml and params.yaml alone ----------------------------------------------------------

def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=environ(), check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """The working tree, committed in a fresh git repository."""
    dest = tmp_path / "repo"
    for f in git(ROOT, "ls-files", "--cached", "--others", "--exclude-standard").split():
        if (ROOT / f).is_file():  # not deleted in the working tree
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / f, dest / f)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "copy")
    return dest


def modified(repo: Path) -> str:
    return git(repo, "status", "--porcelain", "dvc.yaml", "params.yaml")


def start(repo: Path, cmd: list[str], log: Path) -> subprocess.Popen:
    """`cmd` in its own process group (as a terminal runs it), once dvc runs the first stage of its experiment:
    from the workspace's dvc.yaml with round 2's stages, long before any training finishes."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=repo, env=environ(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while "Running stage 'prepare'" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    assert "train_r2" in (repo / "dvc.yaml").read_text(), log.read_text()
    assert "M dvc.yaml" in modified(repo) and "M params.yaml" in modified(repo)
    return proc


def running_in(repo: Path) -> list[int]:
    """The processes working in `repo` or below it (dvc, and the stages it runs in its temporary copy)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")).is_relative_to(repo):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return pids


def stopped(proc: subprocess.Popen, repo: Path, log: Path) -> int:
    """proc's exit status, once nothing runs in the repository any more."""
    try:
        code = proc.wait(timeout=120)
        deadline = time.monotonic() + 60
        while running_in(repo) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running_in(repo), f"processes left running in the repository\n{log.read_text()}"
        return code
    finally:  # whatever the assertions said, nothing of this test keeps running
        for pid in running_in(repo):
            os.kill(pid, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ctrl_c_during_make_rounds_leaves_dvc_yaml_and_params_yaml_as_committed(repo, tmp_path):
    venv = Path(sys.executable).parent.parent
    log = tmp_path / "make.log"
    proc = start(repo, ["make", "-s", "-o", f"{venv}/.installed", "rounds", "N=2", f"VENV={venv}"], log)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal's foreground group, make and the tool
    assert stopped(proc, repo, log) != 0
    assert modified(repo) == "", log.read_text()
    assert "rounds-2" not in git(repo, "for-each-ref", "refs/exps/")  # interrupted before the experiment finished
    assert "dvc.yaml and params.yaml put back" in log.read_text()


def test_sigterm_to_the_tool_stops_dvc_and_puts_the_files_back(repo, tmp_path):
    log = tmp_path / "tool.log"
    proc = start(repo, [sys.executable, "-m", "tools.rounds", "2", "--exp-run", "-n", "rounds-2"], log)
    proc.terminate()  # the tool alone: it stops dvc and the stage it runs
    assert stopped(proc, repo, log) == 130
    assert modified(repo) == "", log.read_text()


def test_a_failing_dvc_exp_run_puts_the_files_back(repo):
    proc = subprocess.run([sys.executable, "-m", "tools.rounds", "2", "--exp-run", "--no-such-dvc-flag"], cwd=repo,
                          env=environ(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: dvc exp run failed (exit ")
    assert modified(repo) == ""
