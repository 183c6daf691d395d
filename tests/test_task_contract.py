"""A task of your own is light: METRICS and response_metrics, and each other hook only where a run needs it,
its absence a one-line error naming it and why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from dpo_pipeline.config import JudgeParams, TaskParams, load_params
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.judging.registry import make_judge, reference_judge
from dpo_pipeline.tasks import HOOKS, get_task, need
from tests.support.stages import run_stage

TEMPLATE = "examples/task_template.py"


@pytest.fixture
def template(root):
    return get_task(TaskParams(name="my_task", module=str(root / TEMPLATE)))


def test_the_template_is_a_task_as_it_stands(template):
    assert template.NAME == "my_task"  # NAME is optional: task.name
    assert set(template.response_metrics("p", "All good.")) == set(template.METRICS)
    assert template.response_metrics("p", "All good.")["format_conformance"] == 1.0
    assert template.response_metrics("p", "word " * 61)["brief"] == 0.0


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_a_missing_hook_is_named_with_what_needs_it(template, hook):
    with pytest.raises(UserError, match=rf"^task my_task: its module defines no {hook}\(\), and .+ "
                                        r"\(see examples/task_template.py\)$"):
        need(template, hook)


def test_the_rubric_judge_needs_rubric_score_and_claude_does_not(root, template):
    judge = load_params(root / "params.yaml").judge
    with pytest.raises(UserError, match=r"defines no rubric_score\(\), and judge.backend rubric scores"):
        make_judge(judge, template, "policy")
    assert reference_judge(template) is None  # no reference judge: Claude's agreement with it is None
    claude = JudgeParams(**{**judge.model_dump(), "backend": "anthropic"})
    assert make_judge(claude, template, "policy", send=False).name == "anthropic"


@pytest.fixture
def my_task(root, tmp_path):
    """A workdir with a task from the template alone: no sft.jsonl."""
    shutil.copy(root / TEMPLATE, tmp_path / "my_task.py")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["task"] = {"name": "my_task", "module": "my_task.py"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    data = tmp_path / "data" / "my_task"
    data.mkdir(parents=True)
    (data / "policy.md").write_text("Answer in one short sentence.\n")
    for name in ("prompts", "eval"):
        (data / f"{name}.jsonl").write_text("".join(json.dumps({"id": f"{name}-{i}", "prompt": f"{name} {i}?"}) + "\n"
                                                    for i in range(3)))
    return tmp_path


def set_model(workdir, **model) -> None:
    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    raw["model"].update(model)
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))


def test_no_sft_data_is_an_empty_copy_and_a_one_line_error_where_needed(my_task):
    assert run_stage("sft_data", my_task).returncode == 0
    assert (my_task / "artifacts" / "sft_data.jsonl").read_text() == ""
    proc = run_stage("prepare", my_task)  # builtin:tiny pre-trains on the SFT pairs, as text
    assert (proc.returncode, proc.stderr.count("\n")) == (2, 1), proc.stderr
    assert proc.stderr.startswith("error: task my_task: its module defines no pretrain_text(), and model.base "
                                  "builtin:tiny is pre-trained")
    (my_task / "my_task.py").write_text((my_task / "my_task.py").read_text()
                                        + "\n\ndef pretrain_text(prompt, response):\n    return prompt + response\n")
    proc = run_stage("prepare", my_task)
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: data/my_task/sft.jsonl: no SFT pairs (not found "
                                                          "or empty), and model.base builtin:tiny is pre-trained on them")
    assert not (my_task / "models").exists()


def test_the_sft_stage_names_the_missing_file_and_the_way_out(my_task, tmp_path_factory):
    from tests.support.models import save_tiny

    base = save_tiny("qwen2", tmp_path_factory.mktemp("base"))
    set_model(my_task, base=str(base))
    for stage in ("sft_data", "prepare"):
        assert run_stage(stage, my_task).returncode == 0
    proc = run_stage("sft", my_task)
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: data/my_task/sft.jsonl: no SFT pairs (not found or "
                                                          "empty), and the sft stage trains the SFT adapter on them (or "
                                                          "set model.sft to your SFT model)")
    assert not (my_task / "models" / "sft").exists()


def test_an_eval_prompt_that_is_an_sft_prompt_names_the_task_file(my_task):
    data = my_task / "data" / "my_task"
    (data / "sft.jsonl").write_text(json.dumps({"id": "s1", "prompt": "eval 2?", "response": "Yes."}) + "\n")
    assert run_stage("sft_data", my_task).returncode == 0
    proc = run_stage("eval_baselines", my_task)
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: data/my_task/eval.jsonl: id 'eval-2' has the prompt "
                                                          "of data/my_task/sft.jsonl id 's1'; held-out prompts must be "
                                                          "in no other split")


def test_bad_sft_rows_are_refused_naming_file_and_line(my_task):
    (my_task / "data" / "my_task" / "sft.jsonl").write_text('{"id": "s1", "prompt": "p"}\n')
    proc = run_stage("sft_data", my_task)
    assert (proc.returncode, proc.stderr.count("\n")) == (2, 1), proc.stderr
    assert proc.stderr.startswith("error: data/my_task/sft.jsonl:1: ")
    assert not (my_task / "artifacts" / "sft_data.jsonl").exists()


# A generator that reads its task module: the task's folder is importable while it loads.
GENERATOR = """from my_task import METRICS


def generate(seed, n_sft, n_prompts, n_eval):
    def rows(split, n):
        return [{"id": f"{split}-{i}", "prompt": f"{split} {seed} {i}?"} for i in range(n)]
    return {"sft": [dict(r, response=next(iter(METRICS))) for r in rows("sft", n_sft)],
            "prompts": rows("prompts", n_prompts), "eval": rows("eval", n_eval)}
"""


def test_the_data_generator_is_a_file_beside_the_task(root, my_task):
    """make_data runs generate() from my_task_data.py, which no stage runs (tests/test_dvc_wiring.py)."""
    def make_data():
        return subprocess.run([sys.executable, "-m", "tools.make_data", "--seed", "4", "--n-sft", "2",
                               "--n-prompts", "1", "--n-eval", "1"], cwd=my_task, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)

    proc = make_data()
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: task my_task: python -m tools.make_data writes the "
                                                          "task's data files with generate() in my_task_data.py (no "
                                                          "such file; see examples/task_template.py)")
    (my_task / "my_task_data.py").write_text("GENERATE = None\n")
    assert "(it defines no generate(); see" in make_data().stderr
    (my_task / "my_task_data.py").write_text(GENERATOR)
    proc = make_data()
    assert proc.returncode == 0, proc.stderr
    data = my_task / "data" / "my_task"
    assert read_jsonl(data / "sft.jsonl") == [{"id": f"sft-{i}", "prompt": f"sft 4 {i}?",
                                                "response": "format_conformance"} for i in range(2)]
    assert read_jsonl(data / "eval.jsonl") == [{"id": "eval-0", "prompt": "eval 4 0?"}]
