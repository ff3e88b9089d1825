//! The loaded modules of one device and the kernels the ops launch, each with its parameter
//! list. The list is checked at every launch against the arguments given, and a test checks
//! it against the parameter types NVRTC reports in the PTX of each kernel, so a kernel and
//! its launch cannot disagree unnoticed.

use std::ffi::CString;

use cudarc::driver::{result, sys};

use crate::core::error::Result;
use crate::cuda::compile::Cubin;
use crate::cuda::launch::driver_error;

/// (module, kernel, parameters): one letter per parameter, `p` an address, `i` an i32,
/// `u` a u32, `l` an i64, `q` a u64, `f` an f32.
pub const SIGNATURES: [(&str, &str, &str); 14] = [
    ("row_scores.cu", "row_norms", "pilp"),
    ("select.cu", "select_rows", "piiiiiquuppppppppu"),
    ("sparse_grad.cu", "gather_cols", "pillpip"),
    ("sparse_grad.cu", "scale_rows", "ppilpi"),
    ("adamw.cu", "step_check", "pilfppilpip"),
    ("adamw.cu", "step_prepare", "ppipfpfffp"),
    ("adamw.cu", "decay_all", "pilp"),
    ("adamw.cu", "sparse_adamw_step", "pilippipfppilffffippip"),
    ("adamw.cu", "adamw_step", "pipifppilfffip"),
    ("adamw.cu", "sq_norm", "pilp"),
    ("adamw.cu", "residual_check", "ppillp"),
    ("adamw.cu", "residual_prepare", "pfpffp"),
    ("adamw.cu", "residual_apply", "piliplilpip"),
    ("state_refresh.cu", "carry_rows", "pppippil"),
];

/// A loaded kernel.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    pub name: &'static str,
    pub params: &'static str,
    pub f: sys::CUfunction,
}

/// Every kernel of SIGNATURES.
pub(crate) struct Kernels {
    pub row_norms: Kernel,
    pub select_rows: Kernel,
    pub gather_cols: Kernel,
    pub scale_rows: Kernel,
    pub step_check: Kernel,
    pub step_prepare: Kernel,
    pub decay_all: Kernel,
    pub sparse_adamw_step: Kernel,
    pub adamw_step: Kernel,
    pub sq_norm: Kernel,
    pub residual_check: Kernel,
    pub residual_prepare: Kernel,
    pub residual_apply: Kernel,
    pub carry_rows: Kernel,
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

    fn kernel(&self, name: &'static str) -> Result<Kernel> {
        let Some(&(module, _, params)) = SIGNATURES.iter().find(|s| s.1 == name) else {
            crate::bail!(Internal, "kernel {name} has no signature");
        };
        let Some(&(_, m)) = self.loaded.iter().find(|(n, _)| *n == module) else {
            crate::bail!(Internal, "module {module} is not loaded");
        };
        // SAFETY: `m` is a loaded module.
        let f = unsafe { result::module::get_function(m, CString::new(name).unwrap()) }
            .map_err(|e| driver_error(&format!("cuModuleGetFunction({module}: {name})"), e))?;
        Ok(Kernel { name, params, f })
    }

    pub fn kernels(&self) -> Result<Kernels> {
        Ok(Kernels {
            row_norms: self.kernel("row_norms")?,
            select_rows: self.kernel("select_rows")?,
            gather_cols: self.kernel("gather_cols")?,
            scale_rows: self.kernel("scale_rows")?,
            step_check: self.kernel("step_check")?,
            step_prepare: self.kernel("step_prepare")?,
            decay_all: self.kernel("decay_all")?,
            sparse_adamw_step: self.kernel("sparse_adamw_step")?,
            adamw_step: self.kernel("adamw_step")?,
            sq_norm: self.kernel("sq_norm")?,
            residual_check: self.kernel("residual_check")?,
            residual_prepare: self.kernel("residual_prepare")?,
            residual_apply: self.kernel("residual_apply")?,
            carry_rows: self.kernel("carry_rows")?,
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
