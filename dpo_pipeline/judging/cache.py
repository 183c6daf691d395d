"""The judge's call-level cache and log, in SQLite, outside DVC's outputs so DVC never deletes it.

A judgment is keyed by the content of its request (backend, model, prompt template version, policy, prompt,
responses and their order, decoding params) and, for a question asked again on purpose, its repeat index:
a re-run, a crash, a changed unrelated param or a queued `dvc exp` never pays for the same judgment twice.
Every request sent is logged with tokens, latency and cost. Message batches are recorded as soon as they
are submitted, so an interrupted run resumes them by id.
The API key is never part of a request body, so it never reaches this file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS judgments (
        key TEXT PRIMARY KEY, backend TEXT, model TEXT, answer TEXT,   -- answer: JSON, or NULL if invalid
        input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, created REAL,
        stop TEXT)                                                      -- why an invalid answer ended""",
    """CREATE TABLE IF NOT EXISTS calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, model TEXT, mode TEXT, valid INTEGER,
        input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, latency_s REAL, error TEXT, created REAL)""",
    """CREATE TABLE IF NOT EXISTS batches (
        id TEXT PRIMARY KEY, model TEXT, keys TEXT, status TEXT, created REAL)""",
]


def request_key(backend: str, template_version: str, body: dict, repeat: int = 0) -> str:
    """`repeat` > 0 keys the same request asked again (self-consistency): its own entry, not the first
    answer. It is not in the body, so the API sees the identical request; repeat 0 adds nothing, so
    the keys of everything cached before repeats existed are unchanged."""
    request = {"backend": backend, "template": template_version, "request": body}
    canonical = json.dumps({**request, "repeat": repeat} if repeat else request, sort_keys=True,
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class JudgeCache:
    def __init__(self, directory: str | Path):
        path = Path(directory).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "judge.sqlite"
        # WAL + a busy timeout: parallel `dvc exp` runs may share the cache.
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # Each answer is committed as it arrives (a killed run keeps it); NORMAL skips the fsync per commit,
        # which WAL makes safe against a process crash (only an OS crash could lose the last answers).
        self.db.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            self.db.execute(statement)
        columns = [r[1] for r in self.db.execute("PRAGMA table_info(judgments)")]
        if "stop" not in columns:  # a cache written before stop reasons were kept
            self.db.execute("ALTER TABLE judgments ADD COLUMN stop TEXT")

    def get(self, key: str) -> sqlite3.Row | None:
        self.db.row_factory = sqlite3.Row
        return self.db.execute("SELECT * FROM judgments WHERE key = ?", (key,)).fetchone()

    def put(self, key: str, backend: str, model: str, answer: dict | None, input_tokens: int,
            output_tokens: int, cost_usd: float, stop: str | None = None) -> None:
        self.db.execute("INSERT OR REPLACE INTO judgments (key, backend, model, answer, input_tokens, "
                        "output_tokens, cost_usd, created, stop) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (key, backend, model, None if answer is None else json.dumps(answer), input_tokens,
                         output_tokens, cost_usd, time.time(), stop))

    def log_call(self, key: str, model: str, mode: str, valid: bool, input_tokens: int, output_tokens: int,
                 cost_usd: float, latency_s: float, error: str | None = None) -> None:
        self.db.execute("INSERT INTO calls (key, model, mode, valid, input_tokens, output_tokens, cost_usd, "
                        "latency_s, error, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (key, model, mode, int(valid), input_tokens, output_tokens, cost_usd, latency_s, error,
                         time.time()))

    def add_batch(self, batch_id: str, model: str, keys: list[str]) -> None:
        self.db.execute("INSERT INTO batches VALUES (?, ?, ?, 'submitted', ?)",
                        (batch_id, model, json.dumps(keys), time.time()))

    def open_batches(self, model: str) -> list[tuple[str, list[str]]]:
        rows = self.db.execute("SELECT id, keys FROM batches WHERE status = 'submitted' AND model = ? "
                               "ORDER BY created", (model,)).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    def close_batch(self, batch_id: str, status: str = "folded") -> None:
        self.db.execute("UPDATE batches SET status = ? WHERE id = ?", (status, batch_id))

    def close(self) -> None:
        self.db.close()
