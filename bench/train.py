"""The train stage against a bare TRL DPOTrainer script: same pairs, model and settings.

    dvc repro judge && python bench/train.py
    python bench/train.py --pairs 48 --epochs 1      # a shorter run (the first 48 pairs), e.g. on a real model
    python bench/train.py --pairs 48 --epochs 1 --quick   # runs 1, 2 and 5 only: the bar, in 3/5 of the time

Runs, one after the other on the pipeline's SFT model and preference pairs (models/, artifacts/):
  1. bare: a plain script (transformers + PEFT + TRL's DPOTrainer, none of the stage's wrapping) training
     with the stage's own DPOConfig and LoRA config (dpo_pipeline.models.dpo / .lora: settings cannot drift);
  2. stage, KL only at start and end: `stages.train.main(params)` with kl_every past the last step (what our
     wrapping costs: loading, DVCLive, two KL measurements);
  3. stage: `stages.train.main(params)` as `dvc repro` runs it (the KL monitor samples every `train.kl_every`
     steps);
  4. bare, precomputed: the bare script with `precompute_ref_log_probs=True`;
  5. bare again.
Each is timed from loading the model to the end of training; all train on the same tokens, so tokens/s
ratios are time ratios, against the mean of two bare runs (first and last, so order and warm-up show).
The bar: stage-no-KL tokens/s >= 0.95 x bare. The stage runs with `precompute_ref_log_probs` off, as the
bare runs 1 and 5 do, whatever params.yaml says: like for like.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpo_pipeline.config import Params, load_params  # noqa: E402
from dpo_pipeline.files import read_jsonl  # noqa: E402
from dpo_pipeline.models.dpo import dpo_config  # noqa: E402
from dpo_pipeline.models.loading import dtype  # noqa: E402
from dpo_pipeline.models.lora import lora_config  # noqa: E402


def bare(params, precompute: bool) -> float:
    """What a user would write with the libraries alone."""
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOTrainer

    cfg, paths = params.train, params.paths
    start = time.perf_counter()
    set_seed(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / paths.base_model)
    model = AutoModelForCausalLM.from_pretrained(ROOT / paths.base_model, dtype=dtype())
    model = PeftModel.from_pretrained(model, ROOT / paths.sft_model).merge_and_unload()
    rows = read_jsonl(ROOT / paths.preferences, required=("prompt", "chosen", "rejected"), strings=())
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    split = ds.train_test_split(test_size=cfg.eval_fraction, seed=params.seed)
    with tempfile.TemporaryDirectory() as tmp:
        args = dpo_config(tmp, params.seed, cfg.model_copy(update={"precompute_ref_log_probs": precompute}),
                          params.model.max_length)
        lora = lora_config(model, params.model.lora_target_modules, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        DPOTrainer(model=model, args=args, train_dataset=split["train"], eval_dataset=split["test"],
                   processing_class=tokenizer, peft_config=lora).train()
    return time.perf_counter() - start


def stage(params: Params, kl_every: int) -> float:
    """The train stage's main(params), reading the repo's models and pairs, writing into a temporary folder."""
    from stages import train

    with tempfile.TemporaryDirectory() as tmp:
        p = params.paths
        paths = p.model_copy(update={"base_model": str(ROOT / p.base_model), "sft_model": str(ROOT / p.sft_model),
                                     "preferences": str(ROOT / p.preferences), "dpo_model": f"{tmp}/dpo",
                                     "train_live": f"{tmp}/live", "train_metrics": f"{tmp}/train.json"})
        start = time.perf_counter()
        cfg = params.train.model_copy(update={"kl_every": kl_every, "precompute_ref_log_probs": False})
        train.main(params.model_copy(update={"paths": paths, "train": cfg}))
        return time.perf_counter() - start


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Import everything both sides use before any clock starts: the first run must not pay for imports.
    import datasets, dvclive, peft, transformers, trl  # noqa: E401, F401

    from stages import train  # noqa: F401
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, help="train on the first N preference pairs only")
    ap.add_argument("--epochs", type=float, help="override train.epochs")
    ap.add_argument("--quick", action="store_true", help="only the bare runs and the stage without KL (the bar)")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    subset = Path(tempfile.mkdtemp()) / "preferences.jsonl"
    if args.pairs:  # every run reads the same subset
        subset.write_text("".join((ROOT / params.paths.preferences).read_text().splitlines(keepends=True)[:args.pairs]))
        params = params.model_copy(update={"paths": params.paths.model_copy(update={"preferences": str(subset)})})
    if args.epochs:
        params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": args.epochs})})
    runs = {
        "bare TRL script": lambda: bare(params, precompute=False),
        "train stage, KL only at start and end": lambda: stage(params, kl_every=10**9),
        f"train stage (KL every {params.train.kl_every} steps)": lambda: stage(params, kl_every=params.train.kl_every),
        "bare TRL script, precompute_ref_log_probs": lambda: bare(params, precompute=True),
        # Again, last: the spread between the two bare runs is this machine's noise and any warm-up cost.
        "bare TRL script, again": lambda: bare(params, precompute=False),
    }
    if args.quick:
        runs = {k: v for i, (k, v) in enumerate(runs.items()) if i in (0, 1, 4)}
    times = {}
    for name, run in runs.items():
        times[name] = run()
        print(f"bench: {name}: {times[name]:.1f} s", flush=True)  # a long run on a real model shows as it goes
    base = (times["bare TRL script"] + times["bare TRL script, again"]) / 2
    print(f"\n{'run':48} {'seconds':>8} {'tokens/s vs bare (mean of both)':>32}")
    for name, t in times.items():
        print(f"{name:48} {t:8.1f} {base / t:31.2f}x")


if __name__ == "__main__":
    main()
