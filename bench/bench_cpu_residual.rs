//! What the full-rank residual costs on the CPU: `residual_step` (the residual's gradient in
//! row chunks, each chunk's signs applied at once) against the work plain GRASS does per step
//! (`sparse_grad`: r of the d rows) and against one full weight-gradient GEMM (`dW = dYᵀX`
//! into an m x n buffer, what AdamW's backward does), for the trainer's weights and larger ones.
//!
//! Run: `cargo run --release --example bench_cpu_residual [reps] [filter]` (default 5
//! repetitions; the minimum is reported, the least disturbed by other load). Each case prints
//! milliseconds and GFLOP/s (2·b·m·n flops for the full product and the residual, 2·b·r·k for
//! the sparse gradient) and the residual's time over the full GEMM's: the residual's floor is
//! that GEMM (the same flops) plus one pass over W.

use std::hint::black_box;

use grass::core::config::Side;
use grass::core::dtype::Dtype;
use grass::core::shape::Projected;
use grass::cpu::activations::Act;
use grass::cpu::adamw::Weights;
use grass::cpu::gemm::{matmul, View};
use grass::cpu::{
    residual_step, row_scores, scores_workspace_size, sparse_grad, sparse_grad_workspace_size,
    Activations,
};

#[path = "timing.rs"]
mod timing;
use timing::{min_time, vec_f32};

fn case(reps: usize, m: usize, n: usize, b: usize) {
    let name = format!("{m}x{n} b={b}");
    if let Some(f) = std::env::args().nth(2) {
        if !name.contains(&f) {
            return;
        }
    }
    let p = Projected::new(m, n, Side::Cols);
    let (d, k) = (p.d, p.k);
    let r = (d / 4).max(1);
    let x = vec_f32(1, b * n);
    let dy = vec_f32(2, b * m);
    let act = Activations {
        x: Act::F32(&x),
        dy: Act::F32(&dy),
        b,
    };
    let indices: Vec<i32> = (0..r).map(|j| (j * d / r) as i32).collect();
    let scales = vec![1.0f32; r];
    let mut w = vec_f32(3, m * n);

    let mut dw = vec![0.0f32; m * n];
    let full = min_time(reps, || {
        matmul(
            View::transposed(&dy, b, m),
            View::row_major(&x, b, n),
            &mut dw,
            false,
        );
        black_box(&mut dw);
    });

    let mut g = vec![0.0f32; r * k];
    let mut ws = vec![0u8; sparse_grad_workspace_size(&p, b, r, Dtype::F32)];
    let sparse = min_time(reps, || {
        sparse_grad(&p, &act, &indices, &scales, &mut g, false, &mut ws).unwrap();
        black_box(&mut g);
    });

    let mut ws = vec![0u8; scores_workspace_size(&p, b, Dtype::F32)];
    let mut sc = vec![0.0f32; d];
    let scores = min_time(reps, || {
        row_scores(&p, &act, &mut sc, &mut ws).unwrap();
        black_box(&mut sc);
    });
    let residual = min_time(reps, || {
        residual_step(&p, &act, &indices, Weights::F32(&mut w), 1e-6, &mut ws).unwrap();
        black_box(&mut w);
    });

    let flops = 2.0 * (b * m * n) as f64;
    let gf = |f: f64, s: f64| f / s / 1e9;
    println!(
        "{name:<22} r={r:<5} full dW {:>8.2} ms {:>6.1} GF/s | sparse_grad {:>7.2} ms {:>6.1} GF/s \
         | residual_step {:>8.2} ms {:>6.1} GF/s | residual / full dW {:.2}, / sparse_grad {:.1}",
        full * 1e3,
        gf(flops, full),
        sparse * 1e3,
        gf(2.0 * (b * r * k) as f64, sparse),
        residual * 1e3,
        gf(flops, residual),
        residual / full,
        residual / sparse,
    );
    println!(
        "    row_scores (the same chunks of G, no update) {:.2} ms",
        scores * 1e3
    );
}

fn main() {
    let reps = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // the trainer's long preset: 32 x 128 tokens; its attention and MLP weights
    case(reps, 128, 128, 4096);
    case(reps, 352, 128, 4096);
    case(reps, 128, 352, 4096);
    // wider layers
    case(reps, 1024, 1024, 2048);
    case(reps, 2816, 1024, 2048);
}
