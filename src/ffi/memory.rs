//! Memory: the context's shared workspace, and a plan of what training a model takes before
//! any handle exists.

use crate::context::grass_context;
use crate::core::config::Side;
use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::shape::{positive, Projected};
use crate::ffi::args::{ctx, req, write};
use crate::ffi::status::{grass_status, guard};
use crate::ffi::types::*;
use crate::handles::memory::*;
use crate::{bail, ensure};

/// Writes the bytes the context's shared workspace holds now. Every handle made on the
/// context runs its ops in this one workspace, which grows (when a handle that needs more is
/// created, or by `grass_context_reserve_workspace`) and never shrinks.
#[no_mangle]
pub unsafe extern "C" fn grass_context_workspace_bytes(
    ctx: *const grass_context,
    bytes_out: *mut usize,
) -> grass_status {
    guard("grass_context_workspace_bytes", || {
        let c = self::ctx(ctx)?;
        let out = req("bytes_out", bytes_out)?;
        write(out, c.workspace_bytes());
        Ok(())
    })
}

/// Grows the context's shared workspace to at least `bytes` now (e.g. to
/// `grass_memory_report.grass_workspace_bytes`), so that no later handle creation reallocates
/// it: do this before capturing CUDA graphs of handle ops if more handles come after.
/// Synchronizes the stream the workspace was last used on when it grows (CUDA).
#[no_mangle]
pub unsafe extern "C" fn grass_context_reserve_workspace(
    ctx: *const grass_context,
    bytes: usize,
) -> grass_status {
    guard("grass_context_reserve_workspace", || {
        let c = self::ctx(ctx)?;
        ensure!(
            bytes <= 1 << 40,
            InvalidValue,
            "bytes = {bytes} exceeds 1 TiB"
        );
        c.reserve_workspace(bytes)
    })
}

/// One kind of parameter of a model, for `grass_memory_plan`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct grass_memory_layer {
    /// Set to `sizeof(grass_memory_layer)`.
    pub struct_size: usize,
    /// A weight of m x n elements; a dense parameter of m·n elements (e.g. n = 1).
    pub m: i64,
    pub n: i64,
    /// r: trained with GRASS at this rank (1 ≤ r ≤ the projected dimension); 0: a dense
    /// parameter, trained with plain AdamW by every method.
    pub rank: i64,
    /// The projected side of a GRASS weight (`GRASS_SIDE_*`); ignored for dense parameters.
    pub side: grass_side,
    /// Dtype of the weight (and of a dense parameter's gradient).
    pub w_dtype: grass_dtype,
    /// Dtype of X and dY of a GRASS weight; ignored for dense parameters.
    pub act_dtype: grass_dtype,
    /// How many parameters of the model have this description (0 is allowed).
    pub count: i64,
}

/// Bytes a model takes to train, per method. Activations are not counted for any method.
/// "Gradients" are what exists at once after a backward pass; the dense parameters' gradients
/// (held by the caller) count for every method alike.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct grass_memory_report {
    /// Set to `sizeof(grass_memory_report)` before the call.
    pub struct_size: usize,
    /// Every weight and dense parameter at its `w_dtype` (the same for every method).
    pub weight_bytes: i64,
    /// GRASS: M and V (r x k, state dtype) and step counts of each GRASS weight; M, V and step
    /// count of each dense parameter.
    pub grass_state_bytes: i64,
    /// GRASS: the f32 compressed-gradient accumulator (r x k) of each GRASS weight, plus the
    /// dense parameters' gradients.
    pub grass_gradient_bytes: i64,
    /// GRASS: the selection of each GRASS weight (indices, previous indices, scales: r each;
    /// d row scores).
    pub grass_selection_bytes: i64,
    /// GRASS: the context's shared workspace, the most any op of the model needs (ops run one
    /// after another, so one workspace serves them all).
    pub grass_workspace_bytes: i64,
    /// What the optimizer handles of the model hold together: the sum of their
    /// `grass_optimizer_info.memory_bytes` (states, accumulators, selections).
    pub grass_handle_bytes: i64,
    /// weights + states + gradients + selections + workspace.
    pub grass_total_bytes: i64,
    /// AdamW: M and V of every parameter (2·numel at the state dtype).
    pub adamw_state_bytes: i64,
    /// AdamW: the gradient of every parameter (numel at `w_dtype`).
    pub adamw_gradient_bytes: i64,
    /// weights + states + gradients.
    pub adamw_total_bytes: i64,
    /// GaLore: M and V (r x k, state dtype) of each projected weight, and 2·numel of each
    /// dense parameter.
    pub galore_state_bytes: i64,
    /// GaLore: the full gradient of every parameter (numel at `w_dtype`), which it projects.
    pub galore_gradient_bytes: i64,
    /// GaLore: the d x r projection matrix of each projected weight, at the weight's dtype
    /// (GaLore keeps it in the gradient's dtype).
    pub galore_projection_bytes: i64,
    /// weights + states + gradients + projections (SVD workspace not counted).
    pub galore_total_bytes: i64,
}

#[derive(Default)]
struct Sums {
    weight: u128,
    grass_state: u128,
    grass_gradient: u128,
    grass_selection: u128,
    workspace: usize,
    adamw_state: u128,
    gradient: u128,
    galore_state: u128,
    galore_projection: u128,
    dense_gradient: u128,
}

fn side_of(name: &str, v: grass_side) -> Result<Side> {
    side(v).map_err(|e| crate::Error::new(e.kind, format!("{name}: {}", e.message)))
}

/// The moments' dtypes of a plan: GRASS layers' (`state_dtype`) and dense ones'
/// (`dense_state_dtype`: a dense parameter's, and every AdamW and GaLore state).
#[derive(Clone, Copy)]
struct States {
    grass: Dtype,
    dense: Dtype,
}

fn add_layer(
    c: &grass_context,
    i: usize,
    l: &grass_memory_layer,
    b: usize,
    state: States,
    s: &mut Sums,
) -> Result<()> {
    let at = |f: &str| format!("layers[{i}].{f}");
    // One release so far: the elements of `layers` are sizeof(grass_memory_layer) apart.
    let want = std::mem::size_of::<grass_memory_layer>();
    ensure!(
        l.struct_size == want,
        StructSize,
        "layers[{i}].struct_size = {} is not a size of grass_memory_layer this library knows ({want}): set it with sizeof",
        l.struct_size
    );
    let m = positive(&at("m"), l.m)?;
    let n = positive(&at("n"), l.n)?;
    ensure!(
        l.count >= 0,
        InvalidValue,
        "layers[{i}].count = {} must not be negative",
        l.count
    );
    let count = l.count as u128;
    let wd = dtype(&at("w_dtype"), l.w_dtype)?;
    let numel = m as u128 * n as u128;
    s.weight += count * numel * wd.size() as u128;
    s.gradient += count * numel * wd.size() as u128;
    s.adamw_state += count * 2 * numel * state.dense.size() as u128;
    if l.rank == 0 {
        let numel = usize::try_from(numel)
            .ok()
            .filter(|&v| v <= i32::MAX as usize);
        let Some(numel) = numel else {
            bail!(
                InvalidValue,
                "layers[{i}]: a dense parameter of {} x {} elements exceeds 2^31 - 1",
                l.m,
                l.n
            );
        };
        s.grass_state += count * dense_held(c, numel, state.dense) as u128;
        s.dense_gradient += count * (numel * wd.size()) as u128;
        s.galore_state += count * 2 * (numel * state.dense.size()) as u128;
        if l.count > 0 {
            s.workspace = s.workspace.max(dense_optimizer_workspace(c, numel));
        }
        return Ok(());
    }
    let p = Projected::new(m, n, side_of(&at("side"), l.side)?);
    ensure!(
        l.rank > 0 && l.rank as u64 <= p.d as u64,
        InvalidValue,
        "layers[{i}].rank = {} must be 0 (dense) or in [1, {}] (the projected dimension of a {m} x {n} weight)",
        l.rank,
        p.d
    );
    let r = l.rank as usize;
    let ad = dtype(&at("act_dtype"), l.act_dtype)?;
    crate::core::shape::product("max_tokens * max(m, n)", &[b, m.max(n), 4])?;
    let (st, acc, sel) = sparse_held(c, &sparse_buffers(&p, r, state.grass));
    s.grass_state += count * st as u128;
    s.grass_gradient += count * acc as u128;
    s.grass_selection += count * sel as u128;
    s.galore_state += count * 2 * (r * p.k * state.dense.size()) as u128;
    s.galore_projection += count * (p.d * r * wd.size()) as u128;
    if l.count > 0 {
        s.workspace = s.workspace.max(sparse_optimizer_workspace(c, &p, b, r, ad));
    }
    Ok(())
}

fn bytes(name: &str, v: u128) -> Result<i64> {
    ensure!(
        v <= i64::MAX as u128,
        InvalidValue,
        "the model's {name} overflow 64 bits"
    );
    Ok(v as i64)
}

/// Plans the memory of training a model on this context before any handle exists: `layers`
/// (`layer_count` descriptions) with X and dY of at most `max_tokens` rows per backward call,
/// GRASS layers' moments at `adamw_config->state_dtype`, dense parameters' and AdamW's and
/// GaLore's at `adamw_config->dense_state_dtype` (`state_dtype` for an ABI 6 or older caller's
/// config, which has no such field). GRASS's numbers are what this
/// library's handles would hold on this context (`grass_handle_bytes` equals the sum of their
/// `memory_bytes`, `grass_workspace_bytes` what the context's shared workspace grows to);
/// AdamW's and GaLore's are computed from their definitions, counted the same way (see
/// `grass_memory_report`). Writes `*report` (whose `struct_size` the caller sets).
#[no_mangle]
pub unsafe extern "C" fn grass_memory_plan(
    ctx: *const grass_context,
    adamw_config: *const grass_adamw_config,
    layers: *const grass_memory_layer,
    layer_count: usize,
    max_tokens: i64,
    report: *mut grass_memory_report,
) -> grass_status {
    guard("grass_memory_plan", || {
        let c = self::ctx(ctx)?;
        let acfg = read_versioned("adamw_config", adamw_config)?;
        let grass = acfg.adamw()?.state_dtype;
        let state = States {
            grass,
            dense: acfg.dense_state_dtype(grass)?,
        };
        ensure!(
            layer_count <= 1 << 20,
            InvalidValue,
            "layer_count = {layer_count} exceeds 2^20"
        );
        let list: &[grass_memory_layer] = if layer_count == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(req("layers", layers)? as *const _, layer_count)
        };
        let b = positive("max_tokens", max_tokens)?;
        let report_bytes = info_size("report", report)?;
        let mut s = Sums::default();
        for (i, l) in list.iter().enumerate() {
            add_layer(c, i, l, b, state, &mut s)?;
        }
        let workspace = c.held_workspace(s.workspace) as u128;
        let grass_gradient = s.grass_gradient + s.dense_gradient;
        let r = grass_memory_report {
            struct_size: 0,
            weight_bytes: bytes("weights", s.weight)?,
            grass_state_bytes: bytes("GRASS states", s.grass_state)?,
            grass_gradient_bytes: bytes("GRASS gradients", grass_gradient)?,
            grass_selection_bytes: bytes("selections", s.grass_selection)?,
            grass_workspace_bytes: bytes("workspace", workspace)?,
            grass_handle_bytes: bytes(
                "handle bytes",
                s.grass_state + s.grass_gradient + s.grass_selection,
            )?,
            grass_total_bytes: bytes(
                "GRASS bytes",
                s.weight + s.grass_state + grass_gradient + s.grass_selection + workspace,
            )?,
            adamw_state_bytes: bytes("AdamW states", s.adamw_state)?,
            adamw_gradient_bytes: bytes("gradients", s.gradient)?,
            adamw_total_bytes: bytes("AdamW bytes", s.weight + s.adamw_state + s.gradient)?,
            galore_state_bytes: bytes("GaLore states", s.galore_state)?,
            galore_gradient_bytes: bytes("gradients", s.gradient)?,
            galore_projection_bytes: bytes("GaLore projections", s.galore_projection)?,
            galore_total_bytes: bytes(
                "GaLore bytes",
                s.weight + s.galore_state + s.gradient + s.galore_projection,
            )?,
        };
        write_versioned(report, report_bytes, r);
        Ok(())
    })
}
