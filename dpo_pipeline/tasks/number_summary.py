"""Number summary: summarise a short operations update under a word limit, keeping every number.

Prompt: four short sentences of news from a site or team (2-4 numbers in them), then the instruction line
"Summarise in at most 20 words, keeping every number." Response: one plain line, e.g.
`Leeds depot: output up 12% to 340 units; headcount 45 after 3 hires.`
The written policy (data/number_summary/policy.md) is the ground truth. Everything a judge checks (the word
limit, the source's numbers, the subject) is read from the prompt text, so it never needs a hidden label.
It has no `correct` hook (tasks/__init__.py): a summary has no single right answer, and "every number
kept" is a necessary check, not a label (a summary keeping every number may still break the limit), so a
judge's agreement with ground truth is reported as None here rather than measured against a stand-in.

The shipped data's generator is number_summary_data.py, which only tools.make_data runs, so editing it
re-runs no stage. Regenerate the shipped data (deterministic; the test suite checks the files match):
    python -m tools.make_data        (with `task: number_summary` in params.yaml)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def pretrain_text(prompt: str, response: str) -> str:
    # The base model reads updates and their summaries as plain documents; it never sees the chat format,
    # which is what SFT teaches.
    return f"{prompt}\n{response}"
