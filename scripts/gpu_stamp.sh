# Sourced by scripts/gpu_prepare.sh (which stamps .carry/) and scripts/gpu_all.sh (which checks
# the stamp before it spends any GPU time). Plain bash and coreutils: the GPU machine has no
# Rust, and its copy of the working tree need not be a git checkout.
#
# .carry/STAMP           commit, whether the tree had uncommitted changes, date, NVRTC and
#                        the kernels' source hash (from the prebuilt kernels' file name)
# .carry/SOURCES.sha256  sha256 of every file the carried binaries are built from

# The files the carried binaries are built from, one per line, sorted: the library and its
# kernels, the CUDA test binary, the JAX binding's sources and the build files.
stamp_inputs() {
    {
        find src kernels include tests/cuda tests/common bindings/jax/csrc bindings/jax/grass_jax \
            -type f \( -name '*.rs' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.hpp' \
            -o -name '*.cc' -o -name '*.cpp' -o -name '*.py' \) 2>/dev/null
        for f in Cargo.toml Cargo.lock build.rs cbindgen.toml scripts/prebuild_kernels.rs \
            bindings/jax/pyproject.toml bindings/jax/setup.py; do
            [ -f "$f" ] && echo "$f"
        done
    } | LC_ALL=C sort
}

stamp_sources() { # sha256sum lines of stamp_inputs
    stamp_inputs | while IFS= read -r f; do sha256sum "$f"; done
}

# stamp_check DIR: 0 when DIR (.carry) was built from this tree; else prints why and returns 1.
stamp_check() {
    local dir=$1 commit now
    if [ ! -f "$dir/STAMP" ] || [ ! -f "$dir/SOURCES.sha256" ]; then
        echo "$dir has no STAMP/SOURCES.sha256: it was not made by this scripts/gpu_prepare.sh; run it again"
        return 1
    fi
    commit=$(sed -n 's/^commit //p' "$dir/STAMP")
    if now=$(git rev-parse HEAD 2>/dev/null) && [ "$now" != "$commit" ]; then
        echo "$dir was built from commit ${commit:0:12}, but this tree is at ${now:0:12}:" \
            "run scripts/gpu_prepare.sh on this commit and carry its .carry"
        return 1
    fi
    local here diff
    here=$(mktemp)
    stamp_sources >"$here"
    if ! diff -q "$dir/SOURCES.sha256" "$here" >/dev/null; then
        # per file: differs, gone here, or new here (the first 12)
        diff=$(awk 'NR == FNR { was[$2] = $1; next }
                    { now[$2] = $1 }
                    END {
                        for (f in was) if (!(f in now)) print "  gone here: " f
                        for (f in now) if (!(f in was)) print "  new here: " f
                        for (f in now) if ((f in was) && was[f] != now[f]) print "  differs: " f
                    }' "$dir/SOURCES.sha256" "$here" | sort | head -n 12)
        echo "$dir was built from other sources than this tree's (commit ${commit:0:12}$(
            grep -q '^dirty yes' "$dir/STAMP" && echo ', with uncommitted changes')):"
        echo "$diff"
        echo "run scripts/gpu_prepare.sh on this tree and carry its .carry"
        rm -f "$here"
        return 1
    fi
    rm -f "$here"
    echo "$dir matches this tree: $(tr '\n' ';' <"$dir/STAMP" | sed 's/;$//; s/;/; /g')"
}
