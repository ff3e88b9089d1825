//! Validated arguments of every layer-1 op, as the backends receive them. Buffers are
//! addresses in the context's memory (host addresses for CPU, device addresses for CUDA);
//! sizes, dtypes and enums have been checked by `ffi` before a backend sees them.

use crate::core::config::{AdamW, RefreshMode, Selection};
use crate::core::dtype::Dtype;
use crate::core::shape::Projected;

/// Caller-provided scratch: address and size in bytes (address 0 when size is 0).
#[derive(Debug, Clone, Copy)]
pub struct Scratch {
    pub addr: usize,
    pub bytes: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct ScoresArgs {
    pub p: Projected,
    pub b: usize,
    pub dtype: Dtype,
    pub x: usize,
    pub dy: usize,
    /// f32[d]
    pub scores: usize,
    pub ws: Scratch,
    pub stream: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct SelectArgs {
    pub sel: Selection,
    pub d: usize,
    pub refresh_index: u32,
    /// u32[1] holding the refresh index (overrides `refresh_index`), or 0 for none.
    pub refresh_index_at: usize,
    /// f32[d]
    pub scores: usize,
    /// i32[r]
    pub indices: usize,
    /// f32[r]
    pub scales: usize,
    pub ws: Scratch,
    pub stream: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct SparseGradArgs {
    pub p: Projected,
    pub b: usize,
    pub r: usize,
    pub dtype: Dtype,
    pub x: usize,
    pub dy: usize,
    pub indices: usize,
    pub scales: usize,
    /// f32[r * k]
    pub g: usize,
    pub accumulate: bool,
    pub ws: Scratch,
    pub stream: usize,
}

/// Buffers of one AdamW step shared by the sparse and the dense form.
#[derive(Debug, Clone, Copy)]
pub struct StepBuffers {
    pub cfg: AdamW,
    pub w_dtype: Dtype,
    pub w: usize,
    /// M and V, `cfg.state_dtype`.
    pub m: usize,
    pub v: usize,
    /// Step counts, incremented when the step is applied: i32[r] (one per state row) for the
    /// compressed step, i32[1] for the dense step.
    pub steps: usize,
    pub lr: f32,
    /// f32[1] multiplying lr, or 0 for none.
    pub lr_scale: usize,
    /// i32[1] set to 1 when the step was skipped, else 0; or 0 for none.
    pub skipped: usize,
    pub ws: Scratch,
    pub stream: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct SparseStepArgs {
    pub p: Projected,
    pub r: usize,
    pub indices: usize,
    pub scales: usize,
    /// f32[r * k]
    pub g: usize,
    pub buf: StepBuffers,
}

#[derive(Debug, Clone, Copy)]
pub struct DenseStepArgs {
    pub numel: usize,
    pub grad_dtype: Dtype,
    pub grad: usize,
    pub buf: StepBuffers,
}

#[derive(Debug, Clone, Copy)]
pub struct RefreshArgs {
    pub mode: RefreshMode,
    /// dtype of M and V
    pub state_dtype: Dtype,
    pub r: usize,
    pub k: usize,
    pub old_indices: usize,
    pub new_indices: usize,
    pub m: usize,
    pub v: usize,
    /// i32[r], the step count of each state row
    pub row_steps: usize,
    pub ws: Scratch,
    pub stream: usize,
}
