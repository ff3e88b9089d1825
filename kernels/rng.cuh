// Philox4x32-10 keyed by the seed and indexed by (draw index, purpose, layer id, refresh
// index): the device twin of src/core/rng.rs. Both must give identical bits for identical
// inputs, which is what makes a selection the same on CPU, GPU and every rank.
#pragma once
#include "common.cuh"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

// Purposes (src/core/rng.rs `Purpose`).
#define RNG_DRAW 1u
#define RNG_ORDER 2u
#define RNG_OFFSET 3u

struct RngKey {
    u64 seed;
    u32 layer_id;
    u32 refresh_index;
};

__device__ __forceinline__ uint4 philox4x32_10(uint4 ctr, u32 key0, u32 key1) {
    #pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key0 += PHILOX_W0;
            key1 += PHILOX_W1;
        }
        u32 hi0 = __umulhi(PHILOX_M0, ctr.x), lo0 = PHILOX_M0 * ctr.x;
        u32 hi1 = __umulhi(PHILOX_M1, ctr.z), lo1 = PHILOX_M1 * ctr.z;
        uint4 next;
        next.x = hi1 ^ ctr.y ^ key0;
        next.y = lo1;
        next.z = hi0 ^ ctr.w ^ key1;
        next.w = lo0;
        ctr = next;
    }
    return ctr;
}

__device__ __forceinline__ uint4 rng_bits(RngKey k, u32 purpose, u32 i) {
    uint4 ctr = make_uint4(i, purpose, k.layer_id, k.refresh_index);
    return philox4x32_10(ctr, (u32)k.seed, (u32)(k.seed >> 32));
}

// Uniform in [0, 1) with 53 random bits.
__device__ __forceinline__ double rng_uniform(RngKey k, u32 purpose, u32 i) {
    uint4 x = rng_bits(k, purpose, i);
    u64 v = ((u64)x.x << 21) ^ ((u64)x.y >> 11);
    return (double)(v & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}
