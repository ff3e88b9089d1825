#!/usr/bin/env bash
# Builds libgrass with cargo, then configures, builds and runs the C/C++ tests (ctest) under
# AddressSanitizer and UBSan. Run from anywhere; extra arguments go to ctest (e.g. -R select).
#
#   tests/c/run.sh                    # everything
#
# Environment: BUILD_DIR (default build/ctest), BUILD_TYPE (default Debug).
#
# The build directory is its own: scripts/demo.sh configures build/ with the tests off, and a
# cached GRASS_BUILD_TESTS=OFF would leave ctest with nothing to run (which it reports as a
# success), so the tests and the sanitizers are switched on here and ctest fails on no tests.
set -euo pipefail

cd "$(dirname "$0")/../.."
build_dir=${BUILD_DIR:-build/ctest}

cargo build --release
# The host stand-in for the CUDA driver and cuBLAS (test_cuda_host_stand_in).
make -s -C tests/host_cuda
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Debug}" -DGRASS_BUILD_TESTS=ON \
  -DGRASS_SANITIZE=ON
cmake --build "$build_dir" -j2
ctest --test-dir "$build_dir" --output-on-failure --no-tests=error -j2 "$@"
