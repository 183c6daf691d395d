"""The report's pictures: training curves from DVCLive's logs and the 3-way eval as bars with 95% CIs."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from dpo_pipeline.evaluation.schema import MODEL_LABELS, MODELS, Metric  # noqa: E402

CURVES = {  # title: [(file under the DVCLive plots folder, label)]
    "DPO loss": [("loss.tsv", "train"), ("eval/loss.tsv", "validation")],
    "Reward margin": [("rewards/margins.tsv", "train"), ("eval/rewards/margins.tsv", "validation")],
    "Reward accuracy": [("rewards/accuracies.tsv", "train"), ("eval/rewards/accuracies.tsv", "validation")],
    "KL from the SFT reference (nats/sequence)": [("kl.tsv", "policy vs reference")],
}


def read_tsv(path: Path) -> tuple[list[float], list[float]]:
    with path.open() as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    return [float(r[0]) for r in rows], [float(r[1]) for r in rows]


def curves(plots_dir: Path, out: Path) -> None:
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    for ax, (title, series) in zip(axes, CURVES.items()):
        for name, label in series:
            if (plots_dir / name).exists():
                ax.plot(*read_tsv(plots_dir / name), label=label, marker="." if "eval" in name else None)
            low, high = plots_dir / name.replace(".tsv", "_ci_low.tsv"), plots_dir / name.replace(".tsv", "_ci_high.tsv")
            if low.exists() and high.exists():  # a measured series' 95% CI, as a band
                (steps, lows), (_, highs) = read_tsv(low), read_tsv(high)
                ax.fill_between(steps, lows, highs, alpha=0.25, label="95% CI")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def bars(ev: dict, cis: dict, metrics: list[Metric], out: Path) -> None:
    """One panel per per-prompt metric (the task's rates, the judge's score), on its declared scale."""
    panels = [m for m in metrics if m.per_prompt]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, m in zip(axes, panels):
        values = [ev[m.key][name] for name in MODELS]
        errors = [[v - cis[m.key][name]["low"] for name, v in zip(MODELS, values)],
                  [cis[m.key][name]["high"] - v for name, v in zip(MODELS, values)]]
        ax.bar([MODEL_LABELS[name] for name in MODELS], values, yerr=errors, capsize=4,
               color=["#999999", "#5b8fd6", "#2f9e6e"])
        ax.set_title(m.label, fontsize=10)
        ax.set_ylim(0, m.scale[1])
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def sweep(rows: list[dict], out: Path) -> None:
    """The DPO paper's frontier: reward margin against KL, one point per run labelled by beta; and the
    pairwise win rate (with its CI) against beta."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.scatter([r["kl"] for r in rows], [r["reward_margin"] for r in rows])
    for r in rows:
        left.annotate(f"β={r['beta']}", (r["kl"], r["reward_margin"]), fontsize=8, xytext=(4, 4),
                      textcoords="offset points")
    left.set_xlabel("KL from the SFT reference (nats/sequence)")
    left.set_ylabel("validation reward margin")
    right.errorbar([r["beta"] for r in rows], [r["win_rate"] for r in rows],
                   yerr=[[r["win_rate"] - r["ci_low"] for r in rows], [r["ci_high"] - r["win_rate"] for r in rows]],
                   fmt="o", capsize=4)
    right.axhline(0.5, color="grey", linewidth=0.8)
    right.set_xscale("log")
    right.set_xlabel("beta")
    right.set_ylabel("pairwise win rate, DPO vs SFT")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
