// Selection on the device: the same indices and scales as src/core/select.rs for the same
// scores, configuration and refresh index, bit for bit. One block does everything. The parts
// whose f64 rounding depends on the order of operations (totals, the cumulative weights, the
// water-filling loop and the systematic scan) run on thread 0 in the host's order, over
// values the block stages through shared memory; everything else is spread over the block.
// Sorting is a bitonic sort over global scratch (keys padded to a power of two), its narrow
// passes done tile by tile in shared memory.
#include "common.cuh"
#include "rng.cuh"

// Threads of the block (a power of two; the host launches SELECT_THREADS of src/cuda/ops.rs,
// the same number). 512 with __launch_bounds__(SEL_THREADS, 1) lets ptxas keep the kernel in
// 92 registers with no spills (at 1024 it had 64 registers, the most a 1024-thread block can
// have, and 100/260 bytes of spill stores/loads), and leaves 36 registers a thread of the
// register file for the instrumentation compute-sanitizer adds (scripts/kernel_resources.sh,
// docs/cuda.md). The results do not depend on the block size: the order-dependent sums run on
// thread 0, and tests/kernels_on_host.rs checks them bit for bit with 64 host threads.
#ifndef SEL_THREADS
#define SEL_THREADS 512
#endif
#define NONE 0xFFFFFFFFu

// Values of grass_method (core::config::Method; tests/enum_codes.rs checks them).
#define M_TOP_R 0
#define M_MULTINOMIAL 1
#define M_MULTINOMIAL_NR 2
#define M_UNIFORM 3
#define M_UNIFORM_NR 4

__device__ __forceinline__ double sanitized_weight(float s, i32 power) {
    if (!(finite_f32(s) && s > 0.0f)) return 0.0;
    double v = (double)s;
    return power == 1 ? v : v * v;
}

__device__ __forceinline__ float scale_from_prob(double p) {
    double rho = 1.0 / sqrt(p);
    return (float)fmin(rho, 3.4028234663852886e38); // f32::MAX
}

// Elements of a bitonic sort that one pass over shared memory handles at a time.
#define SORT_TILE (2 * SEL_THREADS)

// One compare-exchange of a bitonic sort: orders (k, v)[lo] and (k, v)[hi] ascending when
// the global position `at` (of lo) lies in an ascending run of `size`, else descending.
__device__ __forceinline__ void bitonic_exchange(u64* k, u32* v, u32 lo, u32 hi, u64 at,
                                                 u64 size) {
    const bool ascending = (at & size) == 0;
    const u64 ka = k[lo], kb = k[hi];
    const u32 va = v[lo], vb = v[hi];
    const bool greater = ka > kb || (ka == kb && va > vb);
    if (greater == ascending) {
        k[lo] = kb;
        k[hi] = ka;
        v[lo] = vb;
        v[hi] = va;
    }
}

// The passes of stage `size` whose stride is below `tile` (and, from `first_size` up to
// `size`, the earlier stages' too), run tile by tile in shared memory: a pair of such a pass
// never leaves its aligned tile.
__device__ void bitonic_tiles(u64* keys, u32* vals, u32 n, u32 tile, u64 first_size,
                              u64 size, u64* sk, u32* sv) {
    for (u32 base = 0; base < n; base += tile) {
        __syncthreads();
        for (u32 i = threadIdx.x; i < tile; i += SEL_THREADS) {
            sk[i] = keys[base + i];
            sv[i] = vals[base + i];
        }
        __syncthreads();
        for (u64 sz = first_size; sz <= size; sz <<= 1) {
            for (u32 stride = (u32)(sz >> 1 < tile ? sz >> 1 : tile >> 1); stride > 0;
                 stride >>= 1) {
                for (u32 t = threadIdx.x; t < tile / 2; t += SEL_THREADS) {
                    const u32 lo = 2 * t - (t & (stride - 1));
                    bitonic_exchange(sk, sv, lo, lo + stride, (u64)base + lo, sz);
                }
                __syncthreads();
            }
        }
        for (u32 i = threadIdx.x; i < tile; i += SEL_THREADS) {
            keys[base + i] = sk[i];
            vals[base + i] = sv[i];
        }
    }
    __syncthreads();
}

// Sorts keys[0, n) ascending by (key, val); n is a power of two. Whole block. The stages up
// to a tile, and each later stage's passes with strides below a tile, run in shared memory;
// only the wider strides go through global memory. `size` is 64-bit because n reaches 2^31
// (d up to 2^31 - 1): a 32-bit size would wrap to 0 and never stop.
__device__ void bitonic_sort(u64* keys, u32* vals, u32 n) {
    __shared__ u64 sk[SORT_TILE];
    __shared__ u32 sv[SORT_TILE];
    const u32 tile = n < SORT_TILE ? n : SORT_TILE;
    if (tile >= 2) bitonic_tiles(keys, vals, n, tile, 2, tile, sk, sv);
    for (u64 size = 2 * (u64)tile; size <= n; size <<= 1) {
        for (u32 stride = (u32)(size >> 1); stride >= tile; stride >>= 1) {
            for (u32 t = threadIdx.x; t < n / 2; t += SEL_THREADS) {
                const u32 lo = 2 * t - (t & (stride - 1));
                bitonic_exchange(keys, vals, lo, lo + stride, lo, size);
            }
            __syncthreads();
        }
        bitonic_tiles(keys, vals, n, tile, size, size, sk, sv);
    }
}

// Orders all d indices by weight descending, ties by index ascending (the host's order for
// top_r and for the water-filling): keys hold ~bits(w) (w >= 0, so the bits order like the
// values), vals the index. Padding sorts last.
__device__ void sort_by_weight(const double* w, i32 d, u64* keys, u32* vals, u32 padded) {
    for (u32 i = threadIdx.x; i < padded; i += SEL_THREADS) {
        bool real = i < (u32)d;
        keys[i] = real ? ~(u64)__double_as_longlong(w[i]) : ~0ull;
        vals[i] = real ? i : NONE;
    }
    __syncthreads();
    bitonic_sort(keys, vals, padded);
}

__device__ __forceinline__ double weight_of_key(u64 key) {
    return __longlong_as_double((i64)~key);
}

// Sum of value(0) + value(1) + ... + value(n - 1), added left to right by thread 0; every
// thread gets the result.
template <class F>
__device__ double ordered_sum(i64 n, F value, double* tile, double* result) {
    double acc = 0.0;
    for (i64 base = 0; base < n; base += SEL_THREADS) {
        i64 cnt = min(n - base, (i64)SEL_THREADS);
        if (threadIdx.x < cnt) tile[threadIdx.x] = value(base + threadIdx.x);
        __syncthreads();
        if (threadIdx.x == 0) {
            for (i64 q = 0; q < cnt; ++q) acc += tile[q];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) *result = acc;
    __syncthreads();
    return *result;
}

// cum[q] = w[0] + ... + w[q] accumulated left to right; returns the last value.
__device__ double ordered_prefix(const double* w, double* cum, i64 n, double* tile,
                                 double* result) {
    double acc = 0.0;
    for (i64 base = 0; base < n; base += SEL_THREADS) {
        i64 cnt = min(n - base, (i64)SEL_THREADS);
        if (threadIdx.x < cnt) tile[threadIdx.x] = w[base + threadIdx.x];
        __syncthreads();
        if (threadIdx.x == 0) {
            for (i64 q = 0; q < cnt; ++q) {
                acc += tile[q];
                tile[q] = acc;
            }
        }
        __syncthreads();
        if (threadIdx.x < cnt) cum[base + threadIdx.x] = tile[threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.x == 0) *result = acc;
    __syncthreads();
    return *result;
}

// The block's best (p, t): largest p, then smallest t; t == NONE takes no part. Every
// thread gets the winner's t (NONE when nobody took part).
__device__ u32 block_best(double p, u32 t, double* sp, u32* st) {
    sp[threadIdx.x] = p;
    st[threadIdx.x] = t;
    __syncthreads();
    for (u32 s = SEL_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            double pb = sp[threadIdx.x + s];
            u32 tb = st[threadIdx.x + s];
            double pa = sp[threadIdx.x];
            u32 ta = st[threadIdx.x];
            if (tb != NONE && (ta == NONE || pb > pa || (pb == pa && tb < ta))) {
                sp[threadIdx.x] = pb;
                st[threadIdx.x] = tb;
            }
        }
        __syncthreads();
    }
    u32 best = st[0];
    __syncthreads();
    return best;
}

// First index in a sorted cum[0, n) whose value exceeds t (n when none does).
__device__ i64 first_above(const double* cum, i64 n, double t) {
    i64 lo = 0, hi = n;
    while (lo < hi) {
        i64 mid = lo + (hi - lo) / 2;
        if (cum[mid] <= t) lo = mid + 1; else hi = mid;
    }
    return lo;
}

// Inclusion probabilities pi (src/core/select.rs inclusion_probabilities), from the weights
// and their order in keys/vals (sort_by_weight).
__device__ void inclusion_probabilities(const double* w, i32 d, i32 r, double total,
                                        const u64* keys, const u32* vals, double* pi,
                                        double* tile, double* s_real, i32* s_int) {
    // nnz: the number of positive weights
    if (threadIdx.x == 0) s_int[0] = 0;
    __syncthreads();
    i32 local = 0;
    for (i64 i = threadIdx.x; i < d; i += SEL_THREADS) local += w[i] > 0.0;
    atomicAdd(&s_int[0], local);
    __syncthreads();
    const i32 nnz = s_int[0];
    // water-filling over the largest weights, thread 0 in the host's order
    const i32 limit = min(r, nnz);
    i32 k = 0;
    double rem = total;
    if (threadIdx.x == 0) s_int[1] = 0; // done
    __syncthreads();
    for (i64 base = 0; base < limit; base += SEL_THREADS) {
        if (s_int[1]) break;
        i64 cnt = min((i64)limit - base, (i64)SEL_THREADS);
        if (threadIdx.x < cnt) tile[threadIdx.x] = weight_of_key(keys[base + threadIdx.x]);
        __syncthreads();
        if (threadIdx.x == 0) {
            for (i64 q = 0; q < cnt; ++q) {
                double c = (double)(r - k) / rem;
                if (tile[q] * c >= 1.0) {
                    rem -= tile[q];
                    k += 1;
                } else {
                    s_int[1] = 1;
                    break;
                }
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        s_int[2] = k;
        s_real[0] = rem;
    }
    __syncthreads();
    k = s_int[2];
    rem = s_real[0];
    if (k == nnz) {
        double zero_pi = d > nnz ? (double)(r - nnz) / (double)(d - nnz) : 0.0;
        for (i64 i = threadIdx.x; i < d; i += SEL_THREADS) pi[i] = w[i] > 0.0 ? 1.0 : zero_pi;
    } else {
        double c = (double)(r - k) / rem;
        for (i64 i = threadIdx.x; i < d; i += SEL_THREADS) pi[i] = fmin(c * w[i], 1.0);
        __syncthreads();
        for (i64 q = threadIdx.x; q < k; q += SEL_THREADS) pi[vals[q]] = 1.0;
    }
    __syncthreads();
}

// Bit 31 of a key marks its row as taken (indices are below 2^31), as in src/core/select.rs.
#define TAKEN (1ull << 31)

// Systematic sampling over a random order (src/core/select.rs systematic): writes r distinct
// indices to out in the order they are taken.
__device__ void systematic(const double* pi, i32 d, i32 r, RngKey rng, u64* keys, u32* vals,
                           u32 padded, u8* taken, i32* out, double* tile, u32* tile_idx,
                           double* s_real, i32* s_int) {
    for (u32 i = threadIdx.x; i < padded; i += SEL_THREADS) {
        keys[i] = i < (u32)d ? ((u64)rng_bits(rng, RNG_ORDER, i).x << 32) | i : ~0ull;
        vals[i] = 0;
        if (i < (u32)d) taken[i] = 0;
    }
    __syncthreads();
    bitonic_sort(keys, vals, padded);
    const double sum =
        ordered_sum(d, [&](i64 q) { return pi[(u32)keys[q]]; }, tile, s_real);
    const double norm = (double)r / sum;
    const double u = rng_uniform(rng, RNG_OFFSET, 0);
    double cum = 0.0;
    i32 next = 0, chosen = 0; // thread 0's
    for (i64 base = 0; base < d; base += SEL_THREADS) {
        i64 cnt = min((i64)d - base, (i64)SEL_THREADS);
        if (threadIdx.x < cnt) {
            u32 i = (u32)keys[base + threadIdx.x];
            tile_idx[threadIdx.x] = i;
            tile[threadIdx.x] = pi[i];
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (i64 q = 0; q < cnt; ++q) {
                cum += tile[q] * norm;
                if (next < r && u + (double)next < cum) {
                    u32 i = tile_idx[q];
                    out[chosen++] = (i32)i;
                    keys[base + q] |= TAKEN;
                    taken[i] = 1;
                    next += 1;
                    while (next < r && u + (double)next < cum) next += 1;
                }
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) s_int[0] = chosen;
    __syncthreads();
    // Rounding can leave fewer than r picks: complete with the most probable rows whose key
    // is unmarked, first in key order on ties, like the host.
    for (;;) {
        const i32 have = s_int[0];
        if (have >= r) break;
        double best_p = 0.0;
        u32 best_t = NONE;
        for (u32 t = threadIdx.x; t < (u32)d; t += SEL_THREADS) {
            if ((keys[t] & TAKEN) == 0) {
                double p = pi[(u32)keys[t]];
                if (best_t == NONE || p > best_p) {
                    best_p = p;
                    best_t = t;
                }
            }
        }
        u32 t = block_best(best_p, best_t, tile, tile_idx);
        u32 free_row = NONE;
        if (t == NONE) {
            // Unreachable while fewer than r <= d rows are taken; kept as a guard.
            u32 first = NONE;
            for (u32 i = threadIdx.x; i < (u32)d && first == NONE; i += SEL_THREADS) {
                if (!taken[i]) first = i;
            }
            free_row = block_best(0.0, first, tile, tile_idx);
        }
        // Only thread 0 reads keys[t]: it also marks it, and a read by another thread could
        // race with that write.
        if (threadIdx.x == 0) {
            const u32 pick = t != NONE ? (u32)keys[t] : free_row;
            out[have] = (i32)pick;
            taken[pick] = 1;
            if (t != NONE) keys[t] |= TAKEN;
            s_int[0] = have + 1;
        }
        __syncthreads();
    }
}

// Chooses r of d indices from scores and writes them, sorted by (index, scale), with their
// scales. Scratch: w and aux hold d doubles, keys and vals `padded` entries (the power of
// two at or above d), taken d bytes. Launch with one block of SEL_THREADS threads.
extern "C" __global__ void __launch_bounds__(SEL_THREADS, 1)
select_rows(const float* __restrict__ scores, i32 d, i32 r, i32 method, i32 power,
            i32 scaling_none, u64 seed, u32 layer_id, u32 refresh_index,
            const u32* refresh_index_at, i32* indices, float* scales, double* w, double* aux, u64* keys, u32* vals,
            u8* taken, u32 padded) {
    __shared__ double tile[SEL_THREADS];
    __shared__ u32 tile_idx[SEL_THREADS];
    __shared__ double s_real[2];
    __shared__ i32 s_int[4];
    const RngKey rng = {seed, layer_id, refresh_index_at ? *refresh_index_at : refresh_index};
    const bool uniform = method == M_UNIFORM || method == M_UNIFORM_NR;

    for (i64 i = threadIdx.x; i < d; i += SEL_THREADS) {
        w[i] = uniform ? 1.0 : sanitized_weight(scores[i], power);
    }
    __syncthreads();
    double total = ordered_sum(d, [&](i64 q) { return w[q]; }, tile, s_real);
    if (!(total > 0.0 && finite_f64(total))) {
        for (i64 i = threadIdx.x; i < d; i += SEL_THREADS) w[i] = 1.0;
        total = (double)d;
        __syncthreads();
    }

    if (method == M_TOP_R) {
        sort_by_weight(w, d, keys, vals, padded);
        for (i64 j = threadIdx.x; j < r; j += SEL_THREADS) {
            indices[j] = (i32)vals[j];
            scales[j] = 1.0f;
        }
    } else if (method == M_UNIFORM) {
        const float rho = (float)sqrt((double)d / (double)r);
        for (i64 j = threadIdx.x; j < r; j += SEL_THREADS) {
            double u = rng_uniform(rng, RNG_DRAW, (u32)j);
            u64 i = (u64)(u * (double)d);
            indices[j] = (i32)min(i, (u64)(d - 1));
            scales[j] = rho;
        }
    } else if (method == M_MULTINOMIAL) {
        double* cum = aux;
        const double acc = ordered_prefix(w, cum, d, tile, s_real);
        for (i64 j = threadIdx.x; j < r; j += SEL_THREADS) {
            double t = rng_uniform(rng, RNG_DRAW, (u32)j) * acc;
            i64 i = min(first_above(cum, d, t), (i64)d - 1);
            while (w[i] == 0.0 && i > 0) i -= 1; // rounding pushed t past the last weight
            indices[j] = (i32)i;
            scales[j] = scale_from_prob((double)r * (w[i] / total));
        }
    } else {
        double* pi = aux;
        sort_by_weight(w, d, keys, vals, padded);
        inclusion_probabilities(w, d, r, total, keys, vals, pi, tile, s_real, s_int);
        systematic(pi, d, r, rng, keys, vals, padded, taken, indices, tile, tile_idx, s_real,
                   s_int);
        const float rho = (float)sqrt((double)d / (double)r);
        for (i64 j = threadIdx.x; j < r; j += SEL_THREADS) {
            scales[j] = method == M_UNIFORM_NR ? rho : scale_from_prob(pi[indices[j]]);
        }
    }
    __syncthreads();

    // Sort (index, scale) pairs by index, then scale bits, like the host's sort_pairs.
    u32 pr = 1;
    while (pr < (u32)r) pr <<= 1;
    for (u32 j = threadIdx.x; j < pr; j += SEL_THREADS) {
        if (j < (u32)r) {
            float s = scaling_none ? 1.0f : scales[j];
            keys[j] = ((u64)(u32)indices[j] << 32) | __float_as_uint(s);
        } else {
            keys[j] = ~0ull;
        }
        vals[j] = 0;
    }
    __syncthreads();
    bitonic_sort(keys, vals, pr);
    for (u32 j = threadIdx.x; j < (u32)r; j += SEL_THREADS) {
        indices[j] = (i32)(keys[j] >> 32);
        scales[j] = __uint_as_float((u32)keys[j]);
    }
}
