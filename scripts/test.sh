#!/usr/bin/env bash
# The whole test suite: Rust tests, the committed-header check, the C/C++ ctest suite
# (ASan/UBSan), and the JAX binding's pytest suite. GPU cases run where a GPU is present and
# say that they are skipped elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo cmake pkg-config c++ python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (Debian: apt-get install cmake pkg-config g++)" >&2; exit 1; }
done
if ! python3 -c "import jax, optax, pytest, setuptools, wheel" 2>/dev/null; then
    echo "== installing the Python test dependencies"
    python3 -m pip install -q --disable-pip-version-check "jax[cpu]==0.10.2" optax pytest setuptools wheel
fi
if ! python3 -c "import nvidia.cu13" 2>/dev/null && ! ldconfig -p 2>/dev/null | grep -q libnvrtc; then
    echo "== installing NVRTC (the CUDA kernels are compiled by it in the tests)"
    python3 -m pip install -q --disable-pip-version-check "nvidia-cuda-nvrtc==13.*"
fi

echo "== cargo build --release"
cargo build --release
# A build never writes into the source tree (build.rs generates the header into target/);
# tests/abi.rs fails when include/grass.h differs from it. This second guard catches a header
# edited after the tests ran.
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- include/grass.h; then
    git --no-pager diff --stat -- include/grass.h
    echo "warning: include/grass.h has uncommitted changes; commit them" >&2
fi

echo "== cargo test"
cargo test --release
# The GPU cases pass as skipped without a usable GPU; say so where it can be read.
gpu_log=$(cargo test --release -q --test cuda -- --nocapture --test-threads=1 2>&1 || true)
skipped=$(grep -o 'SKIPPED [^:]*' <<<"$gpu_log" | wc -l || true)
if [ "$skipped" -gt 0 ]; then
    echo "GPU tests: $skipped of tests/cuda skipped: $(grep -o 'SKIPPED .*' <<<"$gpu_log" | head -n 1 | sed 's/^SKIPPED [^:]*: //')"
else
    echo "GPU tests: tests/cuda ran on a GPU"
fi

echo "== ctest: C and C++ consumers under ASan/UBSan, install tree, demo"
BUILD_DIR=build/ctest tests/c/run.sh

echo "== pytest: the bindings' ctypes declarations against grass.h"
python3 -m pytest -q -rs bindings/tests

echo "== pytest: PyTorch/ctypes binding"
python3 -m pytest -q -rs bindings/torch/tests

echo "== pytest: JAX binding (installs bindings/jax against this build)"
python3 -m pip install -q --disable-pip-version-check --no-build-isolation ./bindings/jax
python3 -m pytest -q -rs bindings/jax/tests
