// Just enough of CUDA to run grass's kernels on the host, for tests on machines without a
// GPU: the qualifiers vanish, thread and block indices are thread-local, a block's threads
// are host threads meeting at a std::barrier, and __shared__ variables are statics (one
// block runs at a time). Only what kernels/*.cu use is provided; __any_sync assumes blocks
// of one thread, __shfl_down_sync a whole block calling it together.
//
// A file that defines CUDA_HOST_THREADS (a header name) before including this one gets the
// types and intrinsics only, and that header's threads: __syncthreads, the warp
// collectives and the way blocks run (tests/host_cuda runs every launch that way).
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static

struct HostDim {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local HostDim threadIdx, blockIdx, blockDim, gridDim;

struct uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline long long __double_as_longlong(double d) { long long v; std::memcpy(&v, &d, 8); return v; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }

template <class T>
inline T min(T a, T b) { return b < a ? b : a; }

inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicOr(unsigned* p, unsigned v) {
    return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}
#ifdef CUDA_HOST_THREADS
#include CUDA_HOST_THREADS
#else
inline std::barrier<>* host_barrier = nullptr;

inline void __syncthreads() { host_barrier->arrive_and_wait(); }

// Blocks of one thread only: the lane is the warp.
inline bool __any_sync(unsigned, bool p) { return p; }

// Warp shuffles for host_block, where every thread of the block calls them together (as
// row_norms does): each lane publishes its value, the block meets, and each lane reads its
// partner's, or keeps its own where the partner lies outside its warp.
inline double* host_lanes = nullptr;
inline double __shfl_down_sync(unsigned, double v, unsigned off) {
    host_lanes[threadIdx.x] = v;
    __syncthreads();
    unsigned lane = threadIdx.x & 31;
    double r = lane + off < 32 && threadIdx.x + off < blockDim.x ? host_lanes[threadIdx.x + off] : v;
    __syncthreads();
    return r;
}

// Runs a grid one thread at a time (kernels without barriers).
template <class F>
void host_grid(unsigned gx, unsigned gy, unsigned bx, F body) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    for (unsigned y = 0; y < gy; ++y)
        for (unsigned x = 0; x < gx; ++x)
            for (unsigned t = 0; t < bx; ++t) {
                blockIdx = {x, y, 0};
                threadIdx = {t, 0, 0};
                body();
            }
}

// Serializes host_block: the barrier and the __shared__ statics belong to one block at a
// time, also when tests run on several threads.
inline std::mutex host_block_lock;

// Runs one block of `threads` host threads that meet at __syncthreads().
template <class F>
void host_block(unsigned threads, F body) {
    std::lock_guard<std::mutex> one_block(host_block_lock);
    std::barrier<> bar((std::ptrdiff_t)threads);
    host_barrier = &bar;
    std::vector<double> lanes(threads);
    host_lanes = lanes.data();
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            gridDim = {1, 1, 1};
            blockDim = {threads, 1, 1};
            blockIdx = {0, 0, 0};
            threadIdx = {t, 0, 0};
            body();
        });
    }
    for (auto& th : pool) th.join();
    host_barrier = nullptr;
    host_lanes = nullptr;
}
#endif  // CUDA_HOST_THREADS
