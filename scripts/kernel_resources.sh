#!/usr/bin/env bash
# The register, shared-memory, stack and spill report of every kernel, as ptxas gives it for
# the options src/cuda/compile.rs compiles with (sm_90 by default; an argument names another,
# e.g. sm_80), through NVRTC alone: no GPU and no CUDA toolkit, the pip wheel
# nvidia-cuda-nvrtc is enough (the project's .venv has it; PYTHON names another interpreter).
#
#   bash scripts/kernel_resources.sh            # one line per kernel, then ptxas's own lines
#   bash scripts/kernel_resources.sh sm_80
#
# Extra NVRTC options go in KERNEL_OPTIONS (e.g. KERNEL_OPTIONS=-DSEL_THREADS=1024 to see the
# former selection block). docs/cuda.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-sm_90}
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
ARCH=$ARCH "$PYTHON" - <<'PY'
import ctypes, glob, os, re, shlex, sys

def nvrtc():
    names = []
    try:
        import nvidia
        for p in nvidia.__path__:
            names += sorted(glob.glob(os.path.join(p, "*", "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    names += ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    for n in names:
        if "builtins" in n:
            continue
        try:
            return ctypes.CDLL(n)
        except OSError:
            continue
    sys.exit("no libnvrtc found: install the pip wheel nvidia-cuda-nvrtc")

lib = nvrtc()
major, minor = ctypes.c_int(), ctypes.c_int()
lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
arch = os.environ["ARCH"]
# the options of src/cuda/compile.rs (options()), and ptxas's report
opts = [f"--gpu-architecture={arch}", "--std=c++17", "--fmad=false", "--generate-line-info",
        "--ptxas-options=-v"] + shlex.split(os.environ.get("KERNEL_OPTIONS", ""))
headers = ["common.cuh", "rng.cuh"]
hsrc = [open(f"kernels/{h}", "rb").read() for h in headers]
modules = ["row_scores.cu", "select.cu", "sparse_grad.cu", "adamw.cu", "state_refresh.cu"]
print(f"NVRTC {major.value}.{minor.value}, {arch}, options: {' '.join(opts[1:])}")
print(f"{'kernel':<20} {'registers':>9} {'shared B':>9} {'stack B':>8} {'spill st B':>10} {'spill ld B':>10}")
raw = []
for m in modules:
    prog = ctypes.c_void_p()
    src = open(f"kernels/{m}", "rb").read()
    H = ctypes.c_char_p * len(headers)
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src, m.encode(), len(headers),
                                H(*hsrc), H(*[h.encode() for h in headers]))
    assert rc == 0, rc
    O = ctypes.c_char_p * len(opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), O(*[o.encode() for o in opts]))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    log = buf.value.decode(errors="replace")
    if rc != 0:
        sys.exit(f"kernels/{m} does not compile:\n{log}")
    raw.append(log)
    # ptxas prints, per kernel: "Compiling entry function 'NAME'", "N bytes stack frame,
    # N bytes spill stores, N bytes spill loads", "Used N registers, ... N bytes smem ..."
    name = None
    stats = {}
    for line in log.splitlines():
        if (k := re.search(r"Compiling entry function '(\w+)'", line)):
            name = k.group(1)
            stats = {}
        elif name and (k := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            stats["stack"], stats["st"], stats["ld"] = k.groups()
        elif name and (k := re.search(r"Used (\d+) registers", line)):
            stats["reg"] = k.group(1)
            s = re.search(r"(\d+) bytes smem", line)
            stats["smem"] = s.group(1) if s else "0"
            print(f"{name:<20} {stats['reg']:>9} {stats['smem']:>9} {stats.get('stack', '?'):>8} "
                  f"{stats.get('st', '?'):>10} {stats.get('ld', '?'):>10}")
            name = None
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
if os.environ.get("KERNEL_RESOURCES_RAW"):
    print("\n".join(raw))
PY
