"""KL(policy || reference) for a PEFT model whose reference is the same model with its adapter disabled, and
the callback that measures it during DPO training."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback

from dpo_pipeline.evaluation.stats import bootstrap_ci
from dpo_pipeline.models import parallel
from dpo_pipeline.models.generation import chat_prompts, decoding

BATCH_SIZE, BOOTSTRAP_SAMPLES = 64, 1000  # sequences a forward pass; resamples for the CI (eval passes its own)


@torch.no_grad()
def sequence_kls(model, tokenizer: PreTrainedTokenizerBase, prompts: list, *, max_new_tokens: int, seed: int,
                 batch_size: int = BATCH_SIZE, reference=None) -> list[tuple[float, float, int]]:
    """Per prompt, one response y ~ policy: (KL summed over y's positions, the k1 log-ratio sum, y's tokens).
    Each prompt's draw is seeded by the prompt, so a share of the prompts (another process's, under
    `parallel.map_batches`) gets the same values as in the whole list."""
    was_training = model.training
    model.eval()
    out = [row for start in range(0, len(prompts), batch_size)
           for row in _sequence_kl(model, tokenizer, prompts[start:start + batch_size], max_new_tokens, seed,
                                   reference)]
    model.train(was_training)
    return out


def kl_summary(values: list[tuple[float, float, int]], bootstrap_samples: int, seed: int,
               estimator: str = "exact") -> dict:
    """KL(policy || reference) from `sequence_kls`' per-sequence values: the mean over sequences ("kl"), over
    tokens ("kl_per_token"), and a 95% bootstrap CI over the sequences. `exact` (what every report uses) sums
    the exact per-position KL over the vocabulary along each sampled sequence: unbiased for the sequence KL
    and never negative. `k1` (kept to compare, bench/kl.py) sums the sampled tokens' log-ratios: unbiased too,
    but noisier, and below zero whenever the true KL is small."""
    per_sequence = [exact if estimator == "exact" else k1 for exact, k1, _ in values]
    total, tokens = float(np.sum(per_sequence)), sum(n for *_, n in values)
    low, high = bootstrap_ci(per_sequence, bootstrap_samples, seed)
    return {"kl": total / len(values), "kl_per_token": total / max(tokens, 1), "kl_ci_low": low, "kl_ci_high": high}


# Logits kept at once while scoring: the policy's and the reference's log-probs over the whole vocabulary,
# a slice of the rows at a time (about 0.5 GB each at this many floats), so a 150k vocabulary stays bounded.
CHUNK_FLOATS = 2 ** 27


@torch.no_grad()
def _sequence_kl(model, tokenizer, prompts: list, max_new_tokens: int, seed: int,
                 reference=None) -> list[tuple[float, float, int]]:
    """Each sampled response's exact KL summed over its positions, its k1 sum, and its number of tokens."""
    texts = chat_prompts(tokenizer, prompts)
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=False).to(model.device)
    # y ~ policy exactly: temperature 1 over the whole vocabulary (generate's default top_k of 50 would bias
    # the estimate), each prompt's draws from its own stream (no global RNG touched: training's are left alone)
    seqs = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id,
                          **decoding(prompts, temperature=1.0, top_k=0, top_p=1.0, seed=seed))
    prompt_len = enc["input_ids"].shape[1]
    gen = seqs[:, prompt_len:]
    # A response's tokens run up to and including its first end-of-sequence token; the rest is padding.
    is_eos = (gen == tokenizer.eos_token_id).long()
    response = (is_eos.cumsum(1) - is_eos) == 0
    mask = torch.cat([enc["attention_mask"], response.long()], dim=1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # left padding: positions count real tokens only

    def logprobs(m, rows: slice) -> torch.Tensor:
        logits = m(input_ids=seqs[rows], attention_mask=mask[rows], position_ids=positions[rows]).logits
        return torch.log_softmax(logits[:, prompt_len - 1:-1].float(), -1)

    step = max(1, CHUNK_FLOATS // (seqs.shape[1] * model.config.vocab_size))
    exact, k1 = [], []
    for start in range(0, len(seqs), step):
        rows = slice(start, start + step)
        policy = logprobs(model, rows)
        if reference is None:
            with model.disable_adapter():
                ref = logprobs(model, rows)
        else:
            ref = logprobs(reference, rows)
        ratio = policy - ref
        # KL(pi(.|y<t) || ref(.|y<t)) at each position: >= 0 term by term; the clamp drops rounding's -1e-9s
        exact.append((policy.exp() * ratio).sum(-1).clamp(min=0))
        k1.append(ratio.gather(-1, gen[rows].unsqueeze(-1)).squeeze(-1))
    exact, k1 = torch.cat(exact) * response, torch.cat(k1) * response
    return list(zip(exact.sum(1).tolist(), k1.sum(1).tolist(), response.sum(1).tolist()))


class KLMonitor(TrainerCallback):
    """Every `every` steps: KL(policy || SFT reference) on held-out prompts, logged to `live` beside the
    rewards. Under torchrun every process has it and measures an equal share of the prompts (the others would
    otherwise wait for process 0); `live` None: a process that measures and logs nothing."""

    def __init__(self, tokenizer, prompts: list, *, every: int, max_new_tokens: int, seed: int, live=None,
                 reference=None):
        self.tokenizer, self.prompts, self.every, self.reference = tokenizer, prompts, every, reference
        self.max_new_tokens, self.seed, self.live = max_new_tokens, seed, live
        self.history: list[dict] = []

    def start(self, model) -> None:
        """Step 0. Against the disabled adapter, without sampling: a fresh LoRA adapter starts with B = 0, so
        the policy IS the reference and the KL is exactly 0 (tested; measured, it was 0.0 to the last bit).
        Against a separate reference model (a later round against SFT), measured."""
        if self.reference is not None:
            return self.measure(model, 0)
        self.record(0, {"kl": 0.0, "kl_per_token": 0.0, "kl_ci_low": 0.0, "kl_ci_high": 0.0})

    def measure(self, model, step: int) -> None:
        size = parallel.world()[1]  # one process: the usual batches; N: one batch each
        batch = -(-len(self.prompts) // size) if size > 1 else BATCH_SIZE
        values = parallel.map_batches(partial(sequence_kls, model, self.tokenizer, max_new_tokens=self.max_new_tokens,
                                              seed=self.seed, batch_size=batch, reference=self.reference),
                                      self.prompts, batch)
        self.record(step, kl_summary(values, BOOTSTRAP_SAMPLES, self.seed))

    def record(self, step: int, kl: dict) -> None:
        self.history.append({"step": step, **kl})
        if self.live is None:
            return
        self.live.step = step
        self.live.log_metric("kl", kl["kl"])
        # The band around the curve: one sampled sequence a prompt makes single readings noisy.
        self.live.log_metric("kl_ci_low", kl["kl_ci_low"])
        self.live.log_metric("kl_ci_high", kl["kl_ci_high"])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(model, state.global_step)

    def summary(self) -> dict:
        """The last and the highest reading, each with its 95% CI (the diagnostics read these)."""
        final, peak = self.history[-1], max(self.history, key=lambda h: h["kl"])
        ci = lambda h: [round(h["kl_ci_low"], 4), round(h["kl_ci_high"], 4)]  # noqa: E731
        return {"final": round(final["kl"], 4), "max": round(peak["kl"], 4),
                "final_per_token": round(final["kl_per_token"], 5), "prompts": len(self.prompts),
                "final_ci": ci(final), "max_ci": ci(peak), "max_step": peak["step"]}
