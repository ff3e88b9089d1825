//! Row scores (`grass_row_scores`), computed straight from activations and output gradients
//! in row chunks: the `m x n` gradient never exists.

use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::scratch::{Carve, Plan};
use crate::core::shape::Projected;
use crate::cpu::activations::{kept_f32, Activations};
use crate::cpu::gemm::{matmul, View};

/// Rows of G per chunk: at most 8 MiB of f32 and at most a quarter of the rows, so even a
/// small layer never has its whole gradient in scratch.
fn chunk_rows(p: &Projected) -> usize {
    ((2usize << 20) / p.k).min(p.d.div_ceil(4)).max(1)
}

/// Scratch of [`row_scores`]: B in f32 when it is not already, then one chunk of A's columns
/// and one chunk of G's rows.
struct Layout {
    rows: usize,
    conv: Option<usize>,
    cols: usize,
    out: usize,
}

fn layout(plan: &mut Plan, p: &Projected, b: usize, dtype: Dtype) -> Layout {
    let rows = chunk_rows(p);
    Layout {
        rows,
        conv: (dtype != Dtype::F32).then(|| plan.take(b * p.k * 4)),
        cols: plan.take(b * rows * 4),
        out: plan.take(rows * p.k * 4),
    }
}

pub fn scores_workspace_size(p: &Projected, b: usize, dtype: Dtype) -> usize {
    let mut plan = Plan::sizing();
    layout(&mut plan, p, b, dtype);
    plan.size()
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
    let mut plan = Plan::within(ws.as_ptr() as usize, ws.len());
    let l = layout(&mut plan, p, bt, b.dtype());
    plan.check()?;
    let mut ws = Carve::new(ws);
    let conv = match l.conv {
        Some(at) => Some(ws.at::<f32>(at, bt * k)?),
        None => None,
    };
    let bmat = kept_f32(b, conv);
    let c = l.rows;
    let cols: &mut [f32] = ws.at(l.cols, bt * c)?;
    let out: &mut [f32] = ws.at(l.out, c * k)?;
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
