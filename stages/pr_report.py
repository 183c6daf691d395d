"""The markdown a pull request gets: params and metrics diffs against a base ref, and the plots diff.

    python -m stages.pr_report BASE [--plots DIR]     (`make pr-report BASE=origin/main`)

Prints `dvc params diff` and `dvc metrics diff` against BASE as markdown; with --plots, also writes
`dvc plots diff BASE` to DIR (the CI workflow uploads it as an artifact and links it from the comment).
"""

from __future__ import annotations

import subprocess
import sys

from stages import cli
from stages.config import UserError


def dvc(*args: str) -> str:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"dvc {' '.join(args)}: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
    return proc.stdout.strip()


def report(base: str, plots_dir: str | None) -> str:
    params = dvc("params", "diff", base, "--md")
    metrics = dvc("metrics", "diff", base, "--md", "--precision", "4")
    lines = [f"## DPO pipeline: this branch vs `{base}`", "",
             "### Params", "", params or "No params changed.", "",
             "### Metrics", "", metrics or "No metrics changed.", ""]
    if plots_dir:
        dvc("plots", "diff", base, "-o", plots_dir)
        lines += ["### Plots", "", f"`dvc plots diff {base}`: reward margins, accuracies, loss and KL, both revisions "
                  f"on one chart; open `{plots_dir}/index.html` (attached to this run as an artifact).", ""]
    return "\n".join(lines)


def main() -> None:
    args = sys.argv[1:]
    if not args:
        raise UserError("usage: python -m stages.pr_report BASE [--plots DIR]")
    plots = args[args.index("--plots") + 1] if "--plots" in args else None
    print(report(args[0], plots))


if __name__ == "__main__":
    cli.run(main)
