//! A fuzz target for the C ABI, run in-process: random call sequences over every export, with
//! pointers that are valid (buffers of exactly the size the call's arguments imply, followed by
//! a guard region), NULL or misaligned, random sizes (small, zero, negative, beyond 2^31 - 1,
//! and for the pure size queries up to 2^31 - 1), random enum values, struct sizes, indices,
//! scales and non-finite data, on live, borrowed and destroyed-in-order handles.
//!
//! A failure is: a crash (the calls run in this process), `GRASS_ERROR_PANIC` or
//! `GRASS_ERROR_INTERNAL` (the panic boundary was hit), a status outside the enum, a failing call
//! whose last error does not name the function, or a write past the end of a buffer.
//!
//! `GRASS_FUZZ_SECONDS` (default 20) bounds the run, `GRASS_FUZZ_SEED` fixes the sequence (the
//! seed is printed either way); `scripts/fuzz.sh` runs it longer. The report gives the calls run
//! and how many reached each export.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{c_void, CStr};
use std::ptr;
use std::time::{Duration, Instant};

use grass::ffi::*;

const BIG: i64 = i32::MAX as i64;
const GUARD: usize = 64;
const GUARD_BYTE: u8 = 0xA5;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    /// A size for an op: mostly small and valid, sometimes 0, negative or beyond 2^31 - 1 (which
    /// every op must reject before touching memory).
    fn dim(&mut self) -> i64 {
        match self.below(20) {
            0 => 0,
            1 => -(self.below(5) as i64) - 1,
            2 => self.pick(&[BIG + 1, i64::MAX, i64::MIN, 1 << 40]),
            _ => 1 + self.below(12) as i64,
        }
    }
    /// A size for a pure query: anything, including the largest legal values.
    fn query_dim(&mut self) -> i64 {
        match self.below(6) {
            0 => self.pick(&[BIG, BIG - 1, 1 << 16, 1 << 20]),
            1 => self.pick(&[0, -1, BIG + 1, i64::MAX, i64::MIN]),
            _ => 1 + self.below(64) as i64,
        }
    }
    fn enum_value(&mut self, known: i32) -> i32 {
        if self.chance(85) {
            self.below(known as u64) as i32
        } else {
            self.pick(&[-1, known, known + 1, 100, i32::MIN, i32::MAX])
        }
    }
    fn float(&mut self) -> f32 {
        match self.below(40) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => -f32::INFINITY,
            3 => 0.0,
            _ => (self.below(2001) as f32 - 1000.0) / 250.0,
        }
    }
    fn lr(&mut self) -> f32 {
        match self.below(12) {
            0 => f32::NAN,
            1 => -1e-3,
            2 => f32::INFINITY,
            3 => 0.0,
            _ => 1e-3 * (1 + self.below(100)) as f32,
        }
    }
}

/// A caller buffer of `bytes` bytes, followed by a guard region whose bytes must survive every
/// call. The pointer handed out is the buffer, NULL, or one byte past its start (misaligned).
struct Buf {
    words: Vec<u64>,
    offset: usize,
    bytes: usize,
    null: bool,
}

impl Buf {
    fn ptr(&self) -> *mut c_void {
        if self.null {
            ptr::null_mut()
        } else {
            unsafe { (self.words.as_ptr() as *mut u8).add(self.offset) as *mut c_void }
        }
    }
    fn intact(&self) -> bool {
        let all = unsafe {
            std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.words.len() * 8)
        };
        all[self.offset + self.bytes..self.offset + self.bytes + GUARD]
            .iter()
            .all(|&b| b == GUARD_BYTE)
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        let (o, n) = (self.offset, self.bytes);
        let all = unsafe {
            std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.words.len() * 8)
        };
        &mut all[o..o + n]
    }
}

#[derive(Clone, Copy)]
struct Layer {
    m: i64,
    n: i64,
    d: i64,
    k: i64,
    rank: i64,
    max_tokens: i64,
    act: grass_dtype,
}

struct Proj {
    h: *mut grass_projection,
    layer: Layer,
}

struct Opt {
    h: *mut grass_optimizer,
    /// None for a dense optimizer
    layer: Option<Layer>,
    numel: i64,
    w_dtype: grass_dtype,
    grad_dtype: grass_dtype,
}

struct Fuzz {
    rng: Rng,
    calls: u64,
    /// calls and successful calls of each export
    per_export: BTreeMap<&'static str, (u64, u64)>,
    log: VecDeque<String>,
    ctx: Vec<*mut grass_context>,
    projs: Vec<Proj>,
    opts: Vec<Opt>,
    blobs: Vec<Vec<u8>>,
    bufs: Vec<Buf>,
}

fn bytes_of(dtype: grass_dtype) -> usize {
    match dtype {
        GRASS_DTYPE_BF16 | GRASS_DTYPE_F16 => 2,
        _ => 4,
    }
}

/// Elements a size argument implies, 0 for sizes every call must reject (or that are too big
/// to back with memory here, which only pure queries receive).
fn elems(dims: &[i64]) -> usize {
    if dims.iter().any(|&d| d <= 0 || d > 4096) {
        0
    } else {
        dims.iter().map(|&d| d as usize).product()
    }
}

impl Fuzz {
    fn new(seed: u64) -> Fuzz {
        let mut ctx = ptr::null_mut();
        assert_eq!(
            unsafe { grass_context_create_cpu(&mut ctx) },
            grass_status::GRASS_OK
        );
        Fuzz {
            rng: Rng(seed),
            calls: 0,
            per_export: BTreeMap::new(),
            log: VecDeque::new(),
            ctx: vec![ctx],
            projs: Vec::new(),
            opts: Vec::new(),
            blobs: Vec::new(),
            bufs: Vec::new(),
        }
    }

    /// A buffer for `bytes` bytes: valid (80%), NULL or misaligned. Kept until the call's
    /// statuses and guards are checked.
    fn buf(&mut self, bytes: usize) -> usize {
        let null = self.rng.chance(7);
        let offset = if self.rng.chance(7) { 1 } else { 0 };
        self.buf_with(bytes, null, offset)
    }

    fn valid_buf(&mut self, bytes: usize) -> usize {
        self.buf_with(bytes, false, 0)
    }

    fn buf_with(&mut self, bytes: usize, null: bool, offset: usize) -> usize {
        let words = (offset + bytes + GUARD).div_ceil(8);
        let mut w = vec![0u64; words];
        let all = unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr() as *mut u8, words * 8) };
        for (i, b) in all.iter_mut().enumerate() {
            *b = if i >= offset + bytes {
                GUARD_BYTE
            } else {
                (self.rng.next() & 0xFF) as u8
            };
        }
        let mut b = Buf {
            words: w,
            offset,
            bytes,
            null,
        };
        // floats: mostly finite so that ops get past their data checks
        if offset == 0 && bytes % 4 == 0 {
            for c in b.bytes_mut().chunks_exact_mut(4) {
                let v = self.rng.float();
                c.copy_from_slice(&v.to_ne_bytes());
            }
        }
        self.bufs.push(b);
        self.bufs.len() - 1
    }

    /// An index buffer of `r` entries in [0, d): sorted (mostly), unsorted, or out of range.
    fn indices(&mut self, r: i64, d: i64) -> usize {
        let n = elems(&[r]);
        let i = self.buf(n * 4);
        let mut v: Vec<i32> = (0..n)
            .map(|_| self.rng.below(d.clamp(1, 1 << 20) as u64) as i32)
            .collect();
        match self.rng.below(10) {
            0 => {}
            1 if n > 0 => {
                let j = self.rng.below(n as u64) as usize;
                v[j] = self.rng.pick(&[-1, d as i32, i32::MAX, i32::MIN]);
            }
            _ => v.sort_unstable(),
        }
        if self.bufs[i].offset == 0 {
            for (c, x) in self.bufs[i].bytes_mut().chunks_exact_mut(4).zip(&v) {
                c.copy_from_slice(&x.to_ne_bytes());
            }
        }
        i
    }

    /// Step counts: mostly small and non-negative, sometimes negative or saturated.
    fn counts(&mut self, r: i64) -> usize {
        let n = elems(&[r]);
        let i = self.buf(n * 4);
        let v: Vec<i32> = (0..n)
            .map(|_| match self.rng.below(15) {
                0 => -1 - self.rng.below(3) as i32,
                1 => i32::MAX,
                _ => self.rng.below(50) as i32,
            })
            .collect();
        if self.bufs[i].offset == 0 {
            for (c, x) in self.bufs[i].bytes_mut().chunks_exact_mut(4).zip(&v) {
                c.copy_from_slice(&x.to_ne_bytes());
            }
        }
        i
    }

    fn p(&self, i: usize) -> *mut c_void {
        self.bufs[i].ptr()
    }

    fn ctx(&mut self) -> *const grass_context {
        if self.rng.chance(3) {
            ptr::null()
        } else {
            let i = self.rng.below(self.ctx.len() as u64) as usize;
            self.ctx[i]
        }
    }

    fn stream(&mut self) -> *mut c_void {
        // CPU contexts ignore the stream: any value must be harmless
        self.rng.pick(&[ptr::null_mut(), 0x1000 as *mut c_void])
    }

    fn pcfg(&mut self, d_hint: i64) -> grass_projection_config {
        let mut c: grass_projection_config = unsafe { std::mem::zeroed() };
        unsafe { grass_projection_config_init(&mut c) };
        c.rank = if self.rng.chance(85) {
            1 + self.rng.below(d_hint.clamp(1, 16) as u64) as i64
        } else {
            self.rng.dim()
        };
        c.method = self.rng.enum_value(5);
        c.scaling = self.rng.enum_value(2);
        c.side = self.rng.enum_value(3);
        c.power = self.rng.pick(&[1, 2, 2, 0, 3]);
        c.refresh_every = self.rng.pick(&[1, 2, 5, 0, -1]);
        c.seed = self.rng.next();
        c.layer_id = self.rng.next() as u32;
        if self.rng.chance(5) {
            c.struct_size = self.rng.pick(&[0, 8, c.struct_size - 8, c.struct_size + 8]);
        }
        c
    }

    fn acfg(&mut self) -> grass_adamw_config {
        let mut c: grass_adamw_config = unsafe { std::mem::zeroed() };
        unsafe { grass_adamw_config_init_sized(&mut c, std::mem::size_of::<grass_adamw_config>()) };
        if self.rng.chance(10) {
            c.beta1 = self.rng.float();
        }
        if self.rng.chance(10) {
            c.beta2 = self.rng.pick(&[1.0, 1.5, -0.1, 0.99]);
        }
        if self.rng.chance(10) {
            c.eps = self.rng.float();
        }
        if self.rng.chance(20) {
            c.weight_decay = self.rng.pick(&[0.01, 0.1, -1.0, f32::NAN]);
        }
        c.decay_mode = self.rng.enum_value(3);
        c.refresh_mode = self.rng.enum_value(2);
        c.state_dtype = self.rng.enum_value(2);
        c.dense_state_dtype = self.rng.enum_value(2);
        if self.rng.chance(10) {
            c.alpha = self.rng.float();
        }
        if self.rng.chance(10) {
            c.row_warmup = self.rng.pick(&[1, 20, -1, i32::MIN, i32::MAX]);
        }
        if self.rng.chance(5) {
            // 40, 48: ABI 5 and 6 releases (no row_warmup; no dense_state_dtype), still accepted
            c.struct_size = self
                .rng
                .pick(&[0, 8, 40, 48, c.struct_size - 4, c.struct_size + 4]);
        }
        c
    }

    /// Records a call and checks what it returned and what it left around its buffers.
    fn done(&mut self, export: &'static str, what: String, st: grass_status) {
        if let Err(why) = self.record(export, what, st) {
            self.fail(&why);
        }
    }

    /// Counts a call and checks its status, its message and the guards of its buffers.
    fn record(
        &mut self,
        export: &'static str,
        what: String,
        st: grass_status,
    ) -> Result<(), String> {
        self.calls += 1;
        let e = self.per_export.entry(export).or_default();
        e.0 += 1;
        e.1 += (st == grass_status::GRASS_OK) as u64;
        self.log.push_back(format!("{export}({what}) -> {st:?}"));
        if self.log.len() > 40 {
            self.log.pop_front();
        }
        let overrun = self.bufs.iter().position(|b| !b.intact());
        self.bufs.clear();
        let code = st as i32;
        let known = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 101, 102, 103];
        if !known.contains(&code) {
            return Err(format!("{export} returned status {code} ({st:?})"));
        }
        if st != grass_status::GRASS_OK {
            let e = self
                .per_export
                .entry("grass_last_error_message")
                .or_default();
            e.0 += 1;
            e.1 += 1;
            let msg = unsafe { CStr::from_ptr(grass_last_error_message()) }
                .to_string_lossy()
                .into_owned();
            if !msg.starts_with(export) {
                return Err(format!(
                    "{export} failed with {st:?} but the last error is {msg:?}"
                ));
            }
        }
        if let Some(b) = overrun {
            return Err(format!("{export} wrote past the end of buffer {b}"));
        }
        Ok(())
    }

    fn fail(&self, why: &str) -> ! {
        let tail: Vec<&String> = self.log.iter().collect();
        panic!(
            "{why}\nlast calls, oldest first:\n  {}",
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    fn layer_of(&mut self, m: i64, n: i64, side: grass_side) -> Option<(i64, i64)> {
        let (mut d, mut k) = (0i64, 0i64);
        let st = unsafe { grass_resolve_side(m, n, side, ptr::null_mut(), &mut d, &mut k) };
        (st == grass_status::GRASS_OK).then_some((d, k))
    }

    // ---- the exports -------------------------------------------------------------------------

    fn library(&mut self) {
        match self.rng.below(6) {
            0 => {
                let v = unsafe { CStr::from_ptr(grass_version()) };
                assert!(!v.to_bytes().is_empty());
                self.done("grass_version", String::new(), grass_status::GRASS_OK);
            }
            1 if self.rng.chance(50) => {
                assert!(grass_abi_version() > 0);
                self.done("grass_abi_version", String::new(), grass_status::GRASS_OK);
            }
            1 => {
                let s = grass_default_residual_scale();
                assert!(s.is_finite() && s >= 0.0, "{s}");
                self.done(
                    "grass_default_residual_scale",
                    String::new(),
                    grass_status::GRASS_OK,
                );
            }
            2 => {
                let code = self
                    .rng
                    .pick(&[0, 1, 7, 10, 11, 99, 100, 103, 200, 201, -1, i32::MAX]);
                let s = unsafe { CStr::from_ptr(grass_status_string(code)) };
                assert!(!s.to_bytes().is_empty());
                self.done(
                    "grass_status_string",
                    format!("{code}"),
                    grass_status::GRASS_OK,
                );
            }
            3 => {
                let dt = self.rng.enum_value(3);
                let size = grass_dtype_size(dt);
                assert!(
                    matches!((dt, size), (0, 4) | (1, 2) | (2, 2) | (_, 0)),
                    "{dt} {size}"
                );
                self.done("grass_dtype_size", format!("{dt}"), grass_status::GRASS_OK);
            }
            4 if self.rng.chance(30) => {
                let d = self.rng.query_dim();
                let mut r = -7i64;
                let out = if self.rng.chance(10) {
                    ptr::null_mut()
                } else {
                    &mut r as *mut i64
                };
                let st = unsafe { grass_default_rank(d, out) };
                if st == grass_status::GRASS_OK {
                    assert!(r >= 1 && r <= d, "grass_default_rank({d}) = {r}");
                } else {
                    assert_eq!(r, -7, "grass_default_rank wrote on failure");
                }
                self.done("grass_default_rank", format!("d {d}"), st);
            }
            4 => {
                let mut avail = -1;
                let len = self.rng.pick(&[0usize, 1, 8, 256]);
                let b = self.buf(len);
                let p = self.p(b);
                let out = if self.rng.chance(10) {
                    ptr::null_mut()
                } else {
                    &mut avail as *mut i32
                };
                let st = unsafe { grass_cuda_available(out, p.cast(), len) };
                self.done("grass_cuda_available", format!("len {len}"), st);
            }
            _ => {
                let mut c: *mut grass_context = ptr::null_mut();
                let st = if self.rng.chance(50) {
                    let ord = self.rng.pick(&[0, 1, -1, 1000]);
                    let st = unsafe { grass_context_create_cuda(ord, &mut c) };
                    self.done("grass_context_create_cuda", format!("{ord}"), st);
                    st
                } else {
                    let out = if self.rng.chance(10) {
                        ptr::null_mut()
                    } else {
                        &mut c as *mut _
                    };
                    let st = unsafe { grass_context_create_cpu(out) };
                    self.done("grass_context_create_cpu", String::new(), st);
                    st
                };
                if st == grass_status::GRASS_OK && !c.is_null() {
                    let mut kind = -1;
                    let st = unsafe { grass_context_device_kind(c, &mut kind) };
                    self.done("grass_context_device_kind", String::new(), st);
                    if self.ctx.len() < 3 {
                        self.ctx.push(c);
                    } else {
                        unsafe { grass_context_destroy(c) };
                        self.done(
                            "grass_context_destroy",
                            String::new(),
                            grass_status::GRASS_OK,
                        );
                    }
                }
                let st = unsafe { grass_context_device_kind(ptr::null(), ptr::null_mut()) };
                self.done("grass_context_device_kind", "NULL".into(), st);
                unsafe { grass_context_destroy(ptr::null_mut()) };
                self.done(
                    "grass_context_destroy",
                    "NULL".into(),
                    grass_status::GRASS_OK,
                );
            }
        }
    }

    fn queries(&mut self) {
        let (m, n, b, r, d) = (
            self.rng.query_dim(),
            self.rng.query_dim(),
            self.rng.query_dim(),
            self.rng.query_dim(),
            self.rng.query_dim(),
        );
        let side = self.rng.enum_value(3);
        let dt = self.rng.enum_value(3);
        let ctx = self.ctx();
        let mut bytes = 0usize;
        let out: *mut usize = if self.rng.chance(5) {
            ptr::null_mut()
        } else {
            &mut bytes
        };
        let args = format!("m {m}, n {n}, b {b}, r {r}, d {d}, side {side}, dtype {dt}");
        match self.rng.below(8) {
            0 => {
                let st = unsafe { grass_scores_workspace_size(ctx, m, n, b, side, dt, out) };
                self.done("grass_scores_workspace_size", args, st);
            }
            7 => {
                let st = unsafe { grass_residual_workspace_size(ctx, m, n, b, side, dt, out) };
                self.done("grass_residual_workspace_size", args, st);
            }
            1 => {
                let st = unsafe { grass_select_workspace_size(ctx, d, r, out) };
                self.done("grass_select_workspace_size", args, st);
            }
            2 => {
                let st =
                    unsafe { grass_sparse_grad_workspace_size(ctx, m, n, b, side, r, dt, out) };
                self.done("grass_sparse_grad_workspace_size", args, st);
            }
            3 => {
                let st = unsafe { grass_sparse_adamw_workspace_size(ctx, m, n, side, r, out) };
                self.done("grass_sparse_adamw_workspace_size", args, st);
            }
            4 => {
                let st = unsafe { grass_adamw_workspace_size(ctx, m, out) };
                self.done("grass_adamw_workspace_size", args, st);
            }
            5 => {
                let (mode, sdt) = (self.rng.enum_value(2), self.rng.enum_value(3));
                let st = unsafe { grass_state_refresh_workspace_size(ctx, mode, sdt, r, n, out) };
                self.done("grass_state_refresh_workspace_size", args, st);
            }
            _ => {
                let (mut so, mut dd, mut kk) = (0, 0i64, 0i64);
                let st = unsafe {
                    grass_resolve_side(
                        m,
                        n,
                        side,
                        if self.rng.chance(20) {
                            ptr::null_mut()
                        } else {
                            &mut so
                        },
                        if self.rng.chance(20) {
                            ptr::null_mut()
                        } else {
                            &mut dd
                        },
                        &mut kk,
                    )
                };
                self.done("grass_resolve_side", args, st);
            }
        }
        if self.rng.chance(5) {
            let st = unsafe { grass_projection_config_init(ptr::null_mut()) };
            self.done("grass_projection_config_init", "NULL".into(), st);
            let st = unsafe { grass_adamw_config_init(ptr::null_mut()) };
            self.done("grass_adamw_config_init", "NULL".into(), st);
            let st = unsafe { grass_adamw_config_init_sized(ptr::null_mut(), 48) };
            self.done("grass_adamw_config_init_sized", "NULL".into(), st);
        }
    }

    /// The context's shared workspace and the memory plan: random layers (sizes up to the
    /// largest legal ones, bad enums, struct sizes and counts), configs, NULL and misaligned
    /// pointers, reports of wrong struct sizes.
    fn memory(&mut self) {
        let ctx = self.ctx();
        match self.rng.below(3) {
            0 => {
                let mut bytes = 0usize;
                let out: *mut usize = if self.rng.chance(10) {
                    ptr::null_mut()
                } else {
                    &mut bytes
                };
                let st = unsafe { grass_context_workspace_bytes(ctx, out) };
                self.done("grass_context_workspace_bytes", String::new(), st);
            }
            1 => {
                // small enough to allocate, or beyond what any workspace may hold
                let bytes = self
                    .rng
                    .pick(&[0, 1, 4096, 1 << 20, (1 << 40) + 1, usize::MAX]);
                let st = unsafe { grass_context_reserve_workspace(ctx, bytes) };
                self.done("grass_context_reserve_workspace", format!("{bytes}"), st);
            }
            _ => {
                let acfg = self.acfg();
                let count = self.rng.pick(&[0usize, 1, 2, 3, 5]);
                let layers: Vec<grass_memory_layer> = (0..count)
                    .map(|_| {
                        let rank = match self.rng.below(4) {
                            0 => 0,
                            1 => self.rng.query_dim(),
                            _ => 1 + self.rng.below(16) as i64,
                        };
                        grass_memory_layer {
                            struct_size: if self.rng.chance(95) {
                                std::mem::size_of::<grass_memory_layer>()
                            } else {
                                {
                                    let size = std::mem::size_of::<grass_memory_layer>();
                                    self.rng.pick(&[0, 8, size - 8, size + 8])
                                }
                            },
                            m: self.rng.query_dim(),
                            n: self.rng.query_dim(),
                            rank,
                            side: self.rng.enum_value(3),
                            w_dtype: self.rng.enum_value(3),
                            act_dtype: self.rng.enum_value(3),
                            count: self.rng.pick(&[0, 1, 7, 1 << 20, -1, i64::MAX]),
                        }
                    })
                    .collect();
                let size = std::mem::size_of::<grass_memory_report>();
                let rep = self.buf(size);
                if self.bufs[rep].offset == 0 {
                    let s = if self.rng.chance(90) {
                        size
                    } else {
                        self.rng.pick(&[0, 8, size - 8, size + 8])
                    };
                    self.bufs[rep].bytes_mut()[..8].copy_from_slice(&s.to_ne_bytes());
                }
                let lp = if count == 0 && self.rng.chance(50) || self.rng.chance(5) {
                    ptr::null()
                } else {
                    layers.as_ptr()
                };
                let b = self.rng.dim();
                let cp: *const grass_adamw_config = if self.rng.chance(5) {
                    ptr::null()
                } else {
                    &acfg
                };
                let st = unsafe {
                    grass_memory_plan(
                        ctx,
                        cp,
                        lp,
                        count,
                        b,
                        self.p(rep) as *mut grass_memory_report,
                    )
                };
                self.done(
                    "grass_memory_plan",
                    format!("{count} layers, max_tokens {b}"),
                    st,
                );
            }
        }
    }

    /// A workspace of a random size around what the query answers (sometimes too small).
    fn workspace(&mut self, need: Option<usize>) -> (usize, usize) {
        let need = need.unwrap_or(256);
        let bytes = match self.rng.below(8) {
            0 => need / 2,
            1 => 0,
            _ => need + self.rng.below(128) as usize,
        };
        let i = self.buf(bytes);
        (i, bytes)
    }

    fn ops(&mut self) {
        let (m, n, b) = (self.rng.dim(), self.rng.dim(), self.rng.dim());
        let side = self.rng.enum_value(3);
        let dt = self.rng.enum_value(3);
        let es = bytes_of(dt);
        let (d, k) = self.layer_of(m, n, side).unwrap_or((0, 0));
        let r = if self.rng.chance(85) && d > 0 {
            1 + self.rng.below(d as u64) as i64
        } else {
            self.rng.dim()
        };
        let ctx = self.ctx();
        let stream = self.stream();
        let args = format!("m {m}, n {n}, b {b}, side {side}, r {r}, dtype {dt}");
        match self.rng.below(7) {
            0 => {
                let mut need = 0usize;
                let q = unsafe { grass_scores_workspace_size(ctx, m, n, b, side, dt, &mut need) };
                let x = self.buf(elems(&[b, n]) * es);
                let dy = self.buf(elems(&[b, m]) * es);
                let s = self.buf(elems(&[d]) * 4);
                let (ws, wsb) = self.workspace((q == grass_status::GRASS_OK).then_some(need));
                let st = unsafe {
                    grass_row_scores(
                        ctx,
                        m,
                        n,
                        b,
                        side,
                        dt,
                        self.p(x),
                        self.p(dy),
                        self.p(s).cast(),
                        self.p(ws),
                        wsb,
                        stream,
                    )
                };
                self.done("grass_row_scores", args, st);
            }
            1 => {
                let cfg = self.pcfg(d);
                let dd = if self.rng.chance(80) {
                    d.max(1)
                } else {
                    self.rng.dim()
                };
                let mut need = 0usize;
                let q = unsafe { grass_select_workspace_size(ctx, dd, cfg.rank, &mut need) };
                let s = self.buf(elems(&[dd]) * 4);
                let ri = elems(&[cfg.rank]);
                let idx = self.buf(ri * 4);
                let sc = self.buf(ri * 4);
                let at = if self.rng.chance(20) {
                    self.valid_buf(4)
                } else {
                    usize::MAX
                };
                let (ws, wsb) = self.workspace((q == grass_status::GRASS_OK).then_some(need));
                let cfgp: *const grass_projection_config = if self.rng.chance(5) {
                    ptr::null()
                } else {
                    &cfg
                };
                let refresh = self.rng.next() as u32;
                let atp = if at == usize::MAX {
                    ptr::null()
                } else {
                    self.p(at) as *const u32
                };
                let st = unsafe {
                    grass_select(
                        ctx,
                        cfgp,
                        dd,
                        refresh,
                        atp,
                        self.p(s) as *const f32,
                        self.p(idx).cast(),
                        self.p(sc).cast(),
                        self.p(ws),
                        wsb,
                        stream,
                    )
                };
                self.done("grass_select", format!("d {dd}, rank {}", cfg.rank), st);
            }
            2 => {
                let mut need = 0usize;
                let q = unsafe {
                    grass_sparse_grad_workspace_size(ctx, m, n, b, side, r, dt, &mut need)
                };
                let x = self.buf(elems(&[b, n]) * es);
                let dy = self.buf(elems(&[b, m]) * es);
                let idx = self.indices(r, d);
                let sc = self.buf(elems(&[r]) * 4);
                let g = self.buf(elems(&[r, k]) * 4);
                let (ws, wsb) = self.workspace((q == grass_status::GRASS_OK).then_some(need));
                let acc = self.rng.pick(&[0, 1, -7]);
                let st = unsafe {
                    grass_sparse_grad(
                        ctx,
                        m,
                        n,
                        b,
                        side,
                        r,
                        dt,
                        self.p(x),
                        self.p(dy),
                        self.p(idx) as *const i32,
                        self.p(sc) as *const f32,
                        self.p(g).cast(),
                        acc,
                        self.p(ws),
                        wsb,
                        stream,
                    )
                };
                self.done("grass_sparse_grad", args, st);
            }
            3 => {
                let cfg = self.acfg();
                let sdt = bytes_of(cfg.state_dtype);
                let wdt = self.rng.enum_value(3);
                let mut need = 0usize;
                let q = unsafe { grass_sparse_adamw_workspace_size(ctx, m, n, side, r, &mut need) };
                let w = self.buf(elems(&[m, n]) * bytes_of(wdt));
                let idx = self.indices(r, d);
                let sc = self.buf(elems(&[r]) * 4);
                let g = self.buf(elems(&[r, k]) * 4);
                let ms = self.buf(elems(&[r, k]) * sdt);
                let vs = self.buf(elems(&[r, k]) * sdt);
                let steps = self.counts(r);
                let lrs = if self.rng.chance(30) {
                    self.buf(4)
                } else {
                    usize::MAX
                };
                let skipped = if self.rng.chance(70) {
                    self.buf(4)
                } else {
                    usize::MAX
                };
                let (ws, wsb) = self.workspace((q == grass_status::GRASS_OK).then_some(need));
                let lr = self.rng.lr();
                let opt_p = |f: &Fuzz, i: usize| {
                    if i == usize::MAX {
                        ptr::null_mut()
                    } else {
                        f.p(i)
                    }
                };
                let cfgp: *const grass_adamw_config = if self.rng.chance(5) {
                    ptr::null()
                } else {
                    &cfg
                };
                let st = unsafe {
                    grass_sparse_adamw_step(
                        ctx,
                        cfgp,
                        m,
                        n,
                        side,
                        r,
                        wdt,
                        self.p(w),
                        self.p(idx) as *const i32,
                        self.p(sc) as *const f32,
                        self.p(g) as *const f32,
                        self.p(ms),
                        self.p(vs),
                        self.p(steps).cast(),
                        lr,
                        opt_p(self, lrs) as *const f32,
                        opt_p(self, skipped).cast(),
                        self.p(ws),
                        wsb,
                        stream,
                    )
                };
                self.done("grass_sparse_adamw_step", format!("{args}, lr {lr}"), st);
            }
            6 => {
                let cfg = self.acfg();
                let wdt = self.rng.enum_value(3);
                let mut need = 0usize;
                let q = unsafe { grass_residual_workspace_size(ctx, m, n, b, side, dt, &mut need) };
                let x = self.buf(elems(&[b, n]) * es);
                let dy = self.buf(elems(&[b, m]) * es);
                let w = self.buf(elems(&[m, n]) * bytes_of(wdt));
                let idx = self.indices(r, d);
                let lrs = if self.rng.chance(30) {
                    self.buf(4)
                } else {
                    usize::MAX
                };
                let skipped = if self.rng.chance(70) {
                    self.buf(4)
                } else {
                    usize::MAX
                };
                let (ws, wsb) = self.workspace((q == grass_status::GRASS_OK).then_some(need));
                let (lr, scale) = (self.rng.lr(), self.rng.float());
                let opt_p = |f: &Fuzz, i: usize| {
                    if i == usize::MAX {
                        ptr::null_mut()
                    } else {
                        f.p(i)
                    }
                };
                let cfgp: *const grass_adamw_config = if self.rng.chance(5) {
                    ptr::null()
                } else {
                    &cfg
                };
                let st = unsafe {
                    grass_residual_step(
                        ctx,
                        cfgp,
                        m,
                        n,
                        b,
                        side,
                        r,
                        dt,
                        self.p(x),
                        self.p(dy),
                        wdt,
                        self.p(w),
                        self.p(idx) as *const i32,
                        scale,
                        lr,
                        opt_p(self, lrs) as *const f32,
                        opt_p(self, skipped).cast(),
                        self.p(ws),
                        wsb,
                        stream,
                    )
                };
                self.done(
                    "grass_residual_step",
                    format!("{args}, lr {lr}, scale {scale}"),
                    st,
                );
            }
            4 => {
                let cfg = self.acfg();
                // a dense parameter's moments: dense_state_dtype, or state_dtype in a config of
                // ABI 6 or older (struct_size 48 or 40), which has no such field
                let sdt = bytes_of(if cfg.struct_size > 48 {
                    cfg.dense_state_dtype
                } else {
                    cfg.state_dtype
                });
                let numel = if self.rng.chance(50) {
                    m
                } else {
                    self.rng.dim()
                };
                let (wdt, gdt) = (self.rng.enum_value(3), self.rng.enum_value(3));
                let mut need = 0usize;
                let q = unsafe { grass_adamw_workspace_size(ctx, numel, &mut need) };
                let w = self.buf(elems(&[numel]) * bytes_of(wdt));
                let g = self.buf(elems(&[numel]) * bytes_of(gdt));
                let ms = self.buf(elems(&[numel]) * sdt);
                let vs = self.buf(elems(&[numel]) * sdt);
                let step = self.counts(1);
                let skipped = self.buf(4);
                let (ws, wsb) = self.workspace((q == grass_status::GRASS_OK).then_some(need));
                let lr = self.rng.lr();
                let st = unsafe {
                    grass_adamw_step(
                        ctx,
                        &cfg,
                        numel,
                        wdt,
                        self.p(w),
                        gdt,
                        self.p(g),
                        self.p(ms),
                        self.p(vs),
                        self.p(step).cast(),
                        lr,
                        ptr::null(),
                        self.p(skipped).cast(),
                        self.p(ws),
                        wsb,
                        stream,
                    )
                };
                self.done("grass_adamw_step", format!("numel {numel}, lr {lr}"), st);
            }
            _ => {
                let (mode, sdtc) = (self.rng.enum_value(2), self.rng.enum_value(3));
                let kk = if self.rng.chance(80) {
                    n
                } else {
                    self.rng.dim()
                };
                let mut need = 0usize;
                let q = unsafe {
                    grass_state_refresh_workspace_size(ctx, mode, sdtc, r, kk, &mut need)
                };
                let old = if self.rng.chance(30) {
                    usize::MAX
                } else {
                    self.indices(r, 1 << 12)
                };
                let new = self.indices(r, 1 << 12);
                let ms = self.buf(elems(&[r, kk]) * bytes_of(sdtc));
                let vs = self.buf(elems(&[r, kk]) * bytes_of(sdtc));
                let steps = self.counts(r);
                let (ws, wsb) = self.workspace((q == grass_status::GRASS_OK).then_some(need));
                let oldp = if old == usize::MAX {
                    ptr::null()
                } else {
                    self.p(old) as *const i32
                };
                let st = unsafe {
                    grass_state_refresh(
                        ctx,
                        mode,
                        sdtc,
                        r,
                        kk,
                        oldp,
                        self.p(new) as *const i32,
                        self.p(ms),
                        self.p(vs),
                        self.p(steps).cast(),
                        self.p(ws),
                        wsb,
                        stream,
                    )
                };
                self.done(
                    "grass_state_refresh",
                    format!("mode {mode}, dtype {sdtc}, r {r}, k {kk}"),
                    st,
                );
            }
        }
    }

    fn create_handles(&mut self) {
        let (m, n) = (self.rng.dim(), self.rng.dim());
        let max_tokens = self.rng.dim();
        let act = self.rng.enum_value(3);
        let pc = self.pcfg(m.max(n));
        let ctx = self.ctx();
        let (d, k) = self.layer_of(m, n, pc.side).unwrap_or((0, 0));
        // rank 0 is the rank rule's rank for d
        let mut rank = pc.rank;
        if rank == 0 && d > 0 {
            unsafe { grass_default_rank(d, &mut rank) };
        }
        let layer = Layer {
            m,
            n,
            d,
            k,
            rank,
            max_tokens,
            act,
        };
        let args = format!(
            "m {m}, n {n}, max_tokens {max_tokens}, rank {}, act {act}",
            pc.rank
        );
        let pcp: *const grass_projection_config =
            if self.rng.chance(5) { ptr::null() } else { &pc };
        match self.rng.below(3) {
            0 => {
                let mut h: *mut grass_projection = ptr::null_mut();
                let out = if self.rng.chance(5) {
                    ptr::null_mut()
                } else {
                    &mut h as *mut _
                };
                let st = unsafe { grass_projection_create(ctx, pcp, m, n, max_tokens, act, out) };
                self.done("grass_projection_create", args, st);
                if !h.is_null() {
                    self.projs.push(Proj { h, layer });
                }
            }
            1 => {
                let ac = self.acfg();
                let wdt = self.rng.enum_value(3);
                let mut h = ptr::null_mut();
                let st = unsafe {
                    grass_optimizer_create_sparse(ctx, pcp, &ac, m, n, max_tokens, act, wdt, &mut h)
                };
                self.done("grass_optimizer_create_sparse", args, st);
                if !h.is_null() {
                    self.opts.push(Opt {
                        h,
                        layer: Some(layer),
                        numel: 0,
                        w_dtype: wdt,
                        grad_dtype: act,
                    });
                }
            }
            _ => {
                let ac = self.acfg();
                let (wdt, gdt) = (self.rng.enum_value(3), self.rng.enum_value(3));
                let numel = self.rng.dim();
                let mut h = ptr::null_mut();
                let acp: *const grass_adamw_config =
                    if self.rng.chance(5) { ptr::null() } else { &ac };
                let st = unsafe { grass_optimizer_create_dense(ctx, acp, numel, wdt, gdt, &mut h) };
                self.done("grass_optimizer_create_dense", format!("numel {numel}"), st);
                if !h.is_null() {
                    self.opts.push(Opt {
                        h,
                        layer: None,
                        numel,
                        w_dtype: wdt,
                        grad_dtype: gdt,
                    });
                }
            }
        }
    }

    /// Calls on a projection: its own or one an optimizer lends.
    fn projection_calls(&mut self, h: *mut grass_projection, l: Layer) {
        let es = bytes_of(l.act);
        let b = if self.rng.chance(80) {
            1 + self.rng.below(l.max_tokens.clamp(1, 64) as u64 + 1) as i64
        } else {
            self.rng.dim()
        };
        let stream = self.stream();
        let hh = if self.rng.chance(3) {
            ptr::null_mut()
        } else {
            h
        };
        let args = format!("b {b}");
        match self.rng.below(8) {
            0 => {
                let x = self.buf(elems(&[b, l.n]) * es);
                let dy = self.buf(elems(&[b, l.m]) * es);
                let st = unsafe { grass_projection_refresh(hh, b, self.p(x), self.p(dy), stream) };
                self.done("grass_projection_refresh", args, st);
            }
            1 => {
                let s = self.buf(elems(&[l.d]) * 4);
                let st = unsafe {
                    grass_projection_refresh_from_scores(hh, self.p(s) as *const f32, stream)
                };
                self.done("grass_projection_refresh_from_scores", args, st);
            }
            2 => {
                let x = self.buf(elems(&[b, l.n]) * es);
                let dy = self.buf(elems(&[b, l.m]) * es);
                let s = self.buf(elems(&[l.d]) * 4);
                let st = unsafe {
                    grass_projection_scores(hh, b, self.p(x), self.p(dy), self.p(s).cast(), stream)
                };
                self.done("grass_projection_scores", args, st);
            }
            3 => {
                let x = self.buf(elems(&[b, l.n]) * es);
                let dy = self.buf(elems(&[b, l.m]) * es);
                let g = self.buf(elems(&[l.rank, l.k]) * 4);
                let acc = self.rng.pick(&[0, 1]);
                let st = unsafe {
                    grass_projection_compress(
                        hh,
                        b,
                        self.p(x),
                        self.p(dy),
                        self.p(g).cast(),
                        acc,
                        stream,
                    )
                };
                self.done("grass_projection_compress", args, st);
            }
            4 => {
                let st = unsafe { grass_projection_advance(hh) };
                self.done("grass_projection_advance", String::new(), st);
            }
            5 => {
                let (mut ip, mut sp) = (ptr::null::<i32>(), ptr::null::<f32>());
                let st = unsafe {
                    grass_projection_selection(
                        hh,
                        if self.rng.chance(20) {
                            ptr::null_mut()
                        } else {
                            &mut ip
                        },
                        &mut sp,
                    )
                };
                self.done("grass_projection_selection", String::new(), st);
            }
            _ => {
                let mut info: grass_projection_info = unsafe { std::mem::zeroed() };
                info.struct_size = if self.rng.chance(85) {
                    std::mem::size_of::<grass_projection_info>()
                } else {
                    self.rng.pick(&[0, 8, 16])
                };
                let st = unsafe { grass_projection_get_info(hh, &mut info) };
                self.done("grass_projection_get_info", String::new(), st);
            }
        }
    }

    fn optimizer_calls(&mut self, i: usize) {
        let o = &self.opts[i];
        let (h, layer, numel, wdt, gdt) = (o.h, o.layer, o.numel, o.w_dtype, o.grad_dtype);
        let stream = self.stream();
        let hh = if self.rng.chance(3) {
            ptr::null_mut()
        } else {
            h
        };
        match self.rng.below(10) {
            0 | 1 => {
                let Some(l) = layer else {
                    let st = unsafe {
                        grass_optimizer_backward(
                            hh,
                            1,
                            ptr::null(),
                            ptr::null(),
                            ptr::null(),
                            stream,
                        )
                    };
                    return self.done("grass_optimizer_backward", "dense".into(), st);
                };
                let es = bytes_of(l.act);
                let b = if self.rng.chance(80) {
                    1 + self.rng.below(l.max_tokens.clamp(1, 64) as u64) as i64
                } else {
                    self.rng.dim()
                };
                let x = self.buf(elems(&[b, l.n]) * es);
                let dy = self.buf(elems(&[b, l.m]) * es);
                let s = if self.rng.chance(30) {
                    self.buf(elems(&[l.d]) * 4)
                } else {
                    usize::MAX
                };
                let sp = if s == usize::MAX {
                    ptr::null()
                } else {
                    self.p(s) as *const f32
                };
                let st =
                    unsafe { grass_optimizer_backward(hh, b, self.p(x), self.p(dy), sp, stream) };
                self.done("grass_optimizer_backward", format!("b {b}"), st);
            }
            2 | 3 => {
                let (w_elems, grad) = match layer {
                    Some(l) => (
                        elems(&[l.m, l.n]),
                        if self.rng.chance(90) {
                            usize::MAX
                        } else {
                            self.buf(16)
                        },
                    ),
                    None => (elems(&[numel]), self.buf(elems(&[numel]) * bytes_of(gdt))),
                };
                let w = self.buf(w_elems * bytes_of(wdt));
                let lr = self.rng.lr();
                let gp = if grad == usize::MAX {
                    ptr::null()
                } else {
                    self.p(grad) as *const c_void
                };
                if self.rng.chance(25) {
                    let (b, es, mm, nn) = match layer {
                        Some(l) => (
                            if self.rng.chance(80) {
                                1 + self.rng.below(l.max_tokens.clamp(1, 64) as u64) as i64
                            } else {
                                self.rng.dim()
                            },
                            bytes_of(l.act),
                            l.m,
                            l.n,
                        ),
                        None => (1, 4, 1, 1),
                    };
                    let x = self.buf(elems(&[b, nn]) * es);
                    let dy = self.buf(elems(&[b, mm]) * es);
                    let (scale, rs) = (self.rng.float(), self.rng.float());
                    let st = unsafe {
                        grass_optimizer_step_residual(
                            hh,
                            self.p(w),
                            b,
                            self.p(x),
                            self.p(dy),
                            lr,
                            scale,
                            rs,
                            stream,
                        )
                    };
                    self.done(
                        "grass_optimizer_step_residual",
                        format!("b {b} lr {lr} grad_scale {scale} residual_scale {rs}"),
                        st,
                    );
                } else if self.rng.chance(50) {
                    let scale = self.rng.float();
                    let st = unsafe {
                        grass_optimizer_step_scaled(hh, self.p(w), gp, lr, scale, stream)
                    };
                    self.done(
                        "grass_optimizer_step_scaled",
                        format!("lr {lr} grad_scale {scale}"),
                        st,
                    );
                } else {
                    let st = unsafe { grass_optimizer_step(hh, self.p(w), gp, lr, stream) };
                    self.done("grass_optimizer_step", format!("lr {lr}"), st);
                }
                // the squared norm of the same gradient argument, into a caller float
                let out = self.buf(4);
                let st =
                    unsafe { grass_optimizer_grad_sq_norm(hh, gp, self.p(out).cast(), stream) };
                self.done("grass_optimizer_grad_sq_norm", String::new(), st);
            }
            4 => {
                let id = self.rng.next() as u32 % 4;
                let st = unsafe { grass_optimizer_set_layer_id(hh, id) };
                self.done("grass_optimizer_set_layer_id", format!("{id}"), st);
                let mut v = -1;
                let st = unsafe { grass_optimizer_last_step_skipped(hh, &mut v, stream) };
                self.done("grass_optimizer_last_step_skipped", String::new(), st);
                let st = unsafe { grass_optimizer_refresh_due(hh, &mut v) };
                self.done("grass_optimizer_refresh_due", String::new(), st);
            }
            5 => {
                let mut info: grass_optimizer_info = unsafe { std::mem::zeroed() };
                info.struct_size = if self.rng.chance(85) {
                    std::mem::size_of::<grass_optimizer_info>()
                } else {
                    self.rng.pick(&[0, 8, 48, 100])
                };
                let st = unsafe { grass_optimizer_get_info(hh, &mut info) };
                self.done("grass_optimizer_get_info", String::new(), st);
            }
            6 => {
                let mut size = 0usize;
                let st = unsafe { grass_optimizer_state_size(hh, &mut size) };
                self.done("grass_optimizer_state_size", String::new(), st);
                let bytes = if self.rng.chance(80) { size } else { size / 2 };
                let dst = self.buf(bytes);
                let st = unsafe { grass_optimizer_export_state(hh, self.p(dst), bytes, stream) };
                let ok = st == grass_status::GRASS_OK
                    && !self.bufs[dst].null
                    && self.bufs[dst].offset == 0;
                let blob = ok.then(|| self.bufs[dst].bytes_mut().to_vec());
                self.done("grass_optimizer_export_state", format!("{bytes} bytes"), st);
                if let Some(blob) = blob {
                    self.blobs.push(blob);
                    if self.blobs.len() > 8 {
                        self.blobs.remove(0);
                    }
                }
            }
            7 => {
                // a blob of this or another optimizer, sometimes damaged or cut short
                let mut blob = if self.blobs.is_empty() || self.rng.chance(10) {
                    (0..self.rng.below(300))
                        .map(|_| self.rng.next() as u8)
                        .collect()
                } else {
                    let j = self.rng.below(self.blobs.len() as u64) as usize;
                    self.blobs[j].clone()
                };
                if !blob.is_empty() && self.rng.chance(40) {
                    let j = self.rng.below(blob.len() as u64) as usize;
                    blob[j] ^= 1 << self.rng.below(8);
                }
                if self.rng.chance(10) {
                    blob.truncate(blob.len() / 2);
                }
                let src = self.valid_buf(blob.len());
                self.bufs[src].bytes_mut().copy_from_slice(&blob);
                let st =
                    unsafe { grass_optimizer_import_state(hh, self.p(src), blob.len(), stream) };
                self.done(
                    "grass_optimizer_import_state",
                    format!("{} bytes", blob.len()),
                    st,
                );
            }
            _ => {
                let mut p = ptr::null_mut();
                let st = unsafe { grass_optimizer_projection(hh, &mut p) };
                self.done("grass_optimizer_projection", String::new(), st);
                if let (false, Some(l)) = (p.is_null(), layer) {
                    self.projection_calls(p, l);
                }
            }
        }
    }

    /// `grass_checkpoint_save` then `grass_checkpoint_load` on a few optimizers, sometimes
    /// with a NULL or repeated handle, a bad count or path, the handles reordered, or the file
    /// damaged in between.
    fn checkpoint_set(&mut self) {
        let dir = std::env::temp_dir().join(format!("grass_fuzz_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("set.grass");
        let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        let mut set: Vec<*mut grass_optimizer> = (0..1 + self.rng.below(4))
            .filter(|_| !self.opts.is_empty())
            .map(|_| self.opts[self.rng.below(self.opts.len() as u64) as usize].h)
            .collect();
        if self.rng.chance(5) {
            set.push(ptr::null_mut());
        }
        let count = if self.rng.chance(5) {
            self.rng.pick(&[0usize, set.len() + 1])
        } else {
            set.len()
        };
        let count = if set.is_empty() {
            0
        } else {
            count.min(set.len())
        };
        let p = if self.rng.chance(5) {
            ptr::null()
        } else {
            path.as_ptr()
        };
        let stream = self.stream();
        let st = unsafe { grass_checkpoint_save(p, set.as_ptr(), count, stream) };
        self.done("grass_checkpoint_save", format!("count {count}"), st);
        if st == grass_status::GRASS_OK && self.rng.chance(30) {
            let mut bytes = std::fs::read(&file).unwrap();
            if self.rng.chance(50) {
                let j = self.rng.below(bytes.len() as u64) as usize;
                bytes[j] ^= 1 << self.rng.below(8);
            } else {
                bytes.truncate(self.rng.below(bytes.len() as u64) as usize);
            }
            std::fs::write(&file, bytes).unwrap();
        }
        if self.rng.chance(20) {
            set.reverse();
        }
        let st = unsafe { grass_checkpoint_load(p, set.as_ptr(), count, stream) };
        self.done("grass_checkpoint_load", format!("count {count}"), st);
    }

    fn destroy_some(&mut self) {
        if !self.projs.is_empty() && self.rng.chance(50) {
            let i = self.rng.below(self.projs.len() as u64) as usize;
            let p = self.projs.swap_remove(i);
            unsafe { grass_projection_destroy(p.h) };
            self.done(
                "grass_projection_destroy",
                String::new(),
                grass_status::GRASS_OK,
            );
        }
        if !self.opts.is_empty() {
            let i = self.rng.below(self.opts.len() as u64) as usize;
            let o = self.opts.swap_remove(i);
            unsafe { grass_optimizer_destroy(o.h) };
            self.done(
                "grass_optimizer_destroy",
                String::new(),
                grass_status::GRASS_OK,
            );
        }
        unsafe {
            grass_projection_destroy(ptr::null_mut());
            grass_optimizer_destroy(ptr::null_mut());
        }
    }

    fn step(&mut self) {
        match self.rng.below(20) {
            0 => self.library(),
            1..=3 => self.queries(),
            4..=8 => self.ops(),
            9 | 10 => {
                if self.projs.len() + self.opts.len() < 12 {
                    self.create_handles()
                }
            }
            11..=13 if !self.projs.is_empty() => {
                let i = self.rng.below(self.projs.len() as u64) as usize;
                let (h, l) = (self.projs[i].h, self.projs[i].layer);
                self.projection_calls(h, l);
            }
            14..=17 if !self.opts.is_empty() => {
                let i = self.rng.below(self.opts.len() as u64) as usize;
                self.optimizer_calls(i);
            }
            18 if self.rng.chance(50) => self.destroy_some(),
            18 => self.checkpoint_set(),
            _ => {
                if self.rng.chance(50) {
                    self.memory()
                } else {
                    self.queries()
                }
            }
        }
    }

    fn finish(mut self) -> (u64, BTreeMap<&'static str, (u64, u64)>) {
        while !self.projs.is_empty() || !self.opts.is_empty() {
            self.destroy_some();
            if let Some(p) = self.projs.pop() {
                unsafe { grass_projection_destroy(p.h) };
            }
        }
        for c in self.ctx.drain(..) {
            unsafe { grass_context_destroy(c) };
        }
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("grass_fuzz_{}", std::process::id())),
        );
        (self.calls, self.per_export)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn fuzz_the_c_abi() {
    let seconds = env_u64("GRASS_FUZZ_SECONDS").unwrap_or(20);
    let seed = env_u64("GRASS_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("fuzz_abi: seed {seed} (GRASS_FUZZ_SEED={seed} repeats this run), {seconds} s");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut f = Fuzz::new(seed);
    while Instant::now() < deadline {
        for _ in 0..64 {
            f.step();
        }
    }
    let (calls, per_export) = f.finish();
    let header =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/grass.h")).unwrap();
    let mut exports: Vec<&str> = header
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("grass_") && header.contains(&format!("{w}(")))
        .collect();
    exports.sort_unstable();
    exports.dedup();
    let missed: Vec<&&str> = exports
        .iter()
        .filter(|e| !per_export.contains_key(**e))
        .collect();
    println!(
        "fuzz_abi: {calls} calls over {} exports in {seconds} s",
        per_export.len()
    );
    for (e, (n, ok)) in &per_export {
        println!("  {e}: {n} calls, {ok} succeeded");
    }
    assert!(calls > 0);
    assert!(
        missed.is_empty() || calls < 2000,
        "exports the fuzzer never called: {missed:?}"
    );
}

/// The harness itself can fail: a write past a buffer, a panic status and a message that does
/// not name the function are each reported.
#[test]
fn the_harness_notices_overruns_panics_and_anonymous_errors() {
    let mut f = Fuzz::new(7);
    let i = f.valid_buf(16);
    assert!(f.bufs[i].intact());
    unsafe { (f.p(i) as *mut u8).add(16).write(0) };
    assert!(!f.bufs[i].intact(), "a byte past the end went unnoticed");
    let r = f.record("grass_select", String::new(), grass_status::GRASS_OK);
    assert!(r.unwrap_err().contains("wrote past the end"));
    let r = f.record(
        "grass_select",
        String::new(),
        grass_status::GRASS_ERROR_PANIC,
    );
    assert!(r.unwrap_err().contains("returned status 200"));
    // a failing call whose message names another function
    let _ = unsafe { grass_select_workspace_size(ptr::null(), 1, 1, ptr::null_mut()) };
    let r = f.record(
        "grass_row_scores",
        String::new(),
        grass_status::GRASS_ERROR_NULL_POINTER,
    );
    assert!(r.unwrap_err().contains("but the last error is"));
    let _ = unsafe { grass_select_workspace_size(ptr::null(), 1, 1, ptr::null_mut()) };
    let r = f.record(
        "grass_select_workspace_size",
        String::new(),
        grass_status::GRASS_ERROR_NULL_POINTER,
    );
    assert!(r.is_ok());
    f.finish();
}
