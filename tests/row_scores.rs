//! `grass_row_scores` on the CPU backend: exact row norms of G on both sides, against a naive f64
//! reference, and a workspace that never holds the whole gradient.

mod common;

use common::*;
use grass::core::dtype::{tolerance, Dtype};
use grass::ffi::*;

#[test]
fn scores_are_exact_row_norms_on_both_sides() {
    let ctx = Ctx::cpu();
    for (side, m, n) in [
        (GRASS_SIDE_ROWS, 37, 23),
        (GRASS_SIDE_COLS, 23, 37),
        (GRASS_SIDE_AUTO, 19, 41),
    ] {
        let p = problem(m, n, 29, 5);
        let s = scores(&ctx, m, n, p.b, side, &p.x, &p.dy);
        let cols = side == GRASS_SIDE_COLS || (side == GRASS_SIDE_AUTO && n > m);
        let side_resolved = if cols {
            GRASS_SIDE_COLS
        } else {
            GRASS_SIDE_ROWS
        };
        let want: Vec<f64> = (0..s.len())
            .map(|i| {
                projected_row(&p, side_resolved, i)
                    .iter()
                    .map(|v| v * v)
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        assert_eq!(s.len(), if cols { n } else { m });
        compare("scores", &want, &s, tolerance(Dtype::F32, p.b)).unwrap();
    }
}

/// Row scores work in chunks: their scratch stays well under one m x n f32 gradient.
#[test]
fn score_workspace_never_holds_the_whole_gradient() {
    let ctx = Ctx::cpu();
    for (m, n) in [(64i64, 64i64), (512, 128), (128, 512), (4096, 1024)] {
        let mut ws = 0usize;
        check(unsafe {
            grass_scores_workspace_size(ctx.0, m, n, 1, GRASS_SIDE_AUTO, GRASS_DTYPE_F32, &mut ws)
        })
        .unwrap();
        assert!(
            ws * 2 < (m * n * 4) as usize,
            "{m} x {n}: scratch {ws} bytes"
        );
    }
}
