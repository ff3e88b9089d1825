//! `grass_sparse_grad` on the GPU against the host, and what it does with bad indices.

use grass::core::dtype::{tolerance, Dtype};
use grass::ffi::*;

use crate::gpu::*;
use crate::row_scores::{activations, dims, SIDES};

#[allow(clippy::too_many_arguments)]
fn sparse_grad(
    ctx: *const grass_context,
    m: usize,
    n: usize,
    b: usize,
    side: grass_side,
    r: usize,
    dt: Dtype,
    x: *const u8,
    dy: *const u8,
    idx: *const i32,
    scales: *const f32,
    out: *mut f32,
    accumulate: bool,
    ws: (*mut u8, usize),
) -> grass_status {
    unsafe {
        grass_sparse_grad(
            ctx,
            m as i64,
            n as i64,
            b as i64,
            side,
            r as i64,
            code(dt),
            x.cast(),
            dy.cast(),
            idx,
            scales,
            out,
            accumulate as i32,
            ws.0.cast(),
            ws.1,
            std::ptr::null_mut(),
        )
    }
}

fn grad_ws(
    ctx: *const grass_context,
    m: usize,
    n: usize,
    b: usize,
    side: grass_side,
    r: usize,
    dt: Dtype,
) -> usize {
    let mut bytes = 0;
    ok(unsafe {
        grass_sparse_grad_workspace_size(
            ctx,
            m as i64,
            n as i64,
            b as i64,
            side,
            r as i64,
            code(dt),
            &mut bytes,
        )
    });
    bytes
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_grad_matches_the_host() {
    let g = gpu("sparse_grad_matches_the_host");
    let mut rng = Rng::new(2);
    // r is capped at d below: the last shapes give r = d, r = 1, k = 1 and b = 1.
    for &(m, n, b, r) in &[
        (64usize, 48usize, 40usize, 17usize),
        (300, 200, 64, 150),
        (33, 700, 9, 33),
        (1, 37, 1, 1),
        (257, 3, 1, 257),
        (300, 257, 5, 1),
        (1025, 1, 3, 1025),
    ] {
        for dt in DTYPES {
            for side in SIDES {
                for accumulate in [false, true] {
                    let (x, dy) = activations(&mut rng, m, n, b, dt);
                    let (d, k) = dims(m, n, side);
                    let r = r.min(d);
                    let idx = rng.sorted_indices(r, d);
                    let scales: Vec<f32> = (0..r).map(|_| 0.5 + rng.unit() as f32).collect();
                    let start = rng.normals(r * k);
                    let mut want = start.clone();
                    let mut ws = vec![0u8; grad_ws(g.cpu, m, n, b, side, r, dt)];
                    ok(sparse_grad(
                        g.cpu,
                        m,
                        n,
                        b,
                        side,
                        r,
                        dt,
                        x.as_ptr(),
                        dy.as_ptr(),
                        idx.as_ptr(),
                        scales.as_ptr(),
                        want.as_mut_ptr(),
                        accumulate,
                        (ws.as_mut_ptr(), ws.len()),
                    ));
                    let wsb = grad_ws(g.cuda, m, n, b, side, r, dt);
                    let (dx, ddy) = (DevBuf::from_bytes(&x), DevBuf::from_bytes(&dy));
                    let (didx, dscales) = (DevBuf::from(&idx), DevBuf::from(&scales));
                    let out = if accumulate {
                        DevBuf::from(&start)
                    } else {
                        DevBuf::poisoned(r * k * 4)
                    };
                    let dws = DevBuf::poisoned(wsb);
                    ok(sparse_grad(
                        g.cuda,
                        m,
                        n,
                        b,
                        side,
                        r,
                        dt,
                        dx.ptr(),
                        ddy.ptr(),
                        didx.ptr(),
                        dscales.ptr(),
                        out.ptr(),
                        accumulate,
                        (dws.ptr(), wsb),
                    ));
                    let what =
                        format!("g {m}x{n} b={b} r={r} {dt:?} side {side} accumulate {accumulate}");
                    assert_close(&what, &out.f32s(), &want, tolerance(Dtype::F32, b));
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn an_index_out_of_range_yields_nan_rows_instead_of_a_fault() {
    let g = gpu("an_index_out_of_range_yields_nan_rows_instead_of_a_fault");
    let (m, n, b, r) = (16usize, 12usize, 5usize, 4usize);
    let mut rng = Rng::new(3);
    let (x, dy) = activations(&mut rng, m, n, b, Dtype::F32);
    let idx = vec![1i32, 3, 99, -5];
    let scales = vec![1f32; r];
    let wsb = grad_ws(g.cuda, m, n, b, GRASS_SIDE_ROWS, r, Dtype::F32);
    let (dx, ddy) = (DevBuf::from_bytes(&x), DevBuf::from_bytes(&dy));
    let (didx, dscales) = (DevBuf::from(&idx), DevBuf::from(&scales));
    let (out, dws) = (DevBuf::poisoned(r * n * 4), DevBuf::poisoned(wsb));
    ok(sparse_grad(
        g.cuda,
        m,
        n,
        b,
        GRASS_SIDE_ROWS,
        r,
        Dtype::F32,
        dx.ptr(),
        ddy.ptr(),
        didx.ptr(),
        dscales.ptr(),
        out.ptr(),
        false,
        (dws.ptr(), wsb),
    ));
    let got = out.f32s();
    for j in 0..r {
        let row = &got[j * n..(j + 1) * n];
        if j < 2 {
            assert!(
                row.iter().all(|v| v.is_finite()),
                "row {j} should be finite"
            );
        } else {
            assert!(
                row.iter().all(|v| v.is_nan()),
                "row {j} (index {}) should be NaN",
                idx[j]
            );
        }
    }
}
