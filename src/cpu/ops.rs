//! The CPU backend behind the dispatch: turns validated host addresses into slices and runs
//! the reference implementation. Data-dependent checks (index ranges and order) happen here,
//! before anything is written.

use std::slice;

use half::{bf16, f16};

use crate::backend::*;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::cpu::adamw::{State, Weights};
use crate::cpu::project::{Act, Activations};
use crate::ffi::types::{GRASS_STEP_APPLIED, GRASS_STEP_SKIPPED_NONFINITE};
use crate::{bail, cpu};

/// # Safety
/// `addr` must point to `len` valid, aligned `T`s that nothing else mutates during the call.
unsafe fn view<'a, T>(addr: usize, len: usize) -> &'a [T] {
    slice::from_raw_parts(addr as *const T, len)
}

/// # Safety
/// As [`view`], and the region must not be aliased by any other slice of the call.
unsafe fn view_mut<'a, T>(addr: usize, len: usize) -> &'a mut [T] {
    slice::from_raw_parts_mut(addr as *mut T, len)
}

unsafe fn act<'a>(addr: usize, len: usize, dtype: Dtype) -> Act<'a> {
    match dtype {
        Dtype::F32 => Act::F32(view(addr, len)),
        Dtype::Bf16 => Act::Bf16(view(addr, len)),
        Dtype::F16 => Act::F16(view(addr, len)),
    }
}

unsafe fn weights<'a>(addr: usize, len: usize, dtype: Dtype) -> Weights<'a> {
    match dtype {
        Dtype::F32 => Weights::F32(view_mut(addr, len)),
        Dtype::Bf16 => Weights::Bf16(view_mut::<bf16>(addr, len)),
        Dtype::F16 => Weights::F16(view_mut::<f16>(addr, len)),
    }
}

unsafe fn state<'a>(addr: usize, len: usize, dtype: Dtype) -> State<'a> {
    match dtype {
        Dtype::Bf16 => State::Bf16(view_mut(addr, len)),
        _ => State::F32(view_mut(addr, len)),
    }
}

unsafe fn scratch<'a>(s: Scratch) -> &'a mut [u8] {
    if s.bytes == 0 {
        &mut []
    } else {
        view_mut(s.addr, s.bytes)
    }
}

unsafe fn activations<'a>(
    p: &crate::core::shape::Projected,
    b: usize,
    dtype: Dtype,
    x: usize,
    dy: usize,
) -> Activations<'a> {
    Activations {
        x: act(x, b * p.n, dtype),
        dy: act(dy, b * p.m, dtype),
        b,
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

pub(crate) fn row_scores(a: &ScoresArgs) -> Result<()> {
    unsafe {
        let act = activations(&a.p, a.b, a.dtype, a.x, a.dy);
        cpu::row_scores(&a.p, &act, view_mut(a.scores, a.p.d), scratch(a.ws))
    }
}

pub(crate) fn select(a: &SelectArgs) -> Result<()> {
    unsafe {
        crate::core::select::select(
            view(a.scores, a.d),
            &a.sel,
            if a.refresh_index_at == 0 {
                a.refresh_index
            } else {
                *(a.refresh_index_at as *const u32)
            },
            view_mut(a.indices, a.sel.rank),
            view_mut(a.scales, a.sel.rank),
            scratch(a.ws),
        )
    }
}

pub(crate) fn sparse_grad(a: &SparseGradArgs) -> Result<()> {
    unsafe {
        let idx = view::<i32>(a.indices, a.r);
        check_indices("indices", idx, a.p.d)?;
        let act = activations(&a.p, a.b, a.dtype, a.x, a.dy);
        cpu::sparse_grad(
            &a.p,
            &act,
            idx,
            view(a.scales, a.r),
            view_mut(a.g, a.r * a.p.k),
            a.accumulate,
            scratch(a.ws),
        )
    }
}

unsafe fn effective_lr(b: &StepBuffers) -> f32 {
    if b.lr_scale == 0 {
        b.lr
    } else {
        b.lr * *(b.lr_scale as *const f32)
    }
}

unsafe fn report(b: &StepBuffers, skipped: bool) {
    if b.skipped != 0 {
        *(b.skipped as *mut i32) = if skipped {
            GRASS_STEP_SKIPPED_NONFINITE
        } else {
            GRASS_STEP_APPLIED
        };
    }
}

pub(crate) fn sparse_step(a: &SparseStepArgs) -> Result<()> {
    unsafe {
        let idx = view::<i32>(a.indices, a.r);
        check_indices("indices", idx, a.p.d)?;
        check_scales("scales", view(a.scales, a.r))?;
        let b = &a.buf;
        let steps = slice::from_raw_parts_mut(b.steps as *mut i32, a.r);
        check_counts("row_steps", steps)?;
        let lr = effective_lr(b);
        if !(lr.is_finite() && lr >= 0.0) {
            report(b, true);
            return Ok(());
        }
        let n = a.r * a.p.k;
        let out = cpu::adamw_sparse_step(
            &b.cfg,
            &a.p,
            weights(b.w, a.p.m * a.p.n, b.w_dtype),
            idx,
            view(a.scales, a.r),
            view(a.g, n),
            state(b.m, n, b.cfg.state_dtype),
            state(b.v, n, b.cfg.state_dtype),
            steps,
            lr,
        );
        report(b, out.skipped);
    }
    Ok(())
}

pub(crate) fn dense_step(a: &DenseStepArgs) -> Result<()> {
    unsafe {
        let b = &a.buf;
        check_counts("step", view::<i32>(b.steps, 1))?;
        let lr = effective_lr(b);
        if !(lr.is_finite() && lr >= 0.0) {
            report(b, true);
            return Ok(());
        }
        let out = cpu::adamw_dense_step(
            &b.cfg,
            weights(b.w, a.numel, b.w_dtype),
            act(a.grad, a.numel, a.grad_dtype),
            state(b.m, a.numel, b.cfg.state_dtype),
            state(b.v, a.numel, b.cfg.state_dtype),
            &mut *(b.steps as *mut i32),
            lr,
        );
        report(b, out.skipped);
    }
    Ok(())
}

pub(crate) fn state_refresh(a: &RefreshArgs) -> Result<()> {
    unsafe {
        let new = view::<i32>(a.new_indices, a.r);
        let old: &[i32] = if a.old_indices == 0 {
            &[]
        } else {
            view(a.old_indices, a.r)
        };
        check_indices_unbounded("new_indices", new)?;
        check_indices_unbounded("old_indices", old)?;
        let steps = slice::from_raw_parts_mut(a.row_steps as *mut i32, a.r);
        check_counts("row_steps", steps)?;
        let n = a.r * a.k;
        cpu::state_refresh(
            a.mode,
            a.k,
            old,
            new,
            state(a.m, n, a.state_dtype),
            state(a.v, n, a.state_dtype),
            steps,
        );
    }
    Ok(())
}
