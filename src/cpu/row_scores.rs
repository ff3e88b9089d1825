//! Row scores (`grass_row_scores`), computed straight from activations and output gradients
//! in row chunks: the `m x n` gradient never exists.

use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::Projected;
use crate::core::workspace::{region, Carver, ALIGN_SLACK};
use crate::cpu::activations::{kept_f32, needs_conversion, Activations};
use crate::cpu::gemm::{matmul, View};

/// Rows of G per chunk: at most 8 MiB of f32 and at most a quarter of the rows, so even a
/// small layer never has its whole gradient in scratch.
fn chunk_rows(p: &Projected) -> usize {
    ((2usize << 20) / p.k).min(p.d.div_ceil(4)).max(1)
}

pub fn scores_workspace_size(p: &Projected, b: usize, dtype: Dtype) -> usize {
    let c = chunk_rows(p);
    needs_conversion(dtype) * region(b * p.k, 4)
        + region(b * c, 4)
        + region(c * p.k, 4)
        + 2 * ALIGN_SLACK
}

/// `scores[i] = ‖row i of the projected-side gradient‖₂` for all `d` rows.
pub fn row_scores(
    p: &Projected,
    act: &Activations<'_>,
    scores: &mut [f32],
    ws: &mut [u8],
) -> Result<()> {
    let (a, b) = act.operands(p);
    let (bt, d, k) = (act.b, p.d, p.k);
    let mut ws = Carver::new(ws);
    let conv = if b.dtype() == Dtype::F32 {
        None
    } else {
        Some(ws.take::<f32>(bt * k)?)
    };
    let bmat = kept_f32(b, conv);
    let c = chunk_rows(p);
    let cols: &mut [f32] = ws.take(bt * c)?;
    let out: &mut [f32] = ws.take(c * k)?;
    let mut i0 = 0;
    while i0 < d {
        let cn = c.min(d - i0);
        for t in 0..bt {
            for i in 0..cn {
                cols[t * cn + i] = a.get(t * d + i0 + i);
            }
        }
        matmul(
            View::transposed(&cols[..bt * cn], bt, cn),
            View::row_major(bmat, bt, k),
            &mut out[..cn * k],
            false,
        );
        for i in 0..cn {
            let s: f64 = out[i * k..(i + 1) * k]
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum();
            scores[i0 + i] = s.sqrt() as f32;
        }
        i0 += cn;
    }
    Ok(())
}
