//! Kernel launches and driver calls on raw handles: no allocation, no synchronization, every
//! result checked and turned into an [`Error`] that names the call.

use std::ffi::c_void;

use cudarc::driver::result::DriverError;
use cudarc::driver::sys;

use crate::core::error::{Error, ErrorKind, Result};
use crate::cuda::kernels::Kernel;

/// A driver failure as a grass error naming `what`.
pub(crate) fn driver_error(what: &str, e: DriverError) -> Error {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    let text = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kind = match e.0 {
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => ErrorKind::OutOfMemory,
        _ => ErrorKind::Cuda,
    };
    Error::new(kind, format!("{what} failed: {name} ({text})"))
}

/// Checks a driver result.
pub(crate) fn check(what: &str, rc: sys::CUresult) -> Result<()> {
    rc.result().map_err(|e| driver_error(what, e))
}

/// A kernel argument; each travels in an 8-byte slot (4-byte kinds in its low half).
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    /// A device address (or 0 for NULL).
    Ptr(usize),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
}

impl Arg {
    /// The letter of this kind in a kernel's parameter list (see `kernels::SIGNATURES`).
    fn letter(self) -> u8 {
        match self {
            Arg::Ptr(_) => b'p',
            Arg::I32(_) => b'i',
            Arg::U32(_) => b'u',
            Arg::I64(_) => b'l',
            Arg::U64(_) => b'q',
            Arg::F32(_) => b'f',
        }
    }

    fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) => p as u64,
            Arg::I32(v) => v as u32 as u64,
            Arg::U32(v) => v as u64,
            Arg::I64(v) => v as u64,
            Arg::U64(v) => v,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

/// Grid and block of one launch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub grid: (u32, u32, u32),
    pub block: u32,
}

impl Shape {
    /// `x` threads in blocks of `block`, at most `max_blocks` blocks (the kernels stride).
    pub fn linear(x: u64, block: u32, max_blocks: u32) -> Shape {
        let blocks = x.div_ceil(block as u64).clamp(1, max_blocks as u64) as u32;
        Shape {
            grid: (blocks, 1, 1),
            block,
        }
    }

    /// `x` threads in blocks of `block` by `y` rows (the kernels stride over rows past 65535).
    pub fn rows(x: u64, block: u32, y: u64) -> Shape {
        let bx = x.div_ceil(block as u64).clamp(1, i32::MAX as u64) as u32;
        Shape {
            grid: (bx, y.clamp(1, 65535) as u32, 1),
            block,
        }
    }

    pub fn single(block: u32) -> Shape {
        Shape {
            grid: (1, 1, 1),
            block,
        }
    }
}

/// Enqueues kernel `k` on `stream` with `args`, which must match its parameter list.
///
/// # Safety
/// Every address in `args` must be valid for what the kernel does with it once the stream
/// reaches the launch.
pub(crate) unsafe fn launch<const N: usize>(
    k: &Kernel,
    shape: Shape,
    stream: usize,
    args: [Arg; N],
) -> Result<()> {
    if !args.iter().map(|a| a.letter()).eq(k.params.bytes()) {
        let given: String = args.iter().map(|a| a.letter() as char).collect();
        crate::bail!(
            Internal,
            "launch of {} with parameters ({given}) but the kernel takes ({})",
            k.name,
            k.params
        );
    }
    let mut slots = [0u64; N];
    for (s, a) in slots.iter_mut().zip(args) {
        *s = a.slot();
    }
    let mut params = [std::ptr::null_mut::<c_void>(); N];
    for (p, s) in params.iter_mut().zip(slots.iter_mut()) {
        *p = s as *mut u64 as *mut c_void;
    }
    let rc = sys::cuLaunchKernel(
        k.f,
        shape.grid.0,
        shape.grid.1,
        shape.grid.2,
        shape.block,
        1,
        1,
        0,
        stream as sys::CUstream,
        params.as_mut_ptr(),
        std::ptr::null_mut(),
    );
    check(k.name, rc)
}

/// Enqueues a fill of `bytes` bytes at `addr` with zeros.
pub(crate) fn memset_zero(addr: usize, bytes: usize, stream: usize) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    // SAFETY: the caller guarantees `addr` holds `bytes` bytes of device memory.
    check("cuMemsetD8Async", unsafe {
        sys::cuMemsetD8Async(addr as u64, 0, bytes, stream as sys::CUstream)
    })
}
