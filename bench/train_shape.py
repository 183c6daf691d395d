"""DPO training speed and memory on a model of a real shape, randomly initialised (nothing is downloaded).

    python -m bench.train_shape                      # Qwen2-0.5B's shape; meant for a GPU
    python -m bench.train_shape --shape tiny --steps 4 --pairs 32   # a smoke run on CPU
    python -m bench.train_shape --model models/base  # a real model: the pipeline's base folder (SmolLM2-135M)

Builds the architecture from the shape's config values (copied from Qwen2-0.5B's config.json: 24 layers,
hidden 896, 14 heads / 2 KV heads, vocabulary 151,936, tied embeddings) with random weights, a byte-level
tokenizer trained on the incident-triage texts (its ids are a subset of the model's vocabulary: speed and
memory depend on the model's shape, not on which ids come in), and preference pairs of about `--tokens`
tokens each (task prompts with responses repeated up to that length). Then TRL's DPOTrainer with a LoRA on
the architecture's targets, exactly as the train stage sets it up (device, bf16 where supported, the
adapter-disabled model as reference), twice: per-step reference and `precompute_ref_log_probs`.

With `--model FOLDER` the model and its tokenizer are loaded from that folder instead (real weights, real
vocabulary; pairs rendered with its chat template), e.g. the folder `prepare` converts builtin:smollm2-135m
into.

Prints, for each: seconds per step after `--warmup` steps, tokens/s (prompt+chosen and prompt+rejected,
unpadded), and peak memory (GPU: torch.cuda.max_memory_allocated, reset between the two; CPU: the
process's peak RSS so far, so the second row includes the first), and the ratio of the two. `--json PATH`
also writes them as JSON.
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, TrainerCallback

from bench.result import add_json_arg, write_result
from dpo_pipeline.models.device import device, use_bf16
from dpo_pipeline.models.loading import tokenizer_from
from dpo_pipeline.models.lora import lora_config
from dpo_pipeline.models.tiny import build_tokenizer
from dpo_pipeline.models.training import common_args
from dpo_pipeline.tasks import incident_triage, incident_triage_data

SHAPES = {
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, max_position_embeddings=2048, tie_word_embeddings=True),
}


def pairs(tok, n: int, tokens: int) -> list[dict]:
    rows = incident_triage_data.generate(seed=0, n_sft=2 * n, n_prompts=1, n_eval=1)["sft"]
    out = []
    for i in range(n):
        prompt = tok.apply_chat_template([{"role": "user", "content": rows[i]["prompt"]}], tokenize=False,
                                         add_generation_prompt=True)
        budget = max(tokens - len(tok(prompt)["input_ids"]), 8)

        def fill(text: str) -> str:  # repeat the response up to the budget
            ids = tok(text)["input_ids"]
            return tok.decode((ids * (budget // max(len(ids), 1) + 1))[:budget])
        out.append({"prompt": prompt, "chosen": fill(rows[i]["response"]), "rejected": fill(rows[n + i]["response"])})
    return out


class Clock(TrainerCallback):
    """Starts timing when step `warmup` ends, so compilation, allocation and first-batch costs are left out."""

    def __init__(self, warmup: int):
        self.warmup, self.start = warmup, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()


def load(config, args):
    """A random model of the shape, or the real model in --model."""
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if use_bf16() else torch.float32)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if use_bf16() else torch.float32)


def run(config, tok, data, args, precompute: bool) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    model = load(config, args).to(device())
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    clock = Clock(args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DPOConfig(max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch_size,
                        learning_rate=5e-5, beta=0.1, max_length=args.tokens + 64, logging_steps=10**6,
                        precompute_ref_log_probs=precompute,
                        **{**common_args(tmp, 0), "activation_checkpointing": args.gradient_checkpointing})
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(data), processing_class=tok,
                             peft_config=lora_config(model, "auto", r=16, alpha=32, dropout=0.0),
                             callbacks=[clock])
        trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - clock.start) / args.steps
    per_pair = sum(2 * len(tok(d["prompt"] + d["chosen"])["input_ids"]) for d in data) / len(data)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return {"seconds_per_step": round(seconds, 4), "tokens_per_s": round(per_pair * args.batch_size / seconds, 1),
            "peak_memory_mib": round(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="qwen2-0.5b")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per prompt+response")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--model", type=Path, help="a model folder to load instead of a random shape")
    add_json_arg(parser)
    args = parser.parse_args()
    if args.pairs < args.batch_size * (args.warmup + args.steps):
        parser.error("--pairs must cover (warmup + steps) batches: one epoch, no pair seen twice")

    texts = [incident_triage.pretrain_text(r["prompt"], r["response"])
             for r in incident_triage_data.generate(seed=0, n_sft=300, n_prompts=1, n_eval=1)["sft"]]
    if args.model:
        tok = tokenizer_from(args.model)
        config = AutoConfig.from_pretrained(args.model)
        args.shape = str(args.model)
    else:
        tok = build_tokenizer(texts, 1024)
        config = Qwen2Config(**SHAPES[args.shape], eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             bos_token_id=None)
    data = pairs(tok, args.pairs, args.tokens)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    results = {name: run(config, tok, data, args, precompute) for name, precompute in
               (("per-step reference", False), ("precompute_ref_log_probs", True))}
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    print(f"\n{args.shape} ({n_params / 1e6:.1f}M parameters), "
          f"batch {args.batch_size} x ~{args.tokens} tokens, {'bf16' if use_bf16() else 'float32'}, on {where}")
    print(f"{'run':28} {'s/step':>8} {'tokens/s':>10} {'peak MiB':>9}")
    for name, r in results.items():
        print(f"{name:28} {r['seconds_per_step']:8.3f} {r['tokens_per_s']:10.1f} {r['peak_memory_mib']:9d}")
    ratio = results["precompute_ref_log_probs"]["tokens_per_s"] / results["per-step reference"]["tokens_per_s"]
    print(f"precompute / per-step tokens/s: {ratio:.2f}x")
    write_result(args.json, "train_shape", {
        "shape": args.shape, "parameters_m": round(n_params / 1e6, 1), "device": where,
        "dtype": "bf16" if use_bf16() else "float32", "args": {k: str(v) for k, v in vars(args).items()},
        "runs": results, "ratio": round(ratio, 3)})


if __name__ == "__main__":
    main()
