"""LoRA: which modules an adapter targets, by architecture, and saving adapters byte-reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel

from dpo_pipeline.errors import UserError

# Every attention and MLP projection, by `config.model_type`: what "all-linear" means for these
# architectures, written out so a user sees (and can trim) the list. Others get PEFT's "all-linear".
LORA_TARGETS = {
    **dict.fromkeys(("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"),
                    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def lora_config(model: PreTrainedModel, targets: str | list[str], r: int, alpha: float, dropout: float):
    """A LoRA config for `model`: targets "auto" (by architecture) or the given module names, checked."""
    from peft import LoraConfig

    model_type = model.config.model_type
    modules = LORA_TARGETS.get(model_type, "all-linear") if targets == "auto" else targets
    if isinstance(modules, list):
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        if missing := sorted(set(modules) - names):
            raise UserError(f"model.lora_target_modules: no module named {', '.join(missing)} in this "
                            f"{model_type} model")
    # GPT-2 keeps its projections as Conv1D with transposed weights; PEFT needs to be told.
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules,
                      fan_in_fan_out=model_type == "gpt2", task_type="CAUSAL_LM")


def save_adapter(model: PreTrainedModel, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    # PEFT keeps target_modules as a set, so their order in adapter_config.json follows Python's per-process
    # string hashing. Sorted, identical params give byte-identical adapters (and DVC hashes).
    path = Path(out_dir) / "adapter_config.json"
    cfg = json.loads(path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
