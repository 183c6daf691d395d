"""The markdown a pull request gets: params and metrics diffs against a base ref, and the plots diff.

    python -m tools.pr_report BASE [--plots DIR]     (`make pr-report BASE=origin/main`)

Prints `dvc params diff` and `dvc metrics diff` against BASE as markdown; with --plots, also writes
`dvc plots diff BASE` to DIR (the CI workflow uploads it as an artifact and links it from the comment).
"""

from __future__ import annotations

import subprocess
import sys

import json

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.schema import PAIRWISE, Metric, headline, model_metrics
from dpo_pipeline.tasks import get_task


def dvc(*args: str) -> str:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"dvc {' '.join(args)}: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
    return proc.stdout.strip()


def headlines(diff: dict, eval_path: str, metrics: list[Metric]) -> list[str]:
    """SFT+DPO's headline metrics that changed, labelled and judged by their declared direction."""
    changed = diff.get(eval_path, {})
    rows = []
    for key, label, better_up in [(f"{m.key}.dpo", m.label, m.higher_is_better) for m in headline(metrics)] + \
            [(f"{PAIRWISE}.win_rate", "Preferred (judge pairwise, DPO vs SFT)", True)]:
        d = changed.get(key)
        if not d or d.get("diff") in (None, 0):
            continue
        verdict = "better" if (d["diff"] > 0) == better_up else "worse"
        rows.append(f"| {label} | {d['old']} | {d['new']} | {d['diff']:+.4g} | {verdict} |")
    if not rows:
        return ["No headline metric of SFT+DPO changed."]
    return ["| SFT+DPO metric | base | this branch | change | |", "|---|---|---|---|---|", *rows]


def report(base: str, plots_dir: str | None, eval_path: str, metrics: list[Metric]) -> str:
    params = dvc("params", "diff", base, "--md")
    table = dvc("metrics", "diff", base, "--md", "--precision", "4")
    diff = json.loads(dvc("metrics", "diff", base, "--json") or "{}")
    lines = [f"## DPO pipeline: this branch vs `{base}`", "",
             "### Headline", "", *headlines(diff, eval_path, metrics), "",
             "### Params", "", params or "No params changed.", "",
             "### Metrics", "", table or "No metrics changed.", ""]
    if plots_dir:
        dvc("plots", "diff", base, "-o", plots_dir)
        lines += ["### Plots", "", f"`dvc plots diff {base}`: reward margins, accuracies, loss and KL, both revisions "
                  f"on one chart; open `{plots_dir}/index.html` (attached to this run as an artifact).", ""]
    return "\n".join(lines)


def main(params: Params) -> None:
    args = sys.argv[1:]
    if not args:
        raise UserError("usage: python -m tools.pr_report BASE [--plots DIR]")
    plots = args[args.index("--plots") + 1] if "--plots" in args else None
    print(report(args[0], plots, params.paths.eval_metrics, model_metrics(get_task(params.task))))


if __name__ == "__main__":
    cli.run(main)
