"""The train stage against a bare TRL DPOTrainer script: same pairs, model and settings.

    dvc repro judge && python bench/train.py

Runs, one after the other on the pipeline's SFT model and preference pairs (models/, artifacts/):
  1. bare: a plain script (transformers + PEFT + TRL, nothing of ours) doing the stage's training;
  2. stage, KL only at start and end: `stages.train.main()` with kl_every past the last step (what our
     wrapping costs: params, DVCLive, two KL measurements);
  3. stage: `stages.train.main()` as `dvc repro` runs it (the KL monitor samples every `train.kl_every` steps);
  4. bare, precomputed: the bare script with `precompute_ref_log_probs=True`;
  5. bare again.
Each is timed from loading the model to the end of training; all train on the same tokens, so tokens/s
ratios are time ratios, against the mean of two bare runs (first and last, so order and warm-up show).
The bar: stage-no-KL tokens/s >= 0.95 x bare.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.config import load_params  # noqa: E402
from stages.files import read_jsonl  # noqa: E402


def bare(params, precompute: bool) -> float:
    """What a user would write with the libraries alone."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    cfg, paths = params.train, params.paths
    start = time.perf_counter()
    set_seed(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / paths.base_model)
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()  # as the stage decides
    model = AutoModelForCausalLM.from_pretrained(ROOT / paths.base_model,
                                                 dtype=torch.bfloat16 if bf16 else torch.float32)
    model = PeftModel.from_pretrained(model, ROOT / paths.sft_model).merge_and_unload()
    rows = read_jsonl(ROOT / paths.preferences, required=("prompt", "chosen", "rejected"), strings=())
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    split = ds.train_test_split(test_size=cfg.eval_fraction, seed=params.seed)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp, beta=cfg.beta, learning_rate=cfg.learning_rate, loss_type=[cfg.loss_type, "sft"],
            loss_weights=[1.0, cfg.sft_weight], num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size, lr_scheduler_type="linear", warmup_steps=0.1,
            max_length=params.model.max_length, logging_steps=cfg.logging_steps, eval_strategy="steps",
            eval_steps=cfg.logging_steps * 2, eval_on_start=True, save_strategy="no", report_to="none",
            seed=params.seed, use_cpu=not torch.cuda.is_available(), bf16=bf16, disable_tqdm=True,
            precompute_ref_log_probs=precompute,
        )
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        DPOTrainer(model=model, args=args, train_dataset=split["train"], eval_dataset=split["test"],
                   processing_class=tokenizer, peft_config=lora).train()
    return time.perf_counter() - start


def stage(raw: dict, kl_every: int) -> float:
    """The train stage's main(), reading the repo's models and pairs, writing into a temporary folder."""
    from stages import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = {**raw, "paths": {**raw["paths"], **{k: str(ROOT / raw["paths"][k]) for k in
                                                     ("base_model", "sft_model", "preferences")},
                                "dpo_model": f"{tmp}/dpo", "train_live": f"{tmp}/live",
                                "train_metrics": f"{tmp}/train.json"},
               "train": {**raw["train"], "kl_every": kl_every}}
        Path(tmp, "params.yaml").write_text(yaml.safe_dump(cfg))
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            start = time.perf_counter()
            train.main()
            return time.perf_counter() - start
        finally:
            os.chdir(cwd)


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Import everything both sides use before any clock starts: the first run must not pay for imports.
    import datasets, dvclive, peft, transformers, trl  # noqa: E401, F401

    from stages import train  # noqa: F401
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    times = {
        "bare TRL script": bare(params, precompute=False),
        "train stage, KL only at start and end": stage(raw, kl_every=10**9),
        f"train stage (KL every {params.train.kl_every} steps)": stage(raw, kl_every=params.train.kl_every),
        "bare TRL script, precompute_ref_log_probs": bare(params, precompute=True),
        # Again, last: the spread between the two bare runs is this machine's noise and any warm-up cost.
        "bare TRL script, again": bare(params, precompute=False),
    }
    base = (times["bare TRL script"] + times["bare TRL script, again"]) / 2
    print(f"\n{'run':48} {'seconds':>8} {'tokens/s vs bare (mean of both)':>32}")
    for name, t in times.items():
        print(f"{name:48} {t:8.1f} {base / t:31.2f}x")


if __name__ == "__main__":
    main()
