//! Errors carry a kind (the C status code it maps to) and a message that names the argument.

use crate::core::codes::code_enum;

code_enum! {
    /// What went wrong; the code is the `grass_status` value the C ABI returns (stable numbers:
    /// 1-99 mistakes of the caller, 100-199 the environment, 200+ faults inside grass).
    pub enum ErrorKind: "grass_status", "GRASS_ERROR_" {
        NullPointer = 1 => "null_pointer",
        InvalidValue = 2 => "invalid_value",
        InvalidEnum = 3 => "invalid_enum",
        Dtype = 4 => "dtype",
        StructSize = 5 => "struct_size",
        WorkspaceTooSmall = 6 => "workspace_too_small",
        BadState = 7 => "invalid_state",
        BadCheckpoint = 8 => "bad_checkpoint",
        WrongContext = 9 => "wrong_context",
        Misaligned = 10 => "misaligned",
        CudaUnavailable = 100 => "cuda_unavailable",
        Cuda = 101 => "cuda",
        Unsupported = 102 => "unsupported",
        OutOfMemory = 103 => "out_of_memory",
        Panic = 200 => "panic",
        Internal = 201 => "internal",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
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
