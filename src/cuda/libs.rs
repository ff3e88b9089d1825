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
//!
//! The same mechanism selects the host stand-in (tests/host_cuda, built by
//! `make -C tests/host_cuda`): with `GRASS_HOST_CUDA=1`, [`host_stand_in`] loads its
//! libcuda.so.1 and libcublas.so.13 from `GRASS_HOST_CUDA_DIR` (default: the
//! `target/host_cuda` of the source tree this library was built from) before anything opens a
//! CUDA library, so the CUDA backend runs unchanged on the host. NVRTC needs no GPU: the real
//! one compiles the kernels, from that directory's libnvrtc.so.13 (a link the build makes to
//! the pip wheel's) or else `GRASS_CUDA_LIBRARY_PATH`. Without the variable nothing of it is
//! loaded.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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

/// The environment variable that selects the host stand-in (`1`).
pub const HOST_VAR: &str = "GRASS_HOST_CUDA";
/// The environment variable naming the directory of the host stand-in's libraries.
pub const HOST_DIR_VAR: &str = "GRASS_HOST_CUDA_DIR";
/// The stand-in's libraries, in the order they are loaded (cuBLAS needs the driver).
const HOST_LIBS: [&str; 2] = ["libcuda.so.1", "libcublas.so.13"];
/// The real NVRTC the stand-in's build links to, when it found one.
const HOST_NVRTC: &str = "libnvrtc.so.13";
/// A symbol only the stand-in's libraries export (its device name).
const HOST_MARKER: &[u8] = b"grass_host_cuda_stand_in\0";

/// Whether `GRASS_HOST_CUDA=1` selects the host stand-in.
pub fn host_selected() -> bool {
    std::env::var_os(HOST_VAR).is_some_and(|v| v == "1")
}

/// The directory the host stand-in is loaded from.
pub fn host_dir() -> PathBuf {
    std::env::var_os(HOST_DIR_VAR)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/host_cuda"))
}

/// With `GRASS_HOST_CUDA=1`, loads the host stand-in (once per process) and checks that the
/// names cudarc opens reach it; returns its directory. `None` when the variable is not set.
pub fn host_stand_in() -> Result<Option<PathBuf>> {
    static LOADED: OnceLock<std::result::Result<Option<PathBuf>, String>> = OnceLock::new();
    match LOADED.get_or_init(load_host) {
        Ok(dir) => Ok(dir.clone()),
        Err(m) => bail!(CudaUnavailable, "{m}"),
    }
}

fn load_host() -> std::result::Result<Option<PathBuf>, String> {
    if !host_selected() {
        return Ok(None);
    }
    let dir = host_dir();
    for name in HOST_LIBS {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(format!(
                "{HOST_VAR}=1 but the host stand-in is not built: no {} (run `make -C \
                 tests/host_cuda`, or set {HOST_DIR_VAR} to where it was built)",
                path.display()
            ));
        }
        // SAFETY: the stand-in's initialisers only set up its own state; it stays loaded.
        match unsafe { libloading::Library::new(&path) } {
            Ok(l) => std::mem::forget(l),
            Err(e) => {
                return Err(format!(
                    "{HOST_VAR}=1 but {} does not load: {e}",
                    path.display()
                ))
            }
        }
    }
    // The link resolved: NVRTC finds its builtins library next to the file it was loaded as.
    if let Ok(real) = std::fs::canonicalize(dir.join(HOST_NVRTC)) {
        if !present_by_name(Lib::Nvrtc) {
            if let Some(real_dir) = real.parent() {
                load_from(real_dir, Lib::Nvrtc.stem());
            }
        }
    }
    // cudarc opens each library by the first of its candidate names that loads; a real
    // library found under an earlier candidate (libcuda.so, say) would win over the stand-in.
    // SAFETY (each): culib() only opens the library by name; a panic when none loads is caught.
    let reaches = |check: fn() -> bool| std::panic::catch_unwind(check).unwrap_or(false);
    type Check = (&'static str, fn() -> bool);
    let checks: [Check; 2] = [
        ("libcuda", || unsafe {
            cudarc::driver::sys::culib()
                .get::<*const u8>(HOST_MARKER)
                .is_ok()
        }),
        ("libcublas", || unsafe {
            cudarc::cublas::sys::culib()
                .get::<*const u8>(HOST_MARKER)
                .is_ok()
        }),
    ];
    for (name, check) in checks {
        if !reaches(check) {
            return Err(format!(
                "{HOST_VAR}=1, but cudarc opens another {name} than the stand-in's in {} \
                 (a real one earlier in the library search path)",
                dir.display()
            ));
        }
    }
    Ok(Some(dir))
}

/// Whether cudarc finds `lib` by name now.
pub fn present(lib: Lib) -> bool {
    if host_stand_in().is_err() {
        return false;
    }
    present_by_name(lib)
}

fn present_by_name(lib: Lib) -> bool {
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
    host_stand_in()?;
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
