"""Is a change of SFT+DPO's metric between two runs (a base branch's and this branch's) beyond noise?

With both runs' per-prompt records (eval_outputs.jsonl) over the same eval prompts: the paired bootstrap CI
of the mean per-prompt difference (this run - base run), resampling prompts. Pairing cancels what the
prompts themselves contribute (an easy prompt is easy for both runs), so it sees changes that two separate
CIs hide. Without them: each run's own CI, side by side; only CIs that do not overlap count, a conservative
test (overlapping CIs do not show that nothing changed).
"""

from __future__ import annotations

from dataclasses import dataclass

from dpo_pipeline.evaluation.schema import PAIRWISE
from dpo_pipeline.evaluation.stats import OUTCOME, bootstrap_ci


@dataclass(frozen=True)
class PairedChange:
    low: float   # the 95% CI of mean(this run - base run) over the prompts both have a valid value for
    high: float
    n: int       # those prompts

    @property
    def beyond_noise(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class SideBySide:
    base: tuple[float, float]  # each run's own 95% CI of the metric
    head: tuple[float, float]

    @property
    def beyond_noise(self) -> bool:
        return self.head[0] > self.base[1] or self.head[1] < self.base[0]


def per_prompt(rec: dict, key: str, field: str) -> float | None:
    """SFT+DPO's value on one prompt: its metric's field, or for the pairwise entry its outcome against SFT
    (win 1, tie 0.5, loss 0). None where invalid (a judge answer that could not be read)."""
    if key == PAIRWISE:
        return OUTCOME.get((rec.get(PAIRWISE) or {}).get("outcome"))
    return (rec.get("dpo") or {}).get(field)


def shared_prompts(base: list[dict], head: list[dict]) -> int:
    return len({r["id"] for r in base} & {r["id"] for r in head})


def paired_change(base: list[dict], head: list[dict], key: str, field: str, samples: int,
                  seed: int) -> PairedChange | None:
    """The bootstrap CI of the per-prompt change; None where no prompt has a valid value in both runs."""
    before = {r["id"]: per_prompt(r, key, field) for r in base}
    diffs = []
    for r in head:
        old, new = before.get(r["id"]), per_prompt(r, key, field)
        if old is not None and new is not None:  # invalid on either side: the prompt is left out, as in eval
            diffs.append(float(new) - float(old))
    if not diffs:
        return None
    low, high = bootstrap_ci(diffs, samples, seed)
    return PairedChange(low, high, len(diffs))


def run_ci(eval_metrics: dict, eval_ci: dict, key: str) -> tuple[float, float] | None:
    """One run's own 95% CI of SFT+DPO's metric, as its eval stage wrote it (eval.json's pairwise entry
    carries its own); None where the run has none."""
    if key == PAIRWISE:
        ci, low, high = eval_metrics.get(PAIRWISE) or {}, "ci_low", "ci_high"
    else:
        ci, low, high = (eval_ci.get(key) or {}).get("dpo") or {}, "low", "high"
    return (ci[low], ci[high]) if low in ci and high in ci else None


def side_by_side(base: tuple[float, float] | None, head: tuple[float, float] | None) -> SideBySide | None:
    return SideBySide(base, head) if base and head else None
