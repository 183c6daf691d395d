"""Did DPO's gain hold across training seeds? The arithmetic of `tools.seeds` and the lines the report
prints about it.

Each run's per-prompt eval records (artifacts/eval_outputs.jsonl) for the same held-out prompts: the DPO - SFT
difference of each headline metric, and DPO's pairwise outcome against SFT (win 1, tie 0.5, loss 0; its
"gain" is the win rate - 0.5). Per metric: each seed's gain with its own 95% CI, the mean and spread (sd)
across seeds, the pooled 95% CI (prompts resampled with replacement, the same prompts in every seed, the
seeds' mean gain recomputed), and whether the gain holds in every seed (each seed's CI above 0).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from dpo_pipeline.evaluation.schema import PAIRWISE, Metric, headline
from dpo_pipeline.evaluation.stats import OUTCOME, bootstrap_ci


def fingerprint(params: dict) -> str:
    """The params a seeds result stands for: everything a stage reads but the training seed (not where files
    go, the gate's bands or the data generator's settings; nor the later rounds of iterative DPO: the seeds
    measure round 1's gain, which they cannot change)."""
    kept = {k: v for k, v in params.items() if k not in ("paths", "gate", "data", "rounds", "iterate")}
    kept["train"] = {k: v for k, v in kept.get("train", {}).items() if k != "seed"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def gains(records: list[dict], metric: Metric | None) -> dict[str, float]:
    """{prompt id: gain} for one run; metric None: the pairwise outcome against SFT, centred on 0.5."""
    out = {}
    for r in records:
        if metric is None:
            outcome = r[PAIRWISE]["outcome"]
            if outcome is not None:
                out[r["id"]] = OUTCOME[outcome] - 0.5
        else:
            dpo, sft = r["dpo"][metric.source_field], r["sft"][metric.source_field]
            if dpo is not None and sft is not None:
                out[r["id"]] = float(dpo) - float(sft)
    return out


def pooled(per_seed: list[dict[str, float]], samples: int, seed: int) -> tuple[float, float]:
    """95% CI of the seeds' mean gain: resample the prompts (the same draw for every seed)."""
    ids = sorted(set().union(*per_seed))
    grid = np.array([[g.get(i, np.nan) for i in ids] for g in per_seed])  # seeds x prompts
    idx = np.random.default_rng(seed).integers(0, len(ids), size=(samples, len(ids)))
    means = np.nanmean(grid[:, idx], axis=(0, 2))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(runs: dict[str, list[dict]], metrics: list[Metric], samples: int, seed: int) -> dict:
    """{metric key: {per_seed, per_seed_ci, mean, sd, pooled_ci, every_seed}} over the runs {seed label: records}."""
    out = {}
    for metric in [*headline(metrics), None]:
        key = PAIRWISE if metric is None else metric.key
        per_seed = {label: gains(recs, metric) for label, recs in runs.items()}
        values = {label: float(np.mean(list(g.values()))) for label, g in per_seed.items()}
        cis = {label: bootstrap_ci(list(g.values()), samples, seed) for label, g in per_seed.items()}
        sign = 1 if metric is None or metric.higher_is_better else -1
        # SFT+DPO's own value in each seed (base and SFT do not depend on the training seed): its spread is
        # what the regression gate's bands must allow
        dpo = [float(np.mean([(OUTCOME[r[PAIRWISE]["outcome"]] if metric is None else r["dpo"][metric.source_field])
                              for r in recs if (r[PAIRWISE]["outcome"] if metric is None
                                                else r["dpo"][metric.source_field]) is not None]))
               for recs in runs.values()]
        out[key] = {
            "dpo_sd": round(float(np.std(dpo, ddof=1)), 4) if len(dpo) > 1 else 0.0,
            "per_seed": {k: round(v, 4) for k, v in values.items()},
            "per_seed_ci": {k: [round(lo, 4), round(hi, 4)] for k, (lo, hi) in cis.items()},
            "mean": round(float(np.mean(list(values.values()))), 4),
            "sd": round(float(np.std(list(values.values()), ddof=1)), 4) if len(values) > 1 else 0.0,
            "pooled_ci": [round(x, 4) for x in pooled(list(per_seed.values()), samples, seed)],
            # better in every seed by the metric's own direction: each seed's CI excludes 0 on the good side
            "every_seed": all((lo > 0) if sign > 0 else (hi < 0) for lo, hi in cis.values()),
        }
    return out


def label(key: str, metrics: list[Metric]) -> str:
    return next((m.name for m in metrics if m.key == key), "pairwise win rate DPO vs SFT (- 50%)")


def markdown(result: dict, metrics: list[Metric]) -> str:
    seeds = result["seeds"]
    lines = [f"# DPO's gain over SFT across {len(seeds)} training seeds", "",
             f"Training seeds {', '.join(map(str, seeds))} (`train.seed`); sampling, judging, the held-out split "
             f"and the {result['n_prompts']} eval prompts are shared. Gain = SFT+DPO - SFT (the pairwise row: win "
             "rate - 50%). Pooled CI: 95% bootstrap over prompts of the seeds' mean gain.", "",
             "| Metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd across seeds | pooled 95% CI | "
             "better in every seed |", "|---" * (len(seeds) + 5) + "|"]
    for key, m in result["metrics"].items():
        cells = [f"{m['per_seed'][str(s)]:+.3f} [{m['per_seed_ci'][str(s)][0]:+.3f}, {m['per_seed_ci'][str(s)][1]:+.3f}]"
                 for s in seeds]
        lines.append(f"| {label(key, metrics)} | " + " | ".join(cells) + f" | {m['mean']:+.3f} | {m['sd']:.3f} | "
                     f"[{m['pooled_ci'][0]:+.3f}, {m['pooled_ci'][1]:+.3f}] | {'yes' if m['every_seed'] else 'no'} |")
    return "\n".join(lines) + "\n"


def verdict_line(result: dict | None, current_fingerprint: str) -> str:
    """The report's sentence on how many seeds stand behind its verdict."""
    if result is None:
        return "One training seed stands behind this verdict (`make seeds` measures others)."
    if result["fingerprint"] != current_fingerprint:
        return (f"One training seed stands behind this verdict: the {len(result['seeds'])}-seed result in "
                "metrics/seeds.json was measured with other params (run `make seeds` again).")
    pw = result["metrics"][PAIRWISE]
    n = len(result["seeds"])
    return (f"{n} training seed{'s' if n > 1 else ''} ({', '.join(map(str, result['seeds']))}) "
            f"stand{'' if n > 1 else 's'} behind this "
            f"verdict (reports/seeds.md): pairwise win rate DPO vs SFT {pw['mean'] + 0.5:.1%} on average, pooled "
            f"95% CI [{pw['pooled_ci'][0] + 0.5:.1%}, {pw['pooled_ci'][1] + 0.5:.1%}], sd across seeds "
            f"{pw['sd']:.1%}; {'above 50% in every seed' if pw['every_seed'] else 'not above 50% in every seed'}.")


def gate_bands(result: dict, metrics: list[Metric]) -> dict:
    """The regression gate's bands from the measured spread: 3 sd across training seeds of SFT+DPO's value,
    the widest over the rates (and the pairwise win rate) and over the 1-5 scores."""
    kinds = {m.key: m.kind for m in metrics}
    rates = [m["dpo_sd"] for k, m in result["metrics"].items() if kinds.get(k, "rate") == "rate"]
    scores = [m["dpo_sd"] for k, m in result["metrics"].items() if kinds.get(k) == "score"]
    return {"rate_band": round(3 * max(rates, default=0.0), 3), "score_band": round(3 * max(scores, default=0.0), 3)}
