"""Batched generation (what the sample and eval stages do) against one prompt at a time.

    dvc repro sft && python -m bench.sampling [--n 64] [--batch-size 64] [--max-new-tokens 64]

Loads the pipeline's SFT model (models/sft on models/base, as the sample stage does), decodes the first `--n`
sampling prompts greedily both ways, and prints generated tokens per second of each, their ratio, and how
many outputs are identical (greedy decoding with left padding should give the same answers; a float
difference in a padded batch can flip a near-tie token). The bar is a ratio >= 8.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.result import add_json_arg, write_result
from dpo_pipeline.config import load_params
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.models.generation import generate
from dpo_pipeline.models.loading import load_sft, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def timed(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int) -> tuple[list[dict], float]:
    start = time.perf_counter()
    out = generate(model, tokenizer, prompts, temperature=0, top_p=1.0, max_new_tokens=max_new_tokens,
                   batch_size=batch_size, seed=0, label=f"batch size {batch_size}")
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    add_json_arg(ap)
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    prompts = [r["prompt"] for r in read_jsonl(ROOT / params.task_files.prompts, required=("prompt",))][:args.n]
    tokenizer, model = load_tokenizer(params.paths), load_sft(params.paths).eval()
    timed(model, tokenizer, prompts[:4], 4, 8)  # warm-up: first-call allocations and kernels
    batched, t_batched = timed(model, tokenizer, prompts, args.batch_size, args.max_new_tokens)
    single, t_single = timed(model, tokenizer, prompts, 1, args.max_new_tokens)
    tokens = sum(r["tokens"] for r in batched), sum(r["tokens"] for r in single)
    same = sum(a["text"] == b["text"] for a, b in zip(batched, single))
    print(f"{args.n} prompts, greedy, up to {args.max_new_tokens} new tokens")
    print(f"batched (batch size {args.batch_size}): {tokens[0] / t_batched:8.1f} tokens/s ({t_batched:.2f} s)")
    print(f"one prompt at a time:       {tokens[1] / t_single:8.1f} tokens/s ({t_single:.2f} s)")
    print(f"ratio: {(tokens[0] / t_batched) / (tokens[1] / t_single):.1f}x; identical outputs: {same}/{args.n}")
    write_result(args.json, "sampling", {
        "prompts": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "batched_tokens_per_s": round(tokens[0] / t_batched, 1), "batched_seconds": round(t_batched, 2),
        "single_tokens_per_s": round(tokens[1] / t_single, 1), "single_seconds": round(t_single, 2),
        "ratio": round((tokens[0] / t_batched) / (tokens[1] / t_single), 2), "identical": same})


if __name__ == "__main__":
    main()
