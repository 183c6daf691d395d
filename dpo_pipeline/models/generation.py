"""Batched generation from a chat model, seeded prompt by prompt, and which prompts fit its context.

Each prompt draws its sampling noise from its own seed, from (seed, prompt): on a CPU from a generator of its
own, on an accelerator as a counter-based function of (seed, step, token) computed for the whole batch at once
on the device. Sampling is done by the Gumbel-max trick: noise is added to the tempered, truncated
log-probabilities and the decoder takes the argmax, which is an exact draw from that distribution. So a
prompt's response does not depend on which other prompts share its batch, on the batch size or on the number
of processes (tested byte for byte)."""

from __future__ import annotations

import hashlib
import json

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from dpo_pipeline.chat import user
from dpo_pipeline.progress import progress as progress_bar


def chat_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list) -> list[str]:
    """Prompts (a user message's text, or a conversation as a message list) rendered for generation."""
    return [tokenizer.apply_chat_template(p if isinstance(p, list) else user(p), tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def fitting(config, tokenizer: PreTrainedTokenizerBase, prompts: list, max_new_tokens: int) -> list[int]:
    """Indices of the prompts that leave room for `max_new_tokens` in the context of the model `config`
    describes; a longer prompt would crash generation (positions past the context) or be cut, so stages drop
    it and say how many."""
    context = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    lengths = [len(ids) for ids in tokenizer(chat_prompts(tokenizer, prompts), add_special_tokens=False)["input_ids"]]
    return [i for i, n in enumerate(lengths) if n + max_new_tokens <= context]


def prompt_seed(seed: int, prompt) -> int:
    """A 63-bit seed of the prompt's own: the same for the same (seed, prompt) on every machine and run."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    return int.from_bytes(hashlib.sha256(f"{seed}\0{text}".encode()).digest()[:8], "little") & (2**63 - 1)


M32 = 0xFFFFFFFF


def mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (hash-prospector's two-multiply form) on int64 tensors holding values in
    [0, 2**32): multipliers below 2**31 keep every product under 2**63, so nothing overflows on any device.
    In place where it can be: on a [batch, vocab] tensor each step is one pass over memory."""
    h ^= h >> 16
    h *= 0x7FEB352D
    h &= M32
    h ^= h >> 15
    h *= 0x31848BAB
    h &= M32
    h ^= h >> 16
    return h


def gumbel(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [rows, vocab] as a pure function of (row key, step, token id): counter-based, so the
    whole batch is one pass of integer ops on the device `keys` is on, a row's noise never depends on the rest
    of its batch, and a CPU and a GPU draw the same noise. Uniforms have 23 bits and lie strictly in (0, 1)."""
    row = mix32((keys * 0x2C1B3C6D + (step + 1) * 0x297A2D39) & M32)  # a fresh key per row and step
    h = mix32((torch.arange(vocab, device=keys.device) * 0x9E3779B) & M32 ^ row[:, None])
    u = (h >> 9).to(torch.float32).add_(0.5).mul_(2.0 ** -23)
    return u.log_().neg_().log_().neg_()


class PromptNoise(LogitsProcessor):
    """Gumbel noise for each row from that row's prompt seed: the argmax of scores + noise is a sample from
    softmax(scores). Tokens the warpers removed stay at -inf. On a CPU each row draws from a torch generator of
    its own (a vocabulary of uniforms a step: 1.5-2x faster there than the counter-based noise, bench/noise.py);
    on an accelerator the counter-based `gumbel` is one pass for the batch on the device, with no per-row
    launches and no copy from the CPU. Two samplers, each exact: their draws differ, as floats across devices
    already make outputs differ."""

    def __init__(self, seeds: list[int]):
        self.seeds = seeds
        self.generators = None
        self.keys = None
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.device.type == "cpu":
            if self.generators is None:
                self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
            u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
            u = u.clamp(torch.finfo(u.dtype).tiny, 1 - torch.finfo(u.dtype).eps)
            return scores.float() - torch.log(-torch.log(u))
        if self.keys is None:  # 63-bit prompt seeds folded to 32-bit keys, on the scores' device
            seeds = torch.tensor(self.seeds, dtype=torch.int64, device=scores.device)
            self.keys = mix32(seeds & M32) ^ mix32(seeds >> 32)
        # The step counts generated tokens, not positions: left padding differs with the batch's longest prompt.
        self.start = input_ids.shape[1] if self.start is None else self.start
        return scores.float() + gumbel(self.keys, input_ids.shape[1] - self.start, scores.shape[-1])


def decoding(prompts: list, *, temperature: float, top_k: int, top_p: float, seed: int) -> dict:
    """`model.generate` arguments: greedy at temperature 0, else a per-prompt seeded sample at `temperature`
    from the `top_k` most likely tokens (0: all) within `top_p` of the probability mass."""
    if temperature == 0:
        return {"do_sample": False}
    warpers = [TemperatureLogitsWarper(temperature)]
    warpers += [TopKLogitsWarper(top_k)] if top_k > 0 else []
    warpers += [TopPLogitsWarper(top_p)] if top_p < 1 else []
    noise = PromptNoise([prompt_seed(seed, p) for p in prompts])
    # do_sample=False: generate's own warpers and global RNG stay out; the argmax of the noisy scores samples
    return {"do_sample": False, "logits_processor": LogitsProcessorList([*warpers, noise])}


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list, *,
             temperature: float, top_p: float, max_new_tokens: int, batch_size: int, seed: int, top_k: int = 0,
             label: str = "generating") -> list[dict]:
    """One response per prompt: {"text", "tokens"}, batched with left padding, each prompt seeded by itself."""
    out: list[dict] = []
    with progress_bar("prompts") as progress:
        bar = progress.add_task(label, total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            enc = tokenizer(chat_prompts(tokenizer, batch), return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=False).to(model.device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id,
                                 **decoding(batch, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed))
            for row in gen[:, enc["input_ids"].shape[1]:]:
                ids = row.tolist()
                n = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
                out.append({"text": tokenizer.decode(ids[:n], skip_special_tokens=True).strip(), "tokens": n})
            progress.advance(bar, len(batch))
    return out
