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
    # abi, enum_codes and kernels_on_host read this checkout (header, sources) and need no GPU:
    # they stay here
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and m["target"]["name"] not in ("abi", "enum_codes", "kernels_on_host"):
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
        objcopy --strip-debug "$exe" ".carry/bin/$name"
        echo "test binary $name <- $exe"
    done
objcopy --strip-debug target/release/libgrass.so .carry/lib/libgrass.so
du -sh .carry/bin .carry/lib

# For scripts/gpu_bench.sh: the JAX binding built against this library (its handler library is
# a plain shared object, independent of the Python version). The benchmark's peers are in
# bench/peers.py and need only torch.
# It is built with the project's Python environment (.venv/, scripts/venv.sh), which has jax.
rm -rf .carry/py
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
grass_venv
python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --target .carry/py ./bindings/jax
du -sh .carry
