"""Tiny models of real architectures, built and saved locally as a user's hub download would be: causal LMs,
LoRA adapters on them, and a rubric-trained reward model (the reward-model judge's tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from dpo_pipeline.models.lora import lora_config, save_adapter
from dpo_pipeline.models.tiny import build_tokenizer
from dpo_pipeline.tasks import incident_triage, incident_triage_data


TEXTS = [incident_triage.pretrain_text(r["prompt"], r["response"])
         for r in incident_triage_data.generate(seed=3, n_sft=120, n_prompts=1, n_eval=1)["sft"]]


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


def save_adapter_for(base: Path, out: Path, nudge: float = 0.01) -> Path:
    """A LoRA adapter on `base` (targets chosen as the pipeline chooses them), nudged away from zero by random
    lora_B weights of scale `nudge`."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    model = get_peft_model(model, lora_config(model, "auto", r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(nudge * torch.randn_like(p))
    save_adapter(model, out)
    return out


def rubric_pairs(rows: list[dict], seed: int) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) labelled by the incident-triage rubric: each row's response and its corruptions
    (cut off mid-object, another severity), every two of them with different rubric scores a pair."""
    import random

    rng = random.Random(seed)
    out = []
    for row in rows:
        prompt, response = row["prompt"], row["response"]
        want = f'"{incident_triage.policy_severity(prompt)}"'
        candidates = [response, response[:rng.randrange(1, max(2, len(response) - 1))]]
        candidates += [response.replace(want, f'"{sev}"') for sev in rng.sample(incident_triage.SEVERITIES, 2)]
        scored = [(incident_triage.rubric_score(prompt, c)[0], c) for c in dict.fromkeys(candidates)]
        out += [(prompt, a, b) if sa > sb else (prompt, b, a)
                for i, (sa, a) in enumerate(scored) for sb, b in scored[i + 1:] if sa != sb]
    return out


def train_reward_model(out: Path, rows: list[dict], seed: int = 0, epochs: int = 3) -> Path:
    """A tiny Llama sequence-classification reward model (num_labels 1, the builtin tokenizer and chat template)
    trained on `rubric_pairs(rows)` with the Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected), and
    saved to `out`: a reward model in the shape of a hub download, in about ten seconds on one CPU thread."""
    import random

    from transformers import LlamaConfig, LlamaForSequenceClassification

    from dpo_pipeline.chat import assistant, user

    tok = build_tokenizer(TEXTS, 320)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512, num_labels=1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    pairs, rng = rubric_pairs(rows, seed), random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def rewards(texts: list[tuple[str, str]]) -> torch.Tensor:  # right padding: tok.pad_token is its own token
        chats = [tok.apply_chat_template(user(p) + assistant(r), tokenize=False) for p, r in texts]
        return model(**tok(chats, add_special_tokens=False, padding=True, return_tensors="pt")).logits[:, 0]

    for _ in range(epochs):
        rng.shuffle(pairs)
        for start in range(0, len(pairs), 32):
            batch = pairs[start:start + 32]
            both = rewards([(p, c) for p, c, _ in batch] + [(p, r) for p, _, r in batch])
            loss = -torch.nn.functional.logsigmoid(both[:len(batch)] - both[len(batch):]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
