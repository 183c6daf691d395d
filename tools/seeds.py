"""Does DPO's gain over SFT hold across training seeds? One DVC experiment a training seed, then the verdict.

    python -m tools.seeds 1 2          (`make seeds`: the workspace's run plus training seeds 1 and 2)
    python -m tools.seeds --collect 1 2   (only read experiments already run; --collect alone: the workspace's run)

Queues `dvc exp run --queue -n seed-N -S train.seed=N` for each seed and runs the queue. `train.seed` is a
param of the train stage only, so each experiment re-runs train, eval and report, while prepare, sft, sample,
judge and eval_baselines come from DVC's run cache: the preference data and the base's and SFT's eval outputs
are shared. Then reads each run's per-prompt eval
outputs from the DVC cache (the md5 in the experiment's dvc.lock) beside the workspace's own run (seed = the
top-level `seed`) and writes `paths.seeds` (metrics/seeds.json) and reports/seeds.md
(dpo_pipeline/evaluation/seeds.py says what each number is). The report stage then says how many seeds
stand behind its verdict.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from dpo_pipeline import cli
from dpo_pipeline.config import Params
from dpo_pipeline.errors import ServiceError, UserError
from dpo_pipeline.evaluation import seeds
from dpo_pipeline.evaluation.schema import judged_metric, model_metrics
from dpo_pipeline.files import read_jsonl, write_json, write_text
from dpo_pipeline.reporting.revisions import output_file
from dpo_pipeline.tasks import get_task
from tools import gate


def sh(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli.environment())
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise UserError(f"{' '.join([Path(cmd[0]).name, *cmd[1:4]])}: {why}")
    return proc.stdout


def run_experiments(train_seeds: list[int]) -> None:
    dvc = cli.executable("dvc")  # the stages it runs find this venv's python: cli.environment()
    for s in train_seeds:
        subprocess.run([dvc, "exp", "remove", f"seed-{s}"], capture_output=True)  # a rerun replaces it
        sh(dvc, "exp", "run", "--queue", "-n", f"seed-{s}", "-S", f"train.seed={s}")
    print(f"seeds: running {len(train_seeds)} queued experiments (train, eval, report each) ...", flush=True)
    if subprocess.run([dvc, "exp", "run", "--run-all"], env=cli.environment()).returncode != 0:
        raise ServiceError("dvc exp run --run-all failed (its output is above); the finished experiments are kept")


def outputs_of(name: str, eval_outputs: str) -> list[dict]:
    """The experiment's per-prompt eval records: what its dvc.lock records, from the DVC cache or remote."""
    refs = [r for r in sh("git", "for-each-ref", "--format=%(refname)", "refs/exps/").split() if r.endswith(f"/{name}")]
    if not refs:
        raise UserError(f"no DVC experiment named {name} (run python -m tools.seeds without --collect)")
    path, why = output_file(refs[0], eval_outputs)
    if path is None:
        raise UserError(f"{eval_outputs} of experiment {name}: {why}")
    return read_jsonl(path, required=("id", "sft", "dpo"))


def main(params: Params, args: argparse.Namespace) -> None:
    collect_only, train_seeds = args.collect, args.seeds
    if not train_seeds and not collect_only:
        raise UserError("tools.seeds: give at least one training SEED to run (or --collect alone: the "
                        "workspace's run)")
    if params.seed in train_seeds:
        raise UserError(f"tools.seeds: seed {params.seed} is the workspace's (params.yaml's seed), always included; "
                        "give other seeds")
    if params.train.seed is not None:
        raise UserError(f"params.yaml: train.seed is {params.train.seed}; set it to null so the workspace's run "
                        "is the top-level seed's")
    if not collect_only:
        run_experiments(train_seeds)
    paths = params.paths
    runs = {str(params.seed): read_jsonl(paths.eval_outputs, required=("id", "sft", "dpo"))}
    runs |= {str(s): outputs_of(f"seed-{s}", paths.eval_outputs) for s in train_seeds}
    metrics = model_metrics(get_task(params.task), judged_metric(runs[str(params.seed)][0]["dpo"]))
    result = {"seeds": [params.seed, *train_seeds], "n_prompts": len(runs[str(params.seed)]),
              "fingerprint": seeds.fingerprint(params.model_dump()),
              "metrics": seeds.summarize(runs, metrics, params.eval.bootstrap_samples, params.seed)}
    write_json(paths.seeds, result)
    write_text(Path(paths.reports) / "seeds.md", seeds.markdown(result, metrics))
    print(seeds.markdown(result, metrics))
    bands = seeds.gate_bands(result, metrics)
    print(f"seeds: 3 sd across seeds of SFT+DPO's values: rates {bands['rate_band']}, scores {bands['score_band']} "
          f"(python -m tools.gate's defaults, not params.yaml: --rate-band {gate.DEFAULTS.rate_band}, "
          f"--score-band {gate.DEFAULTS.score_band})")
    print(f"seeds: {paths.seeds} and {Path(paths.reports) / 'seeds.md'}; `dvc repro` updates the report's verdict")


def parser() -> argparse.ArgumentParser:
    p = cli.tool_parser(__doc__)
    p.add_argument("seeds", nargs="*", type=int, metavar="SEED",
                   help="training seeds to run as experiments seed-SEED, beside the workspace's run")
    p.add_argument("--collect", action="store_true", help="only read the experiments already run")
    return p


if __name__ == "__main__":
    cli.run(main, parser())
