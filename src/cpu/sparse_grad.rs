//! The compressed gradient (`grass_sparse_grad`): the selected rows of the projected-side
//! gradient, scaled, computed from activations and output gradients without forming G.

use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::Projected;
use crate::core::workspace::{region, Carver, ALIGN_SLACK};
use crate::cpu::activations::{kept_f32, needs_conversion, Activations};
use crate::cpu::gemm::{matmul, View};

pub fn sparse_grad_workspace_size(p: &Projected, b: usize, r: usize, dtype: Dtype) -> usize {
    needs_conversion(dtype) * region(b * p.k, 4) + region(b * r, 4) + 2 * ALIGN_SLACK
}

/// `g (r x k) [+]= ρ ⊙ (A[:, σ])ᵀ B`: a gather of r columns and one `r x b x k` GEMM.
pub fn sparse_grad(
    p: &Projected,
    act: &Activations<'_>,
    indices: &[i32],
    scales: &[f32],
    g: &mut [f32],
    accumulate: bool,
    ws: &mut [u8],
) -> Result<()> {
    let (a, b) = act.operands(p);
    let (bt, d, k, r) = (act.b, p.d, p.k, indices.len());
    let mut ws = Carver::new(ws);
    let conv = if b.dtype() == Dtype::F32 {
        None
    } else {
        Some(ws.take::<f32>(bt * k)?)
    };
    let bmat = kept_f32(b, conv);
    let gathered: &mut [f32] = ws.take(bt * r)?;
    for t in 0..bt {
        for j in 0..r {
            gathered[t * r + j] = scales[j] * a.get(t * d + indices[j] as usize);
        }
    }
    matmul(
        View::transposed(gathered, bt, r),
        View::row_major(bmat, bt, k),
        &mut g[..r * k],
        accumulate,
    );
    Ok(())
}
