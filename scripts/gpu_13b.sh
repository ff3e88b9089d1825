#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu_prepare.sh filled .carry/ here: the memory proof. A
# LLaMA-13B-shaped bf16 model trains a few steps with GRASS in JAX; its peak device memory must
# stay within 40 GB, optax.adamw's compiled step must need more, and the memory plan's numbers
# are printed beside them; the layers run under lax.scan over stacked weights, so each step
# compiles one block (well within 3 minutes in all: two compiles, three steps).
# Logs and results go to $OUT (or ./gpu-logs). Extra arguments go to the benchmark (e.g.
# --rank 512, --steps 5, --small for a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
export OUT
source scripts/gpu_env.sh
export PYTHONUNBUFFERED=1
# the peak must be what the step uses, not what XLA reserved up front
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# grass_jax as scripts/gpu_prepare.sh built it into .carry/py (refused when built from other
# sources: scripts/gpu_stamp.sh) with its prebuilt kernels; elsewhere PYTHON may name an
# interpreter that has it (e.g. PYTHON=.venv/bin/python scripts/gpu_13b.sh --small on a CPU)
if [ -d .carry/py ]; then
    source scripts/gpu_stamp.sh
    stamp_check .carry || exit 3
    export PYTHONPATH=$PWD/.carry/py${PYTHONPATH:+:$PYTHONPATH}
    [ -d .carry/kernels ] && export GRASS_PREBUILT_KERNELS=$PWD/.carry/kernels
fi
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/memory_13b_gpu.txt"
timeout 300 "$PYTHON" bench/bench_13b_memory.py "$@" 2>&1 | tee "$OUT/memory_13b.log"
exit "${PIPESTATUS[0]}"
