#!/usr/bin/env bash
# The main job: build libgrass, make the Python environment (.venv/, see scripts/venv.sh),
# install the JAX binding grass_jax into it from this checkout, and train with
# `python -m grass_jax.train`. Arguments go to the trainer (scripts/train.sh --help).
#
# Needs Rust >= 1.82 (rustup), a C++ compiler and Python >= 3.11 with venv (Debian 12:
# apt-get install build-essential python3-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo c++; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool (Rust: rustup; Debian: apt-get install build-essential)" >&2
        exit 1
    }
done
echo "== cargo build --release"
cargo build --release
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
grass_venv
echo "== installing grass_jax into $VIRTUAL_ENV (built against target/release/libgrass.so)"
python -m pip install -q --disable-pip-version-check --no-build-isolation ./bindings/jax
export PYTHONUNBUFFERED=1
exec python -m grass_jax.train "$@"
