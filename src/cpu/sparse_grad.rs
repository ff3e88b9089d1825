//! The compressed gradient (`grass_sparse_grad`): the selected rows of the projected-side
//! gradient, scaled, computed from activations and output gradients without forming G.

use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::scratch::{bytes, Carve, Plan};
use crate::core::shape::Projected;
use crate::cpu::activations::{chunk_tokens, conversion_per_token, kept_f32, Activations};
use crate::cpu::gemm::{matmul, View};

/// Scratch of [`sparse_grad`]: B's rows of one chunk of tokens in f32 when B is not already,
/// then that chunk of tokens of the gathered and scaled columns of A.
///
/// `conversion (tc·k·4 when X and dY are not f32) + tc·r·4` with `tc` = tokens per chunk,
/// `tc·(conversion/token + r·4) ≤ 48 MiB`: at most 48 MiB plus alignment.
struct Layout {
    tokens: usize,
    conv: usize,
    gathered: usize,
}

fn layout(plan: &mut Plan, p: &Projected, b: usize, r: usize, dtype: Dtype) -> Layout {
    let conv_token = conversion_per_token(dtype, p.k);
    let tokens = chunk_tokens(b, conv_token.saturating_add(bytes(r, 4)));
    Layout {
        tokens,
        conv: plan.take(bytes(tokens, conv_token)),
        gathered: plan.take(bytes(tokens.saturating_mul(r), 4)),
    }
}

pub fn sparse_grad_workspace_size(p: &Projected, b: usize, r: usize, dtype: Dtype) -> usize {
    let mut plan = Plan::sizing();
    layout(&mut plan, p, b, r, dtype);
    plan.size()
}

/// `g (r x k) [+]= ρ ⊙ (A[:, σ])ᵀ B`: a gather of r columns and an `r x b x k` GEMM, over
/// chunks of tokens that each add into g.
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
    let tc = l.tokens;
    let mut ws = Carve::new(ws);
    let conv: &mut [f32] = ws.at(l.conv, conversion_per_token(b.dtype(), k) / 4 * tc)?;
    let gathered: &mut [f32] = ws.at(l.gathered, tc * r)?;
    let mut t0 = 0;
    while t0 < bt {
        let tn = tc.min(bt - t0);
        for t in 0..tn {
            for j in 0..r {
                gathered[t * r + j] = scales[j] * a.get((t0 + t) * d + indices[j] as usize);
            }
        }
        let bmat = kept_f32(b, k, t0, tn, conv);
        matmul(
            View::transposed(&gathered[..tn * r], tn, r),
            View::row_major(bmat, tn, k),
            &mut g[..r * k],
            accumulate || t0 > 0,
        );
        t0 += tn;
    }
    Ok(())
}
