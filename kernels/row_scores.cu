// Row scores: the norms of the rows of one chunk of G (computed by cuBLAS into scratch).
#include "common.cuh"

#define NORM_THREADS 256

// scores[i] = sqrt(sum_c chunk[i * k + c]^2) for the `rows` rows of a row-major chunk.
// One block per row; the sum is kept in f64 like the host reference.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
row_norms(const float* __restrict__ chunk, i32 rows, i64 k, float* __restrict__ scores) {
    __shared__ double partial[NORM_THREADS / 32];
    for (i64 i = blockIdx.x; i < rows; i += gridDim.x) {
        const float* row = chunk + (u64)i * (u64)k;
        double s = 0.0;
        for (i64 c = threadIdx.x; c < k; c += NORM_THREADS) {
            double v = (double)row[c];
            s += v * v;
        }
        for (int off = 16; off > 0; off >>= 1) {
            s += __shfl_down_sync(0xFFFFFFFFu, s, off);
        }
        if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = s;
        __syncthreads();
        if (threadIdx.x == 0) {
            double t = 0.0;
            for (int w = 0; w < NORM_THREADS / 32; ++w) t += partial[w];
            scores[i] = (float)sqrt(t);
        }
        __syncthreads();
    }
}
