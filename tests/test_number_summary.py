"""The number-summary task: reading the prompt, the rubric, the metrics, and the shipped data."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from dpo_pipeline.files import read_jsonl
from dpo_pipeline.tasks import REQUIRED, get_task
from dpo_pipeline.tasks import number_summary as t
from dpo_pipeline.tasks import number_summary_data as d

PROMPT = ("The Leeds depot sent its monthly figures. Output rose 12% to 340 units. "
          "Headcount is now 45 after 3 new hires. On-time delivery reached 94.5%.\n"
          "Summarise in at most 20 words, keeping every number.")
GOOD = "Leeds depot: output up 12% to 340 units; headcount 45 after 3 hires; on-time delivery 94.5%."


def test_prompt_read_back():
    assert t.word_limit(PROMPT) == 20
    assert t.word_limit(PROMPT.replace("at most 20", "at most 8")) == 8
    assert t.word_limit("no instruction line") == t.MAX_WORDS
    assert t.numbers(t.source_text(PROMPT)) == ["12", "340", "45", "3", "94.5"]  # not the limit's 20
    assert t.subject_of(PROMPT) == "Leeds depot"


@pytest.mark.parametrize("text, want", [
    ("up 12% to 340.", ["12", "340"]),          # a sentence's full stop is not a decimal point
    ("120 and 3.12 and 12.5", ["120", "3.12", "12.5"]),
    ("three hires", []),
])
def test_numbers_are_whole_tokens(text, want):
    assert t.numbers(text) == want


@pytest.mark.parametrize("response, score", [
    ("", 1),
    ("   \n ", 1),
    (GOOD + "\nAll figures are from the Leeds depot update.", 1),           # a second line
    ("Summary: " + GOOD, 2),                                                   # preamble
    ("Leeds depot: output up 12%; headcount steady.", 2),                     # 1 of 5 numbers kept
    (GOOD[:-1] + ", compared with the previous month, according to the weekly report.", 2),  # 26 words
    ("Leeds depot: output up 12% to 340 units; headcount 45 after 3 hires.", 3),  # 94.5 missing
    (GOOD.replace("94.5", "95"), 3),                                          # rounded: lost and invented
    (GOOD.replace("3 hires", "three hires"), 3),                              # spelled out
    (GOOD[:-1] + ", compared with the previous month.", 3),                 # 21 words: slightly over
    (GOOD[:-1] + " over 2 weeks.", 4),                                        # invented number
    ("Output up 12% to 340 units; headcount 45 after 3 hires; on-time delivery 94.5%.", 4),  # no subject
    ("Leeds: output up 12% to 340 units; headcount 45 after 3 hires; on-time delivery 94.5%.", 4),
    (GOOD, 5),
    ("  " + GOOD + "\n", 5),                                                  # surrounding whitespace is fine
    ("LEEDS DEPOT output +12% to 340 units, headcount 45 (3 hires), on-time 94.5%", 5),  # wording is free
])
def test_rubric_score(response, score):
    assert t.rubric_score(PROMPT, response)[0] == score, t.rubric_score(PROMPT, response)


def test_rubric_reads_the_limit_from_the_prompt():
    tight = PROMPT.replace("at most 20", "at most 12")
    assert t.rubric_score(tight, GOOD) == (3, "16 words, over the limit of 12")
    assert t.rubric_score(tight, GOOD + " and so on") == (2, "19 words, far over the limit of 12")


def test_response_metrics():
    assert t.response_metrics(PROMPT, GOOD) == {"format_conformance": 1.0, "numbers_kept": 1.0,
                                                "no_invented_numbers": 1.0}
    # "120" does not keep "12"; and 120 is not in the source
    m = t.response_metrics(PROMPT, GOOD.replace("12%", "120%"))
    assert m == {"format_conformance": 1.0, "numbers_kept": 0.8, "no_invented_numbers": 0.0}
    assert t.response_metrics(PROMPT, GOOD + "\nThanks.")["format_conformance"] == 0.0
    assert t.response_metrics(PROMPT, "")["format_conformance"] == 0.0
    assert t.response_metrics(PROMPT, "")["numbers_kept"] == 0.0
    long = GOOD[:-1] + ", compared with the previous month."
    assert t.response_metrics(PROMPT, long)["format_conformance"] == 0.0
    assert t.response_metrics("Nothing happened.\nSummarise in at most 5 words.", "Nothing happened.") == {
        "format_conformance": 1.0, "numbers_kept": 1.0, "no_invented_numbers": 1.0}
    assert set(m) == set(t.METRICS)


def test_module_satisfies_the_task_protocol():
    from dpo_pipeline.config import TaskParams

    from dpo_pipeline.tasks.synthetic import generator

    cfg = TaskParams(name="number_summary", module="dpo_pipeline/tasks/number_summary.py")
    task = get_task(cfg)
    assert task is t
    assert generator(cfg) is d.generate  # the generator is a file of its own, which no stage runs
    assert not hasattr(t, "generate")
    assert all(hasattr(task, attr) for attr in REQUIRED)
    assert task.NAME == "number_summary"
    assert next(iter(task.METRICS)) == "format_conformance"
    assert t.pretrain_text("p", "r") == "p\nr"


# --- the generator


def test_reference_summaries_score_5():
    """The generator's good answers are what the rubric wants: the two read the same policy."""
    rng = random.Random(3)
    for _ in range(2000):
        update = d.random_update(rng)
        ref = d.reference_summary(update)
        assert t.rubric_score(update.prompt, ref)[0] == 5, (update.prompt, ref)
        assert 2 <= len(t.numbers(t.source_text(update.prompt))) <= 4
        assert t.subject_of(update.prompt) == update.subject


def test_generate_is_deterministic_and_splits_are_disjoint():
    a = d.generate(5, 300, 100, 50)
    assert a == d.generate(5, 300, 100, 50)
    assert a != d.generate(6, 300, 100, 50)
    assert {k: len(v) for k, v in a.items()} == {"eval": 50, "prompts": 100, "sft": 300}
    assert a["sft"][7]["id"] == "sft-00007" and set(a["sft"][0]) == {"id", "prompt", "response"}
    assert set(a["eval"][0]) == {"id", "prompt"}
    sets = {s: {r["prompt"] for r in rows} for s, rows in a.items()}
    assert sum(len(s) for s in sets.values()) == 450  # no prompt twice, within or across splits


# --- the shipped data


@pytest.fixture(scope="module")
def shipped(request) -> dict[str, list[dict]]:
    folder = Path(request.config.rootpath) / "data" / "number_summary"
    return {s: read_jsonl(folder / f"{s}.jsonl") for s in ("sft", "prompts", "eval")}


def test_shipped_data_is_what_the_generator_writes(shipped):
    # tools.make_data's defaults: seed 0, n_sft 4000, n_prompts 1000, n_eval 300
    assert d.generate(0, 4000, 1000, 300) == shipped
    assert (Path(__file__).parents[1] / "data" / "number_summary" / "policy.md").is_file()


def test_sft_data_is_realistically_flawed(shipped):
    """Imperfect enough that a policy judge has something to teach; mostly right, so SFT is useful."""
    rows = shipped["sft"]
    metrics = [t.response_metrics(r["prompt"], r["response"]) for r in rows]
    mean = {k: sum(m[k] for m in metrics) / len(rows) for k in t.METRICS}
    assert 0.75 < mean["format_conformance"] < 0.95
    assert 0.75 < mean["numbers_kept"] < 0.95
    assert 0.8 < mean["no_invented_numbers"] < 0.98
    # The flaws land on different rubric levels, so pairs of flawed answers are rarely ties.
    scores = Counter(t.rubric_score(r["prompt"], r["response"])[0] for r in rows)
    assert set(scores) == {1, 2, 3, 4, 5}
    assert 0.35 < scores[5] / len(rows) < 0.65
    # Systematic, not random: four-number updates lose a number far more often than two-number ones.
    by_count = {n: [t.check(r["prompt"], r["response"]).kept < 1 for r in rows
                    if len(t.numbers(t.source_text(r["prompt"]))) == n] for n in (2, 4)}
    missing = {n: sum(lost) / len(lost) for n, lost in by_count.items()}
    assert missing[4] > 1.5 * missing[2]


ONE_LINE = "Leeds depot: output up 12% to 340 units; headcount 45 after 3 hires; on-time 94.5%."


@pytest.mark.parametrize("response, well_formed, score", [
    (ONE_LINE, True, 5),
    (f"```\n{ONE_LINE}\n```", False, 1),                   # a code fence is more than one line: the policy says one
    (f"Here is the summary: {ONE_LINE}", True, 2),        # a preamble: one line within the limit, scored down
    ("Leeds depot: output up 12% to 340 units; headcount", True, 2),  # cut at max_new_tokens: 3 of 5 lost
    ("", False, 1),
    ("  \n ", False, 1),
])
def test_reading_real_model_responses_follows_the_policy(response, well_formed, score):
    metrics = t.response_metrics(PROMPT, response)  # never raises, whatever the text
    assert metrics["format_conformance"] == float(well_formed)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert t.rubric_score(PROMPT, response)[0] == score
