"""Compare a beta sweep: reward margin, KL from the reference and pairwise win rate against beta.

    dvc exp run --queue -S 'train.beta=0.01,0.1,0.5'
    dvc exp run --run-all
    python -m tools.sweep            (writes reports/sweep.md, sweep.png and sweep.csv)
    python -m tools.sweep --check    (also fails unless KL falls from the lowest beta to the highest)
    dvc plots show reports/sweep.csv -x kl -y reward_margin     (the DPO paper's reward-vs-KL frontier)

Reads the baseline commit and its experiments from `dvc exp show --json`, and takes as the sweep's the
experiments whose params differ from the baseline commit's in train.beta alone: `make seeds`'s seed-N
(train.seed), `make rounds`'s rounds-N, `make real`'s real-smollm2* and any other experiment are left out,
whatever their beta. Not a DVC stage: it reads experiments, which live outside any one run of the pipeline.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from dpo_pipeline import cli
from dpo_pipeline.config import TaskParams
from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.schema import PAIRWISE, headline, model_metrics
from dpo_pipeline.files import write_text
from dpo_pipeline.tasks import get_task

COLUMNS = ("beta", "kl", "kl_max", "reward_margin", "reward_accuracy", "win_rate", "ci_low", "ci_high",
           "task_metrics", "experiment")


def but_beta(data: dict) -> dict:
    """A run's params, every params file, with train.beta taken out."""
    params = {path: copy.deepcopy(f.get("data") or {}) for path, f in (data.get("params") or {}).items()}
    params.get("params.yaml", {}).get("train", {}).pop("beta", None)
    return params


def sweep_runs(exp_show: list[dict]) -> list[tuple[str, dict]]:
    """(name, data) of each baseline commit and each of its experiments whose params differ from the
    commit's in train.beta alone: the beta sweep's runs, and no other kind of experiment."""
    runs = []
    for commit in exp_show:
        if commit["rev"] == "workspace":  # the workspace may be mid-change (make rounds rewrites it)
            continue
        runs.append((commit.get("name") or commit["rev"][:7], commit.get("data") or {}))
        base = but_beta(runs[-1][1])
        for exp in commit.get("experiments") or []:
            runs += [(rev.get("name") or rev["rev"][:7], rev.get("data") or {}) for rev in exp.get("revs") or []
                     if but_beta(rev.get("data") or {}) == base]
    return runs


def rows_from(exp_show: list[dict]) -> list[dict]:
    """One row per run of the sweep (sweep_runs) that has train and eval metrics, sorted by beta."""
    runs = sweep_runs(exp_show)
    rows = []
    for name, data in runs:
        params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
        metrics = {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()}
        train = next((m for p, m in metrics.items() if p.endswith("train.json")), {})
        ev = next((m for p, m in metrics.items() if p.endswith("eval.json")), {})
        if "kl" not in train or PAIRWISE not in ev:
            continue
        pw = ev[PAIRWISE]
        rates = [m.key for m in headline(model_metrics(get_task(TaskParams(**params["task"])))) if m.kind == "rate"]
        rows.append({"beta": params["train"]["beta"], "kl": train["kl"]["final"], "kl_max": train["kl"]["max"],
                     "reward_margin": train["eval_final"]["rewards/margins"],
                     "reward_accuracy": train["eval_final"]["rewards/accuracies"],
                     "win_rate": pw["win_rate"], "ci_low": pw["ci_low"], "ci_high": pw["ci_high"],
                     "task_metrics": ", ".join(f"{k} {ev[k]['dpo']}" for k in rates),
                     "experiment": name})
    return sorted(rows, key=lambda r: (r["beta"], r["experiment"]))


def kl_trend(rows: list[dict]) -> tuple[dict, dict]:
    """The run at the sweep's lowest beta and the run at its highest: where several runs share a beta, the
    lowest-beta run of lowest KL and the highest-beta run of highest KL (KL falling between those two means
    it falls between every such pair)."""
    betas = sorted({r["beta"] for r in rows})
    if len(betas) < 2:
        raise UserError("the sweep needs at least two values of train.beta")
    return (min((r for r in rows if r["beta"] == betas[0]), key=lambda r: r["kl"]),
            max((r for r in rows if r["beta"] == betas[-1]), key=lambda r: r["kl"]))


def markdown(rows: list[dict]) -> str:
    lines = ["# Beta sweep", "",
             "A higher beta anchors the policy to the SFT reference: expect a lower KL. Reward margins are beta "
             "times a log-ratio, so compare them across betas with care.",
             "", "| beta | KL (final / max) | val. reward margin | val. accuracy | pairwise DPO vs SFT | task metrics (SFT+DPO) "
             "| experiment |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['beta']} | {r['kl']} / {r['kl_max']} | {r['reward_margin']} | {r['reward_accuracy']} | "
                     f"{r['win_rate']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}] | {r['task_metrics']} | "
                     f"{r['experiment']} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    proc = subprocess.run([cli.executable("dvc"), "exp", "show", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"dvc exp show failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")
    rows = rows_from(json.loads(proc.stdout))
    if not rows:
        raise UserError("no run of a beta sweep with train and eval metrics: run dvc exp run --queue -S "
                        "'train.beta=0.01,0.1,0.5' and dvc exp run --run-all first")
    from dpo_pipeline.reporting.figures import sweep

    sweep(rows, Path("reports/sweep.png"))
    write_text("reports/sweep.md", markdown(rows) + "\n![Reward margin vs KL, and win rate vs beta](sweep.png)\n")
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text("reports/sweep.csv", out.getvalue())
    print(markdown(rows) + "wrote reports/sweep.md, reports/sweep.png and reports/sweep.csv")
    if args.check:
        low, high = kl_trend(rows)
        at = {side: f"{r['kl']} at beta {r['beta']} ({r['experiment']})" for side, r in (("low", low), ("high", high))}
        if not low["kl"] > high["kl"]:
            print(f"sweep: KL {at['low']} is not above KL {at['high']}: a higher beta should anchor the policy "
                  "closer to the reference", file=sys.stderr)
            sys.exit(1)
        print(f"sweep: KL falls from {at['low']} to {at['high']}")


def parser() -> argparse.ArgumentParser:
    p = cli.tool_parser(__doc__)
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless KL at the lowest beta is above KL at the highest")
    return p


if __name__ == "__main__":
    cli.run(main, parser(), needs_params=False)
