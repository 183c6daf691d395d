"""What per-prompt sampling noise costs in a decode step, both samplers `models/generation.PromptNoise` has:
the counter-based noise (one pass for the batch on the model's device; what an accelerator uses) and per-row
CPU generators (one torch.rand a row a step, then a copy to the device; what a CPU uses), beside the decode
step itself, in one invocation.

    python -m bench.noise                          # batch 64, vocab 49,152 (SmolLM2) and 151,936 (Qwen2.5)
    python -m bench.noise --device cuda --json out.json

The decode step is one token of a randomly initialised SmolLM2-135M-shaped Llama (its body, with each
vocabulary as its embedding and head) at `--context` tokens of KV cache; its weights do not change its
speed. Prints milliseconds per step of each, and each noise's share of (decode step + noise).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.result import add_json_arg, write_result
from dpo_pipeline.models.generation import M32, gumbel, mix32, prompt_seed


class Counter:
    """The accelerator's noise: a function of (prompt seed, step, token), one pass on the scores' device."""

    def __init__(self, seeds: list[int]):
        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self.keys = None

    def __call__(self, input_ids, scores):
        if self.keys is None:
            seeds = self.seeds.to(scores.device)
            self.keys = mix32(seeds & M32) ^ mix32(seeds >> 32)
        return scores.float() + gumbel(self.keys, input_ids.shape[1], scores.shape[-1])


class RowGenerators:
    """The CPU's noise: a generator per row, a vocabulary of uniforms each a step, copied to the device."""

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        u = u.clamp(torch.finfo(u.dtype).tiny, 1 - torch.finfo(u.dtype).eps)
        return scores.float() - torch.log(-torch.log(u)).to(scores.device)


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of `repeats` calls, after one warm-up."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    fn(0)
    times = []
    for i in range(repeats):
        sync()
        start = time.perf_counter()
        fn(i + 1)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(vocab: int, batch: int, context: int, repeats: int, device: str) -> dict:
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    ids = torch.randint(0, vocab, (batch, context), device=device)
    with torch.no_grad():
        cache = DynamicCache(config=config)
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = ids[:, -1:]

        def step(_):
            model(input_ids=token, past_key_values=cache, use_cache=True)
            cache.crop(-1)  # drop the step's token: the same context length at every timed step

        t_step = timed(step, repeats, device)
    seeds = [prompt_seed(0, f"prompt {i}") for i in range(batch)]
    scores = torch.randn(batch, vocab, device=device)
    out = {"vocab": vocab, "batch": batch, "device": device, "decode_step_ms": round(t_step * 1000, 2)}
    for name, cls in (("counter_noise", Counter), ("row_generators", RowGenerators)):
        noise = cls(seeds)
        t = timed(lambda i: noise(torch.zeros(batch, context + i, dtype=torch.long), scores), repeats, device)
        out[f"{name}_ms"] = round(t * 1000, 2)
        out[f"{name}_share"] = round(t / (t + t_step), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=128, help="KV-cache tokens at the timed step")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_json_arg(ap)
    args = ap.parse_args()
    torch.manual_seed(0)
    results = []
    for vocab in args.vocab:
        r = measure(vocab, args.batch, args.context, args.repeats, args.device)
        results.append(r)
        print(f"vocab {vocab:>7,} batch {args.batch} on {args.device}: decode step {r['decode_step_ms']:8.2f} ms | "
              f"counter noise {r['counter_noise_ms']:7.2f} ms ({r['counter_noise_share']:.1%}) | "
              f"per-row generators {r['row_generators_ms']:7.2f} ms ({r['row_generators_share']:.1%}) | "
              f"ratio {r['row_generators_ms'] / r['counter_noise_ms']:.2f}x")
    runs = [{**r, "row_generators_over_counter": round(r["row_generators_ms"] / r["counter_noise_ms"], 2)}
            for r in results]
    write_result(args.json, "noise", {"context": args.context, "repeats": args.repeats, "runs": runs})


if __name__ == "__main__":
    main()
