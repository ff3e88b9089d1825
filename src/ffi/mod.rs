//! The C ABI: the only module with `extern "C"`. Every export runs behind
//! [`status::guard`], validates all arguments before touching memory, and writes
//! out-parameters only on success.
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

pub mod api;
pub(crate) mod args;
pub mod ops;
pub mod optimizer;
pub mod projection;
pub mod status;
pub mod types;

pub use crate::context::grass_context;
pub use crate::handles::optimizer::grass_optimizer;
pub use crate::handles::projection::grass_projection;
pub use api::*;
pub use ops::*;
pub use optimizer::*;
pub use projection::*;
pub use status::{grass_status, guard};
pub use types::*;
