"""Preference data shaped like HuggingFaceH4/ultrafeedback_binarized, written as parquet."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


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
