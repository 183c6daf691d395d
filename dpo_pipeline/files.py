"""Reading and writing the pipeline's files: JSONL/JSON rows with errors that name file and line, and
atomic writes, so a failed stage never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dpo_pipeline.errors import UserError


TEXT = ("id", "prompt", "response")


def read_jsonl(path: str | Path, required: tuple[str, ...] = (), strings: tuple[str, ...] = TEXT,
               empty: bool = False) -> list[dict]:
    """Rows of a JSONL file; every `required` field present, those also in `strings` non-empty strings, and
    `id`s unique when `id` is required. No rows is an error unless `empty`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    rows, ids = [], {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{lineno}: not UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    raise UserError(f"{path}:{lineno}: missing field {key!r}")
                if key in strings and not isinstance(row[key], str):
                    raise UserError(f"{path}:{lineno}: field {key!r} must be a string, got "
                                    f"{type(row[key]).__name__}")
                if key in strings and not row[key].strip():
                    raise UserError(f"{path}:{lineno}: field {key!r} is empty")
            if "id" in required:
                if row["id"] in ids:
                    raise UserError(f"{path}:{lineno}: duplicate id {row['id']!r} (first on line {ids[row['id']]})")
                ids[row["id"]] = lineno
            rows.append(row)
    if not rows and not empty:
        raise UserError(f"{path}: no rows")
    return rows


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto `path` only if the block succeeds (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*"):  # left by a run that was killed before it could clean up
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_json(path: str | Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sft_pairs(params, why: str) -> list[dict]:
    """The task's SFT pairs as stage sft_data copied them; none is an error naming the task's file and `why`
    this run needs them."""
    rows = read_jsonl(params.paths.sft_data, required=TEXT, empty=True)
    if not rows:
        raise UserError(f"{params.task_files.sft_data}: no SFT pairs (not found or empty), and {why}")
    return rows
