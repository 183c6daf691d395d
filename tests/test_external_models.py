"""Bring your own model: hub ids and local folders resolved into manifests (referenced, not copied), SFT
adapters and full SFT models, LoRA targets by architecture, and the chat-template fallback, on GPT-2 and
Qwen2 models built and saved here."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml

from dpo_pipeline.chat import assistant, user
from dpo_pipeline.errors import UserError
from dpo_pipeline.models.loading import tokenizer_from
from dpo_pipeline.models.manifest import model_folder, resolve
from dpo_pipeline.models.lora import lora_config
from tests.support.models import save_adapter_for, save_tiny
from tests.support.stages import run_stage


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    gpt2 = save_tiny("gpt2", root / "gpt2", chat_template=False)
    qwen2 = save_tiny("qwen2", root / "qwen2")
    return {"gpt2": gpt2, "qwen2": qwen2, "gpt2_adapter": save_adapter_for(gpt2, root / "gpt2-sft"),
            "qwen2_adapter": save_adapter_for(qwen2, root / "qwen2-sft")}


def test_a_local_folder_resolves_to_its_path_and_content_hash(models, tmp_path):
    info = resolve("model.base", str(models["gpt2"]))
    assert info["path"] == str(models["gpt2"].resolve()) and info["revision"] is None
    copy = shutil.copytree(models["gpt2"], tmp_path / "copy")
    assert resolve("model.base", str(copy))["sha256"] == info["sha256"]  # content, not location
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"n_head": 2', '"n_head": 1'))
    assert resolve("model.base", str(copy))["sha256"] != info["sha256"]


def test_a_missing_folder_names_the_param(tmp_path):
    with pytest.raises(UserError, match=r"^model.sft: '\./no-such-adapter' is not a model folder \(not found\)$"):
        resolve("model.sft", "./no-such-adapter")


def test_a_hub_id_without_network_fails_at_once_saying_what_to_do():
    start = time.time()
    with pytest.raises(UserError) as e:
        resolve("model.base", "dpo-pipeline-tests/no-such-model")
    assert time.time() - start < 30
    assert str(e.value).startswith("model.base: cannot get 'dpo-pipeline-tests/no-such-model' from the hub")
    assert "HF_HUB_OFFLINE=1" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arch, targets", [
    ("gpt2", ["c_attn", "c_fc", "c_proj"]),
    ("qwen2", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
])
def test_lora_targets_every_projection_of_the_architecture(models, arch, targets):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models[arch])
    cfg = lora_config(model, "auto", r=4, alpha=8, dropout=0.0)
    assert sorted(cfg.target_modules) == targets
    assert cfg.fan_in_fan_out == (arch == "gpt2")  # GPT-2's Conv1D weights are transposed
    peft_model = get_peft_model(model, cfg)
    wrapped = {n.split(".")[-4] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert wrapped == set(targets)


def test_lora_targets_named_in_params_are_checked(models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models["gpt2"])
    assert lora_config(model, ["c_attn"], r=4, alpha=8, dropout=0.0).target_modules == {"c_attn"}
    with pytest.raises(UserError, match=r"^model.lora_target_modules: no module named q_proj in this gpt2 model"):
        lora_config(model, ["c_attn", "q_proj"], r=4, alpha=8, dropout=0.0)


def test_a_tokenizer_without_chat_template_gets_the_fallback(models):
    tok = tokenizer_from(models["gpt2"])
    prompt = tok.apply_chat_template(user("disk full"), tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(user("disk full") + assistant("SEV3"), tokenize=False)
    assert full.startswith(prompt)  # TRL's completion-only loss relies on it
    assert full.rstrip().endswith(tok.eos_token)  # generation stops where a turn ends
    assert tokenizer_from(models["qwen2"]).chat_template != tok.chat_template  # its own template is kept


@pytest.fixture
def workdir(root, tmp_path):
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(root / "data", tmp_path / "data")
    return tmp_path


def set_params(workdir, **model):
    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    raw["model"].update(model)
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))


def test_prepare_and_sft_reference_a_base_and_an_adapter(models, workdir):
    set_params(workdir, base=str(models["gpt2"]), sft=str(models["gpt2_adapter"]))
    for stage in ("prepare", "sft"):
        proc = run_stage(stage, workdir)
        assert proc.returncode == 0, proc.stderr
    base = json.loads((workdir / "models" / "base" / "manifest.json").read_text())
    assert base["path"] == str(models["gpt2"].resolve()) and base["model_type"] == "gpt2"
    assert sorted(p.name for p in (workdir / "models" / "base").iterdir()) == ["manifest.json"]  # not copied
    sft = model_folder(workdir / "models" / "sft")
    assert sft.kind == "adapter" and sft.path == str(models["gpt2_adapter"].resolve()) and sft.sha256
    assert sft.name == str(models["gpt2_adapter"]) and "adapter_base" in sft.details


def test_an_adapter_made_for_another_base_is_refused(models, workdir):
    set_params(workdir, base=str(models["gpt2"]), sft=str(models["qwen2_adapter"]))
    assert run_stage("prepare", workdir).returncode == 0
    proc = run_stage("sft", workdir)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: model.sft: the adapter in '{models['qwen2_adapter']}' (made for ")
    assert "does not fit model.base" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (workdir / "models" / "sft").exists()


def test_a_full_model_as_sft_and_a_missing_base(models, workdir):
    set_params(workdir, base=str(models["qwen2"]), sft=str(models["qwen2"]))
    assert run_stage("prepare", workdir).returncode == 0
    assert run_stage("sft", workdir).returncode == 0
    assert model_folder(workdir / "models" / "sft").kind == "full"
    set_params(workdir, base=str(workdir / "nowhere"))
    proc = run_stage("prepare", workdir)
    assert (proc.returncode, proc.stderr.strip()) == (2, f"error: model.base: '{workdir / 'nowhere'}' is not a "
                                                         "model folder (not found)")
