//! `grass_select` on the CPU backend: order, range and determinism of every method, and the
//! statistics the methods promise (unbiasedness, inclusion probabilities).

mod common;

use common::*;
use grass::ffi::*;

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
