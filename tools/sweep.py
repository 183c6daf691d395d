"""Compare a beta sweep: reward margin, KL from the reference and pairwise win rate against beta.

    dvc exp run --queue -S 'train.beta=0.01,0.1,0.5'
    dvc exp run --run-all
    python -m tools.sweep            (writes reports/sweep.md, sweep.png and sweep.csv)
    python -m tools.sweep --check    (also fails unless KL falls from the lowest beta to the highest)
    dvc plots show reports/sweep.csv -x kl -y reward_margin     (the DPO paper's reward-vs-KL frontier)

Reads every experiment and the baseline from `dvc exp show --json`. Not a DVC stage: it reads experiments,
which live outside any one run of the pipeline.
"""

from __future__ import annotations

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


def rows_from(exp_show: list[dict]) -> list[dict]:
    """One row per run (the baseline commit and each experiment) that has train and eval metrics."""
    runs = []
    for commit in exp_show:
        if commit["rev"] == "workspace":
            continue
        runs.append((commit.get("name") or commit["rev"][:7], commit["data"]))
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                runs.append((rev.get("name") or rev["rev"][:7], rev["data"]))
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
    """The runs at the lowest and the highest beta of the sweep."""
    if len({r["beta"] for r in rows}) < 2:
        raise UserError("the sweep needs at least two values of train.beta")
    return rows[0], rows[-1]


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


def main() -> None:
    proc = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"dvc exp show failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")
    rows = rows_from(json.loads(proc.stdout))
    if not rows:
        raise UserError("no experiments with train and eval metrics: run dvc exp run --queue -S "
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
    if "--check" in sys.argv[1:]:
        low, high = kl_trend(rows)
        if not low["kl"] > high["kl"]:
            print(f"sweep: KL at beta {low['beta']} ({low['kl']}) is not above KL at beta {high['beta']} "
                  f"({high['kl']}): a higher beta should anchor the policy closer to the reference", file=sys.stderr)
            sys.exit(1)
        print(f"sweep: KL falls from {low['kl']} at beta {low['beta']} to {high['kl']} at beta {high['beta']}")


if __name__ == "__main__":
    cli.run(main, needs_params=False)
