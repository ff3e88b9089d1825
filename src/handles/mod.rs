//! The handles behind the C ABI's opaque types: a projection's selection schedule, an
//! optimizer's states and step counts, and the optimizer's checkpoint format.

#![allow(non_camel_case_types)]

pub(crate) mod checkpoint;
pub mod optimizer;
pub mod projection;
