//! CUDA backend. `probe` finds the driver without creating a context; `Device` holds the
//! retained primary context of one GPU and runs every op on the caller's stream.

use crate::backend::*;
use crate::bail;
use crate::core::config::AdamW;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::Projected;

/// Loads the driver library and counts devices.
pub fn probe() -> Result<i32> {
    // SAFETY: loading the system's CUDA driver library runs its initialisers only.
    let lib = match unsafe { libloading::Library::new("libcuda.so.1") } {
        Ok(l) => l,
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

pub struct DeviceBuffer {
    addr: usize,
}

impl DeviceBuffer {
    pub fn addr(&self) -> usize {
        self.addr
    }
}

pub struct Device {
    _private: (),
}

impl Device {
    pub fn open(ordinal: i32) -> Result<Device> {
        if ordinal < 0 {
            bail!(InvalidValue, "ordinal = {ordinal} must be non-negative");
        }
        let n = probe()?;
        if ordinal >= n {
            bail!(
                InvalidValue,
                "ordinal = {ordinal} but only {n} CUDA device(s) exist"
            );
        }
        bail!(
            CudaUnavailable,
            "this build of grass has no CUDA kernels yet"
        )
    }
    pub fn alloc_zeroed(&self, _bytes: usize) -> Result<DeviceBuffer> {
        unreachable!()
    }
    pub fn memset_zero(&self, _addr: usize, _bytes: usize, _stream: usize) -> Result<()> {
        unreachable!()
    }
    pub fn download(&self, _addr: usize, _dst: &mut [u8], _stream: usize) -> Result<()> {
        unreachable!()
    }
    pub fn upload(&self, _addr: usize, _src: &[u8], _stream: usize) -> Result<()> {
        unreachable!()
    }
    pub fn scores_workspace_size(&self, _p: &Projected, _b: usize, _dtype: Dtype) -> usize {
        unreachable!()
    }
    pub fn select_workspace_size(&self, _d: usize, _r: usize) -> usize {
        unreachable!()
    }
    pub fn sparse_grad_workspace_size(
        &self,
        _p: &Projected,
        _b: usize,
        _r: usize,
        _dtype: Dtype,
    ) -> usize {
        unreachable!()
    }
    pub fn sparse_step_workspace_size(&self, _p: &Projected, _r: usize) -> usize {
        unreachable!()
    }
    pub fn dense_step_workspace_size(&self, _numel: usize) -> usize {
        unreachable!()
    }
    pub fn refresh_workspace_size(&self, _cfg: &AdamW, _r: usize, _k: usize) -> usize {
        unreachable!()
    }
    pub fn row_scores(&self, _a: &ScoresArgs) -> Result<()> {
        unreachable!()
    }
    pub fn select(&self, _a: &SelectArgs) -> Result<()> {
        unreachable!()
    }
    pub fn sparse_grad(&self, _a: &SparseGradArgs) -> Result<()> {
        unreachable!()
    }
    pub fn sparse_step(&self, _a: &SparseStepArgs) -> Result<()> {
        unreachable!()
    }
    pub fn dense_step(&self, _a: &DenseStepArgs) -> Result<()> {
        unreachable!()
    }
    pub fn state_refresh(&self, _a: &RefreshArgs) -> Result<()> {
        unreachable!()
    }
}
