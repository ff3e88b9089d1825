"""Optimizer-state sharding for GRASS over the data-parallel axis (ZeRO stage 1).

With `grass_adamw(..., axis_name="data", shard_state=True)` each of the N devices of the axis
keeps the Adam moments M, V and the step counts of only its share of the r selected rows: rows
[i·r/N, (i+1)·r/N) on device i, so the optimizer state of a GRASS layer is r/N x k per device
instead of r x k. The selection (indices σ, scales ρ, r numbers each) stays replicated. A step:

    g (r x k, this device's compressed gradient)
      -- psum_scatter over the axis, / N -->   g_own (r/N x k), the mean over devices of
                                               this device's rows
    W_own = W[σ_own]  (rows or columns)        the rows this device owns, gathered locally
    grass_sparse_adamw_step(W_own, 0..r/N-1, ρ_own, g_own, M_own, V_own, steps_own)
      -- all_gather over the axis -->           the r updated rows
    W[σ] = updated rows                         on every device (W stays replicated)

On the wire per layer and step: a reduce-scatter of r x k f32 and an all-gather of r x k in W's
dtype, which is what a ring all-reduce of r x k (the unsharded path) moves too: 2·(N-1)/N·r·k
elements per device. One i32 is all-reduced on top, so that when any device's share of g is
not finite every device skips the step (as the unsharded op would for the whole of g).

The update of a row is the same op on the same numbers as in the unsharded step, so the
result is bit for bit the unsharded one where the collectives sum in the same order.

At a refresh, "reset" zeroes each device's share locally. "carry" moves rows between
positions of the r-row state, across shares: the shares are all-gathered (r x k x 2 state
elements, once per refresh), the carry op runs on the whole state and each device keeps its
share; the refresh's peak is then the unsharded state size.

Limits: r must be a multiple of N (checked when the step is traced, where N is known).
Refused when the optimizer is built: methods that can draw a row twice ("multinomial",
"uniform"), whose updates of a repeated row would be computed on different devices and
overwrite each other; decay_mode "dense" with weight decay, which decays all of W where the
sharded step sees only the selected rows.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from . import ops

_REPEATING_METHODS = ("multinomial", "uniform")


def check_options(*, axis_name, method, decay_mode, weight_decay):
    """Raises ValueError for the options `shard_state=True` cannot honour."""
    if axis_name is None:
        raise ValueError("shard_state=True needs axis_name: the data-parallel mesh axis the "
                         "optimizer state is sharded over")
    if method in _REPEATING_METHODS:
        raise ValueError(f"shard_state=True needs a method that selects distinct rows "
                         f"('top_r', 'multinomial_nr', 'uniform_nr'), got {method!r}: a row "
                         f"drawn twice would be updated on two devices and one update lost")
    if decay_mode == "dense" and weight_decay != 0:
        raise ValueError("shard_state=True does not support decay_mode='dense' with a nonzero "
                         "weight_decay (the sharded step updates the selected rows only); use "
                         "'selected' or 'off'")


def _shares(axis_name, rank, local_rows, what):
    """(N, r/N, this device's first row), checking that the state is split in N shares."""
    n_dev = lax.axis_size(axis_name)
    if rank % n_dev:
        raise ValueError(f"shard_state=True: rank {rank} is not a multiple of the {n_dev} "
                         f"devices of axis {axis_name!r}")
    per = rank // n_dev
    if local_rows != per:
        raise ValueError(f"shard_state=True: {what} has {local_rows} rows on this device, "
                         f"expected rank / devices = {rank} / {n_dev} = {per}; pass the state "
                         f"in and out of shard_map with opt.state_specs(state)")
    return n_dev, per, lax.axis_index(axis_name) * per


def own(x, axis_name, per):
    """This device's share (rows [i·per, (i+1)·per)) of a replicated vector."""
    return lax.dynamic_slice_in_dim(x, lax.axis_index(axis_name) * per, per)


def sparse_adamw_step(w, indices, scales, g, m_state, v_state, row_steps, lr, *, axis_name,
                      side, rank, alpha, adam, row_warmup=0, after=None):
    """The sharded compressed AdamW step (module doc): returns (w, m_state, v_state, row_steps,
    skipped) with W whole and replicated, and M, V, row_steps this device's share."""
    n_dev, per, _ = _shares(axis_name, rank, m_state.shape[0], "M")
    g_own = lax.psum_scatter(g, axis_name, scatter_dimension=0, tiled=True) / n_dev
    nonfinite = jnp.logical_not(jnp.all(jnp.isfinite(g_own))).astype(jnp.int32)
    any_nonfinite = lax.pmax(nonfinite, axis_name)
    # A NaN learning rate makes the op skip (outcome 1) and write nothing: every device skips.
    lr = jnp.where(any_nonfinite > 0, jnp.float32(jnp.nan), jnp.asarray(lr, jnp.float32))
    idx_own, sc_own = own(indices, axis_name, per), own(scales, axis_name, per)
    rows_axis = 0 if side == "rows" else 1
    w_own = jnp.take(w, idx_own, axis=rows_axis)
    local = jnp.arange(per, dtype=jnp.int32)
    w_own, m_state, v_state, row_steps, skipped = ops.sparse_adamw_step(
        w_own, local, sc_own, g_own, m_state, v_state, row_steps, lr, side=side, alpha=alpha,
        row_warmup=row_warmup, after=after, **adam)
    rows = lax.all_gather(w_own, axis_name, axis=rows_axis, tiled=True)
    if rows_axis == 0:
        w = w.at[indices].set(rows, unique_indices=True, indices_are_sorted=True)
    else:
        w = w.at[:, indices].set(rows, unique_indices=True, indices_are_sorted=True)
    return w, m_state, v_state, row_steps, skipped


def state_refresh(old_indices, new_indices, m_state, v_state, row_steps, *, axis_name, rank,
                  refresh_mode):
    """The sharded state refresh (module doc): this device's share of M, V and row_steps for
    the new selection."""
    _, per, _ = _shares(axis_name, rank, m_state.shape[0], "M")
    if refresh_mode == "reset":
        return ops.state_refresh(own(old_indices, axis_name, per),
                                 own(new_indices, axis_name, per), m_state, v_state, row_steps,
                                 refresh_mode="reset")
    whole = [lax.all_gather(a, axis_name, axis=0, tiled=True)
             for a in (m_state, v_state, row_steps)]
    m_all, v_all, steps_all = ops.state_refresh(old_indices, new_indices, *whole,
                                                refresh_mode=refresh_mode)
    return tuple(own(a, axis_name, per) for a in (m_all, v_all, steps_all))


def state_specs(state, axis_name, layer_type):
    """A state-shaped tree of PartitionSpecs: M, V and row_steps of each GRASS layer split over
    `axis_name` (first dimension), everything else replicated. Use it for shard_map's
    in_specs / out_specs and, with NamedSharding, to place the state (`jax.jit(opt.init,
    out_shardings=...)` creates each share where it lives)."""
    rep = PartitionSpec()
    split = PartitionSpec(axis_name)

    def layer(node):
        if isinstance(node, layer_type):
            return node._replace(indices=rep, scales=rep, m=split, v=split, row_steps=split,
                                 refresh_count=rep, skipped=rep)
        return jax.tree_util.tree_map(lambda _: rep, node)

    return jax.tree_util.tree_map(layer, state, is_leaf=lambda x: isinstance(x, layer_type))
