//! grass: GRASS (structured sparse gradient projection) behind a stable C ABI.
//!
//! Layers: [`core`] holds the pure-Rust method (configs, validation, selection, RNG);
//! [`cpu`] is the host backend and the reference every kernel is tested against;
//! [`ffi`] is the only place with `extern "C"`, raw pointers and the panic boundary.

pub mod backend;
pub mod context;
pub mod core;
pub mod cpu;
pub mod cuda;
pub mod ffi;
pub mod handles;

pub use crate::core::error::{Error, ErrorKind, Result};
