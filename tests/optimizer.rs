//! The optimizer handle (`grass_optimizer_*`, which owns a projection) on the CPU backend over many
//! steps: refreshes, micro-batch accumulation, checkpoints and determinism.

mod common;

use std::ptr;

use common::*;
use grass::ffi::*;

fn optimizer(
    ctx: &Ctx,
    m: i64,
    n: i64,
    b: i64,
    pc: &grass_projection_config,
    ac: &grass_adamw_config,
) -> *mut grass_optimizer {
    sparse_optimizer(ctx, pc, ac, m, n, b).unwrap()
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
