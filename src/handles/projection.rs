//! Layer 2: a projection handle owns σ, ρ, the refresh counter and the generator key of one
//! layer. Its calls run in the context's shared workspace, grown at creation to what they
//! need at `max_tokens`.

use crate::backend::*;
use crate::context::{grass_context, Buffer};
use crate::core::config::Selection;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::Projected;
use crate::ensure;
use crate::handles::memory::{projection_workspace, sparse_buffers};

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

    /// A projection of checked options and shape (see `ffi::projection::projection_shape`)
    /// for batches of at most `b` tokens of `dtype`; allocates its buffers and grows the
    /// context's workspace to what its calls need.
    pub(crate) fn new(
        c: &grass_context,
        sel: Selection,
        p: Projected,
        refresh_every: u64,
        b: usize,
        dtype: Dtype,
    ) -> Result<grass_projection> {
        let r = sel.rank;
        c.reserve_workspace(projection_workspace(c, &p, b, r, dtype))?;
        let sizes = sparse_buffers(&p, r, Dtype::F32);
        Ok(grass_projection {
            ctx: c,
            sel,
            p,
            dtype,
            max_tokens: b,
            refresh_every,
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
        [
            &self.indices,
            &self.prev_indices,
            &self.scales,
            &self.scores,
        ]
        .iter()
        .map(|b| b.bytes())
        .sum()
    }

    /// The rank equals the projected dimension: no memory saving.
    pub(crate) fn is_full_rank(&self) -> bool {
        self.sel.rank == self.p.d
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
        let c = self.context();
        c.with_workspace(stream, |ws| {
            c.row_scores(&RowScoresArgs {
                p: self.p,
                batch: *batch,
                scores,
                ws,
                stream,
            })
        })
    }

    /// Selects new rows into the same buffers (their addresses are promised to callers for
    /// the handle's life), keeping the previous indices aside for the state refresh.
    pub(crate) fn refresh_from(&mut self, scores: Buf<f32>, stream: usize) -> Result<()> {
        let c = self.context();
        let (indices, scales) = self.selection();
        let (idx, prev, bytes) = (
            self.indices.addr(),
            self.prev_indices.addr(),
            self.sel.rank * 4,
        );
        c.with_workspace(stream, |ws| {
            c.copy(prev, idx, bytes, stream)?;
            let a = SelectArgs {
                sel: self.sel,
                refresh_index: self.refresh_count,
                refresh_index_at: None,
                scores,
                indices,
                scales,
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
        let c = self.context();
        c.with_workspace(stream, |ws| {
            c.sparse_grad(&SparseGradArgs {
                p: self.p,
                batch: *batch,
                indices,
                scales,
                g,
                accumulate,
                ws,
                stream,
            })
        })
    }
}
