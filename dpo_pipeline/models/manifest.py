"""Where a model comes from: a hub id or local folder resolved (referenced, never copied into the DVC
cache), and the manifests `prepare` and `sft` write when a stage's output names a model kept elsewhere."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from dpo_pipeline.errors import UserError

MANIFEST = "manifest.json"


def tree_sha256(folder: Path) -> str:
    """One hash over a folder's file names and contents (a 1 GB model takes a few seconds)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        with f.open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def resolve(key: str, name: str, revision: str | None = None) -> dict:
    """A local folder or a hub id, resolved to what a manifest records: the folder, the hub commit, a hash.
    A hub id is looked up in the local Hugging Face cache or downloaded (never hangs: short timeouts)."""
    local = Path(name).expanduser()
    if local.is_dir():
        return {"name": name, "path": str(local.resolve()), "revision": None, "sha256": tree_sha256(local)}
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"{key}: {name!r} is not a model folder (not found)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = snapshot_download(name, revision=revision, etag_timeout=10)
    except HFValidationError:
        raise UserError(f"{key}: {name!r} is neither a local folder nor a valid hub id") from None
    except OSError as e:  # offline, unknown repo or revision: huggingface_hub's errors are OSErrors
        raise UserError(f"{key}: cannot get {name!r} from the hub ({str(e).splitlines()[0]}); without network "
                        "use a local folder, or download it once and set HF_HUB_OFFLINE=1") from None
    return {"name": name, "path": folder, "revision": Path(folder).name, "sha256": None}


def write_manifest(out_dir: Path, info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    _read_manifest.cache_clear()  # this process reads what it wrote, even within the clock's resolution


@dataclasses.dataclass(frozen=True)
class ModelFolder:
    """What a stage output (`paths.base_model`, `paths.sft_model`) holds: a model saved in it, or a manifest
    naming a model kept elsewhere (a hub snapshot, a local folder)."""

    path: str  # where the weights are: the output folder itself, or the folder its manifest names
    kind: Literal["full", "adapter"]  # a whole model, or a PEFT adapter on the base
    name: str | None = None  # model.base / model.sft as params.yaml gave it; None: a model saved in the folder
    revision: str | None = None  # the hub commit of a hub id's snapshot
    sha256: str | None = None  # a local folder's content hash (manifest.tree_sha256)
    # What else the manifest records, for provenance only (model_type, adapter_base, a GGUF's file and hash)
    details: Mapping[str, object] = dataclasses.field(default_factory=lambda: MappingProxyType({}))


def model_folder(out_dir: str | Path) -> ModelFolder:
    """What a stage output holds. A manifest with no `path` describes the model saved beside it (a converted
    builtin); without a manifest the folder is the model, an adapter when it holds adapter_config.json. Each
    manifest is parsed once a process (while its file is unchanged), however many loads ask."""
    folder = Path(out_dir)
    try:
        stat = (folder / MANIFEST).stat()
    except FileNotFoundError:
        if not folder.is_dir():
            raise UserError(f"{out_dir}: not found; run `dvc repro` (the stage that writes it comes first)") from None
        return ModelFolder(path=str(out_dir), kind="adapter" if (folder / "adapter_config.json").exists() else "full")
    # Keyed by the file's identity and time as well as its path: a stage run in another process (a test's, a
    # rerun) that rewrites it is read again
    return _read_manifest(str(out_dir), (stat.st_ino, stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=32)
def _read_manifest(out_dir: str, _version: tuple) -> ModelFolder:
    info = json.loads((Path(out_dir) / MANIFEST).read_text())
    fields = {f.name for f in dataclasses.fields(ModelFolder)} - {"details"}
    known = {k: info[k] for k in fields & info.keys()}
    return ModelFolder(**{**known, "path": info.get("path") or out_dir},
                       details=MappingProxyType({k: v for k, v in info.items() if k not in fields}))
