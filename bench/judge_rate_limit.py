"""The rate the anthropic judge achieves under judge.requests_per_minute / judge.input_tokens_per_minute,
measured where the API would measure it: at the server.

    python -m bench.judge_rate_limit [--n 100] [--rpm 600] [--itpm 0] [--concurrency 16] [--latency 0.05]

Starts the tests' Messages API server on 127.0.0.1, judges `--n` distinct responses with an empty cache and
the given limits (0: none), and prints the requests and estimated input tokens a minute the server received
against the limits, and the busiest one-second (and, for a run past a minute, 60-second) window against
what the rate allows (+1: the limiter lets one request through at once, never a minute's worth). The bar:
achieved <= limit, and >= 90% of it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.result import add_json_arg, write_result
from dpo_pipeline.config import load_params
from dpo_pipeline.judging.claude import AnthropicJudge
from tests.support.fake_anthropic import FakeAnthropic

ROOT = Path(__file__).resolve().parents[1]


def answer(body: dict) -> dict:
    return {"score": 5, "reason": "ok"}


def busiest(times: list[float], window: float = 1.0) -> int:
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rpm", type=int, default=600, help="requests per minute; 0: no limit")
    ap.add_argument("--itpm", type=int, default=0, help="input tokens per minute; 0: no limit")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.05)
    add_json_arg(ap)
    args = ap.parse_args()
    os.environ["CI"] = "1"  # no live progress bar in the timing
    items = [("incident report", f"response {i:04d}") for i in range(args.n)]  # all the same length
    with FakeAnthropic(answer, latency_s=args.latency) as fake, tempfile.TemporaryDirectory() as cache:
        cfg = load_params(ROOT / "params.yaml").judge.model_copy(update={
            "backend": "anthropic", "base_url": fake.base_url, "cache_dir": cache, "concurrency": args.concurrency,
            "max_cost_usd": 1e6, "requests_per_minute": args.rpm or None, "input_tokens_per_minute": args.itpm or None})
        judge = AnthropicJudge(cfg, "policy", "sk-bench")
        tokens = judge._tokens(judge.body("score", items[0]))[0]
        start = time.perf_counter()
        judge.score_all(items)
        wall = time.perf_counter() - start
        times = sorted(r["time"] for r in fake.requests if r["path"] == "/v1/messages")
    span = times[-1] - times[0]
    rpm, itpm = (len(times) - 1) / span * 60, (len(times) - 1) * tokens / span * 60
    per_second = min(x for x in (args.rpm / 60 if args.rpm else None,
                                 args.itpm / 60 / tokens if args.itpm else None, float("inf")) if x)
    print(f"{args.n} requests, concurrency {args.concurrency}, {args.latency * 1000:.0f} ms latency: {wall:.2f} s")
    print(f"  requests/min     {rpm:10,.1f}   limit {args.rpm or 'none':>10}")
    print(f"  input tokens/min {itpm:10,.0f}   limit {args.itpm or 'none':>10}   ({tokens} estimated a request)")
    print(f"  busiest 1 s window: {busiest(times)} requests (per-second rate {per_second:.2f}, +1 allowed)")
    if span > 60:  # a run longer than a minute: the window the API's limits are named for
        print(f"  busiest 60 s window: {busiest(times, 60.0)} requests (limit {per_second * 60:.0f}, +1 allowed)")
    write_result(args.json, "judge_rate_limit", {
        "n": args.n, "concurrency": args.concurrency, "latency_s": args.latency, "seconds": round(wall, 3),
        "requests_per_min": round(rpm, 1), "rpm_limit": args.rpm or None,
        "input_tokens_per_min": round(itpm), "itpm_limit": args.itpm or None, "tokens_per_request": tokens,
        "busiest_1s": busiest(times), "per_second_rate": round(per_second, 3) if per_second < float("inf") else None,
        "busiest_60s": busiest(times, 60.0) if span > 60 else None})


if __name__ == "__main__":
    main()
