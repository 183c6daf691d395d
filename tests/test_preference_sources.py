"""dpo_pipeline/judging/sources.py: every accepted shape converted exactly, every bad input one line naming where."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dpo_pipeline.errors import UserError
from dpo_pipeline.judging.sources import load_preferences
from tests.support.ultrafeedback import ULTRAFEEDBACK, turn, uf_row, write_parquet

ROOT = Path(__file__).resolve().parents[1]

UF_ROWS = [
    uf_row("How do I reverse a list in Python?", "a1f3", "Use `xs[::-1]` for a copy or `xs.reverse()` in place.",
           "Python lists cannot be reversed."),
    uf_row("Name a prime number above 10.", "b2c4", "11", "11", scores=(7.0, 7.0)),  # a tie: dropped
    uf_row("Translate 'merci' to English.", "c9d0", "Thank you.", "Mercy.", scores=(9.5, 2.0)),
]


def write_jsonl(path: Path, rows: list, blank_after_first: bool = False) -> Path:
    lines = [json.dumps(r) for r in rows]
    if blank_after_first:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def message(source, split="train_prefs", max_pairs=None) -> str:
    with pytest.raises(UserError) as e:
        load_preferences(str(source), split, max_pairs)
    assert "\n" not in str(e.value)
    return str(e.value)


# --- local files, every shape


def test_ultrafeedback_parquet_converted_exactly(tmp_path):
    path = write_parquet(tmp_path / "uf.parquet", UF_ROWS, ULTRAFEEDBACK)
    assert pq.read_schema(path).equals(ULTRAFEEDBACK)
    rows, info = load_preferences(str(path), "train_prefs", None)
    assert rows == [
        {"id": "a1f3", "prompt": [{"role": "user", "content": "How do I reverse a list in Python?"}],
         "chosen": [{"role": "assistant", "content": "Use `xs[::-1]` for a copy or `xs.reverse()` in place."}],
         "rejected": [{"role": "assistant", "content": "Python lists cannot be reversed."}], "source": str(path)},
        {"id": "c9d0", "prompt": [{"role": "user", "content": "Translate 'merci' to English."}],
         "chosen": [{"role": "assistant", "content": "Thank you."}],
         "rejected": [{"role": "assistant", "content": "Mercy."}], "source": str(path)},
    ]
    assert info == {"source": str(path), "rows": 3, "pairs": 2, "dropped_identical": 1, "dropped_empty": 0,
                    "format": "conversational", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                    "columns": ["chosen", "messages", "prompt", "prompt_id", "rejected", "score_chosen",
                                "score_rejected"]}


def test_multi_turn_conversation_keeps_the_turns_before_the_answer(tmp_path):
    history = [turn("system", "Be brief."), turn("user", "Hi"), turn("assistant", "Hello!"), turn("user", "2+2?")]
    row = {"chosen": [*history, turn("assistant", "4")], "rejected": [*history, turn("assistant", "5")]}
    rows, info = load_preferences(str(write_jsonl(tmp_path / "c.jsonl", [row])), "train", None)
    assert rows[0]["prompt"] == [{"role": m["role"], "content": m["content"]} for m in history]
    assert rows[0]["id"] == "0" and info["format"] == "conversational"


def test_plain_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [
        {"id": 7, "prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "  "},  # empty answer: dropped
        {"prompt": "1+1?", "chosen": "2", "rejected": "3"},
    ])
    rows, info = load_preferences(str(path), "train", None)
    assert rows == [
        {"id": "7", "prompt": [{"role": "user", "content": "Capital of France?"}],
         "chosen": [{"role": "assistant", "content": "Paris."}],
         "rejected": [{"role": "assistant", "content": "Lyon."}], "source": str(path)},
        {"id": "2", "prompt": [{"role": "user", "content": "1+1?"}], "chosen": [{"role": "assistant", "content": "2"}],
         "rejected": [{"role": "assistant", "content": "3"}], "source": str(path)},
    ]
    assert info["format"] == "plain" and info["dropped_empty"] == 1 and (info["rows"], info["pairs"]) == (3, 2)
    assert info["columns"] == ["chosen", "id", "prompt", "rejected"]
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_explicit_prompt_conversational(tmp_path):
    system_user = [turn("system", "You are terse."), turn("user", "Largest planet?")]
    path = write_jsonl(tmp_path / "explicit.jsonl", [
        {"prompt": system_user, "chosen": [turn("assistant", "Jupiter")], "rejected": [turn("assistant", "Mars")]},
        {"prompt": "Smallest planet?", "chosen": [turn("assistant", "Mercury")],
         "rejected": [turn("assistant", "Pluto")]},
    ])
    rows, info = load_preferences(str(path), "train", None)
    assert [r["prompt"] for r in rows] == [
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Largest planet?"}],
        [{"role": "user", "content": "Smallest planet?"}],
    ]
    assert [r["chosen"] for r in rows] == [[{"role": "assistant", "content": "Jupiter"}],
                                           [{"role": "assistant", "content": "Mercury"}]]
    assert info["format"] == "conversational"


def test_max_pairs_keeps_the_first_kept_pairs(tmp_path):
    path = write_parquet(tmp_path / "uf.parquet", UF_ROWS, ULTRAFEEDBACK)
    rows, info = load_preferences(str(path), "train_prefs", 1)
    assert [r["id"] for r in rows] == ["a1f3"] and (info["rows"], info["pairs"]) == (1, 1)
    rows, info = load_preferences(str(path), "train_prefs", 2)  # the tie in between is read and dropped
    assert [r["id"] for r in rows] == ["a1f3", "c9d0"] and info["dropped_identical"] == 1


# --- local files, mistakes


def test_wrong_columns_named_in_one_line(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [{"question": "q", "answer": "a"}])
    assert message(path) == (
        f"{path}: columns [answer, question] are not a preference dataset; expected prompt/chosen/rejected "
        "strings, or chosen/rejected message lists (as in HuggingFaceH4/ultrafeedback_binarized)")
    path = write_jsonl(tmp_path / "noprompt.jsonl", [{"chosen": "a", "rejected": "b"}])
    assert "columns [chosen, rejected] are not a preference dataset" in message(path)


def test_prompt_mismatch_between_chosen_and_rejected(tmp_path):
    bad = uf_row("Q2", "p2", "A", "B")
    bad["rejected"][0] = turn("user", "another question")
    path = write_parquet(tmp_path / "m.parquet", [UF_ROWS[0], bad], ULTRAFEEDBACK)
    assert message(path).startswith(f"{path}: row 2: chosen and rejected differ before their last message")


def test_last_message_must_be_the_assistant(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"chosen": [turn("user", "q")], "rejected": [turn("user", "q")]}])
    assert message(path) == f"{path}:1: the last message of chosen and of rejected must have role 'assistant'"


def test_wrong_types_name_the_line(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "t.jsonl", [good, {**good, "chosen": 3}], blank_after_first=True)
    assert message(path) == f"{path}:3: chosen must be a string, got int"
    no_role = {"chosen": [turn("user", "q"), {"content": "a"}], "rejected": [turn("user", "q"), turn("assistant", "b")]}
    path = write_jsonl(tmp_path / "r.jsonl", [no_role])
    assert message(path).startswith(f"{path}:1: chosen must be a non-empty list of {{role, content}} string messages")
    path = write_jsonl(tmp_path / "i.jsonl", [{"prompt": "p", "chosen": 1, "rejected": 2}])
    assert message(path) == f"{path}:1: chosen must be a string or a list of messages, got int"


def test_missing_and_corrupt_files(tmp_path):
    assert message(tmp_path / "nope.parquet") == f"{tmp_path / 'nope.parquet'}: not found"
    assert message(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: not found"
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    assert message(corrupt).startswith(f"{corrupt}: not a Parquet file (")
    broken = tmp_path / "bad.jsonl"
    broken.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": \n')
    assert message(broken).startswith(f"{broken}:2: not valid JSON")


# --- the Hub


def test_hub_rows_and_unknown_split(tmp_path, monkeypatch):
    """The hub path through a real `datasets.Dataset`, its files local (no network in tests)."""
    import datasets

    path = write_parquet(tmp_path / "uf.parquet", UF_ROWS, ULTRAFEEDBACK)
    real = datasets.load_dataset
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # skips the reachability probe
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: real(
        "parquet", data_files={"train_prefs": str(path), "test_prefs": str(path)}, split=split,
        cache_dir=str(tmp_path / "cache")))
    rows, info = load_preferences("hf:HuggingFaceH4/ultrafeedback_binarized", "train_prefs", None)
    local, _ = load_preferences(str(path), "train_prefs", None)
    assert rows == [{**r, "source": "hf:HuggingFaceH4/ultrafeedback_binarized"} for r in local]
    assert info["sha256"] is None and (info["rows"], info["pairs"], info["dropped_identical"]) == (3, 2, 1)
    msg = message("hf:HuggingFaceH4/ultrafeedback_binarized", split="train")
    assert "Unknown split" in msg and "train_prefs" in msg and "test_prefs" in msg


def run_hub(env: dict[str, str | None], tmp_path: Path) -> tuple[str, float]:
    """load_preferences in a fresh interpreter: huggingface_hub and datasets read HF_* variables at import."""
    code = ("from dpo_pipeline.config import UserError\nfrom dpo_pipeline.judging.sources import load_preferences\n"
            "try: load_preferences('hf:HuggingFaceH4/ultrafeedback_binarized', 'train_prefs', None)\n"
            "except UserError as e: print(e)")
    env = {k: v for k, v in {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), **env}.items()
           if v is not None}  # None: unset
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), time.monotonic() - start


def test_hub_offline_fails_fast(tmp_path):
    msg, seconds = run_hub({"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert msg.startswith("hf:HuggingFaceH4/ultrafeedback_binarized: not in the local cache and HF_HUB_OFFLINE=1")
    assert "use a local file" in msg and seconds < 30


def test_hub_unreachable_fails_fast(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: connection refused, like a Hub that cannot be reached
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    online = {"HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None, "TRANSFORMERS_OFFLINE": None}
    msg, seconds = run_hub({**online, "HF_ENDPOINT": f"http://127.0.0.1:{port}"}, tmp_path)
    assert msg.startswith("hf:HuggingFaceH4/ultrafeedback_binarized: cannot reach the Hugging Face Hub (")
    assert "HF_HUB_OFFLINE=1" in msg and seconds < 30
