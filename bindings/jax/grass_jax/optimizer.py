"""grass_adamw: GRASS for the projected weights, any optax transform for the rest.

    opt = grass_adamw(1e-3, grass_mask=mask, rank=64, refresh_every=200)
    state = opt.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, state, batch):
        proj = opt.projections(params, state)
        loss, grads = opt.value_and_grad(loss_fn)(params, proj, batch)
        params, state = opt.step(params, grads, state)
        return params, state, loss

The state is a pytree of arrays (save it with `save_state`, or any checkpointer): a step
counter, and for each GRASS weight its row indices σ, scales ρ, Adam moments M and V (r x k),
one Adam step count per state row, refresh counter and last step's outcome; for the other
leaves the dense optimizer's state. Under data parallelism (`axis_name`) the whole state is
replicated (every device holds and updates the same copy), unless `shard_state` splits each
GRASS layer's M, V and step counts over the devices (grass_jax.sharding). The interface is
optax-like (init / step) rather than optax's init / update because GRASS writes W in place (a
scatter into r rows); an `update` returning W_new - W would build the m x n tensor GRASS exists
to avoid.
"""

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax
from jax import lax

from . import consistency, ops, sharding
from .linear import LayerConfig, Projection, select_rows


class GrassLayerState(NamedTuple):
    """State of one GRASS weight.

    `row_steps[j]` is the number of Adam steps state row j (M[j], V[j]) has taken since it was
    zeroed; row j's update uses its own bias corrections. A "reset" refresh zeroes all counts;
    a "carry" refresh moves each count with its row (to the new position of an index that stays
    selected) and zeroes the counts of entering rows. So with "carry", row_steps[j] is the
    number of applied steps for which indices[j] has been selected without a break.

    `skipped` is the last step's outcome: 0 applied, 1 skipped for a non-finite gradient or
    learning rate, 2 skipped for bad indices (CUDA only). A skipped step leaves W, M, V and
    row_steps as they were.

    (grass_jax 0.1 kept one scalar `step` per layer here. Its checkpoints do not load into this
    state; `load_state` says so. Broadcasting an old `step` to all r rows gives every row the
    count 0.1 used for it.)
    """

    indices: jax.Array        # i32[r], sorted
    scales: jax.Array         # f32[r]
    m: jax.Array              # [r, k], f32 or bf16
    v: jax.Array              # [r, k]
    row_steps: jax.Array      # i32[r], Adam steps of each state row since it was zeroed
    refresh_count: jax.Array  # u32[], refreshes done (the next refresh's index)
    skipped: jax.Array        # i32[], outcome of the last step: 0 applied, 1 / 2 skipped


class DenseAdamWState(NamedTuple):
    """State of the built-in dense AdamW (grass's own op) for one leaf: every element steps
    together, so there is one Adam step count."""

    m: jax.Array
    v: jax.Array
    step: jax.Array     # i32[], Adam steps applied
    skipped: jax.Array  # i32[], outcome of the last step (0 applied, 1 skipped)


class GrassState(NamedTuple):
    count: jax.Array   # i32[], optimizer steps taken
    layers: Any        # params-shaped: GrassLayerState at GRASS leaves, None elsewhere
    dense: Any         # state of the dense optimizer over the other leaves


def _is_node(x):
    return x is None or isinstance(x, (GrassLayerState, DenseAdamWState, Projection))


def _after(grads):
    """One element of every floating gradient leaf: handed to each in-place step (never read),
    it makes the step depend on the whole backward pass, so XLA knows that every read of a
    weight (dX = dY·W in the backward, and through it the forward) comes before the weight is
    updated in place, and copies none."""
    parts = [leaf.reshape(-1)[:1].astype(jnp.float32) for leaf in jax.tree_util.tree_leaves(grads)
             if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size]
    return jnp.concatenate(parts) if parts else jnp.zeros((1,), jnp.float32)


def _aligned(tree, treedef):
    """The leaves of a params-shaped tree whose entries may be None or a state node, one per
    leaf of `treedef`."""
    items = jax.tree_util.tree_flatten(tree, is_leaf=_is_node)[0]
    if len(items) != treedef.num_leaves:
        raise ValueError("tree does not have the structure of the parameters")
    return items


class grass_adamw:
    """GRASS (compressed AdamW over selected rows) for the leaves `grass_mask` selects, and
    `dense` (an optax GradientTransformation; default: grass's own in-place AdamW with the same
    hyper-parameters) for the others.

    learning_rate   float or optax-style schedule `count -> lr` (traced: no recompilation)
    grass_mask      params-shaped tree of bools, or `fn(path, leaf) -> bool`; each selected
                    leaf is an (m, n) weight used through `grass_linear`
    rank            r (capped at the projected dimension); refresh_every: K
    method, power, scaling, side, seed: the row selection (see grass.h)
    b1, b2, eps, weight_decay, decay_mode ("off" | "selected" | "dense"), alpha,
    refresh_mode ("reset" | "carry"), state_dtype (float32 | bfloat16): the compressed AdamW.
                    "carry" keeps the moments and step counts of rows that stay selected;
                    entering rows start from zero moments and a zero step count.
    axis_name       data parallel: the mesh axis (inside shard_map) whose devices each see a
                    part of the batch. Gradients are averaged over it (compressed ones only)
                    and row scores combined by `dp_scores` ("exact" | "sum_sq", see
                    linear.layer_scores), so that every device selects the same rows.
                    Run the step under `jax.shard_map(..., check_vma=False)`: with vma
                    checking on, autodiff itself sums the gradients over the axis.
    shard_state     with axis_name: each device keeps M, V and the step counts of only its
                    r / N of the selected rows (ZeRO-1, see grass_jax.sharding); pass the
                    state through shard_map with `state_specs(state)`.
    """

    def __init__(self, learning_rate: Union[float, Callable], *, grass_mask, rank=256,
                 refresh_every=200, method="multinomial_nr", power=2, scaling="unbiased",
                 side="auto", seed=0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                 decay_mode="selected", alpha=1.0, refresh_mode="reset",
                 state_dtype=jnp.float32, dense=None, axis_name=None, dp_scores="exact",
                 dp_chunk_elems=1 << 22, shard_state=False):
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        if dp_scores not in ("exact", "sum_sq"):
            raise ValueError(f"dp_scores must be 'exact' or 'sum_sq', got {dp_scores!r}")
        self.learning_rate = learning_rate
        self.grass_mask = grass_mask
        self.rank, self.refresh_every = int(rank), int(refresh_every)
        self.selection = dict(method=method, power=int(power), scaling=scaling, seed=int(seed))
        self.side = side
        self.adam = dict(beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay,
                         decay_mode=decay_mode)
        self.alpha, self.refresh_mode = alpha, refresh_mode
        self.state_dtype = jnp.dtype(state_dtype)
        self.dense = dense
        self.axis_name, self.dp_scores, self.dp_chunk_elems = axis_name, dp_scores, dp_chunk_elems
        self.shard_state = bool(shard_state)
        if self.shard_state:
            sharding.check_options(axis_name=axis_name, method=method, decay_mode=decay_mode,
                                   weight_decay=weight_decay)

    # -- structure ---------------------------------------------------------------------------

    def _mask(self, params):
        leaves_p, treedef = jax.tree_util.tree_flatten_with_path(params)
        if callable(self.grass_mask):
            mask = [bool(self.grass_mask(path, leaf)) for path, leaf in leaves_p]
        else:
            mask = treedef.flatten_up_to(self.grass_mask)
            mask = [bool(m) for m in mask]
        return [leaf for _, leaf in leaves_p], treedef, mask

    def layer_configs(self, params):
        """LayerConfig per GRASS leaf (None elsewhere), in flattened order. layer_id counts the
        GRASS leaves in that order, so each layer draws its rows independently."""
        leaves, treedef, mask = self._mask(params)
        configs, layer_id = [], 0
        for leaf, is_grass in zip(leaves, mask):
            if not is_grass:
                configs.append(None)
                continue
            if jnp.ndim(leaf) != 2:
                raise ValueError(f"a GRASS leaf must be a 2-D (out, in) weight, got shape "
                                 f"{jnp.shape(leaf)}")
            m, n = jnp.shape(leaf)
            configs.append(LayerConfig.make(
                m, n, self.rank, self.side, layer_id=layer_id, axis_name=self.axis_name,
                dp_scores=self.dp_scores, dp_chunk_elems=self.dp_chunk_elems, **self.selection))
            layer_id += 1
        return leaves, treedef, configs

    def _dense_params(self, leaves, treedef, configs):
        return treedef.unflatten([None if c else p for p, c in zip(leaves, configs)])

    # -- init --------------------------------------------------------------------------------

    def init(self, params) -> GrassState:
        leaves, treedef, configs = self.layer_configs(params)
        layers = []
        for c in configs:
            if c is None:
                layers.append(None)
                continue
            # Distinct buffers (never one array twice): the state is donated to jit.
            z = lambda: jnp.zeros((c.rank, c.k), self.state_dtype)
            layers.append(GrassLayerState(
                indices=jnp.zeros((c.rank,), jnp.int32), scales=jnp.ones((c.rank,), jnp.float32),
                m=z(), v=z(), row_steps=jnp.zeros((c.rank,), jnp.int32),
                refresh_count=jnp.zeros((), jnp.uint32), skipped=jnp.zeros((), jnp.int32)))
        dense_params = self._dense_params(leaves, treedef, configs)
        if self.dense is None:
            dense = jax.tree_util.tree_map(
                lambda p: DenseAdamWState(jnp.zeros(p.shape, self.state_dtype),
                                          jnp.zeros(p.shape, self.state_dtype),
                                          jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)),
                dense_params)
        else:
            dense = self.dense.init(dense_params)
        if jax.process_count() > 1 and not any(
                isinstance(p, jax.core.Tracer) for p in jax.tree_util.tree_leaves(params)):
            self.check_processes(params)  # under jit: call it yourself before
        return GrassState(jnp.zeros((), jnp.int32), treedef.unflatten(layers), dense)

    # -- one training step -------------------------------------------------------------------

    def refresh_due(self, state):
        """Traced bool: whether the coming step chooses new rows (every refresh_every steps,
        starting with the first)."""
        return state.count % self.refresh_every == 0

    def projections(self, params, state, refresh: Optional[bool] = None):
        """Params-shaped tree: a Projection for each GRASS leaf, None elsewhere. Pass it to the
        loss and use `grass_linear(x, w, proj[...])` for each GRASS weight.

        refresh=None decides on the device (`lax.cond`, one compiled step); True / False
        decides at trace time, for a loop that calls a refresh step every refresh_every steps
        (`opt.refresh_due_host(step)`) and a plain one otherwise."""
        leaves, treedef, configs = self.layer_configs(params)
        layers = _aligned(state.layers, treedef)
        flag = self.refresh_due(state) if refresh is None else bool(refresh)
        out = []
        for c, ls in zip(configs, layers):
            if c is None:
                out.append(None)
                continue
            out.append(Projection(ls.indices, ls.scales, jnp.zeros((c.rank, c.k), jnp.float32),
                                  jnp.zeros((c.d,), jnp.float32), ls.refresh_count, flag, c))
        return treedef.unflatten(out)

    def refresh_due_host(self, step: int) -> bool:
        return step % self.refresh_every == 0

    @staticmethod
    def value_and_grad(fun, has_aux=False):
        """`fun(params, projections, *args)` -> (value, (param_grads, projection_grads))."""
        return jax.value_and_grad(fun, argnums=(0, 1), has_aux=has_aux, allow_int=True)

    def _lr(self, count):
        lr = self.learning_rate(count) if callable(self.learning_rate) else self.learning_rate
        return jnp.asarray(lr, jnp.float32)

    def _mean(self, tree):
        if self.axis_name is None:
            return tree
        return lax.pmean(tree, self.axis_name)

    def step(self, params, grads, state: GrassState):
        """Applies one step: returns (params, state). `grads` is (param_grads,
        projection_grads) from `value_and_grad`; the param grads of GRASS leaves are ignored
        (zero by construction). Under data parallelism the gradients are averaged here."""
        param_grads, proj_grads = grads
        leaves, treedef, configs = self.layer_configs(params)
        layers = _aligned(state.layers, treedef)
        pcts = _aligned(proj_grads, treedef)
        gleaves = treedef.flatten_up_to(param_grads)
        lr = self._lr(state.count)
        after = _after(grads)
        new_leaves, new_layers = list(leaves), list(layers)
        for i, (w, c, ls, pct) in enumerate(zip(leaves, configs, layers, pcts)):
            if c is None:
                continue
            if not isinstance(pct, Projection):
                raise ValueError("projection_grads must hold a Projection for each GRASS leaf: "
                                 "differentiate the loss with respect to the projections")
            static = pct.static_refresh
            refresh = self.refresh_due(state) if static is None else static
            ls = self._maybe_refresh(c, ls, pct.score_sink, refresh)
            if self.shard_state:
                w, m, v, row_steps, skipped = sharding.sparse_adamw_step(
                    w, ls.indices, ls.scales, pct.sink, ls.m, ls.v, ls.row_steps, lr,
                    axis_name=self.axis_name, side=c.side, rank=c.rank, alpha=self.alpha,
                    adam=self.adam, after=after)
            else:
                w, m, v, row_steps, skipped = ops.sparse_adamw_step(
                    w, ls.indices, ls.scales, self._mean(pct.sink), ls.m, ls.v, ls.row_steps,
                    lr, side=c.side, alpha=self.alpha, after=after, **self.adam)
            new_leaves[i] = w
            new_layers[i] = ls._replace(m=m, v=v, row_steps=row_steps, skipped=skipped)
        dense = self._dense_step(leaves, gleaves, configs, treedef, state, lr, new_leaves, after)
        return (treedef.unflatten(new_leaves),
                GrassState(state.count + 1, treedef.unflatten(new_layers), dense))

    def _maybe_refresh(self, c, ls, scores, refresh):
        def fresh(ls):
            # The same op on the same scores as in the backward pass: the same rows.
            idx, sc = select_rows(c, scores, ls.refresh_count)
            if self.shard_state:
                m, v, row_steps = sharding.state_refresh(
                    ls.indices, idx, ls.m, ls.v, ls.row_steps, axis_name=self.axis_name,
                    rank=c.rank, refresh_mode=self.refresh_mode)
            else:
                m, v, row_steps = ops.state_refresh(ls.indices, idx, ls.m, ls.v, ls.row_steps,
                                                    refresh_mode=self.refresh_mode)
            return ls._replace(indices=idx, scales=sc, m=m, v=v, row_steps=row_steps,
                               refresh_count=ls.refresh_count + jnp.uint32(1))

        if isinstance(refresh, bool):
            return fresh(ls) if refresh else ls
        return lax.cond(refresh, fresh, lambda ls: ls, ls)

    def _dense_step(self, leaves, gleaves, configs, treedef, state, lr, new_leaves, after):
        """Steps the leaves that are not projected; writes them into new_leaves."""
        idx = [i for i, c in enumerate(configs) if c is None]
        grads = self._mean([gleaves[i] for i in idx])
        if self.dense is None:
            dstates = _aligned(state.dense, treedef)
            out = list(dstates)
            for i, g in zip(idx, grads):
                ds = dstates[i]
                w, m, v, st, sk = ops.adamw_step(leaves[i], g, ds.m, ds.v, ds.step, lr,
                                                 after=after, **self.adam)
                new_leaves[i] = w
                out[i] = DenseAdamWState(m, v, st, sk)
            return treedef.unflatten(out)
        only = lambda items: treedef.unflatten(
            [items.get(i) for i in range(treedef.num_leaves)])
        dense_params = only({i: leaves[i] for i in idx})
        dense_grads = only(dict(zip(idx, grads)))
        updates, dense_state = self.dense.update(dense_grads, state.dense, dense_params)
        updated = _aligned(optax.apply_updates(dense_params, updates), treedef)
        for i in idx:
            new_leaves[i] = updated[i]
        return dense_state

    def check_processes(self, params, state=None):
        """Multi-process runs: raises consistency.ProcessMismatchError in every process when
        the processes disagree on shapes, rank, seed, selection, refresh schedule or (with a
        state) step and refresh counts; one all-gather of a few int32 per process."""
        consistency.check_processes(self, params, state)

    def state_specs(self, state):
        """A state-shaped tree of PartitionSpecs for shard_map's in_specs / out_specs (and
        NamedSharding): with shard_state, M, V and row_steps split over axis_name, the rest
        replicated; without, all replicated. `state` may be `jax.eval_shape(opt.init, params)`."""
        if not self.shard_state:
            return jax.tree_util.tree_map(lambda _: jax.sharding.PartitionSpec(), state)
        return sharding.state_specs(state, self.axis_name, GrassLayerState)

    # -- introspection -----------------------------------------------------------------------

    def skipped(self, params, state):
        """Params-shaped tree: each GRASS layer's last step outcome (i32): 0 applied, 1 skipped
        for a non-finite gradient or learning rate, 2 skipped for bad indices (CUDA only); None
        elsewhere. Nonzero means the layer's W and state did not change."""
        leaves, treedef, configs = self.layer_configs(params)
        layers = _aligned(state.layers, treedef)
        return treedef.unflatten([ls.skipped if ls is not None else None for ls in layers])
