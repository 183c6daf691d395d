"""Write reports/report.md and print the 3-way comparison in the terminal.

    python -m stages.report         (run by `dvc repro` as stage `report`)
    python -m stages.report --show  (print the table of the current metrics; `make run` ends with it)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from stages import cli
from stages.config import ReportParams, load_params
from stages.diagnostics import diagnose, healthy_evidence, reflection
from stages.files import read_jsonl, write_text
from stages.stats import task_metric_keys
from stages.tasks import get_task

JUDGED = {"faithfulness": "Faithfulness (judge, 1-5)", "mean_tokens": "Mean length (tokens)"}


def rate_labels(ev: dict, task_labels: dict[str, str]) -> dict[str, str]:
    """The task's rates in this eval.json, labelled as the task module names them."""
    return {k: task_labels.get(k, k.replace("_", " ").capitalize()) for k in task_metric_keys(ev)}


def table_rows(ev: dict, cis: dict, task_labels: dict[str, str]) -> list[list[str]]:
    """[metric, base, sft, dpo, delta] cells; rates with their 95% CI."""
    rows = []
    for key, label in {**rate_labels(ev, task_labels), **JUDGED}.items():
        m, ci = ev[key], cis.get(key)
        cell = lambda name: f"{m[name]:.2f}" + (f" [{ci[name]['low']:.2f}, {ci[name]['high']:.2f}]" if ci else "")  # noqa: E731
        delta = f"{m['dpo'] - m['sft']:+.2f}"
        if ci and "delta_dpo_sft" in ci:
            delta += f" [{ci['delta_dpo_sft']['low']:+.2f}, {ci['delta_dpo_sft']['high']:+.2f}]"
        rows.append([label, cell("base"), cell("sft"), cell("dpo"), delta])
    pw = ev["pairwise_dpo_vs_sft"]
    rows.append(["Preferred (judge pairwise, DPO vs SFT)", "-", "-",
                 f"{pw['win_rate']:.1%} [{pw['ci_low']:.1%}, {pw['ci_high']:.1%}]",
                 f"{(pw['win_rate'] - 0.5) * 100:+.1f}pp"])
    return rows


def preference_data(judge: dict) -> str:
    if judge["backend"] == "dataset":
        return (f"{judge['pairs']} pairs from `{judge['source']}` ({judge['format']} rows, "
                f"{judge['dropped_identical']} with chosen = rejected dropped); nothing sampled or judged here.")
    text = (f"{judge['pairs']} pairs kept from {judge['prompts']} prompts by the `{judge['backend']}` judge; "
            f"{judge['ties']} ties dropped")
    if judge.get("position_consistency") is not None:
        return text + f"; position consistency {judge['position_consistency']:.1%}."
    return text + f"; best vs worst of {judge['candidates']} candidates a prompt."


def markdown(ev: dict, cis: dict, judge: dict, train: dict, examples: list[dict], cfg: ReportParams,
             task_labels: dict[str, str]) -> str:
    pw = ev["pairwise_dpo_vs_sft"]
    lines = ["# Base vs SFT vs SFT+DPO", "",
             f"{ev['n_prompts']} held-out prompts; 95% bootstrap CIs over prompts in brackets.", "",
             "| Metric | Base | SFT | SFT+DPO | Δ DPO over SFT |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(ev, cis, task_labels)]
    lines += ["", "![Base vs SFT vs SFT+DPO, 95% CIs](eval_bars.png)", "",
              f"Pairwise DPO vs SFT, judged in both orders: {pw['wins']} wins, {pw['losses']} losses, "
              f"{pw['ties']} ties; win rate = (wins + ties/2) / n.", "",
              "## Preference data", "", preference_data(judge), "",
              "## DPO training", "", "![Training curves](training_curves.png)", "",
              f"- Reward margin: {train['first_step']['rewards/margins']} at the first step (the reference is the "
              f"SFT model) -> {train['final']['rewards/margins']} at the end; reward accuracy "
              f"{train['final']['rewards/accuracies']}.",
              f"- Validation ({train['pairs_eval']} held-out pairs): reward gap "
              f"{train['eval_first']['rewards/margins']} -> {train['eval_final']['rewards/margins']}, accuracy "
              f"{train['eval_final']['rewards/accuracies']}.",
              f"- KL from the SFT reference: {train['kl']['final']} nats per sequence at the end (max "
              f"{train['kl']['max']}); on the eval prompts KL(SFT+DPO || SFT) = {ev['kl_dpo_vs_sft']['kl']}.", "",
              "## Diagnostics", ""]
    findings = diagnose(ev, cis, train, cfg)
    lines += [f"- **{f.rule}**: {f.evidence}. Try: {f.advice}." for f in findings] or [
        f"- **Healthy run**: {healthy_evidence(ev, cis, train)}."]
    lines += ["", "## Examples", ""]
    for ex in examples:
        lines += [f"**{ex['id']}**: {ex['prompt']}", "", "| Model | Output | Score |", "|---|---|---|"]
        for name, label in (("base", "Base"), ("sft", "SFT"), ("dpo", "SFT+DPO")):
            text = ex[name]["text"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {label} | `{text}` | {ex[name]['faithfulness']} |")
        lines.append("")
    lines += ["## What DPO did to my model, and what it didn't", "", *reflection(ev, cis, train), ""]
    return "\n".join(lines)


def print_table(ev: dict, cis: dict, task_labels: dict[str, str]) -> None:
    table = Table(title="Base vs SFT vs SFT+DPO (95% CI)")
    for col in ("Metric", "Base", "SFT", "SFT+DPO", "Δ DPO over SFT"):
        table.add_column(col)
    for row in table_rows(ev, cis, task_labels):
        table.add_row(*row)
    Console(width=max(Console().width, 120)).print(table)


def main() -> None:
    params = load_params()
    paths = params.paths
    ev, cis, judge, train = (json.loads(Path(p).read_text()) for p in (
        paths.eval_metrics, paths.eval_ci, paths.judge_metrics, paths.train_metrics))
    labels = get_task(params.task).METRICS
    if "--show" not in sys.argv[1:]:
        records = read_jsonl(paths.eval_outputs, required=("id", "prompt", "base", "sft", "dpo"))
        # Prompts where DPO and SFT were judged different come first: that is where DPO's effect shows.
        changed = [r for r in records if r["pairwise_dpo_vs_sft"]["outcome"] != "tie"]
        examples = (changed + [r for r in records if r not in changed])[:params.report.examples]
        # The pictures sit next to the report, so the markdown's relative links work wherever it is read.
        from stages.figures import bars, curves

        figures = Path(paths.report).parent
        curves(Path(paths.train_live) / "plots" / "metrics", figures / "training_curves.png")
        bars(ev, cis, rate_labels(ev, labels), figures / "eval_bars.png")
        write_text(paths.report, markdown(ev, cis, judge, train, examples, params.report, labels))
        print(f"report: {paths.report} (the table: python -m stages.report --show)")
    else:
        print_table(ev, cis, labels)


if __name__ == "__main__":
    cli.run(main)
