"""Before paying: the judge calls, tokens and USD of the judge and eval stages, and each model stage's memory.

    python -m tools.estimate
    python -m tools.estimate --gpu-gib 24     # the memory plan for a 24 GiB GPU
    python -m tools.estimate --json           # all of it as one JSON object

Needs no API key and sends nothing. For the judge stage it uses the sampled responses when they exist
(and subtracts what the cache already holds), else the prompts with worst-case-length responses; for the
eval stage, the held-out prompts with worst-case-length responses, and the `judge.reliability_repeats` of
them asked again for self-consistency. Output tokens are counted at `judge.max_tokens` (plus
`judge.thinking_tokens` for a model that always thinks); input at ~3.5 characters a token, a heuristic, so the
USD figure is an estimate, not a bound (the judge stage scales it by the API's own count_tokens). In batch
mode it also shows how many Message Batches each job takes (100,000 requests or 256 MB each, or
`judge.batch_max_requests`). With `rounds` > 1 (iterative DPO) each round's judge
stage is a row of its own (its samples once sampled, else its prompts at worst-case length), and eval grows by
a model and two pairs a round; the cache keeps a re-run from paying twice for what it already asked.

Memory (dpo_pipeline/models/memory.py): each model stage's (sft, sample, train, eval_baselines, eval) estimated
peak, from model.base's config.json alone (no weights loaded), on the device it would run on: a GPU given with
--gpu-gib or found by torch (memory torch allocates, bf16 or 4-bit), else the CPU (resident memory, float32).
Where a stage does not fit, the settings that make it fit, cheapest first (the micro batch, activation
checkpointing, a 4-bit base, the generation batch, max_length), each as `-S key=value` the plan checked. It also
counts the preference pairs and SFT rows longer than model.max_length, with the model's tokenizer when it is at
hand without weights (a builtin's once `prepare` built it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import read_jsonl, read_text
from dpo_pipeline.evaluation.schema import JUDGED, models
from dpo_pipeline.evaluation.schema import pairs as eval_pairs
from dpo_pipeline.judging.base import Estimate
from dpo_pipeline.judging.registry import make_judge
from dpo_pipeline.judging.reliability import repeat_sample
from dpo_pipeline.rounds import prompt_block, round_paths
from dpo_pipeline.tasks import get_task


def candidates(params: Params, k: int) -> list[tuple[str, list[str]]]:
    """Round k's (prompt, responses): sampled already, or its prompts with worst-case-length responses."""
    samples = round_paths(params.paths, k).samples
    if Path(samples).exists() and Path(samples).stat().st_size:
        return [(r["prompt"], [x["text"] for x in r["responses"]])
                for r in read_jsonl(samples, required=("prompt", "responses"))]
    worst = "x" * (params.sample.max_new_tokens * 4)  # ~4 characters a token
    pool = read_jsonl(params.task_files.prompts, required=("prompt",))
    return [(r["prompt"], [worst + " " * i for i in range(params.sample.num_candidates)])
            for r in pool[prompt_block(params, k, len(pool))]]


def judge_rows(params: Params, judge) -> dict[str, Estimate]:
    """Each judging job's calls, tokens and USD: the judge stage's (a row a round) and eval's."""
    cfg = params.judge
    worst_eval = "x" * (params.eval.max_new_tokens * 4)
    k = params.sample.num_candidates
    prompts = [r["prompt"] for r in read_jsonl(params.task_files.eval_prompts,
                                                required=("prompt",))][:params.eval.max_prompts]
    rows: dict[str, Estimate] = {}
    for r in range(1, params.rounds + 1) if params.preferences.generated else ():
        suffix = f", round {r}" if params.rounds > 1 else ""
        if k == 2 and judge.positional:  # a reward model scores both candidates instead
            pairs = [(p, a, b) for p, (a, b) in candidates(params, r)]
            rows[f"judge (pairwise, both orders{suffix})"] = judge.estimate(
                "pairwise", pairs + [(p, b, a) for p, a, b in pairs])
        else:
            rows[f"judge (score {k} candidates, best vs worst{suffix})"] = judge.estimate(
                "score", [(p, text) for p, texts in candidates(params, r) for text in texts])
    n_models, n_pairs = len(models(params.rounds)), len(eval_pairs(params.rounds))
    rows |= {
        f"eval ({JUDGED[judge.pointwise].name}, {n_models} models)": judge.estimate(
            "score", [(p, worst_eval + str(m)) for m in range(n_models) for p in prompts]),
        # DPO vs SFT, DPO vs base, SFT vs base, and each later round vs SFT and vs the round before
        # (evaluation.schema.pairs), each in both orders
        f"eval ({n_pairs} pairs of models, both orders)": judge.estimate(
            "pairwise", [(p, worst_eval, worst_eval + str(o)) for o in range(2 * n_pairs) for p in prompts]),
    }
    if cfg.reliability_repeats:  # judge reliability: a seeded sample of eval's pairs asked again
        again = repeat_sample(list(range(len(prompts))), cfg.reliability_repeats, params.seed)
        rows["eval (judge reliability, asked again)"] = judge.estimate(
            "pairwise", [(prompts[i], worst_eval, worst_eval + "a") for i in again], repeat=1)
    return rows


def print_costs(params: Params, judge, rows: dict[str, Estimate]) -> None:
    cfg = params.judge
    if not params.preferences.generated:
        print(f"preferences.source is {params.preferences.source}: the judge stage judges nothing")
    title = f"{cfg.model}, {cfg.mode} mode (input at ~3.5 characters a token: a heuristic)" if judge.remote else "offline: nothing is sent or paid"
    table = Table(title=f"Judge cost estimate: {judge.name} judge, {title}")
    batched = judge.remote and cfg.mode == "batch"  # how many Message Batches each job takes
    for col in ("stage", "calls", "unique", "cached", "to send", "input tokens", "output tokens (max)", "USD",
                *(["batches"] if batched else [])):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for name, r in rows.items():
        table.add_row(name, *(f"{v:,}" for v in (r.calls, r.unique, r.cached, r.to_send, r.input_tokens,
                                                  r.output_tokens)), f"${r.usd:.2f}", *([f"{r.batches:,}"] * batched))
    total = sum(r.usd for r in rows.values())
    table.add_row("total", "", "", "", f"{sum(r.to_send for r in rows.values()):,}", "", "", f"${total:.2f}",
                  *([f"{sum(r.batches for r in rows.values()):,}"] * batched))
    Console(width=max(Console().width, 120)).print(table)
    if total > cfg.max_cost_usd:
        print(f"note: above judge.max_cost_usd (${cfg.max_cost_usd:.2f}); each stage stops before passing it")


# ---------------------------------------------------------------------------------------------------------
# Memory: each model stage's peak, on the device it would run on (dpo_pipeline/models/memory.py)


def memory_plan(params: Params, gpu_gib: float | None):
    """The device, the model's shape, the data's token counts and each model stage's plan."""
    from dpo_pipeline.models import memory

    device = memory.this_device(gpu_gib)
    shape = memory.model_shape(params)
    tokenizer, why = memory.local_tokenizer(params)
    lens = memory.lengths(params, tokenizer)
    plans = {stage: memory.plan_stage(params, stage, device, shape, lens) for stage in memory.STAGES}
    return device, shape, lens, plans, why


def memory_json(device, shape, lens, plans, why) -> dict:
    from dpo_pipeline.models import memory

    gib = lambda b: round(b / memory.GIB, 2)  # noqa: E731
    stages = {name: {"peak_gib": gib(p.estimate.total), "device": p.estimate.device, "fits": p.fits,
                     "needs_gib": gib(memory.needed(p.estimate, device)),
                     "phase": p.estimate.phase.name if p.estimate.phase else None, "note": p.estimate.note,
                     "suggestions": [{"settings": s, "flags": memory.flags(s), "peak_gib": gib(e.total),
                                      "needs_gib": gib(memory.needed(e, device))} for s, e in p.suggestions]}
              for name, p in plans.items()}
    return {"memory": stages, "device": {"kind": device.kind, "name": device.name,
                                         "capacity_gib": None if device.capacity is None else gib(device.capacity)},
            "model": {"parameters": shape.params, "layers": shape.layers, "hidden": shape.hidden,
                      "vocab": shape.vocab},
            "tokens": {"longest_prompt": lens.prompts, "longest_pair": lens.pair, "longest_sft_row": lens.sft,
                       "longer_than_max_length": lens.too_long, "note": lens.note or why}}


def print_memory(params: Params, device, shape, lens, plans, why) -> None:
    from dpo_pipeline.models import memory

    where = "GPU" if device.kind == "cuda" else "CPU: resident memory in float32"
    has = "" if device.capacity is None else f", {device.capacity / memory.GIB:.1f} GiB"
    table = Table(title=f"Peak memory estimate: {params.model.base} ({shape.params / 1e6:,.1f}M parameters), "
                        f"on {device.name}{has} ({where}; from config.json, no weights loaded)")
    for col in ("stage", "device", "peak GiB", "largest phase", "fits", "settings that fit, cheapest first"):
        table.add_column(col, justify="right" if col == "peak GiB" else "left")
    for name, p in plans.items():
        est = p.estimate
        fit = {None: "?", True: "yes", False: "no"}[p.fits]
        fixes = "; ".join(f"{memory.flags(s)} (~{memory.needed(e, device) / memory.GIB:.1f} GiB)"
                          for s, e in p.suggestions) or ("none the plan tries" if p.fits is False else "")
        phase = (est.phase.name if est.phase else "") + (f" ({est.note})" if est.note else "")
        procs = f" x {est.processes}" if est.processes > 1 and est.device == "cpu" else ""
        table.add_row(name, est.device, f"{est.peak / memory.GIB:.2f}{procs}", phase, fit, fixes)
    Console(width=max(Console().width, 120)).print(table)
    limit = params.model.max_length
    if lens.too_long is None:
        print(f"truncation at model.max_length {limit}: not counted ({why or lens.note})")
    else:
        (pairs, n_pairs), (sft, n_sft) = lens.too_long["pairs"], lens.too_long["sft_rows"]
        print(f"longer than model.max_length {limit} tokens (truncated; one long pair pads its whole batch): "
              f"{pairs:,} of {n_pairs:,} preference pairs, {sft:,} of {n_sft:,} SFT rows")
    if lens.note:
        print(f"note: {lens.note}")


def main(params: Params, args: argparse.Namespace) -> None:
    judge = make_judge(params.judge, get_task(params.task), read_text(params.task_files.policy), send=False)
    rows = judge_rows(params, judge)
    try:  # the judge's costs stand without it: e.g. a hub id's config.json cannot be had offline
        plan, why_not = memory_plan(params, args.gpu_gib), None
    except UserError as e:
        plan, why_not = None, str(e)
    if args.json:
        costs = {name: dataclasses.asdict(r) for name, r in rows.items()}
        memory = memory_json(*plan) if plan else {"memory": {}, "memory_error": why_not}
        print(json.dumps({"judge": {"backend": judge.name, "model": params.judge.model if judge.remote else None,
                                    "mode": params.judge.mode, "jobs": costs,
                                    "total_usd": round(sum(r.usd for r in rows.values()), 4)}, **memory}, indent=2))
        return
    print_costs(params, judge, rows)
    if plan:
        print_memory(params, *plan)
    else:
        print(f"memory: no estimate ({why_not})")


def parser() -> argparse.ArgumentParser:
    p = cli.tool_parser(__doc__)
    p.add_argument("--gpu-gib", type=cli.arg_type(float, lambda x: x > 0, "GiB > 0"), metavar="N",
                   help="plan for a GPU of N GiB (default: the GPU torch finds, else this machine's CPU and RAM)")
    p.add_argument("--json", action="store_true", help="print one JSON object (judge costs and memory) instead")
    return p


if __name__ == "__main__":
    cli.run(main, parser())
