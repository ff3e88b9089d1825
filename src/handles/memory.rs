//! What the handles hold and what the context's shared workspace must hold, in one place: the
//! handles allocate exactly these buffers, and the memory plan adds up the same numbers.

use crate::context::grass_context;
use crate::core::dtype::Dtype;
use crate::core::scratch::bytes;
use crate::core::shape::Projected;

/// Bytes of each buffer a GRASS optimizer handle (and the projection it owns) allocates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SparseBuffers {
    /// M and V, r x k each, of the state dtype.
    pub moment: usize,
    /// i32[1 + r]: the outcome of the last step, then the step count of each state row.
    pub counters: usize,
    /// The f32 compressed-gradient accumulator, r x k.
    pub accumulator: usize,
    /// Each of: the indices, the previous indices (for the state refresh), the scales.
    pub selection: usize,
    /// f32[d]: the row scores a refresh selects from.
    pub scores: usize,
}

pub(crate) fn sparse_buffers(p: &Projected, r: usize, state: Dtype) -> SparseBuffers {
    SparseBuffers {
        moment: bytes(r.saturating_mul(p.k), state.size()),
        counters: bytes(r.saturating_add(1), 4),
        accumulator: bytes(r.saturating_mul(p.k), 4),
        selection: bytes(r, 4),
        scores: bytes(p.d, 4),
    }
}

/// Bytes of each buffer a dense optimizer handle allocates: (M and V each, counters).
pub(crate) fn dense_buffers(numel: usize, state: Dtype) -> (usize, usize) {
    (bytes(numel, state.size()), bytes(2, 4))
}

/// Workspace the calls of a projection need: the largest of its row scores, selection and
/// sparse gradient at `b` tokens.
pub(crate) fn projection_workspace(
    c: &grass_context,
    p: &Projected,
    b: usize,
    r: usize,
    dtype: Dtype,
) -> usize {
    c.scores_workspace_size(p, b, dtype)
        .max(c.select_workspace_size(p.d, r))
        .max(c.sparse_grad_workspace_size(p, b, r, dtype))
}

/// Workspace the calls of a GRASS optimizer need: its projection's, the state refresh's, the
/// compressed step's and the residual step's.
pub(crate) fn sparse_optimizer_workspace(
    c: &grass_context,
    p: &Projected,
    b: usize,
    r: usize,
    dtype: Dtype,
) -> usize {
    projection_workspace(c, p, b, r, dtype)
        .max(c.state_refresh_workspace_size())
        .max(c.sparse_adamw_workspace_size(p, r))
        .max(c.residual_workspace_size(p, b, dtype))
}

/// Workspace the step of a dense optimizer needs.
pub(crate) fn dense_optimizer_workspace(c: &grass_context, numel: usize) -> usize {
    c.adamw_workspace_size(numel)
}

/// The held size of `bytes` worth of sparse-handle buffers, as `grass_optimizer_get_info`
/// reports it: (state = M, V and counters; accumulator; selection = indices, previous
/// indices, scales and scores).
pub(crate) fn sparse_held(c: &grass_context, s: &SparseBuffers) -> (usize, usize, usize) {
    let h = |b| c.held_bytes(b);
    (
        2 * h(s.moment) + h(s.counters),
        h(s.accumulator),
        3 * h(s.selection) + h(s.scores),
    )
}

/// The held size of a dense optimizer's buffers (M, V and counters).
pub(crate) fn dense_held(c: &grass_context, numel: usize, state: Dtype) -> usize {
    let (moment, counters) = dense_buffers(numel, state);
    2 * c.held_bytes(moment) + c.held_bytes(counters)
}
