"""Reading a DPO run the way the workflow asks: reward gap, KL from the reference and pairwise preference
together. Each rule looks at the run's metrics and, when it fires, says what it saw (its evidence) and what
to try. A run where none fires is called healthy, with the evidence for that too.
"""

from __future__ import annotations

from dataclasses import dataclass

from dpo_pipeline.config import ReportParams
from dpo_pipeline.evaluation.schema import LENGTH, PAIRWISE, Metric, headline


@dataclass
class Finding:
    rule: str
    evidence: str
    advice: str


def significant_moves(cis: dict, metrics: list[Metric]) -> tuple[list[str], list[str], list[str]]:
    """Headline metrics whose paired 95% CI of DPO - SFT shows them better, worse, or spans 0 (by each
    metric's declared direction)."""
    better, worse, flat = [], [], []
    for m in headline(metrics):
        delta = cis.get(m.key, {}).get("delta_dpo_sft")
        if delta is None:
            continue
        up, down = (delta["low"] > 0, delta["high"] < 0) if m.higher_is_better else (delta["high"] < 0, delta["low"] > 0)
        (better if up else worse if down else flat).append(m.name)
    return better, worse, flat


def diagnose(ev: dict, cis: dict, train: dict, cfg: ReportParams, metrics: list[Metric]) -> list[Finding]:
    findings = []
    margin, accuracy = train["eval_final"]["rewards/margins"], train["eval_final"]["rewards/accuracies"]
    kl_final, kl_max = train["kl"]["final"], train["kl"]["max"]
    pw = ev[PAIRWISE]
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
    up, down, _ = significant_moves(cis, metrics)
    if up and down:
        findings.append(Finding(
            "DPO wins one metric and loses another",
            f"significantly up: {', '.join(up)}; significantly down: {', '.join(down)}",
            "a single-metric win is not a win: check what the preference data rewards"))
    sft_len, dpo_len = ev[LENGTH.key]["sft"], ev[LENGTH.key]["dpo"]
    if dpo_len > cfg.length_ratio * sft_len and pw["win_rate"] > 0.5:
        findings.append(Finding(
            "length exploitation",
            f"DPO answers average {dpo_len} tokens vs SFT {sft_len} (> {cfg.length_ratio}x) while winning pairwise",
            "the judge may reward length: check its verdicts, or add a length penalty to the judge prompt"))
    return findings


def healthy_evidence(ev: dict, cis: dict, train: dict, metrics: list[Metric]) -> str:
    pw = ev[PAIRWISE]
    up, _, _ = significant_moves(cis, metrics)
    return (f"validation reward margin {train['eval_final']['rewards/margins']} (accuracy "
            f"{train['eval_final']['rewards/accuracies']}), KL {train['kl']['final']} nats per sequence at the "
            f"end (max {train['kl']['max']}), pairwise win rate {pw['win_rate']:.1%} [{pw['ci_low']:.1%}, "
            f"{pw['ci_high']:.1%}], significant gains: {', '.join(up) or 'none'}")


def reflection(ev: dict, cis: dict, train: dict, metrics: list[Metric]) -> list[str]:
    """The facts to write "What DPO did to my model, and what it didn't" around."""
    up, down, flat = significant_moves(cis, metrics)
    lines = []
    for metric in headline(metrics):
        m, d = ev[metric.key], cis[metric.key]["delta_dpo_sft"]
        verdict = "significant" if metric.name in up + down else "not significant"
        lines.append(f"- {metric.name}: SFT {m['sft']:.3g} -> SFT+DPO {m['dpo']:.3g} ({m['dpo'] - m['sft']:+.3g}, "
                     f"95% CI [{d['low']:+.3g}, {d['high']:+.3g}], {verdict})")
    pw = ev[PAIRWISE]
    lines.append(f"- pairwise preference DPO vs SFT: {pw['win_rate']:.1%} [{pw['ci_low']:.1%}, {pw['ci_high']:.1%}] "
                 f"({pw['wins']} wins, {pw['losses']} losses, {pw['ties']} ties)")
    lines.append(f"- mean length: {ev[LENGTH.key]['sft']} -> {ev[LENGTH.key]['dpo']} tokens")
    lines.append(f"- KL(SFT+DPO || SFT) on the eval prompts: {ev['kl_dpo_vs_sft']['kl']} nats per sequence "
                 f"({ev['kl_dpo_vs_sft']['kl_per_token']} per token)")
    lines += ["", f"What it did: {', '.join(up) or 'no metric improved significantly'}. "
              f"What it didn't: {', '.join(flat + down) or 'nothing measured here stayed flat or got worse'}. "
              "Your 300 words: why these and not the others? Which preferences in the data taught it that?"]
    return lines
