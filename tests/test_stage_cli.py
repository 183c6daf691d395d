"""Every stage's command line, as a user meets it: `--help` prints the stage's docstring and reads and writes
nothing, a bad flag or argument is one line and exit 2, `--round K` exists for the stages every round runs
(K >= 2, at most params.yaml's rounds) and `--show` for report; and every command dvc.yaml runs, round
stages included, parses."""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools.rounds import render

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")
ROUND_STAGES = ("judge", "sample", "train")  # the stages every round of iterative DPO runs (`--round K`)


def stage(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m stages.<name> ARGS` from `cwd`, the project importable from there."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=cwd, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stdout == "", proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr


def test_the_round_stages_are_those_whose_main_takes_a_round():
    takes = {name for name in STAGES for f in ast.parse((ROOT / "stages" / f"{name}.py").read_text()).body
             if isinstance(f, ast.FunctionDef) and f.name == "main" and "round_num" in {a.arg for a in f.args.args}}
    assert takes == set(ROUND_STAGES)


# --- --help ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STAGES)
def test_help_prints_the_docstring_and_does_nothing_else(name, tmp_path):
    proc = stage(name, "--help", cwd=tmp_path)  # no params.yaml here: reading it would be an error
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    flags = " [--round K]" if name in ROUND_STAGES else " [--show]" if name == "report" else ""
    assert proc.stdout.startswith(f"usage: python -m stages.{name} [-h]{flags}\n"), proc.stdout
    doc = ast.get_docstring(ast.parse((ROOT / "stages" / f"{name}.py").read_text()))
    for line in doc.splitlines():  # all of it, the commands that run the stage included
        assert line.strip() in proc.stdout, line
    assert list(tmp_path.iterdir()) == []


# --- bad flags and arguments ----------------------------------------------------------------------------------

BAD = [(name, *args) for name in STAGES for args in (("--no-such-flag",), ("extra",))]
BAD += [(name, "--round", "2") for name in STAGES if name not in ROUND_STAGES]
BAD += [("report", "--show", "extra"), ("report", "--show=yes")]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) for a in BAD])
def test_a_bad_flag_or_argument_is_one_line_and_exit_2(args, tmp_path):
    name, *rest = args
    proc = stage(name, *rest, cwd=tmp_path)
    one_line_error(proc, f"usage: python -m stages.{name} ")
    assert rest[-1].split("=")[0] in proc.stderr  # names what it refused
    assert list(tmp_path.iterdir()) == []


ROUND_BAD = [(["--round2"], "unrecognized arguments: --round2"),  # once ran round 1
             (["--round", "1"], "expected a round number >= 2 (round 1 is the stage without --round), got '1'"),
             (["--round", "0"], "got '0'"), (["--round", "x"], "got 'x'"), (["--round", "2.0"], "got '2.0'"),
             (["--round"], "argument --round: expected one argument")]


@pytest.mark.parametrize("name", ROUND_STAGES)
@pytest.mark.parametrize("args, message", ROUND_BAD, ids=[" ".join(a) for a, _ in ROUND_BAD])
def test_a_bad_round_is_one_line_and_exit_2_before_params_are_read(name, args, message, tmp_path):
    proc = stage(name, *args, cwd=tmp_path)
    one_line_error(proc, message, f"usage: python -m stages.{name} [-h] [--round K]")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ROUND_STAGES)
def test_a_round_beyond_params_rounds_is_refused_before_anything_runs(name, tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "rounds": 2}, sort_keys=False))
    proc = stage(name, "--round", "3", cwd=tmp_path)
    one_line_error(proc, "--round 3: params.yaml's rounds is 2, so there is no round 3", "python -m tools.rounds")
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]


# --- what dvc.yaml runs -----------------------------------------------------------------------------------------

def commands() -> list[str]:
    """Every stage command of dvc.yaml, with the stages tools.rounds writes for three rounds."""
    stages = yaml.safe_load(render((ROOT / "dvc.yaml").read_text(), 3))["stages"]
    return [spec["cmd"] for spec in stages.values()]


def test_dvc_yaml_runs_every_stage_and_the_rounds_2_and_3_of_the_round_stages():
    assert sorted(commands()) == sorted([f"python -m stages.{name}" for name in STAGES]
                                        + [f"python -m stages.{name} --round {k}" for name in ROUND_STAGES
                                           for k in (2, 3)])


@pytest.mark.parametrize("cmd", [c for c in commands() if "--round" in c])
def test_dvc_yamls_round_commands_parse(cmd, tmp_path):
    python, _, module, *args = shlex.split(cmd)
    assert python == "python"
    proc = stage(module.removeprefix("stages."), *args, "--help", cwd=tmp_path)  # --round K checked on the way
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
