"""How fast are the tiny base's pre-training (prepare) and SFT with each `micro_batch_size`?

    python -m bench.prepare                            (prepare: micro4 whole micro2 micro8 threads1)
    python -m bench.prepare --runs whole micro4 whole  (a run named twice runs twice: the machine's noise)
    python -m bench.prepare --stage sft --runs micro4 whole micro4 whole

Each run is a fresh process (`python -m bench.prepare --one MICRO OUT`, its result one JSON line on stdout)
that trains `builtin:tiny` from params.yaml into a temporary folder with the library's `train_tiny_base`, as
`stages.prepare` does (or, with `--stage sft`, trains the SFT adapter on the workspace's models/base into a
temporary folder with the trainer `stages.sft` builds from the library's settings), with one change to
`model.tiny.micro_batch_size` (or `sft.micro_batch_size`):
- whole: `micro_batch_size: null`, each step's 32 examples padded as one batch (the default before issue 15);
- micro2 / micro4 / micro8: the same 32 examples a step (same data order, same optimizer steps), cut by
  transformers' batch_rebalance sampler into 2 / 4 / 8 micro-batches of similar lengths (micro_batch_size
  16 / 8 / 4) with gradient accumulation; the loss is the batch's token-weighted mean, equal within float noise;
- threads1: the default micro-batches on one torch thread instead of the machine's cores.
Prints each run's training seconds, its ratio to the first run, the final loss, the largest weight
difference from the first run's model, and the tokens each batching computes (padding included) against the
real ones, counted on the sampler's own first-epoch batches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.result import add_json_arg, write_result
from dpo_pipeline.config import Params, load_params

ROOT = Path(__file__).resolve().parents[1]
WHY = "the bench trains on them"  # sft_pairs names it when the data is missing

WEIGHTS = {"prepare": "model.safetensors", "sft": "adapter_model.safetensors"}

RUNS = {"micro4": (4, None), "whole": (1, None), "micro2": (2, None), "micro8": (8, None), "threads1": (None, "1")}


def pretrain(params: Params, micro: int, out: Path) -> dict:
    """stages.prepare's builtin:tiny branch, `micro` micro-batches a step; timed around the training alone."""
    from dpo_pipeline.files import sft_pairs
    from dpo_pipeline.models.tiny import train_tiny_base
    from dpo_pipeline.tasks import get_task, need

    pretrain_text = need(get_task(params.task), "pretrain_text")
    texts = [pretrain_text(r["prompt"], r["response"]) for r in sft_pairs(params, WHY)]
    size = None if micro == 1 else params.model.tiny.batch_size // micro
    cfg = params.model.model_copy(update={"tiny": params.model.tiny.model_copy(update={"micro_batch_size": size})})
    start = time.perf_counter()
    info = train_tiny_base(texts, cfg, params.seed, out)
    return {"seconds": time.perf_counter() - start, "loss": info["final_loss"]}


def sft(params: Params, micro: int, out: Path) -> dict:
    """stages.sft's training (model.sft null) with `micro` micro-batches a step, the adapter saved to `out`; timed
    from reading the pairs to the saved adapter, as the stage runs. The stage's card and settings files are
    left out: they take no measurable time."""
    from transformers import set_seed

    from dpo_pipeline.files import sft_pairs
    from dpo_pipeline.models import memory
    from dpo_pipeline.models.loading import load_base, load_tokenizer
    from dpo_pipeline.models.lora import save_adapter
    from dpo_pipeline.models.training import sft_trainer

    cfg = params.sft.model_copy(update={"micro_batch_size": None if micro == 1 else params.sft.batch_size // micro})
    params = params.model_copy(update={"sft": cfg, "paths": params.paths.model_copy(update={"sft_model": str(out)})})
    start = time.perf_counter()
    rows = sft_pairs(params, WHY)[:cfg.max_rows]
    set_seed(params.seed)
    tokenizer = load_tokenizer(params.paths)
    memory.check_fits(params, "sft", tokenizer)  # as the stage: where memory is tight it changes the allocator
    model = load_base(params.paths, params.model.quantization)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = sft_trainer(params, model, tokenizer, rows, tmp)  # the stage's own trainer
        result = trainer.train()
    save_adapter(trainer.model, out)
    return {"seconds": time.perf_counter() - start, "loss": round(result.training_loss, 4)}  # as the stage prints it


RUN = {"prepare": pretrain, "sft": sft}


def run_one(stage: str, micro: int, threads: str | None, out: Path) -> dict:
    """One run in a fresh process (its thread count set before torch starts): its seconds and final loss."""
    env = {**os.environ, **({"OMP_NUM_THREADS": threads} if threads else {})}
    proc = subprocess.run([sys.executable, "-m", "bench.prepare", "--stage", stage, "--one", str(micro), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"bench.prepare --one {micro} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # the last line: progress may print before it


def padding(stage: str, default: int) -> dict[int, float]:
    """Tokens computed over real tokens in the first epoch, for each micro-batch count, as the trainer batches:
    each step's examples from the seeded shuffle, cut by the batch_rebalance sampler (1: one padded batch)."""
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    from dpo_pipeline.files import read_jsonl
    from dpo_pipeline.tasks import get_task

    params = load_params(ROOT / "params.yaml")
    task = get_task(params.task)
    tok = AutoTokenizer.from_pretrained(ROOT / "models" / "base")
    rows = read_jsonl(params.task_files.sft_data, required=("prompt", "response"))
    if stage == "prepare":
        size = params.model.tiny.batch_size
        n = [len(tok(task.pretrain_text(r["prompt"], r["response"]))["input_ids"]) + 1 for r in rows]  # + end
    else:  # the chat-templated prompt and completion, as TRL renders them
        from dpo_pipeline.chat import assistant, user

        size = params.sft.batch_size
        n = [len(tok.apply_chat_template(user(r["prompt"]) + assistant(r["response"]), tokenize=True)["input_ids"])
             for r in rows[:params.sft.max_rows]]
    ratios = {}
    for micro in sorted({1, 2, 4, 8, default}):  # every run's count, params.yaml's too
        sampler = BatchRebalanceSampler(n, size, dp_size=1, grad_accum=micro, seed=params.seed, drop_last=False)
        ratios[micro] = sum(len(b) * max(n[i] for i in b) for b in sampler) / sum(n)
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--stage", choices=list(RUN), default="prepare")
    ap.add_argument("--one", nargs=2, metavar=("MICRO", "OUT"), help=argparse.SUPPRESS)  # one run: this process
    add_json_arg(ap)
    args = ap.parse_args()
    if args.one:
        micro, out = args.one
        print(json.dumps(RUN[args.stage](load_params(), int(micro), Path(out))))
        return
    from safetensors.torch import load_file

    params = load_params(ROOT / "params.yaml")
    section = params.model.tiny if args.stage == "prepare" else params.sft  # its micro-batches a step:
    default = section.batch_size // (section.micro_batch_size or section.batch_size)
    results, ratios = [], padding(args.stage, default)
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.runs):
            micro, threads = RUNS[name]
            micro = micro or default
            out = Path(tmp) / str(i)
            results.append({"name": name, **run_one(args.stage, micro, threads, out),
                            "weights": load_file(out / WEIGHTS[args.stage]), "padding": ratios[micro]})
            print(f"{name}: {results[-1]['seconds']:.1f} s", flush=True)
    first, rows = results[0], []
    print(f"\n{'run':10} {'seconds':>8} {'ratio':>6} {'loss':>7} {'max |dw|':>9} {'computed/real tokens':>21}")
    for r in results:
        diff = max(float((r["weights"][k] - first["weights"][k]).abs().max()) for k in first["weights"])
        print(f"{r['name']:10} {r['seconds']:8.1f} {r['seconds'] / first['seconds']:6.2f} {r['loss']:7.4f} "
              f"{diff:9.4f} {r['padding']:21.2f}")
        rows.append({"run": r["name"], "seconds": round(r["seconds"], 2),
                     "ratio": round(r["seconds"] / first["seconds"], 3), "loss": r["loss"], "max_weight_diff": diff,
                     "computed_over_real_tokens": round(r["padding"], 3)})
    write_result(args.json, "prepare", {"stage": args.stage, "runs": rows})


if __name__ == "__main__":
    main()
