# Sourced by the GPU scripts: points GRASS_CUDA_LIBRARY_PATH at the directories that may hold
# libnvrtc and libcublas on the GPU machine (the toolkit and the Python wheels).
dirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && dirs="$dirs:$d"
done
py_dirs=$(python3 - 2>/dev/null <<'PY'
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
for p in nvidia.__path__:
    for s in sorted(os.listdir(p)):
        d = os.path.join(p, s, "lib")
        if os.path.isdir(d):
            print(d)
PY
)
for d in $py_dirs; do dirs="$dirs:$d"; done
export GRASS_CUDA_LIBRARY_PATH="${dirs#:}"
