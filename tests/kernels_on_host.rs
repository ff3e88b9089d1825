//! The CUDA kernels, compiled for the host with the system C++ compiler through
//! tests/host_kernels/cuda_host.h, against the CPU backend: selection, the AdamW steps and
//! the state refresh bit for bit, the gather and scaling of the sparse gradient, and the
//! conversions and random numbers they build on. This checks the kernels' logic and
//! arithmetic on machines without a GPU (not the GPU's memory model: the GPU suite does).
//!
//! The compiler is `$CXX`, else `c++`; without one the tests skip, unless
//! GRASS_REQUIRE_CXX=1, where they fail.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use grass::core::rng::{Purpose, Stream};
use grass::ffi::*;
use half::{bf16, f16};

type Lib = libloading::Library;

fn build() -> Option<&'static Lib> {
    static LIB: OnceLock<Option<Lib>> = OnceLock::new();
    LIB.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // Selection runs as host threads: a smaller block (more tiles per pass) is cheaper.
        // GRASS_HOST_SEL_THREADS=512 checks the block size the GPU launches.
        let sel_threads: u32 = std::env::var("GRASS_HOST_SEL_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|t: &u32| t.is_power_of_two())
            .unwrap_or(64);
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("libgrass_kernels_host_{sel_threads}.so"));
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let status = Command::new(&cxx)
            .args([
                "-std=c++20",
                "-O2",
                "-ffp-contract=off",
                "-shared",
                "-fPIC",
                "-pthread",
            ])
            .arg(format!("-DSEL_THREADS={sel_threads}"))
            .arg(root.join("tests/host_kernels/kernels_host.cpp"))
            .arg("-o")
            .arg(&out)
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => {
                if std::env::var("GRASS_REQUIRE_CXX").as_deref() == Ok("1") {
                    panic!(
                        "GRASS_REQUIRE_CXX=1 but {cxx} could not build the host kernels: {other:?}"
                    );
                }
                println!("SKIPPED: {cxx} could not build the host kernels ({other:?})");
                return None;
            }
        }
        Some(unsafe { Lib::new(&out) }.expect("loading the host kernels"))
    })
    .as_ref()
}

macro_rules! sym {
    ($lib:expr, $name:literal, $ty:ty) => {
        *unsafe { $lib.get::<$ty>($name.as_bytes()) }.expect($name)
    };
}

#[track_caller]
fn ok(st: grass_status) {
    assert_eq!(st, grass_status::GRASS_OK, "{:?}", unsafe {
        std::ffi::CStr::from_ptr(grass_last_error_message())
    });
}

fn cpu() -> *mut grass_context {
    let mut c = std::ptr::null_mut();
    ok(unsafe { grass_context_create_cpu(&mut c) });
    c
}

struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    fn normal(&mut self) -> f32 {
        let (a, b) = (self.unit().max(1e-300), self.unit());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    }
    fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
    fn sorted_indices(&mut self, r: usize, d: usize) -> Vec<i32> {
        let mut v: Vec<i32> = (0..r).map(|_| self.below(d) as i32).collect();
        v.sort_unstable();
        v
    }
}

fn bytes<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Values stored with dtype code `dt` (0 f32, 1 bf16, 2 f16).
fn encode(v: &[f32], dt: i32) -> Vec<u8> {
    match dt {
        0 => bytes(v),
        1 => bytes(&v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>()),
        _ => bytes(&v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>()),
    }
}

#[track_caller]
fn same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        panic!("{what}: differs from byte {first} on ({} bytes)", got.len());
    }
}

#[test]
fn conversions_round_like_the_half_crate() {
    let Some(lib) = build() else { return };
    let to_bf16 = sym!(lib, "host_f32_to_bf16", unsafe extern "C" fn(f32) -> u16);
    let to_f16 = sym!(lib, "host_f32_to_f16", unsafe extern "C" fn(f32) -> u16);
    let from_f16 = sym!(lib, "host_f16_to_f32", unsafe extern "C" fn(u16) -> f32);
    let from_bf16 = sym!(lib, "host_bf16_to_f32", unsafe extern "C" fn(u16) -> f32);
    for h in 0..=u16::MAX {
        let (a, b) = (unsafe { from_f16(h) }, f16::from_bits(h).to_f32());
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "f16 {h:#x}"
        );
        let (a, b) = (unsafe { from_bf16(h) }, bf16::from_bits(h).to_f32());
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "bf16 {h:#x}"
        );
    }
    // A sweep of all f32 bit patterns, and every rounding tie of both formats.
    let mut values: Vec<u32> = (0..=u32::MAX).step_by(61).collect();
    for e in 0..256u32 {
        for sign in [0u32, 1] {
            let base = sign << 31 | e << 23;
            for low in [
                0x8000u32, 0x18000, 0x7fff, 0x8001, 0x1000, 0x3000, 0x0fff, 0x1001, 0x2000,
            ] {
                values.push(base | (low & 0x7f_ffff));
            }
        }
    }
    for bits in values {
        let x = f32::from_bits(bits);
        let (a, b) = (unsafe { to_bf16(x) }, bf16::from_f32(x).to_bits());
        assert!(
            a == b || (x.is_nan() && a & 0x7fff > 0x7f80),
            "bf16 of {bits:#x}: {a:#x} vs {b:#x}"
        );
        let (a, b) = (unsafe { to_f16(x) }, f16::from_f32(x).to_bits());
        assert!(
            a == b || (x.is_nan() && a & 0x7fff > 0x7c00),
            "f16 of {bits:#x}: {a:#x} vs {b:#x}"
        );
    }
}

#[test]
fn philox_and_powi_match_the_host_reference() {
    let Some(lib) = build() else { return };
    let philox = sym!(
        lib,
        "host_philox",
        unsafe extern "C" fn(u64, u32, u32, u32, u32, *mut u32)
    );
    let uniform = sym!(
        lib,
        "host_uniform",
        unsafe extern "C" fn(u64, u32, u32, u32, u32) -> f64
    );
    let powi = sym!(lib, "host_powi", unsafe extern "C" fn(f64, i32) -> f64);
    let mut rng = Rng(1);
    for _ in 0..20000 {
        let s = Stream {
            seed: rng.u64(),
            layer_id: rng.u64() as u32,
            refresh_index: rng.u64() as u32,
        };
        let i = rng.u64() as u32;
        for (p, code) in [
            (Purpose::Draw, 1),
            (Purpose::Order, 2),
            (Purpose::Offset, 3),
        ] {
            let mut out = [0u32; 4];
            unsafe {
                philox(
                    s.seed,
                    s.layer_id,
                    s.refresh_index,
                    code,
                    i,
                    out.as_mut_ptr(),
                )
            };
            assert_eq!(out, s.bits(p, i));
            let u = unsafe { uniform(s.seed, s.layer_id, s.refresh_index, code, i) };
            assert_eq!(u.to_bits(), s.uniform(p, i).to_bits());
        }
    }
    for beta in [0.9f32, 0.999, 0.95, 0.5, 0.0, 0.999_999] {
        for t in (1..3000).chain([65_535, 1 << 20, i32::MAX]) {
            let (a, b) = (unsafe { powi(beta as f64, t) }, (beta as f64).powi(t));
            assert_eq!(a.to_bits(), b.to_bits(), "{beta}^{t}");
        }
    }
}

type SelectFn = unsafe extern "C" fn(
    *const f32,
    i32,
    i32,
    i32,
    i32,
    i32,
    u64,
    u32,
    u32,
    *mut i32,
    *mut f32,
    *mut f64,
    *mut f64,
    *mut u64,
    *mut u32,
    *mut u8,
    u32,
);

#[test]
fn selection_kernel_matches_the_host_selection() {
    let Some(lib) = build() else { return };
    let select = sym!(lib, "host_select_rows", SelectFn);
    let ctx = cpu();
    let mut rng = Rng(2);
    let shapes = [
        (1usize, 1usize),
        (2, 1),
        (7, 3),
        (7, 7),
        (100, 33),
        (1000, 250),
        (1500, 1500),
        (3001, 700),
    ];
    let mut seed = 7u64;
    for &(d, r) in &shapes {
        for kind in 0..3 {
            let scores: Vec<f32> = (0..d)
                .map(|_| match kind {
                    0 => rng.normal().abs() * 3.0,
                    1 => [f32::NAN, f32::INFINITY, -1.0, 0.0, 2.0, 0.5, 0.5, 0.5][rng.below(8)],
                    _ => 0.0,
                })
                .collect();
            for method in 0..5 {
                for (power, scaling) in [(2, GRASS_SCALING_UNBIASED), (1, GRASS_SCALING_NONE)] {
                    seed = seed.wrapping_mul(0x9E37_79B9).wrapping_add(1);
                    let mut cfg = std::mem::MaybeUninit::<grass_projection_config>::uninit();
                    ok(unsafe { grass_projection_config_init(cfg.as_mut_ptr()) });
                    let mut cfg = unsafe { cfg.assume_init() };
                    (
                        cfg.method,
                        cfg.power,
                        cfg.scaling,
                        cfg.rank,
                        cfg.seed,
                        cfg.layer_id,
                    ) = (method, power, scaling, r as i64, seed, (seed % 5) as u32);
                    let refresh = (seed % 3) as u32;
                    let (mut wi, mut ws) = (vec![0i32; r], vec![0f32; r]);
                    let mut nbytes = 0;
                    ok(unsafe {
                        grass_select_workspace_size(ctx, d as i64, r as i64, &mut nbytes)
                    });
                    let mut scratch = vec![0u8; nbytes];
                    ok(unsafe {
                        grass_select(
                            ctx,
                            &cfg,
                            d as i64,
                            refresh,
                            std::ptr::null(),
                            scores.as_ptr(),
                            wi.as_mut_ptr(),
                            ws.as_mut_ptr(),
                            scratch.as_mut_ptr().cast(),
                            nbytes,
                            std::ptr::null_mut(),
                        )
                    });
                    let padded = d.next_power_of_two();
                    let (mut gi, mut gs) = (vec![-1i32; r], vec![f32::NAN; r]);
                    let (mut w, mut aux) = (vec![0f64; d], vec![0f64; d]);
                    let (mut keys, mut vals, mut taken) =
                        (vec![0u64; padded], vec![0u32; padded], vec![0u8; d]);
                    unsafe {
                        select(
                            scores.as_ptr(),
                            d as i32,
                            r as i32,
                            method,
                            power,
                            (scaling == GRASS_SCALING_NONE) as i32,
                            seed,
                            cfg.layer_id,
                            refresh,
                            gi.as_mut_ptr(),
                            gs.as_mut_ptr(),
                            w.as_mut_ptr(),
                            aux.as_mut_ptr(),
                            keys.as_mut_ptr(),
                            vals.as_mut_ptr(),
                            taken.as_mut_ptr(),
                            padded as u32,
                        )
                    };
                    let what = format!(
                        "method {method} power {power} scaling {scaling} d={d} r={r} scores {kind}"
                    );
                    assert_eq!(gi, wi, "indices, {what}");
                    same(&format!("scales, {what}"), &bytes(&gs), &bytes(&ws));
                }
            }
        }
    }
}

type SystematicFn = unsafe extern "C" fn(
    *const f64,
    i32,
    i32,
    u64,
    u32,
    u32,
    *mut i32,
    *mut u64,
    *mut u32,
    *mut u8,
    u32,
);

/// How many rows the scan of systematic sampling takes (the rest comes from its completion).
fn scan_picks(pi: &[f64], r: usize, stream: &Stream) -> usize {
    let mut order: Vec<u64> = (0..pi.len())
        .map(|i| (stream.bits(Purpose::Order, i as u32)[0] as u64) << 32 | i as u64)
        .collect();
    order.sort_unstable();
    let sum: f64 = order.iter().map(|k| pi[(k & 0xffff_ffff) as usize]).sum();
    let (norm, u) = (r as f64 / sum, stream.uniform(Purpose::Offset, 0));
    let (mut cum, mut next, mut picks) = (0.0f64, 0usize, 0usize);
    for k in &order {
        cum += pi[(k & 0xffff_ffff) as usize] * norm;
        if next < r && u + (next as f64) < cum {
            picks += 1;
            next += 1;
            while next < r && u + (next as f64) < cum {
                next += 1;
            }
        }
    }
    picks
}

/// Systematic sampling with inclusion probabilities above 1 (which rounding can produce): a
/// row swallows several sampling points, fewer than r rows are picked in the scan, and the
/// completion with the most probable untaken rows runs. Selection from scores almost never
/// reaches it, so it is driven here directly; picks and their order match the host's.
#[test]
fn systematic_completion_matches_the_host() {
    let Some(lib) = build() else { return };
    let systematic = sym!(lib, "host_systematic", SystematicFn);
    let mut rng = Rng(8);
    let mut cases: Vec<(Vec<f64>, usize)> = vec![(vec![2.0, 0.5, 0.5, 0.25], 3)];
    for &(d, r) in &[
        (9usize, 4usize),
        (70, 20),
        (200, 199),
        (300, 64),
        (1000, 500),
    ] {
        for _ in 0..6 {
            let mut pi: Vec<f64> = (0..d)
                .map(|_| rng.unit() * 2.0 * r as f64 / d as f64)
                .collect();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(d);
                pi[i] = 1.0 + rng.unit() * 5.0; // swallows up to 6 points
            }
            if rng.below(3) == 0 {
                let i = rng.below(d);
                pi[i] = 0.0;
            }
            cases.push((pi, r));
        }
    }
    let mut completions = 0;
    for (case, (pi, r)) in cases.iter().enumerate() {
        let (d, r) = (pi.len(), *r);
        for refresh in 0..8u32 {
            let stream = Stream {
                seed: 77 + case as u64,
                layer_id: 2,
                refresh_index: refresh,
            };
            let mut want = vec![-1i32; r];
            let mut keys = vec![0u64; d];
            grass::core::select::systematic(pi, r, &stream, &mut keys, &mut want);
            let padded = d.next_power_of_two();
            let mut got = vec![-1i32; r];
            let (mut kk, mut vv, mut taken) =
                (vec![0u64; padded], vec![0u32; padded], vec![0u8; d]);
            unsafe {
                systematic(
                    pi.as_ptr(),
                    d as i32,
                    r as i32,
                    stream.seed,
                    stream.layer_id,
                    refresh,
                    got.as_mut_ptr(),
                    kk.as_mut_ptr(),
                    vv.as_mut_ptr(),
                    taken.as_mut_ptr(),
                    padded as u32,
                )
            };
            assert_eq!(got, want, "case {case} (d={d} r={r}) refresh {refresh}");
            let mut distinct = got.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), r, "case {case}: picks must be distinct");
            completions += r - scan_picks(pi, r, &stream);
        }
    }
    println!("{completions} rows came from the completion");
    assert!(completions > 0, "no case reached the completion");
}

type RowNormsFn = unsafe extern "C" fn(*const f32, i32, i64, *mut f32);

/// The row norms of a chunk of G (its warp shuffles and the block's partial sums) equal the
/// f64 norm of every row, to the last bit of f32 up to the order of the f64 sum.
#[test]
fn row_norms_kernel_gives_every_rows_norm() {
    let Some(lib) = build() else { return };
    let norms = sym!(lib, "host_row_norms", RowNormsFn);
    let mut rng = Rng(9);
    for &(rows, k) in &[
        (1usize, 1usize),
        (3, 31),
        (2, 255),
        (4, 257),
        (3, 3001),
        (1, 8192),
    ] {
        let chunk = rng.normals(rows * k);
        let mut got = vec![f32::NAN; rows];
        unsafe { norms(chunk.as_ptr(), rows as i32, k as i64, got.as_mut_ptr()) };
        for i in 0..rows {
            let want = chunk[i * k..(i + 1) * k]
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum::<f64>()
                .sqrt() as f32;
            assert!(
                got[i].to_bits().abs_diff(want.to_bits()) <= 1,
                "rows {rows} k {k}: row {i} norm {} but {want}",
                got[i]
            );
        }
    }
}

/// The step header of kernels/adamw.cu.
#[repr(C)]
#[derive(Default)]
struct Header {
    bad: u32,
    skip: i32,
    lr: f32,
    c1: f32,
    c2: f32,
    decay: f32,
}

type CheckFn = unsafe extern "C" fn(
    u32,
    *const c_void,
    i32,
    i64,
    f32,
    *const i32,
    *const f32,
    i32,
    i64,
    *const i32,
    i32,
    *mut Header,
);
type PrepareFn = unsafe extern "C" fn(
    u32,
    u32,
    *mut Header,
    *mut i32,
    i32,
    *mut f32,
    f32,
    *const f32,
    f32,
    f32,
    f32,
    *mut i32,
);
type DecayFn = unsafe extern "C" fn(u32, u32, *mut c_void, i32, i64, *const Header);
type SparseFn = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    *mut c_void,
    i32,
    i64,
    i32,
    *mut c_void,
    *mut c_void,
    i32,
    *const f32,
    f32,
    *const i32,
    *const f32,
    i32,
    i64,
    f32,
    f32,
    f32,
    f32,
    i32,
    *const f32,
    *const i32,
    i32,
    *const Header,
);
type DenseFn = unsafe extern "C" fn(
    u32,
    u32,
    *mut c_void,
    i32,
    *const c_void,
    i32,
    f32,
    *mut c_void,
    *mut c_void,
    i32,
    i64,
    f32,
    f32,
    f32,
    i32,
    *const Header,
);

fn adamw(decay: i32, state_dt: i32) -> grass_adamw_config {
    let mut cfg = std::mem::MaybeUninit::<grass_adamw_config>::uninit();
    ok(unsafe {
        grass_adamw_config_init_sized(cfg.as_mut_ptr(), std::mem::size_of::<grass_adamw_config>())
    });
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.decay_mode = decay;
    cfg.weight_decay = if decay == GRASS_DECAY_OFF { 0.0 } else { 0.1 };
    cfg.alpha = 0.25;
    cfg.state_dtype = state_dt;
    // grass_adamw_step's moments
    cfg.dense_state_dtype = state_dt;
    // counts 1..12 over the steps: ramped rows, then rows past the warm-up (and none)
    cfg.row_warmup = if decay == GRASS_DECAY_SELECTED { 0 } else { 6 };
    cfg
}

#[test]
fn sparse_adamw_step_kernels_match_the_host() {
    let Some(lib) = build() else { return };
    let (check, prepare) = (
        sym!(lib, "host_step_check", CheckFn),
        sym!(lib, "host_step_prepare", PrepareFn),
    );
    let (decay_all, sparse) = (
        sym!(lib, "host_decay_all", DecayFn),
        sym!(lib, "host_sparse_adamw_step", SparseFn),
    );
    let ctx = cpu();
    let mut rng = Rng(3);
    let (m, n, r) = (40usize, 24usize, 12usize);
    // The kernels take the gradient scale of grass_optimizer_step_scaled; the host reference
    // is the layer-1 step on the f32 products gscale * g (bit for bit, as the CPU handle is).
    for gscale in [1.0f32, 0.37] {
        for cols in [0, 1] {
            let (d, k) = if cols == 1 { (n, m) } else { (m, n) };
            for w_dt in 0..3 {
                for s_dt in [0, 1] {
                    for decay in [GRASS_DECAY_OFF, GRASS_DECAY_SELECTED, GRASS_DECAY_DENSE] {
                        let cfg = adamw(decay, s_dt);
                        let w0 = encode(&rng.normals(m * n), w_dt);
                        let idx = rng.sorted_indices(r, d);
                        let scales: Vec<f32> = (0..r).map(|_| 0.5 + rng.unit() as f32).collect();
                        let ssz = if s_dt == 0 { 4 } else { 2 };
                        // rows at different step counts, as after a refresh with carry
                        let steps0: Vec<i32> = (0..r).map(|_| rng.below(4) as i32).collect();
                        let (mut hw, mut hm, mut hv, mut hs, mut hskip) = (
                            w0.clone(),
                            vec![0u8; r * k * ssz],
                            vec![0u8; r * k * ssz],
                            steps0.clone(),
                            -1i32,
                        );
                        let (mut kw, mut km, mut kv, mut ks, mut kskip) =
                            (w0.clone(), hm.clone(), hv.clone(), steps0.clone(), -1i32);
                        let mut coef = vec![f32::NAN; 2 * r];
                        for t in 0..8 {
                            let mut g = rng.normals(r * k);
                            if t == 3 {
                                g[7] = f32::NEG_INFINITY;
                            }
                            let gs: Vec<f32> = g.iter().map(|&x| x * gscale).collect();
                            let lr_scale = [if t == 2 { 0.5f32 } else { 1.0 }];
                            // step 4 hands the kernels unsorted indices, step 5 a negative count
                            // and step 6 a NaN scale: the host rejects them with a status, the
                            // device skips the step and says why.
                            let mut kidx = idx.clone();
                            let mut kscales = scales.clone();
                            let kept = ks[r / 2];
                            if t == 4 {
                                kidx.swap(0, r - 1);
                            } else if t == 5 {
                                ks[r / 2] = -3;
                            } else if t == 6 {
                                kscales[r - 1] = f32::NAN;
                            } else {
                                ok(unsafe {
                                    grass_sparse_adamw_step(
                                        ctx,
                                        &cfg,
                                        m as i64,
                                        n as i64,
                                        cols,
                                        r as i64,
                                        w_dt,
                                        hw.as_mut_ptr().cast(),
                                        idx.as_ptr(),
                                        scales.as_ptr(),
                                        gs.as_ptr(),
                                        hm.as_mut_ptr().cast(),
                                        hv.as_mut_ptr().cast(),
                                        hs.as_mut_ptr(),
                                        1e-2,
                                        lr_scale.as_ptr(),
                                        &mut hskip,
                                        std::ptr::null_mut(),
                                        0,
                                        std::ptr::null_mut(),
                                    )
                                });
                            }
                            // The kernel sequence of cuda::ops::sparse_adamw_step.
                            let mut h = Header::default();
                            unsafe {
                                check(
                                    5,
                                    g.as_ptr().cast(),
                                    0,
                                    (r * k) as i64,
                                    gscale,
                                    kidx.as_ptr(),
                                    kscales.as_ptr(),
                                    r as i32,
                                    d as i64,
                                    ks.as_ptr(),
                                    r as i32,
                                    &mut h,
                                );
                                prepare(
                                    2,
                                    4,
                                    &mut h,
                                    ks.as_mut_ptr(),
                                    r as i32,
                                    coef.as_mut_ptr(),
                                    1e-2,
                                    lr_scale.as_ptr(),
                                    cfg.beta1,
                                    cfg.beta2,
                                    cfg.weight_decay,
                                    &mut kskip,
                                );
                                if decay == GRASS_DECAY_DENSE {
                                    decay_all(
                                        3,
                                        64,
                                        kw.as_mut_ptr().cast(),
                                        w_dt,
                                        (m * n) as i64,
                                        &h,
                                    );
                                }
                                sparse(
                                    (k as u32).div_ceil(16),
                                    5,
                                    16,
                                    kw.as_mut_ptr().cast(),
                                    w_dt,
                                    n as i64,
                                    cols,
                                    km.as_mut_ptr().cast(),
                                    kv.as_mut_ptr().cast(),
                                    s_dt,
                                    g.as_ptr(),
                                    gscale,
                                    kidx.as_ptr(),
                                    kscales.as_ptr(),
                                    r as i32,
                                    k as i64,
                                    cfg.beta1,
                                    cfg.beta2,
                                    cfg.eps,
                                    cfg.alpha,
                                    (decay == GRASS_DECAY_SELECTED) as i32,
                                    coef.as_ptr(),
                                    ks.as_ptr(),
                                    cfg.row_warmup,
                                    &h,
                                );
                            }
                            let what = format!(
                            "gscale {gscale} cols {cols} W {w_dt} state {s_dt} decay {decay} step {t}"
                        );
                            if t == 5 {
                                assert_eq!(
                                    ks[r / 2],
                                    -3,
                                    "a skipped step leaves the counts, {what}"
                                );
                                ks[r / 2] = kept;
                            }
                            same(&format!("W, {what}"), &kw, &hw);
                            same(&format!("M, {what}"), &km, &hm);
                            same(&format!("V, {what}"), &kv, &hv);
                            assert_eq!(ks, hs, "row steps, {what}");
                            let want = match t {
                                3 | 6 => GRASS_STEP_SKIPPED_NONFINITE,
                                4 => GRASS_STEP_SKIPPED_BAD_INDICES,
                                5 => GRASS_STEP_SKIPPED_BAD_STEP_COUNT,
                                _ => GRASS_STEP_APPLIED,
                            };
                            assert_eq!(kskip, want, "outcome, {what}");
                            if !(4..=6).contains(&t) {
                                assert_eq!(hskip, want, "host outcome, {what}");
                            }
                        }
                        let four: Vec<i32> = steps0.iter().map(|s| s + 4).collect();
                        assert_eq!(ks, four, "each row counts its own applied steps");
                    }
                }
            }
        }
    }
}

#[test]
fn adamw_step_kernels_match_the_host() {
    let Some(lib) = build() else { return };
    let (check, prepare) = (
        sym!(lib, "host_step_check", CheckFn),
        sym!(lib, "host_step_prepare", PrepareFn),
    );
    let dense = sym!(lib, "host_adamw_step", DenseFn);
    let ctx = cpu();
    let mut rng = Rng(4);
    let numel = 3001usize;
    // gscale as in the sparse test; the host steps on the f32 products gscale * g (g widened
    // first), and a scale that overflows a finite gradient (t == 2 at 1e38) skips.
    for gscale in [1.0f32, 0.37, 1e38] {
        for w_dt in 0..3 {
            for g_dt in 0..3 {
                for s_dt in [0, 1] {
                    for decay in [GRASS_DECAY_OFF, GRASS_DECAY_SELECTED] {
                        let cfg = adamw(decay, s_dt);
                        let w0 = encode(&rng.normals(numel), w_dt);
                        let ssz = if s_dt == 0 { 4 } else { 2 };
                        // [step, outcome]
                        let (mut hw, mut hm, mut hv, mut hc) = (
                            w0.clone(),
                            vec![0u8; numel * ssz],
                            vec![0u8; numel * ssz],
                            [0i32, -1],
                        );
                        let (mut kw, mut km, mut kv, mut kc) =
                            (w0.clone(), hm.clone(), hv.clone(), [0i32, -1]);
                        for t in 0..3 {
                            let mut gv = rng.normals(numel);
                            if t == 1 {
                                gv[numel - 1] = f32::NAN;
                            }
                            if gscale == 1e38 {
                                if t != 2 {
                                    continue;
                                }
                                gv[5] = 100.0; // finite, but 1e40 once scaled
                            }
                            let g = encode(&gv, g_dt);
                            // g as the kernel reads it, times gscale, in f32
                            let gs: Vec<f32> = gv
                            .iter()
                            .map(|&x| match g_dt {
                                0 => x,
                                1 => bf16::from_f32(x).to_f32(),
                                _ => f16::from_f32(x).to_f32(),
                            } * gscale)
                            .collect();
                            let (hg, hg_dt) = if gscale == 1.0 {
                                (g.clone(), g_dt)
                            } else {
                                (bytes(&gs), 0)
                            };
                            ok(unsafe {
                                grass_adamw_step(
                                    ctx,
                                    &cfg,
                                    numel as i64,
                                    w_dt,
                                    hw.as_mut_ptr().cast(),
                                    hg_dt,
                                    hg.as_ptr().cast(),
                                    hm.as_mut_ptr().cast(),
                                    hv.as_mut_ptr().cast(),
                                    hc.as_mut_ptr(),
                                    3e-3,
                                    std::ptr::null(),
                                    hc.as_mut_ptr().add(1),
                                    std::ptr::null_mut(),
                                    0,
                                    std::ptr::null_mut(),
                                )
                            });
                            let mut h = Header::default();
                            unsafe {
                                check(
                                    7,
                                    g.as_ptr().cast(),
                                    g_dt,
                                    numel as i64,
                                    gscale,
                                    std::ptr::null(),
                                    std::ptr::null(),
                                    0,
                                    0,
                                    kc.as_ptr(),
                                    1,
                                    &mut h,
                                );
                                let coef = std::ptr::addr_of_mut!(h.c1);
                                prepare(
                                    1,
                                    32,
                                    &mut h,
                                    kc.as_mut_ptr(),
                                    1,
                                    coef,
                                    3e-3,
                                    std::ptr::null(),
                                    cfg.beta1,
                                    cfg.beta2,
                                    cfg.weight_decay,
                                    kc.as_mut_ptr().add(1),
                                );
                                dense(
                                    4,
                                    128,
                                    kw.as_mut_ptr().cast(),
                                    w_dt,
                                    g.as_ptr().cast(),
                                    g_dt,
                                    gscale,
                                    km.as_mut_ptr().cast(),
                                    kv.as_mut_ptr().cast(),
                                    s_dt,
                                    numel as i64,
                                    cfg.beta1,
                                    cfg.beta2,
                                    cfg.eps,
                                    (decay != GRASS_DECAY_OFF) as i32,
                                    &h,
                                );
                            }
                            let what = format!(
                            "gscale {gscale} W {w_dt} grad {g_dt} state {s_dt} decay {decay} step {t}"
                        );
                            same(&format!("W, {what}"), &kw, &hw);
                            same(&format!("M, {what}"), &km, &hm);
                            same(&format!("V, {what}"), &kv, &hv);
                            assert_eq!(kc, hc, "step and skipped, {what}");
                            if gscale == 1e38 {
                                assert_eq!(kc[1], GRASS_STEP_SKIPPED_NONFINITE, "{what}");
                            }
                        }
                    }
                }
            }
        }
    }
}

type SqNormFn = unsafe extern "C" fn(*const c_void, i32, i64, *mut f32);

/// The squared-norm kernel (one block) against an f64 sum, for every gradient dtype and
/// lengths around the block's size.
#[test]
fn sq_norm_kernel_matches_f64() {
    let Some(lib) = build() else { return };
    let sq_norm = sym!(lib, "host_sq_norm", SqNormFn);
    let mut rng = Rng(6);
    for n in [1usize, 255, 256, 257, 5000, 100_003] {
        for g_dt in 0..3 {
            let gv = rng.normals(n);
            let g = encode(&gv, g_dt);
            let want: f64 = gv
                .iter()
                .map(|&x| match g_dt {
                    0 => x,
                    1 => bf16::from_f32(x).to_f32(),
                    _ => f16::from_f32(x).to_f32(),
                } as f64)
                .map(|x| x * x)
                .sum();
            let mut out = f32::NAN;
            unsafe { sq_norm(g.as_ptr().cast(), g_dt, n as i64, &mut out) };
            let got = out as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want,
                "n {n} dtype {g_dt}: {got} vs {want}"
            );
        }
    }
}

type CarryFn = unsafe extern "C" fn(
    u32,
    *mut c_void,
    *mut c_void,
    *mut i32,
    i32,
    *const i32,
    *const i32,
    i32,
    i64,
);

/// For each new position, the old position whose row it keeps: a merge of the two sorted
/// lists, the q-th repeat of a value in `new` pairing with its q-th repeat in `old`.
fn merge_pairs(old: &[i32], new: &[i32]) -> Vec<Option<usize>> {
    let mut a = 0;
    new.iter()
        .map(|&v| {
            while a < old.len() && old[a] < v {
                a += 1;
            }
            if a < old.len() && old[a] == v {
                a += 1;
                Some(a - 1)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn carry_kernel_matches_the_host_refresh() {
    let Some(lib) = build() else { return };
    let carry = sym!(lib, "host_carry_rows", CarryFn);
    let ctx = cpu();
    let mut rng = Rng(5);
    let (r, k) = (40usize, 5usize);
    for s_dt in [0, 1] {
        for trial in 0..30 {
            let d = [3usize, 10, 60][trial % 3];
            let (old, new) = (rng.sorted_indices(r, d), rng.sorted_indices(r, d));
            let with_old = trial % 4 != 0;
            let mut cfg = adamw(GRASS_DECAY_OFF, s_dt);
            cfg.refresh_mode = GRASS_REFRESH_CARRY;
            let m0 = encode(&rng.normals(r * k), s_dt);
            let v0 = encode(&rng.normals(r * k), s_dt);
            let steps0: Vec<i32> = (0..r).map(|_| 1 + rng.below(300) as i32).collect();
            let (mut hm, mut hv, mut hs) = (m0.clone(), v0.clone(), steps0.clone());
            let mut nbytes = 0;
            ok(unsafe {
                grass_state_refresh_workspace_size(
                    ctx,
                    cfg.refresh_mode,
                    cfg.state_dtype,
                    r as i64,
                    k as i64,
                    &mut nbytes,
                )
            });
            let mut ws = vec![0u8; nbytes];
            ok(unsafe {
                grass_state_refresh(
                    ctx,
                    cfg.refresh_mode,
                    cfg.state_dtype,
                    r as i64,
                    k as i64,
                    if with_old {
                        old.as_ptr()
                    } else {
                        std::ptr::null()
                    },
                    new.as_ptr(),
                    hm.as_mut_ptr().cast(),
                    hv.as_mut_ptr().cast(),
                    hs.as_mut_ptr(),
                    ws.as_mut_ptr().cast(),
                    nbytes,
                    std::ptr::null_mut(),
                )
            });
            // blocks smaller and larger than the kernel's batch of rows
            let threads = [8, 32][trial % 2];
            let (mut km, mut kv, mut ks) = (m0.clone(), v0.clone(), steps0.clone());
            unsafe {
                carry(
                    threads,
                    km.as_mut_ptr().cast(),
                    kv.as_mut_ptr().cast(),
                    ks.as_mut_ptr(),
                    if s_dt == 0 { 4 } else { 2 },
                    if with_old {
                        old.as_ptr()
                    } else {
                        std::ptr::null()
                    },
                    new.as_ptr(),
                    r as i32,
                    k as i64,
                )
            };
            let what = format!("state {s_dt} trial {trial} old {old:?} new {new:?}");
            // both move rows in place; an out-of-place merge says where each row must end up
            let esz = if s_dt == 0 { 4 } else { 2 };
            let pairs = merge_pairs(if with_old { &old } else { &[] }, &new);
            let moved = |src: &[u8], row: usize| -> Vec<u8> {
                pairs
                    .iter()
                    .flat_map(|p| match p {
                        Some(a) => src[a * row..(a + 1) * row].to_vec(),
                        None => vec![0u8; row],
                    })
                    .collect()
            };
            same(&format!("host M, {what}"), &hm, &moved(&m0, k * esz));
            same(&format!("host V, {what}"), &hv, &moved(&v0, k * esz));
            let want_steps: Vec<i32> = pairs.iter().map(|p| p.map_or(0, |a| steps0[a])).collect();
            assert_eq!(hs, want_steps, "host row steps, {what}");
            same(&format!("M, {what}"), &km, &hm);
            same(&format!("V, {what}"), &kv, &hv);
            assert_eq!(ks, hs, "row steps, {what}");
            assert!(
                !with_old || hs.iter().any(|&t| t > 0),
                "some row keeps its count, {what}"
            );
        }
    }
}

type GatherFn =
    unsafe extern "C" fn(u32, u32, u32, *const c_void, i32, i64, i64, *const i32, i32, *mut c_void);
type ScaleFn = unsafe extern "C" fn(u32, u32, u32, *const f32, *const f32, i32, i64, *mut f32, i32);

#[test]
fn gather_and_scaling_around_the_gemm_give_the_host_gradient() {
    let Some(lib) = build() else { return };
    let gather = sym!(lib, "host_gather_cols", GatherFn);
    let scale = sym!(lib, "host_scale_rows", ScaleFn);
    let ctx = cpu();
    let mut rng = Rng(6);
    let (m, n, b, r) = (30usize, 20usize, 9usize, 11usize);
    for dt in 0..3 {
        for cols in [0, 1] {
            for accumulate in [0, 1] {
                let (d, k) = if cols == 1 { (n, m) } else { (m, n) };
                let (xv, dyv) = (rng.normals(b * n), rng.normals(b * m));
                let (x, dy) = (encode(&xv, dt), encode(&dyv, dt));
                let idx = rng.sorted_indices(r, d);
                let scales: Vec<f32> = (0..r).map(|_| 0.5 + rng.unit() as f32).collect();
                let g0 = rng.normals(r * k);
                let mut want = g0.clone();
                let mut nbytes = 0;
                ok(unsafe {
                    grass_sparse_grad_workspace_size(
                        ctx,
                        m as i64,
                        n as i64,
                        b as i64,
                        cols,
                        r as i64,
                        dt,
                        &mut nbytes,
                    )
                });
                let mut ws = vec![0u8; nbytes];
                ok(unsafe {
                    grass_sparse_grad(
                        ctx,
                        m as i64,
                        n as i64,
                        b as i64,
                        cols,
                        r as i64,
                        dt,
                        x.as_ptr().cast(),
                        dy.as_ptr().cast(),
                        idx.as_ptr(),
                        scales.as_ptr(),
                        want.as_mut_ptr(),
                        accumulate,
                        ws.as_mut_ptr().cast(),
                        nbytes,
                        std::ptr::null_mut(),
                    )
                });
                // A = dY (rows) or X (cols) gathered by the kernel; the GEMM in f64 here.
                let (a, bm) = if cols == 1 { (&x, &dy) } else { (&dy, &x) };
                let esz = if dt == 0 { 4 } else { 2 };
                let mut gathered = vec![0u8; b * r * esz];
                unsafe {
                    gather(
                        2,
                        3,
                        4,
                        a.as_ptr().cast(),
                        dt,
                        b as i64,
                        d as i64,
                        idx.as_ptr(),
                        r as i32,
                        gathered.as_mut_ptr().cast(),
                    )
                };
                let ga = decode(&gathered, dt);
                let bf = decode(bm, dt);
                let prod: Vec<f32> = (0..r * k)
                    .map(|e| {
                        (0..b)
                            .map(|t| ga[t * r + e / k] as f64 * bf[t * k + e % k] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect();
                let mut got = g0.clone();
                unsafe {
                    scale(
                        2,
                        4,
                        8,
                        prod.as_ptr(),
                        scales.as_ptr(),
                        r as i32,
                        k as i64,
                        got.as_mut_ptr(),
                        accumulate,
                    )
                };
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(p, q)| ((p - q) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    / want.iter().map(|q| (*q as f64).powi(2)).sum::<f64>().sqrt();
                assert!(
                    err < 1e-5,
                    "dtype {dt} cols {cols} accumulate {accumulate}: relative error {err:e}"
                );
            }
        }
    }
}

fn decode(b: &[u8], dt: i32) -> Vec<f32> {
    match dt {
        0 => b
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        1 => b
            .chunks(2)
            .map(|c| bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        _ => b
            .chunks(2)
            .map(|c| f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
    }
}
