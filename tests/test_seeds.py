"""Training-seed variance: the per-seed gains, their spread, the pooled CI and the every-seed verdict."""

from __future__ import annotations

import numpy as np

from dpo_pipeline.evaluation.schema import model_metrics
from dpo_pipeline.evaluation.seeds import fingerprint, markdown, summarize, verdict_line
from dpo_pipeline.tasks import incident_triage

METRICS = model_metrics(incident_triage)


def run(seed: int, p_better: float, p_win: float, n: int = 200) -> list[dict]:
    """Records where SFT+DPO matches severity with probability p_better (SFT: 0.5) and wins pairwise with
    probability p_win (else a loss)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        model = lambda p: {"severity_match": float(rng.random() < p), "format_conformance": 1.0,  # noqa: E731
                           "faithfulness": 4, "tokens": 30, "text": ""}
        out.append({"id": f"e{i}", "sft": model(0.5), "dpo": model(p_better),
                    "pairwise_dpo_vs_sft": {"outcome": "win" if rng.random() < p_win else "loss"}})
    return out


def test_a_gain_in_every_seed_is_called_so_with_a_pooled_ci_narrower_than_one_seeds():
    result = summarize({"0": run(0, 0.8, 0.7), "1": run(1, 0.8, 0.7), "2": run(2, 0.8, 0.7)}, METRICS, 500, 0)
    sev = result["severity_match"]
    assert sev["every_seed"] and 0.2 < sev["mean"] < 0.4 and sev["sd"] < 0.1
    lo, hi = sev["pooled_ci"]
    one_lo, one_hi = sev["per_seed_ci"]["0"]
    assert lo < sev["mean"] < hi and hi - lo < one_hi - one_lo
    assert result["pairwise_dpo_vs_sft"]["every_seed"] and 0.15 < result["pairwise_dpo_vs_sft"]["mean"] < 0.25
    assert not result["format_conformance"]["every_seed"]  # no change at all: not a gain


def test_one_seed_without_the_gain_breaks_every_seed_and_widens_the_spread():
    result = summarize({"0": run(0, 0.8, 0.7), "1": run(1, 0.5, 0.5), "2": run(2, 0.8, 0.7)}, METRICS, 500, 0)
    assert not result["severity_match"]["every_seed"]
    assert result["severity_match"]["sd"] > 0.1
    text = markdown({"seeds": [0, 1, 2], "n_prompts": 200, "fingerprint": "x", "metrics": result}, METRICS)
    assert "| severity match |" in text and "| no |" in text


def test_the_report_line_says_how_many_seeds_and_refuses_a_stale_result(root):
    from dpo_pipeline.config import load_params

    params = load_params(root / "params.yaml").model_dump()
    now = fingerprint(params)
    assert fingerprint({**params, "train": {**params["train"], "seed": 7}}) == now  # the seed is what varies
    assert fingerprint({**params, "train": {**params["train"], "beta": 0.5}}) != now
    result = {"seeds": [0, 1, 2], "fingerprint": now,
              "metrics": summarize({str(s): run(s, 0.8, 0.7) for s in range(3)}, METRICS, 200, 0)}
    assert verdict_line(result, now).startswith("3 training seeds (0, 1, 2) stand behind this verdict")
    assert "above 50% in every seed" in verdict_line(result, now)
    assert "measured with other params" in verdict_line(result, "other")
    assert verdict_line(None, now).startswith("One training seed")


def test_gate_bands_are_three_sd_of_the_dpo_value_across_seeds():
    from dpo_pipeline.evaluation.seeds import gate_bands

    runs = {"0": run(0, 0.8, 0.7), "1": run(1, 0.6, 0.7), "2": run(2, 0.7, 0.7)}
    result = {"metrics": summarize(runs, METRICS, 200, 0)}
    sev = [np.mean([r["dpo"]["severity_match"] for r in recs]) for recs in runs.values()]
    bands = gate_bands(result, METRICS)
    assert bands["rate_band"] >= round(3 * np.std(sev, ddof=1), 3) > 0.2  # seed 1 learnt far less
    assert bands["score_band"] == 0.0  # faithfulness is 4 in every record
