#!/usr/bin/env bash
# Every GPU check and benchmark of grass, as ONE command on the GPU machine (CUDA, CMake, a C++
# compiler, PyTorch and JAX; no Rust), after scripts/gpu_prepare.sh built .carry/ on a machine
# with Rust:
#
#   bash scripts/gpu_all.sh            # with .carry carried along; at most GPU_ALL_TOTAL (480) s
#   GPU_ALL_DRY=1 bash scripts/gpu_all.sh   # anywhere: the plumbing, each part in a CPU form
#
# Parts, in this order, each under its own `timeout` from the budget table below:
#   1. rust_cuda    the Rust CUDA tests (.carry/bin/cuda --include-ignored, GPU and NVRTC required)
#      ctest_cuda   ctest's test_cuda (C++ through the C ABI, ASan/UBSan), built against the
#                   carried libgrass.so in build/gpu-ctest; the build runs in the background
#                   from the start, while the GPU runs part 1
#   2. torch_tests  bindings/torch/tests, the CUDA cases (-k cuda)
#      jax_tests    bindings/jax/tests, the GPU cases (-k gpu); a GPU case that skips fails the part
#   3. bench_layer  bench/bench_layer.py: the 8 reference configurations (4 shapes x r = 256, 1024; docs/api.md) with the
#                   peers of bench/peers.py in the same process
#      jax_memory   bench/bench_jax_memory.py --run: one 13824 x 5120 layer, GRASS vs optax.adamw
#      memory_13b   scripts/gpu_13b.sh: the LLaMA-13B-shaped model within 40 GB, vs optax.adamw
#   4. compute-sanitizer on .carry/bin/cuda, only with the time left: racecheck and synccheck on
#      grass's own kernels that use shared memory and barriers (--kernel-name), then memcheck
#      on the CUDA tests (every kernel, cuBLAS's too) with whatever time remains.
#
# Results: $OUT (default ./gpu-logs) gets summary.md (one line per part: passed, failed,
# skipped or timed out, with its seconds and timeout), logs.tgz (every log: env.txt, one
# NAME.log per part, ctest_build.log, jax_build.log, bench.md/json, jax_memory.md/json,
# memory_13b.*), and copies of bench.md, bench.json and memory_13b.md. They are refreshed
# after every part, so a run stopped from outside still leaves what it had (a GPU machine
# brings back at most 8 files from $OUT; this keeps to 5). The logs are written in
# GPU_ALL_LOGS (default: a fresh folder under /tmp). Exit status: 0 when no part failed or
# timed out (skipped parts do not fail the run; the summary names them).
#
# The JAX binding: .carry/py holds it as gpu_prepare.sh built it here (against this machine's
# jaxlib, 0.10.x); the GPU machine has jax 0.11. The XLA typed FFI is a versioned C ABI that a
# newer XLA accepts from handlers built against an older header of the same major version, so
# the carried build is expected to load there. To rule the question out, the handlers are also
# rebuilt there in the background at the start (pip --no-build-isolation against that jaxlib's
# headers and the carried libgrass.so, into $GPU_ALL_WORK/py); jax_tests and the JAX benchmarks
# use that build when it succeeded, else the carried one, and summary.md says which.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-logs}
mkdir -p "$OUT"
DRY=${GPU_ALL_DRY:-0}
TOTAL=${GPU_ALL_TOTAL:-480}
LOGS=${GPU_ALL_LOGS:-$(mktemp -d /tmp/gpu_all.XXXXXX)}
WORK=${GPU_ALL_WORK:-$(mktemp -d /tmp/gpu_all_work.XXXXXX)}
mkdir -p "$LOGS" "$WORK"
START=$SECONDS

# ---- budget table (seconds) ----------------------------------------------------------------
# name         budget  min   what sets it
# (setup)       10      -    nvidia-smi, the torch and jax versions (imports: 10-12 s in the dry
#                            run here), starting the two background builds
# rust_cuda     60     20    tests/cuda: 18 tests, each a CUDA context against a CPU context on
#                            random inputs up to the reference shapes (docs/api.md); NVRTC compiles every kernel
#                            once (2-11 s), later contexts and processes read the kernel cache.
#                            The CPU side dominates; on 16 cores well under a minute.
# ctest_cuda    45     15    the build of test_cuda alone (configure + one C++ file with
#                            ASan/UBSan: ~23 s in the dry run on this project's busy 2-core
#                            machine) overlaps rust_cuda; the run repeats the op comparisons
#                            through the C ABI (test_cuda_on_host, the CPU form: 12 s here)
# torch_tests   25     10    torch import ~5 s, 2 CUDA cases (a layer trained in f32 and bf16)
# jax_tests    120     40    the 74 GPU cases (-k gpu). Their 74 CPU twins took 220 s of wall
#                            time and 85 s of CPU time on the busy 2-core machine here (compile-
#                            bound); on the GPU machine's idle cores about half that CPU time,
#                            XLA's GPU compiles being slower than its CPU ones: 60-120 s
# bench_layer  150     60    8 configurations; per configuration ~300 grass and ~100 peer calls
#                            of at most a few ms each (< 2 s), the profiler pass, and GaLore's 4
#                            SVDs of an up-to 13824 x 5120 f32 gradient (cuSOLVER, ~1-4 s each):
#                            ~10-18 s per configuration, plus the ceilings and the memory pass
# jax_memory    45     20    3 processes (analysis, GRASS peak, AdamW peak), each JAX start-up
#                            ~5 s and a compile of one layer's step (--small, the CPU form: 4 s
#                            here, compile-bound like the full size)
# memory_13b   200     90    JAX start-up, the GRASS step's compile, 3 steps of the 13B model
#                            (~1 s each), optax.adamw's compile for its analysis: about 4 min
#                            with the 40 blocks unrolled (two compiles of 40 blocks), much less
#                            with them under lax.scan (one block compiled); it gets the rest
#                            (--small, the CPU form: 10 s here)
# racecheck     40     20    optional: only select_rows/row_norms/carry_rows instrumented
# synccheck     30     15    optional: the same kernels, fewer tests
# memcheck     300     45    optional: takes what is left (every kernel instrumented: 10-100x)
# (reserve)     10      -    the summary and the final archive
# The mandatory budgets add up to 645 s over 470 usable (the minimums to 255 s), on purpose: a
# budget is a ceiling, and every part starts only while the minimums of the mandatory parts
# after it still fit; a part that ends early leaves its time to those after it. A part whose
# minimum no longer fits is skipped and recorded as such, so the whole run never exceeds
# GPU_ALL_TOTAL (a part overruns its timeout by at most the 5 s of `timeout -k`, inside the
# reserve). Give the command an outer limit of 540 s or more.
PARTS=(setup rust_cuda ctest_cuda torch_tests jax_tests bench_layer jax_memory memory_13b
       racecheck synccheck memcheck)
declare -A BUDGET=([rust_cuda]=60 [ctest_cuda]=45 [torch_tests]=25 [jax_tests]=120
                   [bench_layer]=150 [jax_memory]=45 [memory_13b]=200
                   [racecheck]=40 [synccheck]=30 [memcheck]=300)
declare -A MIN=([rust_cuda]=20 [ctest_cuda]=15 [torch_tests]=10 [jax_tests]=40
                [bench_layer]=60 [jax_memory]=20 [memory_13b]=90
                [racecheck]=20 [synccheck]=15 [memcheck]=45)
declare -A OPTIONAL=([racecheck]=1 [synccheck]=1 [memcheck]=1)
RESERVE=10
# GPU_ALL_ONLY="a b" runs only the named parts (the others are recorded as skipped).
ONLY=${GPU_ALL_ONLY:-}

summary=$LOGS/summary.md
failed=0

publish() { # the run's results into $OUT: few files, refreshed after every part
    cp "$summary" "$OUT/summary.md" 2>/dev/null
    for f in bench.md bench.json memory_13b.md; do
        [ -f "$LOGS/$f" ] && cp "$LOGS/$f" "$OUT/$f"
    done
    tar -C "$LOGS" -czf "$OUT/logs.tgz.tmp" . 2>/dev/null && mv "$OUT/logs.tgz.tmp" "$OUT/logs.tgz"
}

record() { # name status seconds timeout note
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" >>"$summary"
    printf '%-12s %-10s %4ss (timeout %s) %s\n' "$1" "$2" "$3" "$4" "$5"
    case $2 in failed | "timed out") failed=1 ;; esac
    publish
}

later_minimums() { # the minimums of the mandatory parts after $1
    local after=0 sum=0 p
    for p in "${PARTS[@]}"; do
        if [ $after -eq 1 ] && [ -z "${OPTIONAL[$p]:-}" ] && wanted "$p"; then
            sum=$((sum + ${MIN[$p]}))
        fi
        [ "$p" = "$1" ] && after=1
    done
    echo $sum
}

wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

# run_part NAME NOTE COMMAND...: runs COMMAND under the part's timeout, output to LOGS/NAME.log.
# The command's status decides passed/failed; 124/137 from timeout is "timed out".
run_part() {
    local name=$1 note=$2
    shift 2
    if ! wanted "$name"; then
        record "$name" skipped 0 - "not in GPU_ALL_ONLY"
        return
    fi
    local left=$((TOTAL - RESERVE - (SECONDS - START) - $(later_minimums "$name")))
    if [ "$left" -lt "${MIN[$name]}" ]; then
        record "$name" skipped 0 - "${left}s left for it, under its minimum ${MIN[$name]}s"
        return
    fi
    local limit=${BUDGET[$name]}
    [ "$left" -lt "$limit" ] && limit=$left
    echo "== $name (timeout ${limit}s): $*" | tee "$LOGS/$name.log"
    local t0=$SECONDS rc
    timeout -k 5 "$limit" "$@" >>"$LOGS/$name.log" 2>&1
    rc=$?
    local status=passed
    case $rc in
        0) ;;
        124 | 137) status="timed out" ;;
        *) status=failed note="rc=$rc; $note" ;;
    esac
    record "$name" "$status" $((SECONDS - t0)) "$limit" "$note"
    tail -n 4 "$LOGS/$name.log" | sed 's/^/    /'
}

# ---- setup ---------------------------------------------------------------------------------
{
    echo "# gpu_all.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); total ${TOTAL}s;" \
        "dry run: $([ "$DRY" = 1 ] && echo yes || echo no)"
    echo
    echo "| part | status | seconds | timeout | note |"
    echo "| --- | --- | --- | --- | --- |"
} >"$summary"

source scripts/gpu_env.sh
export GRASS_REQUIRE_GPU=1 GRASS_REQUIRE_NVRTC=1 RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
# JAX takes device memory as it needs it (not 75% up front): the peaks the benchmarks read are
# what the steps use, and a JAX process never starves the next part
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# the kernel cache on disk: NVRTC runs once for the whole run, not once per process
export GRASS_KERNEL_CACHE=${GRASS_KERNEL_CACHE:-$WORK/kernel-cache}
export GRASS_LIB=$ROOT/.carry/lib/libgrass.so
PY=${PYTHON:-python3}
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
{
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    echo "GRASS_CUDA_LIBRARY_PATH=$GRASS_CUDA_LIBRARY_PATH"
    echo "compute-sanitizer: $SAN"
    "$PY" -c 'import sys; print("python", sys.version.split()[0])'
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -n 1
    "$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -n 1
    cat .carry/BUILT_WITH 2>/dev/null
    cmake --version 2>&1 | head -n 1
    c++ --version 2>&1 | head -n 1
} >"$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"

missing=""
for f in .carry/bin/cuda .carry/lib/libgrass.so .carry/py/grass_jax; do
    [ -e "$f" ] || missing="$missing $f"
done
if [ -n "$missing" ]; then
    echo "missing:$missing: run scripts/gpu_prepare.sh first (on a machine with Rust) and carry .carry" >&2
    record setup failed $((SECONDS - START)) - "missing:$missing"
    exit 2
fi

# Background builds (CPU only), started now so that they overlap the Rust tests on the GPU:
# test_cuda against the carried library, and the JAX handlers against this machine's jaxlib.
# Each writes its exit status to a file that the part needing it waits for.
export ROOT LOGS WORK DRY PY SAN
export CTEST_DIR=build/gpu-ctest
rm -f "$WORK/ctest_build.rc" "$WORK/jax_build.rc"
(
    {
        cmake -S . -B "$CTEST_DIR" -DGRASS_LIB_DIR="$ROOT/.carry/lib" -DGRASS_BUILD_TESTS=ON \
            -DGRASS_BUILD_EXAMPLES=OFF -DGRASS_SANITIZE="${CTEST_SANITIZE:-ON}" \
            -DCMAKE_BUILD_TYPE=Debug &&
            cmake --build "$CTEST_DIR" -j"$(nproc)" --target test_cuda &&
            ldd "$CTEST_DIR/tests/c/test_cuda" | grep "libgrass.so => $ROOT/.carry/lib/libgrass.so"
    } >"$LOGS/ctest_build.log" 2>&1
    echo $? >"$WORK/ctest_build.rc"
) &
(
    {
        rm -rf "$WORK/py" "$WORK/jax-src"
        cp -r bindings/jax "$WORK/jax-src" && rm -rf "$WORK/jax-src/build" &&
            GRASS_LIB_DIR=$ROOT/.carry/lib GRASS_INCLUDE_DIR=$ROOT/include \
                "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps \
                --no-build-isolation --target "$WORK/py" "$WORK/jax-src" &&
            "$PY" -c 'import jax; print("built against jax", jax.__version__)'
    } >"$LOGS/jax_build.log" 2>&1
    echo $? >"$WORK/jax_build.rc"
) &
record setup passed $((SECONDS - START)) - \
    "$(grep -m1 -o 'NVIDIA [A-Z][^|]*[^ |]' "$LOGS/env.txt" || echo 'no NVIDIA GPU listed')"

# ---- the parts, as functions run by run_part under `timeout bash -c` ------------------------
# Exit status 77 means "skipped" (with the reason as the last line of the part's log).

wait_rc() { # wait for a background build's status file; print the status
    while [ ! -f "$1" ]; do sleep 1; done
    cat "$1"
}

rust_cuda() {
    if [ "$DRY" = 1 ]; then
        # no GPU here: the binary loads and lists its tests
        .carry/bin/cuda --list --include-ignored | tee "$WORK/cuda.list" | tail -n 3
        [ "$(grep -c ': test$' "$WORK/cuda.list")" -gt 0 ]
        return
    fi
    .carry/bin/cuda --test-threads=1 --include-ignored
}

ctest_cuda() {
    local rc
    rc=$(wait_rc "$WORK/ctest_build.rc")
    cat "$LOGS/ctest_build.log"
    [ "$rc" = 0 ] || { echo "the build of test_cuda failed (ctest_build.log)"; return 1; }
    if [ "$DRY" = 1 ]; then
        # the same comparisons with a CPU context standing in for CUDA
        ctest --test-dir "$CTEST_DIR" --output-on-failure --no-tests=error -R '^test_cuda_on_host$'
        return
    fi
    ctest --test-dir "$CTEST_DIR" --output-on-failure --no-tests=error -R '^test_cuda$' |
        tee "$WORK/ctest.out" || return 1
    # Skipped (no usable GPU) is not passed: GRASS_REQUIRE_GPU=1 makes it a failure, and this
    # checks that it ran
    grep -Eq "test_cuda \.+ +Passed" "$WORK/ctest.out" || { echo "test_cuda did not pass on the GPU"; return 1; }
}

torch_tests() {
    export PYTHONPATH=$ROOT/bindings/torch
    if ! "$PY" -c 'import torch' 2>/dev/null; then
        echo "no torch here: the PyTorch binding tests need it"
        return 77
    fi
    if [ "$DRY" = 1 ]; then
        "$PY" -m pytest -q --collect-only bindings/torch/tests | tail -n 3
        return
    fi
    # the CUDA cases only (the CPU ones run in CI); none collected (no CUDA in torch) fails
    "$PY" -m pytest -q -rs -k cuda bindings/torch/tests
}

jax_pythonpath() { # the JAX binding built here if that worked, else the carried one
    if [ "$(wait_rc "$WORK/jax_build.rc")" = 0 ]; then
        echo "handlers built on this machine" >"$WORK/jax_tests.note"
        echo "$WORK/py"
    else
        echo "handlers carried from gpu_prepare.sh (the build here failed: jax_build.log)" >"$WORK/jax_tests.note"
        echo "$ROOT/.carry/py"
    fi
}

jax_tests() {
    PYTHONPATH=$(jax_pythonpath) || return 1
    export PYTHONPATH
    cat "$WORK/jax_tests.note"
    if [ "$DRY" = 1 ]; then
        "$PY" -m pytest -q --collect-only -k gpu bindings/jax/tests | tail -n 3
        return
    fi
    # the GPU cases (test ids with "gpu"); the CPU ones run in CI
    "$PY" -m pytest -q -rs -k gpu bindings/jax/tests | tee "$WORK/jax_tests.out" || return 1
    # a GPU case that skips (no GPU in JAX, or libgrass cannot use CUDA) did not run
    if grep -E "^SKIPPED.*(no GPU|cannot use CUDA)" "$WORK/jax_tests.out"; then
        echo "GPU cases skipped on the GPU machine"
        return 1
    fi
}

bench_layer() {
    "$PY" -m py_compile bench/bench_layer.py bench/peers.py || return 1
    if [ "$DRY" = 1 ]; then
        "$PY" -c 'import torch' 2>/dev/null || { echo "no torch here: compiled only"; return 77; }
        "$PY" -c 'import sys; sys.path[:0] = ["bench", "bindings/torch"]; import peers, grass_torch' &&
            echo "bench_layer: imports resolve (needs CUDA to run)"
        return
    fi
    OUT=$LOGS "$PY" bench/bench_layer.py
}

jax_memory() {
    PYTHONPATH=$(jax_pythonpath) || return 1
    export PYTHONPATH XLA_PYTHON_CLIENT_PREALLOCATE=false
    if [ "$DRY" = 1 ]; then
        OUT=$LOGS "$PY" bench/bench_jax_memory.py --small
        return
    fi
    OUT=$LOGS "$PY" bench/bench_jax_memory.py --run
}

memory_13b() {
    PYTHONPATH=$(jax_pythonpath) || return 1
    # the peak must be what the step uses, not what XLA reserved up front
    export PYTHONPATH XLA_PYTHON_CLIENT_PREALLOCATE=false
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    if [ "$DRY" = 1 ]; then
        OUT=$LOGS "$PY" bench/bench_13b_memory.py --small
        return
    fi
    OUT=$LOGS "$PY" bench/bench_13b_memory.py
}

# compute-sanitizer on the CUDA tests. Only select_rows, row_norms and carry_rows use shared
# memory (what racecheck inspects) and __syncthreads (what synccheck checks); cuBLAS's kernels
# are NVIDIA's and left out of those two by --kernel-name. memcheck instruments every kernel,
# cuBLAS's GEMMs included, since a wrong leading dimension handed to cuBLAS is grass's bug.
OWN_KERNELS="--kernel-name kns=select_rows --kernel-name kns=row_norms --kernel-name kns=carry_rows"
export OWN_KERNELS
export RACECHECK_FILTER=${RACECHECK_FILTER-"select:: row_scores:: state_refresh"}
export SYNCCHECK_FILTER=${SYNCCHECK_FILTER-"select::large_selections_match_the_host state_refresh"}
export MEMCHECK_FILTER=${MEMCHECK_FILTER-}

sanitizer() { # tool kernel-filter test-filter
    local tool=$1 kernels=$2 filter=$3 n
    # shellcheck disable=SC2086
    n=$(.carry/bin/cuda --list --include-ignored $filter | grep -c ': test$')
    echo "$n tests match '${filter:-every test}'"
    [ "$n" -gt 0 ] || { echo "the test filter matches no test"; return 1; }
    local cmd="$SAN --tool $tool --error-exitcode 86 $kernels .carry/bin/cuda --test-threads=1 --include-ignored $filter"
    echo "$cmd"
    if [ ! -x "$SAN" ]; then
        echo "no compute-sanitizer here"
        return 77
    fi
    [ "$DRY" = 1 ] && { echo "dry run: not started"; return 77; }
    # shellcheck disable=SC2086
    $cmd >"$WORK/$tool.out" 2>&1
    local rc=$?
    # keep the log small: the head and the tail of a long one
    if [ "$(stat -c %s "$WORK/$tool.out")" -gt 4000000 ]; then
        head -c 1500000 "$WORK/$tool.out"; echo; echo "[... cut ...]"; tail -c 1500000 "$WORK/$tool.out"
    else
        cat "$WORK/$tool.out"
    fi
    return $rc
}
racecheck() { sanitizer racecheck "$OWN_KERNELS" "$RACECHECK_FILTER"; }
synccheck() { sanitizer synccheck "$OWN_KERNELS" "$SYNCCHECK_FILTER"; }
memcheck() { sanitizer memcheck "" "$MEMCHECK_FILTER"; }

export -f wait_rc rust_cuda ctest_cuda torch_tests jax_pythonpath jax_tests bench_layer \
    jax_memory memory_13b sanitizer racecheck synccheck memcheck

# run_part NAME: runs the function NAME under the part's timeout, its output in LOGS/NAME.log.
# Status 0 is passed, 77 skipped, 124/137 (from timeout) timed out, anything else failed.
run_part() {
    local name=$1 left limit t0 rc status note=""
    if ! wanted "$name"; then
        record "$name" skipped 0 - "not in GPU_ALL_ONLY"
        return
    fi
    left=$((TOTAL - RESERVE - (SECONDS - START) - $(later_minimums "$name")))
    if [ "$left" -lt "${MIN[$name]}" ]; then
        record "$name" skipped 0 - "${left}s left for it, under its minimum ${MIN[$name]}s"
        return
    fi
    limit=${BUDGET[$name]}
    [ "$left" -lt "$limit" ] && limit=$left
    echo "== $name (timeout ${limit}s)"
    echo "== $name (timeout ${limit}s, $(date -u +%H:%M:%S))" >"$LOGS/$name.log"
    t0=$SECONDS
    timeout -k 5 "$limit" bash -c "set -o pipefail; $name" >>"$LOGS/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=passed ;;
        77) status=skipped note="$(tail -n 1 "$LOGS/$name.log")" ;;
        124 | 137) status="timed out" ;;
        *) status=failed note="rc=$rc" ;;
    esac
    if [ -f "$WORK/$name.note" ]; then
        note="${note:+$note; }$(cat "$WORK/$name.note")"
    fi
    [ "$DRY" = 1 ] && note="dry run${note:+; $note}"
    record "$name" "$status" $((SECONDS - t0)) "$limit" "$note"
    tail -n 4 "$LOGS/$name.log" | sed 's/^/    /'
}

for p in "${PARTS[@]:1}"; do
    run_part "$p"
done

{
    echo
    echo "total: $((SECONDS - START)) s of ${TOTAL} s; result: $([ $failed -eq 0 ] && echo PASSED || echo FAILED)"
    echo "logs: logs.tgz (env.txt, one NAME.log per part, ctest_build.log, jax_build.log, bench.*,"
    echo "jax_memory.*, memory_13b.*)"
} >>"$summary"
publish
echo
cat "$summary"
exit $failed
