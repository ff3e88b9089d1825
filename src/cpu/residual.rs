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
    let mut first = 0;
    for_each_grad_chunk(p, act, ws, |i0, rows, chunk| {
        while first < indices.len() && (indices[first] as usize) < i0 {
            first += 1;
        }
        let moved = |u: usize, next: &mut usize| {
            while *next < indices.len() && (indices[*next] as usize) < u {
                *next += 1;
            }
            !(*next < indices.len() && indices[*next] as usize == u)
        };
        if cols {
            // unit u is column u of W: walk W row by row (c), its columns i0.. contiguous
            for c in 0..k {
                let mut next = first;
                let row = &mut w[c * n + i0..c * n + i0 + rows];
                for (i, e) in row.iter_mut().enumerate() {
                    let s = sign(chunk[i * k + c]);
                    if s != 0.0 && moved(i0 + i, &mut next) {
                        *e = E::from_f32(e.to_f32() - step * s);
                    }
                }
            }
        } else {
            let mut next = first;
            for i in 0..rows {
                if !moved(i0 + i, &mut next) {
                    continue;
                }
                let row = &mut w[(i0 + i) * n..(i0 + i + 1) * n];
                for (e, &g) in row.iter_mut().zip(&chunk[i * k..(i + 1) * k]) {
                    let s = sign(g);
                    if s != 0.0 {
                        *e = E::from_f32(e.to_f32() - step * s);
                    }
                }
            }
        }
    })
}
