"""The memory plan (dpo_pipeline/models/memory.py): the estimate's shape as pure units (what follows from the
formula, not from this machine), `python -m tools.estimate`'s memory plan and its `--json`, and the train and
sft stages' one-line refusal before any weight loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import LlamaConfig

from dpo_pipeline.config import load_params
from dpo_pipeline.errors import UserError
from dpo_pipeline.models import memory
from dpo_pipeline.models.memory import GIB, Device, Lengths
from tests.support.models import save_tiny
from tests.support.stages import run_stage

ROOT = Path(__file__).resolve().parents[1]
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False)  # Llama-3.1-8B
PROMPTS = {"sample": 200, "eval": 200, "train": 200}


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def llama_8b():
    return memory.shape_from_config(LlamaConfig(**LLAMA_8B))


def train_gib(params, shape, device="cuda", seq=1024, **settings) -> float:
    keys = {f"train.{k}" if k != "quantization" else "model.quantization": v for k, v in settings.items()}
    changed = memory.with_settings(params, {"model.max_length": seq, **keys})
    return memory.estimate(changed, "train", device, shape, Lengths(PROMPTS, pair=seq)).peak / GIB


# --- the formula -------------------------------------------------------------------------------------------

def test_llama_8b_shape_counts_its_published_parameters(llama_8b):
    assert llama_8b.params == pytest.approx(8.03e9, rel=0.001)
    assert memory.SMOLLM2_135M.params == pytest.approx(134.5e6, rel=0.001)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_more_pairs_or_longer_pairs_need_more_and_checkpointing_and_nf4_on_a_gpu_need_less(params, llama_8b, device):
    by_micro = [train_gib(params, llama_8b, device, micro_batch_size=m) for m in (1, 2, 4, 8, 16)]
    assert by_micro == sorted(by_micro) and len(set(by_micro)) == 5
    by_length = [train_gib(params, llama_8b, device, seq=s, micro_batch_size=2) for s in (128, 256, 512, 1024)]
    assert by_length == sorted(by_length) and len(set(by_length)) == 4
    plain = train_gib(params, llama_8b, device, micro_batch_size=4)
    assert train_gib(params, llama_8b, device, micro_batch_size=4, activation_checkpointing=True) < plain
    nf4 = train_gib(params, llama_8b, device, micro_batch_size=4, quantization="nf4")
    # on a CPU the full-precision file the 4-bit model came from stays mapped and resident: no saving there
    assert nf4 < plain if device == "cuda" else nf4 > plain


def test_llama_8b_at_32_sequences_of_1024_does_not_fit_an_80_gib_gpu_but_qlora_fits_24(params, llama_8b):
    # 16 pairs = 32 sequences of 1,024 tokens in one pass, no checkpointing: activations alone are far past 80 GiB
    assert train_gib(params, llama_8b) > 80
    gpu = Device("cuda", "a 24 GiB GPU", 24 * GIB)
    for micro in (1, 2):
        changed = memory.with_settings(params, {"model.max_length": 1024, "train.micro_batch_size": micro,
                                                "train.activation_checkpointing": True, "model.quantization": "nf4"})
        est = memory.estimate(changed, "train", "cuda", llama_8b, Lengths(PROMPTS, pair=1024))
        assert memory.needed(est, gpu) < 24 * GIB and memory.fits(est, gpu)


def test_nf4_keeps_about_half_a_byte_a_linear_parameter(llama_8b):
    nf4, bf16 = memory.weight_bytes(llama_8b, "cuda", nf4=True), memory.weight_bytes(llama_8b, "cuda")
    embeddings = 2 * llama_8b.vocab * llama_8b.hidden * 4  # untied, upcast to float32 for training
    assert nf4 - embeddings == pytest.approx(llama_8b.linear_params * 0.516, rel=0.01)
    assert bf16 == 2 * llama_8b.params


def test_every_suggestion_fits_and_the_cheapest_comes_first(params, llama_8b):
    gpu = Device("cuda", "a 24 GiB GPU", 24 * GIB)
    wide = memory.with_settings(params, {"model.max_length": 1024})
    plan = memory.plan_stage(wide, "train", gpu, llama_8b, Lengths(PROMPTS, pair=1024))
    assert plan.fits is False and plan.suggestions
    for settings, est in plan.suggestions:
        again = memory.estimate(memory.with_settings(wide, settings), "train", "cuda", llama_8b,
                                Lengths(PROMPTS, pair=1024))
        assert again.peak == est.peak and memory.fits(again, gpu)
    # checkpointing (same training, slower) before a 4-bit base (other numbers) before a shorter max_length
    kinds = [("model.max_length" in s, "model.quantization" in s) for s, _ in plan.suggestions]
    assert kinds == sorted(kinds)


def test_the_constants_still_match_trl_and_the_kl_pass():
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    from dpo_pipeline.models import kl

    assert (memory.LM_TOKEN_CHUNK, memory.LM_VOCAB_CHUNK) == (TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE)
    assert (memory.KL_CHUNK_FLOATS, memory.KL_BATCH) == (kl.CHUNK_FLOATS, kl.BATCH_SIZE)


def test_a_bad_memory_override_is_one_line(monkeypatch):
    monkeypatch.setenv(memory.MEMORY_ENV, "lots")
    with pytest.raises(UserError, match=memory.MEMORY_ENV):
        memory.this_device(gpu_gib=24)
    monkeypatch.setenv(memory.MEMORY_ENV, "12")
    assert memory.this_device(gpu_gib=24).capacity == 12 * GIB


def test_the_check_returns_freed_memory_where_memory_is_tight_or_checkpointing_is_on(params, monkeypatch):
    """glibc's default is faster but keeps more than the estimate assumes; where that could matter the check
    makes freed memory go back at once (models/memory.return_freed_memory)."""
    calls = []
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(memory, "return_freed_memory", lambda: calls.append(1))
    need = memory.estimate(params, "train", "cpu", memory.model_shape(params), memory.lengths(params)).total
    for capacity, settings, returned in ((100 * GIB, {}, False), (1.5 * need, {}, True),
                                         (100 * GIB, {"train.activation_checkpointing": True}, True)):
        calls.clear()
        monkeypatch.setattr(memory, "this_device", lambda **_: Device("cpu", "cpu", capacity))
        memory.check_fits(memory.with_settings(params, settings), "train")
        assert bool(calls) is returned, (capacity, settings)
    monkeypatch.setattr(memory, "this_device", lambda **_: Device("cpu", "cpu", 0.9 * need))
    with pytest.raises(UserError, match=r"^train: needs ~"):
        memory.check_fits(params, "train")


# --- tools.estimate ------------------------------------------------------------------------------------------

def estimate_tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != memory.MEMORY_ENV}
    return subprocess.run([sys.executable, "-m", "tools.estimate", *args], cwd=cwd, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_estimate_json_has_every_model_stage_and_the_judge_costs():
    proc = estimate_tool("--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(memory.STAGES) <= set(out["memory"])
    for stage in memory.STAGES:
        entry = out["memory"][stage]
        assert isinstance(entry["peak_gib"], float) and entry["peak_gib"] > 0
        assert entry["device"] in ("cpu", "cuda") and entry["fits"] in (True, False, None)
    assert out["judge"]["jobs"] and "total_usd" in out["judge"]


def workspace(tmp: Path, base: Path, **params) -> Path:
    """A working directory with the task's data and params.yaml pointing model.base at `base`."""
    shutil.copytree(ROOT / "data", tmp / "data")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["base"] = str(base)
    for key, value in params.items():
        section, name = key.split(".")
        raw[section][name] = value
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp


@pytest.fixture(scope="module")
def config_8b(tmp_path_factory) -> Path:
    """Llama-3.1-8B's config.json and a tiny tokenizer: all a plan needs, no weights."""
    folder = save_tiny("qwen2", tmp_path_factory.mktemp("tok") / "tiny")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                    **LLAMA_8B}))
    return folder


def test_estimate_on_a_24_gib_gpu_says_what_does_not_fit_and_what_would(tmp_path, config_8b):
    cwd = workspace(tmp_path, config_8b, **{"model.max_length": 1024})
    out = json.loads((proc := estimate_tool("--gpu-gib", "24", "--json", cwd=cwd)).stdout or "{}")
    assert proc.returncode == 0, proc.stderr
    train = out["memory"]["train"]
    assert train["device"] == "cuda" and train["fits"] is False and train["suggestions"]
    assert all(s["needs_gib"] <= 24 and s["flags"].startswith("-S ") for s in train["suggestions"])
    assert out["device"]["capacity_gib"] == 24
    assert out["tokens"]["longer_than_max_length"] == {"pairs": [0, 0], "sft_rows": [0, 4000]}
    text = estimate_tool("--gpu-gib", "24", cwd=cwd).stdout
    assert "-S train." in text and "a 24 GiB GPU" in text and "of 4,000 SFT rows" in text


def test_a_bad_gpu_size_is_one_line_and_exit_2(tmp_path):
    proc = estimate_tool("--gpu-gib", "0", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "GiB > 0" in proc.stderr


# --- the stages' check, before weights load ------------------------------------------------------------------

def pairs(n: int) -> list[dict]:
    return [{"id": str(i), "prompt": [{"role": "user", "content": f"Incident {i}: the API is down."}],
             "chosen": [{"role": "assistant", "content": "SEV-1, page the on-call."}],
             "rejected": [{"role": "assistant", "content": "SEV-4, wait."}]} for i in range(n)]


@pytest.mark.parametrize("stage", ["train", "sft"])
def test_a_stage_that_cannot_fit_stops_in_one_line_before_loading_weights(tmp_path, config_8b, monkeypatch, stage):
    """models/base holds a config and a tokenizer but no weights: a stage that went on to load them would fail
    with a traceback, so exit 2 with the plan's line shows the check came first. The budget is forced with
    DPO_PIPELINE_MEMORY_GIB, between what the stage needs as set and with one pair (row) a pass."""
    cwd = workspace(tmp_path, config_8b)
    shutil.copytree(config_8b, cwd / "models" / "base")
    (cwd / "artifacts").mkdir()
    (cwd / "artifacts" / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs(64)))
    shutil.copy(cwd / "data" / "incident_triage" / "sft.jsonl", cwd / "artifacts" / "sft_data.jsonl")
    from dpo_pipeline.models.loading import tokenizer_from

    here = load_params(cwd / "params.yaml")
    monkeypatch.chdir(cwd)
    lens = memory.lengths(here, tokenizer_from(cwd / "models" / "base"))
    shape = memory.model_shape(here)
    full = memory.estimate(here, stage, "cpu", shape, lens).total
    one = memory.estimate(memory.with_settings(here, {f"{stage}.micro_batch_size": 1}), stage, "cpu", shape, lens).total
    monkeypatch.setenv(memory.MEMORY_ENV, f"{(full + one) / 2 / GIB:.3f}")
    proc = run_stage(stage, cwd)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {stage}: needs ~") and f"-S {stage}.micro_batch_size=" in proc.stderr
    assert not (cwd / "models" / "dpo").exists() and not (cwd / "models" / "sft").exists()
    assert not (cwd / "metrics").exists() and not (cwd / "dvclive").exists()
