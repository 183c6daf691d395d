"""Data-parallel stages: sample, eval_baselines and eval (and train, on request) as 1 process and as N under torchrun.

    dvc repro && python -m bench.processes             # N = 2
    python -m bench.processes --processes 4 --stages sample
    python -m bench.processes --stages train            # DPO training as N processes (each half a batch)

Runs `python -m stages.<stage>` on the pipeline's models (models/), writing into a temporary folder, with
`<stage>.num_processes` (eval's for eval_baselines) 1 and then N, and prints each stage's wall time, the
speed-up, and whether the outputs are identical (samples.jsonl; eval_baselines.jsonl; eval_outputs.jsonl byte
for byte and eval's metrics, its KL included;
train: the final KL of each, as N processes train on the pairs in another order).
On CPU each of N processes runs one torch thread (torchrun sets OMP_NUM_THREADS=1), against one process with
all cores' threads: on a machine with as many cores as processes that is the whole comparison.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.result import add_json_arg, write_result

ROOT = Path(__file__).resolve().parents[1]
# Each stage's outputs (paths keys), written into the run's folder; the first is the one compared.
OUTPUTS = {"sample": ["samples"], "eval_baselines": ["eval_baselines"], "eval": ["eval_outputs", "eval_metrics", "eval_ci"],
           "train": ["train_metrics", "dpo_model", "train_live"]}
SECTION = {"eval_baselines": "eval"}  # the params section whose num_processes a stage reads (else its own name)


def run(stage: str, processes: int, workdir: Path) -> float:
    """Write workdir/params.yaml (models and data read from the repo, outputs here), run the stage, time it."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    paths = params["paths"]
    for key in ("data", "base_model", "sft_model", "dpo_model", "preferences", "eval_baselines"):
        paths[key] = str(ROOT / paths[key])
    for key in OUTPUTS[stage]:
        paths[key] = str(workdir / Path(paths[key]).name)
    params[SECTION.get(stage, stage)]["num_processes"] = processes
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=workdir, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"stages.{stage} with {processes} processes failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def identical(stage: str, paths: dict, one: Path, many: Path) -> bool | str:
    """The outputs byte for byte, and for eval every metric (its KL included) but the machine's thread count.
    Training in N processes matches one within a tolerance only (tests/test_e2e.py): the final KLs, side by side."""
    name = Path(paths[OUTPUTS[stage][0]]).name
    if stage == "train":
        return "final KL {} vs {}".format(*(json.loads((folder / name).read_text())["kl"]["final"]
                                            for folder in (one, many)))
    if not filecmp.cmp(one / name, many / name, shallow=False):
        return False
    if stage != "eval":
        return True
    metrics = [json.loads((folder / Path(paths["eval_metrics"]).name).read_text()) for folder in (one, many)]
    for m in metrics:
        m.pop("machine")
    return metrics[0] == metrics[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--stages", nargs="+", default=["sample", "eval_baselines", "eval"], choices=list(OUTPUTS))
    add_json_arg(ap)
    args = ap.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    print(f"{'stage':14} {'1 process, s':>13} {f'{args.processes} processes, s':>15} {'speed-up':>9} identical")
    rows = []
    for stage in args.stages:
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as many:
            t1 = run(stage, 1, Path(one))
            tn = run(stage, args.processes, Path(many))
            same = identical(stage, params["paths"], Path(one), Path(many))
            print(f"{stage:14} {t1:13.1f} {tn:15.1f} {t1 / tn:8.2f}x {same}", flush=True)
            rows.append({"stage": stage, "one_process_s": round(t1, 1), "n_processes_s": round(tn, 1),
                         "speed_up": round(t1 / tn, 3), "identical": same})
    write_result(args.json, "processes", {"processes": args.processes, "stages": rows})


if __name__ == "__main__":
    main()
