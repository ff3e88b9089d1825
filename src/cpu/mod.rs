//! Host backend: runs every op synchronously (GEMMs use a few worker threads through
//! `matrixmultiply`; the AdamW steps split large updates over scoped threads that have joined
//! when they return; see docs/cpu-backend.md). It is the reference every CUDA kernel is tested
//! against. Inputs arrive as validated slices; no op allocates tensor scratch: that comes from
//! the workspace.

pub mod activations;
pub mod adamw;
pub mod gemm;
pub(crate) mod ops;
pub mod residual;
pub mod row_scores;
pub mod sparse_grad;

pub use activations::Activations;
pub use adamw::{adamw_step, sparse_adamw_step, state_refresh, StepOutcome};
pub use residual::residual_step;
pub use row_scores::{row_scores, scores_workspace_size};
pub use sparse_grad::{sparse_grad, sparse_grad_workspace_size};
