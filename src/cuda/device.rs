//! One GPU: the retained primary context, the kernels compiled for its architecture, the
//! cuBLAS handle, memory owned by handles, and the workspace each op needs.

use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};

use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::scratch::{bytes, Plan};
use crate::core::shape::Projected;
use crate::cuda::blas::{self, Blas};
use crate::cuda::kernels::{Kernels, Modules};
use crate::cuda::launch::{self, check, driver_error};
use crate::cuda::libs::{self, Lib};
use crate::cuda::{compile, probe};
use crate::{bail, ensure};

pub struct Device {
    pub(crate) kernels: Kernels,
    /// Dropped by `Drop for Device`, with the context bound, before the context.
    pub(crate) blas: ManuallyDrop<Blas>,
    /// Keeps the kernels' modules loaded; dropped like `blas`.
    _modules: ManuallyDrop<Modules>,
    arch: (i32, i32),
    /// A `CUevent` (as an address) that orders one stream after another when the context's
    /// shared workspace changes streams; destroyed with the device.
    switch_event: usize,
    /// Released last, after the modules and the cuBLAS handle.
    ctx: ManuallyDrop<Arc<CudaContext>>,
}

/// The calling thread's current context (null when none).
fn current_context() -> Result<sys::CUcontext> {
    let mut c = std::ptr::null_mut();
    // SAFETY: plain out-parameter.
    check("cuCtxGetCurrent", unsafe { sys::cuCtxGetCurrent(&mut c) })?;
    Ok(c)
}

/// Puts back, when dropped, the context that was current on the calling thread when it was
/// made. grass binds its context for the length of a call and no longer: PyTorch and the CUDA
/// runtime take the current context as the current device, so a call with a context of
/// device 1 from a thread on device 0 must not leave that thread on device 1.
#[must_use]
pub(crate) struct Bound {
    prev: sys::CUcontext,
}

impl Bound {
    /// Remembers the current context (restored on drop) without changing it.
    pub fn keep_current() -> Result<Bound> {
        Ok(Bound {
            prev: current_context()?,
        })
    }

    /// Makes `ctx` current until the guard drops.
    pub fn to(ctx: sys::CUcontext) -> Result<Bound> {
        let bound = Bound::keep_current()?;
        if bound.prev != ctx {
            // SAFETY: `ctx` is a live context retained by its owner.
            check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(ctx) })?;
        }
        Ok(bound)
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if current_context().ok() != Some(self.prev) {
            // SAFETY: `prev` was current on this thread when the guard was made (or null,
            // which empties the thread's context stack again).
            unsafe {
                let _ = sys::cuCtxSetCurrent(self.prev);
            }
        }
    }
}

/// Device memory owned by a handle (zero-filled at allocation, freed on drop).
pub struct DeviceBuffer {
    addr: usize,
    /// Dropped by `Drop for DeviceBuffer` while the context is bound (the last reference
    /// releases the primary context, which cudarc does by binding it).
    ctx: ManuallyDrop<Arc<CudaContext>>,
}

impl DeviceBuffer {
    pub fn addr(&self) -> usize {
        self.addr
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let bound = Bound::to(self.ctx.cu_ctx());
        // SAFETY: the address came from cuMemAlloc in this context and is freed once; the
        // context reference is dropped once, here.
        unsafe {
            if bound.is_ok() {
                let _ = result::free_sync(self.addr as sys::CUdeviceptr);
            }
            ManuallyDrop::drop(&mut self.ctx);
        }
        drop(bound);
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Checks everything a CUDA context needs without creating one: the driver with at least one
/// device, NVRTC and cuBLAS. Returns the number of devices.
pub fn available() -> Result<i32> {
    let n = probe()?;
    libs::ensure(Lib::Nvrtc)?;
    libs::ensure(Lib::Cublas)?;
    Ok(n)
}

impl Device {
    /// Retains the primary context of device `ordinal`, compiles every kernel for its exact
    /// architecture (once per process and architecture: `compile::KernelCache`) and creates
    /// the cuBLAS handle. Fails with `CudaUnavailable` when a
    /// driver, device or library is missing.
    pub fn open(ordinal: i32) -> Result<Device> {
        if ordinal < 0 {
            bail!(InvalidValue, "ordinal = {ordinal} must be non-negative");
        }
        let n = available()?;
        if ordinal >= n {
            bail!(
                InvalidValue,
                "ordinal = {ordinal} but only {n} CUDA device(s) exist"
            );
        }
        // Retaining the primary context makes it current; the caller's comes back after.
        match catch_unwind(AssertUnwindSafe(|| {
            let _restore = Bound::keep_current()?;
            Device::open_checked(ordinal)
        })) {
            Ok(r) => r,
            Err(p) => bail!(
                CudaUnavailable,
                "initialising CUDA on device {ordinal} failed inside cudarc: {}",
                panic_text(p)
            ),
        }
    }

    fn open_checked(ordinal: i32) -> Result<Device> {
        let ctx = CudaContext::new(ordinal as usize)
            .map_err(|e| driver_error("retaining the primary context", e))?;
        let arch = ctx
            .compute_capability()
            .map_err(|e| driver_error("cuDeviceGetAttribute(compute capability)", e))?;
        // NVRTC runs once per architecture and process (or not at all, from the disk cache or
        // the prebuilt kernels). Prebuilt CUBINs the driver refuses (made by a newer NVRTC than
        // the driver knows, say) are compiled here instead.
        let cache = compile::KernelCache::global();
        let cubins = cache.get(arch.0, arch.1)?;
        let modules = match Modules::load(&cubins) {
            Err(_) if cache.is_prebuilt(arch.0, arch.1) => {
                cache.refuse_prebuilt(arch.0, arch.1);
                Modules::load(&cache.get(arch.0, arch.1)?)?
            }
            loaded => loaded?,
        };
        let kernels = modules.kernels()?;
        let blas = Blas::new()?;
        let mut event = std::ptr::null_mut();
        // SAFETY: plain out-parameter; the context is current (retaining it made it so).
        check("cuEventCreate", unsafe {
            sys::cuEventCreate(
                &mut event,
                sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32,
            )
        })?;
        Ok(Device {
            kernels,
            blas: ManuallyDrop::new(blas),
            _modules: ManuallyDrop::new(modules),
            arch,
            switch_event: event as usize,
            ctx: ManuallyDrop::new(ctx),
        })
    }

    /// The compute capability the kernels were compiled for.
    pub fn arch(&self) -> (i32, i32) {
        self.arch
    }

    /// Makes the context current on the calling thread until the guard drops (cheap when it
    /// already is). Every call that reaches the driver or cuBLAS holds one: callers use
    /// any thread, with any context current.
    pub(crate) fn bind(&self) -> Result<Bound> {
        Bound::to(self.ctx.cu_ctx())
    }

    /// Zero-filled device memory (not an op: it allocates and waits for the fill).
    pub fn alloc_zeroed(&self, bytes: usize) -> Result<DeviceBuffer> {
        let _bound = self.bind()?;
        // SAFETY: allocation in the bound context; the fill covers exactly the allocation
        // and runs on the legacy stream, which is then waited for.
        unsafe {
            let addr = result::malloc_sync(bytes.max(1))
                .map_err(|e| driver_error(&format!("cuMemAlloc({bytes} bytes)"), e))?;
            let buf = DeviceBuffer {
                addr: addr as usize,
                ctx: ManuallyDrop::new(Arc::clone(&self.ctx)),
            };
            launch::memset_zero(buf.addr, bytes.max(1), 0)?;
            check(
                "cuStreamSynchronize",
                sys::cuStreamSynchronize(std::ptr::null_mut()),
            )?;
            Ok(buf)
        }
    }

    /// Enqueues a zero fill of `bytes` bytes at `addr`.
    pub fn memset_zero(&self, addr: usize, bytes: usize, stream: usize) -> Result<()> {
        let _bound = self.bind()?;
        launch::memset_zero(addr, bytes, stream)
    }

    /// Enqueues a copy of `bytes` bytes from `src` to `dst` (device memory, not overlapping).
    pub fn copy(&self, dst: usize, src: usize, bytes: usize, stream: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let _bound = self.bind()?;
        // SAFETY: both regions hold `bytes` bytes of device memory (the caller's contract).
        check("cuMemcpyDtoDAsync", unsafe {
            sys::cuMemcpyDtoDAsync_v2(
                dst as sys::CUdeviceptr,
                src as sys::CUdeviceptr,
                bytes,
                stream as sys::CUstream,
            )
        })
    }

    fn capturing(stream: usize) -> Result<bool> {
        let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        // SAFETY: plain out-parameter on a live stream.
        check("cuStreamIsCapturing", unsafe {
            sys::cuStreamIsCapturing(stream as sys::CUstream, &mut status)
        })?;
        Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    /// Marks, after a handle call on `stream`, the point that calls on other streams must
    /// wait for (the context's shared workspace is free again there). Recording at each call
    /// rather than at a switch means a later switch never touches this stream, which the
    /// caller may have destroyed by then. Returns false, recording nothing, while `stream` is
    /// being captured into a graph (a captured event cannot be waited for outside it).
    pub fn mark_workspace_use(&self, stream: usize) -> Result<bool> {
        let _bound = self.bind()?;
        if Device::capturing(stream)? {
            return Ok(false);
        }
        // SAFETY: the event belongs to this context; `stream` is a live stream of it.
        check("cuEventRecord", unsafe {
            sys::cuEventRecord(self.switch_event as sys::CUevent, stream as sys::CUstream)
        })?;
        Ok(true)
    }

    /// Makes the work enqueued on `next` from now on wait, on the device, for the last point
    /// `mark_workspace_use` marked. Refused while `next` is being captured into a graph: the
    /// capture cannot depend on work outside it.
    pub fn wait_workspace(&self, next: usize) -> Result<()> {
        let _bound = self.bind()?;
        ensure!(
            !Device::capturing(next)?,
            BadState,
            "stream {next:#x} is being captured into a graph, but the context's workspace was last used on another stream: run the handle calls of one context on the capture stream only (or use a context per stream)"
        );
        // SAFETY: the event belongs to this context; `next` is a live stream of it.
        check("cuStreamWaitEvent", unsafe {
            sys::cuStreamWaitEvent(next as sys::CUstream, self.switch_event as sys::CUevent, 0)
        })
    }

    /// Waits on the host for the last point `mark_workspace_use` marked.
    pub fn sync_workspace(&self) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the event belongs to this context.
        check("cuEventSynchronize", unsafe {
            sys::cuEventSynchronize(self.switch_event as sys::CUevent)
        })
    }

    /// Copies device memory to the host after the work queued on `stream`, and waits.
    pub fn download(&self, addr: usize, dst: &mut [u8], stream: usize) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let _bound = self.bind()?;
        // SAFETY: `addr` holds dst.len() bytes of device memory (the caller's contract).
        unsafe {
            check(
                "cuMemcpyDtoHAsync",
                sys::cuMemcpyDtoHAsync_v2(
                    dst.as_mut_ptr() as *mut _,
                    addr as sys::CUdeviceptr,
                    dst.len(),
                    stream as sys::CUstream,
                ),
            )?;
            check(
                "cuStreamSynchronize",
                sys::cuStreamSynchronize(stream as sys::CUstream),
            )
        }
    }

    /// Copies host memory to the device in order on `stream`, and waits.
    pub fn upload(&self, addr: usize, src: &[u8], stream: usize) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let _bound = self.bind()?;
        // SAFETY: `addr` holds src.len() bytes of device memory (the caller's contract).
        unsafe {
            check(
                "cuMemcpyHtoDAsync",
                sys::cuMemcpyHtoDAsync_v2(
                    addr as sys::CUdeviceptr,
                    src.as_ptr() as *const _,
                    src.len(),
                    stream as sys::CUstream,
                ),
            )?;
            check(
                "cuStreamSynchronize",
                sys::cuStreamSynchronize(stream as sys::CUstream),
            )
        }
    }

    pub fn scores_workspace_size(&self, p: &Projected, _b: usize, _dtype: Dtype) -> usize {
        let mut plan = Plan::sizing();
        scores_layout(&mut plan, p);
        plan.size()
    }

    pub fn select_workspace_size(&self, d: usize, _r: usize) -> usize {
        let mut plan = Plan::sizing();
        select_layout(&mut plan, d);
        plan.size()
    }

    pub fn sparse_grad_workspace_size(
        &self,
        p: &Projected,
        b: usize,
        r: usize,
        dtype: Dtype,
    ) -> usize {
        let mut plan = Plan::sizing();
        sparse_grad_layout(&mut plan, p, b, r, dtype);
        plan.size()
    }

    pub fn sparse_adamw_workspace_size(&self, _p: &Projected, r: usize) -> usize {
        let mut plan = Plan::sizing();
        step_layout(&mut plan, Some(r));
        plan.size()
    }

    pub fn residual_workspace_size(&self, p: &Projected) -> usize {
        let mut plan = Plan::sizing();
        residual_layout(&mut plan, p);
        plan.size()
    }

    pub fn adamw_workspace_size(&self, _numel: usize) -> usize {
        let mut plan = Plan::sizing();
        step_layout(&mut plan, None);
        plan.size()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // The cuBLAS handle and the modules need this context current when they go; then the
        // context is released (cudarc binds it for that) and the caller's context returns.
        let bound = Bound::to(self.ctx.cu_ctx());
        // SAFETY: each field is dropped once, here, in this order.
        unsafe {
            let _ = sys::cuEventDestroy_v2(self.switch_event as sys::CUevent);
            ManuallyDrop::drop(&mut self.blas);
            ManuallyDrop::drop(&mut self._modules);
            ManuallyDrop::drop(&mut self.ctx);
        }
        drop(bound);
    }
}

/// Bytes of the step header in kernels/adamw.cu (`StepHeader`, rounded up).
pub(crate) const STEP_HEADER: usize = 32;
/// Offset of the dense step's bias corrections (`StepHeader::c1`, then `c2`).
const STEP_HEADER_COEF: usize = 12;

/// Scratch of an AdamW step: the header and the bias corrections (f32 pairs).
pub(crate) struct StepLayout {
    pub header: usize,
    pub coef: usize,
}

/// `rows` is the rank of a compressed step (a pair per state row), None for a dense step
/// (one pair, inside the header).
pub(crate) fn step_layout(plan: &mut Plan, rows: Option<usize>) -> StepLayout {
    let header = plan.take(STEP_HEADER);
    let coef = match rows {
        Some(r) => plan.take(r.saturating_mul(8)),
        None => header + STEP_HEADER_COEF,
    };
    StepLayout { header, coef }
}

/// Rows of G per chunk of the score computation: at most 32 MiB of f32 and at most a quarter
/// of the rows (so no layer's whole gradient sits in scratch), a multiple of 64 rows when
/// there are that many.
pub(crate) fn chunk_rows(p: &Projected) -> usize {
    let rows = ((32usize << 20) / (4 * p.k)).min(p.d.div_ceil(4));
    let rows = if rows >= 64 { rows / 64 * 64 } else { rows };
    rows.clamp(1, p.d)
}

pub(crate) struct ScoresLayout {
    pub rows: usize,
    pub chunk: usize,
    pub blas: usize,
    pub blas_bytes: usize,
}

pub(crate) fn scores_layout(plan: &mut Plan, p: &Projected) -> ScoresLayout {
    let rows = chunk_rows(p);
    let bytes = rows * p.k * 4;
    ScoresLayout {
        rows,
        chunk: plan.take(bytes),
        blas: plan.take(blas::workspace_for(bytes)),
        blas_bytes: blas::workspace_for(bytes),
    }
}

/// The residual step: its decision header (`ResidualHeader` in kernels/adamw.cu), then the
/// row scores' chunks of G.
pub(crate) struct ResidualLayout {
    pub header: usize,
    pub chunks: ScoresLayout,
}

pub(crate) const RESIDUAL_HEADER: usize = 16;

pub(crate) fn residual_layout(plan: &mut Plan, p: &Projected) -> ResidualLayout {
    ResidualLayout {
        header: plan.take(RESIDUAL_HEADER),
        chunks: scores_layout(plan, p),
    }
}

pub(crate) struct SelectLayout {
    pub padded: usize,
    pub w: usize,
    pub aux: usize,
    pub keys: usize,
    pub vals: usize,
    pub taken: usize,
}

pub(crate) fn select_layout(plan: &mut Plan, d: usize) -> SelectLayout {
    let padded = d.next_power_of_two();
    SelectLayout {
        padded,
        w: plan.take(d.saturating_mul(8)),
        aux: plan.take(d.saturating_mul(8)),
        keys: plan.take(padded.saturating_mul(8)),
        vals: plan.take(padded.saturating_mul(4)),
        taken: plan.take(d),
    }
}

pub(crate) struct SparseGradLayout {
    /// Selected rows per block: each block gathers its columns of A, multiplies, and scales
    /// its rows of g.
    pub rows: usize,
    pub gathered: usize,
    pub product: usize,
    pub blas: usize,
    pub blas_bytes: usize,
}

/// Most scratch bytes of one op.
pub(crate) const OP_WORKSPACE: usize = 64 << 20;

/// Rows per block of the sparse gradient: all r when the block's gathered columns
/// (`b·rows·size`), its f32 product (`rows·k·4`) and cuBLAS's share fit 64 MiB, else r split
/// into equal blocks (multiples of 64 rows when that many fit) that do.
pub(crate) fn sparse_grad_rows(p: &Projected, b: usize, r: usize, dtype: Dtype) -> usize {
    let per_row = bytes(b, dtype.size()).saturating_add(bytes(p.k, 4));
    let room = OP_WORKSPACE - blas::WORKSPACE - 4 * 256;
    let most = (room / per_row).max(1);
    if r <= most {
        return r;
    }
    let most = if most >= 64 { most / 64 * 64 } else { most };
    let blocks = r.div_ceil(most);
    let rows = r.div_ceil(blocks);
    let rows = if most >= 64 {
        rows.div_ceil(64) * 64
    } else {
        rows
    };
    rows.min(most)
}

pub(crate) fn sparse_grad_layout(
    plan: &mut Plan,
    p: &Projected,
    b: usize,
    r: usize,
    dtype: Dtype,
) -> SparseGradLayout {
    let rows = sparse_grad_rows(p, b, r, dtype);
    let product = bytes(rows.saturating_mul(p.k), 4);
    SparseGradLayout {
        rows,
        gathered: plan.take(bytes(b.saturating_mul(rows), dtype.size())),
        product: plan.take(product),
        blas: plan.take(blas::workspace_for(product)),
        blas_bytes: blas::workspace_for(product),
    }
}

/// Validates that a size fits the i32 / i64 kernel parameters it travels in.
pub(crate) fn fits_i32(name: &str, v: usize) -> Result<i32> {
    ensure!(
        v <= i32::MAX as usize,
        InvalidValue,
        "{name} = {v} exceeds 2^31 - 1"
    );
    Ok(v as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::Side;

    #[test]
    fn scores_scratch_stays_under_64_mib_for_the_benchmark_shapes() {
        for (m, n) in [(4096, 4096), (11008, 4096), (4096, 11008), (13824, 5120)] {
            for side in [Side::Rows, Side::Auto, Side::Cols] {
                let p = Projected::new(m, n, side);
                let mut plan = Plan::sizing();
                let l = scores_layout(&mut plan, &p);
                assert!(plan.size() <= 64 << 20, "{m}x{n} {side:?}: {}", plan.size());
                assert!(
                    l.rows >= 64 && l.rows % 64 == 0,
                    "{m}x{n} {side:?}: {}",
                    l.rows
                );
            }
        }
    }

    /// The reference shapes and ranks (docs/api.md) at 8192 tokens, every dtype and side: each op's scratch
    /// stays within 64 MiB, and the sparse gradient's blocks cover all r rows.
    #[test]
    fn every_op_stays_within_64_mib_at_the_design_shapes() {
        for (m, n) in [(4096, 4096), (11008, 4096), (4096, 11008), (13824, 5120)] {
            for side in [Side::Rows, Side::Auto, Side::Cols] {
                let p = Projected::new(m, n, side);
                for r in [256, 1024] {
                    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
                        let mut plan = Plan::sizing();
                        let l = sparse_grad_layout(&mut plan, &p, 8192, r, dtype);
                        assert!(
                            plan.size() <= OP_WORKSPACE,
                            "{m}x{n} {side:?} r={r}: {}",
                            plan.size()
                        );
                        assert!(l.rows >= 1 && l.rows <= r);
                        if l.rows < r {
                            assert_eq!(l.rows % 64, 0, "{m}x{n} {side:?} r={r}");
                        }
                    }
                    let mut plan = Plan::sizing();
                    select_layout(&mut plan, p.d);
                    assert!(plan.size() <= OP_WORKSPACE);
                    let mut plan = Plan::sizing();
                    step_layout(&mut plan, Some(r));
                    assert!(plan.size() <= OP_WORKSPACE);
                }
            }
        }
    }

    #[test]
    fn sparse_grad_blocks_only_when_needed() {
        let p = Projected::new(4096, 4096, Side::Rows);
        assert_eq!(sparse_grad_rows(&p, 8192, 1024, Dtype::Bf16), 1024);
        // 4096 x 11008 by rows at r = 1024: 44 MiB of product alone, so two blocks of 512
        let p = Projected::new(4096, 11008, Side::Rows);
        assert_eq!(sparse_grad_rows(&p, 8192, 1024, Dtype::Bf16), 512);
        // a huge token count still gives at least one row per block
        assert_eq!(sparse_grad_rows(&p, 1 << 30, 1024, Dtype::F32), 1);
    }

    #[test]
    fn chunks_cover_small_and_wide_problems() {
        assert_eq!(chunk_rows(&Projected::new(5, 3, Side::Rows)), 2);
        assert_eq!(chunk_rows(&Projected::new(100, 1 << 24, Side::Rows)), 1);
        assert_eq!(chunk_rows(&Projected::new(4096, 4096, Side::Rows)), 1024);
        assert_eq!(chunk_rows(&Projected::new(13824, 5120, Side::Rows)), 1600);
    }

    #[test]
    fn scores_scratch_never_holds_the_whole_gradient() {
        for (m, n) in [(64, 64), (512, 128), (128, 512), (4096, 1024), (3, 2)] {
            let mut plan = Plan::sizing();
            scores_layout(&mut plan, &Projected::new(m, n, Side::Auto));
            if m * n >= 64 {
                assert!(
                    plan.size() * 2 < m * n * 4,
                    "{m} x {n}: {} bytes",
                    plan.size()
                );
            }
        }
    }
}
