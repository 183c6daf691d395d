"""The markdown a pull request gets: headline metrics with their noise, params and metrics diffs against a
base ref, and the plots diff.

    python -m tools.pr_report BASE [--plots DIR]     (`make pr-report BASE=origin/main`)

Headline: each headline metric of SFT+DPO, this branch vs BASE, and whether the change is beyond noise: the
paired bootstrap CI of the change over the eval prompts both runs share when both runs' per-prompt outputs
are at hand (workspace, DVC cache or remote), else the two runs' own CIs side by side (the line under the
table says which). Then `dvc params diff` and `dvc metrics diff` against BASE; with --plots, also writes
`dvc plots diff BASE` to DIR (the CI workflow uploads it as an artifact and links it from the comment).
"""

from __future__ import annotations

import argparse

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.evaluation.compare import (PairedChange, SideBySide, paired_change, run_ci, shared_prompts,
                                             side_by_side)
from dpo_pipeline.evaluation.schema import PAIRWISE, headline, judged_metric, model_metrics
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.reporting.revisions import committed_json, dvc, output_file
from dpo_pipeline.tasks import get_task

PAIRWISE_LABEL = "Preferred (judge pairwise, DPO vs SFT)"


def evidence(base: str, params: Params, keys: list[tuple[str, str]], runs: dict) -> tuple[dict, str, str]:
    """Per (eval.json key, per-prompt field) of `keys`: the evidence on its change; the CI column's heading;
    the line saying how the evidence was found."""
    paths, why, recs = params.paths, "", {}
    for side, rev, name in (("base", base, f"`{base}`"), ("head", None, "this branch")):
        found, why = output_file(rev, paths.eval_outputs)
        if not found:
            why = f"per-prompt outputs of {name} not available ({why})"
            break
        recs[side] = read_jsonl(found, required=("id",))
    if len(recs) == 2 and (n := shared_prompts(recs["base"], recs["head"])):
        return ({key: paired_change(recs["base"], recs["head"], key, field, params.eval.bootstrap_samples,
                                    params.seed) for key, field in keys}, "95% CI of change",
                f"95% CI of the change: paired bootstrap over the {n} eval prompts both runs share "
                f"({paths.eval_outputs}); beyond noise where it excludes 0.")
    why = why or "the two runs share no eval prompt"
    return ({key: side_by_side(*(run_ci(runs[side], runs[f"{side}_ci"], key) for side in ("base", "head")))
             for key, _ in keys}, "95% CIs, base / this branch",
            f"{why[0].upper()}{why[1:]}: the two runs' 95% CIs side by side. A change counts as beyond noise "
            f"only where they do not overlap; overlapping CIs are not evidence of a change, nor of none.")


def row(label: str, old: float | None, new: float | None, better_up: bool, e: PairedChange | SideBySide | None) -> str:
    change = round(new - old, 4) if old is not None and new is not None else None
    verdict = "" if not change else "better" if (change > 0) == better_up else "worse"
    ci = ("n/a" if e is None else f"[{e.low:+.4f}, {e.high:+.4f}]" if isinstance(e, PairedChange)
          else f"[{e.base[0]:.4f}, {e.base[1]:.4f}] / [{e.head[0]:.4f}, {e.head[1]:.4f}]")
    beyond = "n/a" if e is None else "**yes**" if e.beyond_noise else "no"
    cells = [label, old, new, "n/a" if change is None else f"{change:+.4g}" if change else "0", verdict, ci, beyond]
    return "| " + " | ".join("n/a" if c is None else str(c) for c in cells) + " |"


def headlines(base: str, params: Params) -> list[str]:
    """SFT+DPO's headline metrics, this branch vs base: change, direction, and whether beyond noise."""
    paths = params.paths
    runs = {}  # eval.json and eval_ci.json of each run: "base", "base_ci", "head", "head_ci"
    for side, rev in (("base", base), ("head", None)):
        runs[side], runs[f"{side}_ci"] = committed_json(rev, paths.eval_metrics), committed_json(rev, paths.eval_ci)
    # (eval.json key, per-prompt field, label, higher is better, SFT+DPO's entry under the key)
    rows = [(m.key, m.source_field, m.label, m.higher_is_better, "dpo")
            for m in headline(model_metrics(get_task(params.task), judged_metric(runs["head"])))]
    rows.append((PAIRWISE, "", PAIRWISE_LABEL, True, "win_rate"))
    rows = [r for r in rows if r[0] in runs["base"] or r[0] in runs["head"]]
    if not rows:
        return [f"No headline metric of SFT+DPO in {paths.eval_metrics}."]
    found, heading, method = evidence(base, params, [(key, field) for key, field, *_ in rows], runs)
    lines = [f"| SFT+DPO metric | base | this branch | change | | {heading} | beyond noise? |", "|" + "---|" * 7]
    for key, _, label, better_up, entry in rows:
        old, new = ((runs[side].get(key) or {}).get(entry) for side in ("base", "head"))
        lines.append(row(label, old, new, better_up, found[key]))
    return [*lines, "", method]


def report(base: str, plots_dir: str | None, params: Params) -> str:
    pdiff = dvc("params", "diff", base, "--md")
    table = dvc("metrics", "diff", base, "--md", "--precision", "4")
    lines = [f"## DPO pipeline: this branch vs `{base}`", "",
             "### Headline", "", *headlines(base, params), "",
             "### Params", "", pdiff or "No params changed.", "",
             "### Metrics", "", table or "No metrics changed.", ""]
    if plots_dir:
        dvc("plots", "diff", base, "-o", plots_dir)
        lines += ["### Plots", "", f"`dvc plots diff {base}`: reward margins, accuracies, loss and KL, both revisions "
                  f"on one chart; open `{plots_dir}/index.html` (attached to this run as an artifact).", ""]
    return "\n".join(lines)


def main(params: Params, args: argparse.Namespace) -> None:
    print(report(args.base, args.plots, params))


def parser() -> argparse.ArgumentParser:
    p = cli.tool_parser(__doc__)
    p.add_argument("base", metavar="BASE", help="the git revision to compare with (origin/main, HEAD~1)")
    p.add_argument("--plots", metavar="DIR", help="also write `dvc plots diff BASE` to DIR")
    return p


if __name__ == "__main__":
    cli.run(main, parser())
