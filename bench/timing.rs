//! What the CPU benchmarks share (`#[path = "timing.rs"] mod timing;`): deterministic inputs
//! and the minimum-of-repetitions timer.

use std::time::Instant;

/// `n` deterministic values in [-1, 1) from `seed`.
pub fn vec_f32(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Minimum seconds of `reps` runs of `f` after one warm-up run (the minimum is the least
/// disturbed by other load on the machine).
pub fn min_time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
