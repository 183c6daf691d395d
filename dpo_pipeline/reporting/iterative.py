"""The report's section on iterative DPO (`rounds` > 1): each round's data, training and result against SFT
and against the round before, KL from SFT round by round, and the rules that say when a round stopped
helping or drifted."""

from __future__ import annotations

from dpo_pipeline.config import ReportParams
from dpo_pipeline.evaluation.schema import Metric, headline, model_label, vs_before_key, vs_sft_key
from dpo_pipeline.reporting import tables
from dpo_pipeline.reporting.diagnostics import Finding
from dpo_pipeline.rounds import model_key


def vs_sft(ev: dict, k: int) -> dict:
    return ev[vs_sft_key(k)]


def vs_before(ev: dict, k: int) -> dict | None:
    return ev.get(vs_before_key(k)) if k > 1 else None


def kl_from_sft(ev: dict, k: int) -> dict:
    return ev[f"kl_{model_key(k)}_vs_sft"]


def rate(pw: dict | None, lc: bool = False) -> str:
    """tables.rate, or "-" where the pair was not judged (no win rate)."""
    keys = ("lc_win_rate", "lc_ci_low", "lc_ci_high") if lc else ("win_rate", "ci_low", "ci_high")
    return tables.rate(pw, *keys) if pw and pw.get(keys[0]) is not None else "-"


def moves_over_before(cis: dict, metrics: list[Metric], k: int) -> tuple[list[str], list[str]]:
    """Round k's headline metrics that the paired 95% CI against round k-1 shows better, and worse."""
    better, worse = [], []
    for m in headline(metrics):
        d = cis.get(m.key, {}).get(f"delta_{model_key(k)}_{model_key(k - 1)}")
        if d is not None:
            up, down = (d["low"] > 0, d["high"] < 0) if m.higher_is_better else (d["high"] < 0, d["low"] > 0)
            (better if up else worse if down else []).append(m.name)
    return better, worse


def findings(ev: dict, cis: dict, metrics: list[Metric], rounds: int, cfg: ReportParams) -> list[Finding]:
    """Per round after the first, against the round before: it lost pairwise (CI below 50%) or on a headline
    metric with none better: worse; neither the pairwise verdict (CI reaches 50%) nor any headline metric
    (paired CIs) shows a gain: it stopped helping, and if KL from SFT grew meanwhile (the CIs apart), while
    drifting; and KL from SFT past the drift threshold."""
    out = []
    for k in range(2, rounds + 1):
        pw, kl, kl_before = vs_before(ev, k), kl_from_sft(ev, k), kl_from_sft(ev, k - 1)
        name, before = model_label(model_key(k)), model_label(model_key(k - 1))
        better, worse = moves_over_before(cis, metrics, k)
        counts = f"{pw['wins']} wins, {pw['losses']} losses, {pw['ties']} ties"
        if pw["ci_high"] < 0.5 or (worse and not better):
            out.append(Finding(f"round {k} made the model worse",
                               f"{name} vs {before}: {rate(pw)} ({counts})"
                               + (f"; significantly worse: {', '.join(worse)}" if worse else ""),
                               f"stop at round {k - 1}; or raise train.beta / lower train.learning_rate for later "
                               "rounds, and check the new pairs (rounds/<k>/judge.json: ties, pairs kept)"))
        elif pw["ci_low"] <= 0.5 and not better:
            grew = kl["kl_ci_low"] > kl_before["kl_ci_high"]
            n = pw["wins"] + pw["losses"] + pw["ties"]
            tied = pw["ties"] > 0.8 * n  # the judge sees no difference on most prompts: a ceiling, not harm
            out.append(Finding(
                f"round {k} stopped helping" + (" while drifting from SFT" if grew else ""),
                f"{name} vs {before}: {rate(pw)}, the CI reaches 50% ({counts}), and no headline metric is "
                "significantly better"
                + (f"; KL from SFT grew from {kl_before['kl']} [{kl_before['kl_ci_low']}, {kl_before['kl_ci_high']}] "
                   f"to {kl['kl']} [{kl['kl_ci_low']}, {kl['kl_ci_high']}] nats per sequence" if grew else ""),
                (f"the judge finds the two rounds' answers equal on {pw['ties']} of {n} prompts: round {k - 1} is "
                 "near this judge's ceiling; more rounds need harder prompts or a finer judge" if tied else
                 f"stop at round {k - 1}: the new pairs teach little the last round had not learnt") +
                "; iterate.prompts fresh or higher sample.temperatures give more varied pairs"))
        if kl["kl_ci_low"] > cfg.kl_drift:
            out.append(Finding(f"round {k} drifted from SFT",
                               f"KL({name} || SFT) {kl['kl']} [{kl['kl_ci_low']}, {kl['kl_ci_high']}] nats per "
                               f"sequence, above {cfg.kl_drift} even at its CI's low end",
                               "iterate.reference sft keeps every round's KL anchored to the SFT model; or raise "
                               "train.beta"))
    return out


def gains_over_before(ev: dict, cis: dict, metrics: list[Metric], k: int) -> str:
    """Round k's headline metrics against round k-1's: the paired difference over prompts, with its 95% CI."""
    this, before = model_key(k), model_key(k - 1)
    parts = []
    for m in headline(metrics):
        d = cis.get(m.key, {}).get(f"delta_{this}_{before}")
        if d is not None:
            parts.append(f"{m.name} {ev[m.key][this] - ev[m.key][before]:+.3g} [{d['low']:+.3g}, {d['high']:+.3g}]")
    return f"- Round {k} over round {k - 1} (paired over prompts, 95% CI): {', '.join(parts)}."


def section(ev: dict, cis: dict, metrics: list[Metric], rounds: list[dict], cfg: ReportParams) -> list[str]:
    """rounds: [{"round": k, "judge": judge.json, "train": train.json}, ...] from round 1 on."""
    n = len(rounds)
    lines = [f"## Iterative DPO: {n} rounds", "",
             "Round 1 samples from the SFT model; round k samples from round k-1's policy, is judged by the same "
             "judge and trains a new adapter on top of it. All rounds are evaluated on the same held-out prompts.",
             "", "![Metrics, win rates, reward and KL by round](rounds.png)", "",
             "| Round | Pairs | Validation reward margin (accuracy) | KL from its reference (train) | KL from SFT (eval) "
             "| vs SFT | vs SFT, length-controlled | vs the round before |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        k, train, judge = r["round"], r["train"], r["judge"]
        kl = kl_from_sft(ev, k)
        lines.append(f"| {k} | {judge['pairs']} of {judge['prompts']} prompts | "
                     f"{train['eval_final']['rewards/margins']} ({train['eval_final']['rewards/accuracies']}) | "
                     f"{train['kl']['final']} | {kl['kl']} [{kl['kl_ci_low']}, {kl['kl_ci_high']}] | "
                     f"{rate(vs_sft(ev, k))} | {rate(vs_sft(ev, k), lc=True)} | {rate(vs_before(ev, k))} |")
    found = findings(ev, cis, metrics, n, cfg)
    lines += ["", *(gains_over_before(ev, cis, metrics, k) for k in range(2, n + 1)), ""]
    lines += [*([f"- **{f.rule}**: {f.evidence}. Try: {f.advice}." for f in found] or [
        "- **Every round helped**: against the round before, " + "; ".join(
            f"round {k} preferred pairwise {rate(vs_before(ev, k))}, significantly better on "
            f"{', '.join(moves_over_before(cis, metrics, k)[0]) or 'no headline metric'}" for k in range(2, n + 1))
        + "."]), ""]
    return lines
