"""Reading a DPO run the way the workflow asks: reward gap, KL from the reference and pairwise preference
together. Each rule looks at the run's metrics and, when it fires, says what it saw (its evidence) and what
to try. A run where none fires is called healthy, with the evidence for that too.
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.config import ReportParams
from stages.stats import task_metric_keys



def metric_names(ev: dict) -> dict[str, str]:
    return {**{k: k.replace("_", " ") for k in task_metric_keys(ev)}, "faithfulness": "faithfulness"}


@dataclass
class Finding:
    rule: str
    evidence: str
    advice: str


def significant_moves(ev: dict, cis: dict) -> tuple[list[str], list[str], list[str]]:
    """Metrics whose paired 95% CI of DPO - SFT lies above 0, below 0, or spans it."""
    up, down, flat = [], [], []
    for key, name in metric_names(ev).items():
        delta = cis.get(key, {}).get("delta_dpo_sft")
        if delta is None:
            continue
        (up if delta["low"] > 0 else down if delta["high"] < 0 else flat).append(name)
    return up, down, flat


def diagnose(ev: dict, cis: dict, train: dict, cfg: ReportParams) -> list[Finding]:
    findings = []
    margin, accuracy = train["eval_final"]["rewards/margins"], train["eval_final"]["rewards/accuracies"]
    kl_final, kl_max = train["kl"]["final"], train["kl"]["max"]
    pw = ev["pairwise_dpo_vs_sft"]
    if margin < cfg.flat_margin and accuracy < cfg.flat_accuracy:
        findings.append(Finding(
            "no preference learning: beta too high, or contradictory preferences",
            f"validation reward margin {margin} (< {cfg.flat_margin}) and accuracy {accuracy} (< {cfg.flat_accuracy})",
            "lower train.beta (e.g. 0.1 -> 0.05) or raise train.learning_rate / train.epochs; if that does not "
            "help, the preference labels may contradict each other (judge quality, judge.label_noise)"))
    if kl_final > cfg.kl_drift:
        findings.append(Finding(
            "beta too low: KL drift",
            f"KL from the SFT reference ended at {kl_final} nats per sequence (> {cfg.kl_drift})",
            "raise train.beta, lower train.learning_rate, or add train.sft_weight"))
    elif kl_max > cfg.kl_spike * max(kl_final, 1e-9) and kl_max > cfg.kl_drift / 4:
        findings.append(Finding(
            "KL spike",
            f"KL peaked at {kl_max} nats per sequence, {kl_max / max(kl_final, 1e-9):.1f}x its final {kl_final}",
            "training was briefly unstable: lower train.learning_rate or lengthen the warmup"))
    if margin >= cfg.flat_margin and pw["ci_low"] <= 0.5:
        findings.append(Finding(
            "reward gap grew but DPO did not win pairwise: preference data may be off",
            f"validation reward margin {margin}, yet pairwise win rate {pw['win_rate']:.1%} with CI low "
            f"{pw['ci_low']:.1%} <= 50%",
            "read artifacts/preferences.jsonl: does the judge prefer what you want? (judge quality, ties)"))
    up, down, _ = significant_moves(ev, cis)
    if up and down:
        findings.append(Finding(
            "DPO wins one metric and loses another",
            f"significantly up: {', '.join(up)}; significantly down: {', '.join(down)}",
            "a single-metric win is not a win: check what the preference data rewards"))
    sft_len, dpo_len = ev["mean_tokens"]["sft"], ev["mean_tokens"]["dpo"]
    if dpo_len > cfg.length_ratio * sft_len and pw["win_rate"] > 0.5:
        findings.append(Finding(
            "length exploitation",
            f"DPO answers average {dpo_len} tokens vs SFT {sft_len} (> {cfg.length_ratio}x) while winning pairwise",
            "the judge may reward length: check its verdicts, or add a length penalty to the judge prompt"))
    return findings


def healthy_evidence(ev: dict, cis: dict, train: dict) -> str:
    pw = ev["pairwise_dpo_vs_sft"]
    up, _, _ = significant_moves(ev, cis)
    return (f"validation reward margin {train['eval_final']['rewards/margins']} (accuracy "
            f"{train['eval_final']['rewards/accuracies']}), KL {train['kl']['final']} nats per sequence at the "
            f"end (max {train['kl']['max']}), pairwise win rate {pw['win_rate']:.1%} [{pw['ci_low']:.1%}, "
            f"{pw['ci_high']:.1%}], significant gains: {', '.join(up) or 'none'}")


def reflection(ev: dict, cis: dict, train: dict) -> list[str]:
    """The facts to write "What DPO did to my model, and what it didn't" around."""
    up, down, flat = significant_moves(ev, cis)
    lines = []
    for key, name in metric_names(ev).items():
        m, d = ev[key], cis[key]["delta_dpo_sft"]
        verdict = "significant" if name in up + down else "not significant"
        lines.append(f"- {name}: SFT {m['sft']:.3g} -> SFT+DPO {m['dpo']:.3g} ({m['dpo'] - m['sft']:+.3g}, 95% CI "
                     f"[{d['low']:+.3g}, {d['high']:+.3g}], {verdict})")
    pw = ev["pairwise_dpo_vs_sft"]
    lines.append(f"- pairwise preference DPO vs SFT: {pw['win_rate']:.1%} [{pw['ci_low']:.1%}, {pw['ci_high']:.1%}] "
                 f"({pw['wins']} wins, {pw['losses']} losses, {pw['ties']} ties)")
    lines.append(f"- mean length: {ev['mean_tokens']['sft']} -> {ev['mean_tokens']['dpo']} tokens")
    lines.append(f"- KL(SFT+DPO || SFT) on the eval prompts: {ev['kl_dpo_vs_sft']['kl']} nats per sequence "
                 f"({ev['kl_dpo_vs_sft']['kl_per_token']} per token)")
    lines += ["", f"What it did: {', '.join(up) or 'no metric improved significantly'}. "
              f"What it didn't: {', '.join(flat + down) or 'nothing measured here stayed flat or got worse'}. "
              "Your 300 words: why these and not the others? Which preferences in the data taught it that?"]
    return lines
