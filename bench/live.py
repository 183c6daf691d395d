"""What logging the training curves costs: dvclive's own Live against the train stage's (`models/dpo.py`'s
live_run, which skips building Studio's payload when Studio is not configured), runs alternated in one
invocation.

    python bench/live.py                       # the default train stage's logging: 64 logs of 16 curves
    python bench/live.py --logs 1000           # a long run: the payload re-reads every curve at every log

Each run logs the DPOConfig of `params.yaml` as the run's params (as transformers' DVCLive callback does), then
`--logs` times `--curves` values and `next_step()`, into a fresh folder. Prints each run's seconds and the
ratio of the means; the curve files of the two kinds are compared byte for byte.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dvclive import Live  # noqa: E402

from dpo_pipeline.config import load_params  # noqa: E402
from dpo_pipeline.models.dpo import dpo_config, live_run  # noqa: E402


def run(kind: str, folder: Path, args_dict: dict, logs: int, curves: int) -> float:
    start = time.perf_counter()
    live = live_run(str(folder)) if kind == "ours" else Live(dir=str(folder), dvcyaml=None, save_dvc_exp=False)
    live.log_params(args_dict)
    for step in range(logs):
        live.step = step
        for c in range(curves):
            live.log_metric(f"curve_{c}", (step + 1) / (c + 1))
        live.next_step()
    live.end()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", type=int, default=64)
    ap.add_argument("--curves", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        args_dict = dpo_config(tmp, params.seed, params.train, params.model.max_length).to_sanitized_dict()
        times: dict[str, list[float]] = {"dvclive": [], "ours": []}
        for r in range(a.repeats):
            for kind in ("dvclive", "ours"):
                times[kind].append(run(kind, Path(tmp) / f"{kind}{r}", args_dict, a.logs, a.curves))
                print(f"{kind:8s} run {r + 1}: {times[kind][-1]:.3f} s")
        same = all((Path(tmp) / f"dvclive{r}" / "plots" / "metrics" / f"curve_{c}.tsv").read_bytes()
                   == (Path(tmp) / f"ours{r}" / "plots" / "metrics" / f"curve_{c}.tsv").read_bytes()
                   for r in range(a.repeats) for c in range(a.curves))
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    print(f"{a.logs} logs of {a.curves} curves: dvclive's Live {mean['dvclive']:.3f} s, the stage's "
          f"{mean['ours']:.3f} s = {mean['dvclive'] / mean['ours']:.2f}x faster "
          f"({mean['dvclive'] - mean['ours']:.3f} s saved); curve files identical: {same}")


if __name__ == "__main__":
    main()
