//! Shapes of one linear layer and the projected problem derived from it.

use crate::core::config::Side;
use crate::core::error::Result;
use crate::ensure;

/// Converts a signed size from the ABI, naming the argument when it is not positive.
pub fn positive(name: &str, v: i64) -> Result<usize> {
    ensure!(v > 0, InvalidValue, "{name} = {v} must be positive");
    ensure!(
        v <= i32::MAX as i64,
        InvalidValue,
        "{name} = {v} exceeds 2^31 - 1"
    );
    Ok(v as usize)
}

/// Multiplies sizes, failing when the product exceeds 2^63 - 1 (no buffer can be larger, in
/// elements or in bytes).
pub fn product(name: &str, dims: &[usize]) -> Result<usize> {
    let p = dims
        .iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d))
        .filter(|&p| p <= isize::MAX as usize);
    match p {
        Some(v) => Ok(v),
        None => {
            let shown: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            crate::bail!(
                InvalidValue,
                "{name} = {} exceeds 2^63 - 1: no buffer can be that large",
                shown.join(" x ")
            )
        }
    }
}

/// `Y = X Wᵀ` with W `m x n`, X `b x n`, dY `b x m`; the projection picks `r` of the `d` entries
/// of one dimension and keeps all `k` of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projected {
    pub m: usize,
    pub n: usize,
    /// Rows or Cols, never Auto.
    pub side: Side,
    /// Size of the projected dimension.
    pub d: usize,
    /// Size of the kept dimension: compressed tensors are `r x k`.
    pub k: usize,
}

impl Projected {
    pub fn new(m: usize, n: usize, side: Side) -> Projected {
        let side = match side {
            Side::Auto if n > m => Side::Cols,
            Side::Auto => Side::Rows,
            s => s,
        };
        let (d, k) = if side == Side::Rows { (m, n) } else { (n, m) };
        Projected { m, n, side, d, k }
    }
}
