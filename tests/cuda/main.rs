//! The CUDA backend against the CPU reference, op by op and handle by handle, through the C
//! ABI on device memory. Results that go through a GEMM are compared with the tolerance of
//! `grass::core::dtype::tolerance`; selection and the optimizer updates must agree bit for
//! bit. Every test skips (printing why) on a machine without a usable GPU.

mod adamw;
mod context;
mod gpu;
mod graph;
mod handles;
mod memory;
mod residual;
mod row_scores;
mod select;
mod sparse_grad;
