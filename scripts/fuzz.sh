#!/usr/bin/env bash
# Fuzzes the C ABI in-process (tests/fuzz_abi.rs) for longer than the test suite does:
#
#   scripts/fuzz.sh [SECONDS] [SEED]     # default: 600 s, a fresh seed (printed)
#
# A failure prints the seed and the calls leading to it; GRASS_FUZZ_SEED=<seed> repeats it.
set -euo pipefail
cd "$(dirname "$0")/.."
export GRASS_FUZZ_SECONDS=${1:-600}
if [ -n "${2:-}" ]; then
    export GRASS_FUZZ_SEED=$2
fi
cargo test --release --test fuzz_abi -- --nocapture --test-threads=1
