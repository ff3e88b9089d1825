// The AdamW steps: `sparse_adamw_step` (the compressed step with its scatter into W) and
// `adamw_step` (dense). Every step runs as: zero the header, `step_check` (a device-side reduction that
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
// Outcomes written to StepHeader::skip and *skipped (GRASS_STEP_* in include/grass.h;
// tests/enum_codes.rs checks them).
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

// Flags the step as bad when n elements of gscale * g (g of dtype g_dt, each element scaled
// in f32 as the update kernels read it) or the r scales (may be NULL) hold a NaN or infinity
// (a non-finite scale would write non-finite values into W from a finite gradient), when idx
// (r entries, may be NULL) is not sorted ascending within [0, d), or when one of the nsteps
// step counts is negative.
extern "C" __global__ void step_check(const void* __restrict__ g, i32 g_dt, i64 n, float gscale,
                                      const i32* __restrict__ idx,
                                      const float* __restrict__ scales, i32 r, i64 d,
                                      const i32* __restrict__ steps, i32 nsteps,
                                      StepHeader* h) {
    bool bad_g = false, bad_i = false, bad_c = false;
    for (u64 e = global_x(); e < (u64)n; e += grid_x()) {
        const float x = load_as_f32(g, g_dt, e);
        if (!finite_f32(x) || !finite_f32(x * gscale)) bad_g = true;
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

// The warm-up factor min(1, t / row_warmup) of a state row at step count t >= 1 (1 when
// row_warmup is 0), as AdamW::row_ramp computes it.
__device__ __forceinline__ float row_ramp(i32 t, i32 row_warmup) {
    return t >= row_warmup ? 1.0f : (float)t / (float)row_warmup;
}

// The compressed step and its scatter: thread (j, c) owns element c of projected index
// idx[j] in W when j starts a run of equal indices, updates the M, V entries of the whole run
// in order (state row j with the bias corrections coef[2j], coef[2j + 1] and the warm-up
// factor of its own step count steps[j], already advanced by step_prepare) and rounds W once.
// W is m x n; `cols` selects columns instead of rows.
extern "C" __global__ void sparse_adamw_step(void* w, i32 w_dt, i64 n, i32 cols,
                                        void* ms, void* vs, i32 s_dt,
                                        const float* __restrict__ g, float gscale,
                                        const i32* __restrict__ idx,
                                        const float* __restrict__ scales, i32 r, i64 k,
                                        float beta1, float beta2, float eps, float alpha,
                                        i32 decay_rows, const float* __restrict__ coef,
                                        const i32* __restrict__ steps, i32 row_warmup,
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
                                         v, g[e] * gscale);
                store_from_f32(ms, s_dt, e, m);
                store_from_f32(vs, s_dt, e, v);
                acc += (-lr * alpha * scales[j] * row_ramp(steps[j], row_warmup)) * u;
            }
            store_from_f32(w, w_dt, at, acc);
        }
    }
}

// Plain AdamW on n elements of gscale * grad; `decay_on` applies the decoupled weight decay.
extern "C" __global__ void adamw_step(void* w, i32 w_dt, const void* __restrict__ grad,
                                       i32 g_dt, float gscale, void* ms, void* vs, i32 s_dt,
                                       i64 n,
                                       float beta1, float beta2, float eps, i32 decay_on,
                                       const StepHeader* h) {
    if (h->skip) return;
    const float lr = h->lr, c1 = h->c1, c2 = h->c2;
    const float decay = decay_on ? h->decay : 1.0f;
    for (u64 e = global_x(); e < (u64)n; e += grid_x()) {
        float m = load_as_f32(ms, s_dt, e), v = load_as_f32(vs, s_dt, e);
        const float ge = load_as_f32(grad, g_dt, e) * gscale;
        float u = adam_direction(beta1, beta2, eps, c1, c2, m, v, ge);
        store_from_f32(ms, s_dt, e, m);
        store_from_f32(vs, s_dt, e, v);
        store_from_f32(w, w_dt, e, load_as_f32(w, w_dt, e) * decay + (-lr) * u);
    }
}

// Threads of the one block `sq_norm` runs in.
#define SQ_NORM_THREADS 256

// out[0] = the squared Frobenius norm of n elements of g (dtype g_dt): each thread sums the
// squares of elements threadIdx.x, threadIdx.x + SQ_NORM_THREADS, ... in double, then a tree
// over the block adds the threads' sums; the result is rounded once to float. One block of
// SQ_NORM_THREADS threads, so the sum's order (and the result) is fixed for a given n.
extern "C" __global__ void sq_norm(const void* __restrict__ g, i32 g_dt, i64 n, float* out) {
    __shared__ double part[SQ_NORM_THREADS];
    double acc = 0.0;
    for (u64 e = threadIdx.x; e < (u64)n; e += SQ_NORM_THREADS) {
        const double x = (double)load_as_f32(g, g_dt, e);
        acc += x * x;
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (u32 half = SQ_NORM_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = (float)part[0];
}

// ---- the residual step (grass_residual_step) ------------------------------------------------
// The units of the projected-side gradient that are not selected move by signSGD:
// W_u -= lr·lr_scale·alpha·residual_scale·sign(G_u). G comes chunk by chunk of its rows from a
// cuBLAS GEMM into scratch (as for the row scores); per chunk `residual_apply` updates the
// unselected rows of W. `residual_check` and `residual_prepare` decide the step on the
// device first, as `step_check` and `step_prepare` do for the AdamW steps.

struct ResidualHeader {
    u32 bad;     // set by residual_check: X or dY holds a NaN or infinity
    i32 skip;    // decided by residual_prepare
    float step;  // lr * lr_scale * alpha * residual_scale
};

// Flags h->bad when one of the nx elements of x or the ndy of dy (dtype dt) is not finite.
extern "C" __global__ void residual_check(const void* __restrict__ x,
                                          const void* __restrict__ dy, i32 dt, i64 nx, i64 ndy,
                                          ResidualHeader* h) {
    bool bad = false;
    for (u64 e = global_x(); e < (u64)nx; e += grid_x()) {
        if (!finite_f32(load_as_f32(x, dt, e))) bad = true;
    }
    for (u64 e = global_x(); e < (u64)ndy; e += grid_x()) {
        if (!finite_f32(load_as_f32(dy, dt, e))) bad = true;
    }
    if (bad) atomicOr(&h->bad, 1u);
}

// One thread decides: a step that skipped before (`*skipped` not STEP_APPLIED) gates this one
// off and is left as it is; a bad batch or a learning rate that is not finite and
// non-negative skips it and writes STEP_SKIPPED_NONFINITE. The step size is computed in the
// order the host computes it.
extern "C" __global__ void residual_prepare(ResidualHeader* h, float lr,
                                            const float* __restrict__ lr_scale, float alpha,
                                            float residual_scale, i32* skipped) {
    if (global_x() != 0) return;
    const float l = lr_scale != nullptr ? lr * lr_scale[0] : lr;
    const float step = l * alpha * residual_scale;
    i32 skip = 0;
    if (skipped != nullptr && *skipped != STEP_APPLIED) {
        skip = 1;
    } else if (h->bad != 0 || !finite_f32(l) || !(l >= 0.0f) || !finite_f32(step)) {
        skip = 1;
        if (skipped != nullptr) *skipped = STEP_SKIPPED_NONFINITE;
    }
    h->skip = skip;
    h->step = step;
}

// Rows i0 .. i0 + rows of G (`chunk`, rows x k f32): each unit u = i0 + i that is not among
// the r sorted indices moves W's row u (cols == 0; W is m x n with n = k) or column u
// (cols != 0; k = m) by -step·sign(G_u), in f32 rounded once to W's dtype. Blocks split the
// rows in y and the k elements of a row in x.
extern "C" __global__ void residual_apply(void* w, i32 w_dt, i64 n, i32 cols,
                                          const float* __restrict__ chunk, i64 i0, i32 rows,
                                          i64 k, const i32* __restrict__ idx, i32 r,
                                          const ResidualHeader* h) {
    if (h->skip) return;
    const float step = h->step;
    for (i64 i = blockIdx.y; i < rows; i += gridDim.y) {
        const i64 u = i0 + i;
        i32 lo = 0, hi = r;
        while (lo < hi) {
            const i32 mid = lo + (hi - lo) / 2;
            if ((i64)idx[mid] < u) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if (lo < r && (i64)idx[lo] == u) continue;
        for (u64 c = global_x(); c < (u64)k; c += grid_x()) {
            const float g = chunk[(u64)i * (u64)k + c];
            const float s = g > 0.0f ? 1.0f : (g < 0.0f ? -1.0f : 0.0f);
            if (s != 0.0f) {
                const u64 e = cols ? c * (u64)n + (u64)u : (u64)u * (u64)n + c;
                store_from_f32(w, w_dt, e, load_as_f32(w, w_dt, e) - step * s);
            }
        }
    }
}
