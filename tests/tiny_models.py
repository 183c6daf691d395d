"""Tiny models of real architectures, built and saved locally, as a user's hub download would be."""

from __future__ import annotations

from pathlib import Path

import torch

from stages.models import build_tokenizer, save_adapter
from stages.tasks import incident_triage

TEXTS = [incident_triage.pretrain_text(r["prompt"], r["response"])
         for r in incident_triage.generate(seed=3, n_sft=120, n_prompts=1, n_eval=1)["sft"]]


def save_tiny(arch: str, out: Path, chat_template: bool = True) -> Path:
    """A randomly initialised `arch` model (gpt2, qwen2) with a byte-level BPE tokenizer, saved to `out`."""
    from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config

    tok = build_tokenizer(TEXTS, 320)
    if not chat_template:  # like GPT-2's own tokenizer
        tok.chat_template = None
    ids = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = {
        "gpt2": lambda: GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=256, bos_token_id=tok.eos_token_id,
                                   **ids),
        "qwen2": lambda: Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                     **ids),
    }[arch]()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_adapter_for(base: Path, out: Path) -> Path:
    """A LoRA adapter on `base` (targets chosen as the pipeline chooses them), nudged away from zero."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from stages.models import lora_config

    model = AutoModelForCausalLM.from_pretrained(base)
    model = get_peft_model(model, lora_config(model, "auto", r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.01 * torch.randn_like(p))
    save_adapter(model, out)
    return out
