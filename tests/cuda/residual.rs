//! `grass_residual_step` on the GPU against the host: the same rows move by the same steps,
//! bit for bit wherever the two GEMMs agree on the sign of G (all but a vanishing few
//! elements whose G is within rounding of 0), and the device-side decisions (a step that
//! skipped before, a NaN in the batch) leave W as it was.

use grass::core::dtype::Dtype;
use grass::ffi::*;

use crate::gpu::*;
use crate::row_scores::{activations, chunk_ws, dims, SIDES};

/// Sorted, distinct: every fourth unit.
fn every_fourth(d: usize) -> Vec<i32> {
    (0..d as i32).step_by(4).collect()
}

#[allow(clippy::too_many_arguments)]
unsafe fn residual(
    ctx: *const grass_context,
    (m, n, b): (usize, usize, usize),
    side: grass_side,
    dt: Dtype,
    x: *const u8,
    dy: *const u8,
    w_dt: Dtype,
    w: *mut u8,
    idx: (*const i32, usize),
    lr_scale: *const f32,
    skipped: *mut i32,
    workspace: (*mut u8, usize),
) {
    let cfg = grass_adamw_config::defaults();
    ok(grass_residual_step(
        ctx,
        &cfg,
        m as i64,
        n as i64,
        b as i64,
        side,
        idx.1 as i64,
        code(dt),
        x.cast(),
        dy.cast(),
        code(w_dt),
        w.cast(),
        idx.0,
        0.1,
        3e-2,
        lr_scale,
        skipped,
        workspace.0.cast(),
        workspace.1,
        std::ptr::null_mut(),
    ));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_steps_match_the_host() {
    let g = gpu("residual_steps_match_the_host");
    let mut rng = Rng::new(7);
    // (500, 4000) needs several chunks of G on either side; the others have one token, a
    // kept dimension of 1 and sizes off every block multiple.
    for &(m, n, b) in &[
        (96usize, 80usize, 33usize),
        (500, 4000, 8),
        (1, 37, 1),
        (257, 3, 300),
    ] {
        for dt in DTYPES {
            for w_dt in [Dtype::F32, Dtype::Bf16] {
                for side in SIDES {
                    let (x, dy) = activations(&mut rng, m, n, b, dt);
                    let (d, _) = dims(m, n, side);
                    let idx = every_fourth(d);
                    let w0 = encode(&rng.normals(m * n), w_dt);
                    let lr_scale = 0.5f32;
                    let mut want = w0.clone();
                    let mut skipped_h = 0i32;
                    let mut hws =
                        vec![
                            0u8;
                            chunk_ws(grass_residual_workspace_size, g.cpu, m, n, b, side, dt)
                        ];
                    unsafe {
                        residual(
                            g.cpu,
                            (m, n, b),
                            side,
                            dt,
                            x.as_ptr(),
                            dy.as_ptr(),
                            w_dt,
                            want.as_mut_ptr(),
                            (idx.as_ptr(), idx.len()),
                            &lr_scale,
                            &mut skipped_h,
                            (hws.as_mut_ptr(), hws.len()),
                        )
                    };
                    let wsb = chunk_ws(grass_residual_workspace_size, g.cuda, m, n, b, side, dt);
                    let (dx, ddy, dw) = (
                        DevBuf::from_bytes(&x),
                        DevBuf::from_bytes(&dy),
                        DevBuf::from_bytes(&w0),
                    );
                    let (didx, dls) = (DevBuf::from(&idx), DevBuf::from(&[lr_scale]));
                    let (dskip, dws) = (DevBuf::from(&[0i32]), DevBuf::poisoned(wsb));
                    unsafe {
                        residual(
                            g.cuda,
                            (m, n, b),
                            side,
                            dt,
                            dx.void().cast(),
                            ddy.void().cast(),
                            w_dt,
                            dw.void().cast(),
                            (didx.ptr(), idx.len()),
                            dls.ptr(),
                            dskip.ptr(),
                            (dws.void().cast(), wsb),
                        )
                    };
                    sync();
                    let what = format!("residual {m}x{n} b={b} {dt:?} W {w_dt:?} side {side}");
                    assert_eq!((skipped_h, dskip.i32s()[0]), (0, 0), "{what}");
                    let got = dw.bytes();
                    let size = w_dt.size();
                    let differ = got
                        .chunks(size)
                        .zip(want.chunks(size))
                        .filter(|(a, b)| a != b)
                        .count();
                    assert!(
                        differ * 1000 <= m * n,
                        "{what}: {differ} of {} elements differ",
                        m * n
                    );
                    if idx.len() < d {
                        assert_ne!(got, w0, "{what}: nothing moved");
                    }
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_skips_on_the_device() {
    let g = gpu("residual_skips_on_the_device");
    let mut rng = Rng::new(9);
    let (m, n, b) = (64usize, 48usize, 16usize);
    let (x, dy) = activations(&mut rng, m, n, b, Dtype::F32);
    let idx = every_fourth(m);
    let w0 = encode(&rng.normals(m * n), Dtype::F32);
    let wsb = chunk_ws(
        grass_residual_workspace_size,
        g.cuda,
        m,
        n,
        b,
        GRASS_SIDE_ROWS,
        Dtype::F32,
    );
    let mut bad = x.clone();
    bad[4..8].copy_from_slice(&f32::NAN.to_ne_bytes());
    // (x, skipped before, skipped after): a skipped step gates it off and stays; a NaN in X
    // skips it with STEP_SKIPPED_NONFINITE
    for (xs, before, after) in [(&x, 2i32, 2i32), (&bad, 0, 1)] {
        let (dx, ddy, dw) = (
            DevBuf::from_bytes(xs),
            DevBuf::from_bytes(&dy),
            DevBuf::from_bytes(&w0),
        );
        let (didx, dskip, dws) = (
            DevBuf::from(&idx),
            DevBuf::from(&[before]),
            DevBuf::poisoned(wsb),
        );
        unsafe {
            residual(
                g.cuda,
                (m, n, b),
                GRASS_SIDE_ROWS,
                Dtype::F32,
                dx.void().cast(),
                ddy.void().cast(),
                Dtype::F32,
                dw.void().cast(),
                (didx.ptr(), idx.len()),
                std::ptr::null(),
                dskip.ptr(),
                (dws.void().cast(), wsb),
            )
        };
        sync();
        assert_eq!(dskip.i32s()[0], after);
        assert_eq!(
            dw.bytes(),
            w0,
            "W must not move (skipped {before} -> {after})"
        );
    }
}
