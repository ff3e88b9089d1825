// grass's kernels compiled for the host (see cuda_host.h), each behind an extern "C" entry
// that takes the grid shape first and then the kernel's own parameters.
#include "cuda_host.h"

#include "../../kernels/adamw.cu"
#include "../../kernels/row_scores.cu"
#include "../../kernels/select.cu"
#include "../../kernels/sparse_grad.cu"
#include "../../kernels/state_refresh.cu"


extern "C" void host_select_rows(const float* scores, i32 d, i32 r, i32 method, i32 power,
                                 i32 scaling_none, u64 seed, u32 layer_id, u32 refresh_index,
                                 i32* indices, float* scales, double* w, double* aux,
                                 u64* keys, u32* vals, u8* taken, u32 padded) {
    host_block(SEL_THREADS, [&] {
        select_rows(scores, d, r, method, power, scaling_none, seed, layer_id, refresh_index,
                    nullptr, indices, scales, w, aux, keys, vals, taken, padded);
    });
}

// Systematic sampling alone, from given inclusion probabilities (which may exceed 1, as
// rounding can make them): the path that completes a short pick runs only then.
extern "C" void host_systematic(const double* pi, i32 d, i32 r, u64 seed, u32 layer_id,
                                u32 refresh_index, i32* out, u64* keys, u32* vals, u8* taken,
                                u32 padded) {
    host_block(SEL_THREADS, [&] {
        __shared__ double tile[SEL_THREADS];
        __shared__ u32 tile_idx[SEL_THREADS];
        __shared__ double s_real[2];
        __shared__ i32 s_int[4];
        const RngKey rng = {seed, layer_id, refresh_index};
        systematic(pi, d, r, rng, keys, vals, padded, taken, out, tile, tile_idx, s_real,
                   s_int);
    });
}

// One block of NORM_THREADS threads (as launched) strides over every row.
extern "C" void host_row_norms(const float* chunk, i32 rows, i64 k, float* scores) {
    host_block(NORM_THREADS, [&] { row_norms(chunk, rows, k, scores); });
}

extern "C" void host_step_check(unsigned gx, const void* g, i32 g_dt, i64 n, float gscale,
                                const i32* idx, const float* scales, i32 r, i64 d,
                                const i32* steps, i32 nsteps, StepHeader* h) {
    host_grid(gx, 1, 1, [&] {
        step_check(g, g_dt, n, gscale, idx, scales, r, d, steps, nsteps, h);
    });
}

extern "C" void host_step_prepare(unsigned gx, unsigned bx, StepHeader* h, i32* steps,
                                  i32 nsteps, float* coef, float lr, const float* lr_scale,
                                  float beta1, float beta2, float weight_decay, i32* skipped) {
    host_grid(gx, 1, bx, [&] {
        step_prepare(h, steps, nsteps, coef, lr, lr_scale, beta1, beta2, weight_decay, skipped);
    });
}

extern "C" void host_decay_all(unsigned gx, unsigned bx, void* w, i32 w_dt, i64 n,
                               const StepHeader* h) {
    host_grid(gx, 1, bx, [&] { decay_all(w, w_dt, n, h); });
}

extern "C" void host_sparse_adamw_step(unsigned gx, unsigned gy, unsigned bx, void* w, i32 w_dt,
                                  i64 n, i32 cols, void* ms, void* vs, i32 s_dt,
                                  const float* g, float gscale, const i32* idx,
                                  const float* scales, i32 r, i64 k, float beta1, float beta2,
                                  float eps, float alpha, i32 decay_rows, const float* coef,
                                  const i32* steps, i32 row_warmup, const StepHeader* h) {
    host_grid(gx, gy, bx, [&] {
        sparse_adamw_step(w, w_dt, n, cols, ms, vs, s_dt, g, gscale, idx, scales, r, k, beta1,
                          beta2, eps, alpha, decay_rows, coef, steps, row_warmup, h);
    });
}

extern "C" void host_adamw_step(unsigned gx, unsigned bx, void* w, i32 w_dt, const void* grad,
                                 i32 g_dt, float gscale, void* ms, void* vs, i32 s_dt, i64 n,
                                 float beta1, float beta2, float eps, i32 decay_on,
                                 const StepHeader* h) {
    host_grid(gx, 1, bx, [&] {
        adamw_step(w, w_dt, grad, g_dt, gscale, ms, vs, s_dt, n, beta1, beta2, eps, decay_on, h);
    });
}

// The one block of SQ_NORM_THREADS threads that cuda::ops::sq_norm launches.
extern "C" void host_sq_norm(const void* g, i32 g_dt, i64 n, float* out) {
    host_block(SQ_NORM_THREADS, [&] { sq_norm(g, g_dt, n, out); });
}

// One block of `threads` host threads (the kernel's columns stride over the grid, so one
// block covers them all).
extern "C" void host_carry_rows(unsigned threads, void* m, void* v, i32* steps, i32 elem_bytes,
                                const i32* old_idx, const i32* new_idx, i32 r, i64 k) {
    host_block(threads, [&] { carry_rows(m, v, steps, elem_bytes, old_idx, new_idx, r, k); });
}

extern "C" void host_gather_cols(unsigned gx, unsigned gy, unsigned bx, const void* a, i32 dt,
                                 i64 b, i64 d, const i32* idx, i32 r, void* out) {
    host_grid(gx, gy, bx, [&] { gather_cols(a, dt, b, d, idx, r, out); });
}

extern "C" void host_scale_rows(unsigned gx, unsigned gy, unsigned bx, const float* prod,
                                const float* scales, i32 r, i64 k, float* g, i32 accumulate) {
    host_grid(gx, gy, bx, [&] { scale_rows(prod, scales, r, k, g, accumulate); });
}

// The conversions, one value at a time.
extern "C" u16 host_f32_to_bf16(float v) { return f32_to_bf16(v); }
extern "C" u16 host_f32_to_f16(float v) { return f32_to_f16(v); }
extern "C" float host_f16_to_f32(u16 h) { return f16_to_f32(h); }
extern "C" float host_bf16_to_f32(u16 h) { return bf16_to_f32(h); }
extern "C" void host_philox(u64 seed, u32 layer, u32 refresh, u32 purpose, u32 i, u32* out) {
    uint4 x = rng_bits(RngKey{seed, layer, refresh}, purpose, i);
    out[0] = x.x; out[1] = x.y; out[2] = x.z; out[3] = x.w;
}
extern "C" double host_uniform(u64 seed, u32 layer, u32 refresh, u32 purpose, u32 i) {
    return rng_uniform(RngKey{seed, layer, refresh}, purpose, i);
}
extern "C" double host_powi(double a, i32 b) { return powi_f64(a, b); }
