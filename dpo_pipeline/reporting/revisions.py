"""What a git revision's pipeline run left behind, for comparing this branch with a base branch: a file as
committed at the revision, and a DVC-tracked output by the md5 its dvc.lock records (from the DVC cache,
fetched into it first from the DVC remote when one is configured). Run from the repository root."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from dpo_pipeline.cli import executable
from dpo_pipeline.errors import UserError


def dvc(*args: str) -> str:
    """The dvc command's output; its failure (not a DVC repository, an unknown ref) is the user's to fix."""
    proc = subprocess.run([executable("dvc"), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"dvc {' '.join(args)}: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
    return proc.stdout.strip()


def committed(rev: str | None, path: str) -> str | None:
    """`path` as committed at `rev` (None: as it is in the workspace); None where it is not there."""
    if rev is None:
        return Path(path).read_text() if Path(path).is_file() else None
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def committed_json(rev: str | None, path: str) -> dict:
    """A metrics file at `rev` (None: the workspace); {} where it is not there."""
    text = committed(rev, path)
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise UserError(f"{path} at {rev or 'the workspace'}: not valid JSON ({e.msg})") from None


def locked_md5(lock_text: str, path: str) -> str | None:
    """The md5 dvc.lock records for the output `path`, whichever stage writes it."""
    for stage in ((yaml.safe_load(lock_text) or {}).get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == path:
                return out.get("md5")
    return None


def fetch(rev: str | None, path: str) -> None:
    """Fetch output `path` of revision `rev` from the DVC remote into the cache; quietly, as the caller
    looks in the cache afterwards. `dvc fetch` has no revision option; its Python API has."""
    from dvc.exceptions import DvcException  # slow to import, and needed only when the cache misses
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            repo.fetch(targets=[path], revs=[rev] if rev else None, workspace=rev is None)
    except DvcException:
        pass


def output_file(rev: str | None, path: str) -> tuple[Path | None, str]:
    """The file DVC output `path` held at git revision `rev` (None: the workspace), or None and why not.
    In the workspace, the file itself when it is there; else the content dvc.lock records, from the cache."""
    if rev is None and Path(path).is_file():
        return Path(path), ""
    lock = committed(rev, "dvc.lock")
    md5 = lock and locked_md5(lock, path)
    if not md5 or md5.endswith(".dir"):
        return None, f"its dvc.lock records no file {path}"
    cached = Path(dvc("cache", "dir"), "files", "md5", md5[:2], md5[2:])  # DVC 3's layout, by content
    if not cached.is_file():
        if not dvc("remote", "list"):
            return None, "not in the DVC cache, and no DVC remote is configured"
        fetch(rev, path)
    if not cached.is_file():
        return None, "neither in the DVC cache nor on the DVC remote"
    return cached, ""
