"""Batched, seeded generation from a chat model, and which prompts fit its context."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dpo_pipeline.chat import user
from dpo_pipeline.progress import progress as progress_bar


def chat_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list) -> list[str]:
    """Prompts (a user message's text, or a conversation as a message list) rendered for generation."""
    return [tokenizer.apply_chat_template(p if isinstance(p, list) else user(p), tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def fitting(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list, max_new_tokens: int) -> list[int]:
    """Indices of the prompts that leave room for `max_new_tokens` in the model's context; a longer prompt
    would crash generation (positions past the context) or be cut, so stages drop it and say how many."""
    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    lengths = [len(ids) for ids in tokenizer(chat_prompts(tokenizer, prompts), add_special_tokens=False)["input_ids"]]
    return [i for i, n in enumerate(lengths) if n + max_new_tokens <= context]


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list, *,
             temperature: float, top_p: float, max_new_tokens: int, batch_size: int, seed: int,
             label: str = "generating") -> list[dict]:
    """One response per prompt: {"text", "tokens"}. Batched with left padding; each batch reseeds from
    `seed`, so the same prompts and params give the same responses whatever ran before."""
    tokenizer.padding_side = "left"
    out: list[dict] = []
    with progress_bar("prompts") as progress:
        bar = progress.add_task(label, total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            texts = chat_prompts(tokenizer, batch)
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            torch.manual_seed(seed + start)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 \
                else {"do_sample": False}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                ids = row.tolist()
                n = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
                out.append({"text": tokenizer.decode(ids[:n], skip_special_tokens=True).strip(), "tokens": n})
            progress.advance(bar, len(batch))
    return out
