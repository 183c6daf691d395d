"""A fake Anthropic Messages API server on 127.0.0.1 for the official SDK (stdlib only), and
`policy_answer`, a judge for it that applies the written policy (as the rubric does) to what the request says."""

from __future__ import annotations

import html
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dpo_pipeline.judging.rubric import RubricJudge
from dpo_pipeline.tasks import incident_triage


def section(text: str, tag: str) -> str:
    return html.unescape(re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S).group(1))


def policy_answer(body: dict) -> dict:
    """Judge like the rubric, reading only what the request says: the server sees what Claude would."""
    text = body["messages"][0]["content"]
    prompt = section(text, "prompt")
    if body["tools"][0]["name"] == "record_score":
        score, reason = incident_triage.rubric_score(prompt, section(text, "response"))
        return {"score": score, "reason": reason}
    verdict = RubricJudge(incident_triage).pairwise(prompt, section(text, "response_a"), section(text, "response_b"))
    return verdict.model_dump()


_ERRORS = {
    "429": (429, "rate_limit_error", "Number of requests has exceeded your rate limit."),
    "529": (529, "overloaded_error", "Overloaded"),
    "500": (500, "api_error", "Internal server error"),
}


API_VERSION = "2026-10-21"  # what the pinned SDK sends (anthropic/_constants.py)
SAMPLING = ("temperature", "top_p", "top_k")  # refused on every model under 2026-10-21
ALWAYS_THINKING = ("claude-opus-5-5", "claude-fable-5-1")  # forced tool use and thinking off are 400s
THINKING_TOKENS = {"low": 120, "medium": 400, "high": 900, "xhigh": 1500, "max": 2500}  # this server's thinking


def refusal_of(body: dict, version: str | None) -> str | None:
    """Why the real API (version 2026-10-21, Opus 5.5's rules) answers this request body with a 400."""
    if version == API_VERSION:
        for k in SAMPLING:
            if k in body:
                return f"{k}: Extra inputs are not permitted"
    model = str(body.get("model", ""))
    if model.startswith(ALWAYS_THINKING):
        if (body.get("tool_choice") or {}).get("type") in ("tool", "any"):
            return f"tool_choice: forced tool use is not supported for {model}; use tool_choice auto"
        kind = (body.get("thinking") or {}).get("type")
        if kind in ("disabled", "enabled"):
            return (f'"thinking.type.{kind}" is not supported for this model. Use "thinking.type.adaptive" '
                    'and "output_config.effort" to control thinking behavior.')
    return None


def _hex() -> str:
    return uuid.uuid4().hex[:24]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class FakeAnthropic:
    """Speaks enough of the Messages API (``POST /v1/messages``) and the Message Batches API
    (``POST /v1/messages/batches``, ``GET /v1/messages/batches/<id>`` and ``.../results``) that
    the official ``anthropic`` SDK can talk to it over real HTTP, even with
    ``_strict_response_validation=True``.  Point a client at it with ``base_url=fake.base_url``.

    ``answer(body)`` returns the ``input`` of the forced tool's ``tool_use`` block (the tool is
    ``body["tool_choice"]["name"]``), or ``None`` for a plain-text ``end_turn`` reply.  ``faults`` is
    consumed one entry per ``POST /v1/messages`` (``"429"``, ``"529"``, ``"500"``, ``"slow"``,
    ``"invalid"``, ``"refusal"``) to exercise retries, timeouts and validation.  Every request is
    recorded in ``requests``, with the server's ``time.monotonic()`` on arrival; created batches live in
    ``batches``.  ``hold_batches_after = n`` holds every batch creation after the n-th until
    ``release()``: recorded, never created, never answered (a client killed while it waits has created
    exactly n).  ``position_bias="A"`` (or ``"B"``) makes a judge biased on purpose: every pairwise verdict
    names that position, whatever is in it (scores still come from ``answer``)."""

    def __init__(self, answer, *, latency_s=0.0, slow_s=2.0, batch_polls=2, position_bias=None):
        self.answer = answer
        self.position_bias = position_bias
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.batch_polls = batch_polls
        self.faults: list[str] = []
        self.chars_per_token = 4.0
        self.refusing: set[str] = set()  # models that refuse every request (stop_reason refusal)
        self.refusing_with_400: str | None = None  # every message request answered with this 400
        self.requests: list[dict] = []
        self.batches: dict[str, dict] = {}
        self.hold_batches_after: int | None = None
        self._release = threading.Event()  # set on exit: held requests end without an answer
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # ---- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "FakeAnthropic":
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        server_cls = type("_Server", (ThreadingHTTPServer,), {"request_queue_size": 128})  # default 5 drops bursts
        self._server = server_cls(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def message_count(self) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r["method"] == "POST" and r["path"] == "/v1/messages")

    def release(self) -> None:
        """Stop holding batch creations; a held one ends without an answer (the SDK retries it)."""
        self.hold_batches_after = None
        self._release.set()

    @property
    def batch_creations(self) -> int:
        """Batch creations received, held ones included."""
        with self._lock:
            return sum(1 for r in self.requests if r["method"] == "POST" and r["path"] == "/v1/messages/batches")

    # ---- response builders -----------------------------------------------------------
    def _next_fault(self) -> str | None:
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    def input_tokens(self, body: dict) -> int:
        """This server's tokenizer: `chars_per_token` characters of the request's JSON a token."""
        counted = {k: body[k] for k in ("model", "system", "messages", "tools", "tool_choice") if k in body}
        return max(1, int(len(json.dumps(counted)) / self.chars_per_token))

    def make_message(self, body: dict, fault: str | None = None, service_tier: str = "standard") -> dict:
        choice = body.get("tool_choice") or {}
        tool = choice.get("name") or next((t.get("name") for t in body.get("tools") or []), "tool")
        stop = "tool_use"
        model = str(body.get("model", ""))
        # A model that always thinks spends thinking tokens first (billed as output, within max_tokens) and
        # answers after a thinking block whose text is empty at the default display.
        thinking = THINKING_TOKENS[(body.get("output_config") or {}).get("effort") or "medium"] \
            if model.startswith(ALWAYS_THINKING) else 0
        answer_tokens = 25
        lead = [{"type": "thinking", "thinking": "", "signature": f"sig_{_hex()}"}] if thinking else []
        if fault == "refusal" or model in self.refusing:
            content, stop = [{"type": "text", "text": "I can't help with that.", "citations": None}], "refusal"
        elif fault == "invalid":
            content = [{"type": "tool_use", "id": f"toolu_{_hex()}", "name": tool, "input": {"winner": "C", "score": 9}}]
        else:
            tool_input = self.answer(body)
            if self.position_bias and tool == "record_verdict":
                tool_input = {"winner": self.position_bias, "reason": "the response in that position"}
            if tool_input is None:
                content, stop = [{"type": "text", "text": "OK.", "citations": None}], "end_turn"
            else:
                content = [{"type": "tool_use", "id": f"toolu_{_hex()}", "name": tool, "input": tool_input}]
        if thinking + answer_tokens > body.get("max_tokens", 0) and stop != "refusal":
            # cut off: the limit ran out while thinking, before any answer
            content, stop = [], "max_tokens"
            answer_tokens = max(0, body.get("max_tokens", 0) - thinking)
            thinking = min(thinking, body.get("max_tokens", 0))
        content = lead + content
        return {
            "id": f"msg_{_hex()}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-fake"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.input_tokens(body),
                "output_tokens": thinking + answer_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "server_tool_use": None,
                "service_tier": service_tier,
            },
        }

    def _batch_view(self, b: dict) -> dict:
        ended = b["polls"] >= self.batch_polls
        n = len(b["requests"])
        return {
            "id": b["id"],
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {"processing": 0 if ended else n, "succeeded": n if ended else 0,
                               "errored": 0, "canceled": 0, "expired": 0},
            "created_at": _iso(b["created"]),
            "expires_at": _iso(b["created"] + 86400),
            "ended_at": _iso(b["ended"]) if ended and b["ended"] else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.base_url}/v1/messages/batches/{b['id']}/results" if ended else None,
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm and the client's delayed ACK that
    # adds ~40 ms to a keep-alive answer, which a latency benchmark would blame on the client.
    disable_nagle_algorithm = True
    fake: FakeAnthropic

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, payload, content_type="application/json", headers=None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", f"req_{_hex()}")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # client gave up (e.g. timeout)
            self.close_connection = True

    def _error(self, status: int, etype: str, message: str, headers=None) -> None:
        self._send(status, {"type": "error", "error": {"type": etype, "message": message}}, headers=headers)

    def _record(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = self.path.split("?", 1)[0]
        with self.fake._lock:
            self.fake.requests.append({"method": self.command, "path": path, "time": time.monotonic(),
                                       "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        return path, body

    def do_POST(self) -> None:
        fake = self.fake
        path, body = self._record()
        if path == "/v1/messages":
            fault = fake._next_fault()
            time.sleep(fake.latency_s)
            if fault in _ERRORS:
                status, etype, msg = _ERRORS[fault]
                return self._error(status, etype, msg, {"retry-after": "0"} if fault == "429" else None)
            if fault == "slow":
                time.sleep(fake.slow_s)
            if not isinstance(body, dict):
                return self._error(400, "invalid_request_error", "Body must be a JSON object.")
            why = refusal_of(body, self.headers.get("anthropic-version")) or fake.refusing_with_400
            if why:
                return self._error(400, "invalid_request_error", why)
            return self._send(200, fake.make_message(body, fault))
        if path == "/v1/messages/count_tokens":
            why = refusal_of(body or {}, self.headers.get("anthropic-version"))
            if why:
                return self._error(400, "invalid_request_error", why)
            return self._send(200, {"input_tokens": fake.input_tokens(body)})
        if path == "/v1/messages/batches":
            if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
                return self._error(400, "invalid_request_error", "requests: field required")
            for i, r in enumerate(body["requests"]):
                why = refusal_of(r.get("params") or {}, self.headers.get("anthropic-version"))
                if why:
                    return self._error(400, "invalid_request_error", f"requests.{i}.params.{why}")
            with fake._lock:
                held = fake.hold_batches_after is not None and len(fake.batches) >= fake.hold_batches_after
            if held:
                fake._release.wait()
                self.close_connection = True
                return
            b = {"id": f"msgbatch_{_hex()}", "requests": body["requests"], "polls": 0,
                 "created": time.time(), "ended": None}
            with fake._lock:
                fake.batches[b["id"]] = b
                view = fake._batch_view(b)
            return self._send(200, view)
        self._error(404, "not_found_error", f"Not found: POST {path}")

    def do_GET(self) -> None:
        fake = self.fake
        path, _ = self._record()
        parts = path.strip("/").split("/")
        if len(parts) in (4, 5) and parts[:3] == ["v1", "messages", "batches"] and parts[3] in fake.batches:
            b = fake.batches[parts[3]]
            if len(parts) == 4:
                with fake._lock:
                    b["polls"] += 1
                    if b["polls"] >= fake.batch_polls and b["ended"] is None:
                        b["ended"] = time.time()
                    view = fake._batch_view(b)
                return self._send(200, view)
            if parts[4] == "results" and b["ended"] is not None:
                lines = [json.dumps({"custom_id": r["custom_id"], "result": {
                    "type": "succeeded", "message": fake.make_message(r["params"], service_tier="batch")}})
                    for r in b["requests"]]
                return self._send(200, ("\n".join(lines) + "\n").encode(), "application/x-jsonl")
        self._error(404, "not_found_error", f"Not found: GET {path}")
