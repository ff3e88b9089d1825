//! Layer 2: an optimizer handle owns M, V, the step counts and (for GRASS layers) its
//! projection and the compressed-gradient accumulator, and checkpoints all of it.

use crate::backend::*;
use crate::context::{grass_context, Buffer};
use crate::core::config::AdamW;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::handles::projection::grass_projection;
use crate::{bail, ensure};

pub(crate) enum Kind {
    Sparse {
        proj: Box<grass_projection>,
        g: Buffer,
        accumulated: u32,
    },
    Dense {
        numel: usize,
        grad_dtype: Dtype,
    },
}

pub struct grass_optimizer {
    pub(crate) ctx: *const grass_context,
    pub(crate) cfg: AdamW,
    pub(crate) w_dtype: Dtype,
    pub(crate) kind: Kind,
    pub(crate) m: Buffer,
    pub(crate) v: Buffer,
    /// i32[1 + counts]: the outcome of the last step (`GRASS_STEP_*`), then the Adam step
    /// counts (one per state row of a GRASS layer, one for a dense parameter).
    pub(crate) counters: Buffer,
    pub(crate) ws: Buffer,
    pub(crate) ws_bytes: usize,
    pub(crate) steps: u64,
}

impl grass_optimizer {
    pub(crate) fn context(&self) -> &grass_context {
        // SAFETY: the context outlives its handles (documented contract of the ABI).
        unsafe { &*self.ctx }
    }

    pub(crate) fn state_elements(&self) -> usize {
        match &self.kind {
            Kind::Sparse { proj, .. } => proj.sel.rank * proj.p.k,
            Kind::Dense { numel, .. } => *numel,
        }
    }

    /// Step counts: one per state row of a GRASS layer, one for a dense parameter.
    pub(crate) fn step_counts(&self) -> usize {
        step_counts(&self.kind)
    }

    pub(crate) fn new(
        c: &grass_context,
        cfg: AdamW,
        w_dtype: Dtype,
        kind: Kind,
    ) -> Result<grass_optimizer> {
        let (elems, ws_bytes) = match &kind {
            Kind::Sparse { proj, .. } => {
                let (r, k) = (proj.sel.rank, proj.p.k);
                (r * k, c.sparse_adamw_workspace_size(&proj.p, r))
            }
            Kind::Dense { numel, .. } => (*numel, c.adamw_workspace_size(*numel)),
        };
        let bytes = elems * cfg.state_dtype.size();
        let counters = c.alloc(4 * (1 + step_counts(&kind)))?;
        Ok(grass_optimizer {
            ctx: c,
            cfg,
            w_dtype,
            kind,
            m: c.alloc(bytes)?,
            v: c.alloc(bytes)?,
            counters,
            ws: c.alloc(ws_bytes)?,
            ws_bytes,
            steps: 0,
        })
    }

    /// Elements of the weight the optimizer updates.
    pub(crate) fn weight_elements(&self) -> usize {
        match &self.kind {
            Kind::Sparse { proj, .. } => proj.p.m * proj.p.n,
            Kind::Dense { numel, .. } => *numel,
        }
    }

    /// The outcome of the last step (`GRASS_STEP_*`).
    pub(crate) fn outcome(&self) -> Buf<i32> {
        self.counters.buf(1)
    }

    /// The Adam step counts: one per state row of a GRASS layer, one for a dense parameter.
    fn step_count_buf(&self) -> Buf<i32> {
        Buf::new(self.counters.addr() + 4, self.step_counts())
    }

    fn state(&self) -> (Tensor, Tensor) {
        let (dtype, n) = (self.cfg.state_dtype, self.state_elements());
        (self.m.tensor(dtype, n), self.v.tensor(dtype, n))
    }

    fn step_buffers(&self, w: Tensor, lr: f32, stream: usize) -> StepBuffers {
        let (m, v) = self.state();
        StepBuffers {
            cfg: self.cfg,
            w,
            m,
            v,
            steps: self.step_count_buf(),
            lr,
            lr_scale: None,
            skipped: Some(self.outcome()),
            ws: self.scratch(),
            stream,
        }
    }

    fn scratch(&self) -> Scratch {
        Scratch {
            addr: self.ws.addr(),
            bytes: self.ws_bytes,
        }
    }

    /// One micro-batch of a GRASS layer (see grass_optimizer_backward).
    pub(crate) fn backward(
        &mut self,
        batch: &Batch,
        scores: Option<Buf<f32>>,
        stream: usize,
    ) -> Result<()> {
        // SAFETY: the context outlives the optimizer (documented contract of the ABI).
        let c = unsafe { &*self.ctx };
        let (cfg, (m, v), row_steps, ws) = (
            self.cfg,
            self.state(),
            self.step_count_buf(),
            self.scratch(),
        );
        let Kind::Sparse {
            proj,
            g,
            accumulated,
        } = &mut self.kind
        else {
            bail!(BadState, "grass_optimizer_backward is for GRASS layers; pass the gradient of a dense parameter to grass_optimizer_step");
        };
        if *accumulated == 0 && proj.refresh_due() {
            match scores {
                Some(s) => proj.refresh_from(s, stream)?,
                None => proj.refresh(batch, stream)?,
            }
            let r = proj.sel.rank;
            let a = StateRefreshArgs {
                cfg,
                k: proj.p.k,
                old_indices: proj.has_prev.then(|| proj.prev_indices.buf(r)),
                new_indices: proj.indices.buf(r),
                m,
                v,
                row_steps,
                ws,
                stream,
            };
            c.state_refresh(&a)?;
        }
        let g = g.buf(proj.sel.rank * proj.p.k);
        proj.compress(batch, g, *accumulated > 0, stream)?;
        *accumulated += 1;
        Ok(())
    }

    /// One AdamW step on `w`; `grad` is the dense parameter's gradient, none for a GRASS
    /// layer (whose accumulated compressed gradient is used and cleared).
    pub(crate) fn step(
        &mut self,
        w: Tensor,
        grad: Option<Tensor>,
        lr: f32,
        stream: usize,
    ) -> Result<()> {
        let buf = self.step_buffers(w, lr, stream);
        // SAFETY: the context outlives the optimizer (documented contract of the ABI).
        let c = unsafe { &*self.ctx };
        match (&mut self.kind, grad) {
            (
                Kind::Sparse {
                    proj,
                    g,
                    accumulated,
                },
                None,
            ) => {
                ensure!(*accumulated > 0, BadState, "no gradient accumulated since the last step: call grass_optimizer_backward first");
                let (indices, scales) = proj.selection();
                let a = SparseAdamwStepArgs {
                    p: proj.p,
                    indices,
                    scales,
                    g: g.buf(proj.sel.rank * proj.p.k),
                    buf,
                };
                c.sparse_adamw_step(&a)?;
                *accumulated = 0;
                proj.steps_since_refresh += 1;
            }
            (Kind::Dense { .. }, Some(grad)) => {
                c.adamw_step(&AdamwStepArgs { grad, buf })?;
            }
            _ => bail!(
                Internal,
                "grass_optimizer_step: gradient does not match the kind"
            ),
        }
        self.steps += 1;
        Ok(())
    }
}

fn step_counts(kind: &Kind) -> usize {
    match kind {
        Kind::Sparse { proj, .. } => proj.sel.rank,
        Kind::Dense { .. } => 1,
    }
}
