"""The incident-triage task: policy, rubric, response parsing, and the shipped data."""

from __future__ import annotations

import json
import random

import pytest

from dpo_pipeline.config import load_params
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.tasks import incident_triage as t
from dpo_pipeline.tasks import incident_triage_data as d
from dpo_pipeline.tasks.synthetic import generator
from tools import make_data


def incident(**kw) -> t.Incident:
    base = dict(service="checkout-api", kind="outage", scope="all", workaround=False, region="")
    return t.Incident(**{**base, **kw})


@pytest.mark.parametrize("inc, want", [
    (incident(kind="data_loss", service="staging-env"), "SEV1"),
    (incident(kind="security", scope="some"), "SEV1"),
    (incident(kind="cosmetic"), "SEV4"),
    (incident(kind="outage", service="build-ci"), "SEV3"),  # internal outage: SEV3, not SEV2
    (incident(kind="outage"), "SEV1"),
    (incident(kind="outage", scope="region", region="eu-west"), "SEV2"),
    (incident(kind="outage", scope="some"), "SEV3"),
    (incident(kind="errors"), "SEV2"),
    (incident(kind="latency", workaround=True), "SEV3"),  # a workaround lowers a customer-wide degradation
    (incident(kind="errors", scope="region", region="us-east"), "SEV3"),
])
def test_policy_rules(inc, want):
    assert t.severity_of(inc) == want


def test_policy_read_from_text_alone_matches_the_incident():
    rng = random.Random(7)
    for _ in range(2000):
        inc = d.random_incident(rng)
        report = d.render_report(inc, rng)
        assert t.policy_severity(report) == t.severity_of(inc), report
        assert t.parse_report(report).service == inc.service


REPORT = "Pager alert. build-ci is completely down. This is an internal tool. No workaround is known."


@pytest.mark.parametrize("response, score", [
    ("not json", 1),
    ('Here is the triage: {"severity": "SEV3", "service": "build-ci", "summary": "build-ci outage"}', 1),
    ('{"severity": "SEV3", "summary": "build-ci outage"}', 1),                             # missing field
    ('{"severity": "SEV5", "service": "build-ci", "summary": "build-ci outage"}', 1),      # not a severity
    ('{"severity": "SEV1", "service": "build-ci", "summary": "build-ci outage"}', 2),      # two levels off
    ('{"severity": "SEV2", "service": "build-ci", "summary": "build-ci outage"}', 3),      # over-escalated
    ('{"severity": "SEV3", "service": "payments", "summary": "payments outage"}', 4),      # wrong service
    ('{"severity": "SEV3", "service": "build-ci", "summary": "outage for staff"}', 4),     # summary lacks it
    ('{"severity": "SEV3", "service": "build-ci", "summary": "build-ci outage ' + "word " * 12 + '"}', 4),
    ('{"severity": "SEV3", "service": "build-ci", "summary": "build-ci outage for staff"}', 5),
])
def test_rubric_score(response, score):
    assert t.rubric_score(REPORT, response)[0] == score


def test_response_metrics():
    good = '{"severity": "SEV3", "service": "build-ci", "summary": "build-ci outage for staff"}'
    assert t.response_metrics(REPORT, good) == {"format_conformance": 1.0, "severity_match": 1.0}
    assert t.response_metrics(REPORT, good.replace("SEV3", "SEV2")) == {"format_conformance": 1.0,
                                                                         "severity_match": 0.0}
    assert t.response_metrics(REPORT, good[:-1]) == {"format_conformance": 0.0, "severity_match": 0.0}


# --- the shipped data


@pytest.fixture(scope="module")
def shipped(request):
    params = load_params(request.config.rootpath / "params.yaml")
    p = params.task_files
    root = request.config.rootpath
    return params, {s: read_jsonl(root / f) for s, f in (("sft", p.sft_data), ("prompts", p.prompts),
                                                         ("eval", p.eval_prompts))}


def test_shipped_data_is_what_the_generator_writes(shipped):
    params, data = shipped
    assert generator(params.task) is d.generate
    assert d.generate(**make_data.DEFAULTS) == data


def test_no_prompt_in_two_splits(shipped):
    _, data = shipped
    sets = {s: {r["prompt"] for r in rows} for s, rows in data.items()}
    assert len(data["prompts"]) >= 500 and len(data["eval"]) >= 200
    assert not sets["sft"] & sets["prompts"]
    assert not sets["sft"] & sets["eval"]
    assert not sets["prompts"] & sets["eval"]


def test_sft_data_is_realistically_flawed(shipped):
    """Imperfect enough that a policy judge has something to teach; mostly right, so SFT is useful."""
    _, data = shipped
    rows = data["sft"]
    match = sum(t.response_metrics(r["prompt"], r["response"])["severity_match"] for r in rows) / len(rows)
    fmt = sum(t.response_metrics(r["prompt"], r["response"])["format_conformance"] for r in rows) / len(rows)
    verbose = sum(len(json.loads(r["response"]).get("summary", "").split()) > t.MAX_SUMMARY_WORDS
                  for r in rows if t.parse_response(r["response"])) / len(rows)
    assert 0.7 < match < 0.9
    assert 0.85 < fmt < 0.99
    assert verbose > 0.05
    # Systematic, not random: internal outages are mostly over-escalated to SEV2.
    internal_outages = [r for r in rows if t.parse_report(r["prompt"]).internal
                        and t.parse_report(r["prompt"]).kind == "outage" and t.parse_response(r["response"])]
    sev2 = sum(t.parse_response(r["response"]).severity == "SEV2" for r in internal_outages)
    assert sev2 / len(internal_outages) > 0.6


# What real models write: the policy's "Reading a response" section, case by case.
GOOD_JSON = '{"severity": "SEV1", "service": "payments", "summary": "payments down"}'
OUTAGE = "The payments service is completely down for all customers. No workaround."


@pytest.mark.parametrize("response, well_formed, severity", [
    (GOOD_JSON, True, "SEV1"),
    (f"```json\n{GOOD_JSON}\n```", True, "SEV1"),                       # one code fence: the same answer
    (f"```\n{GOOD_JSON}\n```", True, "SEV1"),
    (f"Here is the triage:\n{GOOD_JSON}\nLet me know!", False, "SEV1"),  # text around it: found, not well-formed
    (f"Sure! ```json\n{GOOD_JSON}\n```", False, "SEV1"),
    (f"{GOOD_JSON}\n{GOOD_JSON}", False, "SEV1"),                         # two objects
    (GOOD_JSON[:40], False, None),                                        # cut at max_new_tokens
    ('{"note": "thinking"} then ' + GOOD_JSON, False, "SEV1"),            # the first object OF THE SCHEMA
    ("", False, None),
    ("   \n", False, None),
    ("The severity is SEV1 because payments is down.", False, None),     # prose: no answer to read
])
def test_reading_real_model_responses_follows_the_policy(response, well_formed, severity):
    assert (t.parse_response(response) is not None) == well_formed
    found = t.find_answer(response)
    assert (found and found.severity) == severity
    metrics = t.response_metrics(OUTAGE, response)  # never raises, whatever the text
    assert metrics == {"format_conformance": float(well_formed), "severity_match": float(severity == "SEV1")}
    score, reason = t.rubric_score(OUTAGE, response)
    assert 1 <= score <= 5 and reason
    assert (score == 1) == (not well_formed)  # the rubric judges the form first, as the policy reads
