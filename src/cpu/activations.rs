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

/// B as f32: borrowed when it already is, else converted into `buf`.
pub(crate) fn kept_f32<'w>(b: Act<'w>, buf: Option<&'w mut [f32]>) -> &'w [f32] {
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
