// The threads of tests/host_cuda: every thread of a block is a fiber on the calling host
// thread, and the block's fibers run in turn up to their next __syncthreads (or their end),
// so a block needs no host threads and its barriers cost a context switch each. Warp
// collectives are block-wide meetings, which needs every thread of the block to call them
// together (as the kernels do). Included by ../host_kernels/cuda_host.h.
#pragma once

namespace host_fiber {
// Suspends the current fiber until every fiber of its block has reached a barrier or ended.
void barrier();
// One slot per thread of the running block, for the warp collectives.
extern double* lanes;
}  // namespace host_fiber

inline void __syncthreads() { host_fiber::barrier(); }

// Each lane publishes its value, the block meets, and each lane reads its partner's, or keeps
// its own where the partner lies outside its warp.
inline double __shfl_down_sync(unsigned, double v, unsigned off) {
    host_fiber::lanes[threadIdx.x] = v;
    __syncthreads();
    unsigned lane = threadIdx.x & 31;
    double r = lane + off < 32 && threadIdx.x + off < blockDim.x
                   ? host_fiber::lanes[threadIdx.x + off]
                   : v;
    __syncthreads();
    return r;
}

// True in every lane of the warp when the predicate holds in one of them.
inline bool __any_sync(unsigned, bool p) {
    host_fiber::lanes[threadIdx.x] = p ? 1.0 : 0.0;
    __syncthreads();
    unsigned first = threadIdx.x & ~31u;
    bool any = false;
    for (unsigned t = first; t < first + 32 && t < blockDim.x; ++t) any |= host_fiber::lanes[t] != 0.0;
    __syncthreads();
    return any;
}
