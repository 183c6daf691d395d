"""The entry point of every stage and tool: parse its command line (argparse: `--help`, and a bad flag one
line, exit 2), load and validate params.yaml once, call `main(params)`, and turn the library's
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
import warnings
from pathlib import Path
from typing import Any, Callable

from dpo_pipeline import rounds
from dpo_pipeline.config import load_params
from dpo_pipeline.errors import ServiceError, UserError

# Stages draw their own progress (rich); the libraries' bars (loading weights or files, datasets' map, TRL's
# reference log-probs pass) would only interleave with it and pour carriage returns into dvc's log. Set before
# transformers, huggingface_hub, datasets and tqdm are imported, which read them then (TRL also reads
# TQDM_DISABLE at each bar). A user's own setting wins.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Stages import this module first, before torch: the stage log's clock counts their imports and model loads.
STARTED = time.perf_counter()
# Set, each finished stage appends a line {stage, seconds, peak_rss_mib} there (`make real` keeps its run's).
# Kept out of metrics/: wall time differs run to run, and identical params must give identical metrics.
STAGE_LOG = "DPO_PIPELINE_STAGE_LOG"


def run(main: Callable[..., None], parser: argparse.ArgumentParser | None = None, needs_params: bool = True) -> None:
    """`main(params)` with the validated params.yaml (or `main()` for a tool that reads none). The command
    line is parsed first, so `--help` and a bad flag never read params.yaml: a tool's `parser`, or without
    one a stage's (`stage_parser`: its module docstring, and `--round K` when main takes `round_num`). main
    takes the parsed arguments as `args` if it has that parameter, and the round as `round_num`."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # PEFT imports bitsandbytes, which on CPUs with AVX512-BF16 logs at import that an optional faster 4-bit
    # kernel (fetched from the hub) is missing: every stage would print it, whether it uses 4-bit or not
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.showwarning = show_once(warnings.showwarning)
    wanted = inspect.signature(main).parameters
    if parser is None:
        parser = stage_parser(sys.modules[main.__module__].__doc__ or "", with_round="round_num" in wanted)
    args = parser.parse_args(sys.argv[1:])
    kwargs: dict[str, Any] = {"args": args} if "args" in wanted else {}
    if "round_num" in wanted:
        kwargs["round_num"] = args.round_num
    try:
        if not needs_params:
            main(**kwargs)
        else:
            params = load_params()
            if "round_num" in wanted:
                rounds.check(params, kwargs["round_num"])
            main(params, **kwargs)
        if os.environ.get(STAGE_LOG):
            log_stage(os.environ[STAGE_LOG], module_of(main).rsplit(".", 1)[-1])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def show_once(show: Callable) -> Callable:
    """`warnings.showwarning` that shows each warning (category and text) once a run. Nothing is filtered; a
    repeat is. Python's own "once" cannot do it: it forgets what it showed whenever the filters change, and
    torch and transformers enter `warnings.catch_warnings` often, so PEFT's FutureWarning about transformers'
    deprecated `is_gradient_checkpointing` printed at every model a stage wrapped. pytest records warnings
    its own way, so a test run still lists each one."""
    if getattr(show, "shown", None) is not None:  # already wrapped (cli.run called twice in one process)
        return show
    shown: set[tuple[type, str]] = set()

    def show_first(message, category, filename, lineno, file=None, line=None):
        if (category, str(message)) not in shown:
            shown.add((category, str(message)))
            show(message, category, filename, lineno, file, line)

    show_first.shown = shown
    return show_first


class ToolParser(argparse.ArgumentParser):
    """argparse's parser, but a bad flag or argument is one line (the usage folded into it), exit 2, as a
    UserError is."""

    def error(self, message: str):
        print(f"error: {message} ({' '.join(self.format_usage().split())}; --help for more)", file=sys.stderr)
        sys.exit(2)


def tool_parser(doc: str) -> ToolParser:
    """A tool's command line: its module docstring's first paragraph the description, the rest (its command
    lines) the epilog; the program named as it is run, `python -m tools.<name>` (or `stages.<name>`)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None else os.path.basename(sys.argv[0])
    first, _, rest = doc.strip().partition("\n\n")
    return ToolParser(prog=prog, description=first, epilog=rest.strip("\n") or None,
                      formatter_class=argparse.RawDescriptionHelpFormatter)


def stage_parser(doc: str, with_round: bool = False) -> ToolParser:
    """A stage's command line: `--help` prints its docstring (the commands that run it) and nothing runs. A
    stage every round of iterative DPO runs takes `--round K`, K >= 2: dvc.yaml's stage <name>_r<K>, which
    `python -m tools.rounds` writes (round 1 is the stage without the flag); K beyond params.yaml's `rounds`
    is refused once params are read (`rounds.check`)."""
    p = tool_parser(doc)
    if with_round:
        p.add_argument("--round", dest="round_num", type=round_number, default=1, metavar="K",
                       help="run round K (2..rounds) of iterative DPO, on round K's files (default: round 1)")
    return p


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


round_number = arg_type(int, lambda k: k >= 2, "a round number >= 2 (round 1 is the stage without --round)")


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
