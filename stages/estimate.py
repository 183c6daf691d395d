"""Before paying: how many judge calls the judge and eval stages will make, the estimated tokens and USD.

    python -m stages.estimate

Needs no API key and sends nothing. For the judge stage it uses the sampled responses when they exist
(and subtracts what the cache already holds), else the prompts with worst-case-length responses; for the
eval stage, the held-out prompts with worst-case-length responses. Output tokens are counted at
`judge.max_tokens`, so the USD figure is an upper estimate.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from stages import cli
from stages.config import load_params
from stages.files import read_jsonl, read_text


def estimate(judge, kind: str, items: list[tuple]) -> dict:
    bodies, keys = judge.requests(kind, items)
    unique = dict(zip(keys, bodies))  # identical requests (two identical responses) are sent once
    todo = {k: b for k, b in unique.items() if judge.cache.get(k) is None}
    tokens_in = sum(judge.estimate(b)[0] for b in todo.values())
    tokens_out = len(todo) * judge.cfg.max_tokens
    batch = judge.cfg.mode == "batch"
    return {"calls": len(items), "unique": len(unique), "cached": len(unique) - len(todo), "to_send": len(todo),
            "input_tokens": tokens_in, "output_tokens": tokens_out,
            "usd": judge.cost(tokens_in, tokens_out, batch=batch)}


def main() -> None:
    params = load_params()
    paths, cfg = params.paths, params.judge
    if cfg.backend == "rubric":
        k, n = params.sample.num_candidates, len(read_jsonl(params.task_files.prompts, required=("prompt",)))
        calls = 0 if not params.preferences.generated else 2 * n if k == 2 else k * n
        print(f"judge stage: {calls:,} judge calls ({n:,} prompts x {k} candidates); judge.backend is rubric: "
              "judged offline, nothing to pay. Set judge.backend: anthropic to estimate Claude's cost.")
        return
    from stages.anthropic_judge import AnthropicJudge

    judge = AnthropicJudge(cfg, read_text(params.task_files.policy), api_key=None)
    worst_sample = "x" * (params.sample.max_new_tokens * 4)  # ~4 characters a token
    worst_eval = "x" * (params.eval.max_new_tokens * 4)
    k = params.sample.num_candidates
    if Path(paths.samples).exists() and Path(paths.samples).stat().st_size:
        candidates = [(r["prompt"], [x["text"] for x in r["responses"]])
                      for r in read_jsonl(paths.samples, required=("prompt", "responses"))]
    else:
        candidates = [(r["prompt"], [worst_sample + " " * i for i in range(k)])
                      for r in read_jsonl(params.task_files.prompts, required=("prompt",))]
    prompts = [r["prompt"] for r in read_jsonl(params.task_files.eval_prompts, required=("prompt",))]
    rows = {}
    if not params.preferences.generated:
        print(f"preferences.source is {params.preferences.source}: the judge stage judges nothing")
    elif k == 2:
        pairs = [(p, a, b) for p, (a, b) in candidates]
        rows["judge (pairwise, both orders)"] = estimate(judge, "pairwise", pairs + [(p, b, a) for p, a, b in pairs])
    else:
        rows[f"judge (score {k} candidates, best vs worst)"] = estimate(
            judge, "score", [(p, text) for p, texts in candidates for text in texts])
    rows |= {
        "eval (faithfulness, 3 models)": estimate(judge, "score", [(p, worst_eval + m) for m in "abc"
                                                                   for p in prompts]),
        "eval (DPO vs SFT, both orders)": estimate(judge, "pairwise", [(p, worst_eval, worst_eval + o)
                                                                       for o in ("a", "b") for p in prompts]),
    }
    table = Table(title=f"Judge cost estimate: {cfg.model}, {cfg.mode} mode (upper bound)")
    for col in ("stage", "calls", "unique", "cached", "to send", "input tokens", "output tokens (max)", "USD"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for name, r in rows.items():
        table.add_row(name, *(f"{r[k]:,}" for k in ("calls", "unique", "cached", "to_send", "input_tokens",
                                                     "output_tokens")),
                      f"${r['usd']:.2f}")
    total = sum(r["usd"] for r in rows.values())
    table.add_row("total", "", "", "", f"{sum(r['to_send'] for r in rows.values()):,}", "", "", f"${total:.2f}")
    Console(width=max(Console().width, 120)).print(table)
    if total > cfg.max_cost_usd:
        print(f"note: above judge.max_cost_usd (${cfg.max_cost_usd:.2f}); each stage stops before passing it")


if __name__ == "__main__":
    cli.run(main)
