// The state remap at a refresh (`grass_state_refresh`) in carry mode: `carry_rows` moves each
// kept row of M, V and the step counts to its new position in place. (Reset mode is a memset.)
//
// The pairing mirrors src/cpu/adamw.rs (carry_partner, carry_rows) exactly.
#include "common.cuh"

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
