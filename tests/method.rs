//! The GRASS method through the C ABI on the CPU backend: projections against naive f64
//! references, the statistics of every selection method, and the optimizer over many steps.

mod common;

use std::ptr;

use common::*;
use grass::core::dtype::{tolerance, Dtype};
use grass::ffi::*;

const METHODS: [grass_method; 5] = [
    GRASS_METHOD_TOP_R,
    GRASS_METHOD_MULTINOMIAL,
    GRASS_METHOD_MULTINOMIAL_NR,
    GRASS_METHOD_UNIFORM,
    GRASS_METHOD_UNIFORM_NR,
];

struct Problem {
    m: usize,
    n: usize,
    b: usize,
    x: Vec<f32>,
    dy: Vec<f32>,
    g: Vec<f64>,
}

fn problem(m: usize, n: usize, b: usize, seed: u64) -> Problem {
    let mut rng = Rng(seed);
    let x = rng.vec(b * n);
    // rows of dY with different magnitudes give rows of G with different norms
    let dy: Vec<f32> = (0..b * m)
        .map(|e| rng.sym() * (1.0 + (e % m) as f32 * 0.3))
        .collect();
    let g = full_grad(&x, &dy, b, m, n);
    Problem { m, n, b, x, dy, g }
}

/// Row `i` of the projected side of G (a row of G, or a column for side COLS).
fn projected_row(p: &Problem, side: grass_side, i: usize) -> Vec<f64> {
    if side == GRASS_SIDE_COLS {
        (0..p.m).map(|r| p.g[r * p.n + i]).collect()
    } else {
        p.g[i * p.n..(i + 1) * p.n].to_vec()
    }
}

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

#[test]
fn sparse_grad_equals_selected_rows_of_g_and_accumulates() {
    let ctx = Ctx::cpu();
    for side in [GRASS_SIDE_ROWS, GRASS_SIDE_COLS] {
        let p = problem(31, 17, 13, 9);
        let (d, k) = if side == GRASS_SIDE_ROWS {
            (p.m, p.n)
        } else {
            (p.n, p.m)
        };
        let idx: Vec<i32> = vec![0, 3, 3, 7, (d - 1) as i32];
        let sc: Vec<f32> = vec![0.5, 1.5, -2.0, 1.0, 3.0];
        let mut g = vec![f32::NAN; idx.len() * k];
        sparse_grad(
            &ctx, p.m, p.n, p.b, side, &p.x, &p.dy, &idx, &sc, &mut g, false,
        );
        let mut want = vec![];
        for (j, &i) in idx.iter().enumerate() {
            want.extend(
                projected_row(&p, side, i as usize)
                    .iter()
                    .map(|v| v * sc[j] as f64),
            );
        }
        compare("g", &want, &g, tolerance(Dtype::F32, p.b)).unwrap();
        sparse_grad(
            &ctx, p.m, p.n, p.b, side, &p.x, &p.dy, &idx, &sc, &mut g, true,
        );
        let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
        compare("accumulated g", &twice, &g, tolerance(Dtype::F32, p.b)).unwrap();
    }
}

#[test]
fn half_precision_inputs_match_the_reference() {
    let ctx = Ctx::cpu();
    let p = problem(24, 40, 16, 3);
    for (dtype, code) in [
        (Dtype::Bf16, GRASS_DTYPE_BF16),
        (Dtype::F16, GRASS_DTYPE_F16),
    ] {
        let conv = |v: &[f32]| -> Vec<u16> {
            v.iter()
                .map(|&f| {
                    if dtype == Dtype::Bf16 {
                        half::bf16::from_f32(f).to_bits()
                    } else {
                        half::f16::from_f32(f).to_bits()
                    }
                })
                .collect()
        };
        let back = |v: &[u16]| -> Vec<f32> {
            v.iter()
                .map(|&b| {
                    if dtype == Dtype::Bf16 {
                        half::bf16::from_bits(b).to_f32()
                    } else {
                        half::f16::from_bits(b).to_f32()
                    }
                })
                .collect()
        };
        let (xh, dyh) = (conv(&p.x), conv(&p.dy));
        let gref = full_grad(&back(&xh), &back(&dyh), p.b, p.m, p.n);
        let idx = [1i32, 5, 9, 20];
        let sc = [1.0f32, 2.0, 0.5, 1.0];
        let mut ws = 0usize;
        let mut g = vec![f32::NAN; 4 * p.n];
        unsafe {
            check(grass_sparse_grad_workspace_size(
                ctx.0,
                24,
                40,
                16,
                GRASS_SIDE_ROWS,
                4,
                code,
                &mut ws,
            ))
            .unwrap();
            let mut w = vec![0u8; ws];
            check(grass_sparse_grad(
                ctx.0,
                24,
                40,
                16,
                GRASS_SIDE_ROWS,
                4,
                code,
                xh.as_ptr().cast(),
                dyh.as_ptr().cast(),
                idx.as_ptr(),
                sc.as_ptr(),
                g.as_mut_ptr(),
                0,
                w.as_mut_ptr().cast(),
                ws,
                ptr::null_mut(),
            ))
            .unwrap();
        }
        let want: Vec<f64> = idx
            .iter()
            .zip(sc)
            .flat_map(|(&i, s)| {
                gref[i as usize * p.n..(i as usize + 1) * p.n]
                    .iter()
                    .map(move |v| v * s as f64)
            })
            .collect();
        // inputs are exact in f32 after conversion; only the f32 accumulation rounds
        compare(dtype.name(), &want, &g, tolerance(Dtype::F32, p.b)).unwrap();
    }
}

#[test]
fn selection_is_sorted_in_range_and_deterministic() {
    let ctx = Ctx::cpu();
    let mut rng = Rng(11);
    let s: Vec<f32> = (0..300).map(|_| rng.sym().abs() + 0.01).collect();
    for method in METHODS {
        for r in [1, 7, 150, 300] {
            let cfg = pcfg(r, method, GRASS_SCALING_UNBIASED, GRASS_SIDE_ROWS);
            let (idx, sc) = select(&ctx, &cfg, &s, 3);
            assert!(idx.windows(2).all(|w| w[0] <= w[1]), "{method}: not sorted");
            assert!(idx.iter().all(|&i| (0..300).contains(&i)));
            assert!(sc.iter().all(|v| v.is_finite() && *v > 0.0));
            if matches!(
                method,
                GRASS_METHOD_TOP_R | GRASS_METHOD_MULTINOMIAL_NR | GRASS_METHOD_UNIFORM_NR
            ) {
                assert!(
                    idx.windows(2).all(|w| w[0] < w[1]),
                    "method {method} r {r}: repeated index"
                );
            }
            assert_eq!(
                (idx.clone(), sc.clone()),
                select(&ctx, &cfg, &s, 3),
                "same inputs, same bits"
            );
            assert_eq!(
                (idx.clone(), sc.clone()),
                select_at(&ctx, &cfg, &s, 3),
                "index from memory"
            );
            let mut other = cfg;
            other.seed = 99;
            if method != GRASS_METHOD_TOP_R && r > 1 && r < 300 {
                assert_ne!(
                    idx,
                    select(&ctx, &other, &s, 3).0,
                    "seed must matter for {method}"
                );
                assert_ne!(
                    idx,
                    select(&ctx, &cfg, &s, 4).0,
                    "refresh index must matter for {method}"
                );
            }
        }
    }
}

#[test]
fn top_r_takes_the_largest_with_ties_to_the_lower_index() {
    let ctx = Ctx::cpu();
    let s = [1.0f32, 5.0, 3.0, 5.0, 0.5, 3.0, 2.0];
    let (idx, sc) = select(
        &ctx,
        &pcfg(
            3,
            GRASS_METHOD_TOP_R,
            GRASS_SCALING_UNBIASED,
            GRASS_SIDE_ROWS,
        ),
        &s,
        0,
    );
    assert_eq!(idx, vec![1, 2, 3]);
    assert_eq!(sc, vec![1.0; 3]);
}

#[test]
fn uniform_scales_and_scaling_none() {
    let ctx = Ctx::cpu();
    let s = vec![1.0f32; 64];
    let (_, sc) = select(
        &ctx,
        &pcfg(
            16,
            GRASS_METHOD_UNIFORM_NR,
            GRASS_SCALING_UNBIASED,
            GRASS_SIDE_ROWS,
        ),
        &s,
        0,
    );
    assert!(sc.iter().all(|&v| v == 2.0), "sqrt(64/16) = 2");
    for method in METHODS {
        let (_, sc) = select(
            &ctx,
            &pcfg(16, method, GRASS_SCALING_NONE, GRASS_SIDE_ROWS),
            &s,
            0,
        );
        assert!(sc.iter().all(|&v| v == 1.0));
    }
}

#[test]
fn degenerate_scores_fall_back_safely() {
    let ctx = Ctx::cpu();
    let zeros = vec![0.0f32; 20];
    let mut poisoned = vec![1.0f32; 20];
    poisoned[3] = f32::NAN;
    poisoned[4] = f32::INFINITY;
    poisoned[5] = -2.0;
    let all_bad = vec![f32::NAN; 20];
    for s in [&zeros, &poisoned, &all_bad] {
        for method in METHODS {
            let (idx, sc) = select(
                &ctx,
                &pcfg(8, method, GRASS_SCALING_UNBIASED, GRASS_SIDE_ROWS),
                s,
                1,
            );
            assert!(idx.iter().all(|&i| (0..20).contains(&i)));
            assert!(sc.iter().all(|v| v.is_finite() && *v > 0.0));
            if s == &poisoned && method != GRASS_METHOD_UNIFORM && method != GRASS_METHOD_UNIFORM_NR
            {
                assert!(
                    !idx.iter().any(|&i| (3..=5).contains(&i)),
                    "{method}: a bad score was preferred: {idx:?}"
                );
            }
        }
    }
    // fewer positive scores than r: those rows are certain, the rest spread over zero rows
    let mut few = vec![0.0f32; 10];
    few[2] = 1.0;
    few[7] = 4.0;
    let (idx, sc) = select(
        &ctx,
        &pcfg(
            4,
            GRASS_METHOD_MULTINOMIAL_NR,
            GRASS_SCALING_UNBIASED,
            GRASS_SIDE_ROWS,
        ),
        &few,
        0,
    );
    assert!(idx.contains(&2) && idx.contains(&7));
    for (i, s) in idx.iter().zip(sc) {
        let want = if *i == 2 || *i == 7 {
            1.0
        } else {
            (8.0f32 / 2.0).sqrt()
        };
        assert!((s - want).abs() < 1e-6, "row {i}: scale {s}, want {want}");
    }
}

/// E[P Pᵀ G] = G for every unbiased method: the mean over many refreshes of the scattered,
/// twice-scaled selected rows approaches G within 5 standard errors (per element).
#[test]
fn unbiased_methods_are_unbiased() {
    let ctx = Ctx::cpu();
    let p = problem(12, 5, 9, 21);
    let s = scores(&ctx, p.m, p.n, p.b, GRASS_SIDE_ROWS, &p.x, &p.dy);
    let trials = 4000usize;
    for method in [
        GRASS_METHOD_MULTINOMIAL,
        GRASS_METHOD_MULTINOMIAL_NR,
        GRASS_METHOD_UNIFORM,
        GRASS_METHOD_UNIFORM_NR,
    ] {
        for power in [1, 2] {
            let mut cfg = pcfg(4, method, GRASS_SCALING_UNBIASED, GRASS_SIDE_ROWS);
            cfg.power = power;
            let (mut sum, mut sumsq) = (vec![0.0f64; p.m * p.n], vec![0.0f64; p.m * p.n]);
            for t in 0..trials {
                let (idx, sc) = select(&ctx, &cfg, &s, t as u32);
                let mut est = vec![0.0f64; p.m * p.n];
                for (&i, &rho) in idx.iter().zip(&sc) {
                    let i = i as usize;
                    for c in 0..p.n {
                        est[i * p.n + c] += (rho as f64) * (rho as f64) * p.g[i * p.n + c];
                    }
                }
                for e in 0..est.len() {
                    sum[e] += est[e];
                    sumsq[e] += est[e] * est[e];
                }
            }
            for e in 0..p.g.len() {
                let mean = sum[e] / trials as f64;
                let var = (sumsq[e] / trials as f64 - mean * mean).max(0.0);
                let se = (var / trials as f64).sqrt();
                assert!(
                    (mean - p.g[e]).abs() <= 5.0 * se + 1e-9 * p.g[e].abs(),
                    "method {method} p {power}: element {e} mean {mean} vs G {} (se {se})",
                    p.g[e]
                );
            }
        }
    }
}

/// Inclusion frequencies of multinomial_nr match π_i = min(1, c·q_i).
#[test]
fn multinomial_nr_has_the_stated_inclusion_probabilities() {
    let ctx = Ctx::cpu();
    let s = [10.0f32, 1.0, 1.0, 2.0, 3.0, 0.5, 4.0, 1.5];
    let r = 3;
    let cfg = pcfg(
        r,
        GRASS_METHOD_MULTINOMIAL_NR,
        GRASS_SCALING_UNBIASED,
        GRASS_SIDE_ROWS,
    );
    let trials = 6000;
    let mut hits = [0usize; 8];
    let mut pis = [0.0f64; 8];
    for t in 0..trials {
        let (idx, sc) = select(&ctx, &cfg, &s, t);
        assert_eq!(idx.len(), r as usize);
        for (&i, &rho) in idx.iter().zip(&sc) {
            hits[i as usize] += 1;
            pis[i as usize] = 1.0 / (rho as f64 * rho as f64);
        }
    }
    let w: Vec<f64> = s.iter().map(|v| (*v as f64).powi(2)).collect();
    assert!((pis[0] - 1.0).abs() < 1e-6, "the dominant row is certain");
    let rest: f64 = w[1..].iter().sum();
    for i in 1..8 {
        let pi = (r as f64 - 1.0) * w[i] / rest;
        assert!(
            (pis[i] - pi).abs() < 1e-5 || hits[i] == 0,
            "row {i}: scale says π = {}, expected {pi}",
            pis[i]
        );
        let freq = hits[i] as f64 / trials as f64;
        let se = (pi * (1.0 - pi) / trials as f64).sqrt();
        assert!(
            (freq - pi).abs() < 5.0 * se + 1e-3,
            "row {i}: frequency {freq}, π {pi}"
        );
    }
    assert_eq!(hits[0], trials as usize);
}

fn adamw(wd: f32, mode: grass_decay_mode) -> grass_adamw_config {
    let mut a = grass_adamw_config::defaults();
    a.weight_decay = wd;
    a.decay_mode = mode;
    a
}

/// With r = m, top_r and no scaling, the compressed step is plain AdamW, bit for bit.
#[test]
fn full_rank_top_r_equals_adamw_for_50_steps() {
    let ctx = Ctx::cpu();
    let (m, n) = (9usize, 6usize);
    let mut rng = Rng(5);
    for (wd, mode) in [
        (0.0, GRASS_DECAY_OFF),
        (0.1, GRASS_DECAY_SELECTED),
        (0.1, GRASS_DECAY_DENSE),
    ] {
        let cfg = adamw(wd, mode);
        let w0 = rng.vec(m * n);
        let (mut ws, mut wd_) = (w0.clone(), w0.clone());
        let (mut ms, mut vs, mut md, mut vd) = (
            vec![0f32; m * n],
            vec![0f32; m * n],
            vec![0f32; m * n],
            vec![0f32; m * n],
        );
        let (mut ss, mut sd) = (vec![0i32; m], 0i32);
        let idx: Vec<i32> = (0..m as i32).collect();
        let sc = vec![1.0f32; m];
        for step in 0..50 {
            let g = rng.vec(m * n);
            let lr = 1e-2 / (1.0 + step as f32);
            sparse_adamw_step(
                &ctx,
                &cfg,
                (m, n),
                GRASS_SIDE_ROWS,
                GRASS_DTYPE_F32,
                ws.as_mut_ptr().cast(),
                &idx,
                &sc,
                &g,
                (ms.as_mut_ptr().cast(), vs.as_mut_ptr().cast()),
                &mut ss,
                lr,
                ptr::null_mut(),
            );
            adamw_step(
                &ctx,
                &cfg,
                &mut wd_,
                &g,
                &mut md,
                &mut vd,
                &mut sd,
                lr,
                ptr::null_mut(),
            );
            assert_eq!(ws, wd_, "weights differ at step {step} (decay mode {mode})");
            assert_eq!((ms.clone(), vs.clone()), (md.clone(), vd.clone()));
        }
        assert_eq!(ss, vec![50; m]);
        assert_ne!(ws, w0);
    }
}

/// Side COLS updates columns of W; duplicates add into one column.
#[test]
fn cols_side_updates_columns_and_duplicates_add() {
    let ctx = Ctx::cpu();
    let (m, n, r) = (4usize, 10usize, 3usize);
    let mut rng = Rng(8);
    let w0 = rng.vec(m * n);
    let g = rng.vec(r * m);
    let idx = [2i32, 2, 7];
    let sc = [1.0f32, 0.5, 2.0];
    let cfg = adamw(0.0, GRASS_DECAY_OFF);
    let mut w = w0.clone();
    let (mut ms, mut vs, mut step, mut skipped) =
        (vec![0f32; r * m], vec![0f32; r * m], vec![0i32; r], -1i32);
    let lr = 0.1f32;
    sparse_adamw_step(
        &ctx,
        &cfg,
        (m, n),
        GRASS_SIDE_COLS,
        GRASS_DTYPE_F32,
        w.as_mut_ptr().cast(),
        &idx,
        &sc,
        &g,
        (ms.as_mut_ptr().cast(), vs.as_mut_ptr().cast()),
        &mut step,
        lr,
        &mut skipped,
    );
    assert_eq!(skipped, 0);
    // first Adam step: u = g / (|g| + eps) ≈ sign(g)
    for row in 0..m {
        for col in 0..n {
            let mut want = w0[row * n + col] as f64;
            for j in 0..r {
                if idx[j] as usize == col {
                    let gj = g[j * m + row] as f64;
                    want -= lr as f64 * sc[j] as f64 * gj / (gj.abs() + 1e-8);
                }
            }
            let got = w[row * n + col] as f64;
            assert!(
                (got - want).abs() < 1e-5,
                "W[{row},{col}] = {got}, want {want}"
            );
        }
    }
}

#[test]
fn non_finite_gradient_skips_the_step_and_writes_nothing() {
    let ctx = Ctx::cpu();
    let (m, n, r) = (6usize, 4usize, 2usize);
    let cfg = adamw(0.1, GRASS_DECAY_DENSE);
    let mut rng = Rng(2);
    let w0 = rng.vec(m * n);
    let (m0, v0) = (
        rng.vec(r * n),
        rng.vec(r * n).iter().map(|v| v.abs()).collect::<Vec<_>>(),
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut g = rng.vec(r * n);
        g[5] = bad;
        let (mut w, mut ms, mut vs, mut steps, mut step, mut skipped) =
            (w0.clone(), m0.clone(), v0.clone(), [7i32, 2], 7i32, -1i32);
        sparse_adamw_step(
            &ctx,
            &cfg,
            (m, n),
            GRASS_SIDE_ROWS,
            GRASS_DTYPE_F32,
            w.as_mut_ptr().cast(),
            &[1i32, 4],
            &[1.0f32, 1.0],
            &g,
            (ms.as_mut_ptr().cast(), vs.as_mut_ptr().cast()),
            &mut steps,
            0.1,
            &mut skipped,
        );
        assert_eq!((skipped, steps), (GRASS_STEP_SKIPPED_NONFINITE, [7, 2]));
        assert_eq!((w, ms, vs), (w0.clone(), m0.clone(), v0.clone()));
        let mut dense_g = rng.vec(m * n);
        dense_g[0] = bad;
        let (mut w, mut ms, mut vs) = (w0.clone(), vec![0.5f32; m * n], vec![0.5f32; m * n]);
        adamw_step(
            &ctx,
            &cfg,
            &mut w,
            &dense_g,
            &mut ms,
            &mut vs,
            &mut step,
            0.1,
            &mut skipped,
        );
        assert_eq!((skipped, step), (1, 7));
        assert_eq!(w, w0);
        assert!(ms.iter().chain(&vs).all(|&v| v == 0.5));
    }
}

/// A negative step count is a caller's mistake (a count of 0 would give zero bias
/// corrections and NaN weights): the CPU rejects it, naming the argument, and writes nothing.
#[test]
fn negative_step_counts_are_rejected() {
    let ctx = Ctx::cpu();
    let (m, n, r) = (6usize, 4usize, 2usize);
    let cfg = adamw(0.1, GRASS_DECAY_DENSE);
    let mut rng = Rng(12);
    let (w0, g) = (rng.vec(m * n), rng.vec(r * n));
    let (mut w, mut ms, mut vs, mut steps, mut skipped) = (
        w0.clone(),
        vec![0f32; r * n],
        vec![0f32; r * n],
        [3i32, -1],
        -7i32,
    );
    let status = unsafe {
        grass_sparse_adamw_step(
            ctx.0,
            &cfg,
            m as i64,
            n as i64,
            GRASS_SIDE_ROWS,
            r as i64,
            GRASS_DTYPE_F32,
            w.as_mut_ptr().cast(),
            [1i32, 4].as_ptr(),
            [1.0f32; 2].as_ptr(),
            g.as_ptr(),
            ms.as_mut_ptr().cast(),
            vs.as_mut_ptr().cast(),
            steps.as_mut_ptr(),
            0.1,
            ptr::null(),
            &mut skipped,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
        )
    };
    let (code, err) = check(status).unwrap_err();
    assert_eq!(code, grass_status::GRASS_ERROR_INVALID_VALUE);
    assert!(err.contains("row_steps[1] = -1"), "{err}");
    assert_eq!((w, steps, skipped), (w0.clone(), [3, -1], -7));
    assert!(ms.iter().chain(&vs).all(|&v| v == 0.0));
    let (mut w, mut md, mut vd, mut step) =
        (w0.clone(), vec![0f32; m * n], vec![0f32; m * n], -2i32);
    let status = unsafe {
        grass_adamw_step(
            ctx.0,
            &cfg,
            (m * n) as i64,
            GRASS_DTYPE_F32,
            w.as_mut_ptr().cast(),
            GRASS_DTYPE_F32,
            w0.as_ptr().cast(),
            md.as_mut_ptr().cast(),
            vd.as_mut_ptr().cast(),
            &mut step,
            0.1,
            ptr::null(),
            ptr::null_mut(),
            ptr::null_mut(),
            0,
            ptr::null_mut(),
        )
    };
    let (code, err) = check(status).unwrap_err();
    assert_eq!(code, grass_status::GRASS_ERROR_INVALID_VALUE);
    assert!(err.contains("step[0] = -2"), "{err}");
    assert_eq!((w, step), (w0, -2));
}

/// Counts saturate instead of wrapping: a row at 2^31 - 1 steps keeps stepping with bias
/// corrections of 1.
#[test]
fn step_counts_saturate() {
    let ctx = Ctx::cpu();
    let (m, n) = (3usize, 2usize);
    let cfg = adamw(0.0, GRASS_DECAY_OFF);
    let mut w = vec![0.5f32; m * n];
    let (mut ms, mut vs, mut steps) = (vec![0f32; n], vec![0f32; n], [i32::MAX]);
    sparse_adamw_step(
        &ctx,
        &cfg,
        (m, n),
        GRASS_SIDE_ROWS,
        GRASS_DTYPE_F32,
        w.as_mut_ptr().cast(),
        &[2],
        &[1.0],
        &[1.0, -1.0],
        (ms.as_mut_ptr().cast(), vs.as_mut_ptr().cast()),
        &mut steps,
        0.1,
        ptr::null_mut(),
    );
    assert_eq!(steps, [i32::MAX]);
    assert!(w.iter().all(|v| v.is_finite()));
    assert!(
        w[4] < 0.5 && w[5] > 0.5,
        "the row moved against its gradient: {w:?}"
    );
}

/// Carry moves rows in place; on random selections with repeats, rows moving both ways and
/// rows leaving, it must put every row where an out-of-place merge of the two lists says.
#[test]
fn carry_in_place_matches_an_out_of_place_merge() {
    let ctx = Ctx::cpu();
    let (r, k) = (24usize, 3usize);
    let mut cfg = adamw(0.0, GRASS_DECAY_OFF);
    cfg.refresh_mode = GRASS_REFRESH_CARRY;
    let mut rng = Rng(31);
    for trial in 0..200 {
        let d = [2u64, 5, 12, 40][trial % 4];
        let sorted = |rng: &mut Rng| {
            let mut v: Vec<i32> = (0..r).map(|_| (rng.next_u64() % d) as i32).collect();
            v.sort_unstable();
            v
        };
        let (old, new) = (sorted(&mut rng), sorted(&mut rng));
        let (m0, v0) = (rng.vec(r * k), rng.vec(r * k));
        let steps0: Vec<i32> = (0..r as i32).map(|j| 1 + j).collect();
        let (mut ms, mut vs, mut steps) = (m0.clone(), v0.clone(), steps0.clone());
        refresh(
            &ctx,
            &cfg,
            k,
            Some(&old),
            &new,
            &mut ms,
            &mut vs,
            &mut steps,
        );
        let mut a = 0;
        for (b, &val) in new.iter().enumerate() {
            while a < r && old[a] < val {
                a += 1;
            }
            let from = (a < r && old[a] == val).then(|| {
                a += 1;
                a - 1
            });
            let row = |x: &[f32], i: usize| x[i * k..(i + 1) * k].to_vec();
            let what = format!("trial {trial}: new row {b} of {new:?} from {old:?}");
            match from {
                Some(f) => {
                    assert_eq!(row(&ms, b), row(&m0, f), "M, {what}");
                    assert_eq!(row(&vs, b), row(&v0, f), "V, {what}");
                    assert_eq!(steps[b], steps0[f], "count, {what}");
                }
                None => {
                    assert!(
                        row(&ms, b).iter().chain(&row(&vs, b)).all(|&x| x == 0.0),
                        "{what}"
                    );
                    assert_eq!(steps[b], 0, "count, {what}");
                }
            }
        }
    }
}

#[test]
fn carry_keeps_exactly_the_surviving_rows() {
    let ctx = Ctx::cpu();
    let (r, k) = (4usize, 3usize);
    let mut cfg = adamw(0.0, GRASS_DECAY_OFF);
    cfg.refresh_mode = GRASS_REFRESH_CARRY;
    let old = [1i32, 3, 3, 8];
    let new = [0i32, 3, 8, 9];
    let m0: Vec<f32> = (0..r * k).map(|e| e as f32 + 1.0).collect();
    let v0: Vec<f32> = (0..r * k).map(|e| e as f32 + 100.0).collect();
    let (mut ms, mut vs, mut steps) = (m0.clone(), v0.clone(), [5i32, 6, 7, 8]);
    refresh(
        &ctx,
        &cfg,
        k,
        Some(&old),
        &new,
        &mut ms,
        &mut vs,
        &mut steps,
    );
    // new row 1 (index 3) takes old row 1 (first 3), new row 2 (index 8) old row 3; others zero
    let want = |src: &[f32]| -> Vec<f32> {
        let mut o = vec![0f32; r * k];
        o[k..2 * k].copy_from_slice(&src[k..2 * k]);
        o[2 * k..3 * k].copy_from_slice(&src[3 * k..4 * k]);
        o
    };
    assert_eq!(ms, want(&m0));
    assert_eq!(vs, want(&v0));
    assert_eq!(steps, [0, 6, 8, 0], "step counts move with their rows");
    cfg.refresh_mode = GRASS_REFRESH_RESET;
    refresh(
        &ctx,
        &cfg,
        k,
        Some(&old),
        &new,
        &mut ms,
        &mut vs,
        &mut steps,
    );
    assert!(ms.iter().chain(&vs).all(|&v| v == 0.0));
    assert_eq!(steps, [0; 4]);
}

/// With carry every state row is an Adam parameter of its own: rows that stay selected keep
/// their moments and step counts, entering rows start fresh (their first update is ≈ sign(g),
/// not inflated by the layer's step count). Checked against a per-row f64 reference over
/// refreshes whose selections overlap, leave and re-enter.
#[test]
fn carry_runs_each_row_as_its_own_adam() {
    let ctx = Ctx::cpu();
    let (m, n, r) = (12usize, 5usize, 4usize);
    let mut cfg = adamw(0.0, GRASS_DECAY_OFF);
    cfg.refresh_mode = GRASS_REFRESH_CARRY;
    let mut rng = Rng(21);
    let w0 = rng.vec(m * n);
    let mut w = w0.clone();
    let (mut ms, mut vs, mut steps) = (vec![0f32; r * n], vec![0f32; r * n], vec![0i32; r]);
    let mut want_w: Vec<f64> = w0.iter().map(|&v| v as f64).collect();
    let (mut ref_m, mut ref_v, mut ref_t) = (vec![0f64; m * n], vec![0f64; m * n], vec![0i32; m]);
    let (b1, b2, eps, alpha) = (
        cfg.beta1 as f64,
        cfg.beta2 as f64,
        cfg.eps as f64,
        cfg.alpha as f64,
    );
    let sc = vec![1.0f32; r];
    let lr = 1e-2f32;
    let selections: [[i32; 4]; 4] = [[0, 3, 5, 9], [3, 5, 7, 11], [0, 3, 7, 9], [0, 3, 7, 9]];
    let mut old: Option<[i32; 4]> = None;
    for sel in selections {
        refresh(
            &ctx,
            &cfg,
            n,
            old.as_ref().map(|o| &o[..]),
            &sel,
            &mut ms,
            &mut vs,
            &mut steps,
        );
        for i in 0..m {
            if !sel.contains(&(i as i32)) {
                ref_t[i] = 0;
                ref_m[i * n..(i + 1) * n].fill(0.0);
                ref_v[i * n..(i + 1) * n].fill(0.0);
            }
        }
        for _ in 0..6 {
            let g = rng.vec(r * n);
            sparse_adamw_step(
                &ctx,
                &cfg,
                (m, n),
                GRASS_SIDE_ROWS,
                GRASS_DTYPE_F32,
                w.as_mut_ptr().cast(),
                &sel,
                &sc,
                &g,
                (ms.as_mut_ptr().cast(), vs.as_mut_ptr().cast()),
                &mut steps,
                lr,
                ptr::null_mut(),
            );
            for (j, &i) in sel.iter().enumerate() {
                let i = i as usize;
                ref_t[i] += 1;
                let t = ref_t[i];
                for c in 0..n {
                    let (e, gv) = (i * n + c, g[j * n + c] as f64);
                    ref_m[e] = b1 * ref_m[e] + (1.0 - b1) * gv;
                    ref_v[e] = b2 * ref_v[e] + (1.0 - b2) * gv * gv;
                    let u = (ref_m[e] / (1.0 - b1.powi(t)))
                        / ((ref_v[e] / (1.0 - b2.powi(t))).sqrt() + eps);
                    want_w[e] -= lr as f64 * alpha * u;
                }
            }
        }
        let counts: Vec<i32> = sel.iter().map(|&i| ref_t[i as usize]).collect();
        assert_eq!(steps, counts, "step counts after selection {sel:?}");
        for e in 0..m * n {
            assert!(
                (w[e] as f64 - want_w[e]).abs() < 2e-5,
                "W[{e}] = {} but the per-row reference gives {} (selection {sel:?})",
                w[e],
                want_w[e]
            );
        }
        old = Some(sel);
    }
    assert_eq!(
        steps,
        [12, 24, 18, 12],
        "rows 0, 3, 7, 9 were selected 2, 4, 3, 2 times"
    );
}

/// Low-precision weights and states: one step against an f64 evaluation of the same formula.
#[test]
fn bf16_and_f16_weights_and_bf16_state() {
    let ctx = Ctx::cpu();
    let (m, n, r) = (8usize, 16usize, 3usize);
    let mut rng = Rng(4);
    let w32 = rng.vec(m * n);
    let g = rng.vec(r * n);
    let idx = [0i32, 5, 6];
    let sc = [1.0f32, 2.0, 0.5];
    let lr = 0.01f32;
    for (wcode, state) in [
        (GRASS_DTYPE_BF16, GRASS_DTYPE_F32),
        (GRASS_DTYPE_F16, GRASS_DTYPE_BF16),
        (GRASS_DTYPE_F32, GRASS_DTYPE_BF16),
    ] {
        let mut cfg = adamw(0.0, GRASS_DECAY_OFF);
        cfg.state_dtype = state;
        let to16 = |v: f32| {
            if wcode == GRASS_DTYPE_BF16 {
                half::bf16::from_f32(v).to_bits()
            } else {
                half::f16::from_f32(v).to_bits()
            }
        };
        let from16 = |b: u16| {
            if wcode == GRASS_DTYPE_BF16 {
                half::bf16::from_bits(b).to_f32()
            } else {
                half::f16::from_bits(b).to_f32()
            }
        };
        let mut w16: Vec<u16> = w32.iter().map(|&v| to16(v)).collect();
        let mut wf = w32.clone();
        let (w_ptr, wdt): (*mut std::ffi::c_void, Dtype) = if wcode == GRASS_DTYPE_F32 {
            (wf.as_mut_ptr().cast(), Dtype::F32)
        } else {
            (
                w16.as_mut_ptr().cast(),
                if wcode == GRASS_DTYPE_BF16 {
                    Dtype::Bf16
                } else {
                    Dtype::F16
                },
            )
        };
        let sbytes = if state == GRASS_DTYPE_F32 { 4 } else { 2 };
        let (mut ms, mut vs) = (vec![0u8; r * n * sbytes], vec![0u8; r * n * sbytes]);
        let mut step = vec![0; r];
        sparse_adamw_step(
            &ctx,
            &cfg,
            (m, n),
            GRASS_SIDE_ROWS,
            wcode,
            w_ptr,
            &idx,
            &sc,
            &g,
            (ms.as_mut_ptr().cast(), vs.as_mut_ptr().cast()),
            &mut step,
            lr,
            ptr::null_mut(),
        );
        let got: Vec<f32> = if wcode == GRASS_DTYPE_F32 {
            wf.clone()
        } else {
            w16.iter().map(|&b| from16(b)).collect()
        };
        let start: Vec<f32> = if wcode == GRASS_DTYPE_F32 {
            w32.clone()
        } else {
            w32.iter().map(|&v| from16(to16(v))).collect()
        };
        let mut want: Vec<f64> = start.iter().map(|&v| v as f64).collect();
        for (j, &i) in idx.iter().enumerate() {
            for c in 0..n {
                let gj = g[j * n + c] as f64;
                // first step: m̂ = g, v̂ = g² (state rounding is second order here)
                want[i as usize * n + c] -= lr as f64 * sc[j] as f64 * gj / (gj.abs() + 1e-8);
            }
        }
        compare(
            &format!("w {} / state {}", wdt.name(), state),
            &want,
            &got,
            tolerance(wdt, 1)
                + tolerance(Dtype::Bf16, 1) * (state == GRASS_DTYPE_BF16) as i32 as f64,
        )
        .unwrap();
    }
}

fn optimizer(
    ctx: &Ctx,
    m: i64,
    n: i64,
    b: i64,
    pc: &grass_projection_config,
    ac: &grass_adamw_config,
) -> *mut grass_optimizer {
    let mut o = ptr::null_mut();
    check(unsafe {
        grass_optimizer_create_sparse(
            ctx.0,
            pc,
            ac,
            m,
            n,
            b,
            GRASS_DTYPE_F32,
            GRASS_DTYPE_F32,
            &mut o,
        )
    })
    .unwrap();
    o
}

fn train(
    o: *mut grass_optimizer,
    w: &mut [f32],
    batches: &[(Vec<f32>, Vec<f32>)],
    b: i64,
    micro: usize,
) {
    for chunk in batches.chunks(micro) {
        for (x, dy) in chunk {
            check(unsafe {
                grass_optimizer_backward(
                    o,
                    b,
                    x.as_ptr().cast(),
                    dy.as_ptr().cast(),
                    ptr::null(),
                    ptr::null_mut(),
                )
            })
            .unwrap();
        }
        check(unsafe {
            grass_optimizer_step(o, w.as_mut_ptr().cast(), ptr::null(), 1e-2, ptr::null_mut())
        })
        .unwrap();
    }
}

/// The optimizer handle refreshes every K steps, accumulates micro-batches, and its exported
/// state resumes the exact trajectory.
#[test]
fn optimizer_handle_refreshes_accumulates_and_round_trips() {
    let ctx = Ctx::cpu();
    let (m, n, b) = (20i64, 12i64, 6i64);
    let mut pc = pcfg(
        5,
        GRASS_METHOD_MULTINOMIAL_NR,
        GRASS_SCALING_UNBIASED,
        GRASS_SIDE_AUTO,
    );
    pc.refresh_every = 3;
    pc.seed = 17;
    let mut ac = adamw(0.01, GRASS_DECAY_SELECTED);
    ac.refresh_mode = GRASS_REFRESH_CARRY;
    let mut rng = Rng(77);
    let batches: Vec<(Vec<f32>, Vec<f32>)> = (0..40)
        .map(|_| (rng.vec((b * n) as usize), rng.vec((b * m) as usize)))
        .collect();
    let w0 = rng.vec((m * n) as usize);

    let o = optimizer(&ctx, m, n, b, &pc, &ac);
    let mut w = w0.clone();
    train(o, &mut w, &batches[..20], b, 2);
    let mut info = grass_projection_info {
        struct_size: std::mem::size_of::<grass_projection_info>(),
        ..unsafe { std::mem::zeroed() }
    };
    let mut proj = ptr::null_mut();
    check(unsafe { grass_optimizer_projection(o, &mut proj) }).unwrap();
    check(unsafe { grass_projection_get_info(proj, &mut info) }).unwrap();
    assert_eq!(
        info.refresh_count, 4,
        "10 steps with K = 3 refresh at steps 0, 3, 6, 9"
    );
    assert_eq!(info.steps_since_refresh, 1);
    let mut size = 0usize;
    check(unsafe { grass_optimizer_state_size(o, &mut size) }).unwrap();
    let mut blob = vec![0u8; size];
    check(unsafe {
        grass_optimizer_export_state(o, blob.as_mut_ptr().cast(), size, ptr::null_mut())
    })
    .unwrap();
    let w_mid = w.clone();
    train(o, &mut w, &batches[20..], b, 2);

    let o2 = optimizer(&ctx, m, n, b, &pc, &ac);
    check(unsafe { grass_optimizer_import_state(o2, blob.as_ptr().cast(), size, ptr::null_mut()) })
        .unwrap();
    let mut w2 = w_mid.clone();
    train(o2, &mut w2, &batches[20..], b, 2);
    assert_eq!(w, w2, "resumed trajectory must be bit-identical");
    assert_ne!(w, w_mid);

    // damaged or foreign blobs are refused and change nothing
    let mut bad = blob.clone();
    bad[200] ^= 1;
    let st =
        unsafe { grass_optimizer_import_state(o2, bad.as_ptr().cast(), size, ptr::null_mut()) };
    assert_eq!(st, grass_status::GRASS_ERROR_BAD_CHECKPOINT);
    assert!(last_error().contains("checksum"), "{}", last_error());
    let other = optimizer(&ctx, m, n + 1, b, &pc, &ac);
    let mut other_size = 0;
    check(unsafe { grass_optimizer_state_size(other, &mut other_size) }).unwrap();
    let st =
        unsafe { grass_optimizer_import_state(other, blob.as_ptr().cast(), size, ptr::null_mut()) };
    assert_eq!(st, grass_status::GRASS_ERROR_BAD_CHECKPOINT);
    unsafe {
        grass_optimizer_destroy(o);
        grass_optimizer_destroy(o2);
        grass_optimizer_destroy(other);
    }
}

#[test]
fn whole_runs_are_deterministic() {
    let ctx = Ctx::cpu();
    let (m, n, b) = (16i64, 24i64, 5i64);
    let mut pc = pcfg(
        4,
        GRASS_METHOD_MULTINOMIAL,
        GRASS_SCALING_UNBIASED,
        GRASS_SIDE_ROWS,
    );
    pc.refresh_every = 2;
    let ac = adamw(0.0, GRASS_DECAY_OFF);
    let mut rng = Rng(3);
    let batches: Vec<(Vec<f32>, Vec<f32>)> = (0..10)
        .map(|_| (rng.vec((b * n) as usize), rng.vec((b * m) as usize)))
        .collect();
    let w0 = rng.vec((m * n) as usize);
    let run = || {
        let o = optimizer(&ctx, m, n, b, &pc, &ac);
        let mut w = w0.clone();
        train(o, &mut w, &batches, b, 1);
        unsafe { grass_optimizer_destroy(o) };
        w
    };
    let a = run();
    assert_eq!(a, run());
    assert_ne!(a, w0);
}

#[test]
fn step_before_backward_is_an_invalid_state() {
    let ctx = Ctx::cpu();
    let o = optimizer(
        &ctx,
        8,
        8,
        2,
        &pcfg(2, GRASS_METHOD_TOP_R, GRASS_SCALING_NONE, GRASS_SIDE_ROWS),
        &adamw(0.0, GRASS_DECAY_OFF),
    );
    let mut w = vec![1.0f32; 64];
    let st = unsafe {
        grass_optimizer_step(o, w.as_mut_ptr().cast(), ptr::null(), 0.1, ptr::null_mut())
    };
    assert_eq!(st, grass_status::GRASS_ERROR_INVALID_STATE);
    assert!(
        last_error().contains("grass_optimizer_backward"),
        "{}",
        last_error()
    );
    assert!(w.iter().all(|&v| v == 1.0));
    unsafe { grass_optimizer_destroy(o) };
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
