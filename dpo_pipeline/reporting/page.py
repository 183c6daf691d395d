"""reports/report.html: one self-contained page to read every preference pair and every eval answer side by
side. The data is embedded gzipped (base64) and the page unpacks it with the browser's DecompressionStream:
nothing is fetched, so it opens from the file system or a CI artifact. Labels and metrics come from the
schema; the headline table is the report's own rows (tables.table_rows)."""

from __future__ import annotations

import base64
import gzip
import json
from collections import Counter
from pathlib import Path

from dpo_pipeline.config import Paths
from dpo_pipeline.errors import UserError
from dpo_pipeline.files import write_text
from dpo_pipeline.evaluation.schema import PAIRWISE, Metric, model_label, pair_label, pairs as pair_keys
from dpo_pipeline.reporting.tables import header, table_rows

TEMPLATE = Path(__file__).with_name("page.html")
NEAR_IDENTICAL = 0.9  # word overlap at or above this: the pair teaches little beyond a word or two
MB = 1_000_000


def similarity(a: str, b: str) -> float:
    """Shared words over all words (difflib's quick_ratio on words): linear time, so 60K pairs stay cheap."""
    wa, wb = a.split(), b.split()
    if not wa and not wb:
        return 1.0
    return 2 * sum((Counter(wa) & Counter(wb)).values()) / (len(wa) + len(wb))


def text(messages) -> str:
    """A TRL conversational field (a message list) or a plain string."""
    return messages if isinstance(messages, str) else "\n".join(m["content"] for m in messages)


def pair_rows(preferences: list[dict], judgments: list[dict], samples: list[dict], paths: Paths) -> list[dict]:
    """Every judged prompt: a kept pair as chosen (a) vs rejected (b), a dropped one as its two candidates in
    the judge's order. Without judgments (pairs from a dataset), the kept pairs alone."""
    kept = {p["id"]: p for p in preferences}
    candidates = {s["id"]: s for s in samples}
    rows = []
    for j in judgments or [{"id": p["id"], "kept": True, "dropped": None, "orders": []} for p in preferences]:
        if j["id"] not in (kept if j["kept"] else candidates):
            raise UserError(f"{paths.judgments}: {j['id']!r} is not in {paths.preferences if j['kept'] else paths.samples}"
                            " (files of two different runs: dvc repro judge)")
        if j["kept"]:
            p = kept[j["id"]]
            a, b, ta, tb = text(p["chosen"]), text(p["rejected"]), p.get("chosen_temperature"), p.get("rejected_temperature")
            prompt, flipped, reason = text(p["prompt"]), bool(p.get("label_flipped")), p.get("reason")
        else:
            s = candidates[j["id"]]
            (a, ta), (b, tb) = ((s["responses"][i]["text"], s["responses"][i]["temperature"]) for i in j["picks"])
            prompt, flipped, reason = s["prompt"], False, None
        # Which column the judge saw as "A" first: a kept pair shows chosen on the left, which was A when A won
        # (and the other when label noise swapped the two); a dropped one shows the candidates as asked.
        a_left = (j.get("winner") == "A") != flipped if j["kept"] else True
        rows.append({"id": j["id"], "prompt": prompt, "a": a, "b": b, "ta": ta, "tb": tb, "dropped": j["dropped"],
                     "aLeft": a_left,
                     "winner": j.get("winner"), "orders": j["orders"], "reason": reason, "flipped": flipped,
                     "sim": round(similarity(a, b), 3)})
    return rows


def eval_rows(records: list[dict], names: tuple[str, ...], metrics: list[Metric], keys: list[str]) -> list[dict]:
    fields = ["text", *dict.fromkeys(m.source_field for m in metrics)]
    return [{"id": r["id"], "prompt": r["prompt"], **{n: {f: r[n].get(f) for f in fields} for n in names},
             **{k: {"outcome": r[k]["outcome"], "reason": r[k].get("reason")} for k in keys if k in r}}
            for r in records]


def worrying(row: dict) -> bool:
    return row["dropped"] == "position" or row["flipped"] or row["sim"] >= NEAR_IDENTICAL


def within_budget(pairs: list[dict], room: int, ratio: float) -> list[dict]:
    """The pairs that fit in `room` compressed bytes, the worrying ones first, in their own order; `ratio` is
    compressed over raw JSON bytes, measured on the whole."""
    ranked = sorted(range(len(pairs)), key=lambda i: not worrying(pairs[i]))
    keep, used = set(), 0
    for i in ranked:
        used += len(json.dumps(pairs[i])) * ratio
        if used > room:
            break
        keep.add(i)
    return [p for i, p in enumerate(pairs) if i in keep]


def pack(data: dict) -> str:
    # mtime=0: the same run gives the same bytes (DVC and git see no change when nothing changed)
    return base64.b64encode(gzip.compress(json.dumps(data, separators=(",", ":")).encode(), 6, mtime=0)).decode()


def page_data(ev: dict, cis: dict, judge: dict, records: list[dict], pairs: list[dict], metrics: list[Metric],
              names: tuple[str, ...], source: str, max_mb: float) -> dict:
    keys = list(pair_keys(len(names) - 2))
    data = {
        "models": [{"key": n, "label": model_label(n)} for n in names],
        "metrics": [{"key": m.key, "label": m.label, "field": m.source_field, "kind": m.kind,
                     "higher": m.higher_is_better} for m in metrics],
        "pairKeys": [{"key": k, "label": pair_label(k)} for k in keys], "verdict": PAIRWISE,
        "table": {"header": header(names), "rows": table_rows(ev, cis, metrics, names)},
        "eval": eval_rows(records, names, metrics, keys),
        "judge": {"backend": judge.get("backend"), "source": source, "prompts": judge.get("prompts"),
                  "kept": sum(p["dropped"] is None for p in pairs),
                  "dropped": dict(Counter(p["dropped"] for p in pairs if p["dropped"])),
                  "flipped": sum(p["flipped"] for p in pairs), "near": NEAR_IDENTICAL,
                  "nearIdentical": sum(p["dropped"] is None and p["sim"] >= NEAR_IDENTICAL for p in pairs),
                  "total": len(pairs)},
        "pairs": pairs,
    }
    whole = len(pack(data))
    if whole > max_mb * MB:  # the eval answers always; the pairs that fit in what is left
        rest = len(pack({**data, "pairs": []}))
        raw = len(json.dumps(pairs)) or 1
        data["pairs"] = within_budget(pairs, int(max_mb * MB) - rest, (whole - rest) / raw)
    data["judge"]["shown"] = len(data["pairs"])
    return data


def write_page(path: Path, data: dict, title: str) -> int:
    """Write the page; its size in bytes."""
    html = TEMPLATE.read_text().replace("__TITLE__", title).replace("__DATA__", pack(data))
    write_text(path, html)
    return len(html.encode())
