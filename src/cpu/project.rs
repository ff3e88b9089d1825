//! Row scores and the sparse gradient, computed straight from activations and output
//! gradients in row chunks: the `m x n` gradient never exists.

use half::{bf16, f16};

use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::Projected;
use crate::core::workspace::{region, Carver, ALIGN_SLACK};
use crate::cpu::gemm::{matmul, View};

/// A read-only tensor of one of the activation dtypes.
#[derive(Clone, Copy)]
pub enum Act<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl Act<'_> {
    pub fn dtype(&self) -> Dtype {
        match self {
            Act::F32(_) => Dtype::F32,
            Act::Bf16(_) => Dtype::Bf16,
            Act::F16(_) => Dtype::F16,
        }
    }
    #[inline(always)]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Act::F32(s) => s[i],
            Act::Bf16(s) => s[i].to_f32(),
            Act::F16(s) => s[i].to_f32(),
        }
    }
    pub fn all_finite(&self) -> bool {
        match self {
            Act::F32(s) => s.iter().all(|v| v.is_finite()),
            Act::Bf16(s) => s.iter().all(|v| v.is_finite()),
            Act::F16(s) => s.iter().all(|v| v.is_finite()),
        }
    }
}

/// X (`b x n`) and dY (`b x m`) of one linear layer, row-major, same dtype.
#[derive(Clone, Copy)]
pub struct Activations<'a> {
    pub x: Act<'a>,
    pub dy: Act<'a>,
    pub b: usize,
}

impl<'a> Activations<'a> {
    /// (A, B): A's columns are the projected dimension, B's the kept one; G_sel = Aᵀ B.
    fn operands(&self, p: &Projected) -> (Act<'a>, Act<'a>) {
        match p.side {
            crate::core::config::Side::Cols => (self.x, self.dy),
            _ => (self.dy, self.x),
        }
    }
}

/// Rows of G per chunk: at most 8 MiB of f32 and at most a quarter of the rows, so even a
/// small layer never has its whole gradient in scratch.
fn chunk_rows(p: &Projected) -> usize {
    ((2usize << 20) / p.k).min(p.d.div_ceil(4)).max(1)
}

/// Bytes of scratch the token-chunked buffers of one op may take (the rest of the 64 MiB
/// budget covers the fixed regions and alignment).
const TOKEN_BUDGET: usize = 48 << 20;

fn needs_conversion(dtype: Dtype) -> usize {
    (dtype != Dtype::F32) as usize
}

/// Tokens per chunk when each token needs `per_token` bytes of scratch: all of them when they
/// fit the budget, else as many as do (at least one).
fn chunk_tokens(b: usize, per_token: usize) -> usize {
    (TOKEN_BUDGET / per_token.max(1)).clamp(1, b.max(1))
}

/// Rows `t0..t0 + tn` of B as f32: borrowed when B already is f32, else converted into `buf`.
fn kept_f32<'w>(b: Act<'w>, k: usize, t0: usize, tn: usize, buf: &'w mut [f32]) -> &'w [f32] {
    match b {
        Act::F32(s) => &s[t0 * k..(t0 + tn) * k],
        other => {
            let base = t0 * k;
            for (i, o) in buf[..tn * k].iter_mut().enumerate() {
                *o = other.get(base + i);
            }
            &buf[..tn * k]
        }
    }
}

/// Tokens per chunk of the row scores: the conversion of B's rows and the gathered chunk of
/// A's columns.
fn scores_tokens(p: &Projected, b: usize, dtype: Dtype) -> usize {
    chunk_tokens(b, needs_conversion(dtype) * p.k * 4 + chunk_rows(p) * 4)
}

/// `conversion (tc·k·4 when X and dY are not f32) + tc·c·4 + c·k·4` with `c` = rows per chunk
/// (`c·k·4 ≤ 8 MiB`, `c ≤ d/4`) and `tc` = tokens per chunk (`tc·(conversion/token + c·4) ≤
/// 48 MiB`): at most 56 MiB plus alignment.
pub fn scores_workspace_size(p: &Projected, b: usize, dtype: Dtype) -> usize {
    let c = chunk_rows(p);
    let tc = scores_tokens(p, b, dtype);
    needs_conversion(dtype) * region(tc * p.k, 4)
        + region(tc * c, 4)
        + region(c * p.k, 4)
        + 3 * ALIGN_SLACK
}

/// `scores[i] = ‖row i of the projected-side gradient‖₂` for all `d` rows: per chunk of rows,
/// the chunk of G is summed over chunks of tokens.
pub fn row_scores(
    p: &Projected,
    act: &Activations<'_>,
    scores: &mut [f32],
    ws: &mut [u8],
) -> Result<()> {
    let (a, b) = act.operands(p);
    let (bt, d, k) = (act.b, p.d, p.k);
    let c = chunk_rows(p);
    let tc = scores_tokens(p, bt, b.dtype());
    let mut ws = Carver::new(ws);
    let conv: &mut [f32] = ws.take(needs_conversion(b.dtype()) * tc * k)?;
    let cols: &mut [f32] = ws.take(tc * c)?;
    let out: &mut [f32] = ws.take(c * k)?;
    // with a single token chunk B is converted once, not once per chunk of rows
    let once = tc >= bt;
    if once && b.dtype() != Dtype::F32 {
        kept_f32(b, k, 0, bt, conv);
    }
    let mut i0 = 0;
    while i0 < d {
        let cn = c.min(d - i0);
        let mut t0 = 0;
        while t0 < bt {
            let tn = tc.min(bt - t0);
            for t in 0..tn {
                for i in 0..cn {
                    cols[t * cn + i] = a.get((t0 + t) * d + i0 + i);
                }
            }
            let bmat: &[f32] = match b {
                Act::F32(s) => &s[t0 * k..(t0 + tn) * k],
                _ if once => &conv[..bt * k],
                _ => kept_f32(b, k, t0, tn, conv),
            };
            matmul(
                View::transposed(&cols[..tn * cn], tn, cn),
                View::row_major(bmat, tn, k),
                &mut out[..cn * k],
                t0 > 0,
            );
            t0 += tn;
        }
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

/// Tokens per chunk of the sparse gradient: the conversion of B's rows and the r gathered
/// columns of A.
fn sparse_grad_tokens(p: &Projected, b: usize, r: usize, dtype: Dtype) -> usize {
    chunk_tokens(b, needs_conversion(dtype) * p.k * 4 + r * 4)
}

/// `conversion (tc·k·4 when X and dY are not f32) + tc·r·4` with `tc` = tokens per chunk,
/// `tc·(conversion/token + r·4) ≤ 48 MiB`: at most 48 MiB plus alignment.
pub fn sparse_grad_workspace_size(p: &Projected, b: usize, r: usize, dtype: Dtype) -> usize {
    let tc = sparse_grad_tokens(p, b, r, dtype);
    needs_conversion(dtype) * region(tc * p.k, 4) + region(tc * r, 4) + 2 * ALIGN_SLACK
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
    let tc = sparse_grad_tokens(p, bt, r, b.dtype());
    let mut ws = Carver::new(ws);
    let conv: &mut [f32] = ws.take(needs_conversion(b.dtype()) * tc * k)?;
    let gathered: &mut [f32] = ws.take(tc * r)?;
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
