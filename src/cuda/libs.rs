//! The CUDA libraries cudarc opens by name at first use (libnvrtc, libcublas). A library it
//! cannot find is a panic inside cudarc, so every entry point checks here first and turns a
//! missing library into `CudaUnavailable` with a message that says how to provide it.
//!
//! cudarc asks the dynamic loader for names such as `libnvrtc.so.13`, which it finds through
//! the usual search path (`LD_LIBRARY_PATH`, the ld.so cache). Where a library sits in a
//! directory outside that path (a pip wheel such as `nvidia-cuda-nvrtc`, a toolkit under
//! /usr/local/cuda), the directories named in `GRASS_CUDA_LIBRARY_PATH` (separated by `:`) or
//! given to [`preload_dir`] are searched: a library found there is loaded by its full path
//! and kept loaded, and the loader then answers cudarc's request by name with it (glibc
//! matches a loaded library's soname).

use std::path::Path;

use crate::bail;
use crate::core::error::Result;

/// A library cudarc loads dynamically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    Nvrtc,
    Cublas,
}

/// The environment variable holding extra directories to search.
pub const PATH_VAR: &str = "GRASS_CUDA_LIBRARY_PATH";

impl Lib {
    fn stem(self) -> &'static str {
        match self {
            Lib::Nvrtc => "nvrtc",
            Lib::Cublas => "cublas",
        }
    }

    /// Libraries that must be loaded before this one when it comes from a directory outside
    /// the search path (its own dependencies would otherwise not be found).
    fn companions(self) -> &'static [&'static str] {
        match self {
            Lib::Nvrtc => &[],
            Lib::Cublas => &["cublasLt"],
        }
    }

    fn what(self) -> &'static str {
        match self {
            Lib::Nvrtc => "NVRTC (libnvrtc, the CUDA runtime compiler)",
            Lib::Cublas => "cuBLAS (libcublas)",
        }
    }
}

/// Whether cudarc finds `lib` by name now.
pub fn present(lib: Lib) -> bool {
    // SAFETY: these only try to open the library by its candidate names; a panic (there is
    // none in this path today) is caught rather than trusted.
    std::panic::catch_unwind(|| unsafe {
        match lib {
            Lib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
            Lib::Cublas => cudarc::cublas::sys::is_culib_present(),
        }
    })
    .unwrap_or(false)
}

/// Loads the file names cudarc would ask for of `stem` from `dir`; true when one loaded.
fn load_from(dir: &Path, stem: &str) -> bool {
    for name in cudarc::get_lib_name_candidates(stem) {
        let path = dir.join(&name);
        if !path.is_file() {
            continue;
        }
        // SAFETY: loading a CUDA library runs its initialisers only; it stays loaded for the
        // life of the process (forgotten on purpose) so that by-name lookups find it.
        if let Ok(l) = unsafe { libloading::Library::new(&path) } {
            std::mem::forget(l);
            return true;
        }
    }
    false
}

/// Loads NVRTC and cuBLAS (with its companions) from `dir` where present; returns whether any
/// library was loaded. Libraries that are already found by name are left alone.
pub fn preload_dir(dir: &Path) -> bool {
    let mut any = false;
    for lib in [Lib::Nvrtc, Lib::Cublas] {
        if present(lib) {
            continue;
        }
        for c in lib.companions() {
            load_from(dir, c);
        }
        any |= load_from(dir, lib.stem());
    }
    any
}

/// Succeeds when cudarc can load `lib`, searching `GRASS_CUDA_LIBRARY_PATH` if needed.
pub fn ensure(lib: Lib) -> Result<()> {
    if present(lib) {
        return Ok(());
    }
    if let Some(dirs) = std::env::var_os(PATH_VAR) {
        for dir in std::env::split_paths(&dirs) {
            preload_dir(&dir);
        }
        if present(lib) {
            return Ok(());
        }
    }
    let names = cudarc::get_lib_name_candidates(lib.stem());
    let major = names
        .iter()
        .find(|n| n.starts_with(&format!("lib{}.so.", lib.stem())))
        .cloned()
        .unwrap_or_default();
    bail!(
        CudaUnavailable,
        "{} cannot be loaded: no {major} on the library search path. Install the CUDA toolkit \
         or the matching pip wheel and add the directory holding it to LD_LIBRARY_PATH or to \
         {PATH_VAR}",
        lib.what()
    )
}
