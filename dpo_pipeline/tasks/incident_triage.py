"""Incident triage: what the stages grade the embedded task's responses with lives in this module.

Prompt: a short incident report. Response: one JSON object
`{"severity": "SEV1".."SEV4", "service": ..., "summary": ...}`.
The written policy (data/policy.md) is the ground truth; `policy_severity` applies it to the report text,
so a judge never needs a hidden label.

The shipped data's generator is incident_triage_data.py, which only tools.make_data runs, so editing it
re-runs no stage. Regenerate the shipped data (deterministic; the test suite checks the files match):
    python -m tools.make_data
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

NAME = "incident_triage"
METRICS = {"format_conformance": "Format conformance", "severity_match": "Severity match"}
SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4")
MAX_SUMMARY_WORDS = 12  # the policy's "one short line"

CUSTOMER_SERVICES = ["checkout-api", "payments", "login", "search", "mobile-app", "web-frontend",
                     "notifications", "video-streaming", "orders", "cart"]
INTERNAL_SERVICES = ["build-ci", "internal-wiki", "metrics-dashboard", "hr-portal", "log-pipeline",
                     "staging-env"]
REGIONS = ["eu-west", "us-east", "ap-south", "sa-east"]


class Triage(BaseModel):
    """The response schema: a response is well-formed iff it is exactly one JSON object of this shape."""

    model_config = ConfigDict(extra="forbid", strict=True)
    severity: Literal["SEV1", "SEV2", "SEV3", "SEV4"]
    service: str
    summary: str


@dataclass(frozen=True)
class Incident:
    service: str
    kind: str
    scope: str  # all | region | some  (internal services are always "staff")
    workaround: bool
    region: str = ""

    @property
    def internal(self) -> bool:
        return self.service in INTERNAL_SERVICES


# ---------------------------------------------------------------------------------------------------------
# The policy (data/policy.md says the same in words)


def severity_of(inc: Incident) -> str:
    if inc.kind in ("data_loss", "security"):
        return "SEV1"
    if inc.kind == "cosmetic":
        return "SEV4"
    if inc.internal:
        return "SEV3"
    if inc.kind == "outage":
        return {"all": "SEV1", "region": "SEV2", "some": "SEV3"}[inc.scope]
    # errors or latency: a degradation
    return "SEV2" if inc.scope == "all" and not inc.workaround else "SEV3"


# The policy's signal phrases: what the written policy's "signals" section lists, and what the generator's
# reports are written with (incident_triage_data.IMPACT): a reader (or a judge) classifies by these words alone.
SIGNALS = {
    "outage": ["completely down", "returns 503", "unreachable"],
    "errors": ["5xx errors", "requests fail", "errors out"],
    "latency": ["very slow", "p99 latency", "long time to load"],
    "cosmetic": ["misaligned", "typo", "renders blurry"],
    "data_loss": ["lost records", "cannot be recovered"],
    "security": ["credentials", "unauthorised access"],
}


def parse_report(report: str) -> Incident:
    """Read an incident back from report text, using only the policy's signal phrases."""
    low = report.lower()
    service = next((s for s in CUSTOMER_SERVICES + INTERNAL_SERVICES if re.search(rf"\b{re.escape(s)}\b", low)), "")
    kind = next((k for k, words in SIGNALS.items() if any(w in low for w in words)), "errors")
    region = next((r for r in REGIONS if r in low), "")
    if region:
        scope = "region"
    elif "handful" in low or "small number" in low:
        scope = "some"
    else:
        scope = "all"
    workaround = "workaround:" in low or "workaround exists" in low
    return Incident(service=service, kind=kind, scope=scope, workaround=workaround, region=region)


def policy_severity(prompt: str) -> str:
    return severity_of(parse_report(prompt))


# ---------------------------------------------------------------------------------------------------------
# Reading responses and scoring them against the policy


# The policy's "Reading a response" section: the answer is exactly one JSON object of the schema, alone or
# in one ```json code fence; anything else around it is not well-formed. A reader still finds the severity in
# the first complete object of the schema anywhere in the text (a chatty model's "Here is the triage: {...}"),
# and a response cut off before its object closes, or empty, has none.
FENCE = re.compile(r"\A```(?:json)?[ \t]*\n(.*?)\n?```\Z", re.S)
DECODER = json.JSONDecoder()


def parse_response(text: str) -> Triage | None:
    """The response if it is well-formed by the policy (one JSON object of the schema, bare or fenced)."""
    text = text.strip()
    if fenced := FENCE.match(text):
        text = fenced.group(1).strip()
    try:
        return Triage.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return None


def find_answer(text: str) -> Triage | None:
    """The first complete JSON object of the schema anywhere in the text, or None (none, cut off, empty)."""
    start = text.find("{")
    while start != -1:
        try:
            return Triage.model_validate(DECODER.raw_decode(text, start)[0])
        except (ValueError, ValidationError):
            start = text.find("{", start + 1)
    return None


def rubric_score(prompt: str, response: str) -> tuple[int, str]:
    """Pointwise 1-5 score by the written policy; sees only the prompt and the response."""
    parsed = parse_response(response)
    if parsed is None:
        return 1, "not a single JSON object of the schema"
    incident = parse_report(prompt)
    want = severity_of(incident)
    off = abs(SEVERITIES.index(parsed.severity) - SEVERITIES.index(want))
    if off >= 2:
        return 2, f"severity {parsed.severity}, policy says {want}"
    if off == 1:
        return 3, f"severity {parsed.severity}, policy says {want}"
    if parsed.service != incident.service:
        return 4, f"service {parsed.service!r}, report names {incident.service!r}"
    if incident.service not in parsed.summary:
        return 4, "summary does not name the service"
    if len(parsed.summary.split()) > MAX_SUMMARY_WORDS:
        return 4, f"summary longer than {MAX_SUMMARY_WORDS} words"
    return 5, "follows the policy and the schema"


def response_metrics(prompt: str, response: str) -> dict[str, float]:
    """Heuristic eval metrics for one response (averaged over prompts by the eval stage)."""
    answer = find_answer(response)
    return {
        "format_conformance": float(parse_response(response) is not None),
        "severity_match": float(answer is not None and answer.severity == policy_severity(prompt)),
    }


def correct(prompt: str, response: str) -> bool:
    """The ground truth (the Task's optional hook): the response's severity is the policy's severity of the
    incident the report was generated from (severity_match). Format is the rubric's business, not the
    label's."""
    return bool(response_metrics(prompt, response)["severity_match"])


def pretrain_text(prompt: str, response: str) -> str:
    # The base model reads incident reports and triage notes as plain documents; it never sees the chat
    # format, which is what SFT teaches.
    return f"{prompt}\n{response}"
