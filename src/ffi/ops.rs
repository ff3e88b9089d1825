//! Layer 1: stateless ops on caller-owned buffers. Each takes the context first and the
//! stream last, validates every argument before touching memory, and enqueues its work
//! (CPU contexts run it synchronously on the calling thread and ignore `stream`).

use std::ffi::c_void;

use crate::backend::*;
use crate::context::grass_context;
use crate::core::config::{check_lr, check_residual_scale};
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::{positive, product, Projected};
use crate::ensure;
use crate::ffi::args::{ctx, need, opt, opt_buf, req, req_buf, tensor, workspace, write};
use crate::ffi::status::{grass_status, guard};
use crate::ffi::types::*;

fn projected(m: i64, n: i64, s: grass_side) -> Result<Projected> {
    let m = positive("m", m)?;
    let n = positive("n", n)?;
    // W is m x n elements of up to 4 bytes
    product("m * n * 4 bytes", &[m, n, 4])?;
    Ok(Projected::new(m, n, side(s)?))
}

fn rank(r: i64, p: &Projected) -> Result<usize> {
    let r = positive("r", r)?;
    ensure!(
        r <= p.d,
        InvalidValue,
        "r = {r} exceeds the projected dimension {} ({:?} of a {} x {} weight)",
        p.d,
        p.side,
        p.m,
        p.n
    );
    Ok(r)
}

fn tokens(b: i64, p: &Projected) -> Result<usize> {
    let b = positive("b", b)?;
    // X and dY are b x n and b x m elements of up to 4 bytes
    product("b * max(m, n) * 4 bytes", &[b, p.m.max(p.n), 4])?;
    Ok(b)
}

/// Writes the projected dimension d and kept dimension k that `side` resolves to for an
/// `m x n` weight (`GRASS_SIDE_AUTO` picks the longer dimension). Either out-pointer may be NULL.
#[no_mangle]
pub unsafe extern "C" fn grass_resolve_side(
    m: i64,
    n: i64,
    side: grass_side,
    side_out: *mut grass_side,
    d_out: *mut i64,
    k_out: *mut i64,
) -> grass_status {
    guard("grass_resolve_side", || {
        let p = projected(m, n, side)?;
        let (so, dout, kout) = (
            opt("side_out", side_out)?,
            opt("d_out", d_out)?,
            opt("k_out", k_out)?,
        );
        if so != 0 {
            write(so, side_code(p.side));
        }
        if dout != 0 {
            write(dout, p.d as i64);
        }
        if kout != 0 {
            write(kout, p.k as i64);
        }
        Ok(())
    })
}

/// Scratch bytes `grass_row_scores` needs for these shapes (at most 64 MiB at every reference
/// shape up to 8192 tokens). With d and k the projected and kept dimensions, each region
/// rounded up for alignment:
/// - CPU: `c·k·4 + tc·c·4 (+ tc·k·4 when dtype is not f32)`, c = rows of G per chunk
///   (`c·k·4 ≤ 8 MiB`, `c ≤ d/4`), tc = tokens per chunk, all b when
///   `b·(c·4 + k·4 if not f32) ≤ 48 MiB`, else as many as fit that;
/// - CUDA: `c·k·4 + min(c·k·2, 16 MiB)`, c = rows of G per chunk (`c·k·4 ≤ 32 MiB`,
///   `c ≤ d/4`, a multiple of 64 when at least 64), whatever b.
///
/// Sizes beyond the size limits (top of this header), including a workspace that would exceed
/// 2^63 - 1 bytes, fail with `GRASS_ERROR_INVALID_VALUE`; so do those of every other
/// `*_workspace_size` query.
#[no_mangle]
pub unsafe extern "C" fn grass_scores_workspace_size(
    ctx: *const grass_context,
    m: i64,
    n: i64,
    b: i64,
    side: grass_side,
    dtype: grass_dtype,
    bytes_out: *mut usize,
) -> grass_status {
    guard("grass_scores_workspace_size", || {
        let c = self::ctx(ctx)?;
        let p = projected(m, n, side)?;
        let b = tokens(b, &p)?;
        let dt = self::dtype("dtype", dtype)?;
        let out = req("bytes_out", bytes_out)?;
        write(out, need(c.scores_workspace_size(&p, b, dt))?);
        Ok(())
    })
}

/// Exact norms of the rows (side ROWS) or columns (side COLS) of G = dYᵀX, computed from
/// X (b x n) and dY (b x m) in chunks: no m x n buffer. `scores` receives d floats.
#[no_mangle]
pub unsafe extern "C" fn grass_row_scores(
    ctx: *const grass_context,
    m: i64,
    n: i64,
    b: i64,
    side: grass_side,
    dtype: grass_dtype,
    x: *const c_void,
    dy: *const c_void,
    scores: *mut f32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_row_scores", || {
        let c = self::ctx(ctx)?;
        let p = projected(m, n, side)?;
        let b = tokens(b, &p)?;
        let dt = self::dtype("dtype", dtype)?;
        let a = RowScoresArgs {
            p,
            batch: Batch {
                b,
                x: tensor("x", x, dt, b * p.n)?,
                dy: tensor("dy", dy, dt, b * p.m)?,
            },
            scores: req_buf("scores", scores, p.d)?,
            ws: self::workspace(
                workspace,
                workspace_bytes,
                c.scores_workspace_size(&p, b, dt),
                "grass_scores_workspace_size",
            )?,
            stream: stream as usize,
        };
        c.row_scores(&a)
    })
}

/// Scratch bytes `grass_select` needs for `d` scores and rank `r` (within the size limits): CPU
/// `28·d`, CUDA `17·d + 12·p` with p the next power of two ≥ d (plus alignment; under 1 MiB for
/// d ≤ 16384).
#[no_mangle]
pub unsafe extern "C" fn grass_select_workspace_size(
    ctx: *const grass_context,
    d: i64,
    r: i64,
    bytes_out: *mut usize,
) -> grass_status {
    guard("grass_select_workspace_size", || {
        let c = self::ctx(ctx)?;
        let d = positive("d", d)?;
        let r = positive("r", r)?;
        ensure!(r <= d, InvalidValue, "r = {r} exceeds d = {d}");
        let out = req("bytes_out", bytes_out)?;
        write(out, need(c.select_workspace_size(d, r))?);
        Ok(())
    })
}

/// Chooses `config->rank` (1 to d; 0, the handles' rank rule, is refused here: pass
/// `grass_default_rank(d)`) of `d` indices from `scores` with `config`'s method, power, scaling,
/// seed and layer id at refresh `refresh_index` — or, when `refresh_index_at` is not NULL, at the
/// refresh index stored there in context memory (a device-side counter needs no host round
/// trip). Writes `indices` (sorted ascending; repeats
/// possible only for the with-replacement methods) and their scales ρ. Non-finite or negative
/// scores count as 0; if no score is positive the choice is uniform.
#[no_mangle]
pub unsafe extern "C" fn grass_select(
    ctx: *const grass_context,
    config: *const grass_projection_config,
    d: i64,
    refresh_index: u32,
    refresh_index_at: *const u32,
    scores: *const f32,
    indices: *mut i32,
    scales: *mut f32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_select", || {
        let c = self::ctx(ctx)?;
        let cfg = read_versioned("config", config)?;
        let sel = cfg.selection()?;
        let d = positive("d", d)?;
        ensure!(
            sel.rank > 0,
            InvalidValue,
            "config->rank = 0 (the rank rule) is for handles: grass_select writes rank entries, so give the rank (grass_default_rank(d) is the rule's)"
        );
        ensure!(
            sel.rank <= d,
            InvalidValue,
            "config->rank = {} exceeds d = {d}",
            sel.rank
        );
        let a = SelectArgs {
            sel,
            refresh_index,
            refresh_index_at: opt_buf("refresh_index_at", refresh_index_at, 1)?,
            scores: req_buf("scores", scores, d)?,
            indices: req_buf("indices", indices, sel.rank)?,
            scales: req_buf("scales", scales, sel.rank)?,
            ws: self::workspace(
                workspace,
                workspace_bytes,
                c.select_workspace_size(d, sel.rank),
                "grass_select_workspace_size",
            )?,
            stream: stream as usize,
        };
        c.select(&a)
    })
}

/// Scratch bytes `grass_sparse_grad` needs for these shapes (within the size limits; at most
/// 64 MiB at every reference shape (docs/api.md) and rank up to 8192 tokens), with k the kept dimension and s the
/// dtype's size, each region rounded up for alignment:
/// - CPU: `tc·r·4 (+ tc·k·4 when dtype is not f32)`, tc = tokens per chunk, all b when that
///   is at most 48 MiB, else as many as fit it (chunks add into g);
/// - CUDA: `q·b·s + q·k·4 + min(q·k·2, 16 MiB)`, q = selected rows per block: all r when
///   `r·(b·s + k·4) ≤ 48 MiB - 1 KiB`, else r split into equal blocks (multiples of 64 rows)
///   that fit it.
#[no_mangle]
pub unsafe extern "C" fn grass_sparse_grad_workspace_size(
    ctx: *const grass_context,
    m: i64,
    n: i64,
    b: i64,
    side: grass_side,
    r: i64,
    dtype: grass_dtype,
    bytes_out: *mut usize,
) -> grass_status {
    guard("grass_sparse_grad_workspace_size", || {
        let c = self::ctx(ctx)?;
        let p = projected(m, n, side)?;
        let b = tokens(b, &p)?;
        let r = rank(r, &p)?;
        let dt = self::dtype("dtype", dtype)?;
        let out = req("bytes_out", bytes_out)?;
        write(out, need(c.sparse_grad_workspace_size(&p, b, r, dt))?);
        Ok(())
    })
}

/// The compressed gradient g = PᵀG (r x k, f32) straight from X and dY:
/// row j = scales[j] · Σ_t A[t, indices[j]] · B[t, :], with (A, B) = (dY, X) for side ROWS and
/// (X, dY) for side COLS. `accumulate != 0` adds into g (micro-batches).
/// Indices must be sorted ascending within [0, d), as `grass_select` writes them: a CPU context
/// rejects others with `GRASS_ERROR_INVALID_VALUE`. A CUDA context cannot read them without
/// waiting for the device: it writes NaN into the rows of g whose index is outside [0, d) (so
/// the step consuming g skips), and leaves an unsorted order to the step, which skips with
/// `GRASS_STEP_SKIPPED_BAD_INDICES`.
#[no_mangle]
pub unsafe extern "C" fn grass_sparse_grad(
    ctx: *const grass_context,
    m: i64,
    n: i64,
    b: i64,
    side: grass_side,
    r: i64,
    dtype: grass_dtype,
    x: *const c_void,
    dy: *const c_void,
    indices: *const i32,
    scales: *const f32,
    g: *mut f32,
    accumulate: i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_sparse_grad", || {
        let c = self::ctx(ctx)?;
        let p = projected(m, n, side)?;
        let b = tokens(b, &p)?;
        let r = rank(r, &p)?;
        let dt = self::dtype("dtype", dtype)?;
        let a = SparseGradArgs {
            p,
            batch: Batch {
                b,
                x: tensor("x", x, dt, b * p.n)?,
                dy: tensor("dy", dy, dt, b * p.m)?,
            },
            indices: req_buf("indices", indices, r)?,
            scales: req_buf("scales", scales, r)?,
            g: req_buf("g", g, r * p.k)?,
            accumulate: accumulate != 0,
            ws: self::workspace(
                workspace,
                workspace_bytes,
                c.sparse_grad_workspace_size(&p, b, r, dt),
                "grass_sparse_grad_workspace_size",
            )?,
            stream: stream as usize,
        };
        c.sparse_grad(&a)
    })
}

#[allow(clippy::too_many_arguments)]
unsafe fn step_buffers(
    config: *const grass_adamw_config,
    dense: bool,
    w_dtype: grass_dtype,
    w: (*mut c_void, usize),
    m_state: *mut c_void,
    v_state: *mut c_void,
    state_len: usize,
    steps: (&str, *mut i32, usize),
    lr: f32,
    lr_scale: *const f32,
    skipped: *mut i32,
    stream: *mut c_void,
) -> Result<StepBuffers> {
    // a dense parameter's moments are of dense_state_dtype, a GRASS layer's of state_dtype
    let config = read_versioned("config", config)?;
    let cfg = if dense {
        config.dense_adamw()?
    } else {
        config.adamw()?
    };
    let wd = self::dtype("w_dtype", w_dtype)?;
    check_lr(lr)?;
    Ok(StepBuffers {
        cfg,
        w: tensor("w", w.0, wd, w.1)?,
        m: tensor("m_state", m_state, cfg.state_dtype, state_len)?,
        v: tensor("v_state", v_state, cfg.state_dtype, state_len)?,
        steps: req_buf(steps.0, steps.1, steps.2)?,
        lr,
        lr_scale: opt_buf("lr_scale", lr_scale, 1)?,
        grad_scale: 1.0,
        skipped: opt_buf("skipped", skipped, 1)?,
        ws: Scratch { addr: 0, bytes: 0 },
        stream: stream as usize,
    })
}

/// Scratch bytes `grass_sparse_adamw_step` needs (sizes within the size limits): CPU 0, CUDA
/// `32 + 8·r` (plus alignment).
#[no_mangle]
pub unsafe extern "C" fn grass_sparse_adamw_workspace_size(
    ctx: *const grass_context,
    m: i64,
    n: i64,
    side: grass_side,
    r: i64,
    bytes_out: *mut usize,
) -> grass_status {
    guard("grass_sparse_adamw_workspace_size", || {
        let c = self::ctx(ctx)?;
        let p = projected(m, n, side)?;
        let r = rank(r, &p)?;
        let out = req("bytes_out", bytes_out)?;
        write(out, need(c.sparse_adamw_workspace_size(&p, r))?);
        Ok(())
    })
}

/// The compressed AdamW step: updates M, V (r x k, `config->state_dtype`) from g and adds
/// `-lr·lr_scale·α·ρ_j·u_j` into row (side ROWS) or column (side COLS) `indices[j]` of W
/// (m x n, `w_dtype`), after decoupled weight decay per `config->decay_mode`. `row_steps`
/// (r counts) holds the Adam step of each state row since it was zeroed: each is incremented
/// and gives row j its own bias corrections. `lr` must be finite and non-negative
/// (`GRASS_ERROR_INVALID_VALUE` otherwise). `*skipped` receives a `GRASS_STEP_*` outcome:
/// if g holds a NaN or infinity, or `lr * *lr_scale` is not finite and non-negative, the step
/// is skipped (`GRASS_STEP_SKIPPED_NONFINITE`) and nothing else is written. `lr_scale` and `skipped` may be NULL; like every buffer they live in the
/// context's memory. Indices must be sorted ascending within [0, d) and step counts must not
/// be negative: a CPU context rejects others with `GRASS_ERROR_INVALID_VALUE`; a CUDA context
/// checks them on the device and skips the step (`GRASS_STEP_SKIPPED_BAD_INDICES`,
/// `GRASS_STEP_SKIPPED_BAD_STEP_COUNT`). Counts saturate at 2^31 - 1. Scales must be finite
/// (`grass_select` writes finite ones): a CPU context rejects a NaN or infinite scale with
/// `GRASS_ERROR_INVALID_VALUE`; a CUDA context skips the step with
/// `GRASS_STEP_SKIPPED_NONFINITE`.
#[no_mangle]
pub unsafe extern "C" fn grass_sparse_adamw_step(
    ctx: *const grass_context,
    config: *const grass_adamw_config,
    m: i64,
    n: i64,
    side: grass_side,
    r: i64,
    w_dtype: grass_dtype,
    w: *mut c_void,
    indices: *const i32,
    scales: *const f32,
    g: *const f32,
    m_state: *mut c_void,
    v_state: *mut c_void,
    row_steps: *mut i32,
    lr: f32,
    lr_scale: *const f32,
    skipped: *mut i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_sparse_adamw_step", || {
        let c = self::ctx(ctx)?;
        let p = projected(m, n, side)?;
        let r = rank(r, &p)?;
        let mut buf = step_buffers(
            config,
            false,
            w_dtype,
            (w, p.m * p.n),
            m_state,
            v_state,
            r * p.k,
            ("row_steps", row_steps, r),
            lr,
            lr_scale,
            skipped,
            stream,
        )?;
        buf.ws = self::workspace(
            workspace,
            workspace_bytes,
            c.sparse_adamw_workspace_size(&p, r),
            "grass_sparse_adamw_workspace_size",
        )?;
        let a = SparseAdamwStepArgs {
            p,
            indices: req_buf("indices", indices, r)?,
            scales: req_buf("scales", scales, r)?,
            g: req_buf("g", g, r * p.k)?,
            buf,
        };
        c.sparse_adamw_step(&a)
    })
}

/// Scratch bytes `grass_residual_step` needs for these shapes: those of `grass_row_scores`
/// (the same chunks of G), plus 16 bytes (and alignment) on CUDA.
#[no_mangle]
pub unsafe extern "C" fn grass_residual_workspace_size(
    ctx: *const grass_context,
    m: i64,
    n: i64,
    b: i64,
    side: grass_side,
    dtype: grass_dtype,
    bytes_out: *mut usize,
) -> grass_status {
    guard("grass_residual_workspace_size", || {
        let c = self::ctx(ctx)?;
        let p = projected(m, n, side)?;
        let b = tokens(b, &p)?;
        let dt = self::dtype("dtype", dtype)?;
        let out = req("bytes_out", bytes_out)?;
        write(out, need(c.residual_workspace_size(&p, b, dt))?);
        Ok(())
    })
}

/// The residual step (FRUGAL's state-free update of what the compressed step leaves out):
/// every row (side ROWS) or column (side COLS) u of W (m x n, `w_dtype`) whose index is not
/// in `indices` (r, sorted ascending within [0, d)) moves by
/// `-lr·lr_scale·α·residual_scale·sign(G_u)`, with G = dYᵀX from X (b x n) and dY (b x m) of
/// `dtype` and α = `config->alpha`. G is computed in chunks of rows (as `grass_row_scores`
/// does) and each chunk's update applied before the next: no m x n buffer. The selected rows
/// are left to `grass_sparse_adamw_step`; weight decay is not applied here. sign(0) = 0.
/// `residual_scale` must be finite and non-negative and `lr` finite and non-negative
/// (`GRASS_ERROR_INVALID_VALUE` otherwise, nothing written). `skipped` (may be NULL) is read
/// first: when it holds a skipped outcome (e.g. written by the compressed step just before,
/// on the same stream) nothing is done and it is left as it is; otherwise, when X or dY hold a
/// NaN or infinity or `lr * *lr_scale` is not finite and non-negative, it receives
/// `GRASS_STEP_SKIPPED_NONFINITE` and nothing is written; else it is left as it is (so zero it
/// before a call on its own). A CPU context rejects unsorted or out-of-range indices with
/// `GRASS_ERROR_INVALID_VALUE`; a CUDA context does not check them (the result is then
/// unspecified but stays within W).
#[no_mangle]
pub unsafe extern "C" fn grass_residual_step(
    ctx: *const grass_context,
    config: *const grass_adamw_config,
    m: i64,
    n: i64,
    b: i64,
    side: grass_side,
    r: i64,
    dtype: grass_dtype,
    x: *const c_void,
    dy: *const c_void,
    w_dtype: grass_dtype,
    w: *mut c_void,
    indices: *const i32,
    residual_scale: f32,
    lr: f32,
    lr_scale: *const f32,
    skipped: *mut i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_residual_step", || {
        let c = self::ctx(ctx)?;
        let cfg = read_versioned("config", config)?.adamw()?;
        let p = projected(m, n, side)?;
        let b = tokens(b, &p)?;
        let r = rank(r, &p)?;
        let dt = self::dtype("dtype", dtype)?;
        let wd = self::dtype("w_dtype", w_dtype)?;
        check_lr(lr)?;
        check_residual_scale(residual_scale)?;
        let a = ResidualStepArgs {
            p,
            batch: Batch {
                b,
                x: tensor("x", x, dt, b * p.n)?,
                dy: tensor("dy", dy, dt, b * p.m)?,
            },
            indices: req_buf("indices", indices, r)?,
            w: tensor("w", w, wd, p.m * p.n)?,
            alpha: cfg.alpha,
            residual_scale,
            lr,
            lr_scale: opt_buf("lr_scale", lr_scale, 1)?,
            skipped: opt_buf("skipped", skipped, 1)?,
            ws: self::workspace(
                workspace,
                workspace_bytes,
                c.residual_workspace_size(&p, b, dt),
                "grass_residual_workspace_size",
            )?,
            stream: stream as usize,
        };
        c.residual_step(&a)
    })
}

/// Scratch bytes `grass_adamw_step` needs for `numel` elements (within the size limits): CPU 0,
/// CUDA 32 (plus alignment).
#[no_mangle]
pub unsafe extern "C" fn grass_adamw_workspace_size(
    ctx: *const grass_context,
    numel: i64,
    bytes_out: *mut usize,
) -> grass_status {
    guard("grass_adamw_workspace_size", || {
        let c = self::ctx(ctx)?;
        let numel = positive("numel", numel)?;
        let out = req("bytes_out", bytes_out)?;
        write(out, need(c.adamw_workspace_size(numel))?);
        Ok(())
    })
}

/// Plain AdamW on a dense parameter of `numel` elements (embeddings, norms, biases), its M and V
/// of `config->dense_state_dtype` (ABI 7; `state_dtype` for an older caller's config): `*step`
/// (the Adam step so far) is read and incremented, and the rest of the contract is
/// `grass_sparse_adamw_step`'s (skip on a non-finite gradient); weight decay applies to every
/// element unless `config->decay_mode` is `GRASS_DECAY_OFF`.
#[no_mangle]
pub unsafe extern "C" fn grass_adamw_step(
    ctx: *const grass_context,
    config: *const grass_adamw_config,
    numel: i64,
    w_dtype: grass_dtype,
    w: *mut c_void,
    grad_dtype: grass_dtype,
    grad: *const c_void,
    m_state: *mut c_void,
    v_state: *mut c_void,
    step: *mut i32,
    lr: f32,
    lr_scale: *const f32,
    skipped: *mut i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_adamw_step", || {
        let c = self::ctx(ctx)?;
        let numel = positive("numel", numel)?;
        let mut buf = step_buffers(
            config,
            true,
            w_dtype,
            (w, numel),
            m_state,
            v_state,
            numel,
            ("step", step, 1),
            lr,
            lr_scale,
            skipped,
            stream,
        )?;
        buf.ws = self::workspace(
            workspace,
            workspace_bytes,
            c.adamw_workspace_size(numel),
            "grass_adamw_workspace_size",
        )?;
        let gd = self::dtype("grad_dtype", grad_dtype)?;
        let a = AdamwStepArgs {
            grad: tensor("grad", grad, gd, numel)?,
            buf,
        };
        c.adamw_step(&a)
    })
}

/// Scratch bytes `grass_state_refresh` needs for these arguments: 0 in this version (carry
/// moves rows in place), but ask, as other versions may need some.
#[no_mangle]
pub unsafe extern "C" fn grass_state_refresh_workspace_size(
    ctx: *const grass_context,
    refresh_mode: grass_refresh_mode,
    state_dtype: grass_dtype,
    r: i64,
    k: i64,
    bytes_out: *mut usize,
) -> grass_status {
    guard("grass_state_refresh_workspace_size", || {
        let c = self::ctx(ctx)?;
        // validated like the refresh's own arguments, though no size depends on them now
        self::refresh_mode("refresh_mode", refresh_mode)?;
        self::state_dtype("state_dtype", state_dtype)?;
        let r = positive("r", r)?;
        let k = positive("k", k)?;
        product("r * k * 8 bytes", &[r, k, 8])?;
        let out = req("bytes_out", bytes_out)?;
        write(out, need(c.state_refresh_workspace_size())?);
        Ok(())
    })
}

/// Adapts M, V (r x k, `state_dtype`: `GRASS_DTYPE_F32` or `GRASS_DTYPE_BF16`) and the row step
/// counts (r) to a new selection. `GRASS_REFRESH_RESET` zeroes all of them;
/// `GRASS_REFRESH_CARRY` keeps the state rows and step counts whose index is in both
/// `old_indices` and `new_indices` (both sorted; repeats pair up in order) and zeroes the others.
/// `old_indices` may be NULL (no previous selection). Indices must be sorted ascending and
/// not negative, and step counts not negative: a CPU context rejects others with
/// `GRASS_ERROR_INVALID_VALUE` and writes nothing. A CUDA context does not check them (the
/// result is then unspecified but stays within M and V; a negative count it carries makes the
/// next step skip with `GRASS_STEP_SKIPPED_BAD_STEP_COUNT`).
#[no_mangle]
pub unsafe extern "C" fn grass_state_refresh(
    ctx: *const grass_context,
    refresh_mode: grass_refresh_mode,
    state_dtype: grass_dtype,
    r: i64,
    k: i64,
    old_indices: *const i32,
    new_indices: *const i32,
    m_state: *mut c_void,
    v_state: *mut c_void,
    row_steps: *mut i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: *mut c_void,
) -> grass_status {
    guard("grass_state_refresh", || {
        let c = self::ctx(ctx)?;
        let mode = self::refresh_mode("refresh_mode", refresh_mode)?;
        let sd = self::state_dtype("state_dtype", state_dtype)?;
        let r = positive("r", r)?;
        let k = positive("k", k)?;
        product("r * k * 8 bytes", &[r, k, 8])?;
        let a = StateRefreshArgs {
            mode,
            k,
            old_indices: opt_buf("old_indices", old_indices, r)?,
            new_indices: req_buf("new_indices", new_indices, r)?,
            m: tensor("m_state", m_state, sd, r * k)?,
            v: tensor("v_state", v_state, sd, r * k)?,
            row_steps: req_buf("row_steps", row_steps, r)?,
            ws: self::workspace(
                workspace,
                workspace_bytes,
                c.state_refresh_workspace_size(),
                "grass_state_refresh_workspace_size",
            )?,
            stream: stream as usize,
        };
        c.state_refresh(&a)
    })
}

/// Elements of a dtype, for sizing buffers: 4 for f32, 2 for bf16 and f16; 0 for an unknown
/// dtype.
#[no_mangle]
pub extern "C" fn grass_dtype_size(dtype: grass_dtype) -> usize {
    self::dtype("dtype", dtype).map(Dtype::size).unwrap_or(0)
}
