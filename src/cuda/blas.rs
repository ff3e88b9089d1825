//! One cuBLAS handle per device, used under a lock: each GEMM binds the caller's stream and
//! a workspace carved from the caller's scratch, so cuBLAS allocates nothing during an op
//! (which also keeps it capturable in a CUDA graph).

use std::sync::Mutex;

use cudarc::cublas::sys;

use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::{bail, ensure};

/// Most scratch bytes given to cuBLAS by an op that runs a GEMM.
pub(crate) const WORKSPACE: usize = 16 << 20;

/// cuBLAS scratch for a GEMM writing `out_bytes`: half of that, at most WORKSPACE (small
/// products need little, and the op's scratch then stays small next to the product).
pub(crate) fn workspace_for(out_bytes: usize) -> usize {
    (out_bytes / 2).clamp(256, WORKSPACE) / 256 * 256
}

pub(crate) struct Blas {
    handle: Mutex<sys::cublasHandle_t>,
}

// SAFETY: the handle is only used under the mutex.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

fn check(what: &str, s: sys::cublasStatus_t) -> Result<()> {
    if s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Ok(());
    }
    // SAFETY: cublasGetStatusString returns a static string.
    let text = unsafe {
        let p = sys::cublasGetStatusString(s);
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    bail!(Cuda, "{what} failed: {s:?} ({text})")
}

fn data_type(d: Dtype) -> sys::cudaDataType {
    match d {
        Dtype::F32 => sys::cudaDataType::CUDA_R_32F,
        Dtype::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        Dtype::F16 => sys::cudaDataType::CUDA_R_16F,
    }
}

/// One product `out = amat[:, 0..n]ᵀ · bmat` of row-major matrices: `bmat` is `b x k`,
/// `amat` has `b` rows of leading dimension `lda` and contributes its first `n` columns, and
/// `out` is the row-major `n x k` result in f32 (inputs of `dtype`, f32 accumulation).
pub(crate) struct Gemm {
    pub dtype: Dtype,
    pub b: usize,
    pub k: usize,
    pub n: usize,
    pub bmat: usize,
    pub amat: usize,
    pub lda: usize,
    pub out: usize,
}

impl Blas {
    pub fn new() -> Result<Blas> {
        let mut h = std::ptr::null_mut();
        // SAFETY: plain out-parameter; the context is current on this thread.
        check("cublasCreate", unsafe { sys::cublasCreate_v2(&mut h) })?;
        Ok(Blas {
            handle: Mutex::new(h),
        })
    }

    /// Enqueues the product on `stream` using `ws_bytes` bytes at `ws` as cuBLAS's scratch.
    pub fn run(&self, g: &Gemm, ws: usize, ws_bytes: usize, stream: usize) -> Result<()> {
        for (name, v) in [("b", g.b), ("k", g.k), ("n", g.n), ("lda", g.lda)] {
            ensure!(
                v <= i32::MAX as usize,
                InvalidValue,
                "{name} = {v} exceeds what cuBLAS accepts (2^31 - 1)"
            );
        }
        let h = self.handle.lock().unwrap_or_else(|e| e.into_inner());
        let (alpha, beta) = (1.0f32, 0.0f32);
        let t = data_type(g.dtype);
        // SAFETY: the handle is live and locked; every address is device memory of the sizes
        // the op validated; alpha and beta are host values read during the call.
        unsafe {
            check(
                "cublasSetStream",
                sys::cublasSetStream_v2(*h, stream as sys::cudaStream_t),
            )?;
            check(
                "cublasSetWorkspace",
                sys::cublasSetWorkspace_v2(*h, ws as *mut _, ws_bytes),
            )?;
            check(
                "cublasGemmEx",
                sys::cublasGemmEx(
                    *h,
                    sys::cublasOperation_t::CUBLAS_OP_N,
                    sys::cublasOperation_t::CUBLAS_OP_T,
                    g.k as i32,
                    g.n as i32,
                    g.b as i32,
                    &alpha as *const f32 as *const _,
                    g.bmat as *const _,
                    t,
                    g.k as i32,
                    g.amat as *const _,
                    t,
                    g.lda as i32,
                    &beta as *const f32 as *const _,
                    g.out as *mut _,
                    sys::cudaDataType::CUDA_R_32F,
                    g.k as i32,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                ),
            )
        }
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        let h = *self.handle.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: created once in `new`, destroyed once here (the owner binds the context).
        unsafe {
            sys::cublasDestroy_v2(h);
        }
    }
}
