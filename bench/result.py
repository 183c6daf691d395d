"""`--json PATH` for every bench: the numbers it printed, with the machine and the command that made them.

    {"bench": "sampling", "machine": {"cpu": ..., "cpus": 2, "torch": "2.13.0", "threads": 2},
     "command": "python -m bench.sampling --n 24", "result": {...}}

torch is not imported here: a bench that never loads it (the judge's) records its installed version and no
thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write what this bench prints here, as JSON, with the machine and the command")


def machine() -> dict:
    """The CPU model, the cores this process may use, torch's version and (if this bench loaded torch) its
    threads and GPU."""
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), None) if cpuinfo.exists() else None
    try:
        version = metadata.version("torch").split("+")[0]
    except metadata.PackageNotFoundError:
        version = None
    torch = sys.modules.get("torch")
    info = {"cpu": cpu or platform.processor() or platform.machine(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": version, "threads": torch.get_num_threads() if torch else None}
    if torch and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def command() -> str:
    """The command line as typed: `python -m bench.<name> ...` (sys.argv[0] is the module's absolute path)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None else sys.argv[0]
    return " ".join([head, *sys.argv[1:]])


def write_result(path: Path | str | None, name: str, result: dict) -> None:
    """Write {"bench", "machine", "command", "result"} to `path` as indented JSON; nothing when path is None."""
    if path is None:
        return
    record = {"bench": name, "machine": machine(), "command": command(), "result": result}
    Path(path).write_text(json.dumps(record, indent=2, default=str) + "\n")
