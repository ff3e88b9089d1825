//! Layer 2: a projection handle owns σ, ρ, the refresh counter and the generator key of one
//! layer. Its calls run in the context's shared workspace, grown at creation to what they
//! need at `max_tokens`.

use std::ffi::c_void;

use crate::backend::*;
use crate::core::config::Selection;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::{positive, product, Projected};
use crate::context::{grass_context, Buffer};
use crate::handles::memory::{projection_workspace, sparse_buffers};
use crate::ensure;
use crate::ffi::args::req_typed;
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
    pub(crate) refresh_count: u32,
    pub(crate) steps_since_refresh: u64,
    pub(crate) has_selection: bool,
    pub(crate) has_prev: bool,
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
        let p = Projected::new(m, n, side(cfg.side)?);
        sel.validate(p.d)
            .map_err(|e| crate::Error::new(e.kind, format!("config->{}", e.message)))?;
        let b = positive("max_tokens", max_tokens)?;
        product("max_tokens * max(m, n)", &[b, m.max(n), 4])?;
        let r = sel.rank;
        c.reserve_workspace(projection_workspace(c, &p, b, r, dtype))?;
        let sizes = sparse_buffers(&p, r, Dtype::F32);
        Ok(grass_projection {
            ctx: c,
            sel,
            p,
            dtype,
            max_tokens: b,
            refresh_every: cfg.refresh_every as u64,
            indices: c.alloc(sizes.selection)?,
            prev_indices: c.alloc(sizes.selection)?,
            scales: c.alloc(sizes.selection)?,
            scores: c.alloc(sizes.scores)?,
            refresh_count: 0,
            steps_since_refresh: 0,
            has_selection: false,
            has_prev: false,
        })
    }

    /// Bytes of context memory the projection owns (its workspace is the context's).
    pub(crate) fn memory_bytes(&self) -> usize {
        [&self.indices, &self.prev_indices, &self.scales, &self.scores]
            .iter()
            .map(|b| b.bytes())
            .sum()
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
        let (x, dy) = (
            req_typed("x", x, self.dtype)?,
            req_typed("dy", dy, self.dtype)?,
        );
        let c = self.context();
        c.with_workspace(stream, |ws| {
            c.row_scores(&ScoresArgs {
                p: self.p,
                b,
                dtype: self.dtype,
                x,
                dy,
                scores,
                ws,
                stream,
            })
        })
    }

    /// Selects new rows into the same buffers (their addresses are promised to callers for
    /// the handle's life), keeping the previous indices aside for the state refresh.
    pub(crate) fn refresh_from(&mut self, scores: usize, stream: usize) -> Result<()> {
        let c = self.context();
        let (idx, prev, bytes) = (
            self.indices.addr(),
            self.prev_indices.addr(),
            self.sel.rank * 4,
        );
        c.with_workspace(stream, |ws| {
            c.copy(prev, idx, bytes, stream)?;
            let a = SelectArgs {
                sel: self.sel,
                d: self.p.d,
                refresh_index: self.refresh_count,
                refresh_index_at: 0,
                scores,
                indices: idx,
                scales: self.scales.addr(),
                ws,
                stream,
            };
            c.select(&a).inspect_err(|_| {
                // a failed refresh changes nothing: the previous rows come back
                let _ = c.copy(idx, prev, bytes, stream);
            })
        })?;
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
        let (x, dy) = (
            req_typed("x", x, self.dtype)?,
            req_typed("dy", dy, self.dtype)?,
        );
        let c = self.context();
        c.with_workspace(stream, |ws| {
            c.sparse_grad(&SparseGradArgs {
                p: self.p,
                b,
                r: self.sel.rank,
                dtype: self.dtype,
                x,
                dy,
                indices: self.indices.addr(),
                scales: self.scales.addr(),
                g,
                accumulate,
                ws,
                stream,
            })
        })
    }
}

