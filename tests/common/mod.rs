//! Helpers shared by the Rust integration tests: a deterministic random source, naive f64
//! references, and thin wrappers that call the C ABI and turn a status into a Result.
#![allow(dead_code)]

use std::ffi::CStr;
use std::ptr;

use grass::ffi::*;

/// SplitMix64: small, deterministic, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1), never exactly zero.
    pub fn sym(&mut self) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        let v = 2.0 * u - 1.0;
        if v == 0.0 {
            0.5
        } else {
            v
        }
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.sym()).collect()
    }
}

pub fn last_error() -> String {
    unsafe {
        CStr::from_ptr(grass_last_error_message())
            .to_string_lossy()
            .into_owned()
    }
}

pub fn check(s: grass_status) -> Result<(), (grass_status, String)> {
    if s == grass_status::GRASS_OK {
        Ok(())
    } else {
        Err((s, last_error()))
    }
}

pub struct Ctx(pub *mut grass_context);

/// A GRASS-layer optimizer for an `m x n` f32 weight with f32 activations of at most `b`
/// tokens per call.
pub fn sparse_optimizer(
    ctx: &Ctx,
    pc: &grass_projection_config,
    ac: &grass_adamw_config,
    m: i64,
    n: i64,
    b: i64,
) -> Result<*mut grass_optimizer, (grass_status, String)> {
    let mut o = ptr::null_mut();
    check(unsafe {
        grass_optimizer_create_sparse(
            ctx.0,
            pc,
            ac,
            m,
            n,
            b,
            GRASS_DTYPE_F32,
            GRASS_DTYPE_F32,
            &mut o,
        )
    })?;
    Ok(o)
}

impl Ctx {
    pub fn cpu() -> Ctx {
        let mut c = ptr::null_mut();
        check(unsafe { grass_context_create_cpu(&mut c) }).unwrap();
        Ctx(c)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        unsafe { grass_context_destroy(self.0) }
    }
}

pub fn pcfg(
    rank: i64,
    method: grass_method,
    scaling: grass_scaling,
    side: grass_side,
) -> grass_projection_config {
    let mut c = grass_projection_config::defaults();
    c.rank = rank;
    c.method = method;
    c.scaling = scaling;
    c.side = side;
    c
}

/// G = dYᵀX in f64 (m x n), from X (b x n) and dY (b x m).
pub fn full_grad(x: &[f32], dy: &[f32], b: usize, m: usize, n: usize) -> Vec<f64> {
    let mut g = vec![0.0f64; m * n];
    for t in 0..b {
        for i in 0..m {
            let d = dy[t * m + i] as f64;
            for c in 0..n {
                g[i * n + c] += d * x[t * n + c] as f64;
            }
        }
    }
    g
}

pub fn scores(
    ctx: &Ctx,
    m: usize,
    n: usize,
    b: usize,
    side: grass_side,
    x: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let (mut d, mut ws) = (0i64, 0usize);
    unsafe {
        check(grass_resolve_side(
            m as i64,
            n as i64,
            side,
            ptr::null_mut(),
            &mut d,
            ptr::null_mut(),
        ))
        .unwrap();
        check(grass_scores_workspace_size(
            ctx.0,
            m as i64,
            n as i64,
            b as i64,
            side,
            GRASS_DTYPE_F32,
            &mut ws,
        ))
        .unwrap();
        let mut w = vec![0u8; ws];
        let mut s = vec![f32::NAN; d as usize];
        check(grass_row_scores(
            ctx.0,
            m as i64,
            n as i64,
            b as i64,
            side,
            GRASS_DTYPE_F32,
            x.as_ptr().cast(),
            dy.as_ptr().cast(),
            s.as_mut_ptr(),
            w.as_mut_ptr().cast(),
            ws,
            ptr::null_mut(),
        ))
        .unwrap();
        s
    }
}

pub fn select(
    ctx: &Ctx,
    cfg: &grass_projection_config,
    scores: &[f32],
    refresh: u32,
) -> (Vec<i32>, Vec<f32>) {
    select_with(ctx, cfg, scores, refresh, ptr::null())
}

/// As [`select`], with the refresh index passed through memory (`refresh_index_at`) and a
/// wrong value in the by-value argument, which must be ignored.
pub fn select_at(
    ctx: &Ctx,
    cfg: &grass_projection_config,
    scores: &[f32],
    refresh: u32,
) -> (Vec<i32>, Vec<f32>) {
    let at = refresh;
    select_with(ctx, cfg, scores, refresh.wrapping_add(1000), &at)
}

fn select_with(
    ctx: &Ctx,
    cfg: &grass_projection_config,
    scores: &[f32],
    refresh: u32,
    at: *const u32,
) -> (Vec<i32>, Vec<f32>) {
    let r = cfg.rank as usize;
    let d = scores.len() as i64;
    let mut ws = 0usize;
    unsafe {
        check(grass_select_workspace_size(ctx.0, d, cfg.rank, &mut ws)).unwrap();
        let mut w = vec![0u8; ws];
        let mut idx = vec![-1i32; r];
        let mut sc = vec![f32::NAN; r];
        check(grass_select(
            ctx.0,
            cfg,
            d,
            refresh,
            at,
            scores.as_ptr(),
            idx.as_mut_ptr(),
            sc.as_mut_ptr(),
            w.as_mut_ptr().cast(),
            ws,
            ptr::null_mut(),
        ))
        .unwrap();
        (idx, sc)
    }
}

#[allow(clippy::too_many_arguments)]
pub fn sparse_grad(
    ctx: &Ctx,
    m: usize,
    n: usize,
    b: usize,
    side: grass_side,
    x: &[f32],
    dy: &[f32],
    idx: &[i32],
    sc: &[f32],
    g: &mut [f32],
    acc: bool,
) {
    let r = idx.len() as i64;
    let mut ws = 0usize;
    unsafe {
        check(grass_sparse_grad_workspace_size(
            ctx.0,
            m as i64,
            n as i64,
            b as i64,
            side,
            r,
            GRASS_DTYPE_F32,
            &mut ws,
        ))
        .unwrap();
        let mut w = vec![0u8; ws];
        check(grass_sparse_grad(
            ctx.0,
            m as i64,
            n as i64,
            b as i64,
            side,
            r,
            GRASS_DTYPE_F32,
            x.as_ptr().cast(),
            dy.as_ptr().cast(),
            idx.as_ptr(),
            sc.as_ptr(),
            g.as_mut_ptr(),
            acc as i32,
            w.as_mut_ptr().cast(),
            ws,
            ptr::null_mut(),
        ))
        .unwrap();
    }
}

/// First mismatches of `got` against `want` under a relative-to-norm tolerance, as a message.
pub fn compare(what: &str, want: &[f64], got: &[f32], tol: f64) -> Result<(), String> {
    let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-30);
    let scale = norm / (want.len() as f64).sqrt();
    let mut bad = vec![];
    for (i, (&w, &g)) in want.iter().zip(got).enumerate() {
        // written as "not within" so that a NaN counts as a mismatch
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !((g as f64 - w).abs() <= tol * (w.abs() + scale)) {
            bad.push(format!("[{i}] expected {w:.6e} got {g:.6e}"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {} of {} mismatch (tol {tol:.2e}); first: {}",
            bad.len(),
            want.len(),
            bad[..bad.len().min(5)].join(", ")
        ))
    }
}

/// One compressed AdamW step on host buffers (CPU contexts need no workspace; no lr_scale).
/// `w`, `ms` and `vs` point to the weight and state dtypes the config and `w_dtype` name.
#[allow(clippy::too_many_arguments)]
pub fn sparse_adamw_step(
    ctx: &Ctx,
    cfg: &grass_adamw_config,
    mn: (usize, usize),
    side: grass_side,
    w_dtype: grass_dtype,
    w: *mut std::ffi::c_void,
    idx: &[i32],
    sc: &[f32],
    g: &[f32],
    mv: (*mut std::ffi::c_void, *mut std::ffi::c_void),
    row_steps: &mut [i32],
    lr: f32,
    skipped: *mut i32,
) {
    check(try_sparse_adamw_step(
        ctx, cfg, mn, side, w_dtype, w, idx, sc, g, mv, row_steps, lr, skipped,
    ))
    .unwrap();
}

/// `sparse_adamw_step` returning the call's status instead of requiring success.
#[allow(clippy::too_many_arguments)]
pub fn try_sparse_adamw_step(
    ctx: &Ctx,
    cfg: &grass_adamw_config,
    (m, n): (usize, usize),
    side: grass_side,
    w_dtype: grass_dtype,
    w: *mut std::ffi::c_void,
    idx: &[i32],
    sc: &[f32],
    g: &[f32],
    (ms, vs): (*mut std::ffi::c_void, *mut std::ffi::c_void),
    row_steps: &mut [i32],
    lr: f32,
    skipped: *mut i32,
) -> grass_status {
    assert_eq!(row_steps.len(), idx.len(), "one step count per state row");
    unsafe {
        grass_sparse_adamw_step(
            ctx.0,
            cfg,
            m as i64,
            n as i64,
            side,
            idx.len() as i64,
            w_dtype,
            w,
            idx.as_ptr(),
            sc.as_ptr(),
            g.as_ptr(),
            ms,
            vs,
            row_steps.as_mut_ptr(),
            lr,
            ptr::null(),
            skipped,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
        )
    }
}

/// One state refresh of f32 states on host buffers (the refresh needs no workspace), from
/// `old` (None: no previous selection) to `new`.
#[allow(clippy::too_many_arguments)]
pub fn refresh(
    ctx: &Ctx,
    cfg: &grass_adamw_config,
    k: usize,
    old: Option<&[i32]>,
    new: &[i32],
    ms: &mut [f32],
    vs: &mut [f32],
    row_steps: &mut [i32],
) {
    check(unsafe {
        grass_state_refresh(
            ctx.0,
            cfg.refresh_mode,
            cfg.state_dtype,
            new.len() as i64,
            k as i64,
            old.map_or(ptr::null(), |o| o.as_ptr()),
            new.as_ptr(),
            ms.as_mut_ptr().cast(),
            vs.as_mut_ptr().cast(),
            row_steps.as_mut_ptr(),
            ptr::null_mut(),
            0,
            ptr::null_mut(),
        )
    })
    .unwrap();
}

/// One dense AdamW step on f32 host buffers.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    ctx: &Ctx,
    cfg: &grass_adamw_config,
    w: &mut [f32],
    grad: &[f32],
    ms: &mut [f32],
    vs: &mut [f32],
    step: &mut i32,
    lr: f32,
    skipped: *mut i32,
) {
    check(unsafe {
        grass_adamw_step(
            ctx.0,
            cfg,
            w.len() as i64,
            GRASS_DTYPE_F32,
            w.as_mut_ptr().cast(),
            GRASS_DTYPE_F32,
            grad.as_ptr().cast(),
            ms.as_mut_ptr().cast(),
            vs.as_mut_ptr().cast(),
            step,
            lr,
            ptr::null(),
            skipped,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
        )
    })
    .unwrap();
}

/// Every selection method.
pub const METHODS: [grass_method; 5] = [
    GRASS_METHOD_TOP_R,
    GRASS_METHOD_MULTINOMIAL,
    GRASS_METHOD_MULTINOMIAL_NR,
    GRASS_METHOD_UNIFORM,
    GRASS_METHOD_UNIFORM_NR,
];

/// A random layer: X (b x n), dY (b x m) and the exact gradient G = dYᵀX in f64.
pub struct Problem {
    pub m: usize,
    pub n: usize,
    pub b: usize,
    pub x: Vec<f32>,
    pub dy: Vec<f32>,
    pub g: Vec<f64>,
}

pub fn problem(m: usize, n: usize, b: usize, seed: u64) -> Problem {
    let mut rng = Rng(seed);
    let x = rng.vec(b * n);
    // rows of dY with different magnitudes give rows of G with different norms
    let dy: Vec<f32> = (0..b * m)
        .map(|e| rng.sym() * (1.0 + (e % m) as f32 * 0.3))
        .collect();
    let g = full_grad(&x, &dy, b, m, n);
    Problem { m, n, b, x, dy, g }
}

/// Row `i` of the projected side of G (a row of G, or a column for side COLS).
pub fn projected_row(p: &Problem, side: grass_side, i: usize) -> Vec<f64> {
    if side == GRASS_SIDE_COLS {
        (0..p.m).map(|r| p.g[r * p.n + i]).collect()
    } else {
        p.g[i * p.n..(i + 1) * p.n].to_vec()
    }
}

/// AdamW defaults with weight decay `wd` in decay mode `mode`.
/// The default AdamW config with weight decay `wd` under `mode`, and f32 moments (the library's
/// default is bf16): the tests' state buffers are f32 slices; bf16 moments have their own tests.
pub fn adamw(wd: f32, mode: grass_decay_mode) -> grass_adamw_config {
    let mut a = grass_adamw_config::defaults();
    a.weight_decay = wd;
    a.decay_mode = mode;
    a.state_dtype = GRASS_DTYPE_F32;
    a
}

/// A fresh directory under the system's temporary directory (named for the test process and
/// `tag`), removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("grass-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
