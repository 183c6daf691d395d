"""Where a model comes from: a hub id or local folder resolved (referenced, never copied into the DVC
cache), and the manifests `prepare` and `sft` write when a stage's output names a model kept elsewhere."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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


def model_folder(out_dir: str | Path) -> dict:
    """What a stage output holds: a model saved in it, or a manifest naming a model elsewhere. A manifest
    with no `path` describes the model saved beside it (a converted builtin)."""
    manifest = Path(out_dir) / MANIFEST
    if manifest.exists():
        return {"path": str(out_dir), **json.loads(manifest.read_text())}
    if not Path(out_dir).is_dir():
        raise UserError(f"{out_dir}: not found; run `dvc repro` (the stage that writes it comes first)")
    return {"path": str(out_dir), "kind": "adapter" if (Path(out_dir) / "adapter_config.json").exists() else "full"}
