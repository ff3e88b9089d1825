"""numpy's vectorized AdamW on the sizes of bench_cpu_adamw.rs, for comparison.

Run: python3 bench/bench_cpu_adamw_numpy.py [reps]   (default 7; reports the minimum)

The update works in place on preallocated buffers (one temporary of the tensor's size), as a
careful numpy user would write it; bytes moved are counted as in the Rust benchmark: read g, M,
V, W and write M, V, W. The compressed cases update the r selected rows of W (gather, update,
scatter back) with f32 state.
"""

import sys
import time

import numpy as np

B1, B2, EPS, WD, LR = 0.9, 0.999, 1e-8, 0.01, 1e-3


def min_time(reps, f):
    f()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def copy_floor(reps, nbytes):
    src = np.ones(nbytes // 2, dtype=np.uint8)
    dst = np.empty_like(src)
    return min_time(reps, lambda: np.copyto(dst, src))


def report(name, reps, nbytes, secs):
    floor = copy_floor(reps, nbytes)
    gbs = nbytes / secs / 1e9
    floor_gbs = nbytes / floor / 1e9
    print(
        f"{name:<44} {secs * 1e3:9.2f} ms {gbs:8.2f} GB/s   copy floor {floor_gbs:6.2f} GB/s"
        f"   fraction {gbs / floor_gbs:.2f}"
    )


def adamw(w, g, m, v, t, tmp, decay):
    """One AdamW step in place; w may be f32 or a bf16 stand-in held as f32 (see dense)."""
    c1 = 1.0 - B1**t
    c2 = 1.0 - B2**t
    m *= B1
    np.multiply(g, 1.0 - B1, out=tmp)
    m += tmp
    v *= B2
    np.multiply(g, g, out=tmp)
    tmp *= 1.0 - B2
    v += tmp
    np.divide(v, c2, out=tmp)
    np.sqrt(tmp, out=tmp)
    tmp += EPS
    np.divide(m / c1, tmp, out=tmp)
    tmp *= -LR
    w *= decay
    w += tmp


def dense(reps, rows, cols, bf16_weights):
    rng = np.random.default_rng(0)
    n = rows * cols
    g = rng.uniform(-1, 1, n).astype(np.float32)
    m = rng.uniform(-1, 1, n).astype(np.float32)
    v = np.square(rng.uniform(-1, 1, n)).astype(np.float32)
    w = rng.uniform(-1, 1, n).astype(np.float32)
    tmp = np.empty_like(w)
    step = [0]
    decay = np.float32(1.0 - LR * WD)
    if bf16_weights:
        # numpy has no bf16: keep W as its upper 16 bits (uint16) and widen/narrow each step,
        # which is what a bf16 weight costs a numpy user (truncating, not rounding).
        wb = (w.view(np.uint32) >> 16).astype(np.uint16)
        wf = np.empty(n, dtype=np.float32)

        def f():
            step[0] += 1
            np.left_shift(wb.astype(np.uint32), 16, out=wf.view(np.uint32))
            adamw(wf, g, m, v, step[0], tmp, decay)
            np.right_shift(wf.view(np.uint32), 16, out=tmp.view(np.uint32))
            wb[:] = tmp.view(np.uint32)

        wbytes = 2
    else:

        def f():
            step[0] += 1
            adamw(w, g, m, v, step[0], tmp, decay)

        wbytes = 4
    nbytes = n * (12 + wbytes) + n * (8 + wbytes)
    secs = min_time(reps, f)
    report(f"numpy adamw {rows}x{cols} W {'bf16' if bf16_weights else 'f32'}", reps, nbytes, secs)


def sparse(reps, r, m_rows, n):
    rng = np.random.default_rng(1)
    k = n
    g = rng.uniform(-1, 1, (r, k)).astype(np.float32)
    m = rng.uniform(-1, 1, (r, k)).astype(np.float32)
    v = np.square(rng.uniform(-1, 1, (r, k))).astype(np.float32)
    w = rng.uniform(-1, 1, (m_rows, n)).astype(np.float32)
    idx = (np.arange(r) * m_rows // r).astype(np.int64)
    tmp = np.empty_like(g)
    step = [0]
    decay = np.float32(1.0 - LR * WD)

    def f():
        step[0] += 1
        rows = w[idx]
        adamw(rows, g, m, v, step[0], tmp, decay)
        w[idx] = rows

    nbytes = r * k * 16 + r * k * 12
    secs = min_time(reps, f)
    report(f"numpy sparse r={r} k={k} W {m_rows}x{n} rows", reps, nbytes, secs)


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    print(f"numpy {np.__version__}; minimum of {reps} runs each")
    dense(reps, 4096, 4096, False)
    dense(reps, 4096, 4096, True)
    sparse(reps, 256, 4096, 4096)
    sparse(reps, 1024, 5120, 5120)


if __name__ == "__main__":
    main()
