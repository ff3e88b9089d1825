#!/usr/bin/env bash
# Builds, on a machine with Rust, what scripts/gpu_all.sh runs on a GPU machine without Rust,
# into .carry/ (git-ignored; the one ignored path a GPU call carries):
#   .carry/bin/cuda        the tests/cuda test binary, release, debug info stripped
#   .carry/lib/libgrass.so the library (for ctest's test_cuda and the PyTorch binding)
#   .carry/py/grass_jax    the JAX binding built against it with the project's .venv
#   .carry/BUILT_WITH      commit, date and the versions it was built with
# The other test binaries need no GPU and run in CI. A GPU call takes at most 64 MiB
# (working tree and .carry together): the sizes are printed and a larger .carry fails here.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release
rm -rf .carry
mkdir -p .carry/bin .carry/lib
exe=$(cargo test --release --test cuda --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])
')
[ -n "$exe" ] || { echo "cargo built no tests/cuda binary" >&2; exit 1; }
objcopy --strip-debug "$exe" .carry/bin/cuda
echo "test binary cuda <- $exe"
objcopy --strip-debug target/release/libgrass.so .carry/lib/libgrass.so

# The JAX binding (its handler library is a plain shared object, independent of the Python
# version), built with the project's Python environment (.venv/, scripts/venv.sh), which has
# jax. gpu_all.sh rebuilds it on the GPU machine against that jaxlib and falls back to this.
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
grass_venv
GRASS_LIB_DIR=$PWD/.carry/lib python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    --target .carry/py ./bindings/jax
{
    echo "built: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src kernels include bindings tests || echo ' (with uncommitted changes)')"
    echo "$(rustc --version); $(python -V 2>&1); jax $(python -c 'import jax; print(jax.__version__)')"
} >.carry/BUILT_WITH
cat .carry/BUILT_WITH
du -sh .carry/bin .carry/lib .carry/py
carry=$(du -sb .carry | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)
echo ".carry: $((carry / 1024)) KiB; tracked files: $((tree / 1024)) KiB; limit 65536 KiB together"
if [ $((carry + tree)) -gt $((60 * 1024 * 1024)) ]; then
    echo ".carry and the working tree exceed 60 MiB: a GPU call takes at most 64 MiB" >&2
    exit 1
fi
