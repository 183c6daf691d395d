"""bench/train.py's two sides built, not trained: the bare script's DPOTrainer and the stage's, on the first 40
pairs, and a diff of what could change per-step compute (tokenized pairs, DPOConfig, weights, trainable
parameters, modules in train mode, dtypes, threads, callbacks).

    python bench/train_compare.py      # prints `same KEY ...` or `DIFF KEY bare stage` per item
"""
import os, sys, tempfile
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
import torch, trl
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from dpo_pipeline.config import load_params
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.models.dpo import dpo_config
from dpo_pipeline.models.loading import dtype, load_sft, load_tokenizer
from dpo_pipeline.models.lora import lora_config
from stages.train import split_pairs

params = load_params(ROOT / "params.yaml"); cfg = params.train.model_copy(update={"precompute_ref_log_probs": False, "epochs": 1}); paths = params.paths
rows = read_jsonl(ROOT / paths.preferences, required=("prompt", "chosen", "rejected"), strings=())[:40]
def build(kind):
    set_seed(params.seed)
    if kind == "bare":
        tok = AutoTokenizer.from_pretrained(ROOT / paths.base_model)
        model = AutoModelForCausalLM.from_pretrained(ROOT / paths.base_model, dtype=dtype())
        model = PeftModel.from_pretrained(model, ROOT / paths.sft_model).merge_and_unload()
    else:
        tok = load_tokenizer(paths); model = load_sft(paths).train()
    split, _ = split_pairs(rows, cfg, params.seed)
    args = dpo_config(tempfile.mkdtemp(), params.seed, cfg, params.model.max_length)
    lora = lora_config(model, params.model.lora_target_modules, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    tr = trl.DPOTrainer(model=model, args=args, train_dataset=split["train"], eval_dataset=split["test"], processing_class=tok, peft_config=lora)
    return tr, tok
out = {}
for kind in ("bare", "stage"):
    tr, tok = build(kind)
    m = tr.model
    out[kind] = {
        "tok": {k: str(getattr(tok, k)) for k in ("padding_side", "truncation_side", "pad_token", "eos_token", "model_max_length")},
        "chat_template_hash": hash(tok.chat_template),
        "modes": sorted({(type(x).__name__, x.training) for x in m.modules()}, key=str)[:0] or sum(x.training for x in m.modules()),
        "n_modules": sum(1 for _ in m.modules()),
        "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad),
        "rg_names": hash(tuple(n for n, p in m.named_parameters() if p.requires_grad)),
        "dtypes": sorted({str(p.dtype) for p in m.parameters()}),
        "contig": sum(not p.is_contiguous() for p in m.parameters()),
        "config": m.base_model.model.config.to_dict(),
        "gen_config": m.base_model.model.generation_config.to_dict(),
        "attn": m.base_model.model.config._attn_implementation,
        "args": {k: str(v) for k, v in tr.args.to_dict().items() if k not in ("output_dir", "logging_dir")},
        "train_ids": [list(map(len, (r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]))) for r in tr.train_dataset] if "prompt_ids" in tr.train_dataset.column_names else tr.train_dataset.column_names,
        "train_hash": hash(str(tr.train_dataset[:])),
        "callbacks": [type(c).__name__ for c in tr.callback_handler.callbacks],
        "threads": torch.get_num_threads(),
        "weights_sum": float(sum(p.double().sum() for n, p in m.named_parameters() if "lora" not in n)),
    }
    del tr
a, b = out["bare"], out["stage"]
for k in a:
    if a[k] != b[k]:
        if isinstance(a[k], dict):
            print("DIFF", k, {kk: (a[k].get(kk), b[k].get(kk)) for kk in set(a[k]) | set(b[k]) if a[k].get(kk) != b[k].get(kk)})
        else:
            print("DIFF", k, a[k], b[k])
    else:
        print("same", k, str(a[k])[:100])
