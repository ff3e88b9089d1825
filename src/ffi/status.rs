//! Status codes, the thread-local last error, and the panic boundary every export goes through.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::core::error::{Error, ErrorKind, Result};

/// Result of every fallible call. Numbers are stable: 1–99 are mistakes of the caller,
/// 100–199 problems of the environment (device, driver, memory), 200+ faults inside grass.
/// Retired numbers are never reused.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum grass_status {
    GRASS_OK = 0,
    /// A required pointer argument was NULL.
    GRASS_ERROR_NULL_POINTER = 1,
    /// A size, rank, hyper-parameter or index is out of range.
    GRASS_ERROR_INVALID_VALUE = 2,
    /// An enum argument holds a value that names no option.
    GRASS_ERROR_INVALID_ENUM = 3,
    /// A dtype is not supported for this argument.
    GRASS_ERROR_DTYPE = 4,
    /// A config struct's `struct_size` is not one this version knows.
    GRASS_ERROR_STRUCT_SIZE = 5,
    /// `workspace_bytes` is smaller than the matching `*_workspace_size` query said.
    GRASS_ERROR_WORKSPACE_TOO_SMALL = 6,
    /// A call came in an order the handle does not allow (e.g. a step with no gradient).
    GRASS_ERROR_INVALID_STATE = 7,
    /// Imported state does not belong to this handle or is damaged.
    GRASS_ERROR_BAD_CHECKPOINT = 8,
    /// Two handles or buffers belong to different contexts.
    GRASS_ERROR_WRONG_CONTEXT = 9,
    /// A pointer is not aligned to its element size.
    GRASS_ERROR_MISALIGNED = 10,
    /// CUDA was requested but no usable driver, device or library is present.
    GRASS_ERROR_CUDA_UNAVAILABLE = 100,
    /// A CUDA driver, NVRTC or cuBLAS call failed.
    GRASS_ERROR_CUDA = 101,
    /// The operation is not available on this context's device.
    GRASS_ERROR_UNSUPPORTED = 102,
    /// Memory could not be allocated.
    GRASS_ERROR_OUT_OF_MEMORY = 103,
    /// grass panicked; the panic was caught at the boundary. Please report it.
    GRASS_ERROR_PANIC = 200,
    /// An internal invariant failed. Please report it.
    GRASS_ERROR_INTERNAL = 201,
}

use grass_status::*;

impl From<ErrorKind> for grass_status {
    fn from(k: ErrorKind) -> Self {
        match k {
            ErrorKind::NullPointer => GRASS_ERROR_NULL_POINTER,
            ErrorKind::InvalidValue => GRASS_ERROR_INVALID_VALUE,
            ErrorKind::InvalidEnum => GRASS_ERROR_INVALID_ENUM,
            ErrorKind::Dtype => GRASS_ERROR_DTYPE,
            ErrorKind::StructSize => GRASS_ERROR_STRUCT_SIZE,
            ErrorKind::WorkspaceTooSmall => GRASS_ERROR_WORKSPACE_TOO_SMALL,
            ErrorKind::BadState => GRASS_ERROR_INVALID_STATE,
            ErrorKind::BadCheckpoint => GRASS_ERROR_BAD_CHECKPOINT,
            ErrorKind::WrongContext => GRASS_ERROR_WRONG_CONTEXT,
            ErrorKind::Misaligned => GRASS_ERROR_MISALIGNED,
            ErrorKind::CudaUnavailable => GRASS_ERROR_CUDA_UNAVAILABLE,
            ErrorKind::Cuda => GRASS_ERROR_CUDA,
            ErrorKind::Unsupported => GRASS_ERROR_UNSUPPORTED,
            ErrorKind::OutOfMemory => GRASS_ERROR_OUT_OF_MEMORY,
            ErrorKind::Panic => GRASS_ERROR_PANIC,
            ErrorKind::Internal => GRASS_ERROR_INTERNAL,
        }
    }
}

// The numbers of grass_status are the codes of core's ErrorKind (the one list of them); the
// enum stays spelled out because cbindgen emits only literal values.
const _: () = {
    use ErrorKind as K;
    assert!(GRASS_ERROR_NULL_POINTER as i32 == K::NullPointer as i32);
    assert!(GRASS_ERROR_INVALID_VALUE as i32 == K::InvalidValue as i32);
    assert!(GRASS_ERROR_INVALID_ENUM as i32 == K::InvalidEnum as i32);
    assert!(GRASS_ERROR_DTYPE as i32 == K::Dtype as i32);
    assert!(GRASS_ERROR_STRUCT_SIZE as i32 == K::StructSize as i32);
    assert!(GRASS_ERROR_WORKSPACE_TOO_SMALL as i32 == K::WorkspaceTooSmall as i32);
    assert!(GRASS_ERROR_INVALID_STATE as i32 == K::BadState as i32);
    assert!(GRASS_ERROR_BAD_CHECKPOINT as i32 == K::BadCheckpoint as i32);
    assert!(GRASS_ERROR_WRONG_CONTEXT as i32 == K::WrongContext as i32);
    assert!(GRASS_ERROR_MISALIGNED as i32 == K::Misaligned as i32);
    assert!(GRASS_ERROR_CUDA_UNAVAILABLE as i32 == K::CudaUnavailable as i32);
    assert!(GRASS_ERROR_CUDA as i32 == K::Cuda as i32);
    assert!(GRASS_ERROR_UNSUPPORTED as i32 == K::Unsupported as i32);
    assert!(GRASS_ERROR_OUT_OF_MEMORY as i32 == K::OutOfMemory as i32);
    assert!(GRASS_ERROR_PANIC as i32 == K::Panic as i32);
    assert!(GRASS_ERROR_INTERNAL as i32 == K::Internal as i32);
};

pub(crate) fn status_text(code: i32) -> &'static str {
    match code {
        0 => "success\0",
        1 => "a required pointer argument is NULL\0",
        2 => "an argument is out of range\0",
        3 => "an enum argument holds an unknown value\0",
        4 => "unsupported dtype\0",
        5 => "config struct_size does not match this version\0",
        6 => "workspace is too small\0",
        7 => "call not allowed in the handle's current state\0",
        8 => "checkpoint does not match this handle or is damaged\0",
        9 => "objects belong to different contexts\0",
        10 => "pointer is not aligned to its element size\0",
        100 => "CUDA is not available\0",
        101 => "a CUDA call failed\0",
        102 => "operation not supported on this device\0",
        103 => "out of memory\0",
        200 => "grass panicked (caught at the ABI boundary)\0",
        201 => "internal error\0",
        _ => "unknown status code\0",
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::new("").unwrap());
}

pub(crate) fn set_last_error(msg: &str) {
    let clean: String = msg.chars().filter(|&c| c != '\0').collect();
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(clean).unwrap_or_default());
}

pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs `f` behind the ABI boundary: an error becomes its status and the thread's last error
/// message (prefixed with the function name); a panic becomes `GRASS_ERROR_PANIC`.
pub fn guard<F: FnOnce() -> Result<()>>(func: &str, f: F) -> grass_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => GRASS_OK,
        Ok(Err(e)) => fail(func, &e),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            fail(
                func,
                &Error::new(ErrorKind::Panic, format!("panic: {what}")),
            )
        }
    }
}

fn fail(func: &str, e: &Error) -> grass_status {
    set_last_error(&format!("{func}: {}", e.message));
    e.kind.into()
}

/// Like [`guard`] for functions that cannot report a status (destructors, getters): a panic is
/// swallowed and recorded as the last error, and `fallback` is returned.
pub fn guard_value<T, F: FnOnce() -> T>(func: &str, fallback: T, f: F) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            set_last_error(&format!("{func}: panic"));
            fallback
        }
    }
}
