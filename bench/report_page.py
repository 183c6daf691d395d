"""How reports/report.html grows with the number of preference pairs: the page built from synthetic pairs,
its size and build time, for short answers like the defaults' and for long ones, with and without the cap.

    python -m bench.report_page                    # 60,000 pairs, short and ~1,200-character answers
    python -m bench.report_page --pairs 10000

The eval part is the committed default run's table with no answers (it does not grow with the pairs); the
pairs are seeded random words. Random words compress worse than real prose, so the sizes are pessimistic.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from bench.result import add_json_arg, write_result
from dpo_pipeline.config import load_params
from dpo_pipeline.evaluation.schema import model_metrics, models
from dpo_pipeline.reporting.page import page_data, similarity, write_page
from dpo_pipeline.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]

WORDS = [w for w in (ROOT / "data" / "incident_triage" / "policy.md").read_text().split() if w.isalpha()]


def pairs(n: int, words: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = (" ".join(rng.choices(WORDS, k=words)) for _ in range(2))
        out.append({"id": f"p{i:06d}", "prompt": " ".join(rng.choices(WORDS, k=20)), "a": a, "b": b,
                    "ta": 0.7, "tb": 1.2, "dropped": None, "aLeft": True, "winner": "A", "reason": "A follows it",
                    "orders": [{"winner": "A", "reason": "A"}, {"winner": "B", "reason": "B"}], "flipped": False,
                    "sim": round(similarity(a, b), 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=60_000)
    add_json_arg(ap)
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    ev, cis, judge = (json.loads((ROOT / p).read_text()) for p in (
        params.paths.eval_metrics, params.paths.eval_ci, params.paths.judge_metrics))
    metrics, names = model_metrics(get_task(params.task)), models(1)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, words, cap in (("short (~25 words)", 25, params.report.page_max_mb),
                                  ("long (~200 words, ~1,200 characters)", 200, 1e9),
                                  ("long, capped", 200, params.report.page_max_mb)):
            rows = pairs(args.pairs, words, seed=0)
            start = time.perf_counter()
            data = page_data(ev, cis, judge, [], rows, metrics, names, "generated", cap)
            size = write_page(Path(tmp) / "report.html", data, "bench")
            seconds = time.perf_counter() - start
            print(f"{args.pairs:,} pairs, {label}: {size / 1e6:6.1f} MB, {len(data['pairs']):,} pairs shown, "
                  f"built in {seconds:.1f} s" + (f" (cap {cap:g} MB)" if cap < 1e9 else ""))
            runs.append({"answers": label, "cap_mb": cap if cap < 1e9 else None, "mb": round(size / 1e6, 2),
                         "pairs_shown": len(data["pairs"]), "seconds": round(seconds, 2)})
    write_result(args.json, "report_page", {"pairs": args.pairs, "runs": runs})


if __name__ == "__main__":
    main()
