#!/usr/bin/env bash
# Builds libgrass with cargo, then configures, builds and runs the C/C++ tests (ctest) under
# AddressSanitizer and UBSan. Run from anywhere; extra arguments go to ctest (e.g. -R select).
#
#   tests/c/run.sh                    # everything
#
# Environment: BUILD_DIR (default build), BUILD_TYPE (default Debug).
set -euo pipefail

cd "$(dirname "$0")/../.."
build_dir=${BUILD_DIR:-build}

cargo build --release
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Debug}"
cmake --build "$build_dir" -j2
ctest --test-dir "$build_dir" --output-on-failure -j2 "$@"
