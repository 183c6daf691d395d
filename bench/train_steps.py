"""Where bench/train.py's time goes: its bare() and stage() runs with each optimizer step and each trainer
callback timed (wall and process CPU), and the stage's callbacks switched off one by one.

    python bench/train_steps.py --pairs 40 stage bare     # RUN: bare | stage | stage-kl (KL every train.kl_every) |
                                                          #      stage-nolive | stage-noprog |
                                                          #      stage-nokl | stage-none (options combine)

Prints per run: the time before training, each step (begin -> end, and its process CPU seconds: on a busy
machine wall times stretch, CPU times much less), and the seconds each callback event took in all.
"""
import argparse, os, sys, tempfile, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
import datasets, dvclive, peft, transformers, trl, torch  # noqa
from transformers import TrainerCallback
import train as bench  # bench/train.py
from stages import train as stage_mod  # noqa: F401  (imported before any clock starts)
from dpo_pipeline.config import load_params

class Timer(TrainerCallback):
    def __init__(self): self.ev = []; self.cpu = []
    def _r(self, name, state): self.ev.append((name, state.global_step, time.perf_counter())); self.cpu.append(time.process_time())
    def on_train_begin(self, a, s, c, **k): self._r("train_begin", s)
    def on_step_begin(self, a, s, c, **k): self._r("step_begin", s)
    def on_step_end(self, a, s, c, **k): self._r("step_end", s)
    def on_evaluate(self, a, s, c, **k): self._r("evaluate", s)
    def on_log(self, a, s, c, **k): self._r("log", s)
    def on_train_end(self, a, s, c, **k): self._r("train_end", s)

TIMERS = []
import collections, threading
from transformers import trainer_callback as _tcb
CB_TIME = collections.defaultdict(float)
def _call_event(self, event, args, state, control, **kwargs):
    for callback in self.callbacks:
        t = time.perf_counter()
        result = getattr(callback, event)(args, state, control, model=self.model, processing_class=self.processing_class,
            optimizer=self.optimizer, lr_scheduler=self.lr_scheduler, train_dataloader=self.train_dataloader,
            eval_dataloader=self.eval_dataloader, **kwargs)
        CB_TIME[(type(callback).__name__, event)] += time.perf_counter() - t
        if result is not None:
            control = result
    if event == "on_step_end":
        THREADS.add(tuple(sorted(th.name for th in threading.enumerate())))
    return control
THREADS = set()
_tcb.CallbackHandler.call_event = _call_event
_Orig = trl.DPOTrainer
class Timed(_Orig):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        t = Timer(); TIMERS.append(t)
        self.add_callback(t)
        self._t_init_done = time.perf_counter()
trl.DPOTrainer = Timed

def report(name, total, t0):
    t = TIMERS[-1]; ev = t.ev
    begins = [(s, x) for n, s, x in ev if n == "step_begin"]
    ends = [(s, x) for n, s, x in ev if n == "step_end"]
    tb = [x for n, s, x in ev if n == "train_begin"][0]; te = [x for n, s, x in ev if n == "train_end"][0]
    steps = [round(e - b, 2) for (_, b), (_, e) in zip(begins, ends)]
    cb = [c for (n, s, x), c in zip(ev, t.cpu) if n == "step_begin"]; ce = [c for (n, s, x), c in zip(ev, t.cpu) if n == "step_end"]
    csteps = [round(e - b, 2) for b, e in zip(cb, ce)]
    cycles = [round(begins[i + 1][1] - begins[i][1], 2) for i in range(len(begins) - 1)]
    print(f"ABL {name}: total {total:.1f} s | before train_begin {tb - t0:.1f} | train_begin->first step "
          f"{begins[0][1] - tb:.1f} | step(begin->end) {steps} sum {sum(steps):.1f} | cycles {cycles} | "
          f"cpu steps {csteps} | last step_end->train_end {te - ends[-1][1]:.1f} | after train_end {t0 + total - te:.1f}", flush=True)

def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--pairs", type=int, default=40); ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    subset = Path(tempfile.mkdtemp()) / "preferences.jsonl"
    subset.write_text("".join((ROOT / params.paths.preferences).read_text().splitlines(keepends=True)[:a.pairs]))
    params = params.model_copy(update={"paths": params.paths.model_copy(update={"preferences": str(subset)}),
                                       "train": params.train.model_copy(update={"epochs": 1})})
    import dpo_pipeline.models.dpo as dpo_mod, dpo_pipeline.models.training as tr_mod, dpo_pipeline.models.kl as kl_mod
    orig_live, orig_prog = dpo_mod.live_callback, tr_mod.TrainingProgress
    orig_kl = kl_mod.KLMonitor.on_step_end
    for run in a.runs:
        opts = set(run.split("-")[1:])
        class NoCb(TrainerCallback): pass
        dpo_mod.live_callback = (lambda live: NoCb()) if "nolive" in opts or "none" in opts else orig_live
        tr_mod.TrainingProgress = (lambda d: NoCb()) if "noprog" in opts or "none" in opts else orig_prog
        kl_mod.KLMonitor.on_step_end = (lambda *a, **k: None) if "nokl" in opts or "none" in opts else orig_kl
        t0 = time.perf_counter()
        if run.startswith("bare"):
            total = bench.bare(params, precompute=False)
        else:
            total = bench.stage(params, kl_every=params.train.kl_every if "kl" in opts else 10**9)
        report(run, total, t0)
        print("CB", run, {f"{k[0]}.{k[1]}": round(v, 3) for k, v in sorted(CB_TIME.items()) if v > 0.005}, "threads", THREADS, "torch threads", torch.get_num_threads(), flush=True)
        CB_TIME.clear(); THREADS.clear()
        print("uptime:", os.popen("uptime").read().strip(), flush=True)
    print("uptime:", os.popen("uptime").read().strip())

main()
