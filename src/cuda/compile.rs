//! NVRTC compilation of the kernels in `kernels/` to CUBIN for one exact architecture. It
//! needs libnvrtc but no GPU, so a CPU-only machine can prove that every kernel compiles.
//!
//! [`KernelCache`] keeps what NVRTC made, so that only the first context of a process compiles
//! (and, with the disk cache, only the first process): entries are keyed by the architecture,
//! the NVRTC version and a hash of every kernel source, header and option.
//!
//! Kernels can also be compiled ahead of time ([`write_prebuilt`], the example
//! `prebuild_kernels`) into a directory named by `GRASS_PREBUILT_KERNELS`: an entry there is used
//! without NVRTC when its architecture and source hash match this build's, whichever NVRTC
//! version made it (a CUBIN is machine code for its architecture; the driver loads it or
//! refuses it, and a refused one is compiled afresh: [`KernelCache::refuse_prebuilt`]). An
//! entry made from other sources has another hash and is never used.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, CStr, CString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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

/// Compiles one module for `sm_{major}{minor}` and returns its CUBIN (no cache).
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

// ---- the cache of compiled kernels ------------------------------------------------------------

/// What a set of compiled kernels depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The compute capability compiled for, (major, minor).
    pub arch: (i32, i32),
    /// The NVRTC that compiled, (major, minor).
    pub nvrtc: (i32, i32),
    /// FNV-1a-64 of every module's and header's name and source and of the options.
    pub source_hash: u64,
}

impl CacheKey {
    /// The key of every module compiled for `sm_{major}{minor}` by the NVRTC this process loads.
    pub fn new(major: i32, minor: i32) -> Result<CacheKey> {
        Ok(CacheKey {
            arch: (major, minor),
            nvrtc: nvrtc_version()?,
            source_hash: source_hash(&format!("sm_{major}{minor}")),
        })
    }

    /// The key of the kernels compiled for `sm_{major}{minor}` from this build's sources by the
    /// NVRTC `nvrtc` (no NVRTC needed: a prebuilt entry's key).
    pub fn with_nvrtc(major: i32, minor: i32, nvrtc: (i32, i32)) -> CacheKey {
        CacheKey {
            arch: (major, minor),
            nvrtc,
            source_hash: source_hash(&format!("sm_{major}{minor}")),
        }
    }

    /// The name of the key's entry in a cache directory.
    pub fn file_name(&self) -> String {
        format!(
            "kernels-sm{}{}-nvrtc{}.{}-{:016x}.bin",
            self.arch.0, self.arch.1, self.nvrtc.0, self.nvrtc.1, self.source_hash
        )
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn source_hash(target: &str) -> u64 {
    let mut h = FNV_OFFSET;
    for (name, src) in MODULES.iter().chain(HEADERS.iter()) {
        // lengths first, so that moving text between a name and its source changes the hash
        h = fnv1a(h, &(name.len() as u64).to_le_bytes());
        h = fnv1a(h, name.as_bytes());
        h = fnv1a(h, &(src.len() as u64).to_le_bytes());
        h = fnv1a(h, src.as_bytes());
    }
    for o in options(target) {
        h = fnv1a(h, o.as_bytes_with_nul());
    }
    h
}

/// The environment variable naming the directory of kernels compiled ahead of time.
pub const PREBUILT_VAR: &str = "GRASS_PREBUILT_KERNELS";

/// Compiled kernels of every architecture asked for so far, in memory and optionally in a
/// directory, and the kernels compiled ahead of time in another. Contexts share
/// [`KernelCache::global`]; tests make their own.
pub struct KernelCache {
    dir: Option<PathBuf>,
    prebuilt: Option<PathBuf>,
    /// By (architecture, source hash): one NVRTC serves a process, so its version adds nothing.
    memory: Mutex<Memory>,
    compiles: AtomicU64,
    disk_hits: AtomicU64,
    prebuilt_hits: AtomicU64,
}

/// (architecture, source hash): what a process's kernels depend on besides its one NVRTC.
type MemoryKey = ((i32, i32), u64);

#[derive(Default)]
struct Memory {
    entries: HashMap<MemoryKey, Arc<Vec<Cubin>>>,
    /// Architectures whose entry in memory came from the prebuilt directory.
    from_prebuilt: HashSet<(i32, i32)>,
    /// Architectures whose prebuilt entry the driver refused: compiled from now on.
    refused: HashSet<(i32, i32)>,
}

/// Start of a cache file; the number is the format's version.
const MAGIC: &[u8; 8] = b"GRASSKC1";

impl KernelCache {
    /// A cache kept in memory and, when `dir` is given, in files there.
    pub fn new(dir: Option<PathBuf>) -> KernelCache {
        KernelCache::with_prebuilt(dir, None)
    }

    /// A cache as [`KernelCache::new`] that first looks for kernels compiled ahead of time in
    /// `prebuilt` (entries as [`write_prebuilt`] writes them).
    pub fn with_prebuilt(dir: Option<PathBuf>, prebuilt: Option<PathBuf>) -> KernelCache {
        KernelCache {
            dir,
            prebuilt,
            memory: Mutex::new(Memory::default()),
            compiles: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            prebuilt_hits: AtomicU64::new(0),
        }
    }

    /// The process-wide cache. Its directory is `$GRASS_KERNEL_CACHE` when set (`off`: memory
    /// only), else `$XDG_CACHE_HOME/grass/kernels`, else `$HOME/.cache/grass/kernels`; the
    /// prebuilt kernels are looked for in `$GRASS_PREBUILT_KERNELS` when set.
    pub fn global() -> &'static KernelCache {
        static GLOBAL: OnceLock<KernelCache> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let prebuilt = std::env::var_os(PREBUILT_VAR)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from);
            KernelCache::with_prebuilt(default_dir(), prebuilt)
        })
    }

    /// The directory of kernels compiled ahead of time, if any.
    pub fn prebuilt_dir(&self) -> Option<&Path> {
        self.prebuilt.as_deref()
    }

    /// Entries this cache took from the prebuilt directory.
    pub fn prebuilt_hits(&self) -> u64 {
        self.prebuilt_hits.load(Ordering::Relaxed)
    }

    /// Whether the kernels this cache holds for `sm_{major}{minor}` came from the prebuilt
    /// directory.
    pub fn is_prebuilt(&self, major: i32, minor: i32) -> bool {
        let memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        memory.from_prebuilt.contains(&(major, minor))
    }

    /// Forgets the prebuilt kernels of `sm_{major}{minor}` (the driver would not load them, e.g.
    /// made by an NVRTC newer than the driver): the next [`KernelCache::get`] compiles.
    pub fn refuse_prebuilt(&self, major: i32, minor: i32) {
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if memory.from_prebuilt.remove(&(major, minor)) {
            memory
                .entries
                .retain(|(arch, _), _| *arch != (major, minor));
        }
        memory.refused.insert((major, minor));
    }

    /// The directory of the disk cache, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Modules NVRTC compiled for this cache so far.
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Entries this cache read from its directory (rather than compiling them).
    pub fn disk_hits(&self) -> u64 {
        self.disk_hits.load(Ordering::Relaxed)
    }

    /// The file of `key` in the cache directory.
    pub fn path(&self, key: &CacheKey) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(key.file_name()))
    }

    /// Every module compiled for `sm_{major}{minor}`: from memory, else from a matching entry
    /// of the prebuilt directory (no NVRTC needed), else from a valid file of the cache
    /// directory, else from NVRTC (then kept in both). Callers for the same key wait for one
    /// compilation rather than each running their own.
    pub fn get(&self, major: i32, minor: i32) -> Result<Arc<Vec<Cubin>>> {
        let arch = (major, minor);
        let hash = source_hash(&format!("sm_{major}{minor}"));
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = memory.entries.get(&(arch, hash)) {
            return Ok(hit.clone());
        }
        if !memory.refused.contains(&arch) {
            if let Some(c) = self
                .prebuilt
                .as_deref()
                .and_then(|d| find_prebuilt(d, arch))
            {
                self.prebuilt_hits.fetch_add(1, Ordering::Relaxed);
                let c = Arc::new(c);
                memory.entries.insert((arch, hash), c.clone());
                memory.from_prebuilt.insert(arch);
                return Ok(c);
            }
        }
        let key = CacheKey::new(major, minor)?;
        let path = self.path(&key);
        let cubins = match path.as_deref().and_then(|p| read_entry(p, &key)) {
            Some(c) => {
                self.disk_hits.fetch_add(1, Ordering::Relaxed);
                c
            }
            None => {
                let c = compile_all(major, minor)?;
                self.compiles.fetch_add(c.len() as u64, Ordering::Relaxed);
                if let Some(p) = path.as_deref() {
                    // The cache only saves time: a directory that cannot be written is skipped.
                    let _ = write_entry(p, &key, &c);
                }
                c
            }
        };
        let cubins = Arc::new(cubins);
        memory.entries.insert((arch, hash), cubins.clone());
        Ok(cubins)
    }
}

/// The kernels of `arch` in `dir` made from this build's sources: the first entry named for
/// `arch` and this build's source hash (by any NVRTC) that is whole and says the same inside.
fn find_prebuilt(dir: &Path, arch: (i32, i32)) -> Option<Vec<Cubin>> {
    let want = CacheKey::with_nvrtc(arch.0, arch.1, (0, 0));
    let (prefix, suffix) = (
        format!("kernels-sm{}{}-nvrtc", arch.0, arch.1),
        format!("-{:016x}.bin", want.source_hash),
    );
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
        })
        .collect();
    names.sort();
    names.into_iter().find_map(|p| {
        let bytes = std::fs::read(&p).ok()?;
        let nvrtc = stored_key(&bytes)?.nvrtc;
        decode(&bytes, &CacheKey { nvrtc, ..want })
    })
}

/// The key a cache file says it holds (not checked against its contents: see `decode`).
fn stored_key(bytes: &[u8]) -> Option<CacheKey> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let i32_at = |i: usize| -> Option<i32> {
        Some(i32::from_le_bytes(
            rest.get(4 * i..4 * i + 4)?.try_into().ok()?,
        ))
    };
    Some(CacheKey {
        arch: (i32_at(0)?, i32_at(1)?),
        nvrtc: (i32_at(2)?, i32_at(3)?),
        source_hash: u64::from_le_bytes(rest.get(16..24)?.try_into().ok()?),
    })
}

/// Writes `cubins` as the entry of `key` into `dir` (the cache's file format and name, so
/// that a prebuilt directory is also a valid cache directory); returns its path.
pub fn write_prebuilt_entry(dir: &Path, key: &CacheKey, cubins: &[Cubin]) -> Result<PathBuf> {
    let path = dir.join(key.file_name());
    if let Err(e) = write_entry(&path, key, cubins) {
        bail!(
            InvalidValue,
            "cannot write the prebuilt kernels to {}: {e}",
            path.display()
        );
    }
    Ok(path)
}

/// Compiles every module for `sm_{major}{minor}` with the NVRTC this process loads and writes
/// them into `dir` for `GRASS_PREBUILT_KERNELS`; returns the entry's path.
pub fn write_prebuilt(dir: &Path, major: i32, minor: i32) -> Result<PathBuf> {
    let key = CacheKey::new(major, minor)?;
    let cubins = compile_all(major, minor)?;
    write_prebuilt_entry(dir, &key, &cubins)
}

fn default_dir() -> Option<PathBuf> {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    if let Some(d) = nonempty("GRASS_KERNEL_CACHE") {
        return (d != "off").then(|| PathBuf::from(d));
    }
    if let Some(d) = nonempty("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("grass").join("kernels"));
    }
    nonempty("HOME").map(|h| {
        PathBuf::from(h)
            .join(".cache")
            .join("grass")
            .join("kernels")
    })
}

/// The bytes of a cache file: MAGIC, the key, then per module its name and CUBIN (each with
/// its length), then the FNV-1a-64 of everything before.
fn encode(key: &CacheKey, cubins: &[Cubin]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for v in [key.arch.0, key.arch.1, key.nvrtc.0, key.nvrtc.1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&key.source_hash.to_le_bytes());
    out.extend_from_slice(&(cubins.len() as u64).to_le_bytes());
    for c in cubins {
        out.extend_from_slice(&(c.name.len() as u64).to_le_bytes());
        out.extend_from_slice(c.name.as_bytes());
        out.extend_from_slice(&(c.image.len() as u64).to_le_bytes());
        out.extend_from_slice(&c.image);
    }
    let sum = fnv1a(FNV_OFFSET, &out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// The modules of a cache file, when it is whole, belongs to `key` and holds every module of
/// MODULES in order; None otherwise.
fn decode(bytes: &[u8], key: &CacheKey) -> Option<Vec<Cubin>> {
    let body_len = bytes.len().checked_sub(8)?;
    let (body, sum) = bytes.split_at(body_len);
    if fnv1a(FNV_OFFSET, body).to_le_bytes() != sum {
        return None;
    }
    let mut rest = body.strip_prefix(MAGIC.as_slice())?;
    let mut take = |n: usize| -> Option<&[u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    };
    let mut i32s = [0i32; 4];
    for v in &mut i32s {
        *v = i32::from_le_bytes(take(4)?.try_into().ok()?);
    }
    let hash = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let stored = CacheKey {
        arch: (i32s[0], i32s[1]),
        nvrtc: (i32s[2], i32s[3]),
        source_hash: hash,
    };
    if stored != *key {
        return None;
    }
    let count = u64::from_le_bytes(take(8)?.try_into().ok()?);
    if count != MODULES.len() as u64 {
        return None;
    }
    let mut cubins = Vec::with_capacity(MODULES.len());
    for (name, _) in MODULES {
        let len = u64::from_le_bytes(take(8)?.try_into().ok()?);
        if take(usize::try_from(len).ok()?)? != name.as_bytes() {
            return None;
        }
        let len = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let image = take(usize::try_from(len).ok()?)?;
        if !image.starts_with(b"\x7fELF") {
            return None;
        }
        cubins.push(Cubin {
            name,
            image: image.to_vec(),
        });
    }
    rest.is_empty().then_some(cubins)
}

fn read_entry(path: &Path, key: &CacheKey) -> Option<Vec<Cubin>> {
    decode(&std::fs::read(path).ok()?, key)
}

/// Writes the entry to a temporary file of the same directory and renames it into place, so
/// that a reader sees the old file, the new one or none, never a part.
fn write_entry(path: &Path, key: &CacheKey, cubins: &[Cubin]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.{}.{nanos}.tmp",
        key.file_name(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&encode(key, cubins))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
