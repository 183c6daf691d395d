"""Any OpenAI-compatible chat-completions server as the judge (vLLM, SGLang, llama.cpp's server, Ollama, TGI,
or OpenAI itself), with the official `openai` SDK: that API's side of an online judge (online.py sends,
retries, caches and holds the budget; prompts.py is what is asked, the same questions Claude gets).

- The policy is the system message and the question the user message; the answer is a JSON object in the
  reply's text. With `judge.response_format: json_schema` the request carries OpenAI's
  `response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`, the portable form
  (vLLM holds the decoding to it, tested; SGLang, llama.cpp and Ollama document it); vLLM's removed
  `guided_json` is not sent, as a vLLM past 0.12 ignores it silently. Whatever the server did with it, the
  answer is validated against the pydantic `Verdict` / `Score`: a server that ignores the schema gets its
  prose counted invalid, never guessed.
- Finish reasons in the Messages API's words (online.NO_ANSWER): `length` is a `max_tokens` stop, asked once
  more with 4x the room; `content_filter` or a `refusal` field is a `refusal`.
- Tokens before sending: ~3.5 characters a token (no token-counting endpoint is common to these servers);
  a reply's `usage` is what is billed, the estimate when a server sends none.
- `max_tokens`, not `max_completion_tokens`: the name these servers read (OpenAI's own reasoning models want
  the other and refuse `temperature`; this backend is for servers of your own first).
- The SDK retries 408, 409, 429, 5xx, timeouts and refused connections with backoff, honouring retry-after, up
  to `judge.max_retries`; what still fails is worded here as one line.
The key is read from the variable `judge.api_key_env` names and held in memory only; unset, a placeholder is
sent, which a server without auth ignores.
"""

from __future__ import annotations

import json
import os

from dpo_pipeline.config import JudgeParams
from dpo_pipeline.errors import ServiceError, UserError
from dpo_pipeline.judging.online import Attempt, OnlineJudge, Reply
from dpo_pipeline.judging.prompts import SCHEMAS, TOOLS, from_text, question, system

NO_KEY = "no-key"  # sent when the key's variable is unset: a server without auth accepts any
# finish_reason -> the stop reasons online.py acts on (anything else is kept as the server said it)
STOPS = {"length": "max_tokens", "content_filter": "refusal"}


def api_key_from_env(cfg: JudgeParams) -> str | None:
    """The key, or None: a server of your own needs none, and one that does answers 401 (worded below)."""
    return os.environ.get(cfg.api_key_env) or None


class OpenAIJudge(OnlineJudge):
    name = "openai"

    def __init__(self, cfg: JudgeParams, policy: str, api_key: str | None):
        super().__init__(cfg, policy)
        self._key = api_key
        # The two system prompts, to tell a request's kind from its body (the one thing send() is given).
        self._kinds = {system(policy, kind, in_json=True): kind for kind in TOOLS}

    # --- requests -----------------------------------------------------------------------------------------

    def body(self, kind: str, item: tuple[str, ...]) -> dict:
        body = {"model": self.cfg.model, "max_tokens": self.cfg.max_tokens,
                "messages": [{"role": "system", "content": system(self.policy, kind, in_json=True)},
                             {"role": "user", "content": question(kind, item)}]}
        if self.cfg.temperature is not None:
            body["temperature"] = self.cfg.temperature
        if self.cfg.response_format == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": TOOLS[kind][0], "schema": SCHEMAS[kind], "strict": True}}
        return body

    def attempt_body(self, body: dict, attempt: Attempt) -> dict:
        return {**body, "model": attempt.model, "max_tokens": self.cfg.max_tokens * attempt.room}

    def _tokens(self, body: dict) -> tuple[int, int]:
        return int(len(json.dumps(body)) / 3.5) + 1, body["max_tokens"]

    def kind(self, body: dict) -> str:
        return self._kinds[body["messages"][0]["content"]]

    # --- answers ------------------------------------------------------------------------------------------

    def parse(self, body: dict, completion) -> Reply:
        """The validated answer (None if the text is not the schema's JSON), the stop reason, the usage."""
        estimated_in = self._tokens(body)[0]
        choice = completion.choices[0] if completion.choices else None
        text = (choice.message.content or "") if choice else ""
        stop = STOPS.get(choice.finish_reason, choice.finish_reason) if choice else "no_choice"
        if choice is not None and getattr(choice.message, "refusal", None):
            stop = "refusal"  # OpenAI's structured outputs: the model declined to answer in the schema
        usage = completion.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (estimated_in, int(len(text) / 3.5))
        return Reply(from_text(TOOLS[self.kind(body)][0], text), stop, *tokens)

    # --- sending ------------------------------------------------------------------------------------------

    def client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(api_key=self._key or NO_KEY, base_url=self.cfg.base_url,
                           max_retries=self.cfg.max_retries, timeout=self.cfg.timeout_s)

    async def send(self, client, body: dict) -> Reply:
        return self.parse(body, await client.chat.completions.create(**body))

    @property
    def request_error(self) -> type[BaseException]:
        from openai import APIError

        return APIError

    def where(self) -> str:
        return self.cfg.base_url or os.environ.get("OPENAI_BASE_URL") or "the OpenAI API"

    def translate(self, err: BaseException) -> Exception:
        """A request that failed after the SDK's retries, as the error the entry point shows in one line."""
        from openai import APIConnectionError, AuthenticationError

        env = self.cfg.api_key_env
        if isinstance(err, AuthenticationError):
            fix = f"check {env}" if self._key else f"export {env} (judge.api_key_env names the variable)"
            return UserError(f"judge: {self.where()} rejected the key (401): {fix}")
        if isinstance(err, APIConnectionError):  # timeouts too
            return ServiceError(f"judge: no answer from {self.where()} after {self.cfg.max_retries} retries "
                                f"({type(err).__name__}); is the server up? finished judgments are cached, rerun "
                                "to resume")
        status = getattr(err, "status_code", None)
        if status in (400, 403, 404, 413, 422):  # the server refused the request itself: retrying cannot help
            return UserError(f"judge: {self.where()} refused a request to {self.cfg.model} ({status} "
                             f"{type(err).__name__}: {detail(err)}); check judge.model and judge.base_url (a "
                             "server that refuses response_format: judge.response_format: null)")
        return ServiceError(
            f"judge: a request to {self.cfg.model} at {self.where()} failed after {self.cfg.max_retries} retries "
            f"({type(err).__name__}{f' {status}' if status else ''}); finished judgments are cached, rerun to resume")


def detail(err: BaseException) -> str:
    """The server's own message: OpenAI's {"error": {"message"}}, or a bare {"message"} (vLLM, others)."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        message = inner.get("message") if isinstance(inner, dict) else body.get("message") or inner
        if message:
            return " ".join(str(message).split())[:300]
    return str(err)
