//! CUDA backend. [`probe`] finds the driver without creating a context; a [`Device`] holds
//! the retained primary context of one GPU, the kernels of `kernels/*.cu` compiled by NVRTC
//! for its exact architecture when it opens, and a cuBLAS handle; its ops run on the
//! caller's stream without allocating or waiting.
//!
//! One build serves machines with and without CUDA: cudarc loads every library at run time
//! and panics where one is missing, so [`libs`] checks each library first and [`Device::open`]
//! turns any failure into `CudaUnavailable` with the reason.

mod blas;
pub mod compile;
mod device;
pub mod kernels;
mod launch;
pub mod libs;
mod ops;

pub use device::{available, Device, DeviceBuffer};

use crate::bail;
use crate::core::error::Result;

/// Loads the driver library and counts devices.
pub fn probe() -> Result<i32> {
    // GRASS_HOST_CUDA=1: the host stand-in answers to the names below (libs::host_stand_in).
    libs::host_stand_in()?;
    // SAFETY: loading the system's CUDA driver library runs its initialisers only. It is
    // never unloaded: once cuInit has run, the driver must stay mapped.
    let lib = match unsafe { libloading::Library::new("libcuda.so.1") } {
        Ok(l) => std::mem::ManuallyDrop::new(l),
        Err(e) => bail!(
            CudaUnavailable,
            "the CUDA driver library libcuda.so.1 cannot be loaded: {e}"
        ),
    };
    type Init = unsafe extern "C" fn(u32) -> i32;
    type Count = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: cuInit and cuDeviceGetCount have these signatures in every CUDA driver.
    unsafe {
        let init: libloading::Symbol<Init> = match lib.get(b"cuInit\0") {
            Ok(f) => f,
            Err(e) => bail!(CudaUnavailable, "libcuda.so.1 has no cuInit: {e}"),
        };
        let rc = init(0);
        if rc != 0 {
            bail!(
                CudaUnavailable,
                "cuInit failed with CUresult {rc} (no usable GPU or driver)"
            );
        }
        let count: libloading::Symbol<Count> = match lib.get(b"cuDeviceGetCount\0") {
            Ok(f) => f,
            Err(e) => bail!(CudaUnavailable, "libcuda.so.1 has no cuDeviceGetCount: {e}"),
        };
        let mut n = 0;
        let rc = count(&mut n);
        if rc != 0 || n == 0 {
            bail!(
                CudaUnavailable,
                "no CUDA device found (cuDeviceGetCount: CUresult {rc}, {n} devices)"
            );
        }
        Ok(n)
    }
}

/// The name of device `ordinal` as the driver reports it (after [`probe`] succeeded); None
/// when the driver does not say (a panic inside cudarc included).
pub fn device_name(ordinal: i32) -> Option<String> {
    std::panic::catch_unwind(|| device_name_unchecked(ordinal)).unwrap_or(None)
}

fn device_name_unchecked(ordinal: i32) -> Option<String> {
    use cudarc::driver::sys;
    let mut dev = 0;
    let mut name = [0 as std::ffi::c_char; 256];
    // SAFETY: plain out-parameters; the driver was initialised by probe.
    unsafe {
        if sys::cuDeviceGet(&mut dev, ordinal) != sys::CUresult::CUDA_SUCCESS
            || sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, dev)
                != sys::CUresult::CUDA_SUCCESS
        {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(name.as_ptr())
                .to_string_lossy()
                .into_owned(),
        )
    }
}
