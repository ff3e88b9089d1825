#!/usr/bin/env bash
# The GPU suite, run on a machine with a GPU and CUDA (no Rust needed) from the repository
# root after scripts/gpu_prepare.sh built .carry/ elsewhere:
#
#   bash scripts/gpu_suite.sh            # logs to $OUT, or ./gpu-logs when OUT is unset
#
# It runs the test binaries in .carry/bin (but abi and kernels_on_host) with the GPU
# required (a missing GPU or library fails instead of skipping), then builds the ctest cases
# of tests/c (ASan/UBSan) against .carry/lib/libgrass.so in build/gpu-ctest and runs them,
# test_cuda with the GPU required too, then the CUDA tests under compute-sanitizer's memcheck,
# racecheck and synccheck. Logs: summary.txt, tests.log, ctest.log, memcheck.log,
# racecheck.log, synccheck.log, nvidia-smi.txt. MEMCHECK_FILTER, RACECHECK_FILTER and
# SYNCCHECK_FILTER name the tests each sanitizer runs (test-name filters; memcheck runs all by
# default), SANITIZE_TIMEOUT bounds each run (300 s), CTEST_SANITIZE=OFF builds the ctest cases
# without ASan/UBSan (where the compiler lacks them). PARTS picks what runs (default "tests
# ctest sanitizers"): a device call is capped at 10 minutes, so run e.g. PARTS="tests ctest"
# in one call and PARTS=sanitizers in the next (logs go to $OUT of each call; summary.txt
# is appended to, not reset, when PARTS is given).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
BIN=.carry/bin
[ -x "$BIN/cuda" ] || { echo "no $BIN/cuda: run scripts/gpu_prepare.sh first" >&2; exit 2; }

source scripts/gpu_env.sh
export GRASS_REQUIRE_GPU=1 GRASS_REQUIRE_NVRTC=1 RUST_BACKTRACE=1

SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
PARTS=${PARTS-}
part() { [ -z "$PARTS" ] || [[ " $PARTS " == *" $1 "* ]]; }
summary="$OUT/summary.txt"
[ -n "$PARTS" ] || : >"$summary"
echo "parts: ${PARTS:-tests ctest sanitizers}" | tee -a "$summary"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
{
    echo "GRASS_CUDA_LIBRARY_PATH=$GRASS_CUDA_LIBRARY_PATH"
    echo "compute-sanitizer: $SAN"
} | tee -a "$summary"

status=0
record() { # name rc seconds
    echo "$1: rc=$2 (${3}s)" | tee -a "$summary"
    [ "$2" -eq 0 ] || status=1
}

if part tests; then
: >"$OUT/tests.log"
for t in "$BIN"/*; do
    name=$(basename "$t")
    case $name in
        # Both read the source tree at the path it had where they were built (abi also wants
        # libgrass.so beside the target directory), which this machine does not have; they
        # test nothing about the GPU and run where the binaries are built.
        abi | kernels_on_host)
            echo "$name: not run here (needs the build machine's source tree)" | tee -a "$summary"
            continue
            ;;
    esac
    start=$SECONDS
    "$t" --test-threads=1 --nocapture --include-ignored >"$OUT/one.log" 2>&1
    rc=$?
    record "$name" $rc $((SECONDS - start))
    grep -E "^test result|SKIPPED|panicked" "$OUT/one.log" | tail -n 3
    { echo "===== $name"; cat "$OUT/one.log"; } >>"$OUT/tests.log"
    rm -f "$OUT/one.log"
done
fi

if part ctest; then
# The C/C++ tests, configured here like a user's build: CMake imports the carried library
# (GRASS_LIB_DIR; the tests' runpath points there, which ldd confirms). test_cuda compares
# CUDA and CPU contexts op by op and handle by handle, and must pass, not skip;
# example_train_mlp trains on the GPU. test_install_consumer needs pkg-config, which this
# machine may lack: then it is left out, and said so.
start=$SECONDS
ctest_dir=build/gpu-ctest
ctest_skip=""
if ! command -v pkg-config >/dev/null; then
    ctest_skip='^test_install_consumer$'
    echo "test_install_consumer: not run here (no pkg-config)" | tee -a "$summary"
fi
: >"$OUT/ctest.log"
{
    cmake -S . -B "$ctest_dir" -DGRASS_LIB_DIR="$PWD/.carry/lib" -DGRASS_BUILD_TESTS=ON \
        -DGRASS_SANITIZE="${CTEST_SANITIZE:-ON}" -DCMAKE_BUILD_TYPE=Debug &&
        cmake --build "$ctest_dir" -j"$(nproc)" &&
        ldd "$ctest_dir/tests/c/test_cuda" | grep "libgrass.so => $PWD/.carry/lib/libgrass.so" &&
        GRASS_REQUIRE_GPU=1 ctest --test-dir "$ctest_dir" --output-on-failure --no-tests=error \
            ${ctest_skip:+-E "$ctest_skip"}
} >>"$OUT/ctest.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && ! grep -Eq "test_cuda \.+ +Passed" "$OUT/ctest.log"; then
    echo "test_cuda did not pass on the GPU" | tee -a "$OUT/ctest.log"
    rc=1
fi
record "ctest ($ctest_dir against .carry/lib)" $rc $((SECONDS - start))
grep -E "tests passed|\*\*\*|^test_cuda" "$OUT/ctest.log" | tail -n 8
fi

if part sanitizers; then
# Only select_rows, row_norms and carry_rows use shared memory, which is what racecheck
# inspects; synccheck checks that every __syncthreads of select_rows and carry_rows is reached
# by the whole block.
MEMCHECK_FILTER=${MEMCHECK_FILTER-}
RACECHECK_FILTER=${RACECHECK_FILTER-"select:: row_scores:: adamw::state_refresh"}
SYNCCHECK_FILTER=${SYNCCHECK_FILTER-"select::large_selections_match_the_host adamw::state_refresh"}
for tool in memcheck racecheck synccheck; do
    start=$SECONDS
    case $tool in
        memcheck) filter=$MEMCHECK_FILTER ;;
        racecheck) filter=$RACECHECK_FILTER ;;
        synccheck) filter=$SYNCCHECK_FILTER ;;
    esac
    # shellcheck disable=SC2086
    timeout "${SANITIZE_TIMEOUT:-300}" "$SAN" --tool "$tool" --error-exitcode 86 \
        "$BIN/cuda" --test-threads=1 --include-ignored $filter >"$OUT/$tool.log" 2>&1
    rc=$?
    record "compute-sanitizer $tool ($filter)" $rc $((SECONDS - start))
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^test result" "$OUT/$tool.log" | tail -n 3
    if [ "$(stat -c %s "$OUT/$tool.log")" -gt 8000000 ]; then # keep what comes back small
        { head -c 3000000 "$OUT/$tool.log"; echo; echo "[... cut ...]"; tail -c 3000000 "$OUT/$tool.log"; } >"$OUT/cut.log"
        mv "$OUT/cut.log" "$OUT/$tool.log"
    fi
done

fi

echo "suite: $([ $status -eq 0 ] && echo PASSED || echo FAILED)" | tee -a "$summary"
exit $status
