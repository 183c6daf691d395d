"""A judge that asks a remote API, whichever: the Judge interface over the cache, the requests in flight, the
retries a stop reason calls for, and the budget. A backend (claude.py) only builds its API's requests, sends
one and reads the answer, and words its API's errors; everything here is shared.

- Every judgment is cached in SQLite by request content (cache.py) and every request logged. A repeat
  (`pairwise_all(items, repeat=1)`, self-consistency) sends the identical request again under its own cache
  key: a real second sample, paid once, and never answered from the first's entry.
- `judge.concurrency` judgments in flight (an async client, bounded by a semaphore), spaced to stay under
  `judge.requests_per_minute` and `judge.input_tokens_per_minute` (limits.py). The client retries 429, 529,
  5xx and timeouts up to `judge.max_retries`; a request that still fails stops the pass with one line, after
  the requests in flight return, their finished judgments cached.
- A judgment is up to three requests, by the stop reason of an answer that failed validation (`next_attempt`,
  the one table of them): `max_tokens` is asked once more with 4x the room; `refusal` is asked again on
  `judge.refusal_fallback` when set; another invalid answer once more as it was. An answer that still fails
  is counted invalid, by its stop reason, and excluded, never guessed.
- `judge.max_cost_usd`: before a judgment is sent, the dearest way it could go is reserved (every path of
  `next_attempt`, each request at its full token limit and its model's price, input as estimated); each
  request's bill is taken from that reservation and the rest released when the judgment ends. A judgment
  whose worst case does not fit is not sent, nor any after it; those in flight finish within their
  reservations, and then the stop message says what was spent.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import abstractmethod
from dataclasses import dataclass

from dpo_pipeline.config import JudgeParams
from dpo_pipeline.errors import ServiceError
from dpo_pipeline.judging.base import Estimate, Judge, Score, Usage, Verdict
from dpo_pipeline.judging.cache import JudgeCache, request_key
from dpo_pipeline.judging.limits import RateLimiter
from dpo_pipeline.judging.prompts import TEMPLATE_VERSION
from dpo_pipeline.progress import progress as progress_bar

# Stop reasons after which there is no answer to validate, in the Messages API's words (a backend whose API
# names them otherwise maps its own to these): counted by reason in metrics, and never asked again as they were.
NO_ANSWER = ("refusal", "max_tokens", "model_context_window_exceeded", "pause_turn")
MORE_ROOM = 4     # a max_tokens stop is asked once more with this many times the room (Anthropic: raise the limit)
MAX_ATTEMPTS = 3  # requests a judgment may take


class BudgetExceeded(ServiceError):
    pass


# --- the retry table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One request of a judgment: the model asked, and its room (a multiple of the token limit)."""

    model: str
    room: int = 1


def next_attempt(attempt: Attempt, stop_reason: str | None, fallback: str | None) -> Attempt | None:
    """The request to send after `attempt`'s answer ended with `stop_reason` and failed validation; None: give
    up. `_ask` follows this table and the budget reserves its dearest path, so the two cannot disagree."""
    if stop_reason == "max_tokens":
        return Attempt(attempt.model, MORE_ROOM) if attempt.room == 1 else None
    if stop_reason == "refusal":  # Anthropic: retry on another model
        return Attempt(fallback, attempt.room) if fallback and attempt.model != fallback else None
    return None if stop_reason in NO_ANSWER else attempt  # an invalid answer is asked once more as it was


def attempt_paths(first: Attempt, fallback: str | None) -> list[tuple[Attempt, ...]]:
    """Every sequence of requests one judgment can take under `next_attempt`, up to MAX_ATTEMPTS."""
    endings = (*NO_ANSWER, "end_turn")  # end_turn: any answer that ended normally and failed validation
    paths, todo = set(), [(first,)]
    while todo:
        path = todo.pop()
        paths.add(path)
        if len(path) < MAX_ATTEMPTS:
            todo += [(*path, a) for a in {next_attempt(path[-1], r, fallback) for r in endings} - {None}]
    return sorted(paths, key=lambda p: [(a.model, a.room) for a in p])


# --- the budget --------------------------------------------------------------------------------------------


class Budget:
    """`judge.max_cost_usd` over a run: what this run paid (`usage.spent_usd`, batches included) plus what the
    judgments in flight may still cost (what is left of their reservations)."""

    def __init__(self, limit: float, usage: Usage):
        self.limit, self.usage = limit, usage
        self.open: set[Reservation] = set()

    def room(self) -> float:
        return self.limit - self.usage.spent_usd - sum(r.left for r in self.open)

    def reserve(self, usd: float) -> Reservation | None:
        """Hold `usd` for a judgment about to be sent; None if it does not fit."""
        if usd > self.room():
            return None
        reservation = Reservation(self, usd)
        self.open.add(reservation)
        return reservation

    def pay(self, usd: float) -> None:
        self.usage.spent_usd += usd


class Reservation:
    def __init__(self, budget: Budget, usd: float):
        self.budget, self.left = budget, usd

    def pay(self, usd: float) -> None:
        """A request billed, out of this reservation (the spend is what was billed, even past it)."""
        self.budget.pay(usd)
        self.left = max(0.0, self.left - usd)

    def release(self) -> None:
        """The judgment ended: what it did not use goes back to the budget."""
        self.left = 0.0
        self.budget.open.discard(self)


# --- one pass of requests ----------------------------------------------------------------------------------


@dataclass
class Reply:
    """One request's answer, as a backend read it: the validated judgment or None, and what was billed."""

    answer: dict | None
    stop_reason: str | None
    input_tokens: int
    output_tokens: int


@dataclass
class Halt:
    """Why a pass stopped sending judgments, the first of: a request that failed after the client's retries
    (judgments in flight then stop before their next request), or the budget (those in flight finish)."""

    cause: str | None = None  # "failure" or "budget"
    failure: BaseException | None = None
    unsent: int = 0  # judgments never sent
    worst_usd: float = 0.0  # the worst case of the first judgment the budget held back

    def fail(self, err: BaseException) -> None:
        self.failure = self.failure or err
        self.cause = self.cause or "failure"


class OnlineJudge(Judge):
    """The Judge interface for a backend that sends paid requests. A subclass builds the requests (`body`,
    `attempt_body`), estimates their tokens (`_tokens`), makes the client and sends one (`client`, `send`),
    names the client's error class (`request_error`) and words one for the user (`translate`)."""

    remote = True

    def __init__(self, cfg: JudgeParams, policy: str):
        self.cfg, self.policy = cfg, policy
        self.price = cfg.prices[cfg.model]
        self.cache = JudgeCache(cfg.cache_dir)
        self.usage = Usage()
        self.budget = Budget(cfg.max_cost_usd, self.usage)
        self.paths = attempt_paths(Attempt(cfg.model), cfg.refusal_fallback)

    # --- what a backend provides ------------------------------------------------------------------------

    @abstractmethod
    def body(self, kind: str, item: tuple[str, ...]) -> dict:
        """The first request for `item` (its content is the cache key)."""

    @abstractmethod
    def attempt_body(self, body: dict, attempt: Attempt) -> dict:
        """The request that asks `body`'s question as `attempt` says: another model, more room."""

    @abstractmethod
    def _tokens(self, body: dict) -> tuple[int, int]:
        """(input, output) tokens before sending: input estimated, output the request's whole limit."""

    @abstractmethod
    def client(self):
        """An async client, used as an async context manager."""

    @abstractmethod
    async def send(self, client, body: dict) -> Reply:
        """One request; raises `request_error` once the client's retries are spent."""

    @property
    @abstractmethod
    def request_error(self) -> type[BaseException]:
        """The client's error for a request that failed."""

    @abstractmethod
    def translate(self, err: BaseException) -> Exception:
        """The one-line UserError or ServiceError a user sees for a request that failed."""

    def batches_for(self, todo: dict[str, dict]) -> int:
        """Batches `todo` would take in `judge.mode: batch` (0: the backend sends everything online)."""
        return 0

    # --- the Judge interface ----------------------------------------------------------------------------

    def score_all(self, items: list[tuple[str, str]]) -> list[Score | None]:
        return [None if a is None else Score(**a) for a in self.run("score", items)]

    def pairwise_all(self, items: list[tuple[str, str, str]], repeat: int = 0) -> list[Verdict | None]:
        return [None if a is None else Verdict(**a) for a in self.run("pairwise", items, repeat)]

    def cost(self, input_tokens: int, output_tokens: int, batch: bool = False, model: str | None = None) -> float:
        price = self.cfg.prices[model] if model else self.price
        usd = (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6
        return usd * (self.cfg.batch_discount if batch else 1.0)

    def estimate(self, kind: str, items: list[tuple], repeat: int = 0) -> Estimate:
        if kind == "pairwise":  # two identical responses are a tie without a request (pairwise_both_orders)
            items = [item for item in items if item[1] != item[2]]
        bodies, keys = self.requests(kind, items, repeat)
        unique = dict(zip(keys, bodies))  # identical requests are sent once
        todo = {k: b for k, b in unique.items() if self.cache.get(k) is None}
        tokens_in = sum(self._tokens(b)[0] for b in todo.values())
        tokens_out = sum(self._tokens(b)[1] for b in todo.values())
        batch = self.cfg.mode == "batch"
        return Estimate(calls=len(items), unique=len(unique), cached=len(unique) - len(todo), to_send=len(todo),
                        input_tokens=tokens_in, output_tokens=tokens_out, usd=self.cost(tokens_in, tokens_out, batch),
                        batches=self.batches_for(todo) if batch else 0)

    def worst_case(self, body: dict) -> float:
        """The most `body`'s judgment can cost: its dearest path of requests, each at its whole token limit
        (thinking included) and its model's price."""
        usd = {}
        for attempt in {a for path in self.paths for a in path}:
            sent = body if attempt == Attempt(self.cfg.model) else self.attempt_body(body, attempt)
            usd[attempt] = self.cost(*self._tokens(sent), model=attempt.model)
        return max(sum(usd[a] for a in path) for path in self.paths)

    def requests(self, kind: str, items: list[tuple], repeat: int = 0) -> tuple[list[dict], list[str]]:
        bodies = [self.body(kind, item) for item in items]
        return bodies, [request_key(self.name, TEMPLATE_VERSION, b, repeat) for b in bodies]

    def run(self, kind: str, items: list[tuple], repeat: int = 0) -> list[dict | None]:
        bodies, keys = self.requests(kind, items, repeat)
        todo = {k: b for k, b in zip(keys, bodies) if self.cache.get(k) is None}  # identical requests once
        self.usage.cache_hits += len(set(keys)) - len(todo)
        if todo:
            asyncio.run(self._send(todo))
        answers = []
        for k in keys:
            row = self.cache.get(k)
            answer = None if row["answer"] is None else json.loads(row["answer"])
            self.usage.answers += 1
            self.usage.invalid += answer is None
            if answer is None and row["stop"] in NO_ANSWER:
                self.usage.stops[row["stop"]] = self.usage.stops.get(row["stop"], 0) + 1
            self.usage.fallback_answers += answer is not None and row["model"] != self.cfg.model
            self.usage.input_tokens += row["input_tokens"]
            self.usage.output_tokens += row["output_tokens"]
            self.usage.cost_usd += row["cost_usd"]
            answers.append(answer)
        return answers

    async def _send(self, todo: dict[str, dict]) -> None:
        async with self.client() as client:
            await self._online(client, todo)

    # --- online: bounded concurrency, rate limits held client-side, the budget -------------------------------

    async def _online(self, client, todo: dict[str, dict]) -> None:
        gate = asyncio.Semaphore(self.cfg.concurrency)
        limiter = RateLimiter(self.cfg.requests_per_minute, self.cfg.input_tokens_per_minute)
        halt = Halt()
        with progress_bar("calls") as progress:
            bar = progress.add_task(f"judging with {self.cfg.model}", total=len(todo))

            async def judge_one(key: str, body: dict) -> None:
                async with gate:
                    if halt.cause:
                        halt.unsent += 1
                        return
                    worst = self.worst_case(body)
                    reservation = self.budget.reserve(worst)
                    if reservation is None:  # this judgment and every one after it stay unsent
                        halt.cause, halt.worst_usd, halt.unsent = "budget", worst, halt.unsent + 1
                        return
                    try:
                        await self._ask(client, key, body, limiter, halt, reservation)
                    except self.request_error as e:
                        halt.fail(e)
                    finally:
                        reservation.release()
                        progress.advance(bar)

            await asyncio.gather(*(judge_one(k, b) for k, b in todo.items()))
        # Every judgment in flight has returned: what was spent is final.
        if halt.cause == "failure":
            raise self.translate(halt.failure) from None
        if halt.cause == "budget":
            raise BudgetExceeded(
                f"judge.max_cost_usd (${self.cfg.max_cost_usd:.2f}) reached: ${self.usage.spent_usd:.4f} spent "
                f"this run; {halt.unsent} judgments not sent (one can cost up to ${halt.worst_usd:.4f} with its "
                "retries); finished judgments are cached, raise the budget and rerun to continue")

    async def _ask(self, client, key: str, body: dict, limiter: RateLimiter, halt: Halt,
                   reservation: Reservation) -> None:
        """One judgment, its requests as `next_attempt` says, each billed to `reservation`, then cached. Each
        request first waits its turn under the rate limits; one that fails (the client's retries spent) is
        logged and raised."""
        attempt, answer, stop_reason, model = Attempt(self.cfg.model), None, None, self.cfg.model
        tokens_in, tokens_out, usd = 0, 0, 0.0
        for _ in range(MAX_ATTEMPTS):
            await limiter.wait(self._tokens(body)[0])
            if halt.failure is not None:
                return  # another request failed while this one waited its turn
            start = time.monotonic()
            try:
                reply = await self.send(client, body)
            except self.request_error as e:
                self.cache.log_call(key, attempt.model, "online", False, 0, 0, 0.0, time.monotonic() - start,
                                    error=type(e).__name__)
                raise
            answer, stop_reason, model = reply.answer, reply.stop_reason, attempt.model
            call_usd = self.cost(reply.input_tokens, reply.output_tokens, model=model)
            reservation.pay(call_usd)
            tokens_in, tokens_out = tokens_in + reply.input_tokens, tokens_out + reply.output_tokens
            usd += call_usd
            self.usage.requests_sent += 1
            self.cache.log_call(key, model, "online", answer is not None, reply.input_tokens, reply.output_tokens,
                                call_usd, time.monotonic() - start, error=None if answer is not None else stop_reason)
            following = None if answer is not None else next_attempt(attempt, stop_reason, self.cfg.refusal_fallback)
            if following is None:
                break
            body = body if following == attempt else self.attempt_body(body, following)
            attempt = following
        self.cache.put(key, self.name, model, answer, tokens_in, tokens_out, usd,
                       stop=None if answer is not None else stop_reason)
