//! Contexts: which device the pointers of a call live on, and how handles get memory there.

#![allow(non_camel_case_types)]

use std::sync::{Mutex, MutexGuard};

use crate::backend::*;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::cpu;
use crate::{bail, cuda};

pub(crate) enum Backend {
    Cpu,
    Cuda(Box<cuda::Device>),
}

/// A device: CPU (host pointers) or one CUDA device (device pointers, the caller's streams),
/// and the one workspace every handle made on it runs its ops in.
pub struct grass_context {
    /// Declared (and so dropped) before the backend it was allocated from.
    workspace: Mutex<SharedWorkspace>,
    pub(crate) backend: Backend,
}

/// The workspace of a context's handles. Handle calls hold its lock while they run (CPU) or
/// enqueue their work (CUDA), so they never overlap on it.
struct SharedWorkspace {
    buf: Option<Buffer>,
    /// The stream of the last handle call (CUDA): a call on another stream waits for the work
    /// queued before the device's mark (`mark_workspace_use`) ...
    stream: Option<usize>,
    /// ... once a call has set one (calls under graph capture set none).
    marked: bool,
}

/// Memory owned by a handle, in its context's memory space.
pub(crate) struct Buffer {
    mem: Mem,
    bytes: usize,
}

enum Mem {
    Host(Vec<u64>),
    Cuda(cuda::DeviceBuffer),
}

impl Buffer {
    pub(crate) fn addr(&self) -> usize {
        match &self.mem {
            Mem::Host(v) => v.as_ptr() as usize,
            Mem::Cuda(b) => b.addr(),
        }
    }

    /// Bytes actually held (host buffers are whole 8-byte words).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The first `len` elements of `T` of this buffer.
    pub(crate) fn buf<T>(&self, len: usize) -> Buf<T> {
        assert!(
            len * std::mem::size_of::<T>() <= self.bytes,
            "buffer overrun"
        );
        Buf::new(self.addr(), len)
    }

    /// The first `len` elements of `dtype` of this buffer.
    pub(crate) fn tensor(&self, dtype: Dtype, len: usize) -> Tensor {
        assert!(len * dtype.size() <= self.bytes, "buffer overrun");
        Tensor::new(self.addr(), len, dtype)
    }
}

impl grass_context {
    pub(crate) fn new(backend: Backend) -> grass_context {
        grass_context {
            backend,
            workspace: Mutex::new(SharedWorkspace {
                buf: None,
                stream: None,
                marked: false,
            }),
        }
    }

    pub(crate) fn is_cuda(&self) -> bool {
        matches!(self.backend, Backend::Cuda(_))
    }

    /// Bytes an allocation of `bytes` holds (host buffers are whole 8-byte words, at least one).
    pub(crate) fn held_bytes(&self, bytes: usize) -> usize {
        match &self.backend {
            Backend::Cpu => bytes.div_ceil(8).max(1) * 8,
            Backend::Cuda(_) => bytes,
        }
    }

    /// Bytes the shared workspace holds once grown to `bytes` (none is allocated for 0).
    pub(crate) fn held_workspace(&self, bytes: usize) -> usize {
        if bytes == 0 {
            0
        } else {
            self.held_bytes(bytes)
        }
    }

    fn shared(&self) -> MutexGuard<'_, SharedWorkspace> {
        // a panic inside a call (caught at the boundary) leaves the workspace usable
        self.workspace.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes the shared workspace holds now.
    pub(crate) fn workspace_bytes(&self) -> usize {
        self.shared().buf.as_ref().map_or(0, Buffer::bytes)
    }

    /// Grows the shared workspace to at least `bytes` (at handle creation, not on the hot
    /// path). The old buffer goes only after the work queued on it is done. Sizes above 2^63 - 1
    /// bytes (saturated size formulas) fail as in every workspace query.
    pub(crate) fn reserve_workspace(&self, bytes: usize) -> Result<()> {
        let bytes = crate::core::scratch::need(bytes)?;
        let mut w = self.shared();
        if bytes == 0 || w.buf.as_ref().is_some_and(|b| b.bytes() >= bytes) {
            return Ok(());
        }
        if let (Backend::Cuda(d), true) = (&self.backend, w.marked) {
            d.sync_workspace()?;
        }
        // free first: the old and the new buffer never coexist
        w.buf = None;
        w.buf = Some(self.alloc(bytes)?);
        Ok(())
    }

    /// Runs one handle call with the shared workspace on `stream`; the calls of the context's
    /// handles run (CPU) or enqueue (CUDA) one at a time, and on CUDA a call on another stream
    /// than the last one first makes its stream wait for the work queued before.
    pub(crate) fn with_workspace<T>(
        &self,
        stream: usize,
        f: impl FnOnce(Scratch) -> Result<T>,
    ) -> Result<T> {
        let mut w = self.shared();
        if let Backend::Cuda(d) = &self.backend {
            if w.marked && w.stream.is_some_and(|prev| prev != stream) {
                d.wait_workspace(stream)?;
            }
        }
        let ws = w
            .buf
            .as_ref()
            .map_or(Scratch { addr: 0, bytes: 0 }, |b| Scratch {
                addr: b.addr(),
                bytes: b.bytes(),
            });
        let out = f(ws);
        if let Backend::Cuda(d) = &self.backend {
            w.stream = Some(stream);
            if d.mark_workspace_use(stream)? {
                w.marked = true;
            }
        }
        out
    }

    /// Enqueues a copy of `bytes` bytes between two non-overlapping regions of context memory.
    pub(crate) fn copy(&self, dst: usize, src: usize, bytes: usize, stream: usize) -> Result<()> {
        match &self.backend {
            // SAFETY: both regions hold `bytes` bytes and do not overlap (the caller's contract).
            Backend::Cpu => unsafe {
                std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes)
            },
            Backend::Cuda(d) => d.copy(dst, src, bytes, stream)?,
        }
        Ok(())
    }

    /// Zero-filled memory of `bytes` bytes (at least 8-byte aligned).
    pub(crate) fn alloc(&self, bytes: usize) -> Result<Buffer> {
        match &self.backend {
            Backend::Cpu => {
                let words = self.held_bytes(bytes) / 8;
                let mut v = Vec::new();
                if v.try_reserve_exact(words).is_err() {
                    bail!(OutOfMemory, "cannot allocate {bytes} bytes of host memory");
                }
                v.resize(words, 0u64);
                Ok(Buffer {
                    mem: Mem::Host(v),
                    bytes: words * 8,
                })
            }
            Backend::Cuda(d) => Ok(Buffer {
                mem: Mem::Cuda(d.alloc_zeroed(bytes)?),
                bytes,
            }),
        }
    }

    /// Copies device memory to the host and waits for it (synchronizes `stream` on CUDA).
    pub(crate) fn download(&self, addr: usize, dst: &mut [u8], stream: usize) -> Result<()> {
        match &self.backend {
            // SAFETY: `addr` is a region of at least dst.len() bytes owned by the caller.
            Backend::Cpu => unsafe {
                std::ptr::copy_nonoverlapping(addr as *const u8, dst.as_mut_ptr(), dst.len())
            },
            Backend::Cuda(d) => d.download(addr, dst, stream)?,
        }
        Ok(())
    }

    /// Copies host memory to the device and waits for it (synchronizes `stream` on CUDA).
    pub(crate) fn upload(&self, addr: usize, src: &[u8], stream: usize) -> Result<()> {
        match &self.backend {
            // SAFETY: `addr` is a region of at least src.len() bytes owned by the caller.
            Backend::Cpu => unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, src.len())
            },
            Backend::Cuda(d) => d.upload(addr, src, stream)?,
        }
        Ok(())
    }

    pub(crate) fn scores_workspace_size(
        &self,
        p: &crate::core::shape::Projected,
        b: usize,
        dtype: crate::core::dtype::Dtype,
    ) -> usize {
        match &self.backend {
            Backend::Cpu => crate::cpu::scores_workspace_size(p, b, dtype),
            Backend::Cuda(d) => d.scores_workspace_size(p, b, dtype),
        }
    }

    pub(crate) fn select_workspace_size(&self, d: usize, r: usize) -> usize {
        match &self.backend {
            Backend::Cpu => crate::core::select::workspace_size(d, r),
            Backend::Cuda(dev) => dev.select_workspace_size(d, r),
        }
    }

    pub(crate) fn sparse_grad_workspace_size(
        &self,
        p: &crate::core::shape::Projected,
        b: usize,
        r: usize,
        dtype: crate::core::dtype::Dtype,
    ) -> usize {
        match &self.backend {
            Backend::Cpu => crate::cpu::sparse_grad_workspace_size(p, b, r, dtype),
            Backend::Cuda(d) => d.sparse_grad_workspace_size(p, b, r, dtype),
        }
    }

    pub(crate) fn sparse_adamw_workspace_size(
        &self,
        p: &crate::core::shape::Projected,
        r: usize,
    ) -> usize {
        match &self.backend {
            Backend::Cpu => 0,
            Backend::Cuda(d) => d.sparse_adamw_workspace_size(p, r),
        }
    }

    pub(crate) fn adamw_workspace_size(&self, numel: usize) -> usize {
        match &self.backend {
            Backend::Cpu => 0,
            Backend::Cuda(d) => d.adamw_workspace_size(numel),
        }
    }

    /// Scratch of a state refresh: none, on either backend and in either mode (carry moves
    /// the kept rows in place). The query stays in the ABI so that a refresh that needs some
    /// can come without breaking callers.
    pub(crate) fn state_refresh_workspace_size(&self) -> usize {
        0
    }

    pub(crate) fn row_scores(&self, a: &RowScoresArgs) -> Result<()> {
        match &self.backend {
            Backend::Cpu => cpu::ops::row_scores(a),
            Backend::Cuda(d) => d.row_scores(a),
        }
    }

    pub(crate) fn select(&self, a: &SelectArgs) -> Result<()> {
        match &self.backend {
            Backend::Cpu => cpu::ops::select(a),
            Backend::Cuda(d) => d.select(a),
        }
    }

    pub(crate) fn sparse_grad(&self, a: &SparseGradArgs) -> Result<()> {
        match &self.backend {
            Backend::Cpu => cpu::ops::sparse_grad(a),
            Backend::Cuda(d) => d.sparse_grad(a),
        }
    }

    pub(crate) fn sparse_adamw_step(&self, a: &SparseAdamwStepArgs) -> Result<()> {
        match &self.backend {
            Backend::Cpu => cpu::ops::sparse_adamw_step(a),
            Backend::Cuda(d) => d.sparse_adamw_step(a),
        }
    }

    pub(crate) fn residual_step(&self, a: &ResidualStepArgs) -> Result<()> {
        match &self.backend {
            Backend::Cpu => cpu::ops::residual_step(a),
            Backend::Cuda(d) => d.residual_step(a),
        }
    }

    /// Scratch of a residual step: the row scores' chunks of G (plus, on CUDA, the finite
    /// check's header).
    pub(crate) fn residual_workspace_size(
        &self,
        p: &crate::core::shape::Projected,
        b: usize,
        dtype: crate::core::dtype::Dtype,
    ) -> usize {
        match &self.backend {
            Backend::Cpu => crate::cpu::scores_workspace_size(p, b, dtype),
            Backend::Cuda(d) => d.residual_workspace_size(p),
        }
    }

    pub(crate) fn adamw_step(&self, a: &AdamwStepArgs) -> Result<()> {
        match &self.backend {
            Backend::Cpu => cpu::ops::adamw_step(a),
            Backend::Cuda(d) => d.adamw_step(a),
        }
    }

    /// `out[0] = ‖g‖²`, enqueued on `stream` (no host synchronization on CUDA).
    pub(crate) fn sq_norm(&self, g: Tensor, out: Buf<f32>, stream: usize) -> Result<()> {
        match &self.backend {
            Backend::Cpu => cpu::ops::sq_norm(g, out),
            Backend::Cuda(d) => d.sq_norm(g, out, stream),
        }
    }

    pub(crate) fn state_refresh(&self, a: &StateRefreshArgs) -> Result<()> {
        match &self.backend {
            Backend::Cpu => cpu::ops::state_refresh(a),
            Backend::Cuda(d) => d.state_refresh(a),
        }
    }
}
