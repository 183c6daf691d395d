"""The regression gate: compare freshly reproduced metrics with the ones committed at a git ref.

    dvc repro && python -m tools.gate [REF]      (`make gate`; REF defaults to HEAD)

Fails (exit 1, one line per problem) when a headline metric leaves its band around the committed value
(--rate-band, --score-band), or when DPO's pairwise ci_low falls to --min-ci-low or below.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.schema import MODELS, PAIRWISE, Metric, headline, judged_metric, model_metrics
from dpo_pipeline.tasks import get_task


@dataclass(frozen=True)
class GateParams:
    """The gate's bands and floor (the command line's --rate-band, --score-band, --min-ci-low)."""

    rate_band: float   # rates (format conformance, severity match, pairwise win rate)
    score_band: float  # the judge's 1-5 scores
    min_ci_low: float  # DPO's pairwise ci_low against SFT


# `make gate` (run by CI after the tests) reproduces the defaults and compares with the metrics committed on
# main. The bands allow float drift across CPUs without letting a real change through. Each band: 3 sd across
# training seeds of SFT+DPO's value (python -m tools.seeds prints it) plus the largest move between two CPU
# types, to the nearest 0.01 for rates, up for scores.
DEFAULTS = GateParams(rate_band=0.03,   # format conformance, severity match, win rate: |new - committed| <= this
                      score_band=0.13,  # the judge's 1-5 scores (faithfulness)
                      min_ci_low=0.5)   # DPO's pairwise ci_low must stay above this


def problems(new: dict, old: dict, cfg: GateParams, metrics: list[Metric]) -> list[str]:
    """Each headline metric within its band (rates: rate_band, 1-5 scores: score_band) of the committed
    value, for every model; the pairwise win rate within rate_band; DPO's pairwise ci_low above the floor."""
    out = []
    for m in headline(metrics):
        band = cfg.rate_band if m.kind == "rate" else cfg.score_band
        for model in MODELS:
            a, b = old[m.key][model], new[m.key][model]
            if abs(b - a) > band:
                out.append(f"{m.key}.{model}: {b} vs committed {a} (band ±{band})")
    a, b = old[PAIRWISE]["win_rate"], new[PAIRWISE]["win_rate"]
    if abs(b - a) > cfg.rate_band:
        out.append(f"{PAIRWISE}.win_rate: {b} vs committed {a} (band ±{cfg.rate_band})")
    ci_low = new[PAIRWISE]["ci_low"]
    if ci_low <= cfg.min_ci_low:
        out.append(f"{PAIRWISE}.ci_low: {ci_low} <= {cfg.min_ci_low}: DPO no longer beats SFT")
    return out


def main(params: Params, args: argparse.Namespace) -> None:
    ref = args.ref
    path = params.paths.eval_metrics
    shown = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise UserError(f"no {path} committed at {ref}: {shown.stderr.strip()}")
    cfg = GateParams(rate_band=args.rate_band, score_band=args.score_band, min_ci_low=args.min_ci_low)
    new, old = json.loads(Path(path).read_text()), json.loads(shown.stdout)
    judged = judged_metric(new)  # faithfulness, or a reward model's reward
    if judged.key not in old:
        raise UserError(f"{path} at {ref} has no {judged.key}: it was judged by another kind of judge; compare "
                        "runs of the same judge")
    found = problems(new, old, cfg, model_metrics(get_task(params.task), judged))
    for line in found:
        print(f"gate: {line}", file=sys.stderr)
    if found:
        sys.exit(1)
    print(f"gate: {path} within its bands of {ref}; DPO's pairwise ci_low above {cfg.min_ci_low}")


positive = cli.arg_type(float, lambda x: x > 0, "a number > 0")
ci_floor = cli.arg_type(float, lambda x: 0 <= x < 1, "a number in [0, 1)")


def parser() -> argparse.ArgumentParser:
    p = cli.tool_parser(__doc__)
    p.add_argument("ref", nargs="?", default="HEAD", metavar="REF",
                   help="the git revision whose committed metrics are the reference (default: HEAD)")
    p.add_argument("--rate-band", type=positive, default=DEFAULTS.rate_band, metavar="X",
                   help="rates (format conformance, severity match, pairwise win rate): fail when |new - "
                        "committed| > X (default: %(default)s)")
    p.add_argument("--score-band", type=positive, default=DEFAULTS.score_band, metavar="X",
                   help="the judge's 1-5 scores: fail when |new - committed| > X (default: %(default)s)")
    p.add_argument("--min-ci-low", type=ci_floor, default=DEFAULTS.min_ci_low, metavar="X",
                   help="fail when DPO's pairwise ci_low against SFT is X or below (default: %(default)s)")
    return p


if __name__ == "__main__":
    cli.run(main, parser())
