#!/usr/bin/env bash
# The main job: build libgrass and the C++ demo, then train a small next-token model through
# grass.hpp (GRASS on the weight matrices, dense AdamW on the rest), checkpoint and resume it.
# Runs on a CUDA GPU when the library's CUDA context can be created there, else on the CPU.
# Extra arguments go to the demo (e.g. --steps 2000, --cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGRASS_BUILD_TESTS=OFF >/dev/null
cmake --build build --target grass_train_mlp -j2 >/dev/null
exec build/examples/grass_train_mlp --checkpoint build/grass_train_mlp.ckpt "$@"
