#!/usr/bin/env bash
# Every GPU check and benchmark of grass, as ONE command on the GPU machine (CUDA, CMake, a C++
# compiler, PyTorch and JAX; no Rust), after scripts/gpu_prepare.sh built .carry/ on a machine
# with Rust:
#
#   bash scripts/gpu_all.sh                  # .carry carried along; at most GPU_ALL_TOTAL (480) s
#   GPU_ALL_PARTS="2 3" bash scripts/gpu_all.sh   # only those parts (a second call)
#   GPU_ALL_DRY=1 bash scripts/gpu_all.sh    # anywhere: the plumbing, each step in a CPU form
#
# Before anything runs, the carry must match this tree (scripts/gpu_stamp.sh): built from this
# commit (where git works here) and from the same sources, file by file; else the script stops
# within seconds, saying which files differ.
#
# Four parts, most important first, each at most 5 minutes of step budgets (table below):
#   1. correctness (mandatory): every op on the GPU against the CPU backend
#      rust_cuda    the Rust CUDA tests (.carry/bin/cuda --include-ignored)
#      ctest_cuda   ctest's test_cuda (C++ through the C ABI) against the carried libgrass.so,
#                   a plain build (no sanitizers) made in the background from the start
#      torch_tests  bindings/torch/tests, the CUDA cases (-k cuda)
#      jax_ops      the JAX GPU cases of the op, layer, precision, memory and residual tests (-k gpu); a
#                   GPU case that skips for want of a GPU fails the step
#   2. bench (mandatory): bench_layer (the 8 reference configurations of docs/api.md against the floor, the
#      peers and GaLore in the same process; rows written as measured) and jax_memory
#   3. memory_13b (mandatory): the LLaMA-13B-shaped model within 40 GB, vs optax.adamw
#   4. extra (optional: a failure or timeout here is reported but never fails the run):
#      compute-sanitizer racecheck, synccheck and memcheck on the release test binary, the
#      JAX training/stacked/API GPU cases (jax_train), and test_cuda built with ASan/UBSan
#      (ctest_asan; the driver under ASan needs protect_shadow_gap=0, docs/cuda.md)
#
# The kernels come from .carry/kernels (GRASS_PREBUILT_KERNELS, compiled ahead for sm_90): no
# NVRTC compile happens when they match; the summary says whether any did.
#
# Results: $OUT (default ./gpu-logs) gets summary.md (one line per step: passed, failed,
# skipped or timed out, seconds, timeout, note; the result), one fragment per part for
# BENCHMARKS.md (part1_correctness.md, part2_bench.md, part3_memory_13b.md, part4_extra.md;
# scripts/gpu_record.py merges them), bench.json, and logs.tgz (every log). They are refreshed
# after every step, so a run stopped from outside keeps what it had (a GPU call brings back at
# most 8 files; this writes 7). Exit status: 0 when no mandatory step failed or timed out, 1
# otherwise, 3 when the carry does not match the tree.
#
# The JAX binding: .carry/py holds it as gpu_prepare.sh built it (against this project's
# jaxlib, 0.10.x); the GPU machine has jax 0.11. The handlers are also rebuilt there in the
# background at the start (pip --no-build-isolation against that jaxlib's headers and the
# carried libgrass.so, into $GPU_ALL_WORK/py); the JAX steps use that build when it succeeded,
# else the carried one, and the summary says which.
#
# GRASS_HOST_CUDA=1 with GPU_ALL_DRY=1 (the host stand-in for the CUDA driver and cuBLAS,
# tests/host_cuda, built by `make -C tests/host_cuda`): rust_cuda, ctest_cuda and ctest_asan run
# their GPU forms against the stand-in instead of listing the tests and running
# test_cuda_on_host. scripts/test.sh (CI) runs it so, after gpu_prepare.sh. RUST_CUDA_FILTER
# narrows rust_cuda's tests (default: all).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-logs}
mkdir -p "$OUT"
DRY=${GPU_ALL_DRY:-0}
HOST_CUDA=${GRASS_HOST_CUDA:-0}
TOTAL=${GPU_ALL_TOTAL:-480}
LOGS=${GPU_ALL_LOGS:-$(mktemp -d /tmp/gpu_all.XXXXXX)}
WORK=${GPU_ALL_WORK:-$(mktemp -d /tmp/gpu_all_work.XXXXXX)}
mkdir -p "$LOGS" "$WORK"
START=$SECONDS

# ---- budget table (seconds) ----------------------------------------------------------------
# step        part budget min  what sets it
# (setup)       -    15    -   carry check (~1 s), nvidia-smi, torch and jax versions (imports:
#                              10-12 s in the dry run here), starting the two background builds
# rust_cuda     1    60   20   tests/cuda: each test a CUDA context against a CPU context on
#                              random inputs up to the reference shapes (docs/api.md); the kernels are prebuilt
#                              (no NVRTC: formerly 2-25 s per process). CPU side dominates.
# ctest_cuda    1    60   15   the plain build of test_cuda (configure + one C++ file: ~30 s on
#                              the busy 2-core machine here, beside the JAX build) overlaps
#                              rust_cuda; the run repeats the op comparisons through the C ABI
#                              (test_cuda_on_host, the CPU form: 11 s here)
# torch_tests   1    25   10   torch import ~5 s, 2 CUDA cases (a layer trained in f32 and bf16)
# jax_ops       1   110   40   the 67 GPU cases of test_ops/linear/precision/memory/residual; their CPU
#                              twins took 60 s of wall time on the busy 2-core machine here
#                              (compile-bound; XLA's GPU compiles are slower than its CPU ones)
#    part 1     -   255        (at most 5 minutes)
# bench_layer   2   150   60   8 configurations, ~300 grass and ~100 peer calls of a few ms each;
#                              GaLore's SVD once per shape (4 in all, ~1-5 s each) plus samples
#                              within --svd-budget 20 s; bench_layer gets its own timeout less
#                              10 s as --budget and stops starting rows that would not fit
# jax_memory    2    45   20   3 processes (analysis, GRASS peak, AdamW peak), each JAX start-up
#                              ~5 s and one layer's compile (--small, the CPU form: 4 s here)
#    part 2     -   195
# memory_13b    3   150   90   JAX start-up, the GRASS step's compile (one scanned block), 3 steps
#                              (~1 s each), optax.adamw's compile for its analysis (--small: 10 s)
#    part 3     -   150
# racecheck     4    40   20   optional: select_rows/row_norms/carry_rows instrumented only
# synccheck     4    30   15   optional: the same kernels, fewer tests
# memcheck      4   100   45   optional: every kernel instrumented (10-100x slower); a timeout
#                              keeps the errors reported so far
# jax_train     4    90   30   optional: the 14 GPU cases of test_train/stacked/api (their CPU
#                              twins: 110 s here)
# ctest_asan    4    40   15   optional: test_cuda with ASan/UBSan, built in the background
#    part 4     -   300        takes only what is left
# (reserve)     -    10    -   the summary, the fragments and the final archive
# The mandatory budgets add up to 600 s over 470 usable (their minimums to 255 s), on purpose: a
# budget is a ceiling, and each step starts only while the minimums of the mandatory steps after
# it still fit; a step that ends early leaves its time to those after it. A step whose minimum
# no longer fits is skipped and recorded as such, so the whole run never exceeds GPU_ALL_TOTAL
# (a step overruns its timeout by at most the 5 s of `timeout -k`, inside the reserve).
# Expected on an H100: setup 15 + part 1 ~150 + part 2 ~140 + part 3 ~100 = ~405 s, leaving ~65 s
# to part 4. Give the command an outer limit of 540 s or more. GPU_ALL_SCALE=N multiplies every
# budget, minimum and the total (default 1; 2 in a dry run: the CPU forms and the background
# builds share the 2 busy cores of the machine here, where the GPU machine has 16).
STEPS=(rust_cuda ctest_cuda torch_tests jax_ops bench_layer jax_memory memory_13b
       racecheck synccheck memcheck jax_train ctest_asan)
declare -A PART=([rust_cuda]=1 [ctest_cuda]=1 [torch_tests]=1 [jax_ops]=1
                 [bench_layer]=2 [jax_memory]=2 [memory_13b]=3
                 [racecheck]=4 [synccheck]=4 [memcheck]=4 [jax_train]=4 [ctest_asan]=4)
PART_NAME=([1]=correctness [2]=bench [3]=memory_13b [4]=extra)
declare -A BUDGET=([rust_cuda]=60 [ctest_cuda]=60 [torch_tests]=25 [jax_ops]=110
                   [bench_layer]=150 [jax_memory]=45 [memory_13b]=150
                   [racecheck]=40 [synccheck]=30 [memcheck]=100 [jax_train]=90 [ctest_asan]=40)
declare -A MIN=([rust_cuda]=20 [ctest_cuda]=15 [torch_tests]=10 [jax_ops]=40
                [bench_layer]=60 [jax_memory]=20 [memory_13b]=90
                [racecheck]=20 [synccheck]=15 [memcheck]=45 [jax_train]=30 [ctest_asan]=15)
declare -A OPTIONAL=([racecheck]=1 [synccheck]=1 [memcheck]=1 [jax_train]=1 [ctest_asan]=1)
RESERVE=10
SCALE=${GPU_ALL_SCALE:-$([ "$DRY" = 1 ] && echo 2 || echo 1)}
if [ "$SCALE" != 1 ]; then
    TOTAL=$((TOTAL * SCALE))
    for s in "${!BUDGET[@]}"; do
        BUDGET[$s]=$((${BUDGET[$s]} * SCALE))
        MIN[$s]=$((${MIN[$s]} * SCALE))
    done
fi
# GPU_ALL_PARTS="1 2" runs only those parts; GPU_ALL_ONLY="bench_layer memory_13b" only the
# named steps (the others are recorded as skipped).
PARTS_WANTED=${GPU_ALL_PARTS:-1 2 3 4}
ONLY=${GPU_ALL_ONLY:-}

summary=$LOGS/summary.md
failed=0
findings=""

publish() { # the run's results into $OUT: few files, refreshed after every step
    cp "$summary" "$OUT/summary.md" 2>/dev/null
    local f
    for f in "$LOGS"/part*_*.md "$LOGS/bench.json"; do
        [ -f "$f" ] && cp "$f" "$OUT/"
    done
    tar -C "$LOGS" -czf "$OUT/logs.tgz.tmp" . 2>/dev/null && mv "$OUT/logs.tgz.tmp" "$OUT/logs.tgz"
}

record() { # name status seconds timeout note
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" >>"$summary"
    printf '%-12s %-18s %4ss (timeout %s) %s\n' "$1" "$2" "$3" "$4" "$5"
    if [ -n "${PART[$1]:-}" ]; then
        printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" >>"$WORK/part${PART[$1]}.rows"
    fi
    case $2 in
        failed | "timed out") failed=1 ;;
        *optional*) findings="$findings $1 ($2)" ;;
    esac
    publish
}

wanted() {
    [[ " $PARTS_WANTED " == *" ${PART[$1]} "* ]] || return 1
    [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]
}

later_minimums() { # the minimums of the wanted mandatory steps after $1
    local after=0 sum=0 s
    for s in "${STEPS[@]}"; do
        if [ $after -eq 1 ] && [ -z "${OPTIONAL[$s]:-}" ] && wanted "$s"; then
            sum=$((sum + ${MIN[$s]}))
        fi
        [ "$s" = "$1" ] && after=1
    done
    echo $sum
}

# ---- setup ---------------------------------------------------------------------------------
{
    echo "# gpu_all.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || sed -n 's/^commit \(.\{12\}\).*/\1 (from .carry\/STAMP)/p' .carry/STAMP 2>/dev/null);" \
        "total ${TOTAL}s$([ "$SCALE" != 1 ] && echo " (budgets x$SCALE)"); parts ${PARTS_WANTED}${ONLY:+; steps $ONLY};" \
        "dry run: $([ "$DRY" = 1 ] && echo "yes$([ "$HOST_CUDA" = 1 ] && echo ', host CUDA stand-in')" || echo no)"
    echo
    echo "| step | status | seconds | timeout | note |"
    echo "| --- | --- | --- | --- | --- |"
} >"$summary"
rm -f "$WORK"/part*.rows "$LOGS"/part*_*.md "$OUT"/part*_*.md

# The carry must have been built from this tree (gpu_prepare.sh stamps it): checked before any
# GPU time is spent.
# shellcheck source=scripts/gpu_stamp.sh
source scripts/gpu_stamp.sh
missing=""
for f in .carry/bin/cuda .carry/lib/libgrass.so .carry/py/grass_jax .carry/kernels; do
    [ -e "$f" ] || missing="$missing $f"
done
if [ -n "$missing" ]; then
    echo "missing:$missing: run scripts/gpu_prepare.sh first (on a machine with Rust) and carry .carry" >&2
    record setup failed $((SECONDS - START)) - "missing:$missing"
    exit 3
fi
if ! stamp_check .carry >"$LOGS/carry.txt" 2>&1; then
    cat "$LOGS/carry.txt" >&2
    record setup failed $((SECONDS - START)) - "the carry does not match this tree: $(head -n 1 "$LOGS/carry.txt")"
    exit 3
fi
cat "$LOGS/carry.txt"

source scripts/gpu_env.sh
export GRASS_REQUIRE_GPU=1 GRASS_REQUIRE_NVRTC=1 RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
# JAX takes device memory as it needs it (not 75% up front): the peaks the benchmarks read are
# what the steps use, and a JAX process never starves the next step
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# the kernels compiled ahead for sm_90; anything NVRTC still compiles lands in the cache, once
export GRASS_PREBUILT_KERNELS=$ROOT/.carry/kernels
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
    cat "$LOGS/carry.txt"
    cmake --version 2>&1 | head -n 1
    c++ --version 2>&1 | head -n 1
} >"$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"

# Background builds (CPU only), started now so that they overlap the Rust tests on the GPU:
# test_cuda against the carried library (plain, and with ASan/UBSan for the optional step), and
# the JAX handlers against this machine's jaxlib. Each writes its exit status to a file that
# the step needing it waits for.
export ROOT LOGS WORK DRY HOST_CUDA PY SAN
build_test_cuda() { # dir sanitize(ON/OFF) log
    {
        cmake -S . -B "$1" -DGRASS_LIB_DIR="$ROOT/.carry/lib" -DGRASS_BUILD_TESTS=ON \
            -DGRASS_BUILD_EXAMPLES=OFF -DGRASS_SANITIZE="$2" -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
            cmake --build "$1" -j"$(nproc)" --target test_cuda &&
            ldd "$1/tests/c/test_cuda" | grep "libgrass.so => $ROOT/.carry/lib/libgrass.so"
    } >"$3" 2>&1
}
rm -f "$WORK"/*.rc
if wanted ctest_cuda; then
    (build_test_cuda build/gpu-ctest OFF "$LOGS/ctest_build.log"; echo $? >"$WORK/ctest_build.rc") &
fi
if wanted ctest_asan; then
    # after the plain build (which the mandatory step waits for) so that they do not share cores
    (while wanted ctest_cuda && [ ! -f "$WORK/ctest_build.rc" ]; do sleep 1; done
     build_test_cuda build/gpu-ctest-asan ON "$LOGS/ctest_asan_build.log"; echo $? >"$WORK/ctest_asan_build.rc") &
fi
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

# ---- the steps, as functions run by run_step under `timeout bash -c` -------------------------
# Exit status 77 means "skipped" (with the reason as the last line of the step's log).

wait_rc() { # wait for a background build's status file; print the status
    while [ ! -f "$1" ]; do sleep 1; done
    cat "$1"
}

# RUST_CUDA_FILTER (default: every test) narrows rust_cuda to the tests it names, as in CI's
# dry run, where scripts/test.sh has just run all of them on the host stand-in.
export RUST_CUDA_FILTER=${RUST_CUDA_FILTER-}
rust_cuda() {
    if [ "$DRY" = 1 ] && [ "$HOST_CUDA" != 1 ]; then
        # no GPU here: the binary loads and lists its tests
        .carry/bin/cuda --list --include-ignored | tee "$WORK/cuda.list" | tail -n 3
        [ "$(grep -c ': test$' "$WORK/cuda.list")" -gt 0 ]
        return
    fi
    local n
    # shellcheck disable=SC2086
    n=$(.carry/bin/cuda --list --include-ignored $RUST_CUDA_FILTER | grep -c ': test$')
    echo "$n tests match '${RUST_CUDA_FILTER:-every test}'"
    [ "$n" -gt 0 ] || { echo "the test filter matches no test"; return 1; }
    # shellcheck disable=SC2086
    .carry/bin/cuda --test-threads=1 --include-ignored $RUST_CUDA_FILTER
}

ctest_in() { # build-dir rc-file log: waits for the build, then runs test_cuda (or its host form)
    local rc
    rc=$(wait_rc "$2")
    cat "$3"
    [ "$rc" = 0 ] || { echo "the build of test_cuda failed ($(basename "$3"))"; return 1; }
    if [ "$DRY" = 1 ] && [ "$HOST_CUDA" != 1 ]; then
        # the same comparisons with a CPU context standing in for CUDA
        ctest --test-dir "$1" --output-on-failure --no-tests=error -R '^test_cuda_on_host$'
        return
    fi
    ctest --test-dir "$1" --output-on-failure --no-tests=error -R '^test_cuda$' |
        tee "$WORK/ctest.out" || return 1
    # Skipped (no usable GPU) is not passed: GRASS_REQUIRE_GPU=1 makes it a failure, and this
    # checks that it ran
    grep -Eq "test_cuda \.+ +Passed" "$WORK/ctest.out" || { echo "test_cuda did not pass on the GPU"; return 1; }
}
ctest_cuda() { ctest_in build/gpu-ctest "$WORK/ctest_build.rc" "$LOGS/ctest_build.log"; }
# The CUDA driver under AddressSanitizer: ASan's default protection of its shadow gap takes
# address ranges the driver maps (cuInit then fails), and the driver's allocations that live
# until exit read as leaks; both are turned off for this step, which is optional.
ctest_asan() {
    export ASAN_OPTIONS=${ASAN_OPTIONS:-protect_shadow_gap=0:detect_leaks=0}
    echo "ASAN_OPTIONS=$ASAN_OPTIONS"
    ctest_in build/gpu-ctest-asan "$WORK/ctest_asan_build.rc" "$LOGS/ctest_asan_build.log"
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
        echo "handlers built on this machine" >"$WORK/$1.note"
        echo "$WORK/py"
    else
        echo "handlers carried from gpu_prepare.sh (the build here failed: jax_build.log)" >"$WORK/$1.note"
        echo "$ROOT/.carry/py"
    fi
}

jax_gpu_cases() { # step files...: the GPU cases (test ids with "gpu") of the files
    local step=$1
    shift
    PYTHONPATH=$(jax_pythonpath "$step") || return 1
    export PYTHONPATH
    cat "$WORK/$step.note"
    if [ "$DRY" = 1 ]; then
        "$PY" -m pytest -q --collect-only -k gpu "$@" | tail -n 3
        return
    fi
    "$PY" -m pytest -q -rs -k gpu "$@" | tee "$WORK/$step.out" || return 1
    # a GPU case that skips for want of a GPU (no GPU in JAX, or libgrass cannot use CUDA) did
    # not run; the HLO-text checks skip on the GPU on purpose (conftest.py says why)
    if grep -E "^SKIPPED.*(no GPU|cannot use CUDA)" "$WORK/$step.out"; then
        echo "GPU cases skipped on the GPU machine"
        return 1
    fi
}
J=bindings/jax/tests
jax_ops() { jax_gpu_cases jax_ops $J/test_ops.py $J/test_linear.py $J/test_precision.py $J/test_memory.py $J/test_residual.py; }
jax_train() { jax_gpu_cases jax_train $J/test_train.py $J/test_stacked.py $J/test_api.py; }

bench_layer() {
    "$PY" -m py_compile bench/bench_layer.py bench/peers.py || return 1
    if [ "$DRY" = 1 ]; then
        "$PY" -c 'import torch' 2>/dev/null || { echo "no torch here: compiled only"; return 77; }
        "$PY" -c 'import sys; sys.path[:0] = ["bench", "bindings/torch"]; import peers, grass_torch' &&
            echo "bench_layer: imports resolve (needs CUDA to run)"
        return
    fi
    # its own budget: the step's timeout less 10 s, so that it ends with its notes written
    OUT=$LOGS "$PY" bench/bench_layer.py --budget $((STEP_LIMIT - 10)) --svd-budget 20
}

jax_memory() {
    PYTHONPATH=$(jax_pythonpath jax_memory) || return 1
    export PYTHONPATH
    if [ "$DRY" = 1 ]; then
        OUT=$LOGS "$PY" bench/bench_jax_memory.py --small
        return
    fi
    OUT=$LOGS "$PY" bench/bench_jax_memory.py --run
}

memory_13b() {
    PYTHONPATH=$(jax_pythonpath memory_13b) || return 1
    export PYTHONPATH
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    if [ "$DRY" = 1 ]; then
        OUT=$LOGS "$PY" bench/bench_13b_memory.py --small
        return
    fi
    OUT=$LOGS "$PY" bench/bench_13b_memory.py
}

# compute-sanitizer on the release test binary (no ASan there: the two do not mix). Only
# select_rows, row_norms and carry_rows use shared memory (what racecheck inspects) and
# __syncthreads (what synccheck checks); cuBLAS's kernels are NVIDIA's and left out of those two
# by --kernel-name. memcheck instruments every kernel, cuBLAS's GEMMs included, since a wrong
# leading dimension handed to cuBLAS is grass's bug.
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
    # errors are printed as they are found: what a timeout cuts short still shows them
    # shellcheck disable=SC2086
    # (awk, not head: the pipe must never close under the sanitizer)
    $cmd 2>&1 | tee "$WORK/$tool.out" | grep --line-buffered -E "^========= [A-Z]" | awk 'n++ < 200' 
    return "${PIPESTATUS[0]}"
}
racecheck() { sanitizer racecheck "$OWN_KERNELS" "$RACECHECK_FILTER"; }
synccheck() { sanitizer synccheck "$OWN_KERNELS" "$SYNCCHECK_FILTER"; }
memcheck() { sanitizer memcheck "" "$MEMCHECK_FILTER"; }

export -f wait_rc rust_cuda ctest_in ctest_cuda ctest_asan torch_tests jax_pythonpath \
    jax_gpu_cases jax_ops jax_train bench_layer jax_memory memory_13b sanitizer racecheck \
    synccheck memcheck
export J

# run_step NAME: runs the function NAME under the step's timeout, its output in LOGS/NAME.log.
# Status 0 is passed, 77 skipped, 124/137 (from timeout) timed out, anything else failed; an
# optional step's failure or timeout is recorded as "(optional)" and does not fail the run.
run_step() {
    local name=$1 left limit t0 rc status note=""
    if ! wanted "$name"; then
        record "$name" skipped 0 - "not in GPU_ALL_PARTS/GPU_ALL_ONLY"
        return
    fi
    left=$((TOTAL - RESERVE - (SECONDS - START) - $(later_minimums "$name")))
    if [ "$left" -lt "${MIN[$name]}" ]; then
        record "$name" skipped 0 - "${left}s left for it, under its minimum ${MIN[$name]}s"
        return
    fi
    limit=${BUDGET[$name]}
    [ "$left" -lt "$limit" ] && limit=$left
    echo "== $name (part ${PART[$name]}, timeout ${limit}s)"
    echo "== $name (timeout ${limit}s, $(date -u +%H:%M:%S))" >"$LOGS/$name.log"
    t0=$SECONDS
    STEP_LIMIT=$limit timeout -k 5 "$limit" bash -c "set -o pipefail; $name" >>"$LOGS/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=passed ;;
        77) status=skipped note="$(tail -n 1 "$LOGS/$name.log")" ;;
        124 | 137) status="timed out" ;;
        *) status=failed note="rc=$rc" ;;
    esac
    if [ -n "${OPTIONAL[$name]:-}" ] && [[ $status == failed || $status == "timed out" ]]; then
        status="$status (optional)"
    fi
    case $name in racecheck | synccheck | memcheck)
        [ -f "$WORK/$name.out" ] && note="${note:+$note; }$(grep -m1 -o 'ERROR SUMMARY: [0-9]* errors\?' "$WORK/$name.out" ||
            echo "$(grep -c '^========= [A-Z]' "$WORK/$name.out") sanitizer lines before it stopped")" ;;
    esac
    if [ -f "$WORK/$name.note" ]; then
        note="${note:+$note; }$(cat "$WORK/$name.note")"
    fi
    [ "$DRY" = 1 ] && note="dry run${note:+; $note}"
    record "$name" "$status" $((SECONDS - t0)) "$limit" "$note"
    tail -n 4 "$LOGS/$name.log" | sed 's/^/    /'
}

# fragment N: part N's fragment for BENCHMARKS.md (scripts/gpu_record.py merges them)
fragment() {
    local n=$1 f="$LOGS/part${1}_${PART_NAME[$1]}.md"
    {
        echo "#### Part $n: ${PART_NAME[$n]}$([ "$DRY" = 1 ] && echo ' (DRY RUN: no GPU, CPU forms only)')"
        echo
        echo "| step | status | seconds | timeout | note |"
        echo "| --- | --- | --- | --- | --- |"
        cat "$WORK/part$n.rows" 2>/dev/null
        echo
        case $n in
            1)
                grep -h -E "^test result:|[0-9]+ (passed|failed)|tests passed" \
                    "$LOGS/rust_cuda.log" "$LOGS/ctest_cuda.log" "$LOGS/torch_tests.log" "$LOGS/jax_ops.log" \
                    2>/dev/null | grep -v '^==' | sed 's/^/    /'
                ;;
            2)
                [ -f "$LOGS/bench.md" ] && cat "$LOGS/bench.md"
                [ -f "$LOGS/jax_memory.md" ] && { echo; echo "JAX, one layer (bench_jax_memory.py):"; echo; cat "$LOGS/jax_memory.md"; }
                ;;
            3)
                [ -f "$LOGS/memory_13b.md" ] && cat "$LOGS/memory_13b.md"
                ;;
            4)
                local s
                for s in racecheck synccheck memcheck; do
                    [ -f "$WORK/$s.out" ] && echo "- $s: $(grep -m1 'ERROR SUMMARY' "$WORK/$s.out" || echo 'no summary (stopped early)')"
                done
                grep -h -E "[0-9]+ (passed|failed)|tests passed" "$LOGS/jax_train.log" "$LOGS/ctest_asan.log" 2>/dev/null |
                    sed 's/^/    /'
                ;;
        esac
    } >"$f"
    publish
}

current=0
for s in "${STEPS[@]}"; do
    if [ "${PART[$s]}" != "$current" ]; then
        [ "$current" != 0 ] && [[ " $PARTS_WANTED " == *" $current "* ]] && fragment "$current"
        current=${PART[$s]}
        echo "=== part $current: ${PART_NAME[$current]}"
    fi
    run_step "$s"
done
[[ " $PARTS_WANTED " == *" $current "* ]] && fragment "$current"

compiled=$(ls "$GRASS_KERNEL_CACHE" 2>/dev/null | grep -c '^kernels-')
if [ "$DRY" = 1 ] && [ "$HOST_CUDA" != 1 ]; then
    kernels_line="dry run: no CUDA context opened (prebuilt: $(sed -n 's/^kernels //p' .carry/STAMP))"
elif [ "$compiled" = 0 ]; then
    kernels_line="no NVRTC compile in this run (prebuilt: $(sed -n 's/^kernels //p' .carry/STAMP))"
else
    kernels_line="NVRTC compiled $compiled kernel set(s) (the prebuilt ones did not match or load: $(ls "$GRASS_KERNEL_CACHE" | tr '\n' ' '))"
fi
skipped=$(grep -E '^\| [a-z_0-9]+ \| skipped \|' "$summary" | cut -d'|' -f2 | tr -d ' ' | tr '\n' ' ')
{
    echo
    echo "kernels: $kernels_line"
    echo "total: $((SECONDS - START)) s of ${TOTAL} s; result: $([ $failed -eq 0 ] && echo PASSED || echo FAILED)" \
        "(mandatory steps)${skipped:+; skipped: $skipped}${findings:+; optional findings:$findings}"
    echo "logs: logs.tgz (env.txt, carry.txt, one NAME.log per step, the build logs, bench.*,"
    echo "jax_memory.*, memory_13b.*)"
} >>"$summary"
publish
echo
cat "$summary"
exit $failed
