"""Reading a DPO run the way the workflow asks: reward gap, KL from the reference and pairwise preference
together. Each rule looks at the run's metrics and, when it fires, says what it saw (its evidence) and what
to try. A run where none fires is called healthy, with the evidence for that too.
"""

from __future__ import annotations

from dataclasses import dataclass

from dpo_pipeline.config import ReportParams
from dpo_pipeline.evaluation.schema import LENGTH, PAIRS, PAIRWISE, Metric, headline, pair_label


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
    pw = ev[PAIRWISE]
    if margin < cfg.flat_margin and accuracy < cfg.flat_accuracy:
        findings.append(Finding(
            "no preference learning: beta too high, or contradictory preferences",
            f"validation reward margin {margin} (< {cfg.flat_margin}) and accuracy {accuracy} (< {cfg.flat_accuracy})",
            "lower train.beta (e.g. 0.1 -> 0.05) or raise train.learning_rate / train.epochs; if that does not "
            "help, the preference labels may contradict each other (judge quality, judge.label_noise)"))
    findings += kl_findings(train["kl"], cfg)
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
    lc_low = pw.get("lc_ci_low")  # the win with the length difference controlled for (AlpacaEval 2 style)
    much_longer = dpo_len > cfg.length_ratio * sft_len and pw["win_rate"] > 0.5 and (lc_low is None or lc_low <= 0.5)
    won_by_length = lc_low is not None and pw["ci_low"] > 0.5 >= lc_low and dpo_len > sft_len
    if much_longer or won_by_length:
        controlled = "" if lc_low is None else (f"; length-controlled it is {pw['lc_win_rate']:.1%} "
                                                f"[{lc_low:.1%}, {pw['lc_ci_high']:.1%}]")
        findings.append(Finding(
            "length exploitation",
            f"DPO answers average {dpo_len} tokens vs SFT {sft_len} while winning pairwise {pw['win_rate']:.1%} "
            f"[{pw['ci_low']:.1%}, {pw['ci_high']:.1%}]{controlled}",
            "the judge may reward length: check its verdicts, or add a length penalty to the judge prompt"))
    return findings


def kl_findings(kl: dict, cfg: ReportParams) -> list[Finding]:
    """Drift and spike, called only when the 95% CIs of the KL readings say so: one sampled sequence a prompt
    makes a single reading noisy (runs logged before the CIs existed: the readings themselves)."""
    final_low, final_high = kl.get("final_ci", [kl["final"]] * 2)
    max_low, max_high = kl.get("max_ci", [kl["max"]] * 2)
    shown = lambda v, ci: f"{v} [{ci[0]}, {ci[1]}]"  # noqa: E731
    if final_low > cfg.kl_drift:
        return [Finding("beta too low: KL drift",
                        f"KL from the SFT reference ended at {shown(kl['final'], (final_low, final_high))} nats per "
                        f"sequence: above {cfg.kl_drift} even at its CI's low end",
                        "raise train.beta, lower train.learning_rate, or add train.sft_weight")]
    # A spike: the peak over kl_spike x the final reading, and the two CIs apart (the peak really was higher).
    if kl["max"] > cfg.kl_spike * max(kl["final"], 1e-9) and max_low > final_high and max_low > cfg.kl_drift / 4:
        where = f" at step {kl['max_step']}" if "max_step" in kl else ""
        return [Finding("KL spike",
                        f"KL peaked at {shown(kl['max'], (max_low, max_high))} nats per sequence{where}, over "
                        f"{kl['max'] / max(kl['final'], 1e-9):.1f}x its final {shown(kl['final'], (final_low, final_high))}; "
                        "the two CIs do not overlap",
                        "training was briefly unstable: lower train.learning_rate or lengthen the warmup")]
    return []


def healthy_evidence(ev: dict, cis: dict, train: dict, metrics: list[Metric]) -> str:
    pw = ev[PAIRWISE]
    up, _, _ = significant_moves(cis, metrics)
    return (f"validation reward margin {train['eval_final']['rewards/margins']} (accuracy "
            f"{train['eval_final']['rewards/accuracies']}), KL {train['kl']['final']} nats per sequence at the "
            f"end (max {train['kl']['max']}), pairwise win rate {pw['win_rate']:.1%} [{pw['ci_low']:.1%}, "
            f"{pw['ci_high']:.1%}]{lc_text(pw)}, significant gains: {', '.join(up) or 'none'}")


def lc_text(pw: dict) -> str:
    if pw.get("lc_win_rate") is None:
        return ""
    return f" ({pw['lc_win_rate']:.1%} [{pw['lc_ci_low']:.1%}, {pw['lc_ci_high']:.1%}] length-controlled)"


def reflection(ev: dict, cis: dict, train: dict, metrics: list[Metric]) -> list[str]:
    """The facts to write "What DPO did to my model, and what it didn't" around."""
    up, down, flat = significant_moves(cis, metrics)
    lines = []
    for metric in headline(metrics):
        m, d = ev[metric.key], cis[metric.key]["delta_dpo_sft"]
        verdict = "significant" if metric.name in up + down else "not significant"
        lines.append(f"- {metric.name}: SFT {m['sft']:.3g} -> SFT+DPO {m['dpo']:.3g} ({m['dpo'] - m['sft']:+.3g}, "
                     f"95% CI [{d['low']:+.3g}, {d['high']:+.3g}], {verdict})")
    for key in PAIRS:
        if key in ev:
            pw = ev[key]
            lines.append(f"- pairwise preference {pair_label(key)}: {pw['win_rate']:.1%} [{pw['ci_low']:.1%}, "
                         f"{pw['ci_high']:.1%}]{lc_text(pw)} ({pw['wins']} wins, {pw['losses']} losses, {pw['ties']} ties)")
    lines.append(f"- mean length: {ev[LENGTH.key]['sft']} -> {ev[LENGTH.key]['dpo']} tokens")
    kl = ev["kl_dpo_vs_sft"]
    ci = f" [{kl['kl_ci_low']}, {kl['kl_ci_high']}]" if "kl_ci_low" in kl else ""
    lines.append(f"- KL(SFT+DPO || SFT) on the eval prompts: {kl['kl']}{ci} nats per sequence "
                 f"({kl['kl_per_token']} per token)")
    lines += ["", f"What it did: {', '.join(up) or 'no metric improved significantly'}. "
              f"What it didn't: {', '.join(flat + down) or 'nothing measured here stayed flat or got worse'}. "
              "Your 300 words: why these and not the others? Which preferences in the data taught it that?"]
    return lines
