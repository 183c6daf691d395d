"""The train stage against a bare TRL DPOTrainer script: same pairs, model and settings.

    dvc repro judge && python -m bench.train
    python -m bench.train --pairs 48 --epochs 1      # a shorter run (the first 48 pairs), e.g. on a real model
    python -m bench.train --pairs 48 --epochs 1 --quick   # runs 1, 2 and 5 only: the bar, in 3/5 of the time
    python -m bench.train --compare                  # the two trainers built side by side, not trained
    python -m bench.train --steps stage bare         # each step and each trainer callback timed, per RUN

Runs, one after the other on the pipeline's SFT model and preference pairs (models/, artifacts/):
  1. bare: a plain script (transformers + PEFT + TRL's DPOTrainer, none of the stage's wrapping) training
     with the stage's own DPOConfig and LoRA config (dpo_pipeline.models.dpo / .lora: settings cannot drift);
  2. stage, KL only at start and end: `stages.train.main(params)` with kl_every past the last step (what our
     wrapping costs: loading, DVCLive, two KL measurements);
  3. stage: `stages.train.main(params)` as `dvc repro` runs it (the KL monitor samples every `train.kl_every`
     steps);
  4. bare, precomputed: the bare script with `precompute_ref_log_probs=True`;
  5. bare again.
Each is timed from loading the model to the end of training; all train on the same tokens, so tokens/s
ratios are time ratios, against the mean of two bare runs (first and last, so order and warm-up show).
The bar: stage-no-KL tokens/s >= 0.95 x bare. The stage runs with `precompute_ref_log_probs` off, as the
bare runs 1 and 5 do, whatever params.yaml says: like for like.

`--compare` builds both sides' DPOTrainer without training (the bare script's, and the stage's loading, split
and DPOConfig) and prints `same KEY ...` or `DIFF KEY bare stage` for what could change per-step compute:
tokenized pairs, DPOConfig, weights, trainable parameters, modules in train mode, dtypes, threads, callbacks.

`--steps RUN [RUN ...]` says where the time goes: the bare and stage runs above with each optimizer step and
each trainer callback timed (wall and process CPU), and the stage's callbacks switched off one by one.
RUN: bare | stage | stage-kl (KL every train.kl_every) | stage-nolive | stage-noprog | stage-nokl | stage-none
(options combine: stage-kl-nolive). Prints per run the time before training, each step (begin -> end, and
its process CPU seconds: on a busy machine wall times stretch, CPU times much less) and the seconds each
callback event took in all.

`--compare` and `--steps` take the first 40 pairs and one epoch unless `--pairs` / `--epochs` say otherwise.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import threading
import time
from pathlib import Path

from bench.result import add_json_arg, write_result
from dpo_pipeline.config import Params, load_params
from dpo_pipeline.files import read_jsonl
from dpo_pipeline.models.dpo import dpo_config
from dpo_pipeline.models.device import dtype
from dpo_pipeline.models.lora import lora_config

ROOT = Path(__file__).resolve().parents[1]

PAIR_KEYS = ("prompt", "chosen", "rejected")
STEP_OPTIONS = {"kl", "nolive", "noprog", "nokl", "none"}


def bare_trainer(params: Params, precompute: bool, tmp: str):
    """What a user would write with the libraries alone."""
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOTrainer

    cfg, paths = params.train, params.paths
    set_seed(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / paths.base_model)
    model = AutoModelForCausalLM.from_pretrained(ROOT / paths.base_model, dtype=dtype())
    model = PeftModel.from_pretrained(model, ROOT / paths.sft_model).merge_and_unload()
    rows = read_jsonl(ROOT / paths.preferences, required=PAIR_KEYS, strings=())
    ds = Dataset.from_list([{k: r[k] for k in PAIR_KEYS} for r in rows])
    split = ds.train_test_split(test_size=cfg.eval_fraction, seed=params.seed)
    args = dpo_config(tmp, params.seed, cfg.model_copy(update={"precompute_ref_log_probs": precompute}),
                      params.model.max_length)
    lora = lora_config(model, params.model.lora_target_modules, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    return DPOTrainer(model=model, args=args, train_dataset=split["train"], eval_dataset=split["test"],
                      processing_class=tokenizer, peft_config=lora)


def bare(params: Params, precompute: bool) -> float:
    """The bare script, from loading the model to the end of training."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bare_trainer(params, precompute, tmp).train()
    return time.perf_counter() - start


def rooted(params: Params, tmp: str) -> Params:
    """params reading the repo's models and pairs, writing the stage's outputs into a temporary folder."""
    p = params.paths
    paths = p.model_copy(update={"base_model": str(ROOT / p.base_model), "sft_model": str(ROOT / p.sft_model),
                                 "preferences": str(ROOT / p.preferences), "dpo_model": f"{tmp}/dpo",
                                 "train_live": f"{tmp}/live", "train_metrics": f"{tmp}/train.json"})
    return params.model_copy(update={"paths": paths})


def stage(params: Params, kl_every: int) -> float:
    """The train stage's main(params), reading the repo's models and pairs, writing into a temporary folder."""
    from stages import train

    with tempfile.TemporaryDirectory() as tmp:
        params = rooted(params, tmp)
        start = time.perf_counter()
        cfg = params.train.model_copy(update={"kl_every": kl_every, "precompute_ref_log_probs": False})
        train.main(params.model_copy(update={"train": cfg}))
        return time.perf_counter() - start


def stage_trainer(params: Params, tmp: str):
    """The stage's side for --compare: its loading, split and DPOConfig, no callbacks."""
    from transformers import set_seed
    from trl import DPOTrainer

    from dpo_pipeline.models.loading import load_sft, load_tokenizer
    from stages.train import split_pairs

    params = rooted(params, tmp)
    cfg, paths = params.train.model_copy(update={"precompute_ref_log_probs": False}), params.paths
    rows = read_jsonl(paths.preferences, required=PAIR_KEYS, strings=())
    set_seed(params.seed)
    tokenizer, model = load_tokenizer(paths), load_sft(paths).train()
    split, _ = split_pairs(rows, cfg, params.seed)
    args = dpo_config(tmp, params.seed, cfg, params.model.max_length)
    lora = lora_config(model, params.model.lora_target_modules, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    return DPOTrainer(model=model, args=args, train_dataset=split["train"], eval_dataset=split["test"],
                      processing_class=tokenizer, peft_config=lora)


# --- the default mode: the five runs -------------------------------------------------------------------------

def compare_runs(params: Params, quick: bool) -> dict:
    runs = {
        "bare TRL script": lambda: bare(params, precompute=False),
        "train stage, KL only at start and end": lambda: stage(params, kl_every=10**9),
        f"train stage (KL every {params.train.kl_every} steps)": lambda: stage(params, kl_every=params.train.kl_every),
        "bare TRL script, precompute_ref_log_probs": lambda: bare(params, precompute=True),
        # Again, last: the spread between the two bare runs is this machine's noise and any warm-up cost.
        "bare TRL script, again": lambda: bare(params, precompute=False),
    }
    if quick:
        runs = {k: v for i, (k, v) in enumerate(runs.items()) if i in (0, 1, 4)}
    times = {}
    for name, run in runs.items():
        times[name] = run()
        print(f"bench: {name}: {times[name]:.1f} s", flush=True)  # a long run on a real model shows as it goes
    base = (times["bare TRL script"] + times["bare TRL script, again"]) / 2
    print(f"\n{'run':48} {'seconds':>8} {'tokens/s vs bare (mean of both)':>32}")
    for name, t in times.items():
        print(f"{name:48} {t:8.1f} {base / t:31.2f}x")
    return {"bare_mean_seconds": round(base, 2),
            "runs": [{"run": name, "seconds": round(t, 2), "tokens_per_s_vs_bare": round(base / t, 3)}
                     for name, t in times.items()]}


# --- --compare: both trainers built, not trained --------------------------------------------------------------

def describe(trainer) -> dict:
    """What could change per-step compute, of one built trainer."""
    import torch

    m, tok, ds = trainer.model, trainer.processing_class, trainer.train_dataset
    return {
        "tok": {k: str(getattr(tok, k)) for k in ("padding_side", "truncation_side", "pad_token", "eos_token",
                                                   "model_max_length")},
        "chat_template_hash": hash(tok.chat_template),
        "modes": sum(x.training for x in m.modules()),
        "n_modules": sum(1 for _ in m.modules()),
        "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad),
        "rg_names": hash(tuple(n for n, p in m.named_parameters() if p.requires_grad)),
        "dtypes": sorted({str(p.dtype) for p in m.parameters()}),
        "contig": sum(not p.is_contiguous() for p in m.parameters()),
        "config": m.base_model.model.config.to_dict(),
        "gen_config": m.base_model.model.generation_config.to_dict(),
        "attn": m.base_model.model.config._attn_implementation,
        "args": {k: str(v) for k, v in trainer.args.to_dict().items() if k not in ("output_dir", "logging_dir")},
        "train_ids": [list(map(len, (r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]))) for r in ds]
                     if "prompt_ids" in ds.column_names else ds.column_names,
        "train_hash": hash(str(ds[:])),
        "callbacks": [type(c).__name__ for c in trainer.callback_handler.callbacks],
        "threads": torch.get_num_threads(),
        "weights_sum": float(sum(p.double().sum() for n, p in m.named_parameters() if "lora" not in n)),
    }


def compare_trainers(params: Params) -> dict:
    out = {}
    for kind, build in (("bare", lambda tmp: bare_trainer(params, False, tmp)),
                        ("stage", lambda tmp: stage_trainer(params, tmp))):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build(tmp)
            out[kind] = describe(trainer)
            del trainer
    a, b = out["bare"], out["stage"]
    same, diff = {}, {}
    for k in a:
        if a[k] == b[k]:
            same[k] = str(a[k])[:100]
            print("same", k, same[k])
        elif isinstance(a[k], dict):
            diff[k] = {kk: (a[k].get(kk), b[k].get(kk)) for kk in set(a[k]) | set(b[k]) if a[k].get(kk) != b[k].get(kk)}
            print("DIFF", k, diff[k])
        else:
            diff[k] = (a[k], b[k])
            print("DIFF", k, a[k], b[k])
    return {"same": same, "diff": diff}


# --- --steps: each step and each callback timed ----------------------------------------------------------------

TIMERS: list = []
CB_TIME: dict = collections.defaultdict(float)
THREADS: set = set()


def instrument() -> None:
    """Time every callback event of every DPOTrainer built from now on (bare_trainer and stages.train import
    trl's DPOTrainer when they run), and add a step timer to it: public TrainerCallbacks only, through the
    trainer's own pop_callback / add_callback."""
    import trl
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.ev, self.cpu = [], []

        def _r(self, name, state):
            self.ev.append((name, state.global_step, time.perf_counter()))
            self.cpu.append(time.process_time())

        def on_train_begin(self, a, s, c, **k): self._r("train_begin", s)
        def on_step_begin(self, a, s, c, **k): self._r("step_begin", s)
        def on_step_end(self, a, s, c, **k): self._r("step_end", s)
        def on_evaluate(self, a, s, c, **k): self._r("evaluate", s)
        def on_log(self, a, s, c, **k): self._r("log", s)
        def on_train_end(self, a, s, c, **k): self._r("train_end", s)

    class Timed(trl.DPOTrainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            TIMERS.append(Timer())
            self.add_callback(TIMERS[-1])
            clock_callbacks(self)

    trl.DPOTrainer = Timed


class Tick:
    """A callback put before and after each of a trainer's callbacks: the handler calls them in order, so the
    time from one tick to the next within an event is the callback between them. (The stage's later
    remove_callback(PrinterCallback) leaves two ticks side by side: nothing between, nothing counted.)"""

    mark: float | None = None  # the last tick's time, any trainer's: events run one at a time

    def __init__(self, handler, last: bool):
        self.handler, self.last = handler, last

    def tick(self, event: str) -> None:
        now = time.perf_counter()
        i = self.handler.callbacks.index(self)
        before = self.handler.callbacks[i - 1] if i else None
        if before is not None and not isinstance(before, Tick) and Tick.mark is not None:
            CB_TIME[(type(before).__name__, event)] += now - Tick.mark
        if self.last and event == "on_step_end":  # after every callback of the step, as the step ends
            THREADS.add(tuple(sorted(th.name for th in threading.enumerate())))
        Tick.mark = time.perf_counter()  # this bookkeeping is not the next callback's time


def clock_callbacks(trainer) -> None:
    """Re-add the trainer's callbacks in their order, a Tick before each and one after the last, through its
    public pop_callback / add_callback (a Tick class per place: add_callback warns on a second of one class).
    Events in the trainer's __init__ (on_init_end) come before the ticks and go untimed."""
    from transformers import TrainerCallback

    def on(event: str):
        return lambda self, args, state, control, **kwargs: self.tick(event)

    events = {name: on(name) for name in vars(TrainerCallback) if name.startswith("on_")}
    callbacks = list(trainer.callback_handler.callbacks)
    for cb in callbacks:
        trainer.pop_callback(cb)
    for k, cb in enumerate([*callbacks, None]):
        tick = type(f"Tick{k}", (Tick, TrainerCallback), events)
        trainer.add_callback(tick(trainer.callback_handler, last=cb is None))
        if cb is not None:
            trainer.add_callback(cb)


def step_report(name: str, total: float, t0: float) -> dict:
    """The last trainer's timeline: before training, each step (wall and CPU), the cycles between steps."""
    t = TIMERS[-1]
    ev = t.ev
    begins = [(s, x) for n, s, x in ev if n == "step_begin"]
    ends = [(s, x) for n, s, x in ev if n == "step_end"]
    tb = [x for n, s, x in ev if n == "train_begin"][0]
    te = [x for n, s, x in ev if n == "train_end"][0]
    steps = [round(e - b, 2) for (_, b), (_, e) in zip(begins, ends)]
    cb = [c for (n, s, x), c in zip(ev, t.cpu) if n == "step_begin"]
    ce = [c for (n, s, x), c in zip(ev, t.cpu) if n == "step_end"]
    r = {"run": name, "total_s": round(total, 1), "before_train_begin_s": round(tb - t0, 1),
         "train_begin_to_first_step_s": round(begins[0][1] - tb, 1), "steps_s": steps,
         "steps_sum_s": round(sum(steps), 1),
         "cycles_s": [round(begins[i + 1][1] - begins[i][1], 2) for i in range(len(begins) - 1)],
         "cpu_steps_s": [round(e - b, 2) for b, e in zip(cb, ce)],
         "last_step_end_to_train_end_s": round(te - ends[-1][1], 1), "after_train_end_s": round(t0 + total - te, 1)}
    print(f"ABL {name}: total {r['total_s']:.1f} s | before train_begin {r['before_train_begin_s']:.1f} | "
          f"train_begin->first step {r['train_begin_to_first_step_s']:.1f} | step(begin->end) {steps} sum "
          f"{r['steps_sum_s']:.1f} | cycles {r['cycles_s']} | cpu steps {r['cpu_steps_s']} | last step_end->train_end "
          f"{r['last_step_end_to_train_end_s']:.1f} | after train_end {r['after_train_end_s']:.1f}", flush=True)
    return r


def time_steps(params: Params, runs: list[str]) -> dict:
    import torch
    from transformers import TrainerCallback

    import dpo_pipeline.models.dpo as dpo_mod
    import dpo_pipeline.models.kl as kl_mod
    import dpo_pipeline.models.training as tr_mod

    instrument()
    orig_live, orig_prog = dpo_mod.live_callback, tr_mod.TrainingProgress
    orig_kl = kl_mod.KLMonitor.on_step_end
    out = []
    for run in runs:
        opts = set(run.split("-")[1:])

        class NoCb(TrainerCallback):
            pass
        dpo_mod.live_callback = (lambda live: NoCb()) if "nolive" in opts or "none" in opts else orig_live
        tr_mod.TrainingProgress = (lambda d: NoCb()) if "noprog" in opts or "none" in opts else orig_prog
        kl_mod.KLMonitor.on_step_end = (lambda *a, **k: None) if "nokl" in opts or "none" in opts else orig_kl
        t0 = time.perf_counter()
        if run.startswith("bare"):
            total = bare(params, precompute=False)
        else:
            total = stage(params, kl_every=params.train.kl_every if "kl" in opts else 10**9)
        r = step_report(run, total, t0)
        r["callbacks_s"] = {f"{k[0]}.{k[1]}": round(v, 3) for k, v in sorted(CB_TIME.items()) if v > 0.005}
        r["threads"], r["torch_threads"] = sorted(THREADS), torch.get_num_threads()
        print("CB", run, r["callbacks_s"], "threads", THREADS, "torch threads", r["torch_threads"], flush=True)
        CB_TIME.clear()
        THREADS.clear()
        r["uptime"] = os.popen("uptime").read().strip()
        print("uptime:", r["uptime"], flush=True)
        out.append(r)
    dpo_mod.live_callback, tr_mod.TrainingProgress, kl_mod.KLMonitor.on_step_end = orig_live, orig_prog, orig_kl
    print("uptime:", os.popen("uptime").read().strip())
    return {"runs": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true",
                      help="build the bare script's and the stage's DPOTrainer, untrained, and diff them")
    mode.add_argument("--steps", nargs="+", metavar="RUN",
                      help="time each step and each callback of these runs (bare, stage, stage-kl, stage-nolive, "
                           "stage-noprog, stage-nokl, stage-none; options combine)")
    ap.add_argument("--pairs", type=int, help="train on the first N preference pairs only (--compare, --steps: 40)")
    ap.add_argument("--epochs", type=float, help="override train.epochs (--compare, --steps: 1)")
    ap.add_argument("--quick", action="store_true", help="only the bare runs and the stage without KL (the bar)")
    add_json_arg(ap)
    args = ap.parse_args()
    for run in args.steps or []:
        kind, *opts = run.split("-")
        if kind not in ("bare", "stage") or not set(opts) <= STEP_OPTIONS or (kind == "bare" and opts):
            ap.error(f"--steps: unknown run {run!r}")
    if args.quick and (args.compare or args.steps):
        ap.error("--quick is for the default comparison only")
    if args.compare or args.steps:
        args.pairs, args.epochs = args.pairs or 40, args.epochs or 1

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Import everything both sides use before any clock starts: the first run must not pay for imports.
    import datasets, dvclive, peft, torch, transformers, trl  # noqa: E401, F401

    from stages import train  # noqa: F401
    params = load_params(ROOT / "params.yaml")
    subset = Path(tempfile.mkdtemp()) / "preferences.jsonl"
    if args.pairs:  # every run reads the same subset
        subset.write_text("".join((ROOT / params.paths.preferences).read_text().splitlines(keepends=True)[:args.pairs]))
        params = params.model_copy(update={"paths": params.paths.model_copy(update={"preferences": str(subset)})})
    if args.epochs:
        params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": args.epochs})})
    if args.compare:
        mode, result = "compare", compare_trainers(params)
    elif args.steps:
        mode, result = "steps", time_steps(params, args.steps)
    else:
        mode, result = "quick" if args.quick else "runs", compare_runs(params, args.quick)
    write_result(args.json, "train", {"mode": mode, "pairs": args.pairs, "epochs": params.train.epochs, **result})


if __name__ == "__main__":
    main()
