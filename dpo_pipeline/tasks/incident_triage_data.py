"""The incident-triage task's data generator: writes the shipped data/incident_triage/ files.

Only tools.make_data imports it (`generate` is what it calls); no stage does, so editing it re-runs no stage
(tests/test_dvc_wiring.py checks). What the stages grade with is incident_triage.py.
    python -m tools.make_data        (with `task: incident_triage` in params.yaml)
"""

from __future__ import annotations

import json
import random

from dpo_pipeline.tasks.incident_triage import (CUSTOMER_SERVICES, INTERNAL_SERVICES, REGIONS, SEVERITIES, Incident,
                                                severity_of)
from dpo_pipeline.tasks.synthetic import disjoint_splits

KINDS = ("outage", "errors", "latency", "cosmetic", "data_loss", "security")
SCOPES = ("all", "region", "some")

# ---------------------------------------------------------------------------------------------------------
# The reports

# Phrases the report is written with. The task's parser reads the same vocabulary back
# (incident_triage.SIGNALS), which is what the written policy's "signals" section lists: a reader (or a
# judge) classifies by these words alone.
IMPACT = {
    "outage": ["{s} is completely down.", "{s} returns 503 for every request.", "{s} is unreachable."],
    "errors": ["{s} is throwing elevated 5xx errors.", "About 20% of {s} requests fail.",
               "{s} intermittently errors out."],
    "latency": ["{s} responses are very slow.", "p99 latency on {s} is above 10 seconds.",
                "{s} pages take a long time to load."],
    "cosmetic": ["A button label on {s} is misaligned.", "{s} shows a typo in the footer.",
                 "The {s} logo renders blurry."],
    "data_loss": ["{s} lost records written in the last hour.", "Some {s} data was deleted and cannot be recovered."],
    "security": ["Credentials for {s} were exposed in a public log.", "Unauthorised access to {s} was detected."],
}
SCOPE_TEXT = {
    "all": ["All customers are affected.", "Every user sees this."],
    "region": ["Only customers in {r} are affected.", "Impact is limited to the {r} region."],
    "some": ["A handful of users reported it.", "A small number of accounts are affected."],
    "staff": ["Only staff use this service.", "This is an internal tool."],
}
WORKAROUND_TEXT = {
    True: ["Workaround: retrying the request succeeds.", "A workaround exists via the fallback path."],
    False: ["No workaround is known.", "There is no workaround."],
}
OPENERS = ["", "Pager alert.", "Ticket from support.", "Reported by on-call at {h:02d}:{m:02d}.",
           "Customer escalation."]


def render_report(inc: Incident, rng: random.Random) -> str:
    parts = [rng.choice(OPENERS).format(h=rng.randrange(24), m=rng.randrange(60))]
    parts.append(rng.choice(IMPACT[inc.kind]).format(s=inc.service))
    scope = "staff" if inc.internal else inc.scope
    parts.append(rng.choice(SCOPE_TEXT[scope]).format(r=inc.region))
    parts.append(rng.choice(WORKAROUND_TEXT[inc.workaround]))
    return " ".join(p for p in parts if p)


SUMMARY = {"outage": "outage", "errors": "elevated errors", "latency": "high latency",
           "cosmetic": "cosmetic glitch", "data_loss": "data loss", "security": "security exposure"}


def reference_summary(inc: Incident) -> str:
    where = {"all": "for all customers", "region": f"in {inc.region}", "some": "for some users"}
    return f"{inc.service} {SUMMARY[inc.kind]} " + ("for staff" if inc.internal else where[inc.scope])


# ---------------------------------------------------------------------------------------------------------
# The deterministic data generator, with the flaws a real annotation team leaves


def random_incident(rng: random.Random) -> Incident:
    internal = rng.random() < 0.25
    service = rng.choice(INTERNAL_SERVICES if internal else CUSTOMER_SERVICES)
    kind = rng.choices(KINDS, weights=[30, 25, 20, 10, 8, 7])[0]
    scope = "all" if internal else rng.choices(SCOPES, weights=[45, 30, 25])[0]
    region = rng.choice(REGIONS) if scope == "region" else ""
    return Incident(service=service, kind=kind, scope=scope, workaround=rng.random() < 0.4, region=region)


def _annotate(inc: Incident, rng: random.Random) -> str:
    """A flawed annotator's response: systematic over-escalation, some noise, verbose and malformed answers."""
    sev = severity_of(inc)
    # Systematic: on-call annotators treat any outage, even of an internal tool, as SEV2, and a
    # customer-wide degradation as SEV2 even when a workaround exists.
    if inc.internal and inc.kind == "outage" and rng.random() < 0.7:
        sev = "SEV2"
    elif not inc.internal and inc.kind in ("errors", "latency") and inc.scope == "all" and rng.random() < 0.6:
        sev = "SEV2"
    elif rng.random() < 0.08:  # plain noise: one level off
        i = SEVERITIES.index(sev) + rng.choice([-1, 1])
        sev = SEVERITIES[min(max(i, 0), 3)]
    summary = reference_summary(inc)
    if rng.random() < 0.12:
        summary += " which was reported and is currently being investigated by the on-call team right now"
    answer = json.dumps({"severity": sev, "service": inc.service, "summary": summary})
    r = rng.random()
    if r < 0.04:
        answer = "Here is the triage: " + answer
    elif r < 0.07:
        answer = json.dumps({"severity": sev, "summary": summary})
    return answer


def _draw(rng: random.Random) -> tuple[str, Incident]:
    inc = random_incident(rng)
    return render_report(inc, rng), inc


def generate(seed: int, n_sft: int, n_prompts: int, n_eval: int) -> dict[str, list[dict]]:
    """The shipped splits. A prompt text appears in at most one split."""
    return disjoint_splits(seed, {"eval": n_eval, "prompts": n_prompts, "sft": n_sft}, _draw, _annotate)
