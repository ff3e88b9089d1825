//! Row scores and the sparse gradient, computed straight from activations and output
//! gradients in row chunks: the `m x n` gradient never exists.

use half::{bf16, f16};

use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::Projected;
use crate::core::workspace::{region, total, Carver, ALIGN_SLACK};
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

fn needs_conversion(dtype: Dtype) -> usize {
    (dtype != Dtype::F32) as usize
}

/// B as f32: borrowed when it already is, else converted into `buf`.
fn kept_f32<'w>(b: Act<'w>, buf: Option<&'w mut [f32]>) -> &'w [f32] {
    match (b, buf) {
        (Act::F32(s), _) => s,
        (other, Some(buf)) => {
            for (i, o) in buf.iter_mut().enumerate() {
                *o = other.get(i);
            }
            buf
        }
        (_, None) => unreachable!("conversion buffer missing"),
    }
}

pub fn scores_workspace_size(p: &Projected, b: usize, dtype: Dtype) -> usize {
    let c = chunk_rows(p);
    total(&[
        needs_conversion(dtype) * region(b.saturating_mul(p.k), 4),
        region(b.saturating_mul(c), 4),
        region(c.saturating_mul(p.k), 4),
        2 * ALIGN_SLACK,
    ])
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

pub fn sparse_grad_workspace_size(p: &Projected, b: usize, r: usize, dtype: Dtype) -> usize {
    total(&[
        needs_conversion(dtype) * region(b.saturating_mul(p.k), 4),
        region(b.saturating_mul(r), 4),
        2 * ALIGN_SLACK,
    ])
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
