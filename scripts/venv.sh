# Sourced by scripts/test.sh, scripts/train.sh and .ci/run (from the repository root):
# makes the project's Python environment and puts it first on PATH.
#
# Debian's system Python refuses `pip install` (externally-managed-environment), and installing
# into whatever python3 comes first would change other projects' packages. So everything goes
# into a virtual environment of its own, .venv/ at the repository root (git-ignored; delete it
# to start over): the packages of scripts/requirements.txt, about 890 MB, and later the
# grass_jax package built from this checkout. It is made once from $PYTHON (default: python3,
# which must be 3.11 or newer) and updated when scripts/requirements.txt changes.
#
# Environment: PYTHON (the interpreter to make it from), GRASS_VENV (default: .venv).

grass_venv() {
    local venv=${GRASS_VENV:-$PWD/.venv} py=${PYTHON:-python3} req=scripts/requirements.txt
    if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        echo "== $venv has no working pip (an interrupted creation?): making it again"
        rm -rf "$venv"
    fi
    if [ ! -x "$venv/bin/python" ]; then
        if ! command -v "$py" >/dev/null; then
            echo "no $py: grass needs Python >= 3.11 (Debian 12: apt-get install python3 python3-venv)" >&2
            return 1
        fi
        if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "grass needs Python >= 3.11; $(command -v "$py") is $("$py" -V 2>&1)." \
                 "Set PYTHON=/path/to/python3.11 or newer" >&2
            return 1
        fi
        echo "== making the Python environment $venv from $(command -v "$py") ($("$py" -V 2>&1))"
        if ! "$py" -m venv "$venv"; then
            rm -rf "$venv"
            echo "could not make a virtual environment with $py (Debian: apt-get install python3-venv)" >&2
            return 1
        fi
    fi
    if ! cmp -s "$req" "$venv/.grass-requirements"; then
        echo "== installing into $venv (about 890 MB): $(sed -e 's/#.*//' "$req" | xargs)"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
        cp "$req" "$venv/.grass-requirements"
    fi
    export VIRTUAL_ENV=$venv
    export PATH="$venv/bin:$PATH"
    hash -r
}
