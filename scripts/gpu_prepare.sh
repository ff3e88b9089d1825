#!/usr/bin/env bash
# Builds, on a machine with Rust, what scripts/gpu_all.sh runs on a GPU machine without Rust,
# into .carry/ (git-ignored; the one ignored path a GPU call carries):
#   .carry/bin/cuda        the tests/cuda test binary, release, debug info stripped
#   .carry/lib/libgrass.so the library (for ctest's test_cuda and the PyTorch binding)
#   .carry/py/grass_jax    the JAX binding built against it with the project's .venv
#   .carry/kernels/        every kernel compiled ahead of time for sm_90 (H100, H200) by the
#                          .venv's NVRTC (the pip wheel), for GRASS_PREBUILT_KERNELS: the GPU
#                          machine then runs no NVRTC (src/cuda/compile.rs says when an entry
#                          is used; PREBUILT_ARCHS="90 80" adds architectures)
#   .carry/BUILT_WITH      commit, date and the versions it was built with
#   .carry/STAMP, .carry/SOURCES.sha256   the commit, whether the tree had uncommitted
#                          changes, the kernels' source hash, and the sha256 of every source
#                          the carry is built from: gpu_all.sh refuses a carry that does not
#                          match the tree it runs in (scripts/gpu_stamp.sh)
# The other test binaries need no GPU and run in CI. A GPU call takes at most 64 MiB
# (working tree and .carry together): the sizes are printed and a larger .carry fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/gpu_stamp.sh
source scripts/gpu_stamp.sh

# the sources as they are now: what the stamp will say the carry was built from
sources=$(mktemp)
stamp_sources >"$sources"
commit=$(git rev-parse HEAD)
dirty=no
if ! git diff --quiet HEAD -- $(stamp_inputs) || [ -n "$(git ls-files --others --exclude-standard -- $(stamp_inputs))" ]; then
    dirty=yes
fi

cargo build --release
cargo build --release --example prebuild_kernels
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

# The kernels, compiled ahead for the GPU machine's architecture with the .venv's NVRTC.
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh
# shellcheck disable=SC2086
target/release/examples/prebuild_kernels .carry/kernels ${PREBUILT_ARCHS:-90} | tee .carry/kernels.txt
kernel_entry=$(ls .carry/kernels | grep -m1 '^kernels-sm90-')

{
    echo "built: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit ${commit:0:12}$([ $dirty = yes ] && echo ' (with uncommitted changes)')"
    echo "$(rustc --version); $(python -V 2>&1); jax $(python -c 'import jax; print(jax.__version__)')"
    echo "prebuilt kernels: $(tr '\n' ' ' <.carry/kernels.txt)"
} >.carry/BUILT_WITH
# The stamp: the sources must not have moved while this ran
stamp_sources >.carry/SOURCES.sha256
if ! cmp -s "$sources" .carry/SOURCES.sha256; then
    echo "the sources changed while gpu_prepare.sh ran: run it again" >&2
    rm -f .carry/SOURCES.sha256
    exit 1
fi
rm -f "$sources"
{
    echo "commit $commit"
    echo "dirty $dirty"
    echo "built $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
    echo "kernels $kernel_entry"
} >.carry/STAMP
cat .carry/BUILT_WITH .carry/STAMP
stamp_check .carry
du -sh .carry/bin .carry/lib .carry/py .carry/kernels
carry=$(du -sb .carry | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)
echo ".carry: $((carry / 1024)) KiB; tracked files: $((tree / 1024)) KiB; limit 65536 KiB together"
if [ $((carry + tree)) -gt $((60 * 1024 * 1024)) ]; then
    echo ".carry and the working tree exceed 60 MiB: a GPU call takes at most 64 MiB" >&2
    exit 1
fi
