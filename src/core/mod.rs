//! Pure Rust: configuration, validation, selection and the random generator. No raw pointers.

pub mod codes;
pub mod config;
pub mod dtype;
pub mod error;
pub mod rng;
pub mod scratch;
pub mod select;
pub mod shape;
