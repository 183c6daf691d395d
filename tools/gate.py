"""The regression gate: compare freshly reproduced metrics with the ones committed at a git ref.

    dvc repro && python -m tools.gate [REF]      (`make gate`; REF defaults to HEAD)

Fails (exit 1, one line per problem) when a headline metric leaves its band around the committed value
(params `gate`), or when DPO's pairwise ci_low falls to `gate.min_ci_low` or below.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from dpo_pipeline import cli
from dpo_pipeline.config import GateParams, Params
from dpo_pipeline.errors import UserError
from dpo_pipeline.evaluation.schema import MODELS, PAIRWISE, Metric, headline, model_metrics
from dpo_pipeline.tasks import get_task


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
    found = problems(json.loads(Path(path).read_text()), json.loads(shown.stdout), params.gate,
                     model_metrics(get_task(params.task)))
    for line in found:
        print(f"gate: {line}", file=sys.stderr)
    if found:
        sys.exit(1)
    print(f"gate: {path} within its bands of {ref}; DPO's pairwise ci_low above {params.gate.min_ci_low}")


def parser() -> argparse.ArgumentParser:
    p = cli.tool_parser(__doc__)
    p.add_argument("ref", nargs="?", default="HEAD", metavar="REF",
                   help="the git revision whose committed metrics are the reference (default: HEAD)")
    return p


if __name__ == "__main__":
    cli.run(main, parser())
