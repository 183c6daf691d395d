"""The entry point of every stage and tool: parse a tool's command line (argparse: `--help`, and a bad flag
one line, exit 2), load and validate params.yaml once, call `main(params)`, and turn the library's
`UserError` / `ServiceError` into one line and an exit code (2 / 1). This is the one place a user mistake
becomes a message. Also the programs a tool runs: the venv's `dvc`, found without the venv on PATH."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from dpo_pipeline import rounds
from dpo_pipeline.config import load_params
from dpo_pipeline.errors import ServiceError, UserError

# Stages draw their own progress (rich); the libraries' bars for loading weights or files would only
# interleave with it. Set before transformers / huggingface_hub are imported, which read it then.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Stages import this module first, before torch: the stage log's clock counts their imports and model loads.
STARTED = time.perf_counter()
# Set, each finished stage appends a line {stage, seconds, peak_rss_mib} there (`make real` keeps its run's).
# Kept out of metrics/: wall time differs run to run, and identical params must give identical metrics.
STAGE_LOG = "DPO_PIPELINE_STAGE_LOG"


def run(main: Callable[..., None], parser: argparse.ArgumentParser | None = None, needs_params: bool = True) -> None:
    """`main(params)` with the validated params.yaml (or `main()` for a tool that reads none). A tool's
    `parser` parses the command line first, so `--help` and a bad flag never read params.yaml; main takes
    the parsed arguments as `args` if it has that parameter. A stage every round of iterative DPO runs takes
    `round_num` too, from `--round K` (1 without it)."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    wanted = inspect.signature(main).parameters
    kwargs = {"args": parser.parse_args(sys.argv[1:])} if parser is not None and "args" in wanted else {}
    if parser is not None and not kwargs:
        parser.parse_args(sys.argv[1:])  # --help, and no stray argument
    try:
        if not needs_params:
            main(**kwargs)
        elif "round_num" in wanted:
            params, k = load_params(), round_arg(sys.argv[1:])
            rounds.check(params, k)
            main(params, round_num=k)
        else:
            main(load_params(), **kwargs)
        if os.environ.get(STAGE_LOG):
            log_stage(os.environ[STAGE_LOG], module_of(main).rsplit(".", 1)[-1])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


class ToolParser(argparse.ArgumentParser):
    """argparse's parser, but a bad flag or argument is one line (the usage folded into it), exit 2, as a
    UserError is."""

    def error(self, message: str):
        print(f"error: {message} ({' '.join(self.format_usage().split())}; --help for more)", file=sys.stderr)
        sys.exit(2)


def tool_parser(doc: str) -> ToolParser:
    """A tool's command line: its module docstring's first line the description, the rest (its command
    lines) the epilog; the program named as it is run, `python -m tools.<name>`."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None else os.path.basename(sys.argv[0])
    first, _, rest = doc.strip().partition("\n")
    return ToolParser(prog=prog, description=first, epilog=rest.strip("\n") or None,
                      formatter_class=argparse.RawDescriptionHelpFormatter)


def arg_type(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse `type=`: the value converted and checked, or argparse's one-line error naming what was
    expected, e.g. arg_type(int, lambda n: n > 0, "a whole number > 0")."""
    def parse(value: str):
        try:
            x = convert(value)
        except ValueError:
            x = None
        if x is None or not ok(x):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return x
    return parse


def executable(name: str) -> str:
    """The program `name` (dvc) installed beside this Python, so a tool run as `.venv/bin/python -m tools.X`
    finds the venv's dvc also when the venv is not on PATH; else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise UserError(f"{name}: not installed beside {sys.executable} nor on PATH (make install)")
    return found


def environment() -> dict[str, str]:
    """This process's environment with this Python's folder first on PATH: the stages a `dvc exp run` starts
    (`python -m stages.<name>`) then run in the same venv as the tool that started it."""
    path = [str(Path(sys.executable).parent), *filter(None, os.environ.get("PATH", "").split(os.pathsep))]
    return {**os.environ, "PATH": os.pathsep.join(path)}


def round_arg(argv: list[str]) -> int:
    """`--round K` (the stages dvc.yaml runs for round K > 1 of iterative DPO); 1 without it."""
    if "--round" not in argv:
        return 1
    i = argv.index("--round")
    value = argv[i + 1] if i + 1 < len(argv) else ""
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"--round: expected a round number >= 1, got {value!r}")
    return int(value)


def module_of(main: Callable) -> str:
    """"stages.train" also when it runs as `python -m stages.train` (where main's module is "__main__")."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    return spec.name if spec is not None else main.__module__


def log_stage(path: str, stage: str) -> None:
    """Append this process's wall time and peak resident memory (Linux reports KiB) to the stage log."""
    line = {"stage": stage, "seconds": round(time.perf_counter() - STARTED, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
