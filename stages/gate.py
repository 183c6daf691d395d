"""The regression gate: compare freshly reproduced metrics with the ones committed at a git ref.

    dvc repro && python -m stages.gate [REF]      (`make gate`; REF defaults to HEAD)

Fails (exit 1, one line per problem) when a headline metric leaves its band around the committed value
(params `gate`), or when DPO's pairwise ci_low falls to `gate.min_ci_low` or below.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stages import cli
from stages.config import GateParams, UserError, load_params
from stages.stats import task_metric_keys



def problems(new: dict, old: dict, cfg: GateParams) -> list[str]:
    out = []
    headlines = {**dict.fromkeys(task_metric_keys(old), "rate_band"), "faithfulness": "faithfulness_band"}
    for metric, band_name in headlines.items():
        band = getattr(cfg, band_name)
        for model in ("base", "sft", "dpo"):
            a, b = old[metric][model], new[metric][model]
            if abs(b - a) > band:
                out.append(f"{metric}.{model}: {b} vs committed {a} (band ±{band})")
    a, b = old["pairwise_dpo_vs_sft"]["win_rate"], new["pairwise_dpo_vs_sft"]["win_rate"]
    if abs(b - a) > cfg.rate_band:
        out.append(f"pairwise_dpo_vs_sft.win_rate: {b} vs committed {a} (band ±{cfg.rate_band})")
    ci_low = new["pairwise_dpo_vs_sft"]["ci_low"]
    if ci_low <= cfg.min_ci_low:
        out.append(f"pairwise_dpo_vs_sft.ci_low: {ci_low} <= {cfg.min_ci_low}: DPO no longer beats SFT")
    return out


def main() -> None:
    params = load_params()
    ref = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
    path = params.paths.eval_metrics
    shown = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise UserError(f"no {path} committed at {ref}: {shown.stderr.strip()}")
    found = problems(json.loads(Path(path).read_text()), json.loads(shown.stdout), params.gate)
    for line in found:
        print(f"gate: {line}", file=sys.stderr)
    if found:
        sys.exit(1)
    print(f"gate: {path} within its bands of {ref}; DPO's pairwise ci_low above {params.gate.min_ci_low}")


if __name__ == "__main__":
    cli.run(main)
