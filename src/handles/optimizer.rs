//! Layer 2: an optimizer handle owns M, V, the step counts and (for GRASS layers) its
//! projection and the compressed-gradient accumulator, and checkpoints all of it.

use std::ffi::c_void;

use crate::backend::*;
use crate::context::{grass_context, Buffer};
use crate::core::config::{check_lr, AdamW};
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::ffi::args::req_typed;
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
                (r * k, c.sparse_step_workspace_size(&proj.p, r))
            }
            Kind::Dense { numel, .. } => (*numel, c.dense_step_workspace_size(*numel)),
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

    fn step_buffers(&self, w: usize, lr: f32, stream: usize) -> StepBuffers {
        let counters = self.counters.addr();
        StepBuffers {
            cfg: self.cfg,
            w_dtype: self.w_dtype,
            w,
            m: self.m.addr(),
            v: self.v.addr(),
            steps: counters + 4,
            lr,
            lr_scale: 0,
            skipped: counters,
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

    pub(crate) fn backward(
        &mut self,
        b: i64,
        x: *const c_void,
        dy: *const c_void,
        scores: usize,
        stream: usize,
    ) -> Result<()> {
        // SAFETY: the context outlives the optimizer (documented contract of the ABI).
        let c = unsafe { &*self.ctx };
        let (cfg, m, v, row_steps, ws) = (
            self.cfg,
            self.m.addr(),
            self.v.addr(),
            self.counters.addr() + 4,
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
        // validate everything the calls below use before the refresh changes anything
        proj.tokens(b)?;
        req_typed("x", x, proj.dtype)?;
        req_typed("dy", dy, proj.dtype)?;
        if *accumulated == 0 && proj.refresh_due() {
            if scores != 0 {
                proj.refresh_from(scores, stream)?;
            } else {
                proj.refresh(b, x, dy, stream)?;
            }
            let a = RefreshArgs {
                mode: cfg.refresh_mode,
                state_dtype: cfg.state_dtype,
                r: proj.sel.rank,
                k: proj.p.k,
                old_indices: if proj.has_prev {
                    proj.prev_indices.addr()
                } else {
                    0
                },
                new_indices: proj.indices.addr(),
                m,
                v,
                row_steps,
                ws,
                stream,
            };
            c.state_refresh(&a)?;
        }
        proj.compress(b, x, dy, g.addr(), *accumulated > 0, stream)?;
        *accumulated += 1;
        Ok(())
    }

    pub(crate) fn step(
        &mut self,
        w: *mut c_void,
        grad: *const c_void,
        lr: f32,
        stream: usize,
    ) -> Result<()> {
        check_lr(lr)?;
        let w = req_typed("w", w, self.w_dtype)?;
        let buf = self.step_buffers(w, lr, stream);
        // SAFETY: the context outlives the optimizer (documented contract of the ABI).
        let c = unsafe { &*self.ctx };
        match &mut self.kind {
            Kind::Sparse {
                proj,
                g,
                accumulated,
            } => {
                ensure!(grad.is_null(), InvalidValue, "grad must be NULL for a GRASS layer (its gradient comes from grass_optimizer_backward)");
                ensure!(*accumulated > 0, BadState, "no gradient accumulated since the last step: call grass_optimizer_backward first");
                let a = SparseStepArgs {
                    p: proj.p,
                    r: proj.sel.rank,
                    indices: proj.indices.addr(),
                    scales: proj.scales.addr(),
                    g: g.addr(),
                    buf,
                };
                c.sparse_step(&a)?;
                *accumulated = 0;
                proj.steps_since_refresh += 1;
            }
            Kind::Dense { numel, grad_dtype } => {
                let a = DenseStepArgs {
                    numel: *numel,
                    grad_dtype: *grad_dtype,
                    grad: req_typed("grad", grad, *grad_dtype)?,
                    buf,
                };
                c.dense_step(&a)?;
            }
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
