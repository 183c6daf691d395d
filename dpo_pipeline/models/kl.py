"""KL(policy || reference) for a PEFT model whose reference is the same model with its adapter disabled, and
the callback that measures it during DPO training."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback

from dpo_pipeline.models.generation import chat_prompts

@torch.no_grad()
def sequence_kl(model, tokenizer: PreTrainedTokenizerBase, prompts: list, *, max_new_tokens: int, seed: int,
                batch_size: int = 64) -> dict:
    """Monte-Carlo KL(policy || reference) for a PEFT model whose reference is the model with its adapter
    disabled: sample y ~ policy(.|x) at temperature 1, sum log policy(y_t) - log reference(y_t) over y's tokens,
    average over sequences ("kl"); "kl_per_token" divides by the tokens instead."""
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    total, tokens = 0.0, 0
    # Sampling reseeds torch; fork the RNG so a measurement during training leaves training's draws alone.
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        for start in range(0, len(prompts), batch_size):
            torch.manual_seed(seed + start)
            batch_total, batch_tokens = _log_ratio(model, tokenizer, prompts[start:start + batch_size],
                                                   max_new_tokens)
            total, tokens = total + batch_total, tokens + batch_tokens
    model.train(was_training)
    return {"kl": total / len(prompts), "kl_per_token": total / max(tokens, 1)}


@torch.no_grad()
def _log_ratio(model, tokenizer, prompts: list, max_new_tokens: int) -> tuple[float, int]:
    """Sum over sampled responses of log policy - log reference, and the number of response tokens."""
    texts = chat_prompts(tokenizer, prompts)
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    seqs = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    prompt_len = enc["input_ids"].shape[1]
    gen = seqs[:, prompt_len:]
    # A response's tokens run up to and including its first end-of-sequence token; the rest is padding.
    is_eos = (gen == tokenizer.eos_token_id).long()
    response = (is_eos.cumsum(1) - is_eos) == 0
    mask = torch.cat([enc["attention_mask"], response.long()], dim=1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # left padding: positions count real tokens only

    def logprobs() -> torch.Tensor:
        logits = model(input_ids=seqs, attention_mask=mask, position_ids=positions).logits[:, prompt_len - 1:-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, gen.unsqueeze(-1)).squeeze(-1)

    policy = logprobs()
    with model.disable_adapter():
        reference = logprobs()
    return ((policy - reference) * response).sum().item(), int(response.sum().item())


class KLMonitor(TrainerCallback):
    """Every `every` steps: KL(policy || SFT reference) on held-out prompts, logged to `live` beside the
    rewards. `live` None (a non-main process): never measures."""

    def __init__(self, tokenizer, prompts: list, *, every: int, max_new_tokens: int, seed: int, live=None):
        self.tokenizer, self.prompts, self.every = tokenizer, prompts, every
        self.max_new_tokens, self.seed, self.live = max_new_tokens, seed, live
        self.history: list[dict] = []

    def measure(self, model, step: int) -> None:
        kl = sequence_kl(model, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens, seed=self.seed)
        self.history.append({"step": step, **kl})
        self.live.step = step
        self.live.log_metric("kl", kl["kl"])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(model, state.global_step)

    def summary(self) -> dict:
        return {"final": round(self.history[-1]["kl"], 4), "max": round(max(h["kl"] for h in self.history), 4),
                "final_per_token": round(self.history[-1]["kl_per_token"], 5), "prompts": len(self.prompts)}
