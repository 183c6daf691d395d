"""params.yaml validation and what a user sees for bad params and bad data: one line, exit 2."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from dpo_pipeline.config import load_params
from dpo_pipeline.errors import UserError
from tests.support.stages import run_stage


def test_shipped_params_load(root):
    p = load_params(root / "params.yaml")
    assert p.model.base == "builtin:tiny"
    assert p.sample.temperatures == [0.7, 1.2] and p.sample.num_candidates == 2
    assert p.preferences.source == "generated" and p.model.sft is None
    assert p.task_files.eval_prompts == "data/incident_triage/eval.jsonl"
    assert p.judge.backend == "rubric"
    assert p.train.beta == 0.1


def edited(root, tmp_path, edit) -> str:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["train"].update(betta=0.2), "train.betta: unknown key"),
    (lambda r: r["train"].update(beta=0), "train.beta: Input should be greater than 0"),
    (lambda r: r["train"].update(beta="high"), "train.beta: Input should be a valid number"),
    (lambda r: r["judge"].update(backend="gpt"), "judge.backend: Input should be 'rubric'"),
    (lambda r: r["sample"].update(temperatures=[0.7]), "sample.temperatures: Value error, give one temperature > 0 "
                                                        "per candidate, at least two"),
    (lambda r: r["sample"].update(num_candidates=2), "sample.num_candidates: unknown key"),
    (lambda r: r["train"].update(loss_type="dpo"), "train.loss_type: Input should be 'sigmoid'"),
    (lambda r: r["train"].update(loss_type="exo_pair"), "exo_pair needs label_smoothing > 0"),
    (lambda r: r["train"].update(loss_type="robust", label_smoothing=0.5), "robust needs label_smoothing in"),
    (lambda r: r["train"].update(label_smoothing=0.1), "label_smoothing has no effect with loss_type sigmoid"),
    (lambda r: r["model"].update(lora_target_modules=[]), "model.lora_target_modules"),
    (lambda r: r["preferences"].update(source="prefs.csv"), "preferences.source: Value error, expected "
                                                            "'generated'"),
    (lambda r: r["task"].update(name="my tasks"), "task.name: String should match pattern"),
    (lambda r: r["task"].update(module="my_task"), "task.module: String should match pattern"),
    (lambda r: r["task"].update(name="number_summary"), "task: Value error, dpo_pipeline/tasks/incident_triage.py "
                                                       "is the builtin task 'incident_triage' but task.name is "
                                                       "'number_summary'"),
    (lambda r: r["sample"].update(temperatures=[0.0, 1.0]), "give one temperature > 0 per candidate"),
    (lambda r: r["model"].update(base="builtin:huge"), "unknown builtin model 'builtin:huge'; the builtins are "
                                                       "builtin:tiny, builtin:smollm2-135m"),
    (lambda r: r["sft"].update(max_rows=0), "sft.max_rows: Input should be greater than 0"),
    (lambda r: r["sft"].update(micro_batch_size=12), "sft: Value error, micro_batch_size (12) must divide "
                                                      "batch_size (32)"),
    (lambda r: r["model"]["tiny"].update(micro_batch_size=0), "model.tiny.micro_batch_size: Input should be "
                                                              "greater than 0"),
    (lambda r: r["model"]["tiny"].update(batch_size=30), "model.tiny: Value error, micro_batch_size (8) must "
                                                         "divide batch_size (30)"),
    (lambda r: r["train"].update(micro_batch_size=3), "train: Value error, micro_batch_size (3) must divide each "
                                                      "process's batch, batch_size / num_processes (16)"),
    (lambda r: r["train"].update(num_processes=4, micro_batch_size=8), "train: Value error, micro_batch_size (8) "
                                                                       "must divide each process's batch"),
    (lambda r: r["model"].update(quantization="int8"), "model.quantization: Input should be 'nf4'"),
    (lambda r: r["train"].update(activation_checkpointing="sometimes"), "train.activation_checkpointing: Input "
                                                                        "should be a valid boolean"),
    (lambda r: r["train"].update(lr_scheduler="cosine_with_min_lr"), "train.lr_scheduler: Input should be "
                                                                     "'linear', 'cosine'"),
    (lambda r: r["sft"].update(warmup_ratio=1), "sft.warmup_ratio: Input should be less than 1"),
    (lambda r: r["train"].update(lr_scheduler="constant"), "train: Value error, lr_scheduler constant takes no "
                                                           "warmup"),
    (lambda r: r["judge"].update(requests_per_minute=0), "judge.requests_per_minute: Input should be greater "
                                                         "than 0"),
    (lambda r: r["judge"].update(input_tokens_per_minute=-5), "judge.input_tokens_per_minute: Input should be "
                                                              "greater than 0"),
    (lambda r: r["judge"].update(batch_max_requests=100_001), "judge.batch_max_requests: Input should be less "
                                                              "than or equal to 100000"),
    (lambda r: r["judge"].pop("requests_per_minute"), "judge.requests_per_minute: missing key"),
    (lambda r: r.pop("eval"), "eval: missing key"),
    (lambda r: r.update(extra_section={}), "extra_section: unknown key"),
    # the generator's and the gate's settings are tools.make_data's and tools.gate's flags, not params
    (lambda r: r.update(data={"seed": 0, "n_sft": 4000, "n_prompts": 1000, "n_eval": 300}), "data: unknown key"),
    (lambda r: r.update(gate={"rate_band": 0.03, "score_band": 0.13, "min_ci_low": 0.5}), "gate: unknown key"),
])
def test_bad_params_name_the_key(root, tmp_path, edit, message):
    with pytest.raises(UserError) as e:
        load_params(edited(root, tmp_path, edit))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("edit", [
    lambda r: r["train"].update(loss_type="robust", label_smoothing=0.1),
    lambda r: r["train"].update(loss_type="exo_pair", label_smoothing=1e-3),
    lambda r: r["train"].update(loss_type="ipo"),
    lambda r: (r["train"].update(lr_scheduler="constant", warmup_ratio=0), r["sft"].update(lr_scheduler="linear")),
    lambda r: r["sample"].update(temperatures=[0.5, 0.8, 1.0, 1.3]),
    lambda r: r["model"].update(lora_target_modules=["q_proj", "v_proj"], sft="adapters/my-sft"),
    lambda r: r["preferences"].update(source="hf:HuggingFaceH4/ultrafeedback_binarized", max_pairs=2000),
    lambda r: r["judge"].update(requests_per_minute=4000, input_tokens_per_minute=2_000_000, batch_max_requests=5),
    lambda r: (r["model"].update(base="builtin:smollm2-135m"), r["sft"].update(max_rows=320),
               r["sample"].update(max_prompts=200), r["eval"].update(max_prompts=96)),
    lambda r: (r["model"].update(quantization="nf4"), r["sft"].update(micro_batch_size=None, activation_checkpointing=True),
               r["train"].update(num_processes=2, micro_batch_size=2, activation_checkpointing=True)),
])
def test_valid_alternatives_load(root, tmp_path, edit):
    load_params(edited(root, tmp_path, edit))


def test_an_unknown_task_names_the_param(root, tmp_path):
    from dpo_pipeline.tasks import get_task

    from dpo_pipeline.config import TaskParams

    with pytest.raises(UserError, match=r"^task.module: my_tasks/nope.py: not found$"):
        get_task(TaskParams(name="nope", module="my_tasks/nope.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_package\n")
    with pytest.raises(UserError, match=r"^task.module: .*broken.py: cannot import it \(ModuleNotFoundError: "):
        get_task(TaskParams(name="broken", module=str(broken)))
    empty = tmp_path / "empty.py"
    empty.write_text("NAME = 'empty'\n")
    with pytest.raises(UserError, match=r"^task.module: .*empty.py lacks METRICS, response_metrics "
                                        r"\(see examples/task_template.py\)$"):
        get_task(TaskParams(name="empty", module=str(empty)))


def test_a_task_module_outside_the_repo_loads_from_its_file(tmp_path):
    """A user's task is a file anywhere: loaded from its path, importing the library like a builtin."""
    from dpo_pipeline.config import TaskParams
    from dpo_pipeline.tasks import get_task

    mine = tmp_path / "elsewhere" / "support_replies.py"
    mine.parent.mkdir()
    source = (Path(__file__).resolve().parents[1] / "dpo_pipeline/tasks/number_summary.py").read_text()
    mine.write_text(source.replace('NAME = "number_summary"', 'NAME = "support_replies"'))
    task = get_task(TaskParams(name="support_replies", module=str(mine)))
    assert task.NAME == "support_replies" and task.response_metrics("x", "y").keys() == task.METRICS.keys()


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ntrain:\n  beta: [0.1\n")
    with pytest.raises(UserError, match=r"params.yaml:\d+: not valid YAML"):
        load_params(path)


@pytest.fixture
def workdir(root, tmp_path):
    """A directory with the shipped params.yaml and data, as a stage sees its repo."""
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(root / "data", tmp_path / "data")
    return tmp_path


def test_a_stage_with_a_bad_param_exits_2_with_one_line(workdir):
    text = (workdir / "params.yaml").read_text().replace("beta: 0.1 ", "beta: -1 ")
    (workdir / "params.yaml").write_text(text)
    proc = run_stage("train", workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: params.yaml: train.beta: Input should be greater than 0 (got -1)"
    assert not (workdir / "models").exists()


# Rows with every field any stage requires, then a truncated line.
ROW = '{"id": "%s", "prompt": "x", "response": "y", "responses": [], "chosen": [], "rejected": [], "outputs": {}}\n'
BROKEN = ROW % "a" + ROW % "b" + '{"id": "c", "prompt": \n'


@pytest.mark.parametrize("stage, path_key", [
    ("sft_data", "sft_data"), ("sample", "prompts"), ("judge", "samples"),
    ("train", "preferences"), ("eval_baselines", "eval_prompts"), ("eval", "eval_prompts"), ("eval", "eval_baselines"),
])
def test_a_malformed_jsonl_line_names_file_and_line(workdir, stage, path_key):
    params = load_params(workdir / "params.yaml")
    path = getattr(params.task_files if hasattr(params.task_files, path_key) else params.paths, path_key)
    (workdir / path).parent.mkdir(parents=True, exist_ok=True)
    (workdir / path).write_text(BROKEN)
    before = {p for p in workdir.rglob("*")}
    proc = run_stage(stage, workdir)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {path}:3: not valid JSON"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert {p for p in workdir.rglob("*")} == before  # nothing half-written


def test_a_missing_field_names_file_line_and_field(workdir):
    (workdir / "data" / "incident_triage" / "eval.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "b"}\n')
    proc = run_stage("eval", workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: data/incident_triage/eval.jsonl:2: missing field 'prompt'"


def test_bad_bytes_and_mistyped_fields_name_file_and_line(workdir):
    (workdir / "data" / "incident_triage" / "eval.jsonl").write_bytes(b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "\xff"}\n')
    proc = run_stage("eval", workdir)
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: data/incident_triage/eval.jsonl:2: not UTF-8")
    (workdir / "data" / "incident_triage" / "eval.jsonl").write_text('{"id": "a", "prompt": 123}\n')
    proc = run_stage("eval", workdir)
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: data/incident_triage/eval.jsonl:1: field 'prompt' must be a "
                                                         "string, got int")


@pytest.mark.parametrize("key", ["logging_steps", "eval_steps"])
def test_logging_or_validating_beyond_the_run_is_refused_before_training(workdir, key):
    pair = ('{"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "assistant", "content": "a"}], '
            '"rejected": [{"role": "assistant", "content": "b"}]}\n')
    (workdir / "artifacts").mkdir()
    (workdir / "artifacts" / "preferences.jsonl").write_text(pair * 20)
    # 18 training pairs in batches of 16, 3 epochs: 6 steps, fewer than the default eval_steps (10)
    text = (workdir / "params.yaml").read_text().replace("logging_steps: 2", "logging_steps: 500")
    (workdir / "params.yaml").write_text(text if key == "logging_steps" else text.replace("logging_steps: 500",
                                                                                          "logging_steps: 2"))
    proc = run_stage("train", workdir)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: train.{key} (") and "is more than the 6 optimizer steps" in proc.stderr


def test_tiny_model_heads_must_divide_hidden_size(root, tmp_path):
    with pytest.raises(UserError, match="model.tiny: Value error, hidden_size \\(100\\) must be a multiple of "
                                        "num_heads \\(3\\)"):
        load_params(edited(root, tmp_path, lambda r: r["model"]["tiny"].update(hidden_size=100, num_heads=3)))


@pytest.mark.parametrize("lines, message", [
    ('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "  "}\n', "eval.jsonl:2: field 'prompt' is empty"),
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "eval.jsonl:2: duplicate id 'a' (first on line 1)"),
])
def test_empty_prompts_and_duplicate_ids_name_file_and_line(workdir, lines, message):
    (workdir / "data" / "incident_triage" / "eval.jsonl").write_text(lines)
    proc = run_stage("eval", workdir)
    assert (proc.returncode, proc.stderr.strip()) == (2, f"error: data/incident_triage/{message}")


def test_eval_prompts_that_are_training_prompts_are_refused(workdir):
    task = workdir / "data" / "incident_triage"
    sampled = (task / "prompts.jsonl").read_text().splitlines()[5]
    (task / "eval.jsonl").write_text('{"id": "e1", "prompt": "new"}\n' + sampled.replace('"prompts-', '"e-') + "\n")
    assert run_stage("sft_data", workdir).returncode == 0
    proc = run_stage("eval_baselines", workdir)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: data/incident_triage/eval.jsonl: id 'e-00005' has the prompt of "
                                  "data/incident_triage/prompts.jsonl id 'prompts-00005'; held-out prompts"), proc.stderr


def test_eval_refuses_baselines_of_other_prompts(workdir):
    """Base's and SFT's outputs from stage eval_baselines must be of today's held-out prompts (dvc repro sees to
    it; a stage run by hand after eval.jsonl changed would compare DPO with outputs on other prompts)."""
    (workdir / "data" / "incident_triage" / "eval.jsonl").write_text('{"id": "a", "prompt": "x"}\n')
    (workdir / "artifacts").mkdir(exist_ok=True)
    (workdir / "artifacts" / "eval_baselines.jsonl").write_text('{"id": "a", "prompt": "y", "outputs": {}}\n')
    proc = run_stage("eval", workdir)
    assert (proc.returncode, proc.stderr.count("\n")) == (2, 1), proc.stderr
    assert proc.stderr.startswith("error: artifacts/eval_baselines.jsonl: not the baselines of "
                                  "data/incident_triage/eval.jsonl (eval.max_prompts None): run `dvc repro "
                                  "eval_baselines` first"), proc.stderr


def test_the_stage_log_gets_one_line_per_finished_stage_and_none_for_a_failed_one(tmp_path, monkeypatch):
    from dpo_pipeline import cli

    log = tmp_path / "stages.jsonl"
    monkeypatch.setenv(cli.STAGE_LOG, str(log))
    monkeypatch.setattr(sys, "argv", ["stage"])  # not pytest's arguments: cli.run parses the command line
    cli.run(lambda: bytearray(50 * 2**20), needs_params=False)  # holds 50 MiB for a moment

    def failing():
        raise UserError("bad input")
    with pytest.raises(SystemExit):
        cli.run(failing, needs_params=False)
    [line] = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["stage"] == "test_config" and line["seconds"] >= 0 and line["peak_rss_mib"] >= 50
