//! The compressed AdamW step with its scatter update into W, the dense AdamW step, and the
//! state remap at a refresh.

use half::{bf16, f16, slice::HalfFloatSliceExt};

use crate::core::config::Side;
use crate::core::config::{AdamW, DecayMode, RefreshMode};
use crate::core::dtype::Elem;
use crate::core::shape::Projected;
use crate::cpu::activations::Act;

/// A weight tensor of any supported dtype.
pub enum Weights<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [bf16]),
    F16(&'a mut [f16]),
}

/// An optimizer state tensor (f32 or bf16).
pub enum State<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [bf16]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOutcome {
    /// The gradient held a NaN or infinity: nothing was written but the flag.
    pub skipped: bool,
}

/// One Adam moment update in f32; returns the update direction `u`.
#[inline(always)]
pub fn adam_update(cfg: &AdamW, c1: f32, c2: f32, m: &mut f32, v: &mut f32, g: f32) -> f32 {
    *m = cfg.beta1 * *m + (1.0 - cfg.beta1) * g;
    *v = cfg.beta2 * *v + (1.0 - cfg.beta2) * g * g;
    (*m / c1) / ((*v / c2).sqrt() + cfg.eps)
}

macro_rules! with_weights {
    ($w:expr, $name:ident => $body:expr) => {
        match $w {
            Weights::F32($name) => $body,
            Weights::Bf16($name) => $body,
            Weights::F16($name) => $body,
        }
    };
}

macro_rules! with_state {
    ($s:expr, $name:ident => $body:expr) => {
        match $s {
            State::F32($name) => $body,
            State::Bf16($name) => $body,
        }
    };
}

macro_rules! with_act {
    ($a:expr, $name:ident => $body:expr) => {
        match $a {
            Act::F32($name) => $body,
            Act::Bf16($name) => $body,
            Act::F16($name) => $body,
        }
    };
}

// How the steps run fast while computing exactly what the scalar formula computes:
// - Work goes in chunks of `CHUNK` elements. A chunk of a 16-bit tensor is widened into an f32
//   buffer on the stack, updated there and narrowed back; f32 tensors are updated in place. The
//   update loops are branch-free straight-line f32 code over equal-length slices, which the
//   compiler turns into SIMD (IEEE division and square root are exact in every lane, and Rust
//   never contracts a*b+c into an FMA, so each element sees the same operations in the same
//   order as `adam_update` on one element).
// - The finiteness check reads all of g first (a branch-free reduction per chunk), so a skipped
//   step writes nothing.
// - Above `PAR_MIN` elements per thread the elements (dense) or the runs of equal indices
//   (compressed) are split over up to `max_threads()` scoped threads, which have all joined
//   when the step returns. Every element is computed by exactly one thread with the same
//   arithmetic, so the result does not depend on the thread count.

/// Elements per chunk: the f32 copies of one chunk of g, M, V and W fit in L1.
const CHUNK: usize = 512;

/// Elements each thread gets at least: starting a thread costs tens of microseconds, a small
/// part of updating this many elements.
const PAR_MIN: usize = 1 << 17;

/// The most threads one step uses: the steps are bound by memory bandwidth, which a few cores
/// saturate.
const MAX_THREADS: usize = 8;

fn max_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS)
    })
}

/// Threads for a step over `elems` elements: one below `2 * PAR_MIN`.
fn threads_for(elems: usize) -> usize {
    (elems / PAR_MIN).clamp(1, max_threads())
}

/// Storage elements as f32 in bulk, bit for bit as `Elem::to_f32` / `Elem::from_f32` convert
/// one element, in loops the compiler vectorizes.
trait Lanes: Elem {
    /// True when no element is a NaN or an infinity.
    fn all_finite(s: &[Self]) -> bool;
    /// `s` as f32: `s` itself for f32, else widened into `buf` (at least as long as `s`).
    fn read<'a>(s: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];
    /// Runs `f` on `s` as f32 values and keeps what `f` leaves there (narrowed back into `s`
    /// unless `Self` is f32); `buf` is at least as long as `s`.
    fn update(s: &mut [Self], buf: &mut [f32], f: impl FnOnce(&mut [f32]));
    /// Writes f32 `src` into `s` (same length), rounded to `Self`.
    fn write(s: &mut [Self], src: &[f32]);
}

impl Lanes for f32 {
    #[inline(always)]
    fn all_finite(s: &[f32]) -> bool {
        s.chunks(CHUNK).all(|c| {
            c.iter().fold(true, |ok, x| {
                ok & (x.to_bits() & 0x7F80_0000 != 0x7F80_0000)
            })
        })
    }
    #[inline(always)]
    fn read<'a>(s: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        s
    }
    #[inline(always)]
    fn update(s: &mut [f32], _: &mut [f32], f: impl FnOnce(&mut [f32])) {
        f(s)
    }
    #[inline(always)]
    fn write(s: &mut [f32], src: &[f32]) {
        s.copy_from_slice(src)
    }
}

/// bf16 to f32 as `half` converts it (a NaN comes back quiet), without branches.
#[inline(always)]
fn widen_bf16(b: u16) -> f32 {
    let quiet = (((b & 0x7FFF) > 0x7F80) as u32) << 6;
    f32::from_bits((b as u32 | quiet) << 16)
}

/// f32 to bf16 as `half` converts it (round to nearest even; a NaN stays a quiet NaN), without
/// branches.
#[inline(always)]
fn narrow_bf16(x: f32) -> u16 {
    let x = x.to_bits();
    let nan = (x & 0x7FFF_FFFF) > 0x7F80_0000;
    let up = ((x & 0x8000) != 0) & ((x & 0x17FFF) != 0);
    let hi = x >> 16;
    let rounded = hi + (up as u32);
    let quieted = hi | 0x40;
    (if nan { quieted } else { rounded }) as u16
}

impl Lanes for bf16 {
    #[inline(always)]
    fn all_finite(s: &[bf16]) -> bool {
        s.chunks(CHUNK).all(|c| {
            c.iter()
                .fold(true, |ok, x| ok & (x.to_bits() & 0x7F80 != 0x7F80))
        })
    }
    #[inline(always)]
    fn read<'a>(s: &'a [bf16], buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..s.len()];
        for (d, x) in buf.iter_mut().zip(s) {
            *d = widen_bf16(x.to_bits());
        }
        buf
    }
    #[inline(always)]
    fn update(s: &mut [bf16], buf: &mut [f32], f: impl FnOnce(&mut [f32])) {
        let buf = &mut buf[..s.len()];
        for (d, x) in buf.iter_mut().zip(s.iter()) {
            *d = widen_bf16(x.to_bits());
        }
        f(buf);
        Self::write(s, buf);
    }
    #[inline(always)]
    fn write(s: &mut [bf16], src: &[f32]) {
        assert_eq!(s.len(), src.len());
        for (x, d) in s.iter_mut().zip(src) {
            *x = bf16::from_bits(narrow_bf16(*d));
        }
    }
}

impl Lanes for f16 {
    #[inline(always)]
    fn all_finite(s: &[f16]) -> bool {
        s.chunks(CHUNK).all(|c| {
            c.iter()
                .fold(true, |ok, x| ok & (x.to_bits() & 0x7C00 != 0x7C00))
        })
    }
    #[inline(always)]
    fn read<'a>(s: &'a [f16], buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..s.len()];
        s.convert_to_f32_slice(buf);
        buf
    }
    #[inline(always)]
    fn update(s: &mut [f16], buf: &mut [f32], f: impl FnOnce(&mut [f32])) {
        let buf = &mut buf[..s.len()];
        s.convert_to_f32_slice(buf);
        f(buf);
        s.convert_from_f32_slice(buf);
    }
    #[inline(always)]
    fn write(s: &mut [f16], src: &[f32]) {
        s.convert_from_f32_slice(src);
    }
}

/// Runs `work` on each part: the first here, the others on scoped threads, which have all
/// joined when it returns. One part runs here without starting anything.
fn run_parts<P: Send>(mut parts: impl Iterator<Item = P>, work: impl Fn(P) + Sync) {
    let Some(first) = parts.next() else { return };
    let Some(second) = parts.next() else {
        return work(first);
    };
    std::thread::scope(|s| {
        for p in std::iter::once(second).chain(parts) {
            let work = &work;
            s.spawn(move || work(p));
        }
        work(first);
    });
}

/// Splits `n` elements into `threads` ranges of whole chunks (the last may be shorter).
fn split_len(n: usize, threads: usize) -> usize {
    n.div_ceil(threads).div_ceil(CHUNK) * CHUNK
}

/// True when no element of `g` is a NaN or an infinity, read on up to `threads` threads.
fn all_finite_par<G: Lanes>(g: &[G]) -> bool {
    let threads = threads_for(g.len());
    if threads == 1 {
        return G::all_finite(g);
    }
    let ok = std::sync::atomic::AtomicBool::new(true);
    run_parts(g.chunks(split_len(g.len(), threads)), |p| {
        if !G::all_finite(p) {
            ok.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    });
    ok.into_inner()
}

/// True when `grad_scale * g` (each element in f32) has no NaN or infinity, for a finite `g`
/// and a finite, non-negative `grad_scale`: only a scale above 1 can overflow an element.
fn scaled_finite<G: Lanes>(g: &[G], grad_scale: f32) -> bool {
    if grad_scale <= 1.0 {
        return true;
    }
    let mut buf = [0.0f32; CHUNK];
    g.chunks(CHUNK).all(|c| {
        let c = G::read(c, &mut buf);
        c.iter()
            .fold(true, |ok, &x| ok & (x * grad_scale).is_finite())
    })
}

/// W = W * factor, rounded to W's dtype, on up to `max_threads()` threads.
fn decay_all<W: Lanes>(w: &mut [W], factor: f32) {
    let threads = threads_for(w.len());
    let len = split_len(w.len(), threads);
    run_parts(w.chunks_mut(len), |w: &mut [W]| {
        let mut buf = [0.0f32; CHUNK];
        for w in w.chunks_mut(CHUNK) {
            W::update(w, &mut buf, |w| {
                for x in w.iter_mut() {
                    *x *= factor;
                }
            });
        }
    });
}

/// Applies the compressed AdamW step. `indices` are sorted ascending (as `select` writes them);
/// repeated indices add their updates into one row, which is rounded once. `row_steps[j]`
/// (not negative) counts the steps state row j has taken since it was zeroed; each is
/// incremented (saturating at i32::MAX, where the corrections are long 1) and gives that row's
/// bias corrections.
#[allow(clippy::too_many_arguments)]
pub fn sparse_adamw_step(
    cfg: &AdamW,
    p: &Projected,
    w: Weights<'_>,
    indices: &[i32],
    scales: &[f32],
    g: &[f32],
    m: State<'_>,
    v: State<'_>,
    row_steps: &mut [i32],
    lr: f32,
    grad_scale: f32,
) -> StepOutcome {
    if !all_finite_par(g) || !scaled_finite(g, grad_scale) {
        return StepOutcome { skipped: true };
    }
    for t in row_steps.iter_mut() {
        *t = t.saturating_add(1);
    }
    with_weights!(w, w => with_state!(m, m => with_state!(v, v => {
        sparse_inner(cfg, p, w, indices, scales, g, m, v, row_steps, lr, grad_scale)
    })));
    StepOutcome { skipped: false }
}

/// W's elements, written by several threads at once at disjoint positions.
struct SharedW<W> {
    ptr: *mut W,
    len: usize,
}

// SAFETY: the threads of one step touch disjoint elements of W (see `sparse_inner`), and the
// `&mut [W]` the pointer came from outlives them (scoped threads).
unsafe impl<W: Send> Send for SharedW<W> {}
unsafe impl<W: Send> Sync for SharedW<W> {}

impl<W: Copy> SharedW<W> {
    /// # Safety
    /// No other thread touches elements `start..start + len` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn run(&self, start: usize, len: usize) -> &mut [W] {
        assert!(start + len <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
    /// # Safety
    /// No other thread touches element `e`.
    unsafe fn get(&self, e: usize) -> W {
        assert!(e < self.len);
        *self.ptr.add(e)
    }
    /// # Safety
    /// No other thread touches element `e`.
    unsafe fn set(&self, e: usize, x: W) {
        assert!(e < self.len);
        *self.ptr.add(e) = x
    }
}

/// The rows `j0..j1` of the compressed tensors that one thread updates, with whole runs of
/// equal indices.
struct Rows<'a, S, T> {
    j0: usize,
    m: &'a mut [S],
    v: &'a mut [T],
}

#[allow(clippy::too_many_arguments)]
fn sparse_inner<W: Lanes, S: Lanes, T: Lanes>(
    cfg: &AdamW,
    p: &Projected,
    w: &mut [W],
    indices: &[i32],
    scales: &[f32],
    g: &[f32],
    ms: &mut [S],
    vs: &mut [T],
    row_steps: &[i32],
    lr: f32,
    grad_scale: f32,
) {
    let decay = 1.0 - lr * cfg.weight_decay;
    let decaying = cfg.weight_decay > 0.0;
    if decaying && cfg.decay_mode == DecayMode::Dense {
        decay_all(w, decay);
    }
    let row_decay = if decaying && cfg.decay_mode == DecayMode::Selected {
        decay
    } else {
        1.0
    };
    let (k, r) = (p.k, indices.len());
    // Split the rows at run boundaries into parts of about equal size (some may be empty).
    let threads = threads_for(r * k);
    let cut = |t: usize| {
        let mut j = r * t / threads;
        while j > 0 && j < r && indices[j] == indices[j - 1] {
            j += 1;
        }
        j
    };
    let mut rest = (ms, vs);
    let parts = (0..threads).filter_map(move |t| {
        let (j0, j1) = (cut(t), cut(t + 1));
        let (m, m_tail) = std::mem::take(&mut rest.0).split_at_mut((j1 - j0) * k);
        let (v, v_tail) = std::mem::take(&mut rest.1).split_at_mut((j1 - j0) * k);
        rest = (m_tail, v_tail);
        (j1 > j0).then_some((j1, Rows { j0, m, v }))
    });
    let w = SharedW {
        ptr: w.as_mut_ptr(),
        len: w.len(),
    };
    run_parts(parts, |(j_end, rows)| {
        // Each part holds whole runs of equal indices, so no two parts share an index (they
        // are sorted), and distinct indices own distinct elements of W: the parts touch
        // disjoint elements of W.
        sparse_rows(
            cfg, p, &w, indices, scales, g, rows, j_end, row_steps, lr, row_decay, grad_scale,
        );
    });
}

/// Bias corrections and update coefficients of the rows of one run of equal indices are kept
/// for runs of up to `RUN_CACHE` rows, and so are their updates of one chunk, so W is read
/// and written once per chunk. Longer runs (rare repeats of one row) accumulate into W's
/// chunk held as f32.
const RUN_CACHE: usize = 8;

/// Elements per chunk when the kept dimension runs down W's columns: this many rows of W
/// (a few MiB at most) are updated by every run before the next chunk.
const COLS_CHUNK: usize = 256;

/// Updates state rows `rows.j0..j_end` (whole runs) and their elements of W, which no other
/// thread touches.
#[allow(clippy::too_many_arguments)]
fn sparse_rows<W: Lanes, S: Lanes, T: Lanes>(
    cfg: &AdamW,
    p: &Projected,
    w: &SharedW<W>,
    indices: &[i32],
    scales: &[f32],
    g: &[f32],
    rows: Rows<'_, S, T>,
    j_end: usize,
    row_steps: &[i32],
    lr: f32,
    row_decay: f32,
    grad_scale: f32,
) {
    let (k, n) = (p.k, p.n);
    let rows_j0 = rows.j0;
    let (mut mb, mut vb, mut wb) = ([0.0f32; CHUNK], [0.0f32; CHUNK], [0.0f32; CHUNK]);
    let mut upd = [[0.0f32; CHUNK]; RUN_CACHE];
    // element c of projected index i in W
    let at = |i: usize, c: usize| {
        if p.side == Side::Cols {
            c * n + i
        } else {
            i * n + c
        }
    };
    // Runs the Adam update of row j's elements c0..c0 + len and writes each element's weight
    // delta `coef * u` into `out`.
    let mut row_update = |j: usize, c1: f32, c2: f32, coef: f32, c0: usize, out: &mut [f32]| {
        let len = out.len();
        let e = (j - rows.j0) * k + c0;
        let g = &g[j * k + c0..j * k + c0 + len];
        S::update(&mut rows.m[e..e + len], &mut mb, |m| {
            T::update(&mut rows.v[e..e + len], &mut vb, |v| {
                let (m, v) = (&mut m[..len], &mut v[..len]);
                for t in 0..len {
                    let u = adam_update(cfg, c1, c2, &mut m[t], &mut v[t], g[t] * grad_scale);
                    out[t] = coef * u;
                }
            })
        });
    };
    let coefs = |j: usize| {
        let (c1, c2) = cfg.bias_corrections(row_steps[j]);
        (
            c1,
            c2,
            -lr * cfg.alpha * scales[j] * cfg.row_ramp(row_steps[j]),
        )
    };
    // Updates elements c0..c0 + len of the rows j0..j1 (one run, index i) and of W; `cache`
    // holds the rows' coefficients when the run is short, else is empty.
    let mut chunk = |j0: usize, j1: usize, cache: &[(f32, f32, f32)], c0: usize, len: usize| {
        let i = indices[j0] as usize;
        if !cache.is_empty() {
            for j in j0..j1 {
                let (c1, c2, coef) = cache[j - j0];
                row_update(j, c1, c2, coef, c0, &mut upd[j - j0][..len]);
            }
            // W = W * row_decay + delta_j0 + delta_j0+1 + ..., rounded once
            let upd = &upd[..j1 - j0];
            if p.side == Side::Cols {
                for t in 0..len {
                    let e = at(i, c0 + t);
                    // SAFETY: this thread alone touches index i's elements of W
                    let mut acc = unsafe { w.get(e) }.to_f32() * row_decay;
                    for d in upd {
                        acc += d[t];
                    }
                    unsafe { w.set(e, W::from_f32(acc)) };
                }
            } else {
                // SAFETY: as above; these are row i's elements c0..c0 + len
                let row = unsafe { w.run(at(i, c0), len) };
                W::update(row, &mut wb, |x| {
                    for x in x.iter_mut() {
                        *x *= row_decay;
                    }
                    for d in upd {
                        for (x, d) in x.iter_mut().zip(&d[..len]) {
                            *x += *d;
                        }
                    }
                });
            }
        } else {
            let (acc, delta) = upd.split_at_mut(1);
            let (acc, delta) = (&mut acc[0][..len], &mut delta[0][..len]);
            for (t, a) in acc.iter_mut().enumerate() {
                // SAFETY: this thread alone touches index i's elements of W
                *a = unsafe { w.get(at(i, c0 + t)) }.to_f32() * row_decay;
            }
            for j in j0..j1 {
                let (c1, c2, coef) = coefs(j);
                row_update(j, c1, c2, coef, c0, delta);
                for (a, d) in acc.iter_mut().zip(delta.iter()) {
                    *a += *d;
                }
            }
            for (t, a) in acc.iter().enumerate() {
                unsafe { w.set(at(i, c0 + t), W::from_f32(*a)) };
            }
        }
    };
    let run_end = |j0: usize| {
        let mut j1 = j0 + 1;
        while j1 < j_end && indices[j1] == indices[j0] {
            j1 += 1;
        }
        j1
    };
    // fills `cache` with a short run's coefficients; returns how many (none for a long run)
    let fill = |j0: usize, j1: usize, cache: &mut [(f32, f32, f32); RUN_CACHE]| {
        if j1 - j0 > RUN_CACHE {
            return 0;
        }
        for j in j0..j1 {
            cache[j - j0] = coefs(j);
        }
        j1 - j0
    };
    let mut cache = [(0.0f32, 0.0f32, 0.0f32); RUN_CACHE];
    if p.side == Side::Rows {
        // run by run: W's row and the rows of M, V and g stream
        let mut j0 = rows_j0;
        while j0 < j_end {
            let j1 = run_end(j0);
            let cached = fill(j0, j1, &mut cache);
            for c0 in (0..k).step_by(CHUNK) {
                chunk(j0, j1, &cache[..cached], c0, CHUNK.min(k - c0));
            }
            j0 = j1;
        }
    } else {
        // chunk by chunk, each over every run: index i's elements of W are a column, one per
        // row of W, and the W rows of one chunk stay in cache and TLB while the runs update
        // them
        for c0 in (0..k).step_by(COLS_CHUNK) {
            let mut j0 = rows_j0;
            while j0 < j_end {
                let j1 = run_end(j0);
                let cached = fill(j0, j1, &mut cache);
                chunk(j0, j1, &cache[..cached], c0, COLS_CHUNK.min(k - c0));
                j0 = j1;
            }
        }
    }
}

/// Elements of one block of the squared norm: blocks are summed in order, so the result does
/// not depend on the thread count.
const NORM_BLOCK: usize = 1 << 16;

/// The squared Frobenius norm of `g`: each element widened to f32, squared and summed in f64
/// (eight interleaved partial sums per block of `NORM_BLOCK` elements, the blocks' sums added
/// in order), rounded once to f32. Blocks run on up to `max_threads()` threads.
pub fn sq_norm(g: Act<'_>) -> f32 {
    fn block<G: Lanes>(g: &[G]) -> f64 {
        let mut buf = [0.0f32; CHUNK];
        let mut acc = [0.0f64; 8];
        for c in g.chunks(CHUNK) {
            let c = G::read(c, &mut buf);
            let mut lanes = c.chunks_exact(8);
            for l in &mut lanes {
                for t in 0..8 {
                    let x = l[t] as f64;
                    acc[t] += x * x;
                }
            }
            for (t, &x) in lanes.remainder().iter().enumerate() {
                acc[t] += x as f64 * x as f64;
            }
        }
        acc.iter().sum()
    }
    fn all<G: Lanes>(g: &[G]) -> f64 {
        let blocks: Vec<&[G]> = g.chunks(NORM_BLOCK).collect();
        let mut sums = vec![0.0f64; blocks.len()];
        let threads = threads_for(g.len()).min(blocks.len().max(1));
        let per = blocks.len().div_ceil(threads).max(1);
        run_parts(
            blocks.chunks(per).zip(sums.chunks_mut(per)),
            |(b, s): (&[&[G]], &mut [f64])| {
                for (b, s) in b.iter().zip(s.iter_mut()) {
                    *s = block(b);
                }
            },
        );
        sums.iter().sum()
    }
    (with_act!(g, g => all(g))) as f32
}

/// Plain AdamW on a dense parameter (embeddings, norms, biases).
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    cfg: &AdamW,
    w: Weights<'_>,
    grad: Act<'_>,
    m: State<'_>,
    v: State<'_>,
    step: &mut i32,
    lr: f32,
    grad_scale: f32,
) -> StepOutcome {
    if !with_act!(grad, g => all_finite_par(g) && scaled_finite(g, grad_scale)) {
        return StepOutcome { skipped: true };
    }
    *step = step.saturating_add(1);
    let (c1, c2) = cfg.bias_corrections(*step);
    let decay = if cfg.weight_decay > 0.0 && cfg.decay_mode != DecayMode::Off {
        1.0 - lr * cfg.weight_decay
    } else {
        1.0
    };
    with_weights!(w, w => with_act!(grad, g => with_state!(m, m => with_state!(v, v => {
        dense_inner(cfg, c1, c2, decay, lr, grad_scale, w, g, m, v)
    }))));
    StepOutcome { skipped: false }
}

#[allow(clippy::too_many_arguments)]
fn dense_inner<W: Lanes, G: Lanes, S: Lanes, T: Lanes>(
    cfg: &AdamW,
    c1: f32,
    c2: f32,
    decay: f32,
    lr: f32,
    grad_scale: f32,
    w: &mut [W],
    g: &[G],
    m: &mut [S],
    v: &mut [T],
) {
    let n = w.len();
    let len = split_len(n, threads_for(n));
    let parts = w
        .chunks_mut(len)
        .zip(g.chunks(len))
        .zip(m.chunks_mut(len).zip(v.chunks_mut(len)));
    run_parts(parts, |((w, g), (m, v))| {
        let mut bufs = [[0.0f32; CHUNK]; 4];
        let [gb, mb, vb, wb] = &mut bufs;
        for ((w, g), (m, v)) in w
            .chunks_mut(CHUNK)
            .zip(g.chunks(CHUNK))
            .zip(m.chunks_mut(CHUNK).zip(v.chunks_mut(CHUNK)))
        {
            let g = G::read(g, gb);
            S::update(m, mb, |m| {
                T::update(v, vb, |v| {
                    W::update(w, wb, |w| {
                        let len = w.len();
                        let (g, m, v) = (&g[..len], &mut m[..len], &mut v[..len]);
                        for e in 0..len {
                            let ge = g[e] * grad_scale;
                            let u = adam_update(cfg, c1, c2, &mut m[e], &mut v[e], ge);
                            w[e] = w[e] * decay + (-lr) * u;
                        }
                    })
                })
            });
        }
    });
}

/// At a refresh: `reset` zeroes M, V and every row's step count; `carry` keeps the state rows
/// (and their step counts) of indices that stay selected (matched in sorted order, so repeated
/// indices pair up one to one) and zeroes the rest.
pub fn state_refresh(
    mode: RefreshMode,
    k: usize,
    old: &[i32],
    new: &[i32],
    m: State<'_>,
    v: State<'_>,
    row_steps: &mut [i32],
) {
    if mode == RefreshMode::Reset {
        for s in [m, v] {
            with_state!(s, s => s.iter_mut().for_each(|x| *x = Elem::from_f32(0.0)));
        }
        row_steps.iter_mut().for_each(|t| *t = 0);
        return;
    }
    for s in [m, v] {
        with_state!(s, s => carry_rows(k, old, new, s));
    }
    carry_rows(1, old, new, row_steps);
}

/// The row of `old` that new row `b` keeps, or None: the q-th repeat of a value in `new`
/// pairs with its q-th repeat in `old` (both sorted ascending).
fn carry_partner(old: &[i32], new: &[i32], b: usize) -> Option<usize> {
    let v = new[b];
    let q = b - new[..b].partition_point(|&x| x < v);
    let lo = old.partition_point(|&x| x < v);
    let hi = old.partition_point(|&x| x <= v);
    (q < hi - lo).then_some(lo + q)
}

/// Moves the kept rows (of k elements) of `data` to their new positions in place and zeroes
/// the others. The pairing is monotone (both lists sorted), so moving the rows that go to a
/// higher position from the last down, then the rows that go lower from the first up, never
/// overwrites a row before it has moved; rows without a partner are zeroed last.
fn carry_rows<S: Copy + Default>(k: usize, old: &[i32], new: &[i32], data: &mut [S]) {
    let r = new.len();
    let partner = |b: usize| carry_partner(old, new, b);
    for b in (0..r).rev() {
        if let Some(a) = partner(b).filter(|&a| a < b) {
            data.copy_within(a * k..(a + 1) * k, b * k);
        }
    }
    for b in 0..r {
        if let Some(a) = partner(b).filter(|&a| a > b) {
            data.copy_within(a * k..(a + 1) * k, b * k);
        }
    }
    for b in 0..r {
        if partner(b).is_none() {
            data[b * k..(b + 1) * k].fill(S::default());
        }
    }
}

#[cfg(test)]
mod tests {
    //! The vectorized, threaded steps against the scalar one-element-at-a-time formulation
    //! they replace, bit for bit (the CUDA kernels are tested against these steps, so their
    //! arithmetic must not move).
    use super::*;

    fn rand_f32(seed: &mut u64, lo: f32, hi: f32) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        lo + (hi - lo) * ((*seed >> 40) as f32 / (1u64 << 24) as f32)
    }

    fn rand_vec(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n).map(|_| rand_f32(&mut s, lo, hi)).collect()
    }

    /// Owned tensors of one dtype, viewable as `Weights`, `State` or `Act`.
    #[derive(Clone, PartialEq, Debug)]
    enum Buf {
        F32(Vec<f32>),
        Bf16(Vec<bf16>),
        F16(Vec<f16>),
    }

    impl Buf {
        fn new(dtype: usize, x: &[f32]) -> Buf {
            match dtype {
                0 => Buf::F32(x.to_vec()),
                1 => Buf::Bf16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
                _ => Buf::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
            }
        }
        fn bits(&self) -> Vec<u32> {
            match self {
                Buf::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
                Buf::Bf16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
                Buf::F16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
            }
        }
        fn weights(&mut self) -> Weights<'_> {
            match self {
                Buf::F32(v) => Weights::F32(v),
                Buf::Bf16(v) => Weights::Bf16(v),
                Buf::F16(v) => Weights::F16(v),
            }
        }
        fn state(&mut self) -> State<'_> {
            match self {
                Buf::F32(v) => State::F32(v),
                Buf::Bf16(v) => State::Bf16(v),
                Buf::F16(_) => unreachable!("no f16 state"),
            }
        }
        fn act(&self) -> Act<'_> {
            match self {
                Buf::F32(v) => Act::F32(v),
                Buf::Bf16(v) => Act::Bf16(v),
                Buf::F16(v) => Act::F16(v),
            }
        }
    }

    /// The row warm-up's factor written out apart from `AdamW::row_ramp`: min(1, t / W), or 1
    /// without a warm-up (both scalar references use it).
    pub(super) fn reference_ramp(cfg: &AdamW, t: i32) -> f32 {
        if cfg.row_warmup > 0 {
            (t as f32 / cfg.row_warmup as f32).min(1.0)
        } else {
            1.0
        }
    }

    /// The scalar compressed step (after the finiteness check and the step-count increment).
    #[allow(clippy::too_many_arguments)]
    fn reference_sparse<W: Elem, S: Elem, T: Elem>(
        cfg: &AdamW,
        p: &Projected,
        w: &mut [W],
        indices: &[i32],
        scales: &[f32],
        g: &[f32],
        ms: &mut [S],
        vs: &mut [T],
        row_steps: &[i32],
        lr: f32,
    ) {
        let decay = 1.0 - lr * cfg.weight_decay;
        let decaying = cfg.weight_decay > 0.0;
        if decaying && cfg.decay_mode == DecayMode::Dense {
            for x in w.iter_mut() {
                *x = W::from_f32(x.to_f32() * decay);
            }
        }
        let row_decay = if decaying && cfg.decay_mode == DecayMode::Selected {
            decay
        } else {
            1.0
        };
        let (k, r) = (p.k, indices.len());
        let at = |i: usize, c: usize| {
            if p.side == Side::Cols {
                c * p.n + i
            } else {
                i * p.n + c
            }
        };
        let mut j0 = 0;
        while j0 < r {
            let i = indices[j0] as usize;
            let mut j1 = j0 + 1;
            while j1 < r && indices[j1] as usize == i {
                j1 += 1;
            }
            for c in 0..k {
                let mut acc = w[at(i, c)].to_f32() * row_decay;
                for j in j0..j1 {
                    let e = j * k + c;
                    let (c1, c2) = cfg.bias_corrections(row_steps[j]);
                    let (mut mv, mut vv) = (ms[e].to_f32(), vs[e].to_f32());
                    let u = adam_update(cfg, c1, c2, &mut mv, &mut vv, g[e]);
                    ms[e] = S::from_f32(mv);
                    vs[e] = T::from_f32(vv);
                    let ramp = reference_ramp(cfg, row_steps[j]);
                    acc += (-lr * cfg.alpha * scales[j] * ramp) * u;
                }
                w[at(i, c)] = W::from_f32(acc);
            }
            j0 = j1;
        }
    }

    /// The scalar dense step (after the finiteness check).
    fn reference_dense(
        cfg: &AdamW,
        w: &mut Buf,
        g: &Buf,
        m: &mut Buf,
        v: &mut Buf,
        step: &mut i32,
        lr: f32,
    ) {
        *step = step.saturating_add(1);
        let (c1, c2) = cfg.bias_corrections(*step);
        let decay = if cfg.weight_decay > 0.0 && cfg.decay_mode != DecayMode::Off {
            1.0 - lr * cfg.weight_decay
        } else {
            1.0
        };
        let grad = g.act();
        with_weights!(w.weights(), w => with_state!(m.state(), m => with_state!(v.state(), v => {
            for e in 0..w.len() {
                let (mut mv, mut vv) = (m[e].to_f32(), v[e].to_f32());
                let u = adam_update(cfg, c1, c2, &mut mv, &mut vv, grad.get(e));
                m[e] = Elem::from_f32(mv);
                v[e] = Elem::from_f32(vv);
                w[e] = Elem::from_f32(w[e].to_f32() * decay + (-lr) * u);
            }
        })));
    }

    #[test]
    fn bf16_conversions_match_half() {
        for b in 0..=u16::MAX {
            let x = bf16::from_bits(b);
            assert_eq!(widen_bf16(b).to_bits(), x.to_f32().to_bits(), "{b:#06x}");
        }
        let lows = [
            0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xBFFF, 0xC000, 0xFFFF, 0x1_8000,
        ];
        for hi in 0..=u16::MAX as u32 {
            for &lo in &lows {
                let bits = (hi << 16).wrapping_add(lo);
                let x = f32::from_bits(bits);
                assert_eq!(narrow_bf16(x), bf16::from_f32(x).to_bits(), "{bits:#010x}");
            }
        }
    }

    fn weights_with_specials(seed: u64, n: usize) -> Vec<f32> {
        let mut w = rand_vec(seed, n, -1.0, 1.0);
        // W may hold anything; the step must treat it exactly as the scalar formula does
        let specials = [
            f32::NAN,
            f32::INFINITY,
            -0.0,
            1e-40,
            3.0e38,
            1.0 + f32::EPSILON,
        ];
        for (t, x) in specials.iter().enumerate() {
            if t * 97 < n {
                w[t * 97] = *x;
            }
        }
        w
    }

    #[test]
    fn dense_step_matches_the_scalar_step_bit_for_bit() {
        let cfgs = [
            AdamW {
                weight_decay: 0.1,
                ..AdamW::default()
            },
            AdamW {
                weight_decay: 0.0,
                decay_mode: DecayMode::Off,
                eps: 1e-6,
                ..AdamW::default()
            },
        ];
        // one element, a partial chunk, several chunks on one thread, several threads
        for (size, n) in [1usize, 1000, 5 * CHUNK + 3, 2 * PAR_MIN + 777]
            .into_iter()
            .enumerate()
        {
            let (g0, m0, v0, w0) = (
                rand_vec(11 + size as u64, n, -2.0, 2.0),
                rand_vec(12, n, -1.0, 1.0),
                rand_vec(13, n, 0.0, 1.0),
                weights_with_specials(14, n),
            );
            for wd in 0..3 {
                for gd in 0..3 {
                    for sd in 0..2 {
                        let cfg = &cfgs[(wd + gd + sd) % 2];
                        let g = Buf::new(gd, &g0);
                        let (mut w, mut m, mut v) =
                            (Buf::new(wd, &w0), Buf::new(sd, &m0), Buf::new(sd, &v0));
                        let (mut wr, mut mr, mut vr) = (w.clone(), m.clone(), v.clone());
                        let (mut step, mut step_r) = (4, 4);
                        for _ in 0..2 {
                            let out = adamw_step(
                                cfg,
                                w.weights(),
                                g.act(),
                                m.state(),
                                v.state(),
                                &mut step,
                                3e-3,
                                1.0,
                            );
                            assert!(!out.skipped);
                            reference_dense(cfg, &mut wr, &g, &mut mr, &mut vr, &mut step_r, 3e-3);
                        }
                        let what = format!("n {n} w {wd} g {gd} state {sd}");
                        assert_eq!(step, step_r, "{what}");
                        assert!(w.bits() == wr.bits(), "W differs: {what}");
                        assert!(m.bits() == mr.bits(), "M differs: {what}");
                        assert!(v.bits() == vr.bits(), "V differs: {what}");
                    }
                }
            }
        }
    }

    /// Sorted indices into `0..d` with repeats: runs of 1, 2 and 11 equal indices (longer
    /// than any cache of per-run values), spread so thread splits fall inside runs.
    fn indices_with_repeats(r: usize, d: usize) -> Vec<i32> {
        let mut idx = Vec::with_capacity(r);
        let mut i = 0;
        let mut t = 0;
        while idx.len() < r {
            let run = [1, 1, 2, 1, 11, 1, 3][t % 7];
            for _ in 0..run {
                if idx.len() < r {
                    idx.push((i % d) as i32);
                }
            }
            t += 1;
            i += 1 + t % 3;
        }
        idx.sort();
        idx
    }

    #[test]
    fn sparse_step_matches_the_scalar_step_bit_for_bit() {
        // (m, n, side, r): small; one thread over several chunks; threaded rows; threaded cols
        let shapes = [
            (7, 5, Side::Rows, 4),
            (40, 1100, Side::Rows, 30),
            (300, 1100, Side::Rows, 260),
            (600, 500, Side::Cols, 500),
        ];
        let modes = [DecayMode::Selected, DecayMode::Dense, DecayMode::Off];
        for (s, &(mr, nc, side, r)) in shapes.iter().enumerate() {
            let p = Projected::new(mr, nc, side);
            let len = r * p.k;
            let indices = indices_with_repeats(r, p.d);
            let scales = rand_vec(20 + s as u64, r, 0.25, 2.0);
            let g = rand_vec(21, len, -2.0, 2.0);
            let (m0, v0, w0) = (
                rand_vec(22, len, -1.0, 1.0),
                rand_vec(23, len, 0.0, 1.0),
                weights_with_specials(24, mr * nc),
            );
            let mut steps0: Vec<i32> = (0..r as i32).map(|j| j % 37).collect();
            steps0[r / 2] = i32::MAX;
            for wd in 0..3 {
                for sd in 0..2 {
                    let cfg = AdamW {
                        weight_decay: 0.05,
                        decay_mode: modes[(wd + sd + s) % 3],
                        alpha: 0.5,
                        // counts 1..38 and i32::MAX: ramped rows, rows at 1, and none ramped
                        row_warmup: [0, 20, 1][(wd + sd) % 3],
                        ..AdamW::default()
                    };
                    let (mut w, mut m, mut v) =
                        (Buf::new(wd, &w0), Buf::new(sd, &m0), Buf::new(sd, &v0));
                    let (mut wr, mut mr_, mut vr) = (w.clone(), m.clone(), v.clone());
                    let (mut steps, mut steps_r) = (steps0.clone(), steps0.clone());
                    for _ in 0..2 {
                        let out = sparse_adamw_step(
                            &cfg,
                            &p,
                            w.weights(),
                            &indices,
                            &scales,
                            &g,
                            m.state(),
                            v.state(),
                            &mut steps,
                            2e-3,
                            1.0,
                        );
                        assert!(!out.skipped);
                        steps_r.iter_mut().for_each(|t| *t = t.saturating_add(1));
                        with_weights!(wr.weights(), w => with_state!(mr_.state(), m => with_state!(vr.state(), v => {
                            reference_sparse(&cfg, &p, w, &indices, &scales, &g, m, v, &steps_r, 2e-3)
                        })));
                    }
                    let what = format!(
                        "shape {s} w {wd} state {sd} {:?} warm-up {}",
                        cfg.decay_mode, cfg.row_warmup
                    );
                    assert_eq!(steps, steps_r, "{what}");
                    assert!(w.bits() == wr.bits(), "W differs: {what}");
                    assert!(m.bits() == mr_.bits(), "M differs: {what}");
                    assert!(v.bits() == vr.bits(), "V differs: {what}");
                }
            }
        }
    }

    #[test]
    fn a_non_finite_gradient_anywhere_writes_nothing() {
        let n = 2 * PAR_MIN + 5;
        let cfg = AdamW {
            weight_decay: 0.1,
            decay_mode: DecayMode::Dense,
            ..AdamW::default()
        };
        for (gd, at, bad) in [
            (0, n - 1, f32::NAN),
            (1, 0, f32::INFINITY),
            (2, n / 2 + 1, f32::NEG_INFINITY),
        ] {
            let mut g0 = rand_vec(31, n, -1.0, 1.0);
            g0[at] = bad;
            let g = Buf::new(gd, &g0);
            let (mut w, mut m, mut v) = (Buf::new(0, &g0), Buf::new(0, &g0), Buf::new(1, &g0));
            let before = (w.clone(), m.clone(), v.clone());
            let mut step = 3;
            let out = adamw_step(
                &cfg,
                w.weights(),
                g.act(),
                m.state(),
                v.state(),
                &mut step,
                1e-3,
                1.0,
            );
            assert!(out.skipped, "g dtype {gd}, bad at {at}");
            let bits = |b: &(Buf, Buf, Buf)| (b.0.bits(), b.1.bits(), b.2.bits());
            assert!(bits(&(w, m, v)) == bits(&before), "written: g dtype {gd}");
            assert_eq!(step, 3);
        }
        let p = Projected::new(300, 1100, Side::Rows);
        let r = 260;
        let mut g = rand_vec(32, r * p.k, -1.0, 1.0);
        g[r * p.k - 1] = f32::NAN;
        let indices: Vec<i32> = (0..r as i32).collect();
        let mut w = rand_vec(33, 300 * 1100, -1.0, 1.0);
        let (mut m, mut v) = (g.clone(), g.clone());
        let mut steps = vec![1; r];
        let before = (w.clone(), m.clone(), v.clone(), steps.clone());
        let out = sparse_adamw_step(
            &cfg,
            &p,
            Weights::F32(&mut w),
            &indices,
            &vec![1.0; r],
            &g,
            State::F32(&mut m),
            State::F32(&mut v),
            &mut steps,
            1e-3,
            1.0,
        );
        assert!(out.skipped);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(&w) == bits(&before.0) && bits(&m) == bits(&before.1));
        assert!(bits(&v) == bits(&before.2) && steps == before.3);
    }
}

/// Thread splits: runs of repeated indices that straddle a split, and sizes that take several
/// threads, against a scalar loop written out here.
#[cfg(test)]
mod split_tests {
    use super::tests::reference_ramp;
    use super::*;
    use crate::core::config::Side;

    /// The scalar reference: one element at a time, in index order (the loop the threaded,
    /// vectorizable steps replaced, and the one the CUDA kernels mirror).
    #[allow(clippy::too_many_arguments)]
    fn reference_sparse(
        cfg: &AdamW,
        p: &Projected,
        w: &mut [bf16],
        indices: &[i32],
        scales: &[f32],
        g: &[f32],
        ms: &mut [f32],
        vs: &mut [bf16],
        row_steps: &mut [i32],
        lr: f32,
    ) {
        for t in row_steps.iter_mut() {
            *t = t.saturating_add(1);
        }
        let decay = 1.0 - lr * cfg.weight_decay;
        let row_decay = if cfg.weight_decay > 0.0 && cfg.decay_mode == DecayMode::Selected {
            decay
        } else {
            1.0
        };
        if cfg.weight_decay > 0.0 && cfg.decay_mode == DecayMode::Dense {
            for x in w.iter_mut() {
                *x = bf16::from_f32(x.to_f32() * decay);
            }
        }
        let k = p.k;
        let at = |i: usize, c: usize| {
            if p.side == Side::Cols {
                c * p.n + i
            } else {
                i * p.n + c
            }
        };
        let mut j0 = 0;
        while j0 < indices.len() {
            let i = indices[j0] as usize;
            let mut j1 = j0 + 1;
            while j1 < indices.len() && indices[j1] == indices[j0] {
                j1 += 1;
            }
            for c in 0..k {
                let mut acc = w[at(i, c)].to_f32() * row_decay;
                for j in j0..j1 {
                    let e = j * k + c;
                    let (c1, c2) = cfg.bias_corrections(row_steps[j]);
                    let (mut mv, mut vv) = (ms[e], vs[e].to_f32());
                    let u = adam_update(cfg, c1, c2, &mut mv, &mut vv, g[e]);
                    ms[e] = mv;
                    vs[e] = bf16::from_f32(vv);
                    let ramp = reference_ramp(cfg, row_steps[j]);
                    acc += (-lr * cfg.alpha * scales[j] * ramp) * u;
                }
                w[at(i, c)] = bf16::from_f32(acc);
            }
            j0 = j1;
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8;
                (x % 20001) as f32 / 10000.0 - 1.0
            })
            .collect()
    }

    /// Large enough for several threads (where the machine has the cores) and for the
    /// vectorized loops, with repeated indices, both sides and every decay mode: bit-identical
    /// to the scalar reference.
    #[test]
    fn threaded_sparse_step_matches_the_scalar_loop_bit_for_bit() {
        for (side, decay_mode) in [
            (Side::Rows, DecayMode::Selected),
            (Side::Cols, DecayMode::Dense),
            (Side::Rows, DecayMode::Off),
        ] {
            let (m, n, r) = (512usize, 2048usize, 400usize);
            let p = Projected::new(m, n, side);
            let k = p.k;
            // sorted, in runs of three repeats (with two threads, a split at r / 2 = 200 falls inside one)
            // followed by single rows
            let indices: Vec<i32> = (0..r)
                .map(|j| {
                    if j < 300 {
                        (j / 3) as i32
                    } else {
                        (j - 200) as i32
                    }
                })
                .collect();
            assert!(indices.windows(2).all(|w| w[0] <= w[1]) && indices[199] == indices[200]);
            let scales: Vec<f32> = values(r, 3).iter().map(|x| 1.5 + x).collect();
            let g = values(r * k, 5);
            let cfg = AdamW {
                weight_decay: 0.05,
                decay_mode,
                alpha: 0.25,
                ..AdamW::default()
            };
            let w0: Vec<bf16> = values(m * n, 7)
                .iter()
                .map(|&x| bf16::from_f32(x))
                .collect();
            let m0 = values(r * k, 11);
            let v0: Vec<bf16> = values(r * k, 13)
                .iter()
                .map(|&x| bf16::from_f32(x.abs()))
                .collect();
            let s0: Vec<i32> = (0..r as i32).map(|j| j % 7).collect();
            let (mut w1, mut m1, mut v1, mut s1) = (w0.clone(), m0.clone(), v0.clone(), s0.clone());
            reference_sparse(
                &cfg, &p, &mut w1, &indices, &scales, &g, &mut m1, &mut v1, &mut s1, 0.01,
            );
            let (mut w2, mut m2, mut v2, mut s2) = (w0, m0, v0, s0);
            let out = sparse_adamw_step(
                &cfg,
                &p,
                Weights::Bf16(&mut w2),
                &indices,
                &scales,
                &g,
                State::F32(&mut m2),
                State::Bf16(&mut v2),
                &mut s2,
                0.01,
                1.0,
            );
            assert!(!out.skipped);
            assert_eq!(s1, s2);
            assert!(
                m1.iter().zip(&m2).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{side:?} M"
            );
            assert!(
                v1.iter().zip(&v2).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{side:?} V"
            );
            assert!(
                w1.iter().zip(&w2).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{side:?} W"
            );
        }
    }

    #[test]
    fn threaded_dense_step_matches_the_scalar_loop_bit_for_bit() {
        let numel = 300_001usize;
        let cfg = AdamW {
            weight_decay: 0.1,
            decay_mode: DecayMode::Dense,
            ..AdamW::default()
        };
        let g: Vec<f16> = values(numel, 1).iter().map(|&x| f16::from_f32(x)).collect();
        let w0 = values(numel, 2);
        let m0: Vec<bf16> = values(numel, 3)
            .iter()
            .map(|&x| bf16::from_f32(x))
            .collect();
        let v0 = values(numel, 4)
            .iter()
            .map(|x| x.abs())
            .collect::<Vec<f32>>();
        let lr = 0.003f32;
        let (mut w1, mut m1, mut v1) = (w0.clone(), m0.clone(), v0.clone());
        let t = 5;
        let (c1, c2) = cfg.bias_corrections(t);
        let decay = 1.0 - lr * cfg.weight_decay;
        for e in 0..numel {
            let (mut mv, mut vv) = (m1[e].to_f32(), v1[e]);
            let u = adam_update(&cfg, c1, c2, &mut mv, &mut vv, g[e].to_f32());
            m1[e] = bf16::from_f32(mv);
            v1[e] = vv;
            w1[e] = w1[e] * decay + (-lr) * u;
        }
        let (mut w2, mut m2, mut v2, mut step) = (w0, m0, v0, t - 1);
        let out = adamw_step(
            &cfg,
            Weights::F32(&mut w2),
            Act::F16(&g),
            State::Bf16(&mut m2),
            State::F32(&mut v2),
            &mut step,
            lr,
            1.0,
        );
        assert!(!out.skipped);
        assert_eq!(step, t);
        assert!(
            w1.iter().zip(&w2).all(|(a, b)| a.to_bits() == b.to_bits()),
            "W"
        );
        assert!(
            m1.iter().zip(&m2).all(|(a, b)| a.to_bits() == b.to_bits()),
            "M"
        );
        assert!(
            v1.iter().zip(&v2).all(|(a, b)| a.to_bits() == b.to_bits()),
            "V"
        );
        assert!(threads_for(numel) >= 1);
    }
}
