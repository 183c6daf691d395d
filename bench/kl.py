"""KL(SFT+DPO || SFT) by the two estimators on the same sampled sequences: the exact per-position KL summed
along each sequence (what the pipeline reports) and the sampled tokens' log-ratio sum ("k1", what it used to).

    dvc repro train && python -m bench.kl [--prompts eval|train] [--n 200] [--max-new-tokens 64]

Loads the pipeline's SFT model and DPO adapter (models/sft, models/dpo), samples one response a prompt from
the policy (temperature 1, the whole vocabulary, seeded by the prompt, as eval's and the monitor's KL do), and
prints each estimator's KL with its 95% bootstrap CI, the CI widths' ratio (k1 over exact), and how many
sequences each puts below zero. Both are unbiased for the same KL: the width is what differs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.result import add_json_arg, write_result
from dpo_pipeline.config import load_params
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.models.kl import kl_summary, sequence_kls
from dpo_pipeline.models.loading import load_round, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", choices=("eval", "train"), default="eval",
                    help="eval: the held-out eval prompts (eval's KL); train: the sampling prompts")
    ap.add_argument("--n", type=int, default=None, help="the first N prompts (default: all of eval.jsonl)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: eval.max_new_tokens")
    ap.add_argument("--bootstrap-samples", type=int, default=2000)
    add_json_arg(ap)
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    files = params.task_files
    source = ROOT / (files.eval_prompts if args.prompts == "eval" else files.prompts)
    prompts = [r["prompt"] for r in read_jsonl(source, required=("prompt",))][:args.n]
    tokenizer = load_tokenizer(params.paths)
    model = load_round(params.paths, 1).eval()  # the DPO adapter unmerged on SFT: disabled, it is the reference
    values = sequence_kls(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens or params.eval.max_new_tokens,
                          seed=params.seed, batch_size=params.eval.batch_size)
    result = {"prompts": len(prompts)}
    print(f"KL(SFT+DPO || SFT), nats per sequence, {len(prompts)} {args.prompts} prompts, one sequence each")
    for name, index in (("exact", 0), ("k1", 1)):
        s = kl_summary(values, args.bootstrap_samples, params.seed, estimator=name)
        negative = sum(v[index] < 0 for v in values)
        result[name] = {**{k: round(v, 4) for k, v in s.items()}, "ci_width": round(s["kl_ci_high"] - s["kl_ci_low"], 4),
                        "negative_sequences": negative}
        print(f"  {name:5}  {s['kl']:8.4f}  95% CI [{s['kl_ci_low']:.4f}, {s['kl_ci_high']:.4f}]  "
              f"width {result[name]['ci_width']:.4f}  sequences below 0: {negative}")
    result["width_ratio_k1_over_exact"] = round(result["k1"]["ci_width"] / max(result["exact"]["ci_width"], 1e-12), 2)
    print(f"  k1's CI is {result['width_ratio_k1_over_exact']}x as wide as the exact estimator's")
    write_result(args.json, "kl", result)


if __name__ == "__main__":
    main()
