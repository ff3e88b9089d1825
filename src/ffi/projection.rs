//! Layer 2: a projection handle owns σ, ρ, the refresh counter and the generator key of one
//! layer, plus the scratch its calls need (sized at creation for `max_tokens`).

use std::ffi::c_void;

use crate::backend::*;
use crate::core::config::Selection;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::{positive, product, Projected};
use crate::ensure;
use crate::ffi::args::{ctx, handle, handle_mut, opt, req, req_typed, write};
use crate::ffi::context::{grass_context, Buffer};
use crate::ffi::status::{grass_status, guard, guard_value};
use crate::ffi::types::*;

pub struct grass_projection {
    pub(crate) ctx: *const grass_context,
    pub(crate) sel: Selection,
    pub(crate) p: Projected,
    pub(crate) dtype: Dtype,
    pub(crate) max_tokens: usize,
    pub(crate) refresh_every: u64,
    pub(crate) indices: Buffer,
    pub(crate) prev_indices: Buffer,
    pub(crate) scales: Buffer,
    scores: Buffer,
    ws: Buffer,
    ws_bytes: usize,
    pub(crate) refresh_count: u32,
    pub(crate) steps_since_refresh: u64,
    pub(crate) has_selection: bool,
    pub(crate) has_prev: bool,
}

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
}

impl grass_projection {
    pub(crate) fn context(&self) -> &grass_context {
        // SAFETY: the context outlives its handles (documented contract of the ABI).
        unsafe { &*self.ctx }
    }

    pub(crate) fn new(
        c: &grass_context,
        cfg: &grass_projection_config,
        m: i64,
        n: i64,
        max_tokens: i64,
        dtype: Dtype,
    ) -> Result<grass_projection> {
        let sel = cfg.selection()?;
        let m = positive("m", m)?;
        let n = positive("n", n)?;
        product("m * n * 4 bytes", &[m, n, 4])?;
        let p = Projected::new(m, n, side(cfg.side)?);
        sel.validate(p.d)
            .map_err(|e| crate::Error::new(e.kind, format!("config->{}", e.message)))?;
        let b = positive("max_tokens", max_tokens)?;
        product("max_tokens * max(m, n) * 4 bytes", &[b, m.max(n), 4])?;
        let r = sel.rank;
        let ws_bytes = crate::ffi::args::need(
            c.scores_workspace_size(&p, b, dtype)
                .max(c.select_workspace_size(p.d, r))
                .max(c.sparse_grad_workspace_size(&p, b, r, dtype)),
        )?;
        Ok(grass_projection {
            ctx: c,
            sel,
            p,
            dtype,
            max_tokens: b,
            refresh_every: cfg.refresh_every as u64,
            indices: c.alloc(r * 4)?,
            prev_indices: c.alloc(r * 4)?,
            scales: c.alloc(r * 4)?,
            scores: c.alloc(p.d * 4)?,
            ws: c.alloc(ws_bytes)?,
            ws_bytes,
            refresh_count: 0,
            steps_since_refresh: 0,
            has_selection: false,
            has_prev: false,
        })
    }

    /// Bytes of context memory the projection owns.
    pub(crate) fn memory_bytes(&self) -> usize {
        [
            &self.indices,
            &self.prev_indices,
            &self.scales,
            &self.scores,
            &self.ws,
        ]
        .iter()
        .map(|b| b.bytes())
        .sum()
    }

    fn scratch(&self) -> Scratch {
        Scratch {
            addr: self.ws.addr(),
            bytes: self.ws_bytes,
        }
    }

    pub(crate) fn refresh_due(&self) -> bool {
        !self.has_selection || self.steps_since_refresh >= self.refresh_every
    }

    pub(crate) fn tokens(&self, b: i64) -> Result<usize> {
        let b = positive("b", b)?;
        ensure!(
            b <= self.max_tokens,
            InvalidValue,
            "b = {b} exceeds max_tokens = {} given at creation",
            self.max_tokens
        );
        Ok(b)
    }

    pub(crate) fn scores(
        &self,
        b: i64,
        x: *const c_void,
        dy: *const c_void,
        scores: usize,
        stream: usize,
    ) -> Result<()> {
        let b = self.tokens(b)?;
        let a = ScoresArgs {
            p: self.p,
            b,
            dtype: self.dtype,
            x: req_typed("x", x, self.dtype)?,
            dy: req_typed("dy", dy, self.dtype)?,
            scores,
            ws: self.scratch(),
            stream,
        };
        self.context().row_scores(&a)
    }

    pub(crate) fn refresh_from(&mut self, scores: usize, stream: usize) -> Result<()> {
        std::mem::swap(&mut self.indices, &mut self.prev_indices);
        let a = SelectArgs {
            sel: self.sel,
            d: self.p.d,
            refresh_index: self.refresh_count,
            refresh_index_at: 0,
            scores,
            indices: self.indices.addr(),
            scales: self.scales.addr(),
            ws: self.scratch(),
            stream,
        };
        if let Err(e) = self.context().select(&a) {
            std::mem::swap(&mut self.indices, &mut self.prev_indices);
            return Err(e);
        }
        self.has_prev = self.has_selection;
        self.has_selection = true;
        self.refresh_count += 1;
        self.steps_since_refresh = 0;
        Ok(())
    }

    pub(crate) fn refresh(
        &mut self,
        b: i64,
        x: *const c_void,
        dy: *const c_void,
        stream: usize,
    ) -> Result<()> {
        self.scores(b, x, dy, self.scores.addr(), stream)?;
        self.refresh_from(self.scores.addr(), stream)
    }

    pub(crate) fn compress(
        &self,
        b: i64,
        x: *const c_void,
        dy: *const c_void,
        g: usize,
        accumulate: bool,
        stream: usize,
    ) -> Result<()> {
        ensure!(
            self.has_selection,
            BadState,
            "the projection has no selection yet: refresh it first"
        );
        let b = self.tokens(b)?;
        let a = SparseGradArgs {
            p: self.p,
            b,
            r: self.sel.rank,
            dtype: self.dtype,
            x: req_typed("x", x, self.dtype)?,
            dy: req_typed("dy", dy, self.dtype)?,
            indices: self.indices.addr(),
            scales: self.scales.addr(),
            g,
            accumulate,
            ws: self.scratch(),
            stream,
        };
        self.context().sparse_grad(&a)
    }
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
        let p = grass_projection::new(c, &cfg, m, n, max_tokens, dt)?;
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
        let s = req("scores", scores)?;
        p.scores(b, x, dy, s, stream as usize)
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
        handle_mut("projection", projection)?.refresh(b, x, dy, stream as usize)
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
        let s = req("scores", scores)?;
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
        let g = req("g", g)?;
        p.compress(b, x, dy, g, accumulate != 0, stream as usize)
    })
}

/// Pointers (context memory, owned by the projection, valid until it is destroyed; contents
/// change at each refresh) to the rank selected indices and their scales. Either may be NULL.
/// Fails with `GRASS_ERROR_INVALID_STATE` (writing nothing) before the first refresh.
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
