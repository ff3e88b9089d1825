//! grass: GRASS (structured sparse gradient projection) behind a stable C ABI.
//!
//! Layers (docs/architecture.md maps every op onto them): [`ffi`] is the only place with
//! `extern "C"`, the caller's raw pointers and the panic boundary, and checks every argument
//! into the typed op arguments of [`backend`]; [`context`] dispatches each op to [`cpu`] (the
//! host backend and the reference every kernel is tested against) or [`cuda`]; [`handles`]
//! are the projection and optimizer state machines; [`core`] holds the pure-Rust method
//! (options and their codes, validation, selection, RNG, the scratch planner).

pub mod backend;
pub mod context;
pub mod core;
pub mod cpu;
pub mod cuda;
pub mod ffi;
pub mod handles;

pub use crate::core::error::{Error, ErrorKind, Result};
