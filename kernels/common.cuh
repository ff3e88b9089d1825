// Shared by every grass kernel: integer types, dtype codes and the f32 conversions of the
// 16-bit formats. Kernels are compiled by NVRTC without any CUDA header, so bf16 and f16 are
// plain 16-bit integers here; the conversions round to nearest even exactly like the `half`
// crate, so that rounding W or a bf16 state gives the same bits on CPU and GPU.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef long long i64;
typedef unsigned long long u64;

// Values of grass_dtype (tests/enum_codes.rs checks every code the kernels use against grass.h).
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2

__device__ __forceinline__ bool finite_f32(float x) {
    return (__float_as_uint(x) & 0x7F800000u) != 0x7F800000u;
}

__device__ __forceinline__ bool finite_f64(double x) {
    return (((u64)__double_as_longlong(x)) & 0x7FF0000000000000ull) != 0x7FF0000000000000ull;
}

__device__ __forceinline__ float bf16_to_f32(u16 h) {
    return __uint_as_float(((u32)h) << 16);
}

__device__ __forceinline__ u16 f32_to_bf16(float value) {
    u32 x = __float_as_uint(value);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
        return (u16)((x >> 16) | 0x0040u); // NaN stays NaN (quiet)
    }
    const u32 round_bit = 0x00008000u;
    if ((x & round_bit) != 0 && (x & (3 * round_bit - 1)) != 0) {
        return (u16)((x >> 16) + 1);
    }
    return (u16)(x >> 16);
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    u32 sign = ((u32)h & 0x8000u) << 16;
    u32 exp = ((u32)h >> 10) & 0x1Fu;
    u32 man = (u32)h & 0x3FFu;
    if (exp == 0x1Fu) {
        return __uint_as_float(sign | 0x7F800000u | (man << 13));
    }
    if (exp == 0) {
        float f = (float)man * 5.9604644775390625e-8f; // man * 2^-24, exact
        return sign ? -f : f;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

__device__ __forceinline__ u16 f32_to_f16(float value) {
    u32 x = __float_as_uint(value);
    u32 sign = x & 0x80000000u;
    u32 exp = x & 0x7F800000u;
    u32 man = x & 0x007FFFFFu;
    if (exp == 0x7F800000u) {
        u32 nan_bit = man == 0 ? 0u : 0x0200u;
        return (u16)((sign >> 16) | 0x7C00u | nan_bit | (man >> 13));
    }
    u32 half_sign = sign >> 16;
    i32 half_exp = (i32)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1F) {
        return (u16)(half_sign | 0x7C00u);
    }
    if (half_exp <= 0) {
        if (14 - half_exp > 24) {
            return (u16)half_sign;
        }
        u32 m = man | 0x00800000u;
        u32 half_man = m >> (14 - half_exp);
        u32 round_bit = 1u << (13 - half_exp);
        if ((m & round_bit) != 0 && (m & (3 * round_bit - 1)) != 0) {
            half_man += 1;
        }
        return (u16)(half_sign | half_man);
    }
    u32 bits = half_sign | ((u32)half_exp << 10) | (man >> 13);
    const u32 round_bit = 0x00001000u;
    if ((man & round_bit) != 0 && (man & (3 * round_bit - 1)) != 0) {
        bits += 1;
    }
    return (u16)bits;
}

// Element i of a tensor of dtype `dt`, as f32.
__device__ __forceinline__ float load_as_f32(const void* p, int dt, u64 i) {
    if (dt == DT_F32) return ((const float*)p)[i];
    u16 h = ((const u16*)p)[i];
    return dt == DT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

// Stores v into element i of a tensor of dtype `dt`, rounding to nearest even.
__device__ __forceinline__ void store_from_f32(void* p, int dt, u64 i, float v) {
    if (dt == DT_F32) {
        ((float*)p)[i] = v;
    } else {
        ((u16*)p)[i] = dt == DT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    }
}

// A quiet NaN of dtype `dt`, as raw bits (marks values computed from an invalid index).
__device__ __forceinline__ u32 nan_bits(int dt) {
    return dt == DT_F32 ? 0x7FC00000u : (dt == DT_BF16 ? 0x7FC0u : 0x7E00u);
}

// Index of this thread across the grid in x, and the grid's width in threads.
__device__ __forceinline__ u64 global_x() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ u64 grid_x() {
    return (u64)gridDim.x * blockDim.x;
}
