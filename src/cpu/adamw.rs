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

fn decay_all<W: Elem>(w: &mut [W], factor: f32) {
    for x in w.iter_mut() {
        *x = W::from_f32(x.to_f32() * factor);
    }
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

/// Bias corrections of the rows of one run of equal indices, kept on the stack for runs of
/// up to `RUN_CACHE` rows (longer runs, rare repeats of one row, compute them per element).
const RUN_CACHE: usize = 8;

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
    let (k, r) = (p.k, indices.len());
    // element c of projected index i in W
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
        let mut cache = [(0.0f32, 0.0f32); RUN_CACHE];
        let cached = j1 - j0 <= RUN_CACHE;
        if cached {
            for j in j0..j1 {
                cache[j - j0] = cfg.bias_corrections(row_steps[j]);
            }
        }
        for c in 0..k {
            let mut acc = w[at(i, c)].to_f32() * row_decay;
            for j in j0..j1 {
                let e = j * k + c;
                let (c1, c2) = if cached {
                    cache[j - j0]
                } else {
                    cfg.bias_corrections(row_steps[j])
                };
                let (mut mv, mut vv) = (ms[e].to_f32(), vs[e].to_f32());
                let u = adam_update(cfg, c1, c2, &mut mv, &mut vv, g[e]);
                ms[e] = S::from_f32(mv);
                vs[e] = T::from_f32(vv);
                acc += (-lr * cfg.alpha * scales[j]) * u;
            }
            w[at(i, c)] = W::from_f32(acc);
        }
        j0 = j1;
    }
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
    with_weights!(w, w => with_state!(m, m => with_state!(v, v => {
        for e in 0..w.len() {
            let (mut mv, mut vv) = (m[e].to_f32(), v[e].to_f32());
            let u = adam_update(cfg, c1, c2, &mut mv, &mut vv, grad.get(e));
            m[e] = Elem::from_f32(mv);
            v[e] = Elem::from_f32(vv);
            w[e] = Elem::from_f32(w[e].to_f32() * decay + (-lr) * u);
        }
    })));
    StepOutcome { skipped: false }
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
