#!/usr/bin/env bash
# The memory plan measured on one GPU (docs/benchmarks.md "Memory"): bench/memory.py --gpu, models of
# Llama-3.2-1B's, Llama-3.2-3B's and Llama-3.1-8B's published shapes with random weights (nothing is
# downloaded), one DPO optimizer step in bf16 and with a 4-bit NF4 base, with and without activation
# checkpointing, and one generation batch; torch.cuda.max_memory_allocated over the plan's estimate, and
# max_memory_reserved beside it (what GPU_SLACK in dpo_pipeline/models/memory.py stands for). Sized to end in
# under 8 minutes on one H100 (the 8B nf4 case saves and reloads 16 GB: about 2 of them).
#
#   bash bench/gpu_memory.sh          (on the GPU machine, from the repository root; results in $OUT)
#
# Needs torch with CUDA, transformers, TRL, PEFT, datasets and bitsandbytes; wheels in .whl/ (if any) are
# installed first, as bench/gpu_real.sh does on a machine without network.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-memory}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout ${LIMIT_S:-470} python3 -m bench.memory --gpu --json "$OUT/memory.json" 2>&1 | tee "$OUT/memory.txt"
