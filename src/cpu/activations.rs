//! The inputs of row scores and the sparse gradient: X and dY of one linear layer in one of
//! the activation dtypes, and their f32 view.

use half::{bf16, f16};

use crate::core::dtype::Dtype;
use crate::core::shape::Projected;

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
    pub(crate) fn operands(&self, p: &Projected) -> (Act<'a>, Act<'a>) {
        match p.side {
            crate::core::config::Side::Cols => (self.x, self.dy),
            _ => (self.dy, self.x),
        }
    }
}

/// Bytes of scratch the token-chunked buffers of one op may take (the rest of the 64 MiB
/// budget covers the fixed regions and alignment).
const TOKEN_BUDGET: usize = 48 << 20;

/// Bytes per token of B's conversion to f32: none when B already is f32.
pub(crate) fn conversion_per_token(dtype: Dtype, k: usize) -> usize {
    if dtype == Dtype::F32 {
        0
    } else {
        crate::core::scratch::bytes(k, 4)
    }
}

/// Tokens per chunk when each token needs `per_token` bytes of scratch: all of them when they
/// fit the budget, else as many as do (at least one).
pub(crate) fn chunk_tokens(b: usize, per_token: usize) -> usize {
    (TOKEN_BUDGET / per_token.max(1)).clamp(1, b.max(1))
}

/// Rows `t0..t0 + tn` of B (`k` columns) as f32: borrowed when B already is f32, else
/// converted into `buf`.
pub(crate) fn kept_f32<'w>(
    b: Act<'w>,
    k: usize,
    t0: usize,
    tn: usize,
    buf: &'w mut [f32],
) -> &'w [f32] {
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
