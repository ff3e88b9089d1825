// The AdamW steps (compressed with its scatter into W, and dense) and the state remap at a
// refresh. Every step runs as: zero the header, `step_check` (a device-side reduction that
// flags a non-finite gradient or an invalid index), `step_prepare` (one thread: effective
// learning rate, skip decision, step counter, bias corrections), then the update kernels,
// which do nothing when the step is skipped. The host never waits for any of it.
//
// The arithmetic mirrors src/cpu/adamw.rs operation by operation; the module is compiled with
// --fmad=false so that no multiply-add is contracted and W, M, V match the host bit for bit.
#include "common.cuh"

struct StepHeader {
    u32 bad;      // set by step_check
    i32 skip;     // decided by step_prepare
    float lr;     // effective learning rate lr * lr_scale
    float c1;     // 1 - beta1^t
    float c2;     // 1 - beta2^t
    float decay;  // 1 - lr * weight_decay
};

// Flags the step as bad when n elements of g (dtype g_dt) hold a NaN or infinity, or when
// idx (r entries, may be NULL) is not sorted ascending within [0, d).
extern "C" __global__ void step_check(const void* __restrict__ g, i32 g_dt, i64 n,
                                      const i32* __restrict__ idx, i32 r, i64 d,
                                      StepHeader* h) {
    bool bad = false;
    for (u64 e = global_x(); e < (u64)n; e += grid_x()) {
        if (!finite_f32(load_as_f32(g, g_dt, e))) bad = true;
    }
    if (idx != nullptr) {
        for (u64 j = global_x(); j < (u64)r; j += grid_x()) {
            i32 i = idx[j];
            if (i < 0 || (i64)i >= d || (j > 0 && idx[j - 1] > i)) bad = true;
        }
    }
    if (__any_sync(0xFFFFFFFFu, bad) && (threadIdx.x & 31) == 0) {
        atomicOr(&h->bad, 1u);
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

// One thread. `lr_scale` and `skipped` may be NULL.
extern "C" __global__ void step_prepare(StepHeader* h, i32* step, float lr,
                                        const float* lr_scale, float beta1, float beta2,
                                        float weight_decay, i32* skipped) {
    float eff = lr_scale != nullptr ? lr * lr_scale[0] : lr;
    bool skip = !(finite_f32(eff) && eff >= 0.0f) || h->bad != 0;
    if (skipped != nullptr) *skipped = skip ? 1 : 0;
    h->skip = skip ? 1 : 0;
    if (skip) return;
    i32 t = *step + 1;
    *step = t;
    h->lr = eff;
    h->c1 = (float)(1.0 - powi_f64((double)beta1, t));
    h->c2 = (float)(1.0 - powi_f64((double)beta2, t));
    h->decay = 1.0f - eff * weight_decay;
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
// in order and rounds W once. W is m x n; `cols` selects columns instead of rows.
extern "C" __global__ void sparse_adamw(void* w, i32 w_dt, i64 n, i32 cols,
                                        void* ms, void* vs, i32 s_dt,
                                        const float* __restrict__ g,
                                        const i32* __restrict__ idx,
                                        const float* __restrict__ scales, i32 r, i64 k,
                                        float beta1, float beta2, float eps, float alpha,
                                        i32 decay_rows, const StepHeader* h) {
    if (h->skip) return;
    const float lr = h->lr, c1 = h->c1, c2 = h->c2;
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
                float u = adam_direction(beta1, beta2, eps, c1, c2, m, v, g[e]);
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

// Refresh with carry: row b of the new state is the row of the old state whose index equals
// new_idx[b], the q-th repeat of a value in new pairing with its q-th repeat in old (the
// merge of src/cpu/adamw.rs carry_rows); rows without a partner, or all rows when old_idx is
// NULL, become zero. src_* hold a copy of the old states; elements are 2 or 4 bytes.
extern "C" __global__ void carry_rows(const void* __restrict__ src_m,
                                      const void* __restrict__ src_v, void* m, void* v,
                                      i32 elem_bytes, const i32* __restrict__ old_idx,
                                      const i32* __restrict__ new_idx, i32 r, i64 k) {
    for (i64 b = blockIdx.y; b < r; b += gridDim.y) {
        const i32 val = new_idx[b];
        i64 from = -1;
        if (old_idx != nullptr) {
            i32 q = (i32)b - bound(new_idx, (i32)b, val, false);
            i32 lo = bound(old_idx, r, val, false), hi = bound(old_idx, r, val, true);
            if (q < hi - lo) from = lo + q;
        }
        for (u64 c = global_x(); c < (u64)k; c += grid_x()) {
            u64 dst = (u64)b * (u64)k + c;
            if (elem_bytes == 4) {
                u32 zm = 0, zv = 0;
                if (from >= 0) {
                    u64 src = (u64)from * (u64)k + c;
                    zm = ((const u32*)src_m)[src];
                    zv = ((const u32*)src_v)[src];
                }
                ((u32*)m)[dst] = zm;
                ((u32*)v)[dst] = zv;
            } else {
                u16 zm = 0, zv = 0;
                if (from >= 0) {
                    u64 src = (u64)from * (u64)k + c;
                    zm = ((const u16*)src_m)[src];
                    zv = ((const u16*)src_v)[src];
                }
                ((u16*)m)[dst] = zm;
                ((u16*)v)[dst] = zv;
            }
        }
    }
}
