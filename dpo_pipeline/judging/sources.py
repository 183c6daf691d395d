"""Preference pairs from an existing dataset: `hf:<dataset id>` on the Hub, or a local .jsonl/.json or .parquet file.

    preferences: {source: hf:HuggingFaceH4/ultrafeedback_binarized, split: train_prefs, max_pairs: 2000}

Rows come out in TRL's conversational preference format, as the train stage reads them:
{id, prompt: [messages], chosen: [assistant msg], rejected: [assistant msg], source}.

Shapes accepted, decided per dataset by its columns and the type of `chosen`:
- conversational (HuggingFaceH4/ultrafeedback_binarized): `chosen` and `rejected` are message lists holding the
  whole conversation; the prompt is everything before the final assistant turn and must be the same in both.
- conversational with an explicit prompt (TRL): `chosen`/`rejected` hold only the answer and `prompt` is a
  message list, or a string taken as one user turn.
- plain: `prompt`, `chosen` and `rejected` are strings.
The id is `prompt_id`, else `id`, else the row's index. Pairs with an empty answer or two equal answers are
dropped and counted. With max_pairs, reading stops at the first max_pairs kept pairs (file order).
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

from dpo_pipeline.chat import assistant, user
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import read_jsonl

EXPECTED = ("expected prompt/chosen/rejected strings, or chosen/rejected message lists "
            "(as in HuggingFaceH4/ultrafeedback_binarized)")
PROBE_TIMEOUT_S = 10


def _messages(value, where: str, field: str) -> list[dict]:
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise UserError(f"{where}: {field} must be a non-empty list of {{role, content}} string messages, "
                        f"got {str(value)[:80]!r}")
    return [{"role": m["role"], "content": m["content"]} for m in value]  # drop extra keys TRL does not read


def _conversational(row: dict, where: str) -> tuple[list[dict], dict, dict]:
    chosen, rejected = _messages(row.get("chosen"), where, "chosen"), _messages(row.get("rejected"), where, "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise UserError(f"{where}: the last message of chosen and of rejected must have role 'assistant'")
    if chosen[:-1] != rejected[:-1]:
        raise UserError(f"{where}: chosen and rejected differ before their last message (they must share the prompt)")
    prompt = chosen[:-1]
    if not prompt:  # TRL's explicit-prompt form: the answers alone, the prompt in its own column
        p = row.get("prompt")
        prompt = user(p) if isinstance(p, str) else _messages(p, where, "prompt")
    return prompt, chosen[-1], rejected[-1]


def _plain(row: dict, where: str) -> tuple[list[dict], dict, dict]:
    for field in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(field), str):
            raise UserError(f"{where}: {field} must be a string, got {type(row.get(field)).__name__}")
    return user(row["prompt"]), assistant(row["chosen"])[0], assistant(row["rejected"])[0]


def _from_hub(source: str, name: str, split: str):
    # Imported here: `datasets` takes half a second to import and local files do not need it.
    import datasets
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.utils import httpx  # httpx2 in huggingface_hub 1.x+, re-exported under this name

    fix = "download it where there is network and set HF_HUB_OFFLINE=1 to use the cached copy, or use a local file"
    offline = datasets.config.HF_HUB_OFFLINE  # read from the environment when `datasets` is first imported
    if not offline:
        # With the Hub unreachable, load_dataset retries the README with backoff: ~23 s when DNS fails, 6+ min
        # when packets are dropped (60 s timeout per retry). One short request first fails in seconds instead.
        try:
            HfApi().dataset_info(name, timeout=PROBE_TIMEOUT_S)
        except GatedRepoError:
            raise UserError(f"{source}: gated dataset; accept its terms on the Hub, then hf auth login") from None
        except RepositoryNotFoundError:
            raise UserError(f"{source}: no such dataset on the Hub (or it is private: log in)") from None
        except httpx.TransportError as e:
            raise UserError(f"{source}: cannot reach the Hugging Face Hub ({e}); {fix}") from None
    try:
        return datasets.load_dataset(name, split=split)
    except ConnectionError:  # what load_dataset raises for HF_HUB_OFFLINE=1 and nothing cached, or a lost network
        why = "not in the local cache and HF_HUB_OFFLINE=1 is set" if offline else "the Hugging Face Hub stopped answering"
        raise UserError(f"{source}: {why}; {fix}") from None
    except datasets.exceptions.DatasetNotFoundError as e:
        raise UserError(f"{source}: {e}") from None
    except ValueError as e:
        if not str(e).startswith("Unknown split"):
            raise
        raise UserError(f"{source}: {e} (preferences.split)") from None  # the message lists the splits


def load_preferences(source: str, split: str, max_pairs: int | None) -> tuple[list[dict], dict]:
    sha256 = None
    if source.startswith("hf:"):
        table = _from_hub(source, source.removeprefix("hf:"), split)
        columns, rows = table.column_names, table  # iterated lazily: max_pairs may need a few rows of many
        wheres = (f"{source} ({split}) row {i}" for i in range(1, len(table) + 1))
    elif source.endswith((".jsonl", ".json")):
        rows = read_jsonl(source, strings=())
        data = Path(source).read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        columns = sorted(set().union(*rows))
        # read_jsonl skips blank lines (and has checked UTF-8); count them back so errors point at file:line
        wheres = (f"{source}:{n}" for n, raw in enumerate(data.split(b"\n"), 1) if raw.decode().strip())
    elif source.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not Path(source).is_file():
            raise UserError(f"{source}: not found")
        try:
            table = pq.read_table(source)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{source}: not a Parquet file ({str(e).splitlines()[0]})") from None
        sha256 = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        columns, rows = table.column_names, table.to_pylist()
        wheres = (f"{source}: row {i}" for i in range(1, table.num_rows + 1))
    else:
        raise UserError(f"{source}: expected hf:<dataset id> or a path ending in .jsonl, .json or .parquet")

    # --- the shape, from the columns and the first row's `chosen`
    items = zip(rows, wheres)
    first = next(items, None)
    if first is None:
        raise UserError(f"{source}: no rows")
    kind = type(first[0].get("chosen"))
    if not {"chosen", "rejected"} <= set(columns) or (kind is str and "prompt" not in columns):
        raise UserError(f"{source}: columns [{', '.join(sorted(columns))}] are not a preference dataset; {EXPECTED}")
    if kind not in (list, str):
        raise UserError(f"{first[1]}: chosen must be a string or a list of messages, got {kind.__name__}")
    shape, convert = ("conversational", _conversational) if kind is list else ("plain", _plain)

    # --- convert, dropping pairs that teach nothing
    pairs, n_read, identical, empty = [], 0, 0, 0
    for index, (row, where) in enumerate(itertools.chain([first], items)):
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
        n_read += 1
        prompt, chosen, rejected = convert(row, where)
        if not chosen["content"].strip() or not rejected["content"].strip():
            empty += 1
        elif chosen == rejected:
            identical += 1
        else:
            rid = next((row[k] for k in ("prompt_id", "id") if row.get(k) is not None), index)
            pairs.append({"id": str(rid), "prompt": prompt, "chosen": [chosen], "rejected": [rejected],
                          "source": source})
    info = {"source": source, "rows": n_read, "pairs": len(pairs), "dropped_identical": identical,
            "dropped_empty": empty, "format": shape, "sha256": sha256, "columns": sorted(columns)}
    return pairs, info
