"""A fake OpenAI-compatible chat-completions server on 127.0.0.1 (as the openai SDK sees vLLM, llama.cpp or
OpenAI), judging with `policy_answer`."""

from __future__ import annotations

import json
import threading
import time
from http.server import ThreadingHTTPServer

from tests.support.fake_anthropic import _Handler, _hex, policy_answer


def chat_answer(body: dict) -> dict:
    """`policy_answer` for a chat-completions request: the same judge, reading the user message."""
    text = body["messages"][-1]["content"]
    tool = "record_verdict" if "<response_a>" in text else "record_score"
    return policy_answer({"messages": [{"content": text}], "tools": [{"name": tool}]})


class FakeOpenAI:
    """`POST /v1/chat/completions` on 127.0.0.1, enough of it for the official openai SDK. `answer(body)` is
    the judgment, written as JSON text. `faults`, one a request: "429" (retry-after 0), "500", "400" (a request
    the server refuses), "prose" (free text, as a server that ignores response_format gets from a small
    model), "length" (cut off), "refusal" (finish_reason content_filter). `ignores_response_format`: every
    answer in prose. `api_key`: the key this server requires (401 without it). Requests are recorded in
    `requests` with their headers."""

    def __init__(self, answer=chat_answer, *, api_key: str | None = None):
        self.answer, self.api_key = answer, api_key
        self.faults: list[str] = []
        self.ignores_response_format = False
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.base_url = ""

    def __enter__(self) -> "FakeOpenAI":
        handler = type("Handler", (_ChatHandler,), {"fake": self})
        self._server = type("_Server", (ThreadingHTTPServer,), {"request_queue_size": 128})(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def completions(self) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["path"] == "/v1/chat/completions"]

    def next_fault(self) -> str | None:
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    def completion(self, body: dict, fault: str | None) -> dict:
        text, finish = json.dumps(self.answer(body)), "stop"
        if fault == "prose" or self.ignores_response_format:
            text = "Response A is better because it follows the policy."
        elif fault == "length":
            text, finish = text[:12], "length"
        elif fault == "refusal":
            text, finish = "", "content_filter"
        prompt_tokens = max(1, len(json.dumps(body["messages"])) // 4)
        return {"id": f"chatcmpl-{_hex()}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"], "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                             "logprobs": None}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 20,
                          "total_tokens": prompt_tokens + 20}}


class _ChatHandler(_Handler):
    fake: FakeOpenAI

    def _error(self, status: int, etype: str, message: str, headers=None) -> None:
        self._send(status, {"error": {"message": message, "type": etype, "param": None, "code": None}},
                   headers=headers)

    def do_POST(self) -> None:
        fake = self.fake
        path, body = self._record()
        if path != "/v1/chat/completions":
            return self._error(404, "not_found", f"Not found: POST {path}")
        if fake.api_key and self.headers.get("authorization") != f"Bearer {fake.api_key}":
            return self._error(401, "invalid_api_key", "Incorrect API key provided.")
        fault = fake.next_fault()
        if fault == "429":
            return self._error(429, "rate_limit_exceeded", "Rate limit reached.", {"retry-after": "0"})
        if fault == "500":
            return self._error(500, "server_error", "The server had an error.")
        if fault == "400" or not isinstance(body, dict) or not body.get("messages"):
            return self._error(400, "invalid_request_error", "response_format: json_schema is not supported")
        self._send(200, fake.completion(body, fault))

    def do_GET(self) -> None:
        self._record()
        self._error(404, "not_found", f"Not found: GET {self.path}")
