//! Layer 2: an optimizer handle owns M, V, the step counts and (for GRASS layers) its
//! projection and the compressed-gradient accumulator, and checkpoints all of it.

use crate::backend::*;
use crate::context::{grass_context, Buffer};
use crate::core::config::AdamW;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::handles::memory::{
    dense_buffers, dense_optimizer_workspace, sparse_buffers, sparse_optimizer_workspace,
};
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
        /// Recorded in checkpoints so that dense parameters of one size can be told apart
        /// (`grass_optimizer_set_layer_id`); 0 until set.
        layer_id: u32,
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
        let state = cfg.state_dtype;
        let ((moment, counters), ws) = match &kind {
            Kind::Sparse { proj, .. } => {
                let (p, r) = (&proj.p, proj.sel.rank);
                let s = sparse_buffers(p, r, state);
                let ws = sparse_optimizer_workspace(c, p, proj.max_tokens, r, proj.dtype);
                ((s.moment, s.counters), ws)
            }
            Kind::Dense { numel, .. } => (
                dense_buffers(*numel, state),
                dense_optimizer_workspace(c, *numel),
            ),
        };
        c.reserve_workspace(ws)?;
        Ok(grass_optimizer {
            ctx: c,
            cfg,
            w_dtype,
            kind,
            m: c.alloc(moment)?,
            v: c.alloc(moment)?,
            counters: c.alloc(counters)?,
            steps: 0,
        })
    }

    /// Bytes of context memory the optimizer owns, with its projection and accumulator (the
    /// workspace is the context's).
    pub(crate) fn memory_bytes(&self) -> usize {
        let own: usize = [&self.m, &self.v, &self.counters]
            .iter()
            .map(|b| b.bytes())
            .sum();
        match &self.kind {
            Kind::Sparse { proj, g, .. } => own + g.bytes() + proj.memory_bytes(),
            Kind::Dense { .. } => own,
        }
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

    fn step_buffers(
        &self,
        w: Tensor,
        step: StepScalars,
        ws: Scratch,
        stream: usize,
    ) -> StepBuffers {
        let (m, v) = self.state();
        StepBuffers {
            cfg: self.cfg,
            w,
            m,
            v,
            steps: self.step_count_buf(),
            lr: step.lr,
            lr_scale: None,
            grad_scale: step.grad_scale,
            skipped: Some(self.outcome()),
            ws,
            stream,
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
        let (cfg, (m, v), row_steps) = (self.cfg, self.state(), self.step_count_buf());
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
            let (k, old_indices, new_indices) = (
                proj.p.k,
                proj.has_prev.then(|| proj.prev_indices.buf(r)),
                proj.indices.buf(r),
            );
            c.with_workspace(stream, |ws| {
                c.state_refresh(&StateRefreshArgs {
                    mode: cfg.refresh_mode,
                    k,
                    old_indices,
                    new_indices,
                    m,
                    v,
                    row_steps,
                    ws,
                    stream,
                })
            })?;
        }
        let g = g.buf(proj.sel.rank * proj.p.k);
        proj.compress(batch, g, *accumulated > 0, stream)?;
        *accumulated += 1;
        Ok(())
    }

    /// The squared Frobenius norm, into `out` (one f32 in context memory), of what the next
    /// step would use before its gradient scale: a GRASS layer's accumulated compressed
    /// gradient (`grad` none), or a dense parameter's `grad`.
    pub(crate) fn grad_sq_norm(
        &self,
        grad: Option<Tensor>,
        out: Buf<f32>,
        stream: usize,
    ) -> Result<()> {
        let c = self.context();
        let g = match (&self.kind, grad) {
            (
                Kind::Sparse {
                    proj,
                    g,
                    accumulated,
                },
                None,
            ) => {
                ensure!(*accumulated > 0, BadState, "no gradient accumulated since the last step: call grass_optimizer_backward first");
                g.tensor(Dtype::F32, proj.sel.rank * proj.p.k)
            }
            (Kind::Dense { .. }, Some(grad)) => grad,
            _ => bail!(
                Internal,
                "grass_optimizer_grad_sq_norm: gradient does not match the kind"
            ),
        };
        c.with_workspace(stream, |_| c.sq_norm(g, out, stream))
    }

    /// One AdamW step on `w`; `grad` is the dense parameter's gradient, none for a GRASS
    /// layer (whose accumulated compressed gradient is used and cleared). The step runs on
    /// `step.grad_scale` times the gradient.
    pub(crate) fn step(
        &mut self,
        w: Tensor,
        grad: Option<Tensor>,
        step: StepScalars,
        stream: usize,
    ) -> Result<()> {
        // SAFETY: the context outlives the optimizer (documented contract of the ABI).
        let c = unsafe { &*self.ctx };
        c.with_workspace(stream, |ws| self.step_in(c, w, grad, step, ws, stream))?;
        self.steps += 1;
        Ok(())
    }

    /// The compressed step of a GRASS layer, then the residual step of the rows it leaves out
    /// from `batch` (see grass_optimizer_step_residual), gated on the first's outcome.
    pub(crate) fn step_residual(
        &mut self,
        w: Tensor,
        batch: &Batch,
        step: StepScalars,
        residual_scale: f32,
        stream: usize,
    ) -> Result<()> {
        // SAFETY: the context outlives the optimizer (documented contract of the ABI).
        let c = unsafe { &*self.ctx };
        let (alpha, outcome) = (self.cfg.alpha, self.outcome());
        c.with_workspace(stream, |ws| {
            self.step_in(c, w, None, step, ws, stream)?;
            let Kind::Sparse { proj, .. } = &self.kind else {
                bail!(Internal, "grass_optimizer_step_residual: not a GRASS layer");
            };
            if step.grad_scale == 0.0 {
                return Ok(());
            }
            c.residual_step(&ResidualStepArgs {
                p: proj.p,
                batch: *batch,
                indices: proj.selection().0,
                w,
                alpha,
                residual_scale,
                lr: step.lr,
                lr_scale: None,
                skipped: Some(outcome),
                ws,
                stream,
            })
        })?;
        self.steps += 1;
        Ok(())
    }

    fn step_in(
        &mut self,
        c: &grass_context,
        w: Tensor,
        grad: Option<Tensor>,
        step: StepScalars,
        ws: Scratch,
        stream: usize,
    ) -> Result<()> {
        let buf = self.step_buffers(w, step, ws, stream);
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
        Ok(())
    }
}

/// The host scalars of one handle step, checked by the caller: learning rate and gradient
/// scale, both finite and non-negative.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepScalars {
    pub lr: f32,
    pub grad_scale: f32,
}

fn step_counts(kind: &Kind) -> usize {
    match kind {
        Kind::Sparse { proj, .. } => proj.sel.rank,
        Kind::Dense { .. } => 1,
    }
}
