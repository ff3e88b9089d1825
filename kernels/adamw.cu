// The AdamW steps (compressed with its scatter into W, and dense) and the state remap at a
// refresh. Every step runs as: zero the header, `step_check` (a device-side reduction that
// flags a non-finite gradient or invalid indices), `step_prepare` (effective learning rate,
// skip decision, step counts, bias corrections), then the update kernels, which do nothing
// when the step is skipped. The host never waits for any of it.
//
// The arithmetic mirrors src/cpu/adamw.rs operation by operation; the module is compiled with
// --fmad=false so that no multiply-add is contracted and W, M, V match the host bit for bit.
#include "common.cuh"

// Bits of StepHeader::bad.
#define BAD_GRADIENT 1u
#define BAD_INDICES 2u
#define BAD_COUNTS 4u
// Outcomes written to StepHeader::skip and *skipped (GRASS_STEP_* in include/grass.h).
#define STEP_APPLIED 0
#define STEP_SKIPPED_NONFINITE 1
#define STEP_SKIPPED_BAD_INDICES 2
#define STEP_SKIPPED_BAD_STEP_COUNT 3
#define MAX_COUNT 0x7FFFFFFF

struct StepHeader {
    u32 bad;      // BAD_* bits, set by step_check
    i32 skip;     // the outcome, decided by step_prepare
    float lr;     // effective learning rate lr * lr_scale
    float c1;     // dense step: 1 - beta1^t
    float c2;     // dense step: 1 - beta2^t
    float decay;  // 1 - lr * weight_decay
};

// Flags the step as bad when n elements of g (dtype g_dt) or the r scales (may be NULL) hold a
// NaN or infinity (a non-finite scale would write non-finite values into W from a finite
// gradient), when idx (r entries, may be NULL) is not sorted ascending within [0, d), or when
// one of the nsteps step counts is negative.
extern "C" __global__ void step_check(const void* __restrict__ g, i32 g_dt, i64 n,
                                      const i32* __restrict__ idx,
                                      const float* __restrict__ scales, i32 r, i64 d,
                                      const i32* __restrict__ steps, i32 nsteps,
                                      StepHeader* h) {
    bool bad_g = false, bad_i = false, bad_c = false;
    for (u64 e = global_x(); e < (u64)n; e += grid_x()) {
        if (!finite_f32(load_as_f32(g, g_dt, e))) bad_g = true;
    }
    if (scales != nullptr) {
        for (u64 j = global_x(); j < (u64)r; j += grid_x()) {
            if (!finite_f32(scales[j])) bad_g = true;
        }
    }
    if (idx != nullptr) {
        for (u64 j = global_x(); j < (u64)r; j += grid_x()) {
            i32 i = idx[j];
            if (i < 0 || (i64)i >= d || (j > 0 && idx[j - 1] > i)) bad_i = true;
        }
    }
    for (u64 j = global_x(); j < (u64)nsteps; j += grid_x()) {
        if (steps[j] < 0) bad_c = true;
    }
    bad_g = __any_sync(0xFFFFFFFFu, bad_g);
    bad_i = __any_sync(0xFFFFFFFFu, bad_i);
    bad_c = __any_sync(0xFFFFFFFFu, bad_c);
    if ((threadIdx.x & 31) == 0 && (bad_g || bad_i || bad_c)) {
        atomicOr(&h->bad, (bad_g ? BAD_GRADIENT : 0u) | (bad_i ? BAD_INDICES : 0u) |
                              (bad_c ? BAD_COUNTS : 0u));
    }
}

// x^n by binary powering, the algorithm of the runtime routine behind Rust's f64::powi
// (__powidf2), so that the bias corrections round exactly like AdamW::bias_corrections.
__device__ double powi_f64(double a, i32 b) {
    bool recip = b < 0;
    u32 n = recip ? (u32)(-(i64)b) : (u32)b;
    double r = 1.0;
    for (;;) {
        if (n & 1u) r *= a;
        n >>= 1;
        if (n == 0) break;
        a *= a;
    }
    return recip ? 1.0 / r : r;
}

// Decides the step and advances `nsteps` step counts (saturating at 2^31 - 1), writing the bias corrections of
// count j to coef[2j], coef[2j + 1] (the compressed step: one count per state row; the dense
// step: one count and coef = &h->c1). Any grid; every thread derives the same outcome from
// h->bad, which no thread of this kernel writes. `lr_scale` and `skipped` may be NULL.
extern "C" __global__ void step_prepare(StepHeader* h, i32* steps, i32 nsteps, float* coef,
                                        float lr, const float* lr_scale, float beta1,
                                        float beta2, float weight_decay, i32* skipped) {
    const float eff = lr_scale != nullptr ? lr * lr_scale[0] : lr;
    const u32 bad = h->bad;
    i32 outcome = STEP_APPLIED;
    if (bad & BAD_INDICES) {
        outcome = STEP_SKIPPED_BAD_INDICES;
    } else if (bad & BAD_COUNTS) {
        outcome = STEP_SKIPPED_BAD_STEP_COUNT;
    } else if (!(finite_f32(eff) && eff >= 0.0f) || (bad & BAD_GRADIENT)) {
        outcome = STEP_SKIPPED_NONFINITE;
    }
    if (global_x() == 0) {
        if (skipped != nullptr) *skipped = outcome;
        h->skip = outcome;
        h->lr = eff;
        h->decay = 1.0f - eff * weight_decay;
    }
    if (outcome != STEP_APPLIED) return;
    for (u64 j = global_x(); j < (u64)nsteps; j += grid_x()) {
        const i32 t = steps[j] == MAX_COUNT ? MAX_COUNT : steps[j] + 1;
        steps[j] = t;
        coef[2 * j] = (float)(1.0 - powi_f64((double)beta1, t));
        coef[2 * j + 1] = (float)(1.0 - powi_f64((double)beta2, t));
    }
}

// W *= decay for all n elements (decay mode dense).
extern "C" __global__ void decay_all(void* w, i32 w_dt, i64 n, const StepHeader* h) {
    if (h->skip) return;
    float decay = h->decay;
    for (u64 e = global_x(); e < (u64)n; e += grid_x()) {
        store_from_f32(w, w_dt, e, load_as_f32(w, w_dt, e) * decay);
    }
}

__device__ __forceinline__ float adam_direction(float beta1, float beta2, float eps, float c1,
                                                float c2, float& m, float& v, float g) {
    m = beta1 * m + (1.0f - beta1) * g;
    v = beta2 * v + (1.0f - beta2) * g * g;
    return (m / c1) / (sqrtf(v / c2) + eps);
}

// The compressed step and its scatter: thread (j, c) owns element c of projected index
// idx[j] in W when j starts a run of equal indices, updates the M, V entries of the whole run
// in order (state row j with the bias corrections coef[2j], coef[2j + 1] of its own step
// count) and rounds W once. W is m x n; `cols` selects columns instead of rows.
extern "C" __global__ void sparse_adamw(void* w, i32 w_dt, i64 n, i32 cols,
                                        void* ms, void* vs, i32 s_dt,
                                        const float* __restrict__ g,
                                        const i32* __restrict__ idx,
                                        const float* __restrict__ scales, i32 r, i64 k,
                                        float beta1, float beta2, float eps, float alpha,
                                        i32 decay_rows, const float* __restrict__ coef,
                                        const StepHeader* h) {
    if (h->skip) return;
    const float lr = h->lr;
    const float row_decay = decay_rows ? h->decay : 1.0f;
    for (i64 j0 = blockIdx.y; j0 < r; j0 += gridDim.y) {
        const i32 i = idx[j0];
        if (j0 > 0 && idx[j0 - 1] == i) continue;
        i64 j1 = j0 + 1;
        while (j1 < r && idx[j1] == i) ++j1;
        for (u64 c = global_x(); c < (u64)k; c += grid_x()) {
            const u64 at = cols ? c * (u64)n + (u64)i : (u64)i * (u64)n + c;
            float acc = load_as_f32(w, w_dt, at) * row_decay;
            for (i64 j = j0; j < j1; ++j) {
                const u64 e = (u64)j * (u64)k + c;
                float m = load_as_f32(ms, s_dt, e), v = load_as_f32(vs, s_dt, e);
                float u = adam_direction(beta1, beta2, eps, coef[2 * j], coef[2 * j + 1], m,
                                         v, g[e]);
                store_from_f32(ms, s_dt, e, m);
                store_from_f32(vs, s_dt, e, v);
                acc += (-lr * alpha * scales[j]) * u;
            }
            store_from_f32(w, w_dt, at, acc);
        }
    }
}

// Plain AdamW on n elements; `decay_on` applies the decoupled weight decay.
extern "C" __global__ void dense_adamw(void* w, i32 w_dt, const void* __restrict__ grad,
                                       i32 g_dt, void* ms, void* vs, i32 s_dt, i64 n,
                                       float beta1, float beta2, float eps, i32 decay_on,
                                       const StepHeader* h) {
    if (h->skip) return;
    const float lr = h->lr, c1 = h->c1, c2 = h->c2;
    const float decay = decay_on ? h->decay : 1.0f;
    for (u64 e = global_x(); e < (u64)n; e += grid_x()) {
        float m = load_as_f32(ms, s_dt, e), v = load_as_f32(vs, s_dt, e);
        float u = adam_direction(beta1, beta2, eps, c1, c2, m, v, load_as_f32(grad, g_dt, e));
        store_from_f32(ms, s_dt, e, m);
        store_from_f32(vs, s_dt, e, v);
        store_from_f32(w, w_dt, e, load_as_f32(w, w_dt, e) * decay + (-lr) * u);
    }
}

// First position in a[0, n) whose value is >= v (or > v when `upper`).
__device__ i32 bound(const i32* a, i32 n, i32 v, bool upper) {
    i32 lo = 0, hi = n;
    while (lo < hi) {
        i32 mid = lo + (hi - lo) / 2;
        if (a[mid] < v || (upper && a[mid] == v)) lo = mid + 1; else hi = mid;
    }
    return lo;
}

// The old row that new row b keeps, or -1: the q-th repeat of a value in new_idx pairs with
// its q-th repeat in old_idx (carry_partner in src/cpu/adamw.rs). old_idx may be NULL.
__device__ i32 carry_partner(const i32* old_idx, const i32* new_idx, i32 r, i32 b) {
    if (old_idx == nullptr) return -1;
    const i32 val = new_idx[b];
    const i32 q = b - bound(new_idx, b, val, false);
    const i32 lo = bound(old_idx, r, val, false), hi = bound(old_idx, r, val, true);
    return q < hi - lo ? lo + q : -1;
}

// Threads per block of carry_rows (CARRY_THREADS in src/cuda/ops.rs): the rows whose
// partners a block looks up at a time.
#ifndef CARRY_THREADS
#define CARRY_THREADS 256
#endif
// Rows a thread moves at once: their loads are all issued before their stores.
#define CARRY_BATCH 8

// Element c of rows new position b (b = first, first + dir, ... `count` of them) of one
// r-row array (rows of `width` elements of 2 or 4 bytes) takes the value of row from[b - base]
// when `pass` accepts that partner (1: partners below b, 2: above b, 0: none, the row is
// zeroed). All the batch's loads come before its stores.
__device__ void carry_batch(void* data, i32 elem_bytes, i64 width, u64 c, const i32* from,
                            i32 base, i32 first, i32 dir, i32 count, i32 pass) {
    u32 val[CARRY_BATCH];
    bool move[CARRY_BATCH];
    for (i32 q = 0; q < count; ++q) {
        const i32 b = first + dir * q, a = from[b - base];
        move[q] = pass == 1 ? (a >= 0 && a < b) : pass == 2 ? a > b : a < 0;
        val[q] = 0u;
        if (move[q] && pass != 0) {
            const u64 at = (u64)a * (u64)width + c;
            val[q] = elem_bytes == 4 ? ((const u32*)data)[at] : (u32)((const u16*)data)[at];
        }
    }
    for (i32 q = 0; q < count; ++q) {
        if (!move[q]) continue;
        const u64 at = (u64)(first + dir * q) * (u64)width + c;
        if (elem_bytes == 4) {
            ((u32*)data)[at] = val[q];
        } else {
            ((u16*)data)[at] = (u16)val[q];
        }
    }
}

// This thread's share of one chunk of rows [begin, end) in one pass: its columns of M and V,
// and (the grid's first thread) the step counts, in batches in the pass's order.
__device__ void carry_chunk(void* m, void* v, i32* steps, i32 elem_bytes, i64 k,
                            const i32* from, i32 begin, i32 end, i32 pass) {
    const i32 dir = pass == 1 ? -1 : 1;
    for (i32 done = 0; done < end - begin; done += CARRY_BATCH) {
        const i32 first = pass == 1 ? end - 1 - done : begin + done;
        const i32 count = end - begin - done < CARRY_BATCH ? end - begin - done : CARRY_BATCH;
        for (u64 c = global_x(); c < (u64)k; c += grid_x()) {
            carry_batch(m, elem_bytes, k, c, from, begin, first, dir, count, pass);
            carry_batch(v, elem_bytes, k, c, from, begin, first, dir, count, pass);
        }
        if (global_x() == 0) carry_batch(steps, 4, 1, 0, from, begin, first, dir, count, pass);
    }
}

// from[b - begin] = carry_partner(b) for the rows [begin, end), whole block (the barriers
// also keep the previous chunk's readers of `from` ahead of the writes).
__device__ void load_partners(i32* from, const i32* old_idx, const i32* new_idx, i32 r,
                              i32 begin, i32 end) {
    __syncthreads();
    if (begin + (i32)threadIdx.x < end) {
        from[threadIdx.x] = carry_partner(old_idx, new_idx, r, begin + (i32)threadIdx.x);
    }
    __syncthreads();
}

// Refresh with carry, in place: each new row keeps the state and step count of its partner in
// the old selection (carry_partner), rows without one become zero. The pairing is monotone, so
// no row is ever read after another row's move has written it: the rows moving to a higher
// position only need to be moved from the last down, those moving lower from the first up
// (the order of src/cpu/adamw.rs carry_rows), and a batch may load all its rows before it
// stores any. Columns are independent: each thread takes its own (grid-stride); each block
// looks up the partners of blockDim.x rows at a time into shared memory. Rows without a
// partner are zeroed once the moves that read them are done.
extern "C" __global__ void __launch_bounds__(CARRY_THREADS)
carry_rows(void* m, void* v, i32* steps, i32 elem_bytes, const i32* __restrict__ old_idx,
           const i32* __restrict__ new_idx, i32 r, i64 k) {
    __shared__ i32 from[CARRY_THREADS];
    const i32 T = (i32)blockDim.x;
    for (i32 end = r; end > 0; end -= T) {  // pass 1: right-bound rows, from the last down
        const i32 begin = end > T ? end - T : 0;
        load_partners(from, old_idx, new_idx, r, begin, end);
        carry_chunk(m, v, steps, elem_bytes, k, from, begin, end, 1);
    }
    for (i32 begin = 0; begin < r; begin += T) {  // pass 2: left-bound rows, then zeros
        const i32 end = r - begin > T ? begin + T : r;
        load_partners(from, old_idx, new_idx, r, begin, end);
        carry_chunk(m, v, steps, elem_bytes, k, from, begin, end, 2);
        carry_chunk(m, v, steps, elem_bytes, k, from, begin, end, 0);
    }
}
