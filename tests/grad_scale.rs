//! Gradient clipping and loss scaling through the optimizer handle on the CPU backend:
//! `grass_optimizer_grad_sq_norm` against an f64 reference built from G = dYᵀX and the
//! handle's selection, and `grass_optimizer_step_scaled` against the step on the scaled
//! gradient (the layer-1 step on `s * g` for a GRASS layer, the dense step on `s * grad`).

mod common;

use std::ptr;

use common::*;
use grass::ffi::*;

fn sparse(
    ctx: &Ctx,
    pc: &grass_projection_config,
    ac: &grass_adamw_config,
    m: i64,
    n: i64,
    b: i64,
) -> *mut grass_optimizer {
    sparse_optimizer(ctx, pc, ac, m, n, b).unwrap()
}

fn dense(
    ctx: &Ctx,
    ac: &grass_adamw_config,
    numel: i64,
    grad_dtype: grass_dtype,
) -> *mut grass_optimizer {
    let mut o = ptr::null_mut();
    check(unsafe {
        grass_optimizer_create_dense(ctx.0, ac, numel, GRASS_DTYPE_F32, grad_dtype, &mut o)
    })
    .unwrap();
    o
}

fn backward(o: *mut grass_optimizer, p: &Problem) {
    check(unsafe {
        grass_optimizer_backward(
            o,
            p.b as i64,
            p.x.as_ptr().cast(),
            p.dy.as_ptr().cast(),
            ptr::null(),
            ptr::null_mut(),
        )
    })
    .unwrap();
}

/// The handle's selection: (indices, scales).
fn selection(o: *mut grass_optimizer, r: usize) -> (Vec<i32>, Vec<f32>) {
    let mut proj = ptr::null_mut();
    check(unsafe { grass_optimizer_projection(o, &mut proj) }).unwrap();
    let (mut idx, mut sc) = (ptr::null(), ptr::null());
    check(unsafe { grass_projection_selection(proj, &mut idx, &mut sc) }).unwrap();
    unsafe {
        (
            std::slice::from_raw_parts(idx, r).to_vec(),
            std::slice::from_raw_parts(sc, r).to_vec(),
        )
    }
}

fn sq_norm(o: *const grass_optimizer, grad: *const std::ffi::c_void) -> f32 {
    let mut out = f32::NAN;
    check(unsafe { grass_optimizer_grad_sq_norm(o, grad, &mut out, ptr::null_mut()) }).unwrap();
    out
}

/// The compressed norm of two accumulated micro-batches is ‖ρ ⊙ (G₁ + G₂)[σ]‖² for every
/// method, scaling and side; with scaling none and distinct rows it is at most ‖G₁ + G₂‖².
#[test]
fn compressed_sq_norm_matches_the_selected_rows_of_g() {
    let ctx = Ctx::cpu();
    let (m, n, b) = (24usize, 40usize, 7usize);
    for (method, scaling, side) in [
        (GRASS_METHOD_UNIFORM_NR, GRASS_SCALING_NONE, GRASS_SIDE_COLS),
        (
            GRASS_METHOD_UNIFORM_NR,
            GRASS_SCALING_UNBIASED,
            GRASS_SIDE_ROWS,
        ),
        (
            GRASS_METHOD_MULTINOMIAL,
            GRASS_SCALING_UNBIASED,
            GRASS_SIDE_COLS,
        ),
        (GRASS_METHOD_TOP_R, GRASS_SCALING_NONE, GRASS_SIDE_ROWS),
    ] {
        let r = 6usize;
        let mut pc = pcfg(r as i64, method, scaling, side);
        pc.seed = 5;
        let ac = grass_adamw_config::defaults();
        let o = sparse(&ctx, &pc, &ac, m as i64, n as i64, b as i64);
        let (p1, p2) = (problem(m, n, b, 11), problem(m, n, b, 12));
        backward(o, &p1);
        backward(o, &p2);
        let (idx, sc) = selection(o, r);
        let d = if side == GRASS_SIDE_COLS { n } else { m };
        let row = |i: usize| -> Vec<f64> {
            let (a, c) = (projected_row(&p1, side, i), projected_row(&p2, side, i));
            a.iter().zip(&c).map(|(a, c)| a + c).collect()
        };
        let want: f64 = idx
            .iter()
            .zip(&sc)
            .map(|(&i, &s)| {
                row(i as usize)
                    .iter()
                    .map(|x| (s as f64 * x).powi(2))
                    .sum::<f64>()
            })
            .sum();
        let got = sq_norm(o, ptr::null()) as f64;
        let what = format!("method {method} scaling {scaling} side {side}");
        assert!((got - want).abs() <= 1e-5 * want, "{what}: {got} vs {want}");
        if scaling == GRASS_SCALING_NONE {
            let full: f64 = (0..d)
                .map(|i| row(i).iter().map(|x| x * x).sum::<f64>())
                .sum();
            assert!(got <= full * (1.0 + 1e-6), "{what}: {got} > full {full}");
        }
        unsafe { grass_optimizer_destroy(o) };
    }
}

/// With unbiased scaling the squared compressed norm is an unbiased estimate of ‖G‖²: its
/// mean over many independent selections (layer ids) is within 5% of it.
#[test]
fn unbiased_compressed_sq_norm_estimates_the_full_one() {
    let ctx = Ctx::cpu();
    let (m, n, b, r) = (16usize, 48usize, 5usize, 8usize);
    let p = problem(m, n, b, 3);
    let full: f64 = p.g.iter().map(|x| x * x).sum();
    let trials = 400;
    let mut sum = 0.0f64;
    for t in 0..trials {
        let mut pc = pcfg(
            r as i64,
            GRASS_METHOD_MULTINOMIAL_NR,
            GRASS_SCALING_UNBIASED,
            GRASS_SIDE_COLS,
        );
        pc.layer_id = t;
        let o = sparse(
            &ctx,
            &pc,
            &grass_adamw_config::defaults(),
            m as i64,
            n as i64,
            b as i64,
        );
        backward(o, &p);
        sum += sq_norm(o, ptr::null()) as f64;
        unsafe { grass_optimizer_destroy(o) };
    }
    let mean = sum / trials as f64;
    assert!(
        (mean / full - 1.0).abs() < 0.05,
        "mean {mean} vs full {full}"
    );
}

/// A dense handle's norm is the norm of the gradient it is given, of any dtype.
#[test]
fn dense_sq_norm_matches_f64() {
    let ctx = Ctx::cpu();
    let ac = grass_adamw_config::defaults();
    for numel in [1usize, 7, 513, 70_000, 200_001] {
        let g = Rng(numel as u64).vec(numel);
        let want: f64 = g.iter().map(|&x| x as f64 * x as f64).sum();
        let o = dense(&ctx, &ac, numel as i64, GRASS_DTYPE_F32);
        let got = sq_norm(o, g.as_ptr().cast()) as f64;
        assert!(
            (got - want).abs() <= 1e-6 * want,
            "numel {numel}: {got} vs {want}"
        );
        unsafe { grass_optimizer_destroy(o) };
        let gb: Vec<half::bf16> = g.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let want: f64 = gb.iter().map(|x| (x.to_f32() as f64).powi(2)).sum();
        let o = dense(&ctx, &ac, numel as i64, GRASS_DTYPE_BF16);
        let got = sq_norm(o, gb.as_ptr().cast()) as f64;
        assert!(
            (got - want).abs() <= 1e-6 * want,
            "bf16 numel {numel}: {got} vs {want}"
        );
        unsafe { grass_optimizer_destroy(o) };
    }
}

/// `step_scaled(s)` on a GRASS layer equals, bit for bit, the layer-1 step on the f32 products
/// `s * g` of the compressed gradient, from the same selection and zeroed state; and `step`
/// equals `step_scaled(1)`.
#[test]
fn sparse_step_scaled_is_the_step_on_the_scaled_gradient() {
    let ctx = Ctx::cpu();
    let (m, n, b, r) = (20usize, 36usize, 6usize, 8usize);
    for (side, s) in [
        (GRASS_SIDE_COLS, 0.37f32),
        (GRASS_SIDE_ROWS, 3.5),
        (GRASS_SIDE_COLS, 0.0),
        (GRASS_SIDE_ROWS, 1.0),
    ] {
        let mut pc = pcfg(r as i64, GRASS_METHOD_UNIFORM_NR, GRASS_SCALING_NONE, side);
        pc.seed = 9;
        let ac = adamw(0.1, GRASS_DECAY_SELECTED);
        let o = sparse(&ctx, &pc, &ac, m as i64, n as i64, b as i64);
        let p = problem(m, n, b, 21);
        backward(o, &p);
        let (idx, sc) = selection(o, r);
        // the compressed gradient, through the layer-1 path of the handle's own projection
        let mut proj = ptr::null_mut();
        check(unsafe { grass_optimizer_projection(o, &mut proj) }).unwrap();
        let k = if side == GRASS_SIDE_COLS { m } else { n };
        let mut g = vec![0.0f32; r * k];
        check(unsafe {
            grass_projection_compress(
                proj,
                b as i64,
                p.x.as_ptr().cast(),
                p.dy.as_ptr().cast(),
                g.as_mut_ptr(),
                0,
                ptr::null_mut(),
            )
        })
        .unwrap();
        let gs: Vec<f32> = g.iter().map(|&x| s * x).collect();
        let w0 = Rng(4).vec(m * n);
        let (mut w_ref, mut mv, mut vv, mut steps) = (
            w0.clone(),
            vec![0.0f32; r * k],
            vec![0.0f32; r * k],
            vec![0i32; r],
        );
        sparse_adamw_step(
            &ctx,
            &ac,
            (m, n),
            side,
            GRASS_DTYPE_F32,
            w_ref.as_mut_ptr().cast(),
            &idx,
            &sc,
            &gs,
            (mv.as_mut_ptr().cast(), vv.as_mut_ptr().cast()),
            &mut steps,
            2e-2,
            ptr::null_mut(),
        );
        let mut w = w0.clone();
        check(unsafe {
            grass_optimizer_step_scaled(
                o,
                w.as_mut_ptr().cast(),
                ptr::null(),
                2e-2,
                s,
                ptr::null_mut(),
            )
        })
        .unwrap();
        assert!(
            w.iter()
                .zip(&w_ref)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "side {side} scale {s}: W differs from the step on s * g"
        );
        assert_ne!(
            w, w0,
            "side {side} scale {s}: decay alone changes the selected rows"
        );
        unsafe { grass_optimizer_destroy(o) };
    }
}

/// Dense: `step_scaled(s)` equals `step` on the f32 gradient `s * g`, bit for bit; a bf16
/// gradient is widened before it is scaled.
#[test]
fn dense_step_scaled_is_the_step_on_the_scaled_gradient() {
    let ctx = Ctx::cpu();
    let numel = 300_000usize; // several threads
    let ac = adamw(0.01, GRASS_DECAY_DENSE);
    let g = Rng(8).vec(numel);
    let w0 = Rng(9).vec(numel);
    for s in [0.125f32, 0.3, 1.0, 7.0] {
        let gs: Vec<f32> = g.iter().map(|&x| s * x).collect();
        let (a, r) = (
            dense(&ctx, &ac, numel as i64, GRASS_DTYPE_F32),
            dense(&ctx, &ac, numel as i64, GRASS_DTYPE_F32),
        );
        let (mut wa, mut wr) = (w0.clone(), w0.clone());
        for _ in 0..2 {
            check(unsafe {
                grass_optimizer_step_scaled(
                    a,
                    wa.as_mut_ptr().cast(),
                    g.as_ptr().cast(),
                    1e-2,
                    s,
                    ptr::null_mut(),
                )
            })
            .unwrap();
            check(unsafe {
                grass_optimizer_step(
                    r,
                    wr.as_mut_ptr().cast(),
                    gs.as_ptr().cast(),
                    1e-2,
                    ptr::null_mut(),
                )
            })
            .unwrap();
        }
        assert!(
            wa.iter().zip(&wr).all(|(x, y)| x.to_bits() == y.to_bits()),
            "scale {s}"
        );
        unsafe {
            grass_optimizer_destroy(a);
            grass_optimizer_destroy(r);
        }
    }
    let gb: Vec<half::bf16> = g.iter().map(|&x| half::bf16::from_f32(x)).collect();
    let gs: Vec<f32> = gb.iter().map(|x| 0.3f32 * x.to_f32()).collect();
    let (a, r) = (
        dense(&ctx, &ac, numel as i64, GRASS_DTYPE_BF16),
        dense(&ctx, &ac, numel as i64, GRASS_DTYPE_F32),
    );
    let (mut wa, mut wr) = (w0.clone(), w0.clone());
    check(unsafe {
        grass_optimizer_step_scaled(
            a,
            wa.as_mut_ptr().cast(),
            gb.as_ptr().cast(),
            1e-2,
            0.3,
            ptr::null_mut(),
        )
    })
    .unwrap();
    check(unsafe {
        grass_optimizer_step(
            r,
            wr.as_mut_ptr().cast(),
            gs.as_ptr().cast(),
            1e-2,
            ptr::null_mut(),
        )
    })
    .unwrap();
    assert!(
        wa.iter().zip(&wr).all(|(x, y)| x.to_bits() == y.to_bits()),
        "bf16 gradient"
    );
    unsafe {
        grass_optimizer_destroy(a);
        grass_optimizer_destroy(r);
    }
}

/// A bad grad_scale is refused naming it, with nothing written; a scale that overflows a
/// finite gradient skips the step; the norm of a GRASS layer with nothing accumulated is
/// refused.
#[test]
fn bad_scales_and_states_are_refused() {
    let ctx = Ctx::cpu();
    let ac = grass_adamw_config::defaults();
    let o = dense(&ctx, &ac, 4, GRASS_DTYPE_F32);
    let g = [1.0f32, -2.0, 3.0e38, 0.5];
    let mut w = [0.25f32; 4];
    for s in [f32::NAN, f32::INFINITY, -1.0, -f32::MIN_POSITIVE] {
        let st = unsafe {
            grass_optimizer_step_scaled(
                o,
                w.as_mut_ptr().cast(),
                g.as_ptr().cast(),
                1e-3,
                s,
                ptr::null_mut(),
            )
        };
        assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE, "scale {s}");
        assert!(last_error().contains("grad_scale"), "{}", last_error());
    }
    assert_eq!(w, [0.25; 4]);
    let mut info = grass_optimizer_info {
        struct_size: std::mem::size_of::<grass_optimizer_info>(),
        is_sparse: 9,
        steps: 9,
        accumulated: 9,
        state_elements: 9,
        memory_bytes: 9,
        full_rank: 9,
    };
    check(unsafe { grass_optimizer_get_info(o, &mut info) }).unwrap();
    assert_eq!(info.steps, 0, "a refused call is no step");
    // 3e38 * 2 overflows: skipped, W unchanged
    check(unsafe {
        grass_optimizer_step_scaled(
            o,
            w.as_mut_ptr().cast(),
            g.as_ptr().cast(),
            1e-3,
            2.0,
            ptr::null_mut(),
        )
    })
    .unwrap();
    let mut skipped = -1;
    check(unsafe { grass_optimizer_last_step_skipped(o, &mut skipped, ptr::null_mut()) }).unwrap();
    assert_eq!(skipped, GRASS_STEP_SKIPPED_NONFINITE);
    assert_eq!(w, [0.25; 4]);
    // the same gradient at a scale that keeps it finite is applied
    check(unsafe {
        grass_optimizer_step_scaled(
            o,
            w.as_mut_ptr().cast(),
            g.as_ptr().cast(),
            1e-3,
            0.5,
            ptr::null_mut(),
        )
    })
    .unwrap();
    check(unsafe { grass_optimizer_last_step_skipped(o, &mut skipped, ptr::null_mut()) }).unwrap();
    assert_eq!(skipped, GRASS_STEP_APPLIED);
    let mut out = 0.0f32;
    let st = unsafe { grass_optimizer_grad_sq_norm(o, ptr::null(), &mut out, ptr::null_mut()) };
    assert_eq!(st, grass_status::GRASS_ERROR_NULL_POINTER);
    assert!(last_error().contains("grad is NULL"), "{}", last_error());
    unsafe { grass_optimizer_destroy(o) };

    let pc = pcfg(
        4,
        GRASS_METHOD_UNIFORM_NR,
        GRASS_SCALING_NONE,
        GRASS_SIDE_ROWS,
    );
    let s = sparse(&ctx, &pc, &ac, 8, 8, 2);
    out = 7.0;
    let st = unsafe { grass_optimizer_grad_sq_norm(s, ptr::null(), &mut out, ptr::null_mut()) };
    assert_eq!(st, grass_status::GRASS_ERROR_INVALID_STATE);
    assert!(
        last_error().contains("grass_optimizer_backward"),
        "{}",
        last_error()
    );
    assert_eq!(out, 7.0);
    let st =
        unsafe { grass_optimizer_grad_sq_norm(s, g.as_ptr().cast(), &mut out, ptr::null_mut()) };
    assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE);
    assert!(
        last_error().contains("grad must be NULL"),
        "{}",
        last_error()
    );
    unsafe { grass_optimizer_destroy(s) };
}
