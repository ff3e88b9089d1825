//! Element types of tensors crossing the ABI, and the f32 conversions every backend uses.

use half::{bf16, f16};

use crate::core::codes::{code_enum, Code};

code_enum! {
    pub enum Dtype: "grass_dtype", "GRASS_DTYPE_" {
        F32 = 0 => "f32",
        Bf16 = 1 => "bf16",
        F16 = 2 => "f16",
    }
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        self.label()
    }
}

/// A storage element whose math happens in f32.
pub trait Elem: Copy + Send + Sync + 'static {
    const DTYPE: Dtype;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Elem for f32 {
    const DTYPE: Dtype = Dtype::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Elem for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Elem for f16 {
    const DTYPE: Dtype = Dtype::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Relative tolerance for comparing a result computed from `dtype` inputs against an f32/f64
/// reference: one formula for every test, `tol = c * eps(dtype) * sqrt(k)` for a reduction of
/// length `k`, where eps is the dtype's unit roundoff and c = 8.
pub fn tolerance(dtype: Dtype, reduction_len: usize) -> f64 {
    let eps = match dtype {
        Dtype::F32 => f32::EPSILON as f64,
        Dtype::Bf16 => 2f64.powi(-8),
        Dtype::F16 => 2f64.powi(-11),
    };
    8.0 * eps * (reduction_len.max(1) as f64).sqrt()
}
