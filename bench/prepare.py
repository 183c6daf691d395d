"""Can the tiny base's pre-training (the prepare stage) get faster without training another model?

    python bench/prepare.py                      (default, micro-batches of 8, one torch thread)
    python bench/prepare.py --runs default micro8

Each run is a fresh process that trains `builtin:tiny` from params.yaml into a temporary folder, exactly as
`stages.prepare` does, with one change:
- default: none;
- micro8: the same 32-example batches (same data order, same optimizer steps), fed as 4 micro-batches of 8
  with gradient accumulation, so each is padded to its own longest example: fewer padded tokens, smaller
  matrix products; the loss is transformers' token-weighted mean, equal within float noise;
- threads1: one torch thread instead of the machine's cores.
Prints each run's training seconds, its ratio to the first run, the final loss, the largest weight
difference from the first run's model, and the padded tokens each batching computes against the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One run, in its own process (a thread count is set before torch starts): prints its seconds and final loss.
RUN = """
import json, sys, time
from pathlib import Path
import transformers
from dpo_pipeline.config import load_params
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.models import tiny
from dpo_pipeline.tasks import get_task

micro, out = int(sys.argv[1]), Path(sys.argv[2])
params = load_params()
task = get_task(params.task)
rows = read_jsonl(params.task_files.sft_data, required=("prompt", "response"))
texts = [task.pretrain_text(r["prompt"], r["response"]) for r in rows]
init = transformers.TrainingArguments.__init__

def with_micro_batches(self, *args, **kwargs):
    if micro:
        kwargs["gradient_accumulation_steps"] = kwargs["per_device_train_batch_size"] // micro
        kwargs["per_device_train_batch_size"] = micro
    init(self, *args, **kwargs)

transformers.TrainingArguments.__init__ = with_micro_batches
start = time.perf_counter()
info = tiny.train_tiny_base(texts, params.model, params.seed, out)
print(json.dumps({"seconds": time.perf_counter() - start, "loss": info["final_loss"]}))
"""

RUNS = {"default": (0, None), "micro8": (8, None), "threads1": (0, "1")}


def lengths() -> tuple["torch.Tensor", int]:
    """Each pre-training example's tokens, in a seeded shuffle (as the trainer shuffles; the padding ratio
    hardly depends on which), and the default batch size."""
    import torch
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from dpo_pipeline.config import load_params
    from dpo_pipeline.files import read_jsonl
    from dpo_pipeline.tasks import get_task

    params = load_params(ROOT / "params.yaml")
    task = get_task(params.task)
    tok = AutoTokenizer.from_pretrained(ROOT / "models" / "base")
    rows = read_jsonl(params.task_files.sft_data, required=("prompt", "response"))
    n = torch.tensor([len(tok(task.pretrain_text(r["prompt"], r["response"]))["input_ids"]) + 1
                      for r in rows])  # + the end-of-text token
    return n[torch.randperm(len(n), generator=torch.Generator().manual_seed(params.seed))], params.model.tiny.batch_size


def padding(n, size: int) -> float:
    """Tokens computed (each batch of `size` padded to its longest example) over real tokens."""
    return sum(int(n[i:i + size].max()) * len(n[i:i + size]) for i in range(0, len(n), size)) / int(n.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = ap.parse_args()
    from safetensors.torch import load_file

    results, (n, batch_size) = {}, lengths()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            micro, threads = RUNS[name]
            env = {**os.environ, **({"OMP_NUM_THREADS": threads} if threads else {})}
            out = Path(tmp) / name
            line = subprocess.run([sys.executable, "-c", RUN, str(micro), str(out)], cwd=ROOT, env=env,
                                  capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[name] = {**json.loads(line), "weights": load_file(out / "model.safetensors"),
                             "padding": padding(n, micro or batch_size)}
            print(f"{name}: {results[name]['seconds']:.1f} s", flush=True)
    first = results[args.runs[0]]
    print(f"\n{'run':10} {'seconds':>8} {'ratio':>6} {'loss':>7} {'max |dw|':>9} {'padded/real tokens':>19}")
    for name, r in results.items():
        diff = max(float((r["weights"][k] - first["weights"][k]).abs().max()) for k in first["weights"])
        print(f"{name:10} {r['seconds']:8.1f} {r['seconds'] / first['seconds']:6.2f} {r['loss']:7.4f} "
              f"{diff:9.4f} {r['padding']:19.2f}")


if __name__ == "__main__":
    main()
