"""The report's pictures: training curves from DVCLive's logs and the 3-way eval as bars with 95% CIs."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

CURVES = {  # title: [(file under the DVCLive plots folder, label)]
    "DPO loss": [("loss.tsv", "train"), ("eval/loss.tsv", "validation")],
    "Reward margin": [("rewards/margins.tsv", "train"), ("eval/rewards/margins.tsv", "validation")],
    "Reward accuracy": [("rewards/accuracies.tsv", "train"), ("eval/rewards/accuracies.tsv", "validation")],
    "KL from the SFT reference (nats/sequence)": [("kl.tsv", "policy vs reference")],
}
BARS = {"format_conformance": "Format conformance", "severity_match": "Severity match"}


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
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def bars(ev: dict, cis: dict, out: Path) -> None:
    models, labels = ("base", "sft", "dpo"), ("Base", "SFT", "SFT+DPO")
    fig, axes = plt.subplots(1, len(BARS) + 1, figsize=(4 * (len(BARS) + 1), 3.2))
    panels = [*BARS.items(), ("faithfulness", "Faithfulness (judge, 1-5)")]
    for ax, (key, title) in zip(axes, panels):
        values = [ev[key][m] for m in models]
        errors = [[v - cis[key][m]["low"] for m, v in zip(models, values)],
                  [cis[key][m]["high"] - v for m, v in zip(models, values)]]
        ax.bar(labels, values, yerr=errors, capsize=4, color=["#999999", "#5b8fd6", "#2f9e6e"])
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 5 if key == "faithfulness" else 1)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
