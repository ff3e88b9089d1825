#!/usr/bin/env bash
# The whole test suite: Rust tests, the committed-header check, the C/C++ ctest suite
# (ASan/UBSan, the install tree, the demo), the PyTorch and JAX binding tests, and every
# runnable snippet of the READMEs and docs/. GPU cases run where CUDA is usable; elsewhere they
# are reported as ignored/skipped, never as passed. The Rust and C++ GPU tests also run
# everywhere on the host stand-in for the CUDA driver and cuBLAS (tests/host_cuda).
#
# Needs Rust >= 1.82 (rustup), a C/C++ compiler, cmake, pkg-config and Python >= 3.11 with venv
# (Debian 12: apt-get install build-essential cmake pkg-config python3-venv). The Python
# packages go into .venv/ at the repository root (scripts/venv.sh), never into the system
# Python.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo cmake pkg-config cc c++; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool (Rust: rustup; Debian: apt-get install build-essential cmake pkg-config)" >&2
        exit 1
    }
done
rust=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n' 1.82.0 "$rust" | sort -V | head -n 1)" != 1.82.0 ]; then
    echo "grass needs Rust >= 1.82, this is rustc $rust (Debian's apt has 1.63: use rustup)" >&2
    exit 1
fi

# shellcheck source=scripts/venv.sh
. scripts/venv.sh
grass_venv

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
# The GPU tests (tests/cuda) are #[ignore]d, so cargo test counts them as ignored above. Run
# them where libgrass can use CUDA; elsewhere say once why they did not run.
cuda_why=$(python - <<'EOF'
import ctypes
lib = ctypes.CDLL("target/release/libgrass.so")
available, why = ctypes.c_int32(0), ctypes.create_string_buffer(512)
lib.grass_cuda_available(ctypes.byref(available), why, ctypes.c_size_t(len(why)))
print(("yes " if available.value == 1 else "no ") + why.value.decode(errors="replace"))
EOF
)
if [ "${cuda_why%% *}" = yes ]; then
    echo "== GPU tests (tests/cuda): ${cuda_why#yes }"
    cargo test --release --test cuda -- --include-ignored --test-threads=1
else
    n=$(cargo test --release -q --test cuda -- --list --ignored 2>/dev/null | grep -c ': test$' || true)
    echo "GPU tests: $n of tests/cuda ignored, CUDA is not usable here: ${cuda_why#no }"
fi

# The same GPU tests on the host stand-in for the CUDA driver and cuBLAS (tests/host_cuda): the
# CUDA backend's own code (src/cuda: contexts, streams, events, graphs, cuBLAS, launches) runs
# end to end on every machine, with the stand-in's memcheck on every device access.
echo "== GPU tests on the host stand-in (GRASS_HOST_CUDA=1, tests/host_cuda)"
make -s -C tests/host_cuda
GRASS_HOST_CUDA=1 cargo test --release --test cuda -- --include-ignored

# pytest -rs names every skipped test with its reason; the GPU cases skip by the dozen for one
# reason on a machine without a GPU. Keep one line per reason, with the count, in its place.
one_line_per_skip_reason() {
    awk '
        /^SKIPPED \[[0-9]+\] / {
            n = $2; gsub(/[][]/, "", n)
            reason = $0; sub(/^SKIPPED \[[0-9]+\] [^ ]*: /, "", reason)
            if (!(reason in count)) order[++reasons] = reason
            count[reason] += n
            next
        }
        {
            for (i = 1; i <= reasons; i++) printf "SKIPPED %d: %s\n", count[order[i]], order[i]
            reasons = 0; delete count
            print
        }'
}

echo "== ctest: C and C++ consumers under ASan/UBSan, install tree, demo"
BUILD_DIR=build/ctest tests/c/run.sh

echo "== pytest: the bindings' ctypes declarations against grass.h"
python -m pytest -q -rs bindings/tests

echo "== pytest: PyTorch/ctypes binding"
python -m pytest -q -rs bindings/torch/tests | one_line_per_skip_reason

echo "== pytest: JAX binding (installs bindings/jax into $VIRTUAL_ENV against this build)"
python -m pip install -q --disable-pip-version-check --no-build-isolation ./bindings/jax
python -m pytest -q -rs bindings/jax/tests | one_line_per_skip_reason

echo "== README and docs snippets"
python scripts/check_snippets.py

# The GPU machine's one command rehearsed end to end (scripts/gpu_all.sh, docs/cuda.md): the
# carry built by gpu_prepare.sh from the release build above, then every part in its dry-run
# form, rust_cuda and ctest_cuda on the host stand-in built above. Nothing runs twice:
# rust_cuda runs only sparse_grad:: (all of tests/cuda ran on the stand-in above), and the
# optional ctest_asan (test_cuda under ASan on the stand-in) is left out, being ctest's
# test_cuda_host_stand_in again. A dry run that ends FAILED fails the suite.
echo "== dry run of scripts/gpu_all.sh on the host stand-in (GPU_ALL_DRY=1 GRASS_HOST_CUDA=1)"
scripts/gpu_prepare.sh
dry=$PWD/build/gpu-dry
rm -rf "$dry"
steps="rust_cuda ctest_cuda torch_tests jax_ops bench_layer jax_memory memory_13b"
steps="$steps racecheck synccheck memcheck jax_train"
if ! OUT=$dry/out GPU_ALL_LOGS=$dry/logs GPU_ALL_WORK=$dry/work GPU_ALL_DRY=1 GRASS_HOST_CUDA=1 \
    RUST_CUDA_FILTER=sparse_grad:: GPU_ALL_ONLY=$steps bash scripts/gpu_all.sh; then
    echo "the dry run of scripts/gpu_all.sh ended FAILED: $dry/out/summary.md; every log in $dry/out/logs.tgz" >&2
    exit 1
fi
