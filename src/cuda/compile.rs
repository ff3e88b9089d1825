//! NVRTC compilation of the kernels in `kernels/` to CUBIN for one exact architecture. It
//! needs libnvrtc but no GPU, so a CPU-only machine can prove that every kernel compiles.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use cudarc::nvrtc::sys;

use crate::bail;
use crate::core::error::Result;
use crate::cuda::libs::{self, Lib};

/// Headers the modules include, by the name they include them with.
pub const HEADERS: [(&str, &str); 2] = [
    ("common.cuh", include_str!("../../kernels/common.cuh")),
    ("rng.cuh", include_str!("../../kernels/rng.cuh")),
];

/// Every module: file name and source.
pub const MODULES: [(&str, &str); 5] = [
    ("row_scores.cu", include_str!("../../kernels/row_scores.cu")),
    ("select.cu", include_str!("../../kernels/select.cu")),
    (
        "sparse_grad.cu",
        include_str!("../../kernels/sparse_grad.cu"),
    ),
    ("adamw.cu", include_str!("../../kernels/adamw.cu")),
    (
        "state_refresh.cu",
        include_str!("../../kernels/state_refresh.cu"),
    ),
];

/// Options of every compilation for `target` (`sm_90` for CUBIN, `compute_90` for PTX).
/// `--fmad=false` keeps each multiply and add separately rounded, as in the host reference,
/// so that the optimizer updates agree bit for bit.
fn options(target: &str) -> Vec<CString> {
    [
        format!("--gpu-architecture={target}"),
        "--std=c++17".into(),
        "--fmad=false".into(),
        "--generate-line-info".into(),
    ]
    .into_iter()
    .map(|o| CString::new(o).unwrap())
    .collect()
}

/// A compiled module.
pub struct Cubin {
    pub name: &'static str,
    pub image: Vec<u8>,
}

impl std::fmt::Debug for Cubin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cubin({}, {} bytes)", self.name, self.image.len())
    }
}

struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn nvrtc_error(what: &str, rc: sys::nvrtcResult) -> crate::Error {
    // SAFETY: nvrtcGetErrorString returns a static string for every result code.
    let text = unsafe {
        let p = sys::nvrtcGetErrorString(rc);
        if p.is_null() {
            format!("{rc:?}")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    crate::Error::new(crate::ErrorKind::Cuda, format!("{what}: {text}"))
}

fn log(prog: &Program) -> String {
    let mut size = 0usize;
    // SAFETY: prog is a live program; the buffer holds `size` bytes as NVRTC asked.
    unsafe {
        if sys::nvrtcGetProgramLogSize(prog.0, &mut size) != sys::nvrtcResult::NVRTC_SUCCESS {
            return String::new();
        }
        let mut buf = vec![0u8; size.max(1)];
        sys::nvrtcGetProgramLog(prog.0, buf.as_mut_ptr() as *mut c_char);
        CStr::from_bytes_until_nul(&buf)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The NVRTC version, (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    libs::ensure(Lib::Nvrtc)?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    let rc = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(nvrtc_error("nvrtcVersion", rc));
    }
    Ok((major, minor))
}

/// The architectures (e.g. 90 for sm_90) this NVRTC can compile for.
pub fn supported_archs() -> Result<Vec<i32>> {
    libs::ensure(Lib::Nvrtc)?;
    let mut n = 0;
    // SAFETY: NVRTC fills `n` entries into a buffer of that size.
    unsafe {
        let rc = sys::nvrtcGetNumSupportedArchs(&mut n);
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(nvrtc_error("nvrtcGetNumSupportedArchs", rc));
        }
        let mut archs = vec![0; n.max(0) as usize];
        let rc = sys::nvrtcGetSupportedArchs(archs.as_mut_ptr());
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(nvrtc_error("nvrtcGetSupportedArchs", rc));
        }
        Ok(archs)
    }
}

/// Compiles one module for `target`; the program holds the result.
fn build(name: &str, source: &str, target: &str) -> Result<Program> {
    libs::ensure(Lib::Nvrtc)?;
    let src = CString::new(source).unwrap();
    let cname = CString::new(name).unwrap();
    let hsrc: Vec<CString> = HEADERS.iter().map(|h| CString::new(h.1).unwrap()).collect();
    let hname: Vec<CString> = HEADERS.iter().map(|h| CString::new(h.0).unwrap()).collect();
    let hsrc_p: Vec<*const c_char> = hsrc.iter().map(|s| s.as_ptr()).collect();
    let hname_p: Vec<*const c_char> = hname.iter().map(|s| s.as_ptr()).collect();
    let opts = options(target);
    let opts_p: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
    let mut raw = ptr::null_mut();
    // SAFETY: every pointer refers to a NUL-terminated string that outlives the calls that
    // read it (NVRTC copies the sources and options).
    unsafe {
        let rc = sys::nvrtcCreateProgram(
            &mut raw,
            src.as_ptr(),
            cname.as_ptr(),
            HEADERS.len() as i32,
            hsrc_p.as_ptr(),
            hname_p.as_ptr(),
        );
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(nvrtc_error("nvrtcCreateProgram", rc));
        }
        let prog = Program(raw);
        let rc = sys::nvrtcCompileProgram(prog.0, opts_p.len() as i32, opts_p.as_ptr());
        match rc {
            sys::nvrtcResult::NVRTC_SUCCESS => Ok(prog),
            sys::nvrtcResult::NVRTC_ERROR_INVALID_OPTION => {
                let (vmaj, vmin) = nvrtc_version().unwrap_or((0, 0));
                bail!(
                    CudaUnavailable,
                    "NVRTC {vmaj}.{vmin} cannot compile for {target}: {}",
                    log(&prog).trim()
                )
            }
            _ => bail!(
                Internal,
                "kernels/{name} does not compile for {target}: {}",
                log(&prog).trim()
            ),
        }
    }
}

/// Compiles one module for `sm_{major}{minor}` and returns its CUBIN.
pub fn compile(name: &'static str, source: &str, major: i32, minor: i32) -> Result<Cubin> {
    let prog = build(name, source, &format!("sm_{major}{minor}"))?;
    let mut size = 0usize;
    // SAFETY: the program compiled; the buffer holds the size NVRTC reported.
    unsafe {
        let rc = sys::nvrtcGetCUBINSize(prog.0, &mut size);
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(nvrtc_error("nvrtcGetCUBINSize", rc));
        }
        let mut image = vec![0u8; size];
        let rc = sys::nvrtcGetCUBIN(prog.0, image.as_mut_ptr() as *mut c_char);
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(nvrtc_error("nvrtcGetCUBIN", rc));
        }
        Ok(Cubin { name, image })
    }
}

/// Compiles one module to PTX for `compute_{major}{minor}` (read by tests: the PTX states
/// each kernel's parameter types).
pub fn ptx(name: &str, source: &str, major: i32, minor: i32) -> Result<String> {
    let prog = build(name, source, &format!("compute_{major}{minor}"))?;
    let mut size = 0usize;
    // SAFETY: the program compiled; the buffer holds the size NVRTC reported.
    unsafe {
        let rc = sys::nvrtcGetPTXSize(prog.0, &mut size);
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(nvrtc_error("nvrtcGetPTXSize", rc));
        }
        let mut text = vec![0u8; size.max(1)];
        let rc = sys::nvrtcGetPTX(prog.0, text.as_mut_ptr() as *mut c_char);
        if rc != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(nvrtc_error("nvrtcGetPTX", rc));
        }
        Ok(CStr::from_bytes_until_nul(&text)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default())
    }
}

/// Compiles every module for `sm_{major}{minor}`.
pub fn compile_all(major: i32, minor: i32) -> Result<Vec<Cubin>> {
    MODULES
        .iter()
        .map(|(name, src)| compile(name, src, major, minor))
        .collect()
}
