//! The residual step (`grass_residual_step`): the rows of the projected-side gradient that
//! are not selected move by signSGD, computed chunk by chunk from activations and output
//! gradients so that the `m x n` gradient never exists (FRUGAL's state-free update of the
//! complement of the Adam subspace).

use crate::core::config::Side;
use crate::core::dtype::Elem;
use crate::core::error::Result;
use crate::core::shape::Projected;
use crate::cpu::activations::Activations;
use crate::cpu::adamw::Weights;
use crate::cpu::row_scores::for_each_grad_chunk;

/// -1, 0 or 1 by the sign of `g`; 0 for zero and NaN (a NaN never moves a weight).
#[inline(always)]
pub fn sign(g: f32) -> f32 {
    if g > 0.0 {
        1.0
    } else if g < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// For every unit u of [0, d) that is not in `indices` (sorted): W's row u (side ROWS) or
/// column u (side COLS) `-= step · sign(G_u)`, each element in f32 and rounded once to W's
/// dtype. Scratch: `scores_workspace_size` (the same chunks of G as the row scores).
pub fn residual_step(
    p: &Projected,
    act: &Activations<'_>,
    indices: &[i32],
    w: Weights<'_>,
    step: f32,
    ws: &mut [u8],
) -> Result<()> {
    match w {
        Weights::F32(w) => apply(p, act, indices, w, step, ws),
        Weights::Bf16(w) => apply(p, act, indices, w, step, ws),
        Weights::F16(w) => apply(p, act, indices, w, step, ws),
    }
}

fn apply<E: Elem>(
    p: &Projected,
    act: &Activations<'_>,
    indices: &[i32],
    w: &mut [E],
    step: f32,
    ws: &mut [u8],
) -> Result<()> {
    let (k, n, cols) = (p.k, p.n, p.side == Side::Cols);
    // the selected units, walked in step with the chunks (both ascending)
    let mut next = 0;
    for_each_grad_chunk(p, act, ws, |i0, rows, chunk| {
        for i in 0..rows {
            let u = i0 + i;
            while next < indices.len() && (indices[next] as usize) < u {
                next += 1;
            }
            if next < indices.len() && indices[next] as usize == u {
                continue;
            }
            for (c, &g) in chunk[i * k..(i + 1) * k].iter().enumerate() {
                let s = sign(g);
                if s != 0.0 {
                    let e = if cols { c * n + u } else { u * n + c };
                    w[e] = E::from_f32(w[e].to_f32() - step * s);
                }
            }
        }
    })
}
