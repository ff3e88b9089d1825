#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu_prepare.sh filled .carry/ here: the PyTorch and JAX
# binding tests on the GPU, then the layer benchmark against the floor and the peers (same
# process, same card), then the JAX step's memory against optax.adamw. Logs and results go to
# $OUT (or ./gpu-logs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
source scripts/gpu_env.sh
export GRASS_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
export PYTHONPATH=.carry/py:bindings/torch
export GRASS_LIB=$PWD/.carry/lib/libgrass.so
# PARTS picks what runs (default "tests bench jaxmem"), to split the work over device calls.
PARTS=${PARTS:-tests bench jaxmem}
part() { [[ " $PARTS " == *" $1 "* ]]; }
status=0
if part tests; then
    python3 -m pytest -q -rs bindings/torch/tests 2>&1 | tee "$OUT/torch_tests.log" || status=1
    python3 -m pytest -q -rs bindings/jax/tests 2>&1 | tee "$OUT/jax_tests.log" || status=1
fi
if part bench; then
    python3 bench/bench_layer.py 2>&1 | tee "$OUT/bench.log" || status=1
fi
# JAX: one 13824 x 5120 layer's jitted step, GRASS vs optax.adamw: compiled memory analysis,
# HLO (no m x n gradient, no copy of W) and the device's peak, each in its own process.
if part jaxmem; then
    XLA_PYTHON_CLIENT_PREALLOCATE=false python3 bench/bench_jax_memory.py --run 2>&1 |
        tee "$OUT/jax_memory.log" || status=1
fi
exit $status
