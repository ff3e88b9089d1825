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
# a plain shared object, independent of the Python version), the peers' reference script and
# galore-torch, which the GPU machine lacks and cannot download.
rm -rf .carry/py .carry/peers .carry/whl
python3 -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --target .carry/py ./bindings/jax
mkdir -p .carry/peers .carry/whl
if [ -f ../shared/reference/peers_torch.py ]; then
    cp ../shared/reference/peers_torch.py .carry/peers/
else
    echo "warning: ../shared/reference/peers_torch.py not found; the benchmark needs it" >&2
fi
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d .carry/whl galore-torch==1.0
du -sh .carry
