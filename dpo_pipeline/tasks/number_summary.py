"""Number summary: summarise a short operations update under a word limit, keeping every number.

Prompt: four short sentences of news from a site or team (2-4 numbers in them), then the instruction line
"Summarise in at most 20 words, keeping every number." Response: one plain line, e.g.
`Leeds depot: output up 12% to 340 units; headcount 45 after 3 hires.`
The written policy (data/number_summary/policy.md) is the ground truth. Everything a judge checks (the word
limit, the source's numbers, the subject) is read from the prompt text, so it never needs a hidden label.
It has no `correct` hook (tasks/__init__.py): a summary has no single right answer, and "every number
kept" is a necessary check, not a label (a summary keeping every number may still break the limit), so a
judge's agreement with ground truth is reported as None here rather than measured against a stand-in.

Regenerate the shipped data (deterministic; the test suite checks the files match):
    python -m tools.make_data        (with `task: number_summary` in params.yaml)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from dpo_pipeline.tasks import disjoint_splits

NAME = "number_summary"
METRICS = {"format_conformance": "Within the word limit", "numbers_kept": "Numbers kept",
           "no_invented_numbers": "No invented numbers"}
MAX_WORDS = 20  # the instruction's limit; a judge reads it back from the prompt, never from here
SLACK = 5       # words over the limit that still count as "slightly over" (rubric 3, not 2)

CITIES = ["Leeds", "Bristol", "Lyon", "Porto", "Oslo", "Gdansk", "Turin", "Bremen", "Cork", "Ghent"]
UNITS = ["depot", "plant", "warehouse", "call centre", "support team"]
SUBJECTS = [f"{c} {u}" for c in CITIES for u in UNITS]

INSTRUCTION = "Summarise in at most {n} words, keeping every number."
INSTRUCTION_RE = re.compile(r"^Summarise in at most (\d+) words\b.*$", re.MULTILINE)
# A number is a whole token: "12" is not in "120", "3.12" or "12.5", but is in "12%" and at a sentence's
# end ("... to 12."). Commas, signs and number words are not numbers here; the generator never writes them.
NUMBER_RE = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?!\d|\.\d)")
# What a chatty model or annotator puts before the summary. Only these openings count as a preamble: the
# reference form "Leeds depot: ..." also has a colon.
PREAMBLE_RE = re.compile(r"^\s*(summary|here is|here's|sure|tl;?dr|in short|in summary)\b", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------
# Reading a prompt back: the limit, the source's numbers, the subject


def word_limit(prompt: str) -> int:
    m = INSTRUCTION_RE.search(prompt)
    return int(m.group(1)) if m else MAX_WORDS


def source_text(prompt: str) -> str:
    """The paragraph to summarise: the prompt without its instruction line (whose limit is not a fact)."""
    return INSTRUCTION_RE.sub("", prompt).strip()


def numbers(text: str) -> list[str]:
    return NUMBER_RE.findall(text)


def subject_of(prompt: str) -> str:
    """The site or team the paragraph is about, or "" for a prompt not from this generator."""
    low = prompt.lower()
    return next((s for s in SUBJECTS if re.search(rf"\b{re.escape(s.lower())}\b", low)), "")


# ---------------------------------------------------------------------------------------------------------
# Scoring a response against the policy


@dataclass(frozen=True)
class Check:
    """What the policy asks of one response, measured."""

    lines: int
    words: int
    limit: int
    missing: list[str]
    invented: list[str]
    kept: float
    preamble: bool
    names_subject: bool


def check(prompt: str, response: str) -> Check:
    text = response.strip()
    in_order = numbers(source_text(prompt))
    source, said = set(in_order), set(numbers(text))
    subject = subject_of(prompt)
    return Check(
        lines=len(text.splitlines()),
        words=len(text.split()),
        limit=word_limit(prompt),
        missing=sorted(source - said, key=in_order.index),
        invented=sorted(said - source),
        kept=len(source & said) / len(source) if source else 1.0,
        preamble=bool(PREAMBLE_RE.match(text)),
        # a prompt outside the generator's vocabulary has no known subject: nothing to name
        names_subject=not subject or subject.lower() in text.lower(),
    )


def rubric_score(prompt: str, response: str) -> tuple[int, str]:
    """Pointwise 1-5 score by the written policy; sees only the prompt and the response.

    The levels keep the usual flaws apart, so a pair of flawed answers is rarely a tie: form broken (1),
    preamble / most numbers lost / far over the limit (2), one number lost or slightly over (3), a number
    invented or the subject unnamed (4).
    """
    c = check(prompt, response)
    if c.lines == 0:
        return 1, "empty response"
    if c.lines > 1:
        return 1, f"{c.lines} lines, not one"
    if c.preamble:
        return 2, "starts with a preamble"
    if c.kept < 0.5:
        return 2, f"keeps under half the numbers (missing {', '.join(c.missing)})"
    if c.words > c.limit + SLACK:
        return 2, f"{c.words} words, far over the limit of {c.limit}"
    if c.missing:
        return 3, f"missing {', '.join(c.missing)}"
    if c.words > c.limit:
        return 3, f"{c.words} words, over the limit of {c.limit}"
    if c.invented:
        return 4, f"numbers not in the source: {', '.join(c.invented)}"
    if not c.names_subject:
        return 4, f"does not name {subject_of(prompt)}"
    return 5, "every number kept, within the limit, names the subject"


def response_metrics(prompt: str, response: str) -> dict[str, float]:
    """Heuristic eval metrics for one response (averaged over prompts by the eval stage)."""
    c = check(prompt, response)
    return {
        "format_conformance": float(c.lines == 1 and c.words <= c.limit),
        "numbers_kept": c.kept,
        "no_invented_numbers": float(not c.invented),
    }


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


def _update(rng: random.Random) -> Update:
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
    update = _update(rng)
    return update.prompt, update


def generate(seed: int, n_sft: int, n_prompts: int, n_eval: int) -> dict[str, list[dict]]:
    """The shipped splits. A prompt text appears in at most one split."""
    return disjoint_splits(seed, {"eval": n_eval, "prompts": n_prompts, "sft": n_sft}, _draw, _annotate)


def pretrain_text(prompt: str, response: str) -> str:
    # The base model reads updates and their summaries as plain documents; it never sees the chat format,
    # which is what SFT teaches.
    return f"{prompt}\n{response}"
