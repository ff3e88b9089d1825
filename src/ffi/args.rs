//! Checks of raw arguments, each naming the argument it rejects.

use std::ffi::c_void;

use crate::backend::{Buf, Scratch, Tensor};
use crate::context::grass_context;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
pub(crate) use crate::core::scratch::need;
use crate::{bail, ensure};

/// A required pointer to `T`: non-NULL and aligned.
pub(crate) fn req<T>(name: &str, p: *const T) -> Result<usize> {
    ensure!(!p.is_null(), NullPointer, "{name} is NULL");
    let align = std::mem::align_of::<T>().max(1);
    ensure!(
        p as usize % align == 0,
        Misaligned,
        "{name} = {p:p} is not aligned to {align} bytes"
    );
    Ok(p as usize)
}

/// A required untyped tensor pointer of `dtype`.
pub(crate) fn req_typed(name: &str, p: *const c_void, dtype: Dtype) -> Result<usize> {
    ensure!(!p.is_null(), NullPointer, "{name} is NULL");
    let align = dtype.size();
    ensure!(
        p as usize % align == 0,
        Misaligned,
        "{name} = {p:p} is not aligned to {align} bytes ({})",
        dtype.name()
    );
    Ok(p as usize)
}

/// A required buffer of `len` elements of `T`.
pub(crate) fn req_buf<T>(name: &str, p: *const T, len: usize) -> Result<Buf<T>> {
    Ok(Buf::new(req(name, p)?, len))
}

/// An optional buffer of `len` elements of `T`.
pub(crate) fn opt_buf<T>(name: &str, p: *const T, len: usize) -> Result<Option<Buf<T>>> {
    Ok(if p.is_null() {
        None
    } else {
        Some(req_buf(name, p, len)?)
    })
}

/// A required tensor of `len` elements of `dtype`.
pub(crate) fn tensor(name: &str, p: *const c_void, dtype: Dtype, len: usize) -> Result<Tensor> {
    Ok(Tensor::new(req_typed(name, p, dtype)?, len, dtype))
}

/// An optional pointer: NULL becomes address 0.
pub(crate) fn opt<T>(name: &str, p: *const T) -> Result<usize> {
    if p.is_null() {
        Ok(0)
    } else {
        req(name, p)
    }
}

pub(crate) fn ctx<'a>(p: *const grass_context) -> Result<&'a grass_context> {
    ensure!(!p.is_null(), NullPointer, "ctx is NULL");
    // SAFETY: non-NULL contexts come from grass_context_create_* and live until destroyed.
    Ok(unsafe { &*p })
}

pub(crate) fn handle<'a, T>(name: &str, p: *const T) -> Result<&'a T> {
    ensure!(!p.is_null(), NullPointer, "{name} is NULL");
    // SAFETY: non-NULL handles come from their _create function and live until destroyed.
    Ok(unsafe { &*p })
}

pub(crate) fn handle_mut<'a, T>(name: &str, p: *mut T) -> Result<&'a mut T> {
    ensure!(!p.is_null(), NullPointer, "{name} is NULL");
    // SAFETY: as `handle`; the caller does not use one handle from two threads at once.
    Ok(unsafe { &mut *p })
}

/// Writes an out-parameter (checked non-NULL beforehand with [`req`]).
pub(crate) fn write<T>(addr: usize, v: T) {
    // SAFETY: `addr` passed `req` for this T.
    unsafe { (addr as *mut T).write(v) }
}

pub(crate) fn workspace(
    ws: *mut c_void,
    bytes: usize,
    need: usize,
    query: &str,
) -> Result<Scratch> {
    let need = self::need(need)?;
    if bytes < need {
        bail!(
            WorkspaceTooSmall,
            "workspace_bytes = {bytes} but this call needs {need} (ask {query})"
        );
    }
    if bytes > 0 && ws.is_null() {
        bail!(
            NullPointer,
            "workspace is NULL but workspace_bytes = {bytes}"
        );
    }
    Ok(Scratch {
        addr: if bytes == 0 { 0 } else { ws as usize },
        bytes,
    })
}
