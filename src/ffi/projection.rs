//! The projection handle's exports (the handle itself is `handles::projection`).

use std::ffi::c_void;

use crate::backend::{Batch, Buf};
use crate::context::grass_context;
use crate::core::config::{default_rank, Selection};
use crate::core::error::Result;
use crate::core::shape::{positive, product, Projected};
use crate::ensure;
use crate::ffi::args::{ctx, handle, handle_mut, opt, req, req_buf, tensor, write};
use crate::ffi::status::{grass_status, guard, guard_value};
use crate::ffi::types::*;
use crate::handles::projection::grass_projection;

/// What a projection is and where it stands.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct grass_projection_info {
    /// Set to `sizeof(grass_projection_info)` before the call.
    pub struct_size: usize,
    /// The resolved side: `GRASS_SIDE_ROWS` or `GRASS_SIDE_COLS`.
    pub side: grass_side,
    pub m: i64,
    pub n: i64,
    /// Projected dimension (m for rows, n for columns).
    pub d: i64,
    /// Kept dimension: compressed tensors are rank x k.
    pub k: i64,
    pub rank: i64,
    /// Refreshes done so far; the next refresh uses this as its refresh index.
    pub refresh_count: u32,
    /// Steps counted by `grass_projection_advance` since the last refresh.
    pub steps_since_refresh: i64,
    /// 1 once a selection exists.
    pub has_selection: i32,
    /// 1 when there is no selection yet or `refresh_every` steps have passed since the last one.
    pub refresh_due: i32,
    /// Bytes of context memory the projection owns: its selection (indices, previous indices
    /// and scales, r each) and d row scores. Scratch is not among them: it is the context's
    /// workspace, shared by all its handles (`grass_context_workspace_bytes`).
    pub memory_bytes: i64,
    /// 1 when `rank == d`: the compressed state is as large as the full one (no memory
    /// saving). Since ABI 4 (an ABI 3 caller's smaller `struct_size` gets the fields before
    /// it).
    pub full_rank: i32,
}

/// The checked options and shape of a projection of an `m x n` weight for batches of at most
/// `max_tokens` rows: (selection, projected shape, refresh period, max_tokens).
pub(crate) fn projection_shape(
    cfg: &grass_projection_config,
    m: i64,
    n: i64,
    max_tokens: i64,
) -> Result<(Selection, Projected, u64, usize)> {
    let mut sel = cfg.selection()?;
    let m = positive("m", m)?;
    let n = positive("n", n)?;
    product("m * n * 4 bytes", &[m, n, 4])?;
    let p = Projected::new(m, n, side(cfg.side)?);
    if sel.rank == 0 {
        sel.rank = default_rank(p.d);
    }
    sel.validate(p.d)
        .map_err(|e| crate::Error::new(e.kind, format!("config->{}", e.message)))?;
    let b = positive("max_tokens", max_tokens)?;
    product("max_tokens * max(m, n) * 4 bytes", &[b, m.max(n), 4])?;
    Ok((sel, p, cfg.refresh_every as u64, b))
}

/// X (`b x n`) and dY (`b x m`) of a batch for projection `p`: `b` within [1, max_tokens],
/// both of the projection's dtype. The one check of a batch on every handle path.
pub(crate) fn batch(
    p: &grass_projection,
    b: i64,
    x: *const c_void,
    dy: *const c_void,
) -> Result<Batch> {
    let b = positive("b", b)?;
    ensure!(
        b <= p.max_tokens,
        InvalidValue,
        "b = {b} exceeds max_tokens = {} given at creation",
        p.max_tokens
    );
    Ok(Batch {
        b,
        x: tensor("x", x, p.dtype, b * p.p.n)?,
        dy: tensor("dy", dy, p.dtype, b * p.p.m)?,
    })
}

/// d scores for projection `p`, in context memory.
pub(crate) fn scores_buf(p: &grass_projection, scores: *const f32) -> Result<Buf<f32>> {
    req_buf("scores", scores, p.p.d)
}

/// Creates a projection for an `m x n` weight whose X and dY have `dtype` and at most
/// `max_tokens` rows per call. The context must outlive the projection.
#[no_mangle]
pub unsafe extern "C" fn grass_projection_create(
    ctx: *const grass_context,
    config: *const grass_projection_config,
    m: i64,
    n: i64,
    max_tokens: i64,
    dtype: grass_dtype,
    projection_out: *mut *mut grass_projection,
) -> grass_status {
    guard("grass_projection_create", || {
        let c = self::ctx(ctx)?;
        let cfg = read_versioned("config", config)?;
        let dt = self::dtype("dtype", dtype)?;
        let out = req("projection_out", projection_out)?;
        let (sel, shape, every, b) = projection_shape(&cfg, m, n, max_tokens)?;
        let p = grass_projection::new(c, sel, shape, every, b, dt)?;
        write(out, Box::into_raw(Box::new(p)));
        Ok(())
    })
}

/// Destroys a projection (NULL is allowed).
#[no_mangle]
pub unsafe extern "C" fn grass_projection_destroy(projection: *mut grass_projection) {
    guard_value("grass_projection_destroy", (), || {
        if !projection.is_null() {
            drop(Box::from_raw(projection));
        }
    })
}

pub(crate) fn projection_info(p: &grass_projection) -> grass_projection_info {
    grass_projection_info {
        struct_size: std::mem::size_of::<grass_projection_info>(),
        side: side_code(p.p.side),
        m: p.p.m as i64,
        n: p.p.n as i64,
        d: p.p.d as i64,
        k: p.p.k as i64,
        rank: p.sel.rank as i64,
        refresh_count: p.refresh_count,
        steps_since_refresh: p.steps_since_refresh as i64,
        has_selection: p.has_selection as i32,
        refresh_due: p.refresh_due() as i32,
        memory_bytes: p.memory_bytes() as i64,
        full_rank: p.is_full_rank() as i32,
    }
}

/// Fills `info` (whose `struct_size` the caller sets).
#[no_mangle]
pub unsafe extern "C" fn grass_projection_get_info(
    projection: *const grass_projection,
    info: *mut grass_projection_info,
) -> grass_status {
    guard("grass_projection_get_info", || {
        let p = handle("projection", projection)?;
        let bytes = info_size("info", info)?;
        write_versioned(info, bytes, projection_info(p));
        Ok(())
    })
}

/// Writes the d row scores of this batch to `scores` (context memory) without changing the
/// projection: for data parallelism, all-reduce them across ranks and pass the result to
/// `grass_projection_refresh_from_scores` so that every rank selects the same rows.
#[no_mangle]
pub unsafe extern "C" fn grass_projection_scores(
    projection: *const grass_projection,
    b: i64,
    x: *const c_void,
    dy: *const c_void,
    scores: *mut f32,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_projection_scores", || {
        let p = handle("projection", projection)?;
        let s = scores_buf(p, scores)?;
        p.scores(&batch(p, b, x, dy)?, s, stream as usize)
    })
}

/// Selects new rows from this batch's exact row scores (the refresh index is the refresh count).
#[no_mangle]
pub unsafe extern "C" fn grass_projection_refresh(
    projection: *mut grass_projection,
    b: i64,
    x: *const c_void,
    dy: *const c_void,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_projection_refresh", || {
        let p = handle_mut("projection", projection)?;
        let batch = batch(p, b, x, dy)?;
        p.refresh(&batch, stream as usize)
    })
}

/// Selects new rows from caller-supplied scores (d floats in context memory).
#[no_mangle]
pub unsafe extern "C" fn grass_projection_refresh_from_scores(
    projection: *mut grass_projection,
    scores: *const f32,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_projection_refresh_from_scores", || {
        let p = handle_mut("projection", projection)?;
        let s = scores_buf(p, scores)?;
        p.refresh_from(s, stream as usize)
    })
}

/// Counts one optimizer step towards the next refresh (the optimizer handle does this itself).
#[no_mangle]
pub unsafe extern "C" fn grass_projection_advance(
    projection: *mut grass_projection,
) -> grass_status {
    guard("grass_projection_advance", || {
        handle_mut("projection", projection)?.steps_since_refresh += 1;
        Ok(())
    })
}

/// The compressed gradient g (rank x k f32, context memory) of this batch; `accumulate != 0`
/// adds into g. Fails with `GRASS_ERROR_INVALID_STATE` before the first refresh.
#[no_mangle]
pub unsafe extern "C" fn grass_projection_compress(
    projection: *const grass_projection,
    b: i64,
    x: *const c_void,
    dy: *const c_void,
    g: *mut f32,
    accumulate: i32,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_projection_compress", || {
        let p = handle("projection", projection)?;
        let g = req_buf("g", g, p.sel.rank * p.p.k)?;
        p.compress(&batch(p, b, x, dy)?, g, accumulate != 0, stream as usize)
    })
}

/// Pointers (context memory, owned by the projection) to the rank selected indices and their
/// scales. Either may be NULL. The pointers stay the same for the projection's life (cache them,
/// or capture them in a CUDA graph); their contents change at each refresh. Fails with
/// `GRASS_ERROR_INVALID_STATE` (writing nothing) before the first refresh.
#[no_mangle]
pub unsafe extern "C" fn grass_projection_selection(
    projection: *const grass_projection,
    indices_out: *mut *const i32,
    scales_out: *mut *const f32,
) -> grass_status {
    guard("grass_projection_selection", || {
        let p = handle("projection", projection)?;
        ensure!(
            p.has_selection,
            BadState,
            "the projection has no selection yet: refresh it first"
        );
        let (io, so) = (
            opt("indices_out", indices_out)?,
            opt("scales_out", scales_out)?,
        );
        if io != 0 {
            write(io, p.indices.addr() as *const i32);
        }
        if so != 0 {
            write(so, p.scales.addr() as *const f32);
        }
        Ok(())
    })
}
