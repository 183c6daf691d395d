"""The API's limits, kept client-side: what one Message Batch may hold, and requests and input tokens a minute.

- A Message Batch takes at most 100,000 requests or 256 MB, whichever comes first
  (https://docs.claude.com/en/docs/build-with-claude/batch-processing); `split_batches` cuts a larger job
  into consecutive batches within both.
- The rate limits are per minute, but the API replenishes them continuously (a token bucket) and may
  enforce them over shorter intervals (60 a minute as 1 a second). So `RateLimiter` does not let a minute's
  worth go at once: it spaces requests at the per-second rate, a burst of one request, and a big online job
  stays under the limits instead of living on 429s.
"""

from __future__ import annotations

import asyncio
import json
import time

from dpo_pipeline.errors import UserError

BATCH_MAX_REQUESTS = 100_000  # judge.batch_max_requests may lower it (config.py refuses more)
BATCH_MAX_BYTES = 256 * 1000 * 1000  # "256 MB" read as 10^6 bytes, the smaller reading
ENVELOPE_BYTES = 64  # {"requests": [...]} around the requests


def request_bytes(key: str, body: dict) -> int:
    """One batch entry's size. json.dumps' defaults (ASCII escapes, spaced separators) are at least as long
    as what the SDK sends, so the sum never undercounts."""
    return len(json.dumps({"custom_id": key, "params": body})) + 2  # and the ", " before the next


def split_batches(requests: dict[str, dict], max_requests: int = BATCH_MAX_REQUESTS,
                  max_bytes: int = BATCH_MAX_BYTES) -> list[dict[str, dict]]:
    """`requests` (custom_id -> params) in order, cut into as few batches as fit both limits."""
    max_requests = min(max_requests, BATCH_MAX_REQUESTS)
    room = max_bytes - ENVELOPE_BYTES
    out: list[dict[str, dict]] = []
    size = 0
    for key, body in requests.items():
        n = request_bytes(key, body)
        if n > room:
            raise UserError(f"a judge request is {n:,} bytes, more than a Message Batch holds ({max_bytes:,}): "
                            "shorten the responses or use judge.mode: online")
        if not out or len(out[-1]) >= max_requests or size + n > room:
            out.append({})
            size = 0
        out[-1][key] = body
        size += n
    return out


class RateLimiter:
    """`requests_per_minute` and `input_tokens_per_minute` held client-side; None: no limit.

    Requests pass one at a time, in order. Each one passing books its share of both limits from the moment
    it actually passes: the next passes no sooner than 60 / rpm seconds later, nor before this one's input
    tokens have been earned back at itpm / 60 a second. What passes therefore fits a token bucket that holds
    one request, so it fits the API's own bucket (which holds a minute's worth) with room to spare: in any T
    seconds at most rpm x T / 60 requests pass, plus one, and itpm x T / 60 input tokens, plus one request's.
    Booking from the actual time, not the planned one, means a late wake-up (a busy CPU) delays the next
    request too, instead of letting two go closer together than the limits allow.
    """

    def __init__(self, requests_per_minute: float | None = None, input_tokens_per_minute: float | None = None,
                 clock=time.monotonic, sleep=asyncio.sleep):
        self.request_gap = 60 / requests_per_minute if requests_per_minute else 0.0
        self.token_gap = 60 / input_tokens_per_minute if input_tokens_per_minute else 0.0
        self.clock, self.sleep = clock, sleep
        self._free = float("-inf")  # when the next request may pass
        self._turn = asyncio.Lock()  # first come, first served

    @property
    def limited(self) -> bool:
        return bool(self.request_gap or self.token_gap)

    async def wait(self, input_tokens: int) -> None:
        """Return when a request of `input_tokens` may be sent."""
        if not self.limited:
            return
        async with self._turn:
            delay = self._free - self.clock()
            if delay > 0:
                await self.sleep(delay)
            self._free = self.clock() + max(self.request_gap, input_tokens * self.token_gap)
