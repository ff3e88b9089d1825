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
leaves the dense optimizer's state. A stacked GRASS weight (*layers, m, n), as `lax.scan`
over layers wants it, has one of each per layer slice (leading axes `layers` on every array but
the refresh counter). Under data parallelism (`axis_name`) the whole state is replicated
(every device holds and updates the same copy), unless `shard_state` splits each GRASS layer's
M, V and step counts over the devices (grass_jax.sharding). The interface is optax-like
(init / step) rather than optax's init / update because GRASS writes W in place (a scatter into
r rows); an `update` returning W_new - W would build the m x n tensor GRASS exists to avoid.
"""

import difflib
import math
import operator
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.custom_derivatives import SymbolicZero

from . import _lib, consistency, ops, sharding
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

    (Shapes are for a 2-D weight; a stacked weight (*layers, m, n) puts `layers` in front of
    every array but refresh_count: one selection, state and outcome per layer slice.)
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


def _choice(value, table, what):
    """The name of the entry of `table` that `value` names (or whose code it is), else a
    ValueError that lists the choices and the closest one."""
    if isinstance(value, str):
        if value in table:
            return value
        close = difflib.get_close_matches(value, list(table), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"grass_adamw: {what} must be one of {sorted(table)}, got "
                         f"{value!r}{hint}")
    if isinstance(value, int) and not isinstance(value, bool) and value in table.values():
        return next(name for name, code in table.items() if code == value)
    raise ValueError(f"grass_adamw: {what} must be one of {sorted(table)}, got {value!r}")


def _number(value, what, low, high=math.inf, low_open=False, high_open=False):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"grass_adamw: {what} must be a number, got {value!r}") from None
    ok = math.isfinite(x) and (x > low if low_open else x >= low) and \
        (x < high if high_open else x <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"grass_adamw: {what} must lie in {lo}{low}, {high}{hi}, got {value!r}")
    return x


def _count(value, what, low=1):
    try:
        if isinstance(value, bool):
            raise TypeError
        x = operator.index(value)
    except TypeError:
        raise ValueError(f"grass_adamw: {what} must be an integer >= {low}, got {value!r}") \
            from None
    if x < low:
        raise ValueError(f"grass_adamw: {what} must be an integer >= {low}, got {value!r}")
    return x


def _path_name(path):
    return jax.tree_util.keystr(path) or "<root>"


_GRADS_HELP = (
    "opt.step(params, grads, state) takes grads = (param_grads, projection_grads), the pair "
    "opt.value_and_grad(loss_fn)(params, projections, ...) returns: the compressed gradient "
    "of each GRASS weight arrives as the gradient of its projection, not of the weight. "
    "jax.value_and_grad(loss_fn) differentiates the params only, so those gradients are lost; "
    "use opt.value_and_grad(loss_fn) (it also checks that every GRASS weight went through "
    "grass_linear), or jax.value_and_grad(loss_fn, argnums=(0, 1), allow_int=True).")


_DEFAULTS = _lib.defaults()


class grass_adamw:
    """GRASS (compressed AdamW over selected rows) for the leaves `grass_mask` selects, and
    `dense` for the others.

    learning_rate   float or optax-style schedule `count -> lr` (traced: no recompilation)
    grass_mask      params-shaped tree of bools, or `fn(path, leaf) -> bool`; each selected
                    leaf is an (m, n) weight used through `grass_linear`, or a stack of them
                    (*layers, m, n) for `lax.scan`: each layer slice is projected on its own
    rank            r >= 1, at most the projected dimension d of every GRASS weight (n, the
                    input features, for the default side "cols"; m for "rows"; max(m, n)
                    for "auto"): init refuses a larger one, naming the weight. With
                    cap_rank=True a weight with d < rank uses r = d instead (opt.rank is then
                    the largest rank; `opt.layer_ranks(params)` gives each weight's)
    refresh_every   K >= 1
    method, power, scaling, side, seed: the row selection (see grass.h). The defaults
                    (uniform_nr, scaling none, side cols, alpha 0.25) are the configuration
                    that trained best in the measured sweep (bench/results/sweep_train/):
                    every paper method stays available by name.
    b1, b2, eps, weight_decay, decay_mode ("off" | "selected" | "dense"), alpha,
    refresh_mode ("reset" | "carry"), state_dtype (float32 | bfloat16): the compressed AdamW.
                    "carry" keeps the moments and step counts of rows that stay selected;
                    entering rows start from zero moments and a zero step count.
    dense           the optimizer of the other leaves: None (grass's own in-place AdamW with
                    the same hyper-parameters and learning rate), any optax
                    GradientTransformation (e.g. optax.chain(...)), or a function
                    `learning_rate -> GradientTransformation` that grass calls with its own
                    learning_rate (float or schedule), so the schedule is given once:
                    dense=lambda lr: optax.adamw(lr, weight_decay=0.1)
    max_grad_norm   None, or clip by global norm before the step: every gradient (the
                    compressed r x k ones and the dense leaves') is scaled by
                    min(1, max_grad_norm / norm), norm over all of them together (see
                    `global_norm`), after the data-parallel average. A non-finite norm leaves
                    the gradients as they are, so the step is skipped as for any non-finite
                    gradient. With shard_state the norm costs one more all-reduce of the
                    r x k gradients.
    axis_name       data parallel: the mesh axis (inside shard_map) whose devices each see a
                    part of the batch. Gradients are averaged over it (compressed ones only)
                    and row scores combined by `dp_scores` ("exact" | "sum_sq", see
                    linear.layer_scores), so that every device selects the same rows.
                    Run the step under `jax.shard_map(..., check_vma=False)`: with vma
                    checking on, autodiff itself sums the gradients over the axis.
    shard_state     with axis_name: each device keeps M, V and the step counts of only its
                    r / N of the selected rows (ZeRO-1, see grass_jax.sharding); pass the
                    state through shard_map with `state_specs(state)`.

    Every option is checked here: a misspelt name or an out-of-range value raises ValueError,
    naming the option and the accepted values.
    """

    # The defaults are the library's (grass_projection_config_init / grass_adamw_config_init:
    # one set, kept in the Rust core); rank stays 256 here until rank=None (the library's rank
    # rule, _lib.default_rank) is wired through layer_configs and the consistency fingerprint.
    def __init__(self, learning_rate: Union[float, Callable], *, grass_mask, rank=256,
                 refresh_every=_DEFAULTS["refresh_every"], method=_DEFAULTS["method"],
                 power=_DEFAULTS["power"], scaling=_DEFAULTS["scaling"], side=_DEFAULTS["side"],
                 seed=_DEFAULTS["seed"], b1=_DEFAULTS["b1"], b2=_DEFAULTS["b2"],
                 eps=_DEFAULTS["eps"], weight_decay=_DEFAULTS["weight_decay"],
                 decay_mode=_DEFAULTS["decay_mode"], alpha=_DEFAULTS["alpha"],
                 refresh_mode=_DEFAULTS["refresh_mode"],
                 state_dtype=jnp.dtype(_DEFAULTS["state_dtype"]), dense=None, axis_name=None,
                 dp_scores="exact",
                 dp_chunk_elems=1 << 22, shard_state=False, max_grad_norm=None,
                 cap_rank=False):
        if not callable(learning_rate):
            _number(learning_rate, "learning_rate", 0.0)
        if grass_mask is None:
            raise ValueError("grass_adamw: grass_mask is required: a params-shaped tree of bools "
                             "or fn(path, leaf) -> bool selecting the GRASS weights")
        self.rank = _count(rank, "rank (the number of selected rows per weight)")
        self.refresh_every = _count(refresh_every, "refresh_every")
        method = _choice(method, _lib.METHODS, "method")
        scaling = _choice(scaling, _lib.SCALINGS, "scaling")
        if power not in (1, 2) or isinstance(power, bool):
            raise ValueError(f"grass_adamw: power must be 1 or 2 (q_i ∝ s_i^p), got {power!r}")
        side = _choice(side, _lib.SIDES, "side")
        seed = _count(seed, "seed", 0)
        if seed >= 1 << 64:
            raise ValueError(f"grass_adamw: seed must fit in 64 bits, got {seed}")
        decay_mode = _choice(decay_mode, _lib.DECAY_MODES, "decay_mode")
        refresh_mode = _choice(refresh_mode, _lib.REFRESH_MODES, "refresh_mode")
        dp_scores = _choice(dp_scores, {"exact": 0, "sum_sq": 1}, "dp_scores")
        try:
            state_dtype = jnp.dtype(state_dtype)
        except TypeError:
            state_dtype = None
        if state_dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            raise ValueError(f"grass_adamw: state_dtype must be float32 or bfloat16, got "
                             f"{state_dtype!r}")
        _number(b1, "b1", 0.0, 1.0, high_open=True)
        _number(b2, "b2", 0.0, 1.0, high_open=True)
        _number(eps, "eps", 0.0, low_open=True)
        _number(weight_decay, "weight_decay", 0.0)
        _number(alpha, "alpha", 0.0, low_open=True)
        if max_grad_norm is not None:
            _number(max_grad_norm, "max_grad_norm", 0.0, low_open=True)
        if dense is not None and not isinstance(dense, optax.GradientTransformation) and \
                not callable(dense):
            raise ValueError("grass_adamw: dense must be None, an optax GradientTransformation "
                             "or a function learning_rate -> GradientTransformation, got "
                             f"{type(dense).__name__}")
        if dense is not None and not isinstance(dense, optax.GradientTransformation):
            dense = dense(learning_rate)
            if not isinstance(dense, optax.GradientTransformation):
                raise ValueError("grass_adamw: dense(learning_rate) must return an optax "
                                 f"GradientTransformation, got {type(dense).__name__}")
        self.dp_chunk_elems = _count(dp_chunk_elems, "dp_chunk_elems")
        self.learning_rate = learning_rate
        self.grass_mask = grass_mask
        self.selection = dict(method=method, power=int(power), scaling=scaling, seed=int(seed))
        self.side = side
        self.adam = dict(beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay,
                         decay_mode=decay_mode)
        self.alpha, self.refresh_mode = alpha, refresh_mode
        self.state_dtype = state_dtype
        self.dense = dense
        self.axis_name, self.dp_scores = axis_name, dp_scores
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.cap_rank = bool(cap_rank)
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
        return leaves_p, treedef, mask

    def layer_configs(self, params):
        """LayerConfig per GRASS leaf (None elsewhere), in flattened order. layer_id counts the
        GRASS leaves in that order, so each layer draws its rows independently (the slices of
        a stacked leaf share its layer_id and differ by refresh index, LayerConfig.stack)."""
        leaves_p, treedef, mask = self._mask(params)
        configs, layer_id = [], 0
        for (path, leaf), is_grass in zip(leaves_p, mask):
            if not is_grass:
                configs.append(None)
                continue
            shape = tuple(jnp.shape(leaf))
            if len(shape) < 2:
                raise ValueError(f"GRASS leaf {_path_name(path)}: a GRASS leaf must be a 2-D "
                                 f"(out, in) weight or a stack of them (*layers, out, in), got "
                                 f"shape {shape}; leave it out of grass_mask")
            m, n = shape[-2:]
            if self.shard_state and len(shape) > 2:
                raise ValueError(f"GRASS leaf {_path_name(path)}: shard_state does not split "
                                 f"stacked weights {shape}; use 2-D weights with shard_state, "
                                 f"or a replicated state (shard_state=False)")
            c = LayerConfig.make(
                m, n, self.rank, self.side, layer_id=layer_id, axis_name=self.axis_name,
                dp_scores=self.dp_scores, dp_chunk_elems=self.dp_chunk_elems,
                stack=shape[:-2], **self.selection)
            if c.rank < self.rank and not self.cap_rank:
                what = "rows" if c.side == "rows" else "columns"
                raise ValueError(
                    f"GRASS leaf {_path_name(path)} ({m} x {n}, side {c.side}) has only {c.d} "
                    f"{what} to select from, fewer than rank={self.rank}: choose rank <= {c.d}, "
                    f"leave this weight out of grass_mask, or pass cap_rank=True to use "
                    f"r = min(rank, d) for each weight")
            configs.append(c)
            layer_id += 1
        return [leaf for _, leaf in leaves_p], treedef, configs

    def layer_ranks(self, params):
        """Params-shaped tree: the rank r each GRASS weight uses (None elsewhere)."""
        _, treedef, configs = self.layer_configs(params)
        return treedef.unflatten([c.rank if c else None for c in configs])

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
            z = lambda: jnp.zeros(c.stack + (c.rank, c.k), self.state_dtype)
            rows = c.stack + (c.rank,)
            layers.append(GrassLayerState(
                indices=jnp.zeros(rows, jnp.int32), scales=jnp.ones(rows, jnp.float32),
                m=z(), v=z(), row_steps=jnp.zeros(rows, jnp.int32),
                refresh_count=jnp.zeros((), jnp.uint32), skipped=jnp.zeros(c.stack, jnp.int32)))
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
        loss and use `grass_linear(x, w, proj[...])` for each GRASS weight (for a stacked
        weight: one slice at a time, scanning over weight and projection together).

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
            f = flag if isinstance(flag, bool) else jnp.broadcast_to(flag, c.stack)
            out.append(Projection(ls.indices, ls.scales,
                                  jnp.zeros(c.stack + (c.rank, c.k), jnp.float32),
                                  jnp.zeros(c.stack + (c.d,), jnp.float32),
                                  c.refresh_indices(ls.refresh_count), f, c))
        return treedef.unflatten(out)

    def refresh_due_host(self, step: int) -> bool:
        return step % self.refresh_every == 0

    @staticmethod
    def value_and_grad(fun, has_aux=False):
        """`fun(params, projections, *args)` -> (value, (param_grads, projection_grads)).

        It is `jax.value_and_grad(fun, argnums=(0, 1), allow_int=True)`, and it checks, when
        it traces `fun`, that the gradient of every projection came out of `grass_linear`:
        a GRASS weight that reaches the loss without it would never train, so that raises
        ValueError naming the weight."""

        def checked(params, projections, *args, **kwargs):
            used = {}

            def probed(params, projections, *args, **kwargs):
                return fun(params, _probe_sinks(projections, used), *args, **kwargs)

            out = jax.value_and_grad(probed, argnums=(0, 1), has_aux=has_aux,
                                     allow_int=True)(params, projections, *args, **kwargs)
            _check_used(projections, used)
            return out

        return checked

    def _lr(self, count):
        lr = self.learning_rate(count) if callable(self.learning_rate) else self.learning_rate
        return jnp.asarray(lr, jnp.float32)

    def _mean(self, tree):
        if self.axis_name is None:
            return tree
        return lax.pmean(tree, self.axis_name)

    def _split_grads(self, grads, treedef, configs):
        """(param gradient leaves, projection gradient per leaf) from `grads`, or a ValueError
        that says how to get the right ones."""
        if not isinstance(grads, (tuple, list)) or len(grads) != 2:
            raise ValueError(_GRADS_HELP)
        param_grads, proj_grads = grads
        try:
            gleaves = treedef.flatten_up_to(param_grads)
            pcts = _aligned(proj_grads, treedef)
        except (ValueError, TypeError):
            raise ValueError(_GRADS_HELP) from None
        for c, pct in zip(configs, pcts):
            if c is not None and not isinstance(pct, Projection):
                raise ValueError(_GRADS_HELP)
        return gleaves, pcts

    def global_norm(self, grads, params=None):
        """The global L2 norm of (param_grads, projection_grads): over the compressed r x k
        gradients of the GRASS weights and the gradients of the other leaves (the GRASS
        weights' own zero gradients left out). Under data parallelism it is each device's own
        norm; `max_grad_norm` clips after the gradients are averaged. `params` is only read
        for its structure and shapes: the param grads stand in when it is left out."""
        gleaves, pcts, configs = self._grad_parts(grads, params)
        return _norm(self._compressed(pcts, configs), self._dense_grads(gleaves, configs))

    def clip_by_global_norm(self, grads, max_norm, params=None):
        """(grads, norm): grads scaled by min(1, max_norm / norm), the norm of `global_norm`;
        a non-finite norm leaves them as they are (the step then skips). Same structure as
        `grads`, ready for `step`."""
        gleaves, pcts, configs = self._grad_parts(grads, params)
        comp = self._compressed(pcts, configs)
        dense = self._dense_grads(gleaves, configs)
        norm = _norm(comp, dense)
        scale = _clip_scale(norm, max_norm)
        treedef = jax.tree_util.tree_structure(grads[0])
        new_g = [g if c is not None or g is None else (g * scale).astype(g.dtype)
                 for g, c in zip(gleaves, configs)]
        new_p = [p if c is None else _replace_sink(p, p.sink * scale)
                 for p, c in zip(pcts, configs)]
        return (treedef.unflatten(new_g), treedef.unflatten(new_p)), norm

    def _grad_parts(self, grads, params):
        if params is None:
            # The param grads have the params' structure and shapes (GRASS weights' grads
            # included), so they stand in for the params.
            if not isinstance(grads, (tuple, list)) or len(grads) != 2:
                raise ValueError(_GRADS_HELP)
            params = grads[0]
        _, treedef, configs = self.layer_configs(params)
        gleaves, pcts = self._split_grads(grads, treedef, configs)
        return gleaves, pcts, configs

    @staticmethod
    def _compressed(pcts, configs):
        return [p.sink for p, c in zip(pcts, configs) if c is not None]

    @staticmethod
    def _dense_grads(gleaves, configs):
        return [g for g, c in zip(gleaves, configs) if c is None and g is not None]

    def step(self, params, grads, state: GrassState):
        """Applies one step: returns (params, state). `grads` is (param_grads,
        projection_grads) from `value_and_grad`; the param grads of GRASS leaves are ignored
        (zero by construction). Under data parallelism the gradients are averaged here."""
        leaves, treedef, configs = self.layer_configs(params)
        gleaves, pcts = self._split_grads(grads, treedef, configs)
        layers = _aligned(state.layers, treedef)
        lr = self._lr(state.count)
        # The GRASS weights' own (zero) gradients are left out: they order nothing, and a
        # stacked weight's, from lax.scan, would be materialised as (*layers, m, n) zeros.
        after = _after((pcts, [g for g, c in zip(gleaves, configs) if c is None]))
        dense_idx = [i for i, c in enumerate(configs) if c is None]
        sinks = {i: pcts[i].sink for i, c in enumerate(configs) if c is not None}
        # With shard_state the sharded step averages the compressed gradients itself (a
        # reduce-scatter); otherwise they are averaged here.
        if not self.shard_state:
            sinks = self._mean(sinks)
        dense_grads = self._mean([gleaves[i] for i in dense_idx])
        if self.max_grad_norm is not None:
            # The norm of the averaged gradients (with shard_state: one more all-reduce of
            # the r x k gradients than the step itself needs).
            mean_sinks = self._mean(sinks) if self.shard_state else sinks
            norm = _norm(list(mean_sinks.values()), [g for g in dense_grads if g is not None])
            scale = _clip_scale(norm, self.max_grad_norm)
            sinks = {i: g * scale for i, g in sinks.items()}
            dense_grads = [g if g is None else (g * scale).astype(g.dtype) for g in dense_grads]
        new_leaves, new_layers = list(leaves), list(layers)
        for i, (w, c, ls, pct) in enumerate(zip(leaves, configs, layers, pcts)):
            if c is None:
                continue
            static = pct.static_refresh
            refresh = self.refresh_due(state) if static is None else static
            ls = self._maybe_refresh(c, ls, pct.score_sink, refresh)
            if self.shard_state:
                w, m, v, row_steps, skipped = sharding.sparse_adamw_step(
                    w, ls.indices, ls.scales, sinks[i], ls.m, ls.v, ls.row_steps, lr,
                    axis_name=self.axis_name, side=c.side, rank=c.rank, alpha=self.alpha,
                    adam=self.adam, after=after)
            else:
                w, m, v, row_steps, skipped = ops.sparse_adamw_step(
                    w, ls.indices, ls.scales, sinks[i], ls.m, ls.v, ls.row_steps, lr,
                    side=c.side, alpha=self.alpha, after=after, **self.adam)
            new_leaves[i] = w
            new_layers[i] = ls._replace(m=m, v=v, row_steps=row_steps, skipped=skipped)
        dense = self._dense_step(leaves, dense_idx, dense_grads, treedef, state, lr,
                                 new_leaves, after)
        return (treedef.unflatten(new_leaves),
                GrassState(state.count + 1, treedef.unflatten(new_layers), dense))

    def _maybe_refresh(self, c, ls, scores, refresh):
        def fresh(ls):
            # The same op on the same scores and refresh index as in the backward pass: the
            # same rows (per layer slice for a stacked weight).
            ri = c.refresh_indices(ls.refresh_count)
            if c.stack:
                flat = lambda a: a.reshape((c.slices,) + a.shape[len(c.stack):])
                back = lambda a: a.reshape(c.stack + a.shape[1:])
                idx, sc = jax.vmap(lambda s, i: select_rows(c, s, i))(flat(scores), flat(ri))
                m, v, row_steps = jax.vmap(
                    lambda o, n, m, v, st: ops.state_refresh(o, n, m, v, st,
                                                             refresh_mode=self.refresh_mode))(
                    flat(ls.indices), idx, flat(ls.m), flat(ls.v), flat(ls.row_steps))
                idx, sc, m, v, row_steps = map(back, (idx, sc, m, v, row_steps))
            elif self.shard_state:
                idx, sc = select_rows(c, scores, ri)
                m, v, row_steps = sharding.state_refresh(
                    ls.indices, idx, ls.m, ls.v, ls.row_steps, axis_name=self.axis_name,
                    rank=c.rank, refresh_mode=self.refresh_mode)
            else:
                idx, sc = select_rows(c, scores, ri)
                m, v, row_steps = ops.state_refresh(ls.indices, idx, ls.m, ls.v, ls.row_steps,
                                                    refresh_mode=self.refresh_mode)
            return ls._replace(indices=idx, scales=sc, m=m, v=v, row_steps=row_steps,
                               refresh_count=ls.refresh_count + jnp.uint32(1))

        if isinstance(refresh, bool):
            return fresh(ls) if refresh else ls
        return lax.cond(refresh, fresh, lambda ls: ls, ls)

    def _dense_step(self, leaves, idx, grads, treedef, state, lr, new_leaves, after):
        """Steps the leaves that are not projected (`idx`, their gradients `grads`, already
        averaged and clipped); writes them into new_leaves."""
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
        """Params-shaped tree: each GRASS layer's last step outcome (i32; one per layer slice
        of a stacked weight): 0 applied, 1 skipped for a non-finite gradient or learning rate,
        2 skipped for bad indices (CUDA only); None elsewhere. Nonzero means the layer's W and
        state did not change."""
        leaves, treedef, configs = self.layer_configs(params)
        layers = _aligned(state.layers, treedef)
        return treedef.unflatten([ls.skipped if ls is not None else None for ls in layers])


def _norm(compressed, dense):
    parts = [jnp.sum(jnp.square(g.astype(jnp.float32))) for g in list(compressed) + list(dense)]
    return jnp.sqrt(sum(parts)) if parts else jnp.zeros((), jnp.float32)


def _clip_scale(norm, max_norm):
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return jnp.where(jnp.isfinite(norm), scale, 1.0).astype(jnp.float32)


def _replace_sink(p, sink):
    children, aux = p.tree_flatten()
    return Projection.tree_unflatten(aux, (children[0], children[1], sink) + tuple(children[3:]))


def _probe_sinks(projections, used):
    """`projections` with each sink passed through an identity whose backward notes, in
    `used[path]`, whether a real cotangent reached it (grass_linear's backward always makes
    one). A sink nothing differentiable used gets a symbolic zero or no backward at all."""
    def probe(path, p):
        if not isinstance(p, Projection):
            return p
        key = _path_name(path)

        @jax.custom_vjp
        def ident(x):
            return x

        def fwd(x):
            return x.value, None

        def bwd(_, ct):
            if isinstance(ct, SymbolicZero):
                return (jnp.zeros(ct.shape, ct.dtype),)
            used[key] = True
            return (ct,)

        ident.defvjp(fwd, bwd, symbolic_zeros=True)
        return _replace_sink(p, ident(p.sink))

    return jax.tree_util.tree_map_with_path(probe, projections,
                                            is_leaf=lambda x: isinstance(x, Projection))


def _check_used(projections, used):
    flat = jax.tree_util.tree_flatten_with_path(
        projections, is_leaf=lambda x: isinstance(x, Projection))[0]
    missing = [_path_name(path) for path, p in flat
               if isinstance(p, Projection) and _path_name(path) not in used]
    if missing:
        names = ", ".join(missing)
        raise ValueError(
            f"GRASS weight(s) {names}: no gradient came out of grass_linear for them. A weight "
            f"in grass_mask must reach the loss through "
            f"grass_linear(x, w, projections{missing[0]}) (once per step, with its projection); "
            f"used otherwise (x @ w.T) or not at all it would never train. Call grass_linear "
            f"for it, or leave it out of grass_mask so the dense optimizer trains it.")
