//! `grass_sparse_adamw_step` (and `grass_adamw_step`, its reference) on the CPU backend: plain AdamW
//! at full rank bit for bit, scatter on both sides, skipped steps, step counts and dtypes.

mod common;

use std::ptr;

use common::*;
use grass::core::dtype::{tolerance, Dtype};
use grass::ffi::*;

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
        // alpha 1 and no row warm-up: the full-rank update is AdamW's
        let cfg = grass_adamw_config {
            alpha: 1.0,
            row_warmup: 0,
            ..adamw(wd, mode)
        };
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
    let cfg = grass_adamw_config {
        alpha: 1.0,    // the reference below leaves alpha out
        row_warmup: 0, // and the row warm-up's ramp (row_warmup_scales_each_rows_step_...)
        ..adamw(0.0, GRASS_DECAY_OFF)
    };
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
        cfg.dense_state_dtype = state; // grass_adamw_step's moments
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

/// `row_warmup` W scales state row j's step by min(1, t_j / W), t_j its count after the
/// increment: rows at different counts (as after a carry refresh) ramp independently, M and V
/// are the same as without the ramp, and a negative W is refused with nothing written.
#[test]
fn row_warmup_scales_each_rows_step_by_its_count() {
    let ctx = Ctx::cpu();
    let (m, n) = (6usize, 5usize);
    let idx = [0i32, 2, 4];
    let sc = [1.0f32, 0.5, 2.0];
    let mut rng = Rng(17);
    let w0 = rng.vec(m * n);
    let plain = grass_adamw_config {
        row_warmup: 0,
        ..adamw(0.0, GRASS_DECAY_OFF)
    };
    let ramped = grass_adamw_config {
        row_warmup: 4,
        ..plain
    };
    let len = idx.len() * n;
    // (W, M, V, step counts) of the run without and with the ramp
    type Run = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<i32>);
    let mut runs: Vec<Run> = (0..2)
        .map(|_| (w0.clone(), vec![0f32; len], vec![0f32; len], vec![0, 2, 9]))
        .collect();
    for step in 0..6 {
        let g = rng.vec(len);
        let before = runs[0].0.clone();
        for (cfg, run) in [&plain, &ramped].into_iter().zip(runs.iter_mut()) {
            let (w, ms, vs, steps) = run;
            sparse_adamw_step(
                &ctx,
                cfg,
                (m, n),
                GRASS_SIDE_ROWS,
                GRASS_DTYPE_F32,
                w.as_mut_ptr().cast(),
                &idx,
                &sc,
                &g,
                (ms.as_mut_ptr().cast(), vs.as_mut_ptr().cast()),
                steps,
                1e-2,
                ptr::null_mut(),
            );
        }
        assert_eq!(
            runs[0].1, runs[1].1,
            "M does not depend on the ramp (step {step})"
        );
        assert_eq!(
            runs[0].2, runs[1].2,
            "V does not depend on the ramp (step {step})"
        );
        assert_eq!(runs[0].3, runs[1].3);
        for (j, &i) in idx.iter().enumerate() {
            let ramp = (runs[1].3[j] as f64 / 4.0).min(1.0);
            for c in 0..n {
                let e = i as usize * n + c;
                let full = runs[0].0[e] as f64 - before[e] as f64;
                let got = runs[1].0[e] as f64 - before[e] as f64;
                // each run's W rounds once per step (2^-24 relative of |W| <= 8)
                assert!(
                    (got - ramp * full).abs() <= 2e-6,
                    "step {step} row {i} (count {}): moved {got}, want {ramp} x {full}",
                    runs[1].3[j]
                );
            }
        }
        // the next step starts both runs from the same W, so each step's ramp is seen alone
        runs[1].0 = runs[0].0.clone();
    }
    assert_eq!(runs[1].3, vec![6, 8, 15]);

    let bad = grass_adamw_config {
        row_warmup: -1,
        ..plain
    };
    let (mut w, mut ms, mut vs, mut steps) =
        (w0.clone(), vec![0f32; len], vec![0f32; len], vec![0; 3]);
    let status = try_sparse_adamw_step(
        &ctx,
        &bad,
        (m, n),
        GRASS_SIDE_ROWS,
        GRASS_DTYPE_F32,
        w.as_mut_ptr().cast(),
        &idx,
        &sc,
        &rng.vec(len),
        (ms.as_mut_ptr().cast(), vs.as_mut_ptr().cast()),
        &mut steps,
        1e-2,
        ptr::null_mut(),
    );
    assert_eq!(status, grass_status::GRASS_ERROR_INVALID_VALUE);
    assert!(
        last_error().contains("config->row_warmup = -1"),
        "{}",
        last_error()
    );
    assert_eq!(
        (w, ms, vs, steps),
        (w0, vec![0f32; len], vec![0f32; len], vec![0; 3])
    );
}
