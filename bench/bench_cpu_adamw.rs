//! Speed of the CPU AdamW steps against the machine's copy floor.
//!
//! Run: `cargo run --release --example bench_cpu_adamw [reps] [filter]` (default 7 repetitions;
//! with a filter, only the cases whose name contains it).
//! Each case reports the minimum over the repetitions (the minimum is the least disturbed by
//! other load on the machine), the bytes the step must move (read g, M, V, W; write M, V, W),
//! the rate, and that rate as a fraction of a memcpy of the same number of bytes measured the
//! same way. The steps use as many threads as the library allows; run under `taskset -c 0` to
//! see one thread.

use std::hint::black_box;

use half::bf16;

use grass::core::config::{AdamW, DecayMode, Side};
use grass::core::shape::Projected;
use grass::cpu::activations::Act;
use grass::cpu::adamw::{State, Weights};
use grass::cpu::{adamw_step, sparse_adamw_step};

#[path = "timing.rs"]
mod timing;
use timing::{min_time, vec_f32};

/// Seconds for a memcpy that moves `bytes` in all (reads half, writes half).
fn copy_floor(reps: usize, bytes: usize) -> f64 {
    let half = bytes / 2;
    let src = vec![1u8; half];
    let mut dst = vec![0u8; half];
    min_time(reps, || {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    })
}

fn wanted(name: &str) -> bool {
    std::env::args().nth(2).is_none_or(|f| name.contains(&f))
}

fn report(name: &str, reps: usize, bytes: usize, secs: f64) {
    let floor = copy_floor(reps, bytes);
    let gbs = bytes as f64 / secs / 1e9;
    let floor_gbs = bytes as f64 / floor / 1e9;
    println!(
        "{name:<44} {:>9.2} ms {:>8.2} GB/s   copy floor {:>6.2} GB/s   fraction {:.2}",
        secs * 1e3,
        gbs,
        floor_gbs,
        gbs / floor_gbs
    );
}

fn cfg() -> AdamW {
    AdamW {
        weight_decay: 0.01,
        decay_mode: DecayMode::Selected,
        ..AdamW::default()
    }
}

fn dense(reps: usize, rows: usize, cols: usize, bf16_weights: bool) {
    let wname = if bf16_weights { "bf16" } else { "f32" };
    let name = format!("adamw_step {rows}x{cols} W {wname}");
    if !wanted(&name) {
        return;
    }
    let n = rows * cols;
    let cfg = cfg();
    let g = vec_f32(1, n);
    let mut m = vec_f32(2, n);
    let mut v: Vec<f32> = vec_f32(3, n).iter().map(|x| x * x).collect();
    let mut w = vec_f32(4, n);
    let mut wb: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
    let mut step = 0;
    let wbytes = if bf16_weights { 2 } else { 4 };
    let bytes = n * (4 + 4 + 4 + wbytes) + n * (4 + 4 + wbytes);
    let secs = min_time(reps, || {
        let weights = if bf16_weights {
            Weights::Bf16(&mut wb)
        } else {
            Weights::F32(&mut w)
        };
        let out = adamw_step(
            &cfg,
            weights,
            Act::F32(&g),
            State::F32(&mut m),
            State::F32(&mut v),
            &mut step,
            1e-3,
            1.0,
        );
        assert!(!out.skipped);
    });
    report(&name, reps, bytes, secs);
}

fn sparse(reps: usize, r: usize, m_rows: usize, n: usize, side: Side) {
    let cfg = cfg();
    let p = Projected::new(m_rows, n, side);
    let k = p.k;
    let s = if side == Side::Rows { "rows" } else { "cols" };
    let name = format!("sparse_adamw_step r={r} k={k} W {m_rows}x{n} {s}");
    if !wanted(&name) {
        return;
    }
    let len = r * k;
    let g = vec_f32(5, len);
    let mut ms = vec_f32(6, len);
    let mut vs: Vec<f32> = vec_f32(7, len).iter().map(|x| x * x).collect();
    let mut w = vec_f32(8, m_rows * n);
    // r distinct indices spread over the projected dimension, sorted
    let indices: Vec<i32> = (0..r).map(|j| (j * p.d / r) as i32).collect();
    let scales = vec![1.0f32; r];
    let mut row_steps = vec![0i32; r];
    let bytes = len * (4 + 4 + 4 + 4) + len * (4 + 4 + 4);
    let secs = min_time(reps, || {
        let out = sparse_adamw_step(
            &cfg,
            &p,
            Weights::F32(&mut w),
            &indices,
            &scales,
            &g,
            State::F32(&mut ms),
            State::F32(&mut vs),
            &mut row_steps,
            1e-3,
            1.0,
        );
        assert!(!out.skipped);
    });
    report(&name, reps, bytes, secs);
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("reps must be a positive integer"))
        .unwrap_or(7);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("minimum of {reps} runs each; available_parallelism = {threads}");
    dense(reps, 4096, 4096, false);
    dense(reps, 4096, 4096, true);
    sparse(reps, 256, 4096, 4096, Side::Rows);
    sparse(reps, 1024, 5120, 5120, Side::Rows);
    sparse(reps, 256, 4096, 4096, Side::Cols);
}
