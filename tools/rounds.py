"""Write dvc.yaml's stages for iterative DPO's rounds from params.yaml's `rounds`.

    python -m tools.rounds            # dvc.yaml's round stages for params.yaml's rounds
    python -m tools.rounds 3          # set `rounds: 3` in params.yaml, then write them   (make rounds N=3)
    python -m tools.rounds --check    # exit 2 when dvc.yaml and params.yaml disagree (the tests run it)
    python -m tools.rounds 2 --exp-run -n rounds-2 ...   # `dvc exp run --temp -n rounds-2 ...` on 2 rounds'
                                      # stages, then dvc.yaml and params.yaml put back (make rounds, make real)

DVC expands `foreach` over a list but cannot count, and round k must name round k-1's outputs: so round k's
stages (sample_r<k>, judge_r<k>, train_r<k>) are generated from round 1's own (sample, judge, train), with
round k's files (<paths.rounds>/<k>/, dpo_pipeline/rounds.py) and the adapters of rounds 1..k-1 as deps. Each
round depends on the rounds before it only, so `dvc repro` re-runs a round when its inputs change and never
an earlier one for a later one's sake; round 1 is the pipeline's own stages, which read neither `rounds` nor
`iterate`. The tool rewrites only what lies between dvc.yaml's `# >>> rounds` and `# <<< rounds` lines: with
`rounds: 1` those hold nothing, and dvc.yaml is the one-round pipeline.

With --exp-run the workspace keeps its pipeline: `dvc exp run --temp` runs the experiment in a copy of the
workspace, which it takes from the workspace's files, so the tool writes N rounds' stages into dvc.yaml and
params.yaml only while dvc runs, and puts both back byte for byte as they were on every exit: dvc done or
failed, Ctrl-C, SIGTERM or SIGHUP (SIGKILL aside).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dpo_pipeline import cli
from dpo_pipeline.config import PARAMS_FILE, Params, load_params
from dpo_pipeline.errors import ServiceError, UserError
from dpo_pipeline.rounds import FILES, STAGES, stage_name

DVC_YAML = "dvc.yaml"
REGION = re.compile(r"^(?P<indent> *)# >>> rounds: (?P<name>[\w ]+?)\n.*?^ *# <<< rounds\n", re.M | re.S)
# The extra params each round's stage reads: round 1's stages read neither `rounds` nor `iterate`.
EXTRA_PARAMS = {"sample": ["iterate.prompts"], "judge": [], "train": ["iterate.reference"]}


def round_file(key: str, k: int) -> str:
    return f"${{paths.rounds}}/{k}/{FILES[key]}"


def adapter_deps(k: int) -> list[str]:
    """The adapters of rounds 1..k-1: round k's starting policy."""
    return ["${paths.dpo_model}", *(round_file("dpo_model", j) for j in range(2, k))]


def round_stages(stages: dict, k: int) -> dict:
    """Round k's sample, judge and train: round 1's, reading and writing round k's files."""
    swap = {f"${{paths.{key}}}": round_file(key, k) for key in FILES}

    def moved(entry):
        if isinstance(entry, dict):
            return {moved(p): v for p, v in entry.items()}
        for old, new in swap.items():
            entry = entry.replace(old, new)
        return entry

    out = {}
    for stage in STAGES:
        spec = stages[stage]
        deps = [moved(d) for d in spec["deps"]]
        if stage in ("sample", "train"):  # the policy the round starts from
            deps += [d for d in adapter_deps(k) if d not in deps]
        new = {"cmd": f"{spec['cmd']} --round {k}", "deps": deps,
               "params": [*spec["params"], *EXTRA_PARAMS[stage]]}
        new |= {key: [moved(o) for o in spec[key]] for key in ("outs", "metrics") if key in spec}
        out[stage_name(stage, k)] = new
    return out


class Dumper(yaml.SafeDumper):
    """Lists indented under their key, as the rest of dvc.yaml writes them."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def regions(stages: dict, rounds: int) -> dict[str, list[str]]:
    """Each marked region's lines (unindented) for `rounds` rounds."""
    later = range(2, rounds + 1)
    block = {}
    for k in later:
        block |= round_stages(stages, k)
    return {
        "stages": yaml.dump(block, Dumper=Dumper, sort_keys=False, width=120).splitlines() if block else [],
        "eval deps": [f"- {round_file('dpo_model', k)}" for k in later],
        "report deps": [f"- {round_file(key, k)}" for k in later for key in ("judge_metrics", "train_metrics")],
        "report outs": ["- ${paths.reports}/rounds.png:", "    cache: false"] if rounds > 1 else [],
    }


def render(text: str, rounds: int) -> str:
    """dvc.yaml's text with its round regions written for `rounds` rounds (the rest untouched)."""
    stages = yaml.safe_load(text)["stages"]
    wanted = regions(stages, rounds)

    def fill(m: re.Match) -> str:
        indent, name = m.group("indent"), m.group("name")
        if name not in wanted:
            raise UserError(f"{DVC_YAML}: unknown region '# >>> rounds: {name}'")
        body = "".join(f"{indent}{line}\n" for line in wanted[name])
        return f"{indent}# >>> rounds: {name}\n{body}{indent}# <<< rounds\n"

    found = {m.group("name") for m in REGION.finditer(text)}
    if found != set(wanted):
        raise UserError(f"{DVC_YAML}: expected the regions {sorted(wanted)} between '# >>> rounds: <name>' and "
                        f"'# <<< rounds' lines, found {sorted(found)}")
    return REGION.sub(fill, text)


def set_rounds(n: int, path: str = PARAMS_FILE) -> None:
    """`rounds: n` in params.yaml, its comments kept."""
    text = Path(path).read_text()
    new, count = re.subn(r"^rounds: *\d+", f"rounds: {n}", text, count=1, flags=re.M)
    if not count:
        raise UserError(f"{path}: no top-level 'rounds: <number>' line to set")
    Path(path).write_text(new)


def write(params: Params, check: bool = False) -> None:
    """dvc.yaml's round stages for params' rounds (with check: only whether they are those)."""
    text = Path(DVC_YAML).read_text()
    new = render(text, params.rounds)
    if check:
        if new != text:
            raise UserError(f"{DVC_YAML}: its round stages are not those of params.yaml's rounds "
                            f"({params.rounds}); run `python -m tools.rounds`")
        print(f"{DVC_YAML}: round stages match rounds {params.rounds}")
        return
    if new != text:
        Path(DVC_YAML).write_text(new)
    print(f"{DVC_YAML}: stages for {params.rounds} round{'s' if params.rounds > 1 else ''}"
          + (f" (sample, judge, train, and {', '.join(f'*_r{k}' for k in range(2, params.rounds + 1))})"
             if params.rounds > 1 else "") + "; now `dvc repro` (or `dvc exp run`)")


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: unwind as Ctrl-C does, so the workspace is put back."""


def stopped(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def exp_run(rounds: int | None, dvc_args: list[str]) -> None:
    """`dvc exp run --temp DVC_ARGS` with `rounds` rounds' stages, dvc.yaml and params.yaml then put back."""
    saved = {f: Path(f).read_bytes() for f in (DVC_YAML, PARAMS_FILE)}
    env = cli.environment()
    os.environ.pop(cli.STAGE_LOG, None)  # the stages dvc runs write the stage log, not this tool
    handlers = {sig: signal.signal(sig, stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    proc, why = None, None
    try:
        if rounds is not None:
            set_rounds(rounds)
        write(load_params())  # validated again: rounds > 1 needs generated preferences
        # dvc and the stages it starts in a process group of their own, which stop() signals as one
        proc = subprocess.Popen([cli.executable("dvc"), "exp", "run", "--temp", *dvc_args], env=env,
                                process_group=0)
        proc.wait()
    except (KeyboardInterrupt, Stopped) as e:
        why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"stopped by {e}"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        if proc is not None:
            stop(proc)
        for path, content in saved.items():  # once dvc is gone: it stashes and restores the workspace itself
            if Path(path).read_bytes() != content:
                Path(path).write_bytes(content)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if why is not None:
        print(f"tools.rounds: {why}; {DVC_YAML} and {PARAMS_FILE} put back", file=sys.stderr)
        sys.exit(130)
    if proc.returncode != 0:
        raise ServiceError(f"dvc exp run failed (exit {proc.returncode}, its output is above); "
                           f"{DVC_YAML} and {PARAMS_FILE} put back")
    print(f"tools.rounds: {DVC_YAML} and {PARAMS_FILE} put back")


def stop(proc: subprocess.Popen) -> None:
    """Until dvc's process group is gone (at once when it finished): SIGINT, as Ctrl-C would send it (dvc's
    own group is not the terminal's, so Ctrl-C reached this tool only), 30 s to clean up, then SIGTERM, then
    SIGKILL. dvc alone stopped would leave the running stage behind."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        for _ in range(300):
            proc.poll()  # reap dvc: a zombie still counts as a member of its group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


positive = cli.arg_type(int, lambda n: n >= 1, "a number of rounds >= 1")


def main(params: Params, args: argparse.Namespace) -> None:
    if args.exp_run is not None:
        if args.check:
            raise UserError("tools.rounds: --check and --exp-run do not go together")
        exp_run(args.rounds, args.exp_run)
        return
    if args.rounds is not None:
        set_rounds(args.rounds)
        params = load_params()  # validated again: rounds > 1 needs generated preferences
    write(params, check=args.check)


def parser() -> argparse.ArgumentParser:
    p = cli.tool_parser(__doc__)
    p.add_argument("rounds", nargs="?", type=positive, metavar="N",
                   help="set `rounds: N` in params.yaml first (default: params.yaml's rounds as it is)")
    p.add_argument("--check", action="store_true", help="only check that dvc.yaml's round stages match; exit 2 if not")
    p.add_argument("--exp-run", nargs=argparse.REMAINDER, metavar="DVC_ARGS",
                   help="run `dvc exp run --temp DVC_ARGS` (everything after --exp-run) on N rounds' stages, "
                        "then put dvc.yaml and params.yaml back as they were, on every exit")
    return p


if __name__ == "__main__":
    cli.run(main, parser())
