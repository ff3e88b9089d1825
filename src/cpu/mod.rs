//! Host backend: runs every op synchronously on the calling thread (GEMMs use a few worker
//! threads through `matrixmultiply`). It is the reference every CUDA kernel is tested against.
//! Inputs arrive as validated slices; nothing here allocates: scratch comes from the workspace.

pub mod adamw;
pub mod gemm;
pub(crate) mod ops;
pub mod project;

pub use adamw::{adamw_dense_step, adamw_sparse_step, state_refresh, StepOutcome};
pub use project::{
    row_scores, scores_workspace_size, sparse_grad, sparse_grad_workspace_size, Activations,
};
