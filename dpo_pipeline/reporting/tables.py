"""The 3-way comparison as rows, as markdown (reports/report.md) and as a terminal table, labelled and
ordered by the metric schema."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from dpo_pipeline.config import ReportParams, TrainParams
from dpo_pipeline.evaluation.schema import (MODELS, PAIRS, PAIRWISE, RELIABILITY, Metric, headline,
                                            model_label, pair_label, vs_sft_key)
from dpo_pipeline.reporting.diagnostics import diagnose, healthy_evidence, reflection
from dpo_pipeline.rounds import round_of

def header(names: tuple[str, ...] = MODELS) -> list[str]:
    """Metric, a column a model (a DPO round each), and the last round's gain over SFT."""
    last = "DPO" if len(names) == 3 else model_label(names[-1])
    return ["Metric", *(model_label(n) for n in names), f"Δ {last} over SFT"]



def table_rows(ev: dict, cis: dict, metrics: list[Metric], names: tuple[str, ...] = MODELS) -> list[list[str]]:
    """[metric, base, sft, dpo (, later rounds), delta] cells; per-prompt metrics with their 95% CI. The delta
    is the last round's over SFT; the pairwise rows give each round against SFT (and, for rounds after the
    first, against the round before)."""
    rows, last, rounds = [], names[-1], names[2:]
    for m in metrics:
        values, ci = ev[m.key], cis.get(m.key)
        cell = lambda name: f"{values[name]:.2f}" + (f" [{ci[name]['low']:.2f}, {ci[name]['high']:.2f}]" if ci else "")  # noqa: E731
        delta = f"{values[last] - values['sft']:+.2f}"
        if ci and f"delta_{last}_sft" in ci:
            delta += f" [{ci[f'delta_{last}_sft']['low']:+.2f}, {ci[f'delta_{last}_sft']['high']:+.2f}]"
        rows.append([m.label, *(cell(name) for name in names), delta])
    vs_sft = lambda n: ev[vs_sft_key(round_of(n))]  # noqa: E731
    pw = vs_sft(last)
    rows.append(["Preferred (judge pairwise, DPO vs SFT)", "-", "-",
                 *(rate(vs_sft(n), "win_rate", "ci_low", "ci_high") for n in rounds),
                 f"{(pw['win_rate'] - 0.5) * 100:+.1f}pp"])
    if "lc_win_rate" in pw:
        rows.append(["Preferred, length-controlled (DPO vs SFT)", "-", "-",
                     *(rate(vs_sft(n), "lc_win_rate", "lc_ci_low", "lc_ci_high") for n in rounds),
                     f"{(pw['lc_win_rate'] - 0.5) * 100:+.1f}pp"])
    if len(rounds) > 1:  # did each round still beat the one before?
        rows.append(["Preferred over the round before", "-", "-", "-",
                     *(rate(ev[f"pairwise_{n}_vs_{b}"], "win_rate", "ci_low", "ci_high")
                       for b, n in zip(rounds, rounds[1:])), "-"])
    if "pairwise_sft_vs_base" in ev:  # did SFT beat base, and DPO too?
        rows.append(["Preferred over Base (judge pairwise)", "-", rate(ev["pairwise_sft_vs_base"], "win_rate", "ci_low", "ci_high"),
                     rate(ev["pairwise_dpo_vs_base"], "win_rate", "ci_low", "ci_high"), *(["-"] * len(rounds))])
    return rows


def rate(pw: dict, value: str, low: str, high: str) -> str:
    return f"{pw[value]:.1%} [{pw[low]:.1%}, {pw[high]:.1%}]"


def pairwise_counts(ev: dict) -> list[str]:
    """Each pair's verdict counts, and how the win rates are computed."""
    keys = [*PAIRS, *(k for k in ev if k.startswith("pairwise_") and k not in PAIRS)]
    lines = [f"Pairwise {pair_label(key)}, judged in both orders: {ev[key]['wins']} wins, {ev[key]['losses']} "
             f"losses, {ev[key]['ties']} ties." for key in keys if key in ev]
    return lines + ["Win rate = (wins + ties/2) / n; length-controlled: a logistic model of the outcome on the "
                    "length difference, predicted at equal lengths (AlpacaEval 2 style)."]


def judge_reliability(trust: dict | None) -> list[str]:
    """The eval judge's reliability rates (dpo_pipeline/judging/reliability.py defines each)."""
    if not trust:
        return ["Not measured in this run."]
    lines = [f"The `{trust['backend']}` judge on the {trust['n']} pairwise items of the eval ({trust['n_valid']} "
             "answered validly in both orders):", ""]
    for key, (label, _) in RELIABILITY.items():
        value = trust.get(key)
        why = {"self_consistency": f"{trust.get('repeats')} items asked again",
               "truth_agreement": f"{trust.get('truth_n')} items with exactly one correct response",
               "reference_agreement": f"against `{trust.get('reference_backend')}`"}.get(key, "lower is better")
        lines.append(f"- {label}: " + ("not measured" if value is None else f"{value:.1%} ({why})"))
    return lines


def preference_data(judge: dict, generated: bool) -> str:
    if not generated:
        return (f"{judge['pairs']} pairs from `{judge['source']}` ({judge['format']} rows, "
                f"{judge['dropped_identical']} with chosen = rejected dropped); nothing sampled or judged here.")
    text = (f"{judge['pairs']} pairs kept from {judge['prompts']} prompts by the `{judge['backend']}` judge; "
            f"{judge['ties']} ties dropped")
    if judge.get("position_consistency") is not None:
        text += f"; position consistency {judge['position_consistency']:.1%}."
    else:
        text += f"; best vs worst of {judge['candidates']} candidates a prompt."
    if gap := judge.get("reward_gap"):  # a reward model's
        text += (f" Reward gap of the kept pairs (best minus worst, on the reward model's own scale): mean "
                 f"{gap['mean']}, median {gap['median']}, from {gap['min']} to {gap['max']}.")
    return text + stops_line(judge.get("usage") or {})


def stops_line(usage: dict) -> str:
    """The judge's answers that were excluded, by why they ended (empty when none was)."""
    parts = [f"{usage[k]} {label}" for k, label in (
        ("refusals", "refused (set judge.refusal_fallback to ask another model)"),
        ("max_tokens_stops", "cut off at max_tokens even with 4x the room (raise judge.max_tokens)"),
        ("other_stops", "ended otherwise")) if usage.get(k)]
    if usage.get("fallback_answers"):
        parts.append(f"{usage['fallback_answers']} answered by the refusal fallback model")
    return f" Judge answers: {'; '.join(parts)}." if parts else ""


def markdown(ev: dict, cis: dict, judge: dict, train: dict, examples: list[dict], cfg: ReportParams,
             metrics: list[Metric], generated: bool, seeds_line: str = "", names: tuple[str, ...] = MODELS,
             rounds_section: list[str] = ()) -> str:
    head = header(names)
    lines = ["# Base vs SFT vs SFT+DPO" + (f", {len(names) - 2} rounds" if len(names) > 3 else ""), "",
             f"{ev['n_prompts']} held-out prompts; 95% bootstrap CIs over prompts in brackets. {seeds_line}".strip(), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(ev, cis, metrics, names)]
    lines += ["", "![Base vs SFT vs SFT+DPO, 95% CIs](eval_bars.png)", "",
              *pairwise_counts(ev), "",
              "Every eval answer and preference pair side by side, with filters: [report.html](report.html) "
              "(open it in a browser).", "",
              "## Preference data", "", preference_data(judge, generated), "",
              "## DPO training", "", "![Training curves](training_curves.png)", "",
              f"- Reward margin: {train['first_step']['rewards/margins']} at the first step (the reference is the "
              f"SFT model) -> {train['final']['rewards/margins']} at the end; reward accuracy "
              f"{train['final']['rewards/accuracies']}.",
              f"- Validation ({train['pairs_eval']} held-out pairs): reward gap "
              f"{train['eval_first']['rewards/margins']} -> {train['eval_final']['rewards/margins']}, accuracy "
              f"{train['eval_final']['rewards/accuracies']}.",
              f"- KL from the SFT reference: {train['kl']['final']}{ci_text(train['kl'].get('final_ci'))} nats per "
              f"sequence at the end (max {train['kl']['max']}{ci_text(train['kl'].get('max_ci'))}); on the eval prompts KL(SFT+DPO || SFT) = {ev['kl_dpo_vs_sft']['kl']}"
              f"{kl_ci(ev['kl_dpo_vs_sft'])}. Brackets: 95% bootstrap CIs over the sampled sequences "
              "(one a prompt); the curve's band is the same.", "",
              *rounds_section,
              "## Judge reliability", "", *judge_reliability(ev.get("judge_reliability")), "",
              "## Diagnostics", ""]
    findings = diagnose(ev, cis, train, cfg, metrics)
    lines += [f"- **{f.rule}**: {f.evidence}. Try: {f.advice}." for f in findings] or [
        f"- **Healthy run**: {healthy_evidence(ev, cis, train, metrics)}."]
    lines += ["", "## Examples", ""]
    judged = next(m for m in metrics if m.source == "judge")  # faithfulness 1-5, or a reward model's reward
    for ex in examples:
        lines += [f"**{ex['id']}**: {ex['prompt']}", "", f"| Model | Output | {judged.kind.title()} |", "|---|---|---|"]
        for name in names:
            text = ex[name]["text"].replace("|", "\\|").replace("\n", " ")
            value = ex[name][judged.source_field]  # a reward to 4 decimals; a 1-5 score as it is
            lines.append(f"| {model_label(name)} | `{text}` | {f'{value:.4f}' if isinstance(value, float) else value} |")
        lines.append("")
    lines += ["## What DPO did to my model, and what it didn't", "", *reflection(ev, cis, train, metrics), ""]
    return "\n".join(lines)


def ci_text(ci: list | None) -> str:
    return f" [{ci[0]}, {ci[1]}]" if ci else ""


def kl_ci(kl: dict) -> str:
    return f" [{kl['kl_ci_low']}, {kl['kl_ci_high']}]" if "kl_ci_low" in kl else ""


def model_card(card: str, ev: dict, cis: dict, judge: dict, metrics: list[Metric], generated: bool,
               names: tuple[str, ...] = MODELS) -> str:
    """The DPO adapter's card as the train stage wrote it, with the judge and the 3-way eval that come after
    training: the card to publish with the adapter (`paths.reports`/model_card.md)."""
    head = header(names)
    return "\n".join([card.rstrip("\n"), "", "## Evaluation: base vs SFT vs SFT+DPO", "",
                      f"{ev['n_prompts']} held-out prompts of the task, the same decoding and seeds for each model; "
                      "95% bootstrap CIs over prompts in brackets.", "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in table_rows(ev, cis, metrics, names)), "",
                      "Preference data: " + preference_data(judge, generated), ""])


def print_table(ev: dict, cis: dict, metrics: list[Metric], names: tuple[str, ...] = MODELS) -> None:
    table = Table(title="Base vs SFT vs SFT+DPO (95% CI)")
    for col in header(names):
        table.add_column(col)
    for row in table_rows(ev, cis, metrics, names):
        table.add_row(*row)
    Console(width=max(Console().width, 120)).print(table)


def headline_metrics(ev: dict, metrics: list[Metric], train: TrainParams) -> dict:
    """metrics/headline.json, the first metrics file dvc.yaml declares, so `dvc exp show` opens with it: DPO's
    win rate over SFT with its 95% CI, each metric with a direction for SFT and SFT+DPO, DPO's KL from SFT,
    and the two settings a sweep varies most (their params columns are far to the right)."""
    pw = ev[PAIRWISE]
    out: dict = {"dpo_vs_sft": {k: pw[k] for k in ("win_rate", "ci_low", "ci_high")}}
    # Labelled as the report labels them ("SFT+DPO"): eval.json's "sft"/"dpo" keys would make DVC prefix
    # every such column with its file name, the same path being in two files.
    out |= {m.key: {model_label(name): ev[m.key][name] for name in ("sft", "dpo")} for m in headline(metrics)}
    if "kl_dpo_vs_sft" in ev:
        out["kl"] = ev["kl_dpo_vs_sft"]["kl"]
    return out | {"beta": train.beta, "lr": train.learning_rate}
