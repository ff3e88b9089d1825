//! Errors carry a kind (mapped 1:1 onto the C status enum) and a message that names the argument.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NullPointer,
    InvalidValue,
    InvalidEnum,
    Dtype,
    StructSize,
    WorkspaceTooSmall,
    BadState,
    BadCheckpoint,
    WrongContext,
    Misaligned,
    CudaUnavailable,
    Cuda,
    Unsupported,
    OutOfMemory,
    Panic,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

/// `bail!(Kind, "fmt", args)` returns early with an [`Error`].
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::core::error::Error::new($crate::core::error::ErrorKind::$kind, format!($($arg)*)))
    };
}

/// `ensure!(cond, Kind, "fmt", args)` fails with an [`Error`] unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $kind:ident, $($arg:tt)*) => {
        if !$cond { $crate::bail!($kind, $($arg)*); }
    };
}
