"""The report's pictures: training curves from DVCLive's logs and the 3-way eval as bars with 95% CIs."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from dpo_pipeline.evaluation.schema import MODEL_LABELS, MODELS, Metric, vs_before_key, vs_sft_key  # noqa: E402

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
        if m.scale:  # a reward is on its model's own scale, perhaps below 0: matplotlib's limits
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


def by_round(ev: dict, cis: dict, metrics: list[Metric], trains: list[dict], out: Path) -> None:
    """Iterative DPO: each per-prompt metric from SFT (round 0) through the last round, with 95% CIs; the
    pairwise win rate of each round against SFT and against the round before; and each round's validation
    reward margin beside its KL from SFT on the eval prompts."""
    from dpo_pipeline.rounds import model_key

    n = len(trains)
    xs, names = list(range(n + 1)), ["sft", *(model_key(k) for k in range(1, n + 1))]
    panels = [m for m in metrics if m.per_prompt]
    fig, axes = plt.subplots(1, len(panels) + 2, figsize=(4 * (len(panels) + 2), 3.2))
    for ax, m in zip(axes, panels):
        values = [ev[m.key][name] for name in names]
        ax.errorbar(xs, values, yerr=[[v - cis[m.key][name]["low"] for name, v in zip(names, values)],
                                      [cis[m.key][name]["high"] - v for name, v in zip(names, values)]],
                    fmt="o-", capsize=4)
        ax.set_title(m.label, fontsize=10)
    ax = axes[len(panels)]
    for label, key in (("vs SFT", vs_sft_key), ("vs the round before", vs_before_key)):
        ks = [k for k in range(1, n + 1) if key(k) in ev]
        pws = [ev[key(k)] for k in ks]
        ax.errorbar(ks, [p["win_rate"] for p in pws], yerr=[[p["win_rate"] - p["ci_low"] for p in pws],
                                                           [p["ci_high"] - p["win_rate"] for p in pws]],
                    fmt="o-", capsize=4, label=label)
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_title("Pairwise win rate", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[-1]
    kls = [ev[f"kl_{model_key(k)}_vs_sft"] for k in range(1, n + 1)]
    ax.errorbar(range(1, n + 1), [k["kl"] for k in kls], yerr=[[k["kl"] - k["kl_ci_low"] for k in kls],
                                                               [k["kl_ci_high"] - k["kl"] for k in kls]],
                fmt="o-", capsize=4, color="#c0504d", label="KL from SFT (eval)")
    ax.set_ylabel("nats per sequence", fontsize=8)
    twin = ax.twinx()
    twin.plot(range(1, n + 1), [t["eval_final"]["rewards/margins"] for t in trains], "s--", color="#2f9e6e",
              label="validation reward margin")
    ax.set_title("KL from SFT and reward margin", fontsize=10)
    ax.legend(*[sum(x, []) for x in zip(ax.get_legend_handles_labels(), twin.get_legend_handles_labels())],
              fontsize=8, loc="best")
    for a in axes:
        a.set_xlabel("round (0: SFT)")
        a.set_xticks(xs)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
