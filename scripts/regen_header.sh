#!/usr/bin/env bash
# Regenerates include/grass.h from src/ffi (cbindgen runs in build.rs, into target/; a build
# never writes into the source tree). Run after changing an export or a doc comment in
# src/ffi, then commit the header: tests/abi.rs fails while the committed copy differs.
set -euo pipefail
cd "$(dirname "$0")/.."
GRASS_WRITE_HEADER=1 cargo test --release --test abi -- --exact committed_header_matches_cbindgen --nocapture
