"""Before paying: how many judge calls the judge and eval stages will make, the estimated tokens and USD.

    python -m tools.estimate

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
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from dpo_pipeline import cli
from dpo_pipeline.config import Params
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


def main(params: Params) -> None:
    cfg = params.judge
    judge = make_judge(cfg, get_task(params.task), read_text(params.task_files.policy), send=False)
    worst_eval = "x" * (params.eval.max_new_tokens * 4)
    k = params.sample.num_candidates
    prompts = [r["prompt"] for r in read_jsonl(params.task_files.eval_prompts,
                                                required=("prompt",))][:params.eval.max_prompts]
    rows: dict[str, Estimate] = {}
    if not params.preferences.generated:
        print(f"preferences.source is {params.preferences.source}: the judge stage judges nothing")
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


if __name__ == "__main__":
    cli.run(main, cli.tool_parser(__doc__))
