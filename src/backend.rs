//! Validated arguments of every layer-1 op, as the backends receive them. Buffers are typed
//! addresses in the context's memory (host addresses for CPU, device addresses for CUDA):
//! [`Buf`] for a fixed element type, [`Tensor`] for one of the tensor dtypes, each carrying
//! its length. They are built once, where the argument is checked (`ffi`) or where the buffer
//! is owned (`handles`), so no op restates a type or a length; sizes, dtypes and enums have
//! been checked before a backend sees them.

use std::marker::PhantomData;

use crate::core::config::{AdamW, RefreshMode, Selection};
use crate::core::dtype::Dtype;
use crate::core::shape::Projected;

/// `len` elements of `T` at `addr`.
#[derive(Debug)]
pub struct Buf<T> {
    addr: usize,
    len: usize,
    elem: PhantomData<fn() -> T>,
}

impl<T> Clone for Buf<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Buf<T> {}

impl<T> Buf<T> {
    /// A buffer checked by the caller: non-NULL, aligned for `T`, `len` elements.
    pub(crate) fn new(addr: usize, len: usize) -> Self {
        Buf {
            addr,
            len,
            elem: PhantomData,
        }
    }

    pub fn addr(&self) -> usize {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `len` elements of `dtype` at `addr`.
#[derive(Debug, Clone, Copy)]
pub struct Tensor {
    addr: usize,
    len: usize,
    dtype: Dtype,
}

impl Tensor {
    /// A tensor checked by the caller: non-NULL, aligned for `dtype`, `len` elements.
    pub(crate) fn new(addr: usize, len: usize, dtype: Dtype) -> Self {
        Tensor { addr, len, dtype }
    }

    pub fn addr(&self) -> usize {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
}

/// The address of an optional buffer, 0 for none (as kernels take it).
pub fn addr_or_null<T>(b: Option<Buf<T>>) -> usize {
    b.map_or(0, |b| b.addr())
}

/// Caller-provided scratch: address and size in bytes (address 0 when size is 0).
#[derive(Debug, Clone, Copy)]
pub struct Scratch {
    pub addr: usize,
    pub bytes: usize,
}

/// X (`b x n`) and dY (`b x m`) of one linear layer, of one dtype.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    pub b: usize,
    pub x: Tensor,
    pub dy: Tensor,
}

impl Batch {
    pub fn dtype(&self) -> Dtype {
        self.x.dtype()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RowScoresArgs {
    pub p: Projected,
    pub batch: Batch,
    pub scores: Buf<f32>,
    pub ws: Scratch,
    pub stream: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct SelectArgs {
    pub sel: Selection,
    pub refresh_index: u32,
    /// The refresh index (overrides `refresh_index`), or none.
    pub refresh_index_at: Option<Buf<u32>>,
    /// d scores
    pub scores: Buf<f32>,
    /// r indices
    pub indices: Buf<i32>,
    /// r scales
    pub scales: Buf<f32>,
    pub ws: Scratch,
    pub stream: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct SparseGradArgs {
    pub p: Projected,
    pub batch: Batch,
    pub indices: Buf<i32>,
    pub scales: Buf<f32>,
    /// r x k
    pub g: Buf<f32>,
    pub accumulate: bool,
    pub ws: Scratch,
    pub stream: usize,
}

/// The residual step: the units of [0, d) not in `indices` move by
/// `-lr·lr_scale·alpha·residual_scale·sign(G_u)`, G from the batch in chunks.
#[derive(Debug, Clone, Copy)]
pub struct ResidualStepArgs {
    pub p: Projected,
    pub batch: Batch,
    /// r indices, sorted
    pub indices: Buf<i32>,
    pub w: Tensor,
    pub alpha: f32,
    /// Finite and >= 0.
    pub residual_scale: f32,
    pub lr: f32,
    /// Multiplies lr, or none.
    pub lr_scale: Option<Buf<f32>>,
    /// Read first: a nonzero outcome (a step that skipped before) makes the call do nothing;
    /// receives `SkippedNonfinite` when X, dY or the learning rate are not finite.
    pub skipped: Option<Buf<i32>>,
    pub ws: Scratch,
    pub stream: usize,
}

/// Buffers of one AdamW step shared by the sparse and the dense form.
#[derive(Debug, Clone, Copy)]
pub struct StepBuffers {
    pub cfg: AdamW,
    pub w: Tensor,
    /// M and V, `cfg.state_dtype`.
    pub m: Tensor,
    pub v: Tensor,
    /// Step counts, incremented when the step is applied: one per state row for the
    /// compressed step, one for the dense step.
    pub steps: Buf<i32>,
    pub lr: f32,
    /// Multiplies lr, or none.
    pub lr_scale: Option<Buf<f32>>,
    /// Multiplies the gradient (finite, >= 0; 1 for the layer-1 ops): the step runs on
    /// `grad_scale * g`, each element scaled in f32 where it is read.
    pub grad_scale: f32,
    /// Receives the step's outcome, or none.
    pub skipped: Option<Buf<i32>>,
    pub ws: Scratch,
    pub stream: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct SparseAdamwStepArgs {
    pub p: Projected,
    pub indices: Buf<i32>,
    pub scales: Buf<f32>,
    /// r x k
    pub g: Buf<f32>,
    pub buf: StepBuffers,
}

#[derive(Debug, Clone, Copy)]
pub struct AdamwStepArgs {
    pub grad: Tensor,
    pub buf: StepBuffers,
}

#[derive(Debug, Clone, Copy)]
pub struct StateRefreshArgs {
    pub mode: RefreshMode,
    pub k: usize,
    /// r indices, or none (no previous selection)
    pub old_indices: Option<Buf<i32>>,
    pub new_indices: Buf<i32>,
    /// r x k each, of the state dtype
    pub m: Tensor,
    pub v: Tensor,
    /// r: the step count of each state row
    pub row_steps: Buf<i32>,
    pub ws: Scratch,
    pub stream: usize,
}
