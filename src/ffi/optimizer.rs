//! The optimizer handle's exports (the handle itself is `handles::optimizer`, its checkpoint
//! format `handles::checkpoint`).

use std::ffi::c_void;

use crate::backend::Tensor;
use crate::context::grass_context;
use crate::core::config::{check_grad_scale, check_lr, check_residual_scale};
use crate::core::error::Result;
use crate::core::shape::positive;
use crate::ffi::args::{ctx, handle, handle_mut, req, req_buf, tensor, write};
use crate::ffi::projection::{batch, projection_shape, scores_buf};
use crate::ffi::status::{grass_status, guard, guard_value};
use crate::ffi::types::*;
use crate::handles::checkpoint;
use crate::handles::optimizer::{grass_optimizer, Kind, StepScalars};
use crate::handles::projection::grass_projection;
use crate::{bail, ensure};

/// Sizes and progress of an optimizer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct grass_optimizer_info {
    /// Set to `sizeof(grass_optimizer_info)` before the call.
    pub struct_size: usize,
    /// 1 for a GRASS (projected) layer, 0 for a dense parameter.
    pub is_sparse: i32,
    /// Calls of `grass_optimizer_step` so far (skipped steps included).
    pub steps: i64,
    /// Micro-batches accumulated since the last step (GRASS layers).
    pub accumulated: i32,
    /// Elements of each of M and V.
    pub state_elements: i64,
    /// Bytes of context memory the optimizer owns: M, V, step counts, and for GRASS layers the
    /// compressed-gradient accumulator and the projection's selection and row scores. Scratch
    /// is not among them: it is the context's workspace, shared by all its handles
    /// (`grass_context_workspace_bytes`).
    pub memory_bytes: i64,
    /// 1 when a GRASS layer's rank equals its projected dimension: its M and V are as large as
    /// AdamW's, so it saves no optimizer memory (choose a smaller rank, or train the weight
    /// with a dense optimizer). 0 otherwise and for dense parameters. Since ABI 4 (an ABI 3
    /// caller's smaller `struct_size` gets the fields before it).
    pub full_rank: i32,
}

/// Creates the optimizer of one GRASS layer (`m x n` weight of `w_dtype`, X and dY of
/// `act_dtype` with at most `max_tokens` rows); it owns its projection.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_create_sparse(
    ctx: *const grass_context,
    projection_config: *const grass_projection_config,
    adamw_config: *const grass_adamw_config,
    m: i64,
    n: i64,
    max_tokens: i64,
    act_dtype: grass_dtype,
    w_dtype: grass_dtype,
    optimizer_out: *mut *mut grass_optimizer,
) -> grass_status {
    guard("grass_optimizer_create_sparse", || {
        let c = self::ctx(ctx)?;
        let pcfg = read_versioned("projection_config", projection_config)?;
        let acfg = read_versioned("adamw_config", adamw_config)?.adamw()?;
        let ad = self::dtype("act_dtype", act_dtype)?;
        let wd = self::dtype("w_dtype", w_dtype)?;
        let out = req("optimizer_out", optimizer_out)?;
        let (sel, shape, every, b) = projection_shape(&pcfg, m, n, max_tokens)?;
        let proj = grass_projection::new(c, sel, shape, every, b, ad)?;
        let g = c.alloc(proj.sel.rank * proj.p.k * 4)?;
        let o = grass_optimizer::new(
            c,
            acfg,
            wd,
            Kind::Sparse {
                proj: Box::new(proj),
                g,
                accumulated: 0,
            },
        )?;
        write(out, Box::into_raw(Box::new(o)));
        Ok(())
    })
}

/// Creates a plain AdamW optimizer for a dense parameter of `numel` elements (moments of
/// `adamw_config->dense_state_dtype`).
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_create_dense(
    ctx: *const grass_context,
    adamw_config: *const grass_adamw_config,
    numel: i64,
    w_dtype: grass_dtype,
    grad_dtype: grass_dtype,
    optimizer_out: *mut *mut grass_optimizer,
) -> grass_status {
    guard("grass_optimizer_create_dense", || {
        let c = self::ctx(ctx)?;
        let acfg = read_versioned("adamw_config", adamw_config)?.dense_adamw()?;
        let numel = positive("numel", numel)?;
        let wd = self::dtype("w_dtype", w_dtype)?;
        let gd = self::dtype("grad_dtype", grad_dtype)?;
        let out = req("optimizer_out", optimizer_out)?;
        let o = grass_optimizer::new(
            c,
            acfg,
            wd,
            Kind::Dense {
                numel,
                grad_dtype: gd,
                layer_id: 0,
            },
        )?;
        write(out, Box::into_raw(Box::new(o)));
        Ok(())
    })
}

/// Destroys an optimizer and its projection (NULL is allowed).
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_destroy(optimizer: *mut grass_optimizer) {
    guard_value("grass_optimizer_destroy", (), || {
        if !optimizer.is_null() {
            drop(Box::from_raw(optimizer));
        }
    })
}

/// The projection a GRASS-layer optimizer owns (borrowed: valid until the optimizer is
/// destroyed). Read its selection or compute scores with it; refreshing it directly bypasses
/// the optimizer's state remap, so leave that to `grass_optimizer_backward`.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_projection(
    optimizer: *mut grass_optimizer,
    projection_out: *mut *mut grass_projection,
) -> grass_status {
    guard("grass_optimizer_projection", || {
        let o = handle_mut("optimizer", optimizer)?;
        let out = req("projection_out", projection_out)?;
        match &mut o.kind {
            Kind::Sparse { proj, .. } => write(out, proj.as_mut() as *mut grass_projection),
            Kind::Dense { .. } => bail!(BadState, "a dense optimizer has no projection"),
        }
        Ok(())
    })
}

/// Writes 1 when the next `grass_optimizer_backward` will refresh the selection (so a data-
/// parallel caller can all-reduce scores first), else 0. Always 0 for dense optimizers.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_refresh_due(
    optimizer: *const grass_optimizer,
    due_out: *mut i32,
) -> grass_status {
    guard("grass_optimizer_refresh_due", || {
        let o = handle("optimizer", optimizer)?;
        let out = req("due_out", due_out)?;
        let due = matches!(&o.kind, Kind::Sparse { proj, accumulated, .. } if *accumulated == 0 && proj.refresh_due());
        write(out, due as i32);
        Ok(())
    })
}

/// Feeds one micro-batch of a GRASS layer: X (b x n) and dY (b x m). On the first micro-batch
/// of a step where a refresh is due it selects new rows — from `scores` (d floats in context
/// memory, e.g. all-reduced across ranks) when not NULL, else from this batch's exact scores —
/// and resets or carries the state; then it adds the compressed gradient into the accumulator.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_backward(
    optimizer: *mut grass_optimizer,
    b: i64,
    x: *const c_void,
    dy: *const c_void,
    scores: *const f32,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_optimizer_backward", || {
        let o = handle_mut("optimizer", optimizer)?;
        let Kind::Sparse { proj, .. } = &o.kind else {
            bail!(BadState, "grass_optimizer_backward is for GRASS layers; pass the gradient of a dense parameter to grass_optimizer_step");
        };
        let s = if scores.is_null() {
            None
        } else {
            Some(scores_buf(proj, scores)?)
        };
        let batch = batch(proj, b, x, dy)?;
        o.backward(&batch, s, stream as usize)
    })
}

/// Applies one AdamW step with learning rate `lr` to `w` (context memory). For a GRASS layer
/// `grad` must be NULL (the accumulated compressed gradient is used and cleared); for a dense
/// parameter it is the gradient of `grad_dtype`. `lr` must be finite and non-negative
/// (`GRASS_ERROR_INVALID_VALUE` otherwise, nothing written). A non-finite gradient skips the
/// step (see `grass_optimizer_last_step_skipped`). The same as `grass_optimizer_step_scaled`
/// with `grad_scale` 1.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_step(
    optimizer: *mut grass_optimizer,
    w: *mut c_void,
    grad: *const c_void,
    lr: f32,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_optimizer_step", || {
        step(optimizer, w, grad, lr, 1.0, stream)
    })
}

/// `grass_optimizer_step` on `grad_scale` times the gradient: the step reads each gradient
/// element (or compressed-gradient element) `g` as the f32 product `grad_scale * g`, with no
/// extra pass over W or the gradient, so the result is that of `grass_optimizer_step` on a
/// gradient of f32 elements `grad_scale * g`. For global-norm clipping, loss scaling and
/// averaging of micro-batches in one factor: `grad_scale = clip / (loss_scale * micro_batches)`
/// with `clip = min(1, max_norm / norm)` and `norm` the global norm of the unscaled gradients
/// (`grass_optimizer_grad_sq_norm`) divided by `loss_scale * micro_batches`. `grad_scale` must
/// be finite and non-negative (`GRASS_ERROR_INVALID_VALUE` naming it otherwise, nothing
/// written); a scaled element that overflows to infinity skips the step like a non-finite
/// gradient (`GRASS_STEP_SKIPPED_NONFINITE`).
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_step_scaled(
    optimizer: *mut grass_optimizer,
    w: *mut c_void,
    grad: *const c_void,
    lr: f32,
    grad_scale: f32,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_optimizer_step_scaled", || {
        step(optimizer, w, grad, lr, grad_scale, stream)
    })
}

/// `grass_optimizer_step_scaled` of a GRASS layer (`grad` NULL), then the residual step of
/// its weight (`grass_residual_step`): every row or column that the selection leaves out
/// moves by `-lr·α·residual_scale·sign(G_u)`, G = dYᵀX computed in chunks from X (b x n) and
/// dY (b x m, the handle's activation dtype, `b <= max_tokens`), so the m x n gradient is never
/// held. Pass the step's whole batch (the tokens of every micro-batch, concatenated): the
/// residual's sign is that of its gradient. Cost: one more weight-gradient GEMM (2·b·m·n flops)
/// per step, which the compressed step alone does not spend. A skipped compressed step skips
/// the residual too; a NaN or infinity in X or dY skips the residual
/// (`grass_optimizer_last_step_skipped` then reports `GRASS_STEP_SKIPPED_NONFINITE`; the
/// compressed step of a finite accumulated gradient has been applied). `grad_scale` 0 moves no
/// residual row (sign(0) = 0); other scales do not change a sign. `residual_scale` must be
/// finite and non-negative (`grass_default_residual_scale()` is the measured default), and
/// `lr` and `grad_scale` as for `grass_optimizer_step_scaled` (`GRASS_ERROR_INVALID_VALUE`
/// naming the argument otherwise, nothing written). Dense parameters:
/// `GRASS_ERROR_INVALID_STATE`.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_step_residual(
    optimizer: *mut grass_optimizer,
    w: *mut c_void,
    b: i64,
    x: *const c_void,
    dy: *const c_void,
    lr: f32,
    grad_scale: f32,
    residual_scale: f32,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_optimizer_step_residual", || {
        let o = handle_mut("optimizer", optimizer)?;
        let Kind::Sparse { proj, .. } = &o.kind else {
            bail!(BadState, "grass_optimizer_step_residual is for GRASS layers; a dense parameter steps with grass_optimizer_step");
        };
        check_lr(lr)?;
        check_grad_scale(grad_scale)?;
        check_residual_scale(residual_scale)?;
        let batch = batch(proj, b, x, dy)?;
        let w = tensor("w", w, o.w_dtype, o.weight_elements())?;
        o.step_residual(
            w,
            &batch,
            StepScalars { lr, grad_scale },
            residual_scale,
            stream as usize,
        )
    })
}

/// The residual step's scale that the measurements support (0.1: the residual moves each
/// element by a tenth of the compressed step's nominal size `lr·α`); bindings read it here.
#[no_mangle]
pub extern "C" fn grass_default_residual_scale() -> f32 {
    crate::core::config::defaults::RESIDUAL_SCALE
}

/// The checked gradient argument of a step or norm: none for a GRASS layer (`grad` must be
/// NULL), the dense parameter's gradient otherwise.
unsafe fn grad_arg(o: &grass_optimizer, grad: *const c_void) -> Result<Option<Tensor>> {
    Ok(match &o.kind {
        Kind::Sparse { .. } => {
            ensure!(grad.is_null(), InvalidValue, "grad must be NULL for a GRASS layer (its gradient comes from grass_optimizer_backward)");
            None
        }
        Kind::Dense {
            numel, grad_dtype, ..
        } => Some(tensor("grad", grad, *grad_dtype, *numel)?),
    })
}

unsafe fn step(
    optimizer: *mut grass_optimizer,
    w: *mut c_void,
    grad: *const c_void,
    lr: f32,
    grad_scale: f32,
    stream: *mut c_void,
) -> Result<()> {
    let o = handle_mut("optimizer", optimizer)?;
    check_lr(lr)?;
    check_grad_scale(grad_scale)?;
    let w = tensor("w", w, o.w_dtype, o.weight_elements())?;
    let grad = grad_arg(o, grad)?;
    o.step(w, grad, StepScalars { lr, grad_scale }, stream as usize)
}

/// Writes to `sq_norm_out` (one float in context memory: a host pointer on a CPU context, a
/// device pointer on a CUDA context, where the reduction is enqueued on `stream` without
/// synchronizing) the squared Frobenius norm of the gradient the next step will use, before
/// any `grad_scale`. A GRASS layer: `grad` must be NULL, and the norm is that of the compressed
/// gradient accumulated since the last step (rank x k, the selected rows of every micro-
/// batch's G already multiplied by their scales ρ); `GRASS_ERROR_INVALID_STATE` when nothing
/// was accumulated. A dense parameter: `grad` is its gradient (numel of `grad_dtype`). Sum the
/// values of all handles for a global norm (docs/api.md says how it relates to the full
/// gradient's norm). Squares are summed in double in a fixed order and rounded once.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_grad_sq_norm(
    optimizer: *const grass_optimizer,
    grad: *const c_void,
    sq_norm_out: *mut f32,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_optimizer_grad_sq_norm", || {
        let o = handle("optimizer", optimizer)?;
        let grad = grad_arg(o, grad)?;
        let out = req_buf("sq_norm_out", sq_norm_out, 1)?;
        o.grad_sq_norm(grad, out, stream as usize)
    })
}

/// Sets the layer id of a dense parameter's optimizer (0 at creation), which its checkpoints
/// record: `grass_optimizer_import_state` and `grass_checkpoint_load` then refuse a state of a
/// dense parameter with another id, so parameters of one size and dtype (e.g. the LayerNorm
/// gains of every block) cannot be restored into each other. A GRASS layer's layer id is its
/// projection config's (`layer_id`, which also keys its row selection): for a GRASS layer this
/// call fails with `GRASS_ERROR_INVALID_STATE` unless `layer_id` equals it.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_set_layer_id(
    optimizer: *mut grass_optimizer,
    layer_id: u32,
) -> grass_status {
    guard("grass_optimizer_set_layer_id", || {
        let o = handle_mut("optimizer", optimizer)?;
        match &mut o.kind {
            Kind::Dense { layer_id: id, .. } => *id = layer_id,
            Kind::Sparse { proj, .. } => ensure!(
                proj.sel.layer_id == layer_id,
                BadState,
                "layer_id = {layer_id} but this GRASS layer's is {} (set by its projection config at creation, where it also keys the row selection)",
                proj.sel.layer_id
            ),
        }
        Ok(())
    })
}

/// Writes the outcome of the last step: `GRASS_STEP_APPLIED` (0), or the reason it was
/// skipped (`GRASS_STEP_SKIPPED_*`, e.g. a non-finite gradient). Synchronizes `stream` on
/// CUDA contexts (it reads device memory): not for the hot path.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_last_step_skipped(
    optimizer: *const grass_optimizer,
    skipped_out: *mut i32,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_optimizer_last_step_skipped", || {
        let o = handle("optimizer", optimizer)?;
        let out = req("skipped_out", skipped_out)?;
        ensure!(o.steps > 0, BadState, "no step has been taken yet");
        let mut c = [0u8; 4];
        o.context()
            .download(o.counters.addr(), &mut c, stream as usize)?;
        write(out, i32::from_le_bytes(c));
        Ok(())
    })
}

/// Fills `info` (whose `struct_size` the caller sets).
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_get_info(
    optimizer: *const grass_optimizer,
    info: *mut grass_optimizer_info,
) -> grass_status {
    guard("grass_optimizer_get_info", || {
        let o = handle("optimizer", optimizer)?;
        let bytes = info_size("info", info)?;
        let elems = o.state_elements();
        let (sparse, acc, full) = match &o.kind {
            Kind::Sparse {
                accumulated, proj, ..
            } => (1, *accumulated as i32, proj.is_full_rank() as i32),
            Kind::Dense { .. } => (0, 0, 0),
        };
        let owned = o.memory_bytes();
        write_versioned(
            info,
            bytes,
            grass_optimizer_info {
                struct_size: 0,
                is_sparse: sparse,
                steps: o.steps as i64,
                accumulated: acc,
                state_elements: elems as i64,
                memory_bytes: owned as i64,
                full_rank: full,
            },
        );
        Ok(())
    })
}

/// Bytes `grass_optimizer_export_state` writes.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_state_size(
    optimizer: *const grass_optimizer,
    bytes_out: *mut usize,
) -> grass_status {
    guard("grass_optimizer_state_size", || {
        let o = handle("optimizer", optimizer)?;
        let out = req("bytes_out", bytes_out)?;
        write(out, checkpoint::size(o));
        Ok(())
    })
}

/// Writes the whole optimizer state (counters, M, V, and for GRASS layers the selection, the
/// schedule and the accumulator) to host memory `dst` as a versioned, checksummed blob.
/// Synchronizes `stream` on CUDA contexts.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_export_state(
    optimizer: *const grass_optimizer,
    dst: *mut c_void,
    bytes: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_optimizer_export_state", || {
        let o = handle("optimizer", optimizer)?;
        let d = req("dst", dst as *const u8)?;
        let need = checkpoint::size(o);
        ensure!(
            bytes >= need,
            InvalidValue,
            "bytes = {bytes} but the state takes {need} (ask grass_optimizer_state_size)"
        );
        checkpoint::export(
            o,
            std::slice::from_raw_parts_mut(d as *mut u8, need),
            stream as usize,
        )
    })
}

/// Restores a blob written by `grass_optimizer_export_state` for an optimizer of the same
/// shapes, dtypes and kind; fails with `GRASS_ERROR_BAD_CHECKPOINT`, changing nothing, when it
/// does not match or is damaged. Synchronizes `stream` on CUDA contexts.
#[no_mangle]
pub unsafe extern "C" fn grass_optimizer_import_state(
    optimizer: *mut grass_optimizer,
    src: *const c_void,
    bytes: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_optimizer_import_state", || {
        let o = handle_mut("optimizer", optimizer)?;
        let s = req("src", src as *const u8)?;
        checkpoint::import(
            o,
            std::slice::from_raw_parts(s as *const u8, bytes),
            stream as usize,
        )
    })
}

/// The `count` handles of `optimizers` (none NULL, none repeated).
unsafe fn handle_set(
    optimizers: *const *mut grass_optimizer,
    count: usize,
) -> Result<Vec<*mut grass_optimizer>> {
    ensure!(
        count > 0,
        InvalidValue,
        "count = 0: there is nothing to save or load"
    );
    ensure!(
        count <= i32::MAX as usize,
        InvalidValue,
        "count = {count} exceeds 2^31 - 1"
    );
    req("optimizers", optimizers)?;
    let set = std::slice::from_raw_parts(optimizers, count).to_vec();
    for (i, &o) in set.iter().enumerate() {
        ensure!(!o.is_null(), NullPointer, "optimizers[{i}] is NULL");
        if let Some(j) = set[..i].iter().position(|&p| p == o) {
            bail!(
                InvalidValue,
                "optimizers[{j}] and optimizers[{i}] are the same handle"
            );
        }
    }
    Ok(set)
}

unsafe fn path_arg(path: *const std::ffi::c_char) -> Result<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    req("path", path)?;
    let bytes = std::ffi::CStr::from_ptr(path).to_bytes();
    ensure!(!bytes.is_empty(), InvalidValue, "path is empty");
    Ok(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
}

/// Saves the states of `count` optimizers (in this order) to the file `path`, in one file:
/// a header (magic, format, count, each state's size), each optimizer's
/// `grass_optimizer_export_state` blob (which records the handle's identity: kind, shape,
/// side, rank, dtypes and layer id) and a checksum. Written to a temporary file in the same
/// directory, flushed, then renamed over `path`: a crash leaves the old file or the new one,
/// never a mix. The handles may be of any contexts; a handle must not appear twice.
/// Synchronizes `stream` on CUDA contexts. A file that cannot be written is
/// `GRASS_ERROR_INVALID_VALUE` naming the path and the system's reason.
#[no_mangle]
pub unsafe extern "C" fn grass_checkpoint_save(
    path: *const std::ffi::c_char,
    optimizers: *const *mut grass_optimizer,
    count: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_checkpoint_save", || {
        let path = path_arg(path)?;
        let set = handle_set(optimizers, count)?;
        let refs: Vec<&grass_optimizer> = set.iter().map(|&o| &*o).collect();
        let bytes = checkpoint::save_set(&refs, stream as usize)?;
        write_atomically(&path, &bytes)
    })
}

/// Restores `count` optimizers from a file written by `grass_checkpoint_save` for handles of
/// the same identities in the same order. The whole file is read and checked first (count,
/// sizes, checksums, every handle's identity and state): a missing, truncated, damaged or
/// mismatched file fails with `GRASS_ERROR_BAD_CHECKPOINT` naming the first problem (for a
/// mismatch, the index and both identities) and changes no handle. Synchronizes `stream` on
/// CUDA contexts.
#[no_mangle]
pub unsafe extern "C" fn grass_checkpoint_load(
    path: *const std::ffi::c_char,
    optimizers: *const *mut grass_optimizer,
    count: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_checkpoint_load", || {
        let path = path_arg(path)?;
        let set = handle_set(optimizers, count)?;
        let file = std::fs::read(&path).map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::BadCheckpoint,
                format!("path = \"{}\" cannot be read: {e}", path.display()),
            )
        })?;
        let mut refs: Vec<&mut grass_optimizer> = set.iter().map(|&o| &mut *o).collect();
        checkpoint::load_set(&mut refs, &file, stream as usize)
    })
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let fail = |what: &str, e: std::io::Error| {
        crate::Error::new(
            crate::ErrorKind::InvalidValue,
            format!("path = \"{}\": {what}: {e}", path.display()),
        )
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            crate::Error::new(
                crate::ErrorKind::InvalidValue,
                format!("path = \"{}\" names no file", path.display()),
            )
        })?
        .to_os_string();
    let mut tmp_name = name;
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| fail("cannot create its temporary file", e))?;
        f.write_all(bytes).map_err(|e| fail("cannot write", e))?;
        f.sync_all().map_err(|e| fail("cannot flush", e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| fail("cannot rename the temporary file to it", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
