//! The compressed AdamW step with its scatter update into W, the dense AdamW step, and the
//! state remap at a refresh.

use half::{bf16, f16};

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

/// Elements below which a step stays on the calling thread (a thread costs microseconds to
/// start; an element a few nanoseconds).
const PER_THREAD: usize = 1 << 16;

/// Threads for `work` elements: at most one per `PER_THREAD` and per available core.
fn threads_for(work: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (work / PER_THREAD).clamp(1, cores)
}

/// Splits `n` items into `parts` contiguous ranges of nearly equal length.
fn ranges(n: usize, parts: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..parts).map(move |t| n * t / parts..n * (t + 1) / parts)
}

fn decay_all<W: Elem>(w: &mut [W], factor: f32) {
    let per = w.len().div_ceil(threads_for(w.len()));
    std::thread::scope(|s| {
        let mut blocks = w.chunks_mut(per.max(1));
        let first = blocks.next();
        for b in blocks {
            s.spawn(move || decay_block(b, factor));
        }
        if let Some(b) = first {
            decay_block(b, factor);
        }
    });
}

fn decay_block<W: Elem>(w: &mut [W], factor: f32) {
    for x in w.iter_mut() {
        *x = W::from_f32(x.to_f32() * factor);
    }
}

/// Applies the compressed AdamW step. `indices` are sorted ascending (as `select` writes them);
/// repeated indices add their updates into one row, which is rounded once. `row_steps[j]`
/// (not negative) counts the steps state row j has taken since it was zeroed; each is
/// incremented (saturating at i32::MAX, where the corrections are long 1) and gives that row's
/// bias corrections.
///
/// Every element goes through the same f32 operations in the same order whatever the thread
/// count or the vector width, so results are bit-identical to a scalar loop (and to the CUDA
/// kernels, which mirror it).
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
) -> StepOutcome {
    if !g.iter().all(|x| x.is_finite()) {
        return StepOutcome { skipped: true };
    }
    for t in row_steps.iter_mut() {
        *t = t.saturating_add(1);
    }
    with_weights!(w, w => with_state!(m, m => with_state!(v, v => {
        sparse_inner(cfg, p, w, indices, scales, g, m, v, row_steps, lr)
    })));
    StepOutcome { skipped: false }
}

/// W shared by the threads of a compressed step, each of which writes only the rows (side
/// ROWS) or columns (side COLS) of its own indices: runs of equal indices never straddle two
/// threads, so no element is written by two.
#[derive(Clone, Copy)]
struct SharedW<W> {
    ptr: *mut W,
    len: usize,
}

// SAFETY: see SharedW; W is plain data.
unsafe impl<W: Send> Send for SharedW<W> {}
unsafe impl<W: Send> Sync for SharedW<W> {}

/// The compressed step's constants.
struct SparseStep<'a> {
    cfg: &'a AdamW,
    p: &'a Projected,
    lr: f32,
    row_decay: f32,
}

#[allow(clippy::too_many_arguments)]
fn sparse_inner<W: Elem, S: Elem, T: Elem>(
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
        decay_all(w, decay);
    }
    let row_decay = if decaying && cfg.decay_mode == DecayMode::Selected {
        decay
    } else {
        1.0
    };
    let st = SparseStep {
        cfg,
        p,
        lr,
        row_decay,
    };
    let (k, r) = (p.k, indices.len());
    let shared = SharedW {
        ptr: w.as_mut_ptr(),
        len: w.len(),
    };
    // split the rows of the selection into contiguous groups, moving each cut to the end of a
    // run of equal indices
    let parts = threads_for(r * k).min(r.max(1));
    let mut cuts: Vec<usize> = ranges(r, parts).map(|x| x.end).collect();
    cuts.insert(0, 0);
    for c in cuts.iter_mut().skip(1) {
        while *c > 0 && *c < r && indices[*c] == indices[*c - 1] {
            *c += 1;
        }
    }
    cuts.dedup();
    std::thread::scope(|s| {
        let (mut ms, mut vs) = (ms, vs);
        let mut jobs = Vec::new();
        for win in cuts.windows(2) {
            let (j0, j1) = (win[0], win[1]);
            let (m_here, m_rest) = std::mem::take(&mut ms).split_at_mut((j1 - j0) * k);
            let (v_here, v_rest) = std::mem::take(&mut vs).split_at_mut((j1 - j0) * k);
            ms = m_rest;
            vs = v_rest;
            jobs.push((j0, j1, m_here, v_here));
        }
        let st = &st;
        let mut jobs = jobs.into_iter();
        let first = jobs.next();
        for (j0, j1, m, v) in jobs {
            s.spawn(move || {
                // SAFETY: this group's indices are disjoint from every other group's.
                unsafe { sparse_rows(st, shared, j0, indices, scales, g, m, v, row_steps, j1) }
            });
        }
        if let Some((j0, j1, m, v)) = first {
            // SAFETY: as above.
            unsafe { sparse_rows(st, shared, j0, indices, scales, g, m, v, row_steps, j1) }
        }
    });
}

/// Rows `j0..j1` of the selection (whole runs of equal indices); `ms`, `vs` hold exactly their
/// state rows.
///
/// # Safety
/// No other thread writes the rows (side ROWS) or columns (side COLS) of W these indices name.
#[allow(clippy::too_many_arguments)]
unsafe fn sparse_rows<W: Elem, S: Elem, T: Elem>(
    st: &SparseStep<'_>,
    w: SharedW<W>,
    j0: usize,
    indices: &[i32],
    scales: &[f32],
    g: &[f32],
    ms: &mut [S],
    vs: &mut [T],
    row_steps: &[i32],
    j1: usize,
) {
    let (p, cfg) = (st.p, st.cfg);
    let k = p.k;
    // element c of projected index i in W
    let at = |i: usize, c: usize| {
        if p.side == Side::Cols {
            c * p.n + i
        } else {
            i * p.n + c
        }
    };
    let mut acc: Vec<f32> = Vec::new();
    let mut a = j0;
    while a < j1 {
        let i = indices[a] as usize;
        let mut b = a + 1;
        while b < j1 && indices[b] as usize == i {
            b += 1;
        }
        let local = |j: usize| (j - j0) * k..(j - j0 + 1) * k;
        if b == a + 1 && p.side != Side::Cols {
            // one row, contiguous in W: one pass over its k elements
            let (c1, c2) = cfg.bias_corrections(row_steps[a]);
            let coef = -st.lr * cfg.alpha * scales[a];
            debug_assert!(at(i, 0) + k <= w.len);
            // SAFETY: row i of W (k = n elements) is in bounds and this thread's alone.
            let wr = std::slice::from_raw_parts_mut(w.ptr.add(at(i, 0)), k);
            let (mr, vr) = (&mut ms[local(a)], &mut vs[local(a)]);
            for (((w, m), v), &g) in wr.iter_mut().zip(mr).zip(vr).zip(&g[a * k..(a + 1) * k]) {
                let (mut mv, mut vv) = (m.to_f32(), v.to_f32());
                let u = adam_update(cfg, c1, c2, &mut mv, &mut vv, g);
                *m = S::from_f32(mv);
                *v = T::from_f32(vv);
                *w = W::from_f32(w.to_f32() * st.row_decay + coef * u);
            }
        } else {
            // a run of repeats, or a strided column: accumulate in f32, round into W once
            acc.clear();
            acc.extend((0..k).map(|c| (*w.ptr.add(at(i, c))).to_f32() * st.row_decay));
            for j in a..b {
                let (c1, c2) = cfg.bias_corrections(row_steps[j]);
                let coef = -st.lr * cfg.alpha * scales[j];
                let (mr, vr) = (&mut ms[local(j)], &mut vs[local(j)]);
                for (((acc, m), v), &g) in
                    acc.iter_mut().zip(mr).zip(vr).zip(&g[j * k..(j + 1) * k])
                {
                    let (mut mv, mut vv) = (m.to_f32(), v.to_f32());
                    let u = adam_update(cfg, c1, c2, &mut mv, &mut vv, g);
                    *m = S::from_f32(mv);
                    *v = T::from_f32(vv);
                    *acc += coef * u;
                }
            }
            for (c, &x) in acc.iter().enumerate() {
                *w.ptr.add(at(i, c)) = W::from_f32(x);
            }
        }
        a = b;
    }
}

macro_rules! with_act {
    ($g:expr, $name:ident => $body:expr) => {
        match $g {
            Act::F32($name) => $body,
            Act::Bf16($name) => $body,
            Act::F16($name) => $body,
        }
    };
}

/// Plain AdamW on a dense parameter (embeddings, norms, biases). Threads split the elements;
/// each element's arithmetic is the scalar loop's, so results do not depend on the split.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    cfg: &AdamW,
    w: Weights<'_>,
    grad: Act<'_>,
    m: State<'_>,
    v: State<'_>,
    step: &mut i32,
    lr: f32,
) -> StepOutcome {
    if !grad.all_finite() {
        return StepOutcome { skipped: true };
    }
    *step = step.saturating_add(1);
    let (c1, c2) = cfg.bias_corrections(*step);
    let decay = if cfg.weight_decay > 0.0 && cfg.decay_mode != DecayMode::Off {
        1.0 - lr * cfg.weight_decay
    } else {
        1.0
    };
    let k = DenseStep {
        cfg,
        c1,
        c2,
        decay,
        lr,
    };
    with_weights!(w, w => with_act!(grad, g => with_state!(m, m => with_state!(v, v => {
        dense_inner(&k, w, g, m, v)
    }))));
    StepOutcome { skipped: false }
}

struct DenseStep<'a> {
    cfg: &'a AdamW,
    c1: f32,
    c2: f32,
    decay: f32,
    lr: f32,
}

fn dense_inner<W: Elem, G: Elem, S: Elem, T: Elem>(
    k: &DenseStep<'_>,
    w: &mut [W],
    g: &[G],
    m: &mut [S],
    v: &mut [T],
) {
    let per = w.len().div_ceil(threads_for(w.len())).max(1);
    std::thread::scope(|s| {
        let mut blocks = w
            .chunks_mut(per)
            .zip(g.chunks(per))
            .zip(m.chunks_mut(per))
            .zip(v.chunks_mut(per));
        let first = blocks.next();
        for (((w, g), m), v) in blocks {
            s.spawn(move || dense_block(k, w, g, m, v));
        }
        if let Some((((w, g), m), v)) = first {
            dense_block(k, w, g, m, v);
        }
    });
}

fn dense_block<W: Elem, G: Elem, S: Elem, T: Elem>(
    k: &DenseStep<'_>,
    w: &mut [W],
    g: &[G],
    m: &mut [S],
    v: &mut [T],
) {
    for (((w, g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let (mut mv, mut vv) = (m.to_f32(), v.to_f32());
        let u = adam_update(k.cfg, k.c1, k.c2, &mut mv, &mut vv, g.to_f32());
        *m = S::from_f32(mv);
        *v = T::from_f32(vv);
        *w = W::from_f32(w.to_f32() * k.decay + (-k.lr) * u);
    }
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
                    acc += (-lr * cfg.alpha * scales[j]) * u;
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
            // sorted, in runs of three repeats (a thread split at r / 2 = 200 falls inside one)
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
