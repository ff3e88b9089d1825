//! Layer 2: a projection handle owns σ, ρ, the refresh counter and the generator key of one
//! layer, plus the scratch its calls need (sized at creation for `max_tokens`).

use std::ffi::c_void;

use crate::backend::*;
use crate::context::{grass_context, Buffer};
use crate::core::config::Selection;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::{positive, product, Projected};
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
    ws: Buffer,
    ws_bytes: usize,
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
