//! The layer-1 ops on device pointers: each validates what the kernels need, carves its
//! scratch from the caller's workspace and enqueues its work on the caller's stream. None
//! allocates or waits for the device.

use crate::backend::*;
use crate::core::config::{DecayMode, RefreshMode, Scaling, Side};
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::scratch::Plan;
use crate::cuda::blas::Gemm;
use crate::cuda::device::{
    fits_i32, residual_layout, scores_layout, select_layout, sparse_grad_layout, step_layout,
    Device, StepLayout, RESIDUAL_HEADER, STEP_HEADER,
};
use crate::cuda::launch::{self, launch, Arg, Shape};

/// Threads per block of the elementwise kernels.
const BLOCK: u32 = 256;
/// Blocks of the grid-stride kernels (enough to fill any current GPU).
const MAX_BLOCKS: u32 = 4096;
/// Threads of the selection kernel (SEL_THREADS in kernels/select.cu, whose launch bounds
/// refuse a larger block).
const SELECT_THREADS: u32 = 512;
/// Threads per block of the carry kernel (at most CARRY_THREADS in kernels/state_refresh.cu, which
/// sizes its shared memory by it); its blocks split the columns.
const CARRY_THREADS: u32 = 256;
/// Threads of the one block of `sq_norm` (`SQ_NORM_THREADS` in kernels/adamw.cu).
const SQ_NORM_THREADS: u32 = 256;

fn dt(d: Dtype) -> Arg {
    Arg::I32(d as i32)
}

/// (A, B) of G_sel = Aᵀ B: A's columns are the projected dimension.
fn operands(side: Side, x: usize, dy: usize) -> (usize, usize) {
    if side == Side::Cols {
        (x, dy)
    } else {
        (dy, x)
    }
}

impl Device {
    pub fn row_scores(&self, a: &RowScoresArgs) -> Result<()> {
        let p = a.p;
        let mut plan = Plan::within(a.ws.addr, a.ws.bytes);
        let l = scores_layout(&mut plan, &p);
        plan.check()?;
        let (amat, bmat) = operands(p.side, a.batch.x.addr(), a.batch.dy.addr());
        let _bound = self.bind()?;
        let mut i0 = 0;
        while i0 < p.d {
            let rows = l.rows.min(p.d - i0);
            let g = Gemm {
                dtype: a.batch.dtype(),
                b: a.batch.b,
                k: p.k,
                n: rows,
                bmat,
                amat: amat + i0 * a.batch.dtype().size(),
                lda: p.d,
                out: l.chunk,
            };
            self.blas.run(&g, l.blas, l.blas_bytes, a.stream)?;
            // SAFETY: the chunk holds rows x k f32 written by the GEMM; scores holds d f32.
            unsafe {
                launch(
                    &self.kernels.row_norms,
                    Shape::linear(rows as u64 * 256, 256, i32::MAX as u32),
                    a.stream,
                    [
                        Arg::Ptr(l.chunk),
                        Arg::I32(rows as i32),
                        Arg::I64(p.k as i64),
                        Arg::Ptr(a.scores.addr() + i0 * 4),
                    ],
                )?;
            }
            i0 += rows;
        }
        Ok(())
    }

    pub fn select(&self, a: &SelectArgs) -> Result<()> {
        let d = fits_i32("d", a.scores.len())?;
        let r = fits_i32("rank", a.sel.rank)?;
        let mut plan = Plan::within(a.ws.addr, a.ws.bytes);
        let l = select_layout(&mut plan, a.scores.len());
        plan.check()?;
        let _bound = self.bind()?;
        // SAFETY: scores holds d f32, indices and scales r entries, and the scratch regions
        // the sizes select_layout gave them.
        unsafe {
            launch(
                &self.kernels.select_rows,
                Shape::single(SELECT_THREADS),
                a.stream,
                [
                    Arg::Ptr(a.scores.addr()),
                    Arg::I32(d),
                    Arg::I32(r),
                    Arg::I32(a.sel.method as i32),
                    Arg::I32(a.sel.power as i32),
                    Arg::I32((a.sel.scaling == Scaling::None) as i32),
                    Arg::U64(a.sel.seed),
                    Arg::U32(a.sel.layer_id),
                    Arg::U32(a.refresh_index),
                    Arg::Ptr(addr_or_null(a.refresh_index_at)),
                    Arg::Ptr(a.indices.addr()),
                    Arg::Ptr(a.scales.addr()),
                    Arg::Ptr(l.w),
                    Arg::Ptr(l.aux),
                    Arg::Ptr(l.keys),
                    Arg::Ptr(l.vals),
                    Arg::Ptr(l.taken),
                    Arg::U32(l.padded as u32),
                ],
            )
        }
    }

    pub fn sparse_grad(&self, a: &SparseGradArgs) -> Result<()> {
        let p = a.p;
        let (b, r) = (a.batch.b, a.indices.len());
        fits_i32("r", r)?;
        let dtype = a.batch.dtype();
        let mut plan = Plan::within(a.ws.addr, a.ws.bytes);
        let l = sparse_grad_layout(&mut plan, &p, b, r, dtype);
        plan.check()?;
        let (amat, bmat) = operands(p.side, a.batch.x.addr(), a.batch.dy.addr());
        let _bound = self.bind()?;
        let mut j0 = 0;
        while j0 < r {
            let rows = l.rows.min(r - j0);
            // SAFETY: A is b x d and B is b x k of `dtype`, indices and scales hold r entries
            // (this block reads `rows` of them from j0), g holds r x k f32, and the scratch
            // regions have the sizes of the layout (`l.rows` >= rows).
            unsafe {
                launch(
                    &self.kernels.gather_cols,
                    Shape::rows(rows as u64, BLOCK, b as u64),
                    a.stream,
                    [
                        Arg::Ptr(amat),
                        dt(dtype),
                        Arg::I64(b as i64),
                        Arg::I64(p.d as i64),
                        Arg::Ptr(a.indices.addr() + j0 * 4),
                        Arg::I32(rows as i32),
                        Arg::Ptr(l.gathered),
                    ],
                )?;
                let g = Gemm {
                    dtype,
                    b,
                    k: p.k,
                    n: rows,
                    bmat,
                    amat: l.gathered,
                    lda: rows,
                    out: l.product,
                };
                self.blas.run(&g, l.blas, l.blas_bytes, a.stream)?;
                launch(
                    &self.kernels.scale_rows,
                    Shape::rows(p.k as u64, BLOCK, rows as u64),
                    a.stream,
                    [
                        Arg::Ptr(l.product),
                        Arg::Ptr(a.scales.addr() + j0 * 4),
                        Arg::I32(rows as i32),
                        Arg::I64(p.k as i64),
                        Arg::Ptr(a.g.addr() + j0 * p.k * 4),
                        Arg::I32(a.accumulate as i32),
                    ],
                )?;
            }
            j0 += rows;
        }
        Ok(())
    }

    /// Zeroes the step header, flags a bad gradient (or bad indices) on the device, decides
    /// the step and advances the step counts (`rows` of them for a compressed step, one for a
    /// dense step); returns the header and bias-correction addresses.
    fn prepare_step(
        &self,
        b: &StepBuffers,
        grad: (usize, Dtype, usize),
        indices: (usize, usize, usize, usize),
        rows: Option<usize>,
    ) -> Result<StepLayout> {
        let mut plan = Plan::within(b.ws.addr, b.ws.bytes);
        let l = step_layout(&mut plan, rows);
        plan.check()?;
        let (grad, grad_dtype, numel) = grad;
        let (idx, scales, r, d) = indices;
        let counts = rows.unwrap_or(1);
        launch::memset_zero(l.header, STEP_HEADER, b.stream)?;
        // SAFETY: grad holds numel elements of grad_dtype, idx and scales (when not 0) r i32
        // and r f32, steps `counts` i32 and coef `counts` f32 pairs, lr_scale and skipped
        // (when not 0) one value each, the header STEP_HEADER bytes.
        unsafe {
            launch(
                &self.kernels.step_check,
                Shape::linear(numel.max(r).max(counts) as u64, BLOCK, MAX_BLOCKS),
                b.stream,
                [
                    Arg::Ptr(grad),
                    dt(grad_dtype),
                    Arg::I64(numel as i64),
                    Arg::F32(b.grad_scale),
                    Arg::Ptr(idx),
                    Arg::Ptr(scales),
                    Arg::I32(r as i32),
                    Arg::I64(d as i64),
                    Arg::Ptr(b.steps.addr()),
                    Arg::I32(counts as i32),
                    Arg::Ptr(l.header),
                ],
            )?;
            launch(
                &self.kernels.step_prepare,
                Shape::linear(counts as u64, BLOCK, MAX_BLOCKS),
                b.stream,
                [
                    Arg::Ptr(l.header),
                    Arg::Ptr(b.steps.addr()),
                    Arg::I32(counts as i32),
                    Arg::Ptr(l.coef),
                    Arg::F32(b.lr),
                    Arg::Ptr(addr_or_null(b.lr_scale)),
                    Arg::F32(b.cfg.beta1),
                    Arg::F32(b.cfg.beta2),
                    Arg::F32(b.cfg.weight_decay),
                    Arg::Ptr(addr_or_null(b.skipped)),
                ],
            )?;
        }
        Ok(l)
    }

    pub fn sparse_adamw_step(&self, a: &SparseAdamwStepArgs) -> Result<()> {
        let (p, b) = (a.p, &a.buf);
        let rows = a.indices.len();
        let r = fits_i32("r", rows)?;
        let _bound = self.bind()?;
        let l = self.prepare_step(
            b,
            (a.g.addr(), Dtype::F32, a.g.len()),
            (a.indices.addr(), a.scales.addr(), rows, p.d),
            Some(rows),
        )?;
        let header = l.header;
        let decaying = b.cfg.weight_decay > 0.0;
        // SAFETY: W holds m x n elements of w_dtype; M, V and g hold r x k; indices and
        // scales r; the header and the r bias-correction pairs were prepared above on the
        // same stream.
        unsafe {
            if decaying && b.cfg.decay_mode == DecayMode::Dense {
                launch(
                    &self.kernels.decay_all,
                    Shape::linear((p.m * p.n) as u64, BLOCK, MAX_BLOCKS),
                    b.stream,
                    [
                        Arg::Ptr(b.w.addr()),
                        dt(b.w.dtype()),
                        Arg::I64((p.m * p.n) as i64),
                        Arg::Ptr(header),
                    ],
                )?;
            }
            launch(
                &self.kernels.sparse_adamw_step,
                Shape::rows(p.k as u64, BLOCK, rows as u64),
                b.stream,
                [
                    Arg::Ptr(b.w.addr()),
                    dt(b.w.dtype()),
                    Arg::I64(p.n as i64),
                    Arg::I32((p.side == Side::Cols) as i32),
                    Arg::Ptr(b.m.addr()),
                    Arg::Ptr(b.v.addr()),
                    dt(b.m.dtype()),
                    Arg::Ptr(a.g.addr()),
                    Arg::F32(b.grad_scale),
                    Arg::Ptr(a.indices.addr()),
                    Arg::Ptr(a.scales.addr()),
                    Arg::I32(r),
                    Arg::I64(p.k as i64),
                    Arg::F32(b.cfg.beta1),
                    Arg::F32(b.cfg.beta2),
                    Arg::F32(b.cfg.eps),
                    Arg::F32(b.cfg.alpha),
                    Arg::I32((decaying && b.cfg.decay_mode == DecayMode::Selected) as i32),
                    Arg::Ptr(l.coef),
                    Arg::Ptr(b.steps.addr()),
                    Arg::I32(b.cfg.row_warmup),
                    Arg::Ptr(header),
                ],
            )
        }
    }

    /// The residual step: the finite check and the decision on the device, then per chunk of
    /// G's rows one GEMM into scratch and the sign update of the unselected rows of W.
    pub fn residual_step(&self, a: &ResidualStepArgs) -> Result<()> {
        let p = a.p;
        let r = fits_i32("r", a.indices.len())?;
        let mut plan = Plan::within(a.ws.addr, a.ws.bytes);
        let l = residual_layout(&mut plan, &p);
        plan.check()?;
        let (amat, bmat) = operands(p.side, a.batch.x.addr(), a.batch.dy.addr());
        let dtype = a.batch.dtype();
        let _bound = self.bind()?;
        launch::memset_zero(l.header, RESIDUAL_HEADER, a.stream)?;
        let (nx, ndy) = (a.batch.x.len(), a.batch.dy.len());
        // SAFETY: X and dY hold nx and ndy elements of `dtype`, the header RESIDUAL_HEADER
        // bytes of scratch; lr_scale and skipped (when not 0) one value each.
        unsafe {
            launch(
                &self.kernels.residual_check,
                Shape::linear(nx.max(ndy) as u64, BLOCK, MAX_BLOCKS),
                a.stream,
                [
                    Arg::Ptr(a.batch.x.addr()),
                    Arg::Ptr(a.batch.dy.addr()),
                    dt(dtype),
                    Arg::I64(nx as i64),
                    Arg::I64(ndy as i64),
                    Arg::Ptr(l.header),
                ],
            )?;
            launch(
                &self.kernels.residual_prepare,
                Shape::single(1),
                a.stream,
                [
                    Arg::Ptr(l.header),
                    Arg::F32(a.lr),
                    Arg::Ptr(addr_or_null(a.lr_scale)),
                    Arg::F32(a.alpha),
                    Arg::F32(a.residual_scale),
                    Arg::Ptr(addr_or_null(a.skipped)),
                ],
            )?;
        }
        let c = &l.chunks;
        let mut i0 = 0;
        while i0 < p.d {
            let rows = c.rows.min(p.d - i0);
            let g = Gemm {
                dtype,
                b: a.batch.b,
                k: p.k,
                n: rows,
                bmat,
                amat: amat + i0 * dtype.size(),
                lda: p.d,
                out: c.chunk,
            };
            self.blas.run(&g, c.blas, c.blas_bytes, a.stream)?;
            // SAFETY: the chunk holds rows x k f32 written by the GEMM; W holds m x n elements
            // of its dtype; indices r entries; the header was prepared above on the stream.
            unsafe {
                launch(
                    &self.kernels.residual_apply,
                    Shape::rows(p.k as u64, BLOCK, rows as u64),
                    a.stream,
                    [
                        Arg::Ptr(a.w.addr()),
                        dt(a.w.dtype()),
                        Arg::I64(p.n as i64),
                        Arg::I32((p.side == Side::Cols) as i32),
                        Arg::Ptr(c.chunk),
                        Arg::I64(i0 as i64),
                        Arg::I32(rows as i32),
                        Arg::I64(p.k as i64),
                        Arg::Ptr(a.indices.addr()),
                        Arg::I32(r),
                        Arg::Ptr(l.header),
                    ],
                )?;
            }
            i0 += rows;
        }
        Ok(())
    }

    pub fn adamw_step(&self, a: &AdamwStepArgs) -> Result<()> {
        let b = &a.buf;
        let _bound = self.bind()?;
        let header = self
            .prepare_step(
                b,
                (a.grad.addr(), a.grad.dtype(), a.grad.len()),
                (0, 0, 0, 0),
                None,
            )?
            .header;
        let decay_on = b.cfg.weight_decay > 0.0 && b.cfg.decay_mode != DecayMode::Off;
        // SAFETY: W, grad, M and V hold numel elements of their dtypes; the header was
        // prepared above on the same stream.
        unsafe {
            launch(
                &self.kernels.adamw_step,
                Shape::linear(a.grad.len() as u64, BLOCK, MAX_BLOCKS),
                b.stream,
                [
                    Arg::Ptr(b.w.addr()),
                    dt(b.w.dtype()),
                    Arg::Ptr(a.grad.addr()),
                    dt(a.grad.dtype()),
                    Arg::F32(b.grad_scale),
                    Arg::Ptr(b.m.addr()),
                    Arg::Ptr(b.v.addr()),
                    dt(b.m.dtype()),
                    Arg::I64(a.grad.len() as i64),
                    Arg::F32(b.cfg.beta1),
                    Arg::F32(b.cfg.beta2),
                    Arg::F32(b.cfg.eps),
                    Arg::I32(decay_on as i32),
                    Arg::Ptr(header),
                ],
            )
        }
    }

    /// `out[0] = ‖g‖²` in one block of `SQ_NORM_THREADS` (kernels/adamw.cu), enqueued on
    /// `stream`.
    pub fn sq_norm(&self, g: Tensor, out: Buf<f32>, stream: usize) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: g holds g.len() elements of its dtype, out one f32.
        unsafe {
            launch(
                &self.kernels.sq_norm,
                Shape::single(SQ_NORM_THREADS),
                stream,
                [
                    Arg::Ptr(g.addr()),
                    dt(g.dtype()),
                    Arg::I64(g.len() as i64),
                    Arg::Ptr(out.addr()),
                ],
            )
        }
    }

    pub fn state_refresh(&self, a: &StateRefreshArgs) -> Result<()> {
        let rows = a.new_indices.len();
        let r = fits_i32("r", rows)?;
        let size = a.m.dtype().size();
        let bytes = a.m.len() * size;
        let _bound = self.bind()?;
        match a.mode {
            RefreshMode::Reset => {
                launch::memset_zero(a.m.addr(), bytes, a.stream)?;
                launch::memset_zero(a.v.addr(), bytes, a.stream)?;
                launch::memset_zero(a.row_steps.addr(), 4 * rows, a.stream)
            }
            // SAFETY: M and V hold r x k elements, the step counts and index arrays r entries
            // each (old may be 0 for none); the kernel moves rows in place, in blocks of its
            // CARRY_THREADS threads.
            RefreshMode::Carry => unsafe {
                launch(
                    &self.kernels.carry_rows,
                    Shape::linear(a.k as u64, CARRY_THREADS, MAX_BLOCKS),
                    a.stream,
                    [
                        Arg::Ptr(a.m.addr()),
                        Arg::Ptr(a.v.addr()),
                        Arg::Ptr(a.row_steps.addr()),
                        Arg::I32(size as i32),
                        Arg::Ptr(addr_or_null(a.old_indices)),
                        Arg::Ptr(a.new_indices.addr()),
                        Arg::I32(r),
                        Arg::I64(a.k as i64),
                    ],
                )
            },
        }
    }
}
