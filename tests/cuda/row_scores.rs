//! `grass_row_scores` on the GPU against the host.

use grass::core::dtype::{tolerance, Dtype};
use grass::ffi::*;

use crate::gpu::*;

pub(crate) const SIDES: [grass_side; 2] = [GRASS_SIDE_ROWS, GRASS_SIDE_COLS];

/// X (b x n) and dY (b x m), random normal, stored as `dt`.
pub(crate) fn activations(
    rng: &mut Rng,
    m: usize,
    n: usize,
    b: usize,
    dt: Dtype,
) -> (Vec<u8>, Vec<u8>) {
    (
        encode(&rng.normals(b * n), dt),
        encode(&rng.normals(b * m), dt),
    )
}

pub(crate) fn dims(m: usize, n: usize, side: grass_side) -> (usize, usize) {
    let (mut d, mut k) = (0i64, 0i64);
    ok(unsafe {
        grass_resolve_side(
            m as i64,
            n as i64,
            side,
            std::ptr::null_mut(),
            &mut d,
            &mut k,
        )
    });
    (d as usize, k as usize)
}

/// The signature of `grass_scores_workspace_size` and `grass_residual_workspace_size`.
pub(crate) type ChunkWorkspaceQuery = unsafe extern "C" fn(
    *const grass_context,
    i64,
    i64,
    i64,
    grass_side,
    grass_dtype,
    *mut usize,
) -> grass_status;

/// Scratch bytes of an op that walks G in the row scores' chunks, by its size query.
pub(crate) fn chunk_ws(
    query: ChunkWorkspaceQuery,
    ctx: *const grass_context,
    m: usize,
    n: usize,
    b: usize,
    side: grass_side,
    dt: Dtype,
) -> usize {
    let mut bytes = 0;
    ok(unsafe {
        query(
            ctx,
            m as i64,
            n as i64,
            b as i64,
            side,
            code(dt),
            &mut bytes,
        )
    });
    bytes
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn row_scores_match_the_host() {
    let g = gpu("row_scores_match_the_host");
    let mut rng = Rng::new(1);
    // The second shape needs several chunks on either side; the others have one token, a
    // kept dimension of 1 (m = 1 or n = 1 on one side) and sizes off every block multiple.
    for &(m, n, b) in &[
        (96usize, 80usize, 33usize),
        (500, 40000, 8),
        (1, 37, 1),
        (257, 3, 300),
        (1025, 1, 2),
    ] {
        for dt in DTYPES {
            for side in SIDES {
                let (x, dy) = activations(&mut rng, m, n, b, dt);
                let (d, _) = dims(m, n, side);
                let mut want = vec![0f32; d];
                let mut ws =
                    vec![0u8; chunk_ws(grass_scores_workspace_size, g.cpu, m, n, b, side, dt)];
                ok(unsafe {
                    grass_row_scores(
                        g.cpu,
                        m as i64,
                        n as i64,
                        b as i64,
                        side,
                        code(dt),
                        x.as_ptr().cast(),
                        dy.as_ptr().cast(),
                        want.as_mut_ptr(),
                        ws.as_mut_ptr().cast(),
                        ws.len(),
                        std::ptr::null_mut(),
                    )
                });
                let wsb = chunk_ws(grass_scores_workspace_size, g.cuda, m, n, b, side, dt);
                let (dx, ddy) = (DevBuf::from_bytes(&x), DevBuf::from_bytes(&dy));
                let (out, dws) = (DevBuf::poisoned(d * 4), DevBuf::poisoned(wsb));
                ok(unsafe {
                    grass_row_scores(
                        g.cuda,
                        m as i64,
                        n as i64,
                        b as i64,
                        side,
                        code(dt),
                        dx.void(),
                        ddy.void(),
                        out.ptr(),
                        dws.void(),
                        wsb,
                        std::ptr::null_mut(),
                    )
                });
                let what = format!("scores {m}x{n} b={b} {dt:?} side {side}");
                assert_close(&what, &out.f32s(), &want, tolerance(Dtype::F32, b));
            }
        }
    }
}
