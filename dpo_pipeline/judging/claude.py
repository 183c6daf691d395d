"""Claude as the judge, with the official `anthropic` SDK: the Messages API's side of an online judge
(online.py sends, retries, caches and holds the budget; prompts.py is what is asked; batches.py is batch mode).

- Requests as the API takes them under version 2026-10-21 (the pinned SDK's): no sampling parameters (it
  refuses temperature, top_p and top_k on every model). The verdict is a tool whose input schema is the
  pydantic `Verdict` / `Score`: forced (`tool_choice: tool`) on models that allow it; on models that think
  always and refuse forced tool use (Opus 5.5, Fable 5.1: `ALWAYS_THINKING`) offered with `tool_choice: auto`,
  with `judge.thinking_tokens` more room and `output_config.effort` at `judge.effort`; a JSON text answer is
  accepted too. Content blocks are found by type, never position (a thinking block may come first).
- Tokens before sending: ~3.5 characters a token, scaled by the API's own count (`messages.count_tokens`,
  free) of a sample, so the budget and the token limiter hold the model's real tokenizer.
- The SDK retries 429, 529, 5xx and timeouts with backoff, honouring retry-after, up to `judge.max_retries`;
  what still fails is worded here as one line: a 401, a request the API refused (400), or retries spent.
The API key comes from ANTHROPIC_API_KEY only and is held in memory, never written anywhere.
"""

from __future__ import annotations

import json
import os

from dpo_pipeline.config import JudgeParams
from dpo_pipeline.errors import ServiceError, UserError
from dpo_pipeline.judging.batches import send_batches
from dpo_pipeline.judging.limits import split_batches
from dpo_pipeline.judging.online import Attempt, OnlineJudge, Reply
from dpo_pipeline.judging.prompts import SCHEMAS, TOOLS, from_text, kind_of, question, system

# Models that always think and refuse forced tool use and `thinking: disabled` with a 400 (Anthropic's
# "What's new in Claude Opus 5.5"; the same holds for Fable 5.1).
ALWAYS_THINKING = ("claude-opus-5-5", "claude-fable-5-1")
COUNT_SAMPLE = 8  # requests counted by the API before a run's first send


def always_thinks(model: str) -> bool:
    return model.startswith(ALWAYS_THINKING)


def api_key_from_env() -> str:
    key = os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        raise UserError("judge.backend is 'anthropic' but ANTHROPIC_API_KEY is not set: export it, "
                        "or set judge.backend: rubric to judge offline")
    return key


class AnthropicJudge(OnlineJudge):
    name = "anthropic"

    def __init__(self, cfg: JudgeParams, policy: str, api_key: str | None, *, strict_validation: bool = False):
        """`api_key` None builds requests and estimates costs but cannot send (tools.estimate)."""
        super().__init__(cfg, policy)
        self._key, self._strict = api_key, strict_validation
        self.scale = 1.0  # tokens per heuristic token (calibrate)

    # --- requests -----------------------------------------------------------------------------------------

    def body(self, kind: str, item: tuple[str, ...]) -> dict:
        return self.request(self.cfg.model, kind, question(kind, item))

    def attempt_body(self, body: dict, attempt: Attempt) -> dict:
        return self.request(attempt.model, kind_of(body["tools"][0]["name"]), body["messages"][0]["content"],
                            attempt.room)

    def request(self, model: str, kind: str, text: str, room: int = 1) -> dict:
        """The request for `model`; `room` multiplies the token limit (after a max_tokens stop)."""
        tool = TOOLS[kind][0]
        thinking = always_thinks(model)
        body = {
            "model": model,
            "max_tokens": (self.cfg.max_tokens + (self.cfg.thinking_tokens if thinking else 0)) * room,
            "system": system(self.policy, kind),
            "messages": [{"role": "user", "content": text}],
            "tools": [{"name": tool, "description": f"Record the {kind} judgment.",
                       "input_schema": SCHEMAS[kind]}],
            # Forced tool use is a 400 on the models that always think: they are offered the tool instead.
            "tool_choice": {"type": "auto"} if thinking else {"type": "tool", "name": tool},
        }
        if thinking and self.cfg.effort:
            body["output_config"] = {"effort": self.cfg.effort}
        return body

    def _tokens(self, body: dict) -> tuple[int, int]:
        """(input, output) tokens before sending: ~3.5 characters a token (a heuristic, not a bound), and
        the request's full max_tokens (thinking included)."""
        return int(len(json.dumps(body)) / 3.5 * self.scale) + 1, body["max_tokens"]

    async def calibrate(self, client, todo: dict[str, dict]) -> None:
        """Fit the heuristic to the API's own count (`messages.count_tokens`, free) on a sample of the
        requests, so the budget guard and the token limiter hold the model's real tokenizer; the scale is
        the sample's largest ratio, rounded up, so it errs high."""
        sample = [todo[k] for k in sorted(todo)[:COUNT_SAMPLE]]
        ratios = []
        for body in sample:
            counted = await client.messages.count_tokens(
                **{k: body[k] for k in ("model", "system", "messages", "tools", "tool_choice", "output_config")
                   if k in body})
            ratios.append(counted.input_tokens / (len(json.dumps(body)) / 3.5))
        if ratios:
            self.scale = max(self.scale, max(ratios) * 1.05)
            self.usage.token_scale = round(self.scale, 3)

    # --- answers ------------------------------------------------------------------------------------------

    @staticmethod
    def parse(body: dict | None, message) -> dict | None:
        """The validated answer, or None. Blocks are picked by type (thinking blocks may come first): our
        tool's input, else a JSON object in a text block. `body` None (a batch result whose request this run
        did not build): whichever of our tools the answer used."""
        schemas = dict(TOOLS.values())
        expected = body["tools"][0]["name"] if body else None
        for block in message.content:
            if block.type == "tool_use" and block.name in schemas and block.name == (expected or block.name):
                try:
                    return schemas[block.name].model_validate(block.input).model_dump()
                except ValueError:
                    return None
        if expected is None:
            return None
        for block in message.content:
            if block.type == "text" and (answer := from_text(expected, block.text)) is not None:
                return answer
        return None  # a refusal, a cut-off answer or prose

    # --- sending ------------------------------------------------------------------------------------------

    def client(self):
        from anthropic import AsyncAnthropic

        return AsyncAnthropic(api_key=self._key, base_url=self.cfg.base_url, max_retries=self.cfg.max_retries,
                              timeout=self.cfg.timeout_s, _strict_response_validation=self._strict)

    async def send(self, client, body: dict) -> Reply:
        message = await client.messages.create(**body)
        return Reply(self.parse(body, message), message.stop_reason, message.usage.input_tokens,
                     message.usage.output_tokens)

    async def _send(self, todo: dict[str, dict]) -> None:
        async with self.client() as client:
            await self.calibrate(client, todo)
            if self.cfg.mode == "batch":
                await send_batches(self, client, todo)
                todo = {k: b for k, b in todo.items() if self.cache.get(k) is None}  # invalid: retry online
            if todo:
                await self._online(client, todo)

    def batches_for(self, todo: dict[str, dict]) -> int:
        return len(split_batches(todo, self.cfg.batch_max_requests))

    @property
    def request_error(self) -> type[BaseException]:
        from anthropic import APIError

        return APIError

    def translate(self, err: BaseException) -> Exception:
        """A request that failed after the SDK's retries, as the error the entry point shows in one line."""
        from anthropic import AuthenticationError

        if isinstance(err, AuthenticationError):
            return UserError("ANTHROPIC_API_KEY was rejected by the API (401): check the key")
        status = getattr(err, "status_code", None)
        if status in (400, 403, 404, 413, 422):  # the API refused the request itself: retrying cannot help
            detail = (getattr(err, "body", None) or {}).get("error", {}).get("message", "") \
                if isinstance(getattr(err, "body", None), dict) else ""
            return UserError(f"judge: the API refused a request to {self.cfg.model} ({status} "
                             f"{type(err).__name__}: {detail or err}); check judge.model and the judge settings")
        return ServiceError(
            f"judge: a request to {self.cfg.model} failed after {self.cfg.max_retries} retries "
            f"({type(err).__name__}{f' {status}' if status else ''}); finished judgments are cached, "
            f"rerun to resume")
