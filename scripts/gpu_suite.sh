#!/usr/bin/env bash
# The GPU suite, run on a machine with a GPU and CUDA (no Rust needed) from the repository
# root after scripts/gpu_prepare.sh built .carry/ elsewhere:
#
#   bash scripts/gpu_suite.sh            # logs to $OUT, or ./gpu-logs when OUT is unset
#
# It runs the test binaries in .carry/bin (but abi and kernels_on_host) with the GPU
# required (a missing GPU or library fails instead of skipping), then the CUDA tests under
# compute-sanitizer's memcheck, racecheck and synccheck. Logs: summary.txt, tests.log,
# memcheck.log, racecheck.log, synccheck.log, nvidia-smi.txt. MEMCHECK_FILTER,
# RACECHECK_FILTER and SYNCCHECK_FILTER name the tests each sanitizer runs (test-name
# filters; memcheck runs all by default), SANITIZE_TIMEOUT bounds each run (300 s).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
BIN=.carry/bin
[ -x "$BIN/cuda" ] || { echo "no $BIN/cuda: run scripts/gpu_prepare.sh first" >&2; exit 2; }

source scripts/gpu_env.sh
export GRASS_REQUIRE_GPU=1 GRASS_REQUIRE_NVRTC=1 RUST_BACKTRACE=1

SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
summary="$OUT/summary.txt"
: >"$summary"
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
    "$t" --test-threads=1 --nocapture >"$OUT/one.log" 2>&1
    rc=$?
    record "$name" $rc $((SECONDS - start))
    grep -E "^test result|SKIPPED|panicked" "$OUT/one.log" | tail -n 3
    { echo "===== $name"; cat "$OUT/one.log"; } >>"$OUT/tests.log"
    rm -f "$OUT/one.log"
done

# Only select_rows and row_norms use shared memory, which is what racecheck inspects;
# synccheck checks that every __syncthreads of select_rows is reached by the whole block.
MEMCHECK_FILTER=${MEMCHECK_FILTER-}
RACECHECK_FILTER=${RACECHECK_FILTER-"select:: project::row_scores"}
SYNCCHECK_FILTER=${SYNCCHECK_FILTER-"select::large_selections_match_the_host"}
for tool in memcheck racecheck synccheck; do
    start=$SECONDS
    case $tool in
        memcheck) filter=$MEMCHECK_FILTER ;;
        racecheck) filter=$RACECHECK_FILTER ;;
        synccheck) filter=$SYNCCHECK_FILTER ;;
    esac
    # shellcheck disable=SC2086
    timeout "${SANITIZE_TIMEOUT:-300}" "$SAN" --tool "$tool" --error-exitcode 86 \
        "$BIN/cuda" --test-threads=1 $filter >"$OUT/$tool.log" 2>&1
    rc=$?
    record "compute-sanitizer $tool ($filter)" $rc $((SECONDS - start))
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^test result" "$OUT/$tool.log" | tail -n 3
    if [ "$(stat -c %s "$OUT/$tool.log")" -gt 8000000 ]; then # keep what comes back small
        { head -c 3000000 "$OUT/$tool.log"; echo; echo "[... cut ...]"; tail -c 3000000 "$OUT/$tool.log"; } >"$OUT/cut.log"
        mv "$OUT/cut.log" "$OUT/$tool.log"
    fi
done

echo "suite: $([ $status -eq 0 ] && echo PASSED || echo FAILED)" | tee -a "$summary"
exit $status
