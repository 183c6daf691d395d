"""Measured peak memory over the memory plan's estimate (dpo_pipeline/models/memory.py), case by case.

    python -m bench.memory                 # CPU: tiny, SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B shapes (~10 min)
    python -m bench.memory --quick         # CPU: tiny and SmolLM2-135M shapes only (~3 min)
    python -m bench.memory --gpu           # GPU: Llama-3.2-1B, -3B and Llama-3.1-8B shapes, bf16 and nf4
    python -m bench.memory --cases smollm2-135m:dpo:b2:s256:ckpt    # chosen cases:
                                           # SHAPE:KIND[:bN][:sN][:pN][:nN][:tN][:gN][:mN][:ckpt][:nf4][:ref][:glibc]

Each case is a fresh process (nothing carries over from the one before) that builds a model of a published
architecture's shape from its config values with random weights (nothing is downloaded) and a byte-level
tokenizer trained on the task's texts (its ids are a subset of the model's vocabulary: memory depends on the
shape, not on which ids come in), then runs one phase as the stages do:
- dpo: one optimizer step (`t` steps, each on new pairs; `g` micro batches a step) of TRL's DPOTrainer with a
  fresh LoRA on every projection, `b` pairs of exactly `s` tokens (one rejected response shorter, so the batch
  is padded as real ones are), the reference's log-probs precomputed (`:ref`: a reference pass every step
  instead), optionally with activation checkpointing (`:ckpt`) and the base in 4-bit NF4 (`:nf4`, loaded as the
  stage loads it: models/loading.load_4bit);
- gen: one generation batch of `b` prompts of about `p` words, `n` new tokens, sampled as the stages sample
  (models/generation.generate);
- kl: the KL pass (models/kl.sequence_kls) of `b` prompts on a LoRA model, as the train stage's monitor and
  eval run it;
- load: the model saved, then loaded as the stages load it (the load's own peak).
Measured: on a CPU the process's peak resident memory during the phase (/proc/self/status VmHWM, reset
before it), with freed memory returned at once as the plan assumes (models/memory.return_freed_memory, which
sft and train set where memory is tight; `:mN` with glibc's mmap threshold at N KiB instead of the library's;
`:glibc` measures glibc's default instead); on a GPU
torch.cuda.max_memory_allocated. Estimated: the plan's formula for that phase, with the prompt lengths the
case measured. Prints each case's ratio and their range; `--json PATH` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.result import add_json_arg, write_result
from dpo_pipeline.models import memory

ROOT = Path(__file__).resolve().parents[1]

# Published config.json values (hub: HuggingFaceTB/SmolLM2-135M-Instruct, Qwen/Qwen2.5-0.5B-Instruct,
# meta-llama/Llama-3.2-1B, -3B, Llama-3.1-8B); tiny is params.yaml's builtin:tiny.
SHAPES = {
    "tiny": ("llama", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=4, vocab_size=512, tie_word_embeddings=True)),
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                   tie_word_embeddings=True)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                   tie_word_embeddings=True)),
    "llama-3.2-1b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                                   tie_word_embeddings=True)),
    "llama-3.2-3b": ("llama", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                   num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                                   tie_word_embeddings=True)),
    "llama-3.1-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                                   tie_word_embeddings=False)),
}
# Sizes picked so the default run takes ~10 minutes on 2 CPU cores: small lengths for the larger shapes.
CPU_CASES = [
    "tiny:dpo:b4:s128", "tiny:dpo:b16:s192", "tiny:dpo:b16:s192:ckpt", "tiny:dpo:b8:s128:ref", "tiny:dpo:b4:s128:nf4",
    "tiny:gen:b100:p40:n64", "tiny:kl:b32:p40:n64",
    "smollm2-135m:dpo:b1:s128", "smollm2-135m:dpo:b2:s256", "smollm2-135m:dpo:b4:s256:ckpt",
    "smollm2-135m:dpo:b8:s192:ckpt", "smollm2-135m:dpo:b2:s128:ref", "smollm2-135m:dpo:b2:s112:t3:g4",
    "smollm2-135m:dpo:b1:s64:nf4",
    "smollm2-135m:dpo:b1:s64:ckpt:nf4", "smollm2-135m:gen:b16:p40:n24", "smollm2-135m:gen:b48:p20:n8",
    "smollm2-135m:kl:b16:p20:n16", "smollm2-135m:load",
    "smollm2-135m:load:nf4", "qwen2.5-0.5b:dpo:b1:s96", "qwen2.5-0.5b:dpo:b2:s128:ckpt", "qwen2.5-0.5b:gen:b8:p20:n8",
    "llama-3.2-1b:dpo:b1:s64", "llama-3.2-1b:dpo:b1:s128:ckpt", "llama-3.2-1b:gen:b4:p20:n8",
]
QUICK_CASES = ["tiny:dpo:b16:s192", "tiny:dpo:b16:s192:ckpt", "tiny:gen:b100:p40:n64", "smollm2-135m:dpo:b1:s128",
               "smollm2-135m:dpo:b2:s256", "smollm2-135m:dpo:b4:s256:ckpt", "smollm2-135m:dpo:b1:s64:nf4",
               "smollm2-135m:gen:b16:p40:n24", "smollm2-135m:kl:b16:p20:n16"]
GPU_CASES = [
    "llama-3.2-1b:dpo:b8:s512", "llama-3.2-1b:dpo:b8:s512:ckpt", "llama-3.2-1b:dpo:b8:s512:nf4",
    "llama-3.2-1b:gen:b64:p40:n64",
    "llama-3.2-3b:dpo:b4:s512", "llama-3.2-3b:dpo:b4:s1024:ckpt", "llama-3.2-3b:dpo:b4:s1024:ckpt:nf4",
    "llama-3.1-8b:dpo:b2:s512", "llama-3.1-8b:dpo:b4:s1024:ckpt", "llama-3.1-8b:dpo:b2:s1024:ckpt:nf4",
    "llama-3.1-8b:gen:b32:p40:n64",
]


def parse_case(text: str) -> dict:
    shape, kind, *flags = text.split(":")
    if shape not in SHAPES or kind not in ("dpo", "gen", "kl", "load"):
        raise ValueError(f"unknown shape or kind in {text!r}")
    case = {"name": text, "shape": shape, "kind": kind, "b": 1, "s": 64, "p": 20, "n": 8, "t": 1, "g": 1, "m": 0,
            "ckpt": False, "nf4": False, "precompute": True, "glibc": False}
    for f in flags:
        if f[0] in "bspntgm" and f[1:].isdigit():
            case[f[0]] = int(f[1:])
        elif f in ("ckpt", "nf4", "glibc"):
            case[f] = True
        elif f == "ref":
            case["precompute"] = False
        else:
            raise ValueError(f"unknown flag {f!r} in {text!r}")
    return case


# ---------------------------------------------------------------------------------------------------------
# One case, in its own process


def status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def peak() -> int:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return status("VmHWM")


def build(case: dict, tmp: Path):
    """The tokenizer and the model of the case's shape (random weights; nf4 and load: saved and loaded back as
    the stages load a model)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from dpo_pipeline.models.device import device, dtype
    from dpo_pipeline.models.tiny import build_tokenizer
    from dpo_pipeline.tasks import incident_triage, incident_triage_data

    texts = [incident_triage.pretrain_text(r["prompt"], r["response"])
             for r in incident_triage_data.generate(seed=0, n_sft=300, n_prompts=1, n_eval=1)["sft"]]
    tok = build_tokenizer(texts, 400)
    arch, values = SHAPES[case["shape"]]
    config = (LlamaConfig if arch == "llama" else Qwen2Config)(
        **values, max_position_embeddings=4096, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device()):  # initialised where it runs: an 8B model is not made on the host first
        model = AutoModelForCausalLM.from_config(config, dtype=dtype())
    if case["nf4"] or case["kind"] == "load":
        model.save_pretrained(tmp / "model")
        del model
        if case["kind"] == "load":
            return tok, texts, tmp / "model"  # loaded in the phase
        from dpo_pipeline.models.loading import load_4bit

        model = load_4bit(tmp / "model")
    return tok, texts, model


def run_case(case: dict) -> dict:
    """Build, reset the peak, run the phase, read the peak; with what the estimate needs to know."""
    import tempfile

    # freed memory returned at once, the estimate's assumption, as sft and train run where memory is tight;
    # `:glibc`: glibc's default, as the other stages run; `:mN`: another threshold, to weigh its speed
    if not case["glibc"]:
        memory.return_freed_memory(case["m"] * 1024 or memory.MMAP_THRESHOLD)
    import peft  # noqa: F401 - a stage's imports, so the baseline is a stage's
    import torch

    import dpo_pipeline.models.generation  # noqa: F401
    import dpo_pipeline.models.kl  # noqa: F401
    import dpo_pipeline.models.loading  # noqa: F401
    if case["kind"] == "dpo":  # a training stage's
        from trl import DPOTrainer  # noqa: F401
        try:
            import dvclive  # noqa: F401
        except ImportError:  # a GPU machine without it: its ~10 MB are not what is measured there
            pass

        import dpo_pipeline.models.dpo  # noqa: F401

    torch.manual_seed(0)
    baseline = status("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        tok, texts, model = build(case, Path(tmp))
        ready = status("VmRSS")
        reset_peak()
        start = time.perf_counter()
        extra = PHASES[case["kind"]](case, tok, texts, model)
        measured = peak()
    gpu = {"reserved": torch.cuda.max_memory_reserved()} if torch.cuda.is_available() else {}
    return {"measured": measured, "baseline": baseline, "ready": ready, "seconds": time.perf_counter() - start,
            "device": "cuda" if torch.cuda.is_available() else "cpu", **gpu, **extra}


def dpo_step(case: dict, tok, texts: list[str], model) -> dict:
    import random
    import tempfile

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from dpo_pipeline.models.lora import lora_config
    from dpo_pipeline.models.training import common_args

    rng, words = random.Random(0), " ".join(texts).split()
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731 - n words, more than n tokens
    b, s = case["b"], case["s"]
    rows = [{"prompt": text(max(2, s // 8)), "chosen": text(s), "rejected": text(s)}
            for _ in range(b * case["t"] * case["g"])]
    rows[0]["rejected"] = tok.decode(tok(rows[0]["prompt"] + rows[0]["rejected"])["input_ids"][:s - 8])[
        len(rows[0]["prompt"]):]  # shorter than s: the batch is padded, as a real one is
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(max_steps=case["t"], per_device_train_batch_size=b, gradient_accumulation_steps=case["g"],
                         learning_rate=1e-4, beta=0.1, max_length=s, logging_steps=10**6,
                         precompute_ref_log_probs=case["precompute"],
                         **common_args(tmp, 0, case["ckpt"]))
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=lora_config(model, "auto", r=16, alpha=32, dropout=0.0),
                             callbacks=[Ready()])
        trainer.train()
    return {"trainer": Ready.rss}


class Ready:
    """A trainer callback noting the resident memory when training begins (after the reference pass)."""

    rss = 0

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def on_train_begin(self, *args, **kwargs):
        Ready.rss = status("VmRSS")


def prompts_of(case: dict, tok, texts: list[str]) -> tuple[list[str], int]:
    import random

    from dpo_pipeline.models.generation import chat_prompts

    rng, words = random.Random(1), " ".join(texts).split()
    prompts = [" ".join(rng.choice(words) for _ in range(case["p"])) for _ in range(case["b"])]
    return prompts, max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in chat_prompts(tok, prompts))


def gen_batch(case: dict, tok, texts: list[str], model) -> dict:
    from dpo_pipeline.models.generation import generate

    prompts, longest = prompts_of(case, tok, texts)
    generate(model.eval(), tok, prompts, temperature=0.7, top_k=50, top_p=1.0, max_new_tokens=case["n"],
             batch_size=case["b"], seed=0)
    return {"prompt": longest}


def kl_batch(case: dict, tok, texts: list[str], model) -> dict:
    from peft import get_peft_model

    from dpo_pipeline.models.kl import sequence_kls
    from dpo_pipeline.models.lora import lora_config

    prompts, longest = prompts_of(case, tok, texts)
    model = get_peft_model(model, lora_config(model, "auto", r=16, alpha=32, dropout=0.0))
    sequence_kls(model, tok, prompts, max_new_tokens=case["n"], seed=0, batch_size=case["b"])
    return {"prompt": longest}


def load_model(case: dict, tok, texts: list[str], folder) -> dict:
    """As the stages load a model, every weight then read once (a stage's passes read them all); `:nf4` as the
    train stage loads one in 4-bit: the full-precision model saved again, freed, and loaded from there."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from dpo_pipeline.models.device import device, dtype
    from dpo_pipeline.models.loading import load_4bit

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype()).to(device())
    touch = lambda m: sum(float(p.float().sum()) for p in m.parameters())  # noqa: E731
    touch(model)
    if case["nf4"]:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            del model
            touch(load_4bit(tmp))
    return {}


PHASES = {"dpo": dpo_step, "gen": gen_batch, "kl": kl_batch, "load": load_model}


# ---------------------------------------------------------------------------------------------------------
# The estimate of the same phase, and the table


def estimated(case: dict, result: dict) -> float:
    """The plan's bytes for the case's phase (the functions stage estimates take the largest of)."""
    arch, values = SHAPES[case["shape"]]
    from transformers import LlamaConfig, Qwen2Config

    shape = memory.shape_from_config((LlamaConfig if arch == "llama" else Qwen2Config)(**values))
    dev, nf4 = result["device"], case["nf4"]
    base = memory.CPU_BASELINE["training" if case["kind"] == "dpo" else "generating"] if dev == "cpu" else 0.0
    w = memory.weight_bytes(shape, dev, nf4)
    if case["kind"] == "load":
        return base + memory.loading(shape, dev, nf4=nf4).bytes
    if case["kind"] in ("gen", "kl"):
        phase = (memory.generation if case["kind"] == "gen" else memory.kl_pass)(
            shape, dev, rows=case["b"], prompt=result["prompt"], new=case["n"])
        adapter = 4 * memory.lora_params(shape, "auto", 16) if case["kind"] == "kl" else 0  # a fresh LoRA, no optimizer
        return base + w + adapter + phase.bytes
    rows, seq = 2 * case["b"], case["s"]
    adapter = 16 * memory.lora_params(shape, "auto", 16) + memory.TRAINER_OVERHEAD
    step = memory.training_step(shape, dev, rows=rows, seq=seq, checkpointing=case["ckpt"], nf4=nf4)
    ref = memory.no_grad_pass(shape, dev, rows=rows, seq=seq, name="reference")
    if case["precompute"]:  # TRL hashes the weights, then passes the pairs once without gradients, then trains
        return base + w + adapter + max(step.bytes, ref.bytes, memory.reference_hash(shape, dev).bytes)
    return base + w + adapter + step.parts["activations"] + max(ref.bytes, step.parts["lm head / backward"])


def run_all(cases: list[dict], done=lambda rows: None) -> list[dict]:
    """Each case in a fresh process; `done(rows)` after each (a run cut short keeps what it measured)."""
    rows = []
    for case in cases:
        proc = subprocess.run([sys.executable, "-m", "bench.memory", "--case", json.dumps(case)], capture_output=True,
                              text=True, cwd=ROOT)
        if proc.returncode:
            print(f"{case['name']}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        est = estimated(case, result)
        rows.append({"case": case["name"], "device": result["device"],
                     "measured_mib": round(result["measured"] / 2**20),
                     "estimated_mib": round(est / 2**20), "ratio": round(result["measured"] / est, 3),
                     "seconds": round(result["seconds"], 1),
                     **{f"{k}_mib": round(result[k] / 2**20) for k in ("baseline", "ready", "trainer", "reserved")
                        if k in result},
                     **{k: result[k] for k in ("prompt",) if k in result}})
        r = rows[-1]
        print(f"{r['case']:40} {r['measured_mib']:>9,} {r['estimated_mib']:>9,} {r['ratio']:>6.2f} "
              f"{r['seconds']:>7.1f}", flush=True)
        done(rows)
    return rows


def summary(rows: list[dict]) -> dict:
    ratios = [r["ratio"] for r in rows]
    return {"cases": rows, "min_ratio": min(ratios, default=None), "max_ratio": max(ratios, default=None),
            "within_0.8_1.25": sum(0.8 <= x <= 1.25 for x in ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:8]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="CPU: tiny and SmolLM2-135M shapes only")
    group.add_argument("--gpu", action="store_true", help="1B, 3B and 8B shapes, bf16 and nf4 (needs a GPU)")
    group.add_argument("--cases", nargs="+", metavar="CASE",
                       help="SHAPE:KIND[:bN][:sN][:pN][:nN][:tN][:gN][:mN][:ckpt][:nf4][:ref][:glibc]")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one case, run in this process (the bench's subprocess)
    add_json_arg(ap)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    try:
        cases = [parse_case(c) for c in (args.cases or (GPU_CASES if args.gpu else QUICK_CASES if args.quick
                                                        else CPU_CASES))]
    except ValueError as e:
        ap.error(str(e))
    import torch

    if args.gpu and not torch.cuda.is_available():
        ap.error("--gpu needs a GPU, and torch finds none (bash bench/gpu_memory.sh on a GPU machine)")
    print(f"{'case':40} {'measured':>9} {'estimate':>9} {'ratio':>6} {'seconds':>7}   (MiB; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'all')})")
    rows = run_all(cases, lambda rows: write_result(args.json, "memory", summary(rows)))
    result = summary(rows)
    if rows:
        print(f"measured / estimated: {result['min_ratio']:.2f} to {result['max_ratio']:.2f} over {len(rows)} "
              f"cases ({result['within_0.8_1.25']} within 0.8-1.25)")


if __name__ == "__main__":
    main()
