"""How close the anthropic judge gets to ideal concurrency against a server with fixed latency.

    python -m bench.judge_concurrency [--n 1000] [--concurrency 16] [--latency 0.1]

Starts the tests' Messages API server on 127.0.0.1 in its own process (so it does not share the judge's
GIL) with `--latency` seconds per answer, warms the client up (imports, connections), judges `--n` distinct
responses with an empty cache, and prints wall time / ideal, where ideal = n * latency / concurrency.
The bar is a ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

from bench.result import add_json_arg, write_result
from dpo_pipeline.judging.claude import AnthropicJudge
from dpo_pipeline.config import load_params
from tests.support.fake_anthropic import FakeAnthropic

ROOT = Path(__file__).resolve().parents[1]


def answer(body: dict) -> dict:
    return {"score": 5, "reason": "ok"}


def serve(latency: float, port: mp.Queue, stop: mp.Event) -> None:
    with FakeAnthropic(answer, latency_s=latency) as fake:
        port.put(fake.base_url)
        stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.1)
    add_json_arg(ap)
    args = ap.parse_args()
    os.environ["CI"] = "1"  # no live progress bar in the timing
    urls, stop = mp.Queue(), mp.Event()
    server = mp.Process(target=serve, args=(args.latency, urls, stop), daemon=True)
    server.start()
    base_url = urls.get(timeout=30)
    cfg = load_params(ROOT / "params.yaml").judge
    try:
        with tempfile.TemporaryDirectory() as cache:
            cfg = cfg.model_copy(update={"backend": "anthropic", "base_url": base_url, "cache_dir": cache,
                                         "concurrency": args.concurrency, "max_cost_usd": 1e6})
            judge = AnthropicJudge(cfg, "policy", "sk-bench")
            judge.score_all([("warm-up", str(i)) for i in range(args.concurrency)])
            items = [("incident report", f"response {i}") for i in range(args.n)]
            start = time.perf_counter()
            judge.score_all(items)
            wall = time.perf_counter() - start
            assert judge.usage.requests_sent == args.n + args.concurrency
    finally:
        stop.set()
        server.join(timeout=10)
    ideal = args.n * args.latency / args.concurrency
    print(f"{args.n} judgments, concurrency {args.concurrency}, {args.latency * 1000:.0f} ms latency: "
          f"{wall:.2f} s, ideal {ideal:.2f} s, ratio {wall / ideal:.2f} (bar: <= 1.5)")
    write_result(args.json, "judge_concurrency", {
        "n": args.n, "concurrency": args.concurrency, "latency_s": args.latency, "seconds": round(wall, 3),
        "ideal_seconds": round(ideal, 3), "ratio": round(wall / ideal, 3), "bar": 1.5})


if __name__ == "__main__":
    main()
