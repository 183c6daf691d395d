"""How fast is the tiny base's pre-training (the prepare stage) with each `model.tiny.micro_batches`?

    python bench/prepare.py                            (micro4 whole micro2 micro8 threads1)
    python bench/prepare.py --runs whole micro4 whole  (a run named twice runs twice: the machine's noise)

Each run is a fresh process that trains `builtin:tiny` from params.yaml into a temporary folder, exactly as
`stages.prepare` does, with one change:
- whole: `micro_batches: 1`, each step's 32 examples padded as one batch (the default before issue 15);
- micro2 / micro4 / micro8: the same 32 examples a step (same data order, same optimizer steps), cut by
  transformers' batch_rebalance sampler into 2 / 4 / 8 micro-batches of similar lengths with gradient
  accumulation; the loss is the batch's token-weighted mean, equal within float noise;
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One run, in its own process (a thread count is set before torch starts): prints its seconds and final loss.
RUN = """
import json, sys, time
from pathlib import Path
from dpo_pipeline.config import load_params
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.models import tiny
from dpo_pipeline.tasks import get_task

micro, out = int(sys.argv[1]), Path(sys.argv[2])
params = load_params()
task = get_task(params.task)
rows = read_jsonl(params.task_files.sft_data, required=("prompt", "response"))
texts = [task.pretrain_text(r["prompt"], r["response"]) for r in rows]
cfg = params.model.model_copy(update={"tiny": params.model.tiny.model_copy(update={"micro_batches": micro})})
start = time.perf_counter()
info = tiny.train_tiny_base(texts, cfg, params.seed, out)
print(json.dumps({"seconds": time.perf_counter() - start, "loss": info["final_loss"]}))
"""

RUNS = {"micro4": (4, None), "whole": (1, None), "micro2": (2, None), "micro8": (8, None), "threads1": (None, "1")}


def padding() -> dict[int, float]:
    """Tokens computed over real tokens in the first epoch, for each micro-batch count, as the trainer batches:
    each step's examples from the seeded shuffle, cut by the batch_rebalance sampler (1: one padded batch)."""
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    sys.path.insert(0, str(ROOT))
    from dpo_pipeline.config import load_params
    from dpo_pipeline.files import read_jsonl
    from dpo_pipeline.tasks import get_task

    params = load_params(ROOT / "params.yaml")
    task, size = get_task(params.task), params.model.tiny.batch_size
    tok = AutoTokenizer.from_pretrained(ROOT / "models" / "base")
    rows = read_jsonl(params.task_files.sft_data, required=("prompt", "response"))
    n = [len(tok(task.pretrain_text(r["prompt"], r["response"]))["input_ids"]) + 1 for r in rows]  # + end token
    ratios = {}
    for micro in (1, 2, 4, 8):
        sampler = BatchRebalanceSampler(n, size, dp_size=1, grad_accum=micro, seed=params.seed, drop_last=False)
        ratios[micro] = sum(len(b) * max(n[i] for i in b) for b in sampler) / sum(n)
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = ap.parse_args()
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT))
    from dpo_pipeline.config import load_params

    default = load_params(ROOT / "params.yaml").model.tiny.micro_batches
    results, ratios = [], padding()
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.runs):
            micro, threads = RUNS[name]
            micro = micro or default
            env = {**os.environ, **({"OMP_NUM_THREADS": threads} if threads else {})}
            out = Path(tmp) / str(i)
            line = subprocess.run([sys.executable, "-c", RUN, str(micro), str(out)], cwd=ROOT, env=env,
                                  capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results.append({"name": name, **json.loads(line), "weights": load_file(out / "model.safetensors"),
                            "padding": ratios[micro]})
            print(f"{name}: {results[-1]['seconds']:.1f} s", flush=True)
    first = results[0]
    print(f"\n{'run':10} {'seconds':>8} {'ratio':>6} {'loss':>7} {'max |dw|':>9} {'computed/real tokens':>21}")
    for r in results:
        diff = max(float((r["weights"][k] - first["weights"][k]).abs().max()) for k in first["weights"])
        print(f"{r['name']:10} {r['seconds']:8.1f} {r['seconds'] / first['seconds']:6.2f} {r['loss']:7.4f} "
              f"{diff:9.4f} {r['padding']:21.2f}")


if __name__ == "__main__":
    main()
