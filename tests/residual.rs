//! The residual step on the CPU backend (`grass_residual_step`, `grass_optimizer_step_residual`):
//! the rows the selection leaves out move by signSGD of their gradient, against an f64
//! reference of G; the selected rows and every bad input leave W as it was.

mod common;

use std::ptr;

use common::*;
use grass::ffi::*;
use half::bf16;

const LR: f32 = 3e-2;
const SCALE: f32 = 0.1;

/// A sorted selection of `r` distinct units of [0, d): every third, then the last ones.
fn selection(d: usize, r: usize) -> Vec<i32> {
    let mut idx: Vec<i32> = (0..d as i32).step_by(3).take(r).collect();
    let mut u = d as i32 - 1;
    while idx.len() < r {
        if !idx.contains(&u) {
            idx.push(u);
        }
        u -= 1;
    }
    idx.sort_unstable();
    idx
}

fn ws_size(ctx: &Ctx, m: usize, n: usize, b: usize, side: grass_side, dt: grass_dtype) -> usize {
    let mut bytes = 0;
    check(unsafe {
        grass_residual_workspace_size(ctx.0, m as i64, n as i64, b as i64, side, dt, &mut bytes)
    })
    .unwrap();
    bytes
}

/// One `grass_residual_step` on f32 X, dY (host buffers), W of `w_dtype` given as raw bytes.
#[allow(clippy::too_many_arguments)]
fn residual(
    ctx: &Ctx,
    p: &Problem,
    side: grass_side,
    idx: &[i32],
    w_dtype: grass_dtype,
    w: &mut [u8],
    scale: f32,
    lr: f32,
    lr_scale: Option<f32>,
    skipped: &mut i32,
) -> Result<(), (grass_status, String)> {
    let cfg = grass_adamw_config::defaults();
    let mut ws = vec![0u8; ws_size(ctx, p.m, p.n, p.b, side, GRASS_DTYPE_F32)];
    let ls = lr_scale.unwrap_or(1.0);
    check(unsafe {
        grass_residual_step(
            ctx.0,
            &cfg,
            p.m as i64,
            p.n as i64,
            p.b as i64,
            side,
            idx.len() as i64,
            GRASS_DTYPE_F32,
            p.x.as_ptr() as *const _,
            p.dy.as_ptr() as *const _,
            w_dtype,
            w.as_mut_ptr() as *mut _,
            idx.as_ptr(),
            scale,
            lr,
            if lr_scale.is_some() { &ls } else { ptr::null() },
            skipped,
            ws.as_mut_ptr() as *mut _,
            ws.len(),
            ptr::null_mut(),
        )
    })
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks(4)
        .map(|c| f32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// Element (unit u, kept c) of W (m x n) on `side`.
fn at(side: grass_side, n: usize, u: usize, c: usize) -> usize {
    if side == GRASS_SIDE_COLS {
        c * n + u
    } else {
        u * n + c
    }
}

/// W after the residual step, from G in f64: `None` where G is too close to 0 for the f32
/// product to be sure of its sign (either outcome is then right).
fn reference(
    p: &Problem,
    side: grass_side,
    idx: &[i32],
    w0: &[f32],
    step: f32,
) -> Vec<Option<f32>> {
    let (d, k) = if side == GRASS_SIDE_COLS {
        (p.n, p.m)
    } else {
        (p.m, p.n)
    };
    let mut want: Vec<Option<f32>> = w0.iter().map(|&v| Some(v)).collect();
    let tol = 1e-5 * (p.b as f64);
    for u in (0..d).filter(|u| !idx.contains(&(*u as i32))) {
        let row = projected_row(p, side, u);
        for (c, &g) in row.iter().enumerate().take(k) {
            let e = at(side, p.n, u, c);
            want[e] = if g.abs() < tol {
                None
            } else {
                Some(w0[e] - step * g.signum() as f32)
            };
        }
    }
    want
}

fn check_against(want: &[Option<f32>], got: &[f32], what: &str) {
    let mut unsure = 0;
    for (e, (w, g)) in want.iter().zip(got).enumerate() {
        match w {
            Some(w) => assert_eq!(
                w.to_bits(),
                g.to_bits(),
                "{what}: element {e}: want {w} got {g}"
            ),
            None => unsure += 1,
        }
    }
    assert!(
        unsure * 100 < want.len(),
        "{what}: {unsure} elements of unsure sign"
    );
}

#[test]
fn unselected_rows_move_by_the_sign_of_their_gradient_on_both_sides() {
    let ctx = Ctx::cpu();
    for (side, m, n, b) in [
        (GRASS_SIDE_ROWS, 37, 23, 29),
        (GRASS_SIDE_COLS, 23, 37, 29),
        (GRASS_SIDE_COLS, 130, 9, 3),
        (GRASS_SIDE_ROWS, 1, 17, 4),
    ] {
        let p = problem(m, n, b, 11);
        let d = if side == GRASS_SIDE_COLS { n } else { m };
        let idx = selection(d, d.div_ceil(4));
        let mut rng = Rng(5);
        let w0 = rng.vec(m * n);
        let mut w = f32_bytes(&w0);
        let mut skipped = 0;
        residual(
            &ctx,
            &p,
            side,
            &idx,
            GRASS_DTYPE_F32,
            &mut w,
            SCALE,
            LR,
            None,
            &mut skipped,
        )
        .unwrap();
        assert_eq!(skipped, 0);
        let step = LR * grass_adamw_config::defaults().alpha * SCALE;
        let want = reference(&p, side, &idx, &w0, step);
        check_against(&want, &f32s(&w), &format!("{m}x{n} side {side:?}"));
        // the selected units did not move at all
        let k = if side == GRASS_SIDE_COLS { m } else { n };
        let got = f32s(&w);
        for &u in &idx {
            for c in 0..k {
                let e = at(side, n, u as usize, c);
                assert_eq!(got[e].to_bits(), w0[e].to_bits());
            }
        }
    }
}

#[test]
fn lr_scale_multiplies_the_step_and_bf16_weights_round_once() {
    let ctx = Ctx::cpu();
    let (m, n, b) = (40, 24, 16);
    let p = problem(m, n, b, 3);
    let idx = selection(m, 8);
    let mut rng = Rng(8);
    let w0: Vec<f32> = rng.vec(m * n);
    // bf16 weights: each moved element is f32(w) - step·s rounded once to bf16
    let wb: Vec<bf16> = w0.iter().map(|&v| bf16::from_f32(v)).collect();
    let mut bytes: Vec<u8> = wb.iter().flat_map(|v| v.to_bits().to_ne_bytes()).collect();
    let mut skipped = 0;
    residual(
        &ctx,
        &p,
        GRASS_SIDE_ROWS,
        &idx,
        GRASS_DTYPE_BF16,
        &mut bytes,
        SCALE,
        LR,
        Some(0.5),
        &mut skipped,
    )
    .unwrap();
    let step = (LR * 0.5) * grass_adamw_config::defaults().alpha * SCALE;
    let base: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
    let want = reference(&p, GRASS_SIDE_ROWS, &idx, &base, step);
    let got: Vec<f32> = bytes
        .chunks(2)
        .map(|c| bf16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32())
        .collect();
    for (e, w) in want.iter().enumerate() {
        if let Some(w) = w {
            assert_eq!(bf16::from_f32(*w).to_f32(), got[e], "element {e}");
        }
    }
}

#[test]
fn a_skipped_step_before_gates_it_and_bad_batches_skip_it() {
    let ctx = Ctx::cpu();
    let (m, n, b) = (16, 12, 5);
    let p = problem(m, n, b, 4);
    let idx = selection(m, 4);
    let w0 = Rng(9).vec(m * n);
    // a step that skipped before: nothing moves, the outcome stays
    let mut w = f32_bytes(&w0);
    let mut skipped = 2;
    residual(
        &ctx,
        &p,
        GRASS_SIDE_ROWS,
        &idx,
        GRASS_DTYPE_F32,
        &mut w,
        SCALE,
        LR,
        None,
        &mut skipped,
    )
    .unwrap();
    assert_eq!((skipped, f32s(&w)), (2, w0.clone()));
    // a non-finite learning rate scale, then a NaN and an infinity in the batch: skipped
    for case in 0..3 {
        let mut q = Problem {
            x: p.x.clone(),
            dy: p.dy.clone(),
            g: vec![],
            ..p
        };
        let mut lr_scale = None;
        match case {
            0 => lr_scale = Some(f32::NAN),
            1 => q.x[7] = f32::NAN,
            _ => q.dy[3] = f32::INFINITY,
        }
        let mut w = f32_bytes(&w0);
        let mut skipped = 0;
        residual(
            &ctx,
            &q,
            GRASS_SIDE_ROWS,
            &idx,
            GRASS_DTYPE_F32,
            &mut w,
            SCALE,
            LR,
            lr_scale,
            &mut skipped,
        )
        .unwrap();
        assert_eq!(skipped, 1, "case {case}");
        assert_eq!(f32s(&w), w0, "case {case}: W must not move");
    }
}

#[test]
fn bad_arguments_name_the_argument_and_write_nothing() {
    let ctx = Ctx::cpu();
    let (m, n, b) = (16, 12, 5);
    let p = problem(m, n, b, 4);
    let w0 = Rng(9).vec(m * n);
    let good = selection(m, 4);
    let cases: Vec<(&str, Vec<i32>, f32, f32)> = vec![
        ("residual_scale", good.clone(), -0.1, LR),
        ("residual_scale", good.clone(), f32::NAN, LR),
        ("lr", good.clone(), SCALE, f32::INFINITY),
        ("indices", vec![3, 1, 5, 7], SCALE, LR),
        ("indices", vec![0, 1, 2, 16], SCALE, LR),
    ];
    for (name, idx, scale, lr) in cases {
        let mut w = f32_bytes(&w0);
        let mut skipped = 0;
        let err = residual(
            &ctx,
            &p,
            GRASS_SIDE_ROWS,
            &idx,
            GRASS_DTYPE_F32,
            &mut w,
            scale,
            lr,
            None,
            &mut skipped,
        )
        .unwrap_err();
        assert_eq!(
            err.0,
            grass_status::GRASS_ERROR_INVALID_VALUE,
            "{name}: {}",
            err.1
        );
        assert!(err.1.contains(name), "{name}: {}", err.1);
        assert_eq!((f32s(&w), skipped), (w0.clone(), 0), "{name}");
    }
    // a workspace one byte short
    let cfg = grass_adamw_config::defaults();
    let need = ws_size(&ctx, m, n, b, GRASS_SIDE_ROWS, GRASS_DTYPE_F32);
    let mut ws = vec![0u8; need];
    let mut w = f32_bytes(&w0);
    let st = unsafe {
        grass_residual_step(
            ctx.0,
            &cfg,
            m as i64,
            n as i64,
            b as i64,
            GRASS_SIDE_ROWS,
            4,
            GRASS_DTYPE_F32,
            p.x.as_ptr() as *const _,
            p.dy.as_ptr() as *const _,
            GRASS_DTYPE_F32,
            w.as_mut_ptr() as *mut _,
            good.as_ptr(),
            SCALE,
            LR,
            ptr::null(),
            ptr::null_mut(),
            ws.as_mut_ptr() as *mut _,
            need - 1,
            ptr::null_mut(),
        )
    };
    let err = check(st).unwrap_err();
    assert!(err.1.contains("grass_residual_workspace_size"), "{}", err.1);
    assert_eq!(f32s(&w), w0);
}

/// The residual's scratch is the row scores' chunks: well under one m x n f32 gradient.
#[test]
fn residual_workspace_never_holds_the_whole_gradient() {
    let ctx = Ctx::cpu();
    for (m, n) in [(64usize, 64usize), (512, 128), (128, 512), (4096, 1024)] {
        let ws = ws_size(&ctx, m, n, 1, GRASS_SIDE_AUTO, GRASS_DTYPE_F32);
        assert!(ws * 2 < m * n * 4, "{m} x {n}: scratch {ws} bytes");
    }
}

/// `grass_optimizer_step_residual` is the handle's compressed step and then
/// `grass_residual_step` on its selection, bit for bit; a dense handle and a batch over
/// max_tokens are refused.
#[test]
fn the_handle_step_is_the_compressed_step_then_the_residual() {
    let ctx = Ctx::cpu();
    let (m, n, b) = (48i64, 32i64, 12usize);
    for side in [GRASS_SIDE_ROWS, GRASS_SIDE_COLS] {
        let pc = pcfg(8, GRASS_METHOD_UNIFORM_NR, GRASS_SCALING_NONE, side);
        let ac = grass_adamw_config::defaults();
        let a = sparse_optimizer(&ctx, &pc, &ac, m, n, b as i64).unwrap();
        let o = sparse_optimizer(&ctx, &pc, &ac, m, n, b as i64).unwrap();
        let mut w_a = Rng(2).vec((m * n) as usize);
        let mut w_o = w_a.clone();
        for step in 0..3 {
            let p = problem(m as usize, n as usize, b, 20 + step);
            for h in [a, o] {
                check(unsafe {
                    grass_optimizer_backward(
                        h,
                        b as i64,
                        p.x.as_ptr() as *const _,
                        p.dy.as_ptr() as *const _,
                        ptr::null(),
                        ptr::null_mut(),
                    )
                })
                .unwrap();
            }
            check(unsafe {
                grass_optimizer_step_residual(
                    a,
                    w_a.as_mut_ptr() as *mut _,
                    b as i64,
                    p.x.as_ptr() as *const _,
                    p.dy.as_ptr() as *const _,
                    LR,
                    1.0,
                    SCALE,
                    ptr::null_mut(),
                )
            })
            .unwrap();
            // the same by hand: the compressed step, then the residual on the selection
            check(unsafe {
                grass_optimizer_step(
                    o,
                    w_o.as_mut_ptr() as *mut _,
                    ptr::null(),
                    LR,
                    ptr::null_mut(),
                )
            })
            .unwrap();
            let mut proj = ptr::null_mut();
            check(unsafe { grass_optimizer_projection(o, &mut proj) }).unwrap();
            let (mut ip, mut sp) = (ptr::null(), ptr::null());
            check(unsafe { grass_projection_selection(proj, &mut ip, &mut sp) }).unwrap();
            let idx = unsafe { std::slice::from_raw_parts(ip, 8) }.to_vec();
            let mut bytes = f32_bytes(&w_o);
            let mut skipped = 0;
            residual(
                &ctx,
                &p,
                side,
                &idx,
                GRASS_DTYPE_F32,
                &mut bytes,
                SCALE,
                LR,
                None,
                &mut skipped,
            )
            .unwrap();
            w_o = f32s(&bytes);
            assert_eq!(w_a, w_o, "step {step}, side {side:?}");
        }
        // NaN in the batch: the compressed step of the finite accumulation applies, the
        // residual skips, and the outcome says so
        let p = problem(m as usize, n as usize, b, 40);
        check(unsafe {
            grass_optimizer_backward(
                a,
                b as i64,
                p.x.as_ptr() as *const _,
                p.dy.as_ptr() as *const _,
                ptr::null(),
                ptr::null_mut(),
            )
        })
        .unwrap();
        let mut bad = p.x.clone();
        bad[0] = f32::NAN;
        let before = w_a.clone();
        check(unsafe {
            grass_optimizer_step_residual(
                a,
                w_a.as_mut_ptr() as *mut _,
                b as i64,
                bad.as_ptr() as *const _,
                p.dy.as_ptr() as *const _,
                LR,
                1.0,
                SCALE,
                ptr::null_mut(),
            )
        })
        .unwrap();
        let mut out = 0;
        check(unsafe { grass_optimizer_last_step_skipped(a, &mut out, ptr::null_mut()) }).unwrap();
        assert_eq!(out, 1);
        let moved = w_a.iter().zip(&before).filter(|(x, y)| x != y).count();
        let k = if side == GRASS_SIDE_COLS { m } else { n } as usize;
        assert!(
            moved > 0 && moved <= 8 * k,
            "only the selected rows move: {moved}"
        );
        // bad arguments: nothing written, the accumulation kept
        check(unsafe {
            grass_optimizer_backward(
                a,
                b as i64,
                p.x.as_ptr() as *const _,
                p.dy.as_ptr() as *const _,
                ptr::null(),
                ptr::null_mut(),
            )
        })
        .unwrap();
        let before = w_a.clone();
        for (name, bb, scale, gs) in [
            ("b", b as i64 + 1, SCALE, 1.0),
            ("residual_scale", b as i64, -1.0, 1.0),
            ("grad_scale", b as i64, SCALE, f32::NAN),
        ] {
            let err = check(unsafe {
                grass_optimizer_step_residual(
                    a,
                    w_a.as_mut_ptr() as *mut _,
                    bb,
                    p.x.as_ptr() as *const _,
                    p.dy.as_ptr() as *const _,
                    LR,
                    gs,
                    scale,
                    ptr::null_mut(),
                )
            })
            .unwrap_err();
            assert_eq!(
                err.0,
                grass_status::GRASS_ERROR_INVALID_VALUE,
                "{name}: {}",
                err.1
            );
            assert!(err.1.contains(name), "{name}: {}", err.1);
            assert_eq!(w_a, before, "{name}");
        }
        // grad_scale 0: the compressed step runs on a zero gradient, no residual row moves
        check(unsafe {
            grass_optimizer_step_residual(
                a,
                w_a.as_mut_ptr() as *mut _,
                b as i64,
                p.x.as_ptr() as *const _,
                p.dy.as_ptr() as *const _,
                LR,
                0.0,
                SCALE,
                ptr::null_mut(),
            )
        })
        .unwrap();
        unsafe {
            grass_optimizer_destroy(a);
            grass_optimizer_destroy(o);
        }
    }
    // a dense parameter has no residual
    let ac = grass_adamw_config::defaults();
    let mut d = ptr::null_mut();
    check(unsafe {
        grass_optimizer_create_dense(ctx.0, &ac, 10, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &mut d)
    })
    .unwrap();
    let mut w = vec![0f32; 10];
    let x = [0f32; 10];
    let err = check(unsafe {
        grass_optimizer_step_residual(
            d,
            w.as_mut_ptr() as *mut _,
            1,
            x.as_ptr() as *const _,
            x.as_ptr() as *const _,
            LR,
            1.0,
            SCALE,
            ptr::null_mut(),
        )
    })
    .unwrap_err();
    assert_eq!(err.0, grass_status::GRASS_ERROR_INVALID_STATE, "{}", err.1);
    unsafe { grass_optimizer_destroy(d) };
}

#[test]
fn the_default_scale_is_the_library_constant() {
    assert_eq!(grass_default_residual_scale(), 0.1);
}
