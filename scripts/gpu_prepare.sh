#!/usr/bin/env bash
# Builds, on a machine with Rust, what scripts/gpu_suite.sh runs on a GPU machine without
# Rust: the release test binaries (debug info stripped) in .carry/bin and libgrass.so in
# .carry/lib. .carry/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release
rm -rf .carry/bin .carry/lib
mkdir -p .carry/bin .carry/lib
cargo test --release --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
        objcopy --strip-debug "$exe" ".carry/bin/$name"
        echo "test binary $name <- $exe"
    done
objcopy --strip-debug target/release/libgrass.so .carry/lib/libgrass.so
du -sh .carry/bin .carry/lib
