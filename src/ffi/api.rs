//! Library-wide exports: version, status strings, last error, config defaults, contexts.

use std::ffi::c_char;

use crate::context::{grass_context, Backend};
use crate::core::config::default_rank;
use crate::core::shape::positive;
use crate::cuda;
use crate::ffi::args::{ctx, req, write};
use crate::ffi::status::{grass_status, guard, guard_value, last_error_ptr, status_text};
use crate::ffi::types::*;

/// Major version: changes only with an incompatible ABI change.
pub const GRASS_VERSION_MAJOR: u32 = 0;
pub const GRASS_VERSION_MINOR: u32 = 8;
pub const GRASS_VERSION_PATCH: u32 = 0;
/// ABI generation. A library implements its own generation and, where CHANGELOG.md says so,
/// the earlier ones it only adds to: ABI 4, 5, 6 and 7 each add to the one before, so a caller
/// built against ABI 3, 4, 5 or 6 runs unchanged. Check `grass_abi_version() >= GRASS_ABI_VERSION` (grass.hpp's
/// `grass::abi_compatible()`).
pub const GRASS_ABI_VERSION: u32 = 7;

/// The library version as "MAJOR.MINOR.PATCH" (static storage).
#[no_mangle]
pub extern "C" fn grass_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The ABI generation the library implements; compare with `GRASS_ABI_VERSION`.
#[no_mangle]
pub extern "C" fn grass_abi_version() -> u32 {
    GRASS_ABI_VERSION
}

/// A fixed description of a status code (static storage; never NULL).
#[no_mangle]
pub extern "C" fn grass_status_string(status: i32) -> *const c_char {
    status_text(status).as_ptr() as *const c_char
}

/// The message of the most recent failed call on this thread, naming the function, the
/// argument and the problem; "" before any failure. Valid until the next failing call on the
/// same thread.
#[no_mangle]
pub extern "C" fn grass_last_error_message() -> *const c_char {
    last_error_ptr()
}

/// Fills `config` with the documented defaults, including `struct_size`.
#[no_mangle]
pub unsafe extern "C" fn grass_projection_config_init(
    config: *mut grass_projection_config,
) -> grass_status {
    guard("grass_projection_config_init", || {
        let out = req("config", config)?;
        write(out, grass_projection_config::defaults());
        Ok(())
    })
}

/// The entry point of programs built against ABI 3-5, whose `grass_adamw_config` ends at
/// `state_dtype` (40 bytes): fills that release with the defaults, `struct_size` = 40 included,
/// and writes nothing past it. A program built against this header reaches
/// `grass_adamw_config_init_sized` instead: the macro `grass_adamw_config_init(config)` at the
/// end of grass.h passes `sizeof *config`. (A config filled here has `struct_size` 40: the
/// library gives the fields after `state_dtype` their defaults, whatever the caller sets.)
#[no_mangle]
pub unsafe extern "C" fn grass_adamw_config_init(config: *mut grass_adamw_config) -> grass_status {
    guard("grass_adamw_config_init", || {
        init_versioned("config", config, ABI5_ADAMW_CONFIG_SIZE)
    })
}

/// Fills the release of `grass_adamw_config` whose size is `struct_size` (the caller's
/// `sizeof`) with the documented defaults, `struct_size` included, and writes nothing past
/// it; an unknown size fails with `GRASS_ERROR_STRUCT_SIZE`. Call it through the macro
/// `grass_adamw_config_init(config)`; bindings without the header (ctypes) call it with their
/// struct's size.
#[no_mangle]
pub unsafe extern "C" fn grass_adamw_config_init_sized(
    config: *mut grass_adamw_config,
    struct_size: usize,
) -> grass_status {
    guard("grass_adamw_config_init_sized", || {
        init_versioned("config", config, struct_size)
    })
}

/// The rank rule: writes the rank a projection of projected dimension `d` gets when its
/// config's `rank` is 0 (the default): d/2 rounded to the nearest multiple of 8 (ties up), at
/// least 8 and never above d (so d <= 8 gives d itself, a projection without memory saving).
/// `d` within the size limits. Bindings and `grass_memory_plan` callers use it to state the
/// rank they will get.
#[no_mangle]
pub unsafe extern "C" fn grass_default_rank(d: i64, rank_out: *mut i64) -> grass_status {
    guard("grass_default_rank", || {
        let d = positive("d", d)?;
        let out = req("rank_out", rank_out)?;
        write(out, default_rank(d) as i64);
        Ok(())
    })
}

/// Creates a CPU context: buffers are host pointers, ops run on the calling thread.
#[no_mangle]
pub unsafe extern "C" fn grass_context_create_cpu(
    ctx_out: *mut *mut grass_context,
) -> grass_status {
    guard("grass_context_create_cpu", || {
        let out = req("ctx_out", ctx_out)?;
        write(
            out,
            Box::into_raw(Box::new(grass_context::new(Backend::Cpu))),
        );
        Ok(())
    })
}

/// Creates a CUDA context on device `ordinal`: retains the device's primary context (the one
/// PyTorch and XLA use), loads cuBLAS and compiles grass's kernels for the device. Fails with
/// `GRASS_ERROR_CUDA_UNAVAILABLE` (and says why) where no driver, device, NVRTC or cuBLAS is
/// found. Buffers passed to ops are device pointers; streams are the caller's `CUstream`s.
#[no_mangle]
pub unsafe extern "C" fn grass_context_create_cuda(
    ordinal: i32,
    ctx_out: *mut *mut grass_context,
) -> grass_status {
    guard("grass_context_create_cuda", || {
        let out = req("ctx_out", ctx_out)?;
        let dev = cuda::Device::open(ordinal)?;
        write(
            out,
            Box::into_raw(Box::new(grass_context::new(Backend::Cuda(Box::new(dev))))),
        );
        Ok(())
    })
}

/// Destroys a context (NULL is allowed). Handles created on it must be destroyed first.
#[no_mangle]
pub unsafe extern "C" fn grass_context_destroy(ctx: *mut grass_context) {
    guard_value("grass_context_destroy", (), || {
        if !ctx.is_null() {
            drop(Box::from_raw(ctx));
        }
    })
}

/// Writes `GRASS_DEVICE_CPU` or `GRASS_DEVICE_CUDA`.
#[no_mangle]
pub unsafe extern "C" fn grass_context_device_kind(
    ctx: *const grass_context,
    kind_out: *mut grass_device_kind,
) -> grass_status {
    guard("grass_context_device_kind", || {
        let c = self::ctx(ctx)?;
        let out = req("kind_out", kind_out)?;
        write(
            out,
            if c.is_cuda() {
                GRASS_DEVICE_CUDA
            } else {
                GRASS_DEVICE_CPU
            },
        );
        Ok(())
    })
}

/// Whether a CUDA context could be created on this machine: writes 1 or 0 to `available_out`
/// and, when `reason` is not NULL, a NUL-terminated explanation (truncated to `reason_len`).
/// Loads the driver, NVRTC and cuBLAS libraries but creates no context.
#[no_mangle]
pub unsafe extern "C" fn grass_cuda_available(
    available_out: *mut i32,
    reason: *mut c_char,
    reason_len: usize,
) -> grass_status {
    guard("grass_cuda_available", || {
        let out = req("available_out", available_out)?;
        let (ok, why) = match cuda::available() {
            Ok(n) => {
                let name = cuda::device_name(0).unwrap_or_else(|| "unnamed".into());
                let host = match cuda::libs::host_stand_in() {
                    Ok(Some(dir)) => format!(
                        " (GRASS_HOST_CUDA=1: the host stand-in from {})",
                        dir.display()
                    ),
                    _ => String::new(),
                };
                (
                    1,
                    format!(
                        "CUDA driver found with {n} device(s), device 0 \"{name}\"; NVRTC and \
                         cuBLAS load{host}"
                    ),
                )
            }
            Err(e) => (0, e.message),
        };
        if !reason.is_null() && reason_len > 0 {
            let bytes = why.as_bytes();
            let len = bytes.len().min(reason_len - 1);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), reason as *mut u8, len);
            *reason.add(len) = 0;
        }
        write(out, ok);
        Ok(())
    })
}
