"""The number-summary task's data generator: writes the shipped data/number_summary/ files.

Only tools.make_data imports it (`generate` is what it calls); no stage does, so editing it re-runs no stage
(tests/test_dvc_wiring.py checks). What the stages grade with is number_summary.py.
    python -m tools.make_data        (with `task: number_summary` in params.yaml)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from dpo_pipeline.tasks.number_summary import INSTRUCTION, MAX_WORDS, SUBJECTS
from dpo_pipeline.tasks.synthetic import disjoint_splits


# ---------------------------------------------------------------------------------------------------------
# The paragraphs: an opener naming the subject, 2-3 metric sentences, maybe a closing remark


@dataclass(frozen=True)
class Metric:
    sentences: tuple[str, ...]  # how the source says it
    short: str                  # how a good summary says it
    lossy: str                  # how a careless annotator says it: the second number gone ("": clause gone)
    kinds: tuple[str, ...]      # the value kind of {a} (and {b})


# Value kinds: realistic magnitudes, mostly 1-4 digits, so numbers of different kinds rarely collide.
def _value(kind: str, rng: random.Random) -> str:
    if kind == "small":
        return str(rng.randint(2, 9))
    if kind == "pct":
        return str(rng.randint(2, 45))
    if kind == "count":
        return str(rng.randint(20, 900))
    if kind == "big":
        return str(rng.randint(100, 9000))
    if kind == "dec":
        return f"{rng.randint(1, 9)}.{rng.randint(1, 9)}"
    if kind == "low":
        return f"{rng.randint(0, 3)}.{rng.randint(1, 9)}"
    if kind == "rate":
        return f"{rng.randint(80, 99)}.{rng.randint(1, 9)}"
    raise ValueError(kind)


METRIC_LIST = [
    Metric(("Output {rose} {a}% to {b} units.", "Production {rose} by {a}% to {b} units."),
           "output {up} {a}% to {b} units", "output {up} {a}%", ("pct", "big")),
    Metric(("{a} orders went out, {b}% {more} than last month.",
            "Orders shipped came to {a}, {b}% {more} than before."),
           "{a} orders shipped, {up} {b}%", "{a} orders shipped", ("big", "pct")),
    Metric(("Headcount is now {a} after {b} new hires.", "Headcount reached {a}, including {b} new hires."),
           "headcount {a} after {b} hires", "headcount {a}", ("count", "small")),
    Metric(("On-time delivery reached {a}%.", "{a}% of deliveries arrived on time."),
           "on-time delivery {a}%", "", ("rate",)),
    Metric(("Average wait time {rose} to {a} minutes.", "Callers waited {a} minutes on average."),
           "wait time {a} minutes", "", ("dec",)),
    Metric(("The team closed {a} tickets, with {b} still open.", "{a} tickets were closed and {b} remain open."),
           "{a} tickets closed, {b} open", "{a} tickets closed", ("count", "small")),
    Metric(("Returns were {a}% of sales.", "Customers returned {a}% of items sold."),
           "returns {a}% of sales", "", ("pct",)),
    Metric(("Energy use {rose} {a}% after {b} machines were replaced.",
            "After {b} machines were replaced, energy use {rose} {a}%."),
           "energy {up} {a}%, {b} machines replaced", "energy {up} {a}%", ("pct", "small")),
    Metric(("Downtime totalled {a} hours across {b} lines.", "Machines stood idle for {a} hours on {b} lines."),
           "downtime {a} hours on {b} lines", "downtime {a} hours", ("dec", "small")),
    Metric(("Customer complaints totalled {a}.", "Customers sent {a} complaints."),
           "complaints {a}", "", ("count",)),
    Metric(("Overtime {rose} to {a} hours.", "Staff worked {a} hours of overtime."),
           "overtime {a} hours", "", ("count",)),
    Metric(("The defect rate was {a}%.", "Defects made up {a}% of output."),
           "defect rate {a}%", "", ("low",)),
    Metric(("Staff logged {a} safety incidents.", "There were {a} minor safety incidents."),
           "{a} safety incidents", "", ("small",)),
]
DIRECTION = {"up": {"rose": "rose", "more": "more", "up": "up"},
             "down": {"rose": "fell", "more": "fewer", "up": "down"}}
OPENERS = ["Weekly update from the {s}.", "The {s} sent its monthly figures.",
           "Here are the latest numbers from the {s}.", "The {s} manager shared an update."]
CLOSERS = ["The manager expects a steady month ahead.", "Staff were thanked for their work.",
           "A full review is planned.", "No other changes were reported."]


@dataclass(frozen=True)
class Fact:
    """One metric as stated: its phrasing filled in, the short forms ready for a summary."""

    sentence: str
    short: str
    lossy: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Update:
    subject: str
    facts: tuple[Fact, ...]
    paragraph: str

    @property
    def prompt(self) -> str:
        return f"{self.paragraph}\n{INSTRUCTION.format(n=MAX_WORDS)}"


def reference_summary(update: Update) -> str:
    return f"{update.subject}: " + "; ".join(f.short for f in update.facts) + "."


def random_update(rng: random.Random) -> Update:
    """A random update with 2-4 distinct numbers whose reference summary fits the word limit."""
    while True:
        subject = rng.choice(SUBJECTS)
        metrics = rng.sample(METRIC_LIST, rng.choice([2, 2, 3]))
        facts = []
        for m in metrics:
            vals = tuple(_value(k, rng) for k in m.kinds)
            fill = dict(zip("ab", vals), **DIRECTION[rng.choice(["up", "down"])])
            facts.append(Fact(rng.choice(m.sentences).format(**fill), m.short.format(**fill),
                              m.lossy.format(**fill), vals))
        all_values = [v for f in facts for v in f.values]
        # 2-4 distinct numbers: a dropped clause really loses one, and a good summary still fits the limit
        if not 2 <= len(all_values) <= 4 or len(set(all_values)) < len(all_values):
            continue
        parts = [rng.choice(OPENERS).format(s=subject)] + [f.sentence for f in facts]
        if len(facts) == 2:
            parts.append(rng.choice(CLOSERS))
        update = Update(subject=subject, facts=tuple(facts), paragraph=" ".join(parts))
        if len(reference_summary(update).split()) <= MAX_WORDS:
            return update


# ---------------------------------------------------------------------------------------------------------
# The deterministic data generator, with the flaws a real annotation team leaves

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FILLERS = ["compared with the previous month", "according to the weekly report", "as the manager noted",
           "which is in line with the plan"]
INVENTED = ["over {n} weeks", "across {n} shifts", "from {n} teams"]


def _round_decimal(summary: str, values: list[str]) -> str:
    """'94.5%' -> '95%': the number lost and another invented, the commonest error with decimals."""
    dec = next(v for v in values if "." in v)
    return re.sub(rf"(?<![\d.]){re.escape(dec)}(?!\d)", str(round(float(dec) + 1e-9)), summary, count=1)


def _annotate(update: Update, rng: random.Random) -> str:
    """A flawed annotator's summary: numbers rounded, dropped or spelled out; too long; chatty."""
    facts = list(update.facts)
    values = [v for f in facts for v in f.values]
    # Numbers. Systematic: decimals get rounded, and a four-number paragraph loses its last figure far more
    # often than a short one (annotators keep the headline and cut the tail to fit the limit).
    summary = reference_summary(update)
    r = rng.random()
    drop = 0.35 if len(values) == 4 else 0.12
    small = [v for v in values if len(v) == 1]
    if r < drop:
        last = facts[-1]
        if last.lossy and rng.random() < 0.5:
            facts[-1] = Fact(last.sentence, last.lossy, last.lossy, last.values[:1])
        else:
            facts.pop()
        summary = reference_summary(Update(update.subject, tuple(facts), update.paragraph))
    elif r < drop + 0.06 and small:  # "three hires": a number, but not one a reader can find in the source
        summary = re.sub(rf"(?<![\d.]){small[0]}(?!\d|\.\d)", NUMBER_WORDS[int(small[0])], summary, count=1)
    elif any("." in v for v in values) and rng.random() < 0.2:
        summary = _round_decimal(summary, values)
    # Form. Independent of the numbers: too long, unnamed subject, invented detail, chat habits.
    r = rng.random()
    if r < 0.06:    # over, mostly far over: the paragraph copied instead of summarised
        summary = update.paragraph
    elif r < 0.12:  # just over: padded until it no longer fits
        while len(summary.split()) <= MAX_WORDS:
            summary = summary[:-1] + ", " + rng.choice(FILLERS) + "."
    elif r < 0.17:  # the subject left out, as if the reader knew which site it was
        summary = summary.split(": ", 1)[1]
        summary = summary[0].upper() + summary[1:]
    elif r < 0.20:  # a detail from memory, not from the update
        n = next(str(k) for k in range(2, 10) if str(k) not in values)
        summary = summary[:-1] + " " + rng.choice(INVENTED).format(n=n) + "."
    elif r < 0.22:  # chat habits: a label before, a sign-off after
        summary = "Summary: " + summary
    elif r < 0.235:
        summary = summary + "\nAll figures are from the " + update.subject + " update."
    return summary


def _draw(rng: random.Random) -> tuple[str, Update]:
    update = random_update(rng)
    return update.prompt, update


def generate(seed: int, n_sft: int, n_prompts: int, n_eval: int) -> dict[str, list[dict]]:
    """The shipped splits. A prompt text appears in at most one split."""
    return disjoint_splits(seed, {"eval": n_eval, "prompts": n_prompts, "sft": n_sft}, _draw, _annotate)
