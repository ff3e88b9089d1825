//! The loaded modules of one device and the kernel handles the ops launch.

use std::ffi::CString;

use cudarc::driver::{result, sys};

use crate::core::error::Result;
use crate::cuda::compile::Cubin;
use crate::cuda::launch::driver_error;

/// Every kernel, by the name it has in `kernels/*.cu`.
pub(crate) struct Kernels {
    pub row_norms: sys::CUfunction,
    pub select_rows: sys::CUfunction,
    pub gather_cols: sys::CUfunction,
    pub scale_rows: sys::CUfunction,
    pub step_check: sys::CUfunction,
    pub step_prepare: sys::CUfunction,
    pub decay_all: sys::CUfunction,
    pub sparse_adamw: sys::CUfunction,
    pub dense_adamw: sys::CUfunction,
    pub carry_rows: sys::CUfunction,
}

/// Loaded modules; unloaded on drop (the owner binds the context first).
pub(crate) struct Modules {
    loaded: Vec<(&'static str, sys::CUmodule)>,
}

impl Modules {
    /// Loads every CUBIN into the current context.
    pub fn load(cubins: &[Cubin]) -> Result<Modules> {
        let mut m = Modules { loaded: Vec::new() };
        for c in cubins {
            // SAFETY: `image` is a complete CUBIN produced by NVRTC for this device.
            let module = unsafe { result::module::load_data(c.image.as_ptr() as *const _) }
                .map_err(|e| driver_error(&format!("cuModuleLoadData({})", c.name), e))?;
            m.loaded.push((c.name, module));
        }
        Ok(m)
    }

    fn function(&self, module: &str, name: &str) -> Result<sys::CUfunction> {
        let Some(&(_, m)) = self.loaded.iter().find(|(n, _)| *n == module) else {
            crate::bail!(Internal, "module {module} is not loaded");
        };
        // SAFETY: `m` is a loaded module.
        unsafe { result::module::get_function(m, CString::new(name).unwrap()) }
            .map_err(|e| driver_error(&format!("cuModuleGetFunction({module}: {name})"), e))
    }

    pub fn kernels(&self) -> Result<Kernels> {
        Ok(Kernels {
            row_norms: self.function("scores.cu", "row_norms")?,
            select_rows: self.function("select.cu", "select_rows")?,
            gather_cols: self.function("sparse_grad.cu", "gather_cols")?,
            scale_rows: self.function("sparse_grad.cu", "scale_rows")?,
            step_check: self.function("adamw.cu", "step_check")?,
            step_prepare: self.function("adamw.cu", "step_prepare")?,
            decay_all: self.function("adamw.cu", "decay_all")?,
            sparse_adamw: self.function("adamw.cu", "sparse_adamw")?,
            dense_adamw: self.function("adamw.cu", "dense_adamw")?,
            carry_rows: self.function("adamw.cu", "carry_rows")?,
        })
    }
}

impl Drop for Modules {
    fn drop(&mut self) {
        for &(_, m) in &self.loaded {
            // SAFETY: each module was loaded once and is unloaded once; errors at teardown
            // have nobody to report to.
            unsafe {
                let _ = result::module::unload(m);
            }
        }
    }
}
