// The sparse gradient g = rho . (A[:, sigma])^T B around one cuBLAS GEMM: a gather of the r
// selected columns of A before it, and the row scaling (and accumulation) after it.
#include "common.cuh"

// out (b x r, dtype dt) = A[:, idx] for A (b x d, dtype dt), all row-major. An index outside
// [0, d) yields NaN in its column, so the step that consumes the gradient is skipped instead
// of reading out of bounds.
extern "C" __global__ void gather_cols(const void* __restrict__ a, i32 dt, i64 b, i64 d,
                                       const i32* __restrict__ idx, i32 r,
                                       void* __restrict__ out) {
    for (u64 j = global_x(); j < (u64)r; j += grid_x()) {
        i32 col = idx[j];
        bool ok = col >= 0 && (i64)col < d;
        for (i64 t = blockIdx.y; t < b; t += gridDim.y) {
            u64 src = (u64)t * (u64)d + (u64)(ok ? col : 0);
            u64 dst = (u64)t * (u64)r + j;
            if (dt == DT_F32) {
                ((u32*)out)[dst] = ok ? ((const u32*)a)[src] : nan_bits(dt);
            } else {
                ((u16*)out)[dst] = ok ? ((const u16*)a)[src] : (u16)nan_bits(dt);
            }
        }
    }
}

// g[j, :] = (accumulate ? g[j, :] : 0) + scales[j] * prod[j, :] for row-major r x k tensors.
extern "C" __global__ void scale_rows(const float* __restrict__ prod,
                                      const float* __restrict__ scales, i32 r, i64 k,
                                      float* __restrict__ g, i32 accumulate) {
    for (i64 j = blockIdx.y; j < r; j += gridDim.y) {
        float s = scales[j];
        u64 row = (u64)j * (u64)k;
        for (u64 c = global_x(); c < (u64)k; c += grid_x()) {
            float v = s * prod[row + c];
            g[row + c] = accumulate ? g[row + c] + v : v;
        }
    }
}
