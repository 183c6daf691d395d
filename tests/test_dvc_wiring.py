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

from dpo_pipeline.config import RUNTIME, EvalParams, GenerationParams, JudgeParams, Params, SampleParams
from dpo_pipeline.fingerprint import fingerprint, stage_files, stages
from tools.rounds import render

STAGES = ["code", "sft_data", "prepare", "sft", "sample", "judge", "train", "eval_baselines", "eval", "report"]
TASK_MODULE = "${task.module}"
# The sections with run-time keys (config.RUNTIME): a stage lists their other keys one by one, not the section.
SECTIONS = {"judge": JudgeParams, "sample": SampleParams, "eval": EvalParams, "generation": GenerationParams}
# Keys of such a section that a stage reading it never reads, so it does not list them either (checked below:
# the stage's code never names them).
UNREAD = {"judge": {"judge.reliability_repeats"},        # eval's self-consistency repeats
          "eval": {"judge.label_noise"},                 # flips the training pairs, in the judge stage
          "eval_baselines": {"eval.bootstrap_samples"}}  # eval's confidence intervals


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


def test_each_stage_depends_on_its_code_file_and_on_no_source_file(dvc_yaml, root):
    """Stage code depends on all the code; every other stage on its fingerprint file only, which lists the
    code it runs."""
    code = dvc_yaml["stages"]["code"]
    assert (code["deps"], code["params"], code["outs"]) == (["stages", "dpo_pipeline", TASK_MODULE], ["task.module"],
                                                           ["${paths.code}"])
    assert stages(root) == sorted(STAGES[1:])
    for name, stage in dvc_yaml["stages"].items():
        assert stage["cmd"] == f"python -m stages.{name}"
        if name != "code":
            source = [d for d in stage["deps"] if d.endswith(".py") or "paths.code" in d or d.startswith(
                ("stages", "dpo_pipeline", TASK_MODULE))]
            assert source == [f"${{paths.code}}/{name}.txt"], name


def test_a_stage_fingerprint_lists_the_code_it_runs_and_no_plumbing(root):
    files = {s: set(stage_files(s, root, "my_task.py")) for s in STAGES[1:]}
    assert {"stages/train.py", "dpo_pipeline/models/dpo.py", "dpo_pipeline/models/kl.py",
            "dpo_pipeline/models/loading.py"} <= files["train"]
    assert {"dpo_pipeline/judging/claude.py", "dpo_pipeline/tasks/__init__.py", "my_task.py"} <= files["judge"]
    # what Claude's judge is built from: the prompts, the online requests and budget, batch mode
    claude_judge = {f"dpo_pipeline/judging/{m}.py" for m in ("claude", "prompts", "online", "batches")}
    assert claude_judge <= files["judge"] & files["eval"]
    # judging loads no policy: only a reward model, which needs the device and where a model comes from
    assert "dpo_pipeline/judging/reward_model.py" in files["judge"] & files["eval"]
    assert {f for f in files["judge"] if f.startswith("dpo_pipeline/models/")} == {
        "dpo_pipeline/models/device.py", "dpo_pipeline/models/manifest.py"}
    assert "dpo_pipeline/reporting/page.html" in files["report"]  # a template counts, byte for byte
    assert "my_task.py" not in files["train"] | files["sample"]
    # the tiny model's pre-training does not depend on how models are loaded, rounds or eval's machine record
    assert not files["prepare"] & {"dpo_pipeline/models/loading.py", "dpo_pipeline/rounds.py",
                                   "dpo_pipeline/evaluation/machine.py"}
    plumbing = {f"dpo_pipeline/{m}.py" for m in ("cli", "config", "errors", "files", "fingerprint", "models/memory")}
    assert not plumbing & set().union(*files.values())
    # the data generators are what tools.make_data runs, never a stage
    assert not [f for f in set().union(*files.values())
                if f.startswith("dpo_pipeline/tasks/") and f.endswith(("_data.py", "/synthetic.py"))]


def test_only_code_changes_count_not_comments_docstrings_or_layout(tmp_path):
    from dpo_pipeline.fingerprint import code_hash

    f = tmp_path / "m.py"
    f.write_text('"""Doc."""\nimport os\n\n\ndef g(x):\n    """Doc."""\n    return x * 2  # twice\n')
    before = code_hash(f)
    f.write_text('"""Another doc."""\nimport os\n\ndef g(x):\n    # a comment\n    return (x *\n            2)\n')
    assert code_hash(f) == before
    f.write_text('"""Doc."""\nimport os\n\n\ndef g(x):\n    """Doc."""\n    return x * 3\n')
    assert code_hash(f) != before


def dvc_status(repo: Path) -> dict:
    proc = subprocess.run(["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def changed_stages(repo: Path) -> set[str]:
    """The stages `dvc status` finds with changed code: stage code's sources, another stage's fingerprint file
    (a copy of the repository has no outputs: missing ones are not changes)."""
    def code(stage: str, path: str) -> bool:
        return stage == "code" or path.startswith("artifacts/code/")
    return {stage.split(":")[-1] for stage, changes in dvc_status(repo).items() for c in changes
            if isinstance(c, dict) and any(code(stage, p) for p in c.get("changed deps") or {})}


def stages_after_editing(repo: Path, path: str, edit) -> set[str]:
    """Edit one file of the copy, run stage code as `dvc repro` would, and ask which stages would re-run."""
    original = (repo / path).read_text()
    (repo / path).write_text(edit(original))
    try:
        subprocess.run([sys.executable, "-m", "stages.code"], cwd=repo, check=True, capture_output=True)
        return changed_stages(repo) - {"code"}
    finally:
        (repo / path).write_text(original)
        subprocess.run([sys.executable, "-m", "stages.code"], cwd=repo, check=True, capture_output=True)


def copy_repo(root: Path, dest: Path) -> None:
    """The repository's files (the committed dvc.lock among them) in `dest`, a git repository of its own."""
    for f in subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.split():
        if (root / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / f, dest / f)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def test_a_code_change_reruns_the_stages_that_run_it_and_a_comment_reruns_none(root, tmp_path):
    """In a copy of the repository with the committed dvc.lock: a comment or a docstring anywhere re-runs no
    stage; a line of code re-runs exactly the stages that run the file it is in."""
    copy_repo(root, tmp_path)
    subprocess.run([sys.executable, "-m", "stages.code"], cwd=tmp_path, check=True, capture_output=True)
    assert changed_stages(tmp_path) <= {"code"}  # the committed lock is current
    comment = lambda text: text + "# a comment\n"  # noqa: E731
    docstring = lambda text: text.replace('"""', '"""Reworded. ', 1)  # noqa: E731
    code = lambda text: text + "_EDITED = 1\n"  # noqa: E731
    for path in [str(p.relative_to(tmp_path)) for p in sorted((tmp_path / "dpo_pipeline").rglob("*.py"))]:
        (tmp_path / path).write_text(docstring(comment((tmp_path / path).read_text())))
    assert stages_after_editing(tmp_path, "stages/train.py", comment) == set()
    expected = {"dpo_pipeline/models/kl.py": {"train", "eval"},
                "dpo_pipeline/models/dpo.py": {"train"},
                "dpo_pipeline/models/loading.py": {"sft", "sample", "train", "eval_baselines", "eval"},
                "dpo_pipeline/evaluation/machine.py": {"eval"},
                "dpo_pipeline/judging/claude.py": {"judge", "eval"},
                "dpo_pipeline/evaluation/schema.py": {"eval", "report"},
                "dpo_pipeline/tasks/incident_triage.py": {"prepare", "judge", "eval", "report"},
                "dpo_pipeline/tasks/incident_triage_data.py": set(),  # the selected task's generator: make data's
                "dpo_pipeline/tasks/synthetic.py": set(),
                "dpo_pipeline/tasks/number_summary.py": set(),  # not the selected task
                "dpo_pipeline/config.py": set()}                # plumbing
    for path, stages_ in expected.items():
        assert stages_after_editing(tmp_path, path, code) == stages_, path
    assert stages_after_editing(tmp_path, "dpo_pipeline/reporting/page.html", comment) == {"report"}


def test_sampling_and_judging_do_not_depend_on_training_params(dvc_yaml):
    """So `dvc exp run -S train.beta=...` never pays for sampling or judging again."""
    for name in ("prepare", "sft", "sample", "judge"):
        params = dvc_yaml["stages"][name].get("params", [])
        assert not [p for p in params if p.split(".")[0] in ("train", "eval")], name


def test_the_headline_is_the_first_metrics_file_dvc_shows(dvc_yaml):
    """DVC lists a stage's own `metrics:` before the top-level ones, so every metrics file is declared at the
    top level, the headline first: `dvc exp show` opens with it."""
    assert not [name for name, stage in dvc_yaml["stages"].items() if "metrics" in stage]
    assert dvc_yaml["metrics"][0] == "${paths.headline}"
    assert {"${paths.eval_metrics}", "${paths.train_metrics}", "${paths.judge_metrics}"} <= set(dvc_yaml["metrics"])


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

    task_module = yaml.safe_load((root / "params.yaml").read_text())["task"]["module"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    stale = []
    for name, stage in lock["stages"].items():
        for dep in stage["deps"]:
            path = root / dep["path"]
            if dep["path"].startswith("artifacts/code/"):
                data = fingerprint(Path(dep["path"]).stem, root, task_module).encode()
            elif dep["path"].startswith("data/") and path.is_file():
                data = path.read_bytes()
            else:
                continue
            if hashlib.md5(data).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
    assert not stale, f"the code a stage runs changed: run `dvc repro` and commit dvc.lock; stale: {stale}"
    # and the code as stage code last saw it: else a fresh clone's `dvc status` shows stage code changed
    assert "code" not in changed_stages(root), "run `dvc repro` (only stage code runs: seconds), commit dvc.lock"


# --- run-time settings (config.RUNTIME) re-run nothing; every other key re-runs the stages that read it ---------

def runtime_keys(section: str) -> set[str]:
    return {f"{section}.{key}" for key in RUNTIME[section]}


def output_keys(section: str) -> set[str]:
    return {f"{section}.{key}" for key in SECTIONS[section].model_fields} - runtime_keys(section)


def listed(stage: dict) -> dict[str, set[str]]:
    """A stage's params of SECTIONS, by section."""
    out: dict[str, set[str]] = {}
    for p in stage.get("params", []):
        if p.split(".")[0] in SECTIONS:
            out.setdefault(p.split(".")[0], set()).add(p)
    return out


def names_in_code(stage: str, key: str, root: Path) -> bool:
    """Whether the stage's code (its file and the library modules it imports) reads `.<field>` of `key`."""
    field = re.compile(rf"\.{re.escape(key.split('.', 1)[1])}\b")
    return any(field.search((root / f).read_text()) for f in stage_files(stage, root, "") if f)


def test_runtime_keys_are_keys():
    assert set(RUNTIME) == set(SECTIONS)
    for section in SECTIONS:
        assert runtime_keys(section) <= {f"{section}.{k}" for k in SECTIONS[section].model_fields}, section


@pytest.mark.parametrize("rounds", [1, 2])
def test_each_key_is_a_stage_param_or_runtime_never_both(root, rounds):
    """Every key of judge, sample and eval (from the pydantic models, so a new one cannot be forgotten) is in
    the params of each stage that reads its section, or in config.RUNTIME: never both, never neither. Also for
    the round stages `python -m tools.rounds 2` writes."""
    stages = yaml.safe_load(render((root / "dvc.yaml").read_text(), rounds))["stages"]
    if rounds > 1:
        assert {"sample_r2", "judge_r2", "train_r2"} <= set(stages)
    for name, stage in stages.items():
        code = re.sub(r"_r\d+$", "", name)  # round k's stages run round 1's code
        keys = listed(stage)
        own = (root / f"stages/{code}.py").read_text()
        assert {s for s in SECTIONS if f"params.{s}" in own} <= set(keys), f"{name} reads a section it lists nothing of"
        for section, named in keys.items():
            assert section not in named, f"{name} depends on the whole {section} section, run-time keys included"
            want = output_keys(section) - UNREAD.get(code, set())
            assert not named & runtime_keys(section), f"{name}: run-time keys in its params"
            assert not want - named, f"{name} lacks params {sorted(want - named)} (or add them to config.RUNTIME)"
            assert named <= want, f"{name} lists params it never reads: {sorted(named - want)}"
    for stage, keys in UNREAD.items():
        assert not [k for k in keys if names_in_code(stage, k, root)], f"{stage} reads {keys}: list it in dvc.yaml"


def changed_params(status: dict) -> dict[str, set[str]]:
    """`dvc status --json`'s changed params.yaml keys, by stage."""
    out: dict[str, set[str]] = {}
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, dict):
                out[stage] = out.get(stage, set()) | set((change.get("changed deps") or {}).get("params.yaml") or {})
    return {stage: keys for stage, keys in out.items() if keys}


def another(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):  # within every bound: 16 -> 8, 1 -> 2
        return value + 1 if value < 2 else value // 2
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [*value, value[-1]]
    if isinstance(value, dict):
        return {**value, "other": next(iter(value.values()))}
    return 1  # null


def value(params: dict, dotted: str):
    for part in dotted.split("."):
        params = params[part]
    return params


def record_params(repo: Path) -> None:
    """The copy's dvc.lock records params.yaml's values of every stage's params (as `dvc commit` would, with
    no stage run): the lock is current, whatever params.yaml edits are in the working tree."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for name, stage in lock["stages"].items():
        stage["params"] = {"params.yaml": {k: value(params, k) for k in sorted(stages[name].get("params", []))}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def test_runtime_settings_rerun_nothing_and_the_others_rerun_their_stages(root, tmp_path, dvc_yaml):
    """In a copy whose dvc.lock is current, `dvc status` after changing every run-time setting in params.yaml
    (as `-S judge.concurrency=32` would) finds no stage changed; after changing every other key of those
    sections, each stage that lists one, with exactly its keys."""
    copy_repo(root, tmp_path)
    record_params(tmp_path)
    text = (tmp_path / "params.yaml").read_text()
    assert changed_params(dvc_status(tmp_path)) == {}

    def status_after(keys: set[str]) -> tuple[dict[str, set[str]], dict]:  # what dvc finds, the params written
        params = yaml.safe_load(text)
        for key in keys:
            section, field = key.split(".", 1)
            params[section][field] = another(params[section][field])
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return changed_params(dvc_status(tmp_path)), params

    runtime = set().union(*map(runtime_keys, SECTIONS))
    assert {"judge.concurrency", "judge.timeout_s", "judge.max_retries", "judge.max_cost_usd", "judge.batch_poll_s",
            "judge.requests_per_minute", "judge.input_tokens_per_minute", "sample.batch_size", "sample.num_processes",
            "eval.batch_size", "eval.num_processes"} <= runtime
    seen, params = status_after(runtime)
    Params.model_validate(params)  # still valid: a stage would run with them
    assert seen == {}, f"run-time settings re-run {seen}"

    seen, _ = status_after(set().union(*map(output_keys, SECTIONS)))
    expected = {name: set().union(*listed(stage).values()) for name, stage in dvc_yaml["stages"].items() if listed(stage)}
    assert seen == expected
    assert {s for s, keys in seen.items() if "judge.model" in keys} == {"judge", "eval"}
    assert {s for s, keys in seen.items() if "sample.temperatures" in keys} == {"sample"}
    assert {s for s, keys in seen.items() if "eval.temperature" in keys} == {"eval_baselines", "eval"}


def test_committed_lock_records_the_params_as_they_are(root, dvc_yaml, params):
    """dvc.lock records, for each stage, the value of each param it lists: else `dvc status` on a fresh clone
    reports params changed that nobody changed (after a params edit: `dvc repro`, or a change that cannot alter
    an output re-recorded without running)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for name, stage in dvc_yaml["stages"].items():
        recorded = lock[name].get("params", {}).get("params.yaml", {})
        assert set(recorded) == set(stage.get("params", [])), name
        stale = {k: (v, value(params, k)) for k, v in recorded.items() if v != value(params, k)}
        assert not stale, f"{name}: dvc.lock records {stale} (recorded, params.yaml)"
