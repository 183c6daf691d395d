"""Where the pipeline's time and memory go: a full `dvc repro` stage by stage, a beta change, a no-op.

    python -m bench.pipeline                 (this commit)
    python -m bench.pipeline ecd84a4 HEAD    (each commit in turn, in one run, and the ratios between them)

In a fresh clone of this repository (a temporary folder, sharing this .venv), runs each stage with
`dvc repro -s <stage>` and records its wall time and peak RSS (of the largest process it ran, dvc or the
stage, from getrusage), then `dvc exp run -S train.beta=0.3` (must run train, eval and report only) and a no-op
`dvc repro`. Prints a table and the beta rerun's and the no-op's share of the full run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench.result import add_json_arg, write_result

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "sft", "sample", "judge", "train", "eval_baselines", "eval", "report")
# Runs one command and prints its wall time and the peak RSS of its largest descendant, in MiB.
PROBE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
         "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "print(p.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
         "print(p.stdout + p.stderr)")


def measure(repo: Path, *cmd: str) -> tuple[float, float, str]:
    env = {**os.environ, "PATH": f"{repo / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}", "CI": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, *cmd], cwd=repo, env=env, capture_output=True, text=True,
                         check=True).stdout
    first, _, log = out.partition("\n")
    code, seconds, rss = first.split()
    if code != "0":
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log[-2000:]}")
    return float(seconds), float(rss), log


def run(rev: str) -> list[tuple[str, float, float]]:
    """The table's rows for one commit: each stage, the beta change, the no-op."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        subprocess.run(["git", "checkout", "-q", rev], cwd=repo, check=True)
        (repo / ".venv").symlink_to(ROOT / ".venv")
        declared = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]  # an older commit: no eval_baselines
        rows = [(f"stage {s}", *measure(repo, "dvc", "repro", "-s", s)[:2]) for s in STAGES if s in declared]
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "baseline"],
                       cwd=repo, capture_output=True)  # nothing to commit when the lock reproduced
        seconds, rss, log = measure(repo, "dvc", "exp", "run", "-S", "train.beta=0.3")
        assert not [s for s in ("sample", "judge", "eval_baselines") if f"Running stage '{s}'" in log], log
        rows.append(("beta change (dvc exp run -S train.beta=0.3)", seconds, rss))
        # Back to the baseline: the experiment left its params, lock, metrics, curves and report in the
        # workspace (git-tracked, cache: false), then its models in the cached outs (dvc checkout).
        subprocess.run(["git", "checkout", "-q", "--", "."], cwd=repo, check=True)
        subprocess.run(["dvc", "checkout", "-q"], cwd=repo, env={**os.environ, "PATH": f"{repo / '.venv/bin'}:"
                                                                  f"{os.environ['PATH']}"})
        seconds, rss, log = measure(repo, "dvc", "repro")
        assert "Running stage" not in log, log
        rows.append(("no-op dvc repro", seconds, rss))
    return rows


def full(rows: list[tuple[str, float, float]]) -> float:
    """The full pipeline's time: the sum of the stage rows."""
    return sum(r[1] for r in rows if r[0].startswith("stage "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("revs", nargs="*", default=["HEAD"], metavar="REV", help="commits, each in turn (default: HEAD)")
    add_json_arg(ap)
    args = ap.parse_args()
    revs = args.revs
    results = {rev: run(rev) for rev in revs}
    out = {}
    for rev, rows in results.items():
        print(f"\n{rev}\n{'step':48} {'seconds':>8} {'peak RSS MiB':>13}")
        for name, seconds, rss in rows:
            print(f"{name:48} {seconds:8.1f} {rss:13.0f}")
        print(f"{'full pipeline (sum of stages)':48} {full(rows):8.1f}")
        print(f"beta change: {rows[-2][1] / full(rows):.2f} of the full run; no-op: {rows[-1][1] / full(rows):.3f}")
        out[rev] = {"steps": [{"step": name, "seconds": round(seconds, 1), "peak_rss_mib": round(rss)}
                              for name, seconds, rss in rows],
                    "full_seconds": round(full(rows), 1), "beta_change_share": round(rows[-2][1] / full(rows), 3),
                    "noop_share": round(rows[-1][1] / full(rows), 4)}
    for rev in revs[1:]:  # each later commit against the first
        rows, first = results[rev], {name: seconds for name, seconds, _ in results[revs[0]]}
        print(f"{rev} against {revs[0]}: full run {full(rows) / full(results[revs[0]]):.2f}x the time; "
              + ", ".join(f"{name.removeprefix('stage ')} {seconds / first[name]:.2f}x" for name, seconds, _ in rows
                          if name in first))
        out[rev]["against_first"] = {"full": round(full(rows) / full(results[revs[0]]), 3),
                                     **{name.removeprefix("stage "): round(seconds / first[name], 3)
                                        for name, seconds, _ in rows if name in first}}
    write_result(args.json, "pipeline", out)


if __name__ == "__main__":
    main()
