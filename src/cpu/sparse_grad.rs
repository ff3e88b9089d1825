//! The compressed gradient (`grass_sparse_grad`): the selected rows of the projected-side
//! gradient, scaled, computed from activations and output gradients without forming G.

use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::scratch::{Carve, Plan};
use crate::core::shape::Projected;
use crate::cpu::activations::{kept_f32, Activations};
use crate::cpu::gemm::{matmul, View};

/// Scratch of [`sparse_grad`]: B in f32 when it is not already, then the gathered and scaled
/// columns of A.
struct Layout {
    conv: Option<usize>,
    gathered: usize,
}

fn layout(plan: &mut Plan, p: &Projected, b: usize, r: usize, dtype: Dtype) -> Layout {
    Layout {
        conv: (dtype != Dtype::F32).then(|| plan.take(b * p.k * 4)),
        gathered: plan.take(b * r * 4),
    }
}

pub fn sparse_grad_workspace_size(p: &Projected, b: usize, r: usize, dtype: Dtype) -> usize {
    let mut plan = Plan::sizing();
    layout(&mut plan, p, b, r, dtype);
    plan.size()
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
    let mut plan = Plan::within(ws.as_ptr() as usize, ws.len());
    let l = layout(&mut plan, p, bt, r, b.dtype());
    plan.check()?;
    let mut ws = Carve::new(ws);
    let conv = match l.conv {
        Some(at) => Some(ws.at::<f32>(at, bt * k)?),
        None => None,
    };
    let bmat = kept_f32(b, conv);
    let gathered: &mut [f32] = ws.at(l.gathered, bt * r)?;
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
