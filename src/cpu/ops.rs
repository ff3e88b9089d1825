//! The CPU backend behind the dispatch (the twin of `cuda::ops`): views the validated host
//! buffers of an op's arguments as slices, with the types and lengths they carry, and runs
//! the reference implementation. Data-dependent checks (index ranges and order) happen here,
//! before anything is written.

use std::slice;

use crate::backend::*;
use crate::core::codes::StepOutcome;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::cpu::activations::{Act, Activations};
use crate::cpu::adamw::{State, Weights};
use crate::{bail, cpu};

/// # Safety
/// `b` must be a host buffer that nothing else mutates during the call.
unsafe fn view<'a, T>(b: Buf<T>) -> &'a [T] {
    slice::from_raw_parts(b.addr() as *const T, b.len())
}

/// # Safety
/// As [`view`], and the buffer must not be aliased by any other slice of the call.
unsafe fn view_mut<'a, T>(b: Buf<T>) -> &'a mut [T] {
    slice::from_raw_parts_mut(b.addr() as *mut T, b.len())
}

/// # Safety
/// As [`view`].
unsafe fn act<'a>(t: Tensor) -> Act<'a> {
    match t.dtype() {
        Dtype::F32 => Act::F32(view(Buf::new(t.addr(), t.len()))),
        Dtype::Bf16 => Act::Bf16(view(Buf::new(t.addr(), t.len()))),
        Dtype::F16 => Act::F16(view(Buf::new(t.addr(), t.len()))),
    }
}

/// # Safety
/// As [`view_mut`].
unsafe fn weights<'a>(t: Tensor) -> Weights<'a> {
    match t.dtype() {
        Dtype::F32 => Weights::F32(view_mut(Buf::new(t.addr(), t.len()))),
        Dtype::Bf16 => Weights::Bf16(view_mut(Buf::new(t.addr(), t.len()))),
        Dtype::F16 => Weights::F16(view_mut(Buf::new(t.addr(), t.len()))),
    }
}

/// # Safety
/// As [`view_mut`]; `t` holds f32 or bf16 (the state dtypes).
unsafe fn state<'a>(t: Tensor) -> State<'a> {
    match t.dtype() {
        Dtype::Bf16 => State::Bf16(view_mut(Buf::new(t.addr(), t.len()))),
        _ => State::F32(view_mut(Buf::new(t.addr(), t.len()))),
    }
}

/// # Safety
/// `s` must be host scratch of `s.bytes` bytes that nothing else uses during the call.
unsafe fn scratch<'a>(s: Scratch) -> &'a mut [u8] {
    if s.bytes == 0 {
        &mut []
    } else {
        view_mut(Buf::new(s.addr, s.bytes))
    }
}

/// # Safety
/// As [`view`].
unsafe fn activations<'a>(b: &Batch) -> Activations<'a> {
    Activations {
        x: act(b.x),
        dy: act(b.dy),
        b: b.b,
    }
}

/// Indices must lie in [0, d) and be sorted ascending (as `grass_select` writes them).
pub(crate) fn check_indices(name: &str, idx: &[i32], d: usize) -> Result<()> {
    for (j, &i) in idx.iter().enumerate() {
        if i < 0 || i as usize >= d {
            bail!(InvalidValue, "{name}[{j}] = {i} is outside [0, {d})");
        }
        check_order(name, idx, j)?;
    }
    Ok(())
}

/// Indices whose bound d the call does not know (a state refresh): not negative, and sorted.
fn check_indices_unbounded(name: &str, idx: &[i32]) -> Result<()> {
    for (j, &i) in idx.iter().enumerate() {
        if i < 0 {
            bail!(InvalidValue, "{name}[{j}] = {i} is negative");
        }
        check_order(name, idx, j)?;
    }
    Ok(())
}

fn check_order(name: &str, idx: &[i32], j: usize) -> Result<()> {
    if j > 0 && idx[j - 1] > idx[j] {
        bail!(
            InvalidValue,
            "{name} must be sorted ascending: {name}[{}] = {} > {name}[{j}] = {}",
            j - 1,
            idx[j - 1],
            idx[j]
        );
    }
    Ok(())
}

/// Scales multiply the update of their row: a NaN or infinite one would write non-finite
/// values into W from a finite gradient (`grass_select` writes finite scales).
fn check_scales(name: &str, scales: &[f32]) -> Result<()> {
    if let Some(j) = scales.iter().position(|s| !s.is_finite()) {
        bail!(InvalidValue, "{name}[{j}] = {} is not finite", scales[j]);
    }
    Ok(())
}

/// Step counts must not be negative (a count of 0 would give zero bias corrections).
fn check_counts(name: &str, counts: &[i32]) -> Result<()> {
    if let Some(j) = counts.iter().position(|&t| t < 0) {
        bail!(
            InvalidValue,
            "{name}[{j}] = {} is negative (step counts start at 0)",
            counts[j]
        );
    }
    Ok(())
}

pub(crate) fn row_scores(a: &RowScoresArgs) -> Result<()> {
    unsafe {
        let act = activations(&a.batch);
        cpu::row_scores(&a.p, &act, view_mut(a.scores), scratch(a.ws))
    }
}

pub(crate) fn select(a: &SelectArgs) -> Result<()> {
    unsafe {
        crate::core::select::select(
            view(a.scores),
            &a.sel,
            match a.refresh_index_at {
                None => a.refresh_index,
                Some(at) => view(at)[0],
            },
            view_mut(a.indices),
            view_mut(a.scales),
            scratch(a.ws),
        )
    }
}

pub(crate) fn sparse_grad(a: &SparseGradArgs) -> Result<()> {
    unsafe {
        let idx = view(a.indices);
        check_indices("indices", idx, a.p.d)?;
        let act = activations(&a.batch);
        cpu::sparse_grad(
            &a.p,
            &act,
            idx,
            view(a.scales),
            view_mut(a.g),
            a.accumulate,
            scratch(a.ws),
        )
    }
}

/// The residual step (see [`ResidualStepArgs`]).
pub(crate) fn residual_step(a: &ResidualStepArgs) -> Result<()> {
    unsafe {
        let idx = view(a.indices);
        check_indices("indices", idx, a.p.d)?;
        if a.skipped
            .is_some_and(|s| view(s)[0] != StepOutcome::Applied as i32)
        {
            return Ok(());
        }
        let act = activations(&a.batch);
        let lr = effective_lr(a.lr, a.lr_scale);
        let step = lr * a.alpha * a.residual_scale;
        let finite = lr.is_finite() && lr >= 0.0 && step.is_finite();
        if !(finite && act.x.all_finite() && act.dy.all_finite()) {
            if let Some(out) = a.skipped {
                view_mut(out)[0] = StepOutcome::SkippedNonfinite as i32;
            }
            return Ok(());
        }
        cpu::residual_step(&a.p, &act, idx, weights(a.w), step, scratch(a.ws))
    }
}

/// `lr · *lr_scale` (the learning rate a step applies), or `lr` without a scale.
unsafe fn effective_lr(lr: f32, lr_scale: Option<Buf<f32>>) -> f32 {
    match lr_scale {
        None => lr,
        Some(s) => lr * view(s)[0],
    }
}

unsafe fn report(b: &StepBuffers, skipped: bool) {
    if let Some(out) = b.skipped {
        view_mut(out)[0] = if skipped {
            StepOutcome::SkippedNonfinite as i32
        } else {
            StepOutcome::Applied as i32
        };
    }
}

pub(crate) fn sparse_adamw_step(a: &SparseAdamwStepArgs) -> Result<()> {
    unsafe {
        let idx = view(a.indices);
        check_indices("indices", idx, a.p.d)?;
        check_scales("scales", view(a.scales))?;
        let b = &a.buf;
        let steps = view_mut(b.steps);
        check_counts("row_steps", steps)?;
        let lr = effective_lr(b.lr, b.lr_scale);
        if !(lr.is_finite() && lr >= 0.0) {
            report(b, true);
            return Ok(());
        }
        let out = cpu::sparse_adamw_step(
            &b.cfg,
            &a.p,
            weights(b.w),
            idx,
            view(a.scales),
            view(a.g),
            state(b.m),
            state(b.v),
            steps,
            lr,
            b.grad_scale,
        );
        report(b, out.skipped);
    }
    Ok(())
}

pub(crate) fn adamw_step(a: &AdamwStepArgs) -> Result<()> {
    unsafe {
        let b = &a.buf;
        let step = view_mut(b.steps);
        check_counts("step", step)?;
        let lr = effective_lr(b.lr, b.lr_scale);
        if !(lr.is_finite() && lr >= 0.0) {
            report(b, true);
            return Ok(());
        }
        let out = cpu::adamw_step(
            &b.cfg,
            weights(b.w),
            act(a.grad),
            state(b.m),
            state(b.v),
            &mut step[0],
            lr,
            b.grad_scale,
        );
        report(b, out.skipped);
    }
    Ok(())
}

/// `out[0] = ‖g‖²` (see [`cpu::adamw::sq_norm`]).
pub(crate) fn sq_norm(g: Tensor, out: Buf<f32>) -> Result<()> {
    unsafe {
        view_mut(out)[0] = cpu::adamw::sq_norm(act(g));
    }
    Ok(())
}

pub(crate) fn state_refresh(a: &StateRefreshArgs) -> Result<()> {
    unsafe {
        let new = view(a.new_indices);
        let old: &[i32] = match a.old_indices {
            None => &[],
            Some(old) => view(old),
        };
        check_indices_unbounded("new_indices", new)?;
        check_indices_unbounded("old_indices", old)?;
        let steps = view_mut(a.row_steps);
        check_counts("row_steps", steps)?;
        cpu::state_refresh(a.mode, a.k, old, new, state(a.m), state(a.v), steps);
    }
    Ok(())
}
