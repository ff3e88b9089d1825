//! Layer 2: a projection handle owns σ, ρ, the refresh counter and the generator key of one
//! layer, plus the scratch its calls need (sized at creation for `max_tokens`).

use crate::backend::*;
use crate::context::{grass_context, Buffer};
use crate::core::config::Selection;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::Projected;
use crate::ensure;

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

    /// A projection of checked options and shape (see `ffi::projection::projection_shape`)
    /// for batches of at most `b` tokens of `dtype`; allocates its buffers and scratch.
    pub(crate) fn new(
        c: &grass_context,
        sel: Selection,
        p: Projected,
        refresh_every: u64,
        b: usize,
        dtype: Dtype,
    ) -> Result<grass_projection> {
        let r = sel.rank;
        let ws_bytes = c
            .scores_workspace_size(&p, b, dtype)
            .max(c.select_workspace_size(p.d, r))
            .max(c.sparse_grad_workspace_size(&p, b, r, dtype));
        Ok(grass_projection {
            ctx: c,
            sel,
            p,
            dtype,
            max_tokens: b,
            refresh_every,
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

    /// The selected indices and their scales.
    pub(crate) fn selection(&self) -> (Buf<i32>, Buf<f32>) {
        (
            self.indices.buf(self.sel.rank),
            self.scales.buf(self.sel.rank),
        )
    }

    /// Writes this batch's d row scores to `scores`.
    pub(crate) fn scores(&self, batch: &Batch, scores: Buf<f32>, stream: usize) -> Result<()> {
        let a = RowScoresArgs {
            p: self.p,
            batch: *batch,
            scores,
            ws: self.scratch(),
            stream,
        };
        self.context().row_scores(&a)
    }

    pub(crate) fn refresh_from(&mut self, scores: Buf<f32>, stream: usize) -> Result<()> {
        std::mem::swap(&mut self.indices, &mut self.prev_indices);
        let (indices, scales) = self.selection();
        let a = SelectArgs {
            sel: self.sel,
            refresh_index: self.refresh_count,
            refresh_index_at: None,
            scores,
            indices,
            scales,
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

    pub(crate) fn refresh(&mut self, batch: &Batch, stream: usize) -> Result<()> {
        let scores = self.scores.buf(self.p.d);
        self.scores(batch, scores, stream)?;
        self.refresh_from(scores, stream)
    }

    pub(crate) fn compress(
        &self,
        batch: &Batch,
        g: Buf<f32>,
        accumulate: bool,
        stream: usize,
    ) -> Result<()> {
        ensure!(
            self.has_selection,
            BadState,
            "the projection has no selection yet: refresh it first"
        );
        let (indices, scales) = self.selection();
        let a = SparseGradArgs {
            p: self.p,
            batch: *batch,
            indices,
            scales,
            g,
            accumulate,
            ws: self.scratch(),
            stream,
        };
        self.context().sparse_grad(&a)
    }
}
