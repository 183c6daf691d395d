"""dvc.yaml wiring: params named exist, every stage depends on the code it runs, and DVC resolves it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

# Plumbing every stage imports that cannot change a stage's outputs (validation, file I/O, error printing);
# listing them would re-run the whole pipeline for a reworded error message.
PLUMBING = {"stages", "stages.cli", "stages.config", "stages.files"}


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


def stage_imports(module: str, root: Path, seen: set[str] | None = None) -> set[str]:
    """The stages.* modules `module` imports, transitively."""
    seen = set() if seen is None else seen
    rel = Path(*module.split("."))
    path = root / rel.with_suffix(".py") if (root / rel.with_suffix(".py")).exists() else root / rel / "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "stages":  # from stages import models
            names = [f"stages.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        else:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if name.startswith("stages") and name not in seen:
                seen.add(name)
                stage_imports(name, root, seen)
    return seen


def test_every_stage_depends_on_the_code_it_runs(dvc_yaml, root):
    for name, stage in dvc_yaml["stages"].items():
        assert stage["cmd"] == f"python -m stages.{name}"
        deps = set(stage["deps"])
        needed = {f"stages/{name}.py"} | {
            "stages/tasks" if m.startswith("stages.tasks") else m.replace(".", "/") + ".py"
            for m in stage_imports(f"stages.{name}", root) - PLUMBING}
        assert needed <= deps, f"stage {name} lacks deps {needed - deps}"


def test_sampling_and_judging_do_not_depend_on_training_params(dvc_yaml):
    """So `dvc exp run -S train.beta=...` never pays for sampling or judging again."""
    for name in ("prepare", "sft", "sample", "judge"):
        params = dvc_yaml["stages"][name].get("params", [])
        assert not [p for p in params if p.split(".")[0] in ("train", "eval")], name


def test_dvc_resolves_the_pipeline(root):
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    assert list(stages) == ["prepare", "sft", "sample", "judge", "train", "eval", "report"]
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
            if dep["path"].startswith(("stages/", "data/")) and path.is_file():
                if hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                    stale.append(f"{name}: {dep['path']}")
    assert not stale, f"run `dvc repro` and commit dvc.lock; stale: {stale}"
