//! What every GPU test needs: a CPU and a CUDA context, device buffers allocated with
//! cudarc, deterministic random data, dtype encoding and the comparisons.
//!
//! Every GPU test is `#[ignore]`d, so that `cargo test` reports it as ignored rather than
//! passed where it did nothing; `--include-ignored` (scripts/test.sh where CUDA is usable,
//! scripts/gpu_all.sh) runs them, and then a missing GPU fails the test.

use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};
use grass::core::dtype::Dtype;
use grass::ffi::*;
use half::{bf16, f16};

pub const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::Bf16, Dtype::F16];

pub fn code(d: Dtype) -> grass_dtype {
    match d {
        Dtype::F32 => GRASS_DTYPE_F32,
        Dtype::Bf16 => GRASS_DTYPE_BF16,
        Dtype::F16 => GRASS_DTYPE_F16,
    }
}

pub fn last_error() -> String {
    unsafe { CStr::from_ptr(grass_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts that a grass call succeeded, with its message otherwise.
#[track_caller]
pub fn ok(st: grass_status) {
    assert_eq!(st, grass_status::GRASS_OK, "{}", last_error());
}

pub struct Gpu {
    pub cpu: *mut grass_context,
    pub cuda: *mut grass_context,
    /// Keeps the primary context retained and current on the test's thread.
    _ctx: Arc<CudaContext>,
}

impl Drop for Gpu {
    fn drop(&mut self) {
        unsafe {
            grass_context_destroy(self.cuda);
            grass_context_destroy(self.cpu);
        }
    }
}

/// The contexts of a GPU test; fails the test where no GPU is usable.
pub fn gpu(test: &str) -> Gpu {
    let mut available = 0;
    let mut why = [0 as c_char; 512];
    ok(unsafe { grass_cuda_available(&mut available, why.as_mut_ptr(), why.len()) });
    let why = unsafe { CStr::from_ptr(why.as_ptr()) }.to_string_lossy();
    if available != 1 {
        panic!("{test} needs a usable CUDA device: {why}");
    }
    let mut cuda = std::ptr::null_mut();
    ok(unsafe { grass_context_create_cuda(0, &mut cuda) });
    let mut cpu = std::ptr::null_mut();
    ok(unsafe { grass_context_create_cpu(&mut cpu) });
    // Retains the same primary context and makes it current on this test's thread.
    let ctx = CudaContext::new(0).expect("CudaContext::new(0)");
    Gpu {
        cpu,
        cuda,
        _ctx: ctx,
    }
}

pub fn sync() {
    result::ctx::synchronize().expect("cuCtxSynchronize");
}

/// Device memory owned by a test.
pub struct DevBuf {
    pub ptr: u64,
    pub bytes: usize,
}

impl DevBuf {
    /// `bytes` bytes filled with 0xFF (NaN for floats, -1 for integers): an output that is
    /// not written shows.
    pub fn poisoned(bytes: usize) -> DevBuf {
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.expect("cuMemAlloc");
        unsafe { result::memset_d8_sync(ptr, 0xFF, bytes.max(1)) }.expect("cuMemsetD8");
        sync(); // the fill is asynchronous: finish it before any stream uses the buffer
        DevBuf { ptr, bytes }
    }

    pub fn from_bytes(data: &[u8]) -> DevBuf {
        let b = DevBuf::poisoned(data.len());
        b.write(data);
        b
    }

    pub fn from<T: bytemuck::Pod>(data: &[T]) -> DevBuf {
        DevBuf::from_bytes(as_bytes(data))
    }

    pub fn write(&self, data: &[u8]) {
        assert!(data.len() <= self.bytes);
        sync();
        if !data.is_empty() {
            unsafe { result::memcpy_htod_sync(self.ptr, data) }.expect("cuMemcpyHtoD");
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        sync();
        let mut v = vec![0u8; self.bytes];
        if !v.is_empty() {
            unsafe { result::memcpy_dtoh_sync(&mut v, self.ptr) }.expect("cuMemcpyDtoH");
        }
        v
    }

    pub fn f32s(&self) -> Vec<f32> {
        from_bytes(&self.bytes())
    }

    pub fn i32s(&self) -> Vec<i32> {
        from_bytes(&self.bytes())
    }

    pub fn ptr<T>(&self) -> *mut T {
        self.ptr as usize as *mut T
    }

    pub fn void(&self) -> *mut c_void {
        self.ptr::<c_void>()
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        unsafe {
            let _ = result::free_sync(self.ptr);
        }
    }
}

/// Reads device memory that the test does not own (a handle's buffers).
pub fn read_device<T: Copy + Default>(ptr: *const T, n: usize) -> Vec<T> {
    sync();
    let mut v = vec![T::default(); n];
    unsafe {
        sys::cuMemcpyDtoH_v2(
            v.as_mut_ptr() as *mut c_void,
            ptr as u64,
            n * std::mem::size_of::<T>(),
        )
        .result()
        .expect("cuMemcpyDtoH");
    }
    v
}

/// A CUDA stream created (and destroyed) by a test.
pub struct Stream(pub sys::CUstream);

impl Stream {
    pub fn new() -> Stream {
        Stream(result::stream::create(result::stream::StreamKind::NonBlocking).expect("stream"))
    }
    pub fn raw(&self) -> *mut c_void {
        self.0 as *mut c_void
    }
    pub fn sync(&self) {
        unsafe { result::stream::synchronize(self.0) }.expect("cuStreamSynchronize");
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        unsafe {
            let _ = result::stream::destroy(self.0);
        }
    }
}

pub fn as_bytes<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

pub fn from_bytes<T: Copy + Default>(b: &[u8]) -> Vec<T> {
    let n = b.len() / std::mem::size_of::<T>();
    let mut v = vec![T::default(); n];
    unsafe {
        std::ptr::copy_nonoverlapping(
            b.as_ptr(),
            v.as_mut_ptr() as *mut u8,
            n * std::mem::size_of::<T>(),
        );
    }
    v
}

/// Values stored as `dt`.
pub fn encode(vals: &[f32], dt: Dtype) -> Vec<u8> {
    match dt {
        Dtype::F32 => as_bytes(vals).to_vec(),
        Dtype::Bf16 => {
            let v: Vec<bf16> = vals.iter().map(|&x| bf16::from_f32(x)).collect();
            as_bytes(&v).to_vec()
        }
        Dtype::F16 => {
            let v: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
            as_bytes(&v).to_vec()
        }
    }
}

/// SplitMix64: deterministic test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
    /// `r` sorted indices below `d`, repeats allowed.
    pub fn sorted_indices(&mut self, r: usize, d: usize) -> Vec<i32> {
        let mut v: Vec<i32> = (0..r).map(|_| self.below(d) as i32).collect();
        v.sort_unstable();
        v
    }
}

/// ‖got − want‖ / ‖want‖ <= tol, NaN never passing; prints the largest mismatches.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    let mut nan = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() != w.is_nan() && nan.is_none() {
            nan = Some(i);
        }
        if !w.is_nan() {
            num += (g as f64 - w as f64).powi(2);
            den += (w as f64).powi(2);
        }
    }
    let rel = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    if nan.is_none() && rel <= tol {
        return;
    }
    let mut worst: Vec<usize> = (0..got.len()).collect();
    worst.sort_by(|&a, &b| {
        let da = (got[a] as f64 - want[a] as f64).abs();
        let db = (got[b] as f64 - want[b] as f64).abs();
        db.partial_cmp(&da).unwrap_or(std::cmp::Ordering::Equal)
    });
    let lines: Vec<String> = worst
        .iter()
        .take(8)
        .map(|&i| format!("  [{i}] expected {} got {}", want[i], got[i]))
        .collect();
    panic!(
        "{what}: relative error {rel:.3e} > {tol:.3e}{}\n{}",
        nan.map(|i| format!(", NaN mismatch at {i}"))
            .unwrap_or_default(),
        lines.join("\n")
    );
}

/// Bitwise equality of two tensors of `elem`-byte elements; prints the first mismatches.
#[track_caller]
pub fn assert_same_bits(what: &str, got: &[u8], want: &[u8], elem: usize) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if got == want {
        return;
    }
    let word = |b: &[u8]| b.iter().rev().fold(0u64, |a, &x| a << 8 | x as u64);
    let lines: Vec<String> = got
        .chunks(elem)
        .zip(want.chunks(elem))
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .take(8)
        .map(|(i, (g, w))| format!("  [{i}] expected {:#x} got {:#x}", word(w), word(g)))
        .collect();
    let count = got
        .chunks(elem)
        .zip(want.chunks(elem))
        .filter(|(g, w)| g != w)
        .count();
    panic!("{what}: {count} element(s) differ\n{}", lines.join("\n"));
}
