#!/usr/bin/env bash
# The whole test suite: Rust tests, the committed-header check, the C/C++ ctest suite
# (ASan/UBSan), and the JAX binding's pytest suite. GPU cases run where a GPU is present and
# say that they are skipped elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo build --release (also regenerates include/grass.h)"
cargo build --release
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- include/grass.h; then
    git --no-pager diff --stat -- include/grass.h
    if [ "${CI:-}" = "true" ]; then
        echo "include/grass.h is not the header cbindgen generates: regenerate and commit it" >&2
        exit 1
    fi
    echo "warning: include/grass.h changed; commit it" >&2
fi

echo "== cargo test"
cargo test --release

echo "== pytest: PyTorch/ctypes binding"
python3 -m pytest -q -rs bindings/torch/tests
