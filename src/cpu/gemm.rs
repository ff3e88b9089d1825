//! The one dense kernel of the host backend: `C = alpha·A·B + beta·C` on strided f32 views.
//! `matrixmultiply` is a small, well-kept pure-Rust BLAS-style kernel (packed panels, SIMD
//! micro-kernels, optional threads), so the crate needs no system BLAS.

/// A strided matrix view: element (i, j) lives at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `rows x cols` matrix, seen as `cols x rows`.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows: cols,
            cols: rows,
            rs: 1,
            cs: cols,
        }
    }
    fn last(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// `c (a.rows x b.cols, row-major) = a·b + (accumulate ? c : 0)`.
pub fn matmul(a: View<'_>, b: View<'_>, c: &mut [f32], accumulate: bool) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    assert!(
        a.data.len() >= a.last() && b.data.len() >= b.last(),
        "view out of bounds"
    );
    assert!(c.len() >= a.rows * b.cols, "output too small");
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: bounds of both views and of c were checked above; c does not alias a or b
    // (it is a distinct &mut slice).
    unsafe {
        matrixmultiply::sgemm(
            a.rows,
            a.cols,
            b.cols,
            1.0,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            b.cols as isize,
            1,
        );
    }
}
