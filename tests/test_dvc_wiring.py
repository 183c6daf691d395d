"""dvc.yaml wiring: params named exist, every stage depends on the code it runs, and DVC resolves it."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Plumbing every stage imports that cannot change a stage's outputs (validation, file I/O, error printing);
# listing them would re-run the whole pipeline for a reworded error message. The rooms' __init__ files hold
# only a docstring (tests/test_layout.py checks), so importing a room's module costs no dependency on them.
PLUMBING = {"dpo_pipeline", "dpo_pipeline.cli", "dpo_pipeline.config", "dpo_pipeline.errors", "dpo_pipeline.files",
            "dpo_pipeline.models", "dpo_pipeline.judging", "dpo_pipeline.evaluation", "dpo_pipeline.reporting"}
STAGES = ["prepare", "sft", "sample", "judge", "train", "eval_baselines", "eval", "report"]
TASK_MODULE = "${task.module}"


@pytest.fixture(scope="module")
def dvc_yaml(request) -> dict:
    return yaml.safe_load((request.config.rootpath / "dvc.yaml").read_text())


@pytest.fixture(scope="module")
def params(request) -> dict:
    return yaml.safe_load((request.config.rootpath / "params.yaml").read_text())


def has_key(tree: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def test_every_param_named_in_dvc_yaml_exists(dvc_yaml, params):
    named = [p for stage in dvc_yaml["stages"].values() for p in stage.get("params", [])]
    named += re.findall(r"\$\{([^}]+)\}", yaml.safe_dump(dvc_yaml))
    assert named
    missing = [p for p in named if not has_key(params, p)]
    assert not missing


def module_file(module: str, root: Path) -> Path:
    rel = Path(*module.split("."))
    return rel.with_suffix(".py") if (root / rel.with_suffix(".py")).exists() else rel / "__init__.py"


def library_imports(module: str, root: Path, seen: set[str] | None = None) -> set[str]:
    """The dpo_pipeline modules `module` imports, transitively (imports inside functions included: they run
    when the stage takes that path)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse((root / module_file(module, root)).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:  # `from a.b import c`: a.b, and a.b.c if a module
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "dpo_pipeline" and (root / module_file(name, root)).exists() and name not in seen:
                seen.add(name)
                library_imports(name, root, seen)
    return seen


def needed_deps(stage: str, root: Path) -> set[str]:
    """What a stage must depend on: its own file, each library module it imports, and the selected task's
    module when it uses the task (the task is loaded by path, so no import names it)."""
    modules = library_imports(f"stages.{stage}", root) - PLUMBING
    return {f"stages/{stage}.py"} | {str(module_file(m, root)) for m in modules} | (
        {TASK_MODULE} if "dpo_pipeline.tasks" in modules else set())


def test_every_stage_depends_on_exactly_the_code_it_runs(dvc_yaml, root):
    for name, stage in dvc_yaml["stages"].items():
        assert stage["cmd"] == f"python -m stages.{name}"
        code = {d for d in stage["deps"] if d.endswith(".py") or d == TASK_MODULE}
        needed = needed_deps(name, root)
        assert needed <= code, f"stage {name} lacks deps {needed - code}"
        assert code <= needed, f"stage {name} depends on code it does not run: {code - needed}"


def dvc_status_after_touching(repo: Path, files: list[str]) -> dict[str, set[str]]:
    """Append a comment to each of `files`, then ask `dvc status` which stages it finds changed, per file."""
    for f in files:
        with (repo / f).open("a") as fh:
            fh.write("# touched\n")
    proc = subprocess.run(["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    touched: dict[str, set[str]] = {f: set() for f in files}
    for stage, changes in json.loads(proc.stdout).items():
        for change in changes:
            for path in (change.get("changed deps") or {}) if isinstance(change, dict) else ():
                if path in touched:
                    touched[path].add(stage.split(":")[-1])
    return touched


def test_touching_a_library_module_reruns_only_the_stages_that_use_it(root, tmp_path, params):
    """In a copy of the repository with the committed dvc.lock, edit every library module (and both task
    modules) and see which stages `dvc status` calls changed: exactly those that import it."""
    for f in subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.split():
        if (root / f).is_file():
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / f, tmp_path / f)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    library = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "dpo_pipeline").rglob("*.py"))
    seen = dvc_status_after_touching(tmp_path, library)
    selected = params["task"]["module"]
    expected = {f: {s for s in STAGES if f in needed_deps(s, root) or
                    (f == selected and TASK_MODULE in needed_deps(s, root))} for f in library}
    assert seen == expected
    # Spelled out for the modules a user is most likely to edit:
    assert seen["dpo_pipeline/models/kl.py"] == {"train", "eval"}
    assert seen["dpo_pipeline/models/dpo.py"] == {"train"}
    assert seen["dpo_pipeline/judging/claude.py"] == {"judge", "eval"}
    assert seen["dpo_pipeline/evaluation/schema.py"] == {"eval", "report"}
    assert seen["dpo_pipeline/tasks/incident_triage.py"] == {"prepare", "judge", "eval", "report"}
    assert seen["dpo_pipeline/tasks/number_summary.py"] == set()  # not the selected task
    assert seen["dpo_pipeline/config.py"] == set()                # plumbing


def test_sampling_and_judging_do_not_depend_on_training_params(dvc_yaml):
    """So `dvc exp run -S train.beta=...` never pays for sampling or judging again."""
    for name in ("prepare", "sft", "sample", "judge"):
        params = dvc_yaml["stages"][name].get("params", [])
        assert not [p for p in params if p.split(".")[0] in ("train", "eval")], name


def test_dvc_resolves_the_pipeline(root):
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    assert list(stages) == STAGES
    outs = {str(o.def_path) for s in stages.values() for o in s.outs}
    assert {"models/dpo", "metrics/eval.json", "reports/report.md"} <= outs


def test_committed_lock_matches_the_code(root):
    """The committed dvc.lock is the baseline every diff compares against: it must record the code as it
    is, or `dvc status` on a fresh clone reports stages changed that nobody touched."""
    import hashlib

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    stale = []
    for name, stage in lock["stages"].items():
        for dep in stage["deps"]:
            path = root / dep["path"]
            if dep["path"].startswith(("stages/", "dpo_pipeline/", "data/")) and path.is_file():
                if hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                    stale.append(f"{name}: {dep['path']}")
    assert not stale, f"run `dvc repro` and commit dvc.lock; stale: {stale}"
