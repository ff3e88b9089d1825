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
M, V and step counts over the devices (grass_jax.sharding).

Two interfaces: init / step, for the compressed gradients of grass layers (step writes the
selected rows of W in place; an optax update W_new - W would be the m x n tensor GRASS exists
to avoid), and optax's init / update on ordinary full gradients (`update`), so that the
optimizer drops into optax.chain, Flax TrainState and nnx.Optimizer.
"""

import difflib
import inspect
import math
import operator
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.custom_derivatives import SymbolicZero

from . import _lib, consistency, ops, sharding
from .linear import (LayerConfig, Projection, check_layout, explicit_spec, gathered,
                     select_rows)


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
    # One element by index (not a reshape, which a weight sharded over explicit mesh axes
    # would refuse).
    parts = [leaf[(0,) * leaf.ndim].reshape(1).astype(jnp.float32)
             for leaf in jax.tree_util.tree_leaves(grads)
             if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size]
    return jnp.concatenate(parts) if parts else jnp.zeros((1,), jnp.float32)


def _aligned(tree, treedef, kind=None):
    """The leaves of a params-shaped tree whose entries may be None or a state node, one per
    leaf of `treedef`. `kind` (a NamedTuple class) restores entries that came back as plain
    tuples (Flax nnx.Optimizer stores the optimizer state that way)."""
    items = jax.tree_util.tree_flatten(tree, is_leaf=_is_node)[0]
    if len(items) != treedef.num_leaves:
        try:
            items = treedef.flatten_up_to(tree)
        except (ValueError, TypeError):
            raise ValueError("tree does not have the structure of the parameters") from None
    if kind is not None:
        items = [_restore(x, kind) for x in items]
    return items


def _restore(x, kind):
    """x as a `kind` NamedTuple when it holds one's fields as a plain tuple or as a mapping
    (by position or by field name: the forms nnx.Optimizer stores NamedTuples in); else x."""
    if x is None or isinstance(x, kind):
        return x
    n = len(kind._fields)
    if type(x) is tuple and len(x) == n:
        return kind(*x)
    if hasattr(x, "keys"):
        keys = set(x.keys())
        if keys == set(kind._fields):
            return kind(**{f: _value(x[f]) for f in kind._fields})
        if keys == set(range(n)):
            return kind(*(_value(x[i]) for i in range(n)))
    return x


def _value(x):
    return x.value if hasattr(x, "value") and not isinstance(x, jax.Array) else x


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


def _state_dtype(value, what):
    """float32 or bfloat16 as a jnp dtype, else a ValueError naming `what`."""
    try:
        dt = jnp.dtype(value)
    except TypeError:
        dt = None
    if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"grass_adamw: {what} must be float32 or bfloat16, got {value!r}")
    return dt


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


def leaf_name(path):
    """The name of the leaf at a params path: its last dict key or attribute, skipping the
    `.value` of a Flax nnx Variable (nnx.state(model) holds Param(value=array))."""
    for entry in reversed(tuple(path)):
        key = getattr(entry, "key", getattr(entry, "name", None))
        if isinstance(entry, jax.tree_util.GetAttrKey) and key == "value":
            continue
        return key
    return None


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


def _refuse_traced_options(options):
    """grass_adamw's options other than the learning rate fix shapes, the selection and the
    compiled step: a traced or array value (what `optax.inject_hyperparams` passes for every
    number it is not told is static) is refused, naming the call that keeps them static."""
    try:  # what inject_hyperparams wraps a callable option (grass_mask) in
        from optax.schedules._inject import WrappedSchedule
    except ImportError:
        WrappedSchedule = ()
    bad = [name for name, value in options.items()
           if name not in ("self", "learning_rate") and
           isinstance(value, (jax.Array, jax.core.Tracer) + (
               (WrappedSchedule,) if WrappedSchedule else ()))]
    if bad:
        raise ValueError(
            f"grass_adamw: {', '.join(bad)} must be static (they fix shapes, the selection and "
            f"the compiled step); only learning_rate can be a hyper-parameter. With "
            f"optax.inject_hyperparams use "
            f"optax.inject_hyperparams(grass_adamw, static_args=grass_adamw.STATIC_ARGS)"
            f"(learning_rate, grass_mask=..., ...)")


def _inside_multisteps():
    """Whether init was called by optax.MultiSteps.init (which would keep full-size gradient
    accumulators next to grass's compressed state)."""
    frame = inspect.currentframe()
    try:
        for _ in range(12):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return False
            code = frame.f_code
            if getattr(code, "co_qualname", code.co_name) == "MultiSteps.init" and \
                    "optax" in code.co_filename:
                return True
        return False
    finally:
        del frame


_MULTISTEPS_HELP = (
    "grass_adamw: optax.MultiSteps would keep a full-size (m x n) accumulator for every GRASS "
    "weight, which grass exists to avoid. Accumulate micro-batches into the compressed "
    "(r x k) gradients instead: grads = opt.accumulate(grads, micro_grads) over the "
    "micro-batches' opt.value_and_grad results (projections from opt.projections, refreshed "
    "by the first micro-batch only: opt.micro_projections), then opt.step(params, "
    "opt.mean(grads, n), state) (see the README, 'Gradient accumulation').")

_PAIR_HELP = (
    "grass_adamw.update takes the ordinary gradients of the params (jax.grad of the loss, the "
    "optax contract), and selects rows of them itself. The (param_grads, projection_grads) "
    "pair of opt.value_and_grad, with the compressed gradients of grass_linear / GrassDense "
    "layers, goes to opt.step(params, grads, state) instead, which writes the selected rows "
    "in place; an optax update for them would be a full m x n array.")


class grass_adamw:
    """GRASS (compressed AdamW over selected rows) for the leaves `grass_mask` selects, and
    `dense` for the others.

    learning_rate   float or optax-style schedule `count -> lr` (traced: no recompilation)
    grass_mask      params-shaped tree of bools, or `fn(path, leaf) -> bool`; each selected
                    leaf is an (m, n) weight used through `grass_linear`, or a stack of them
                    (*layers, m, n) for `lax.scan`: each layer slice is projected on its own
    rank            None (the default): each GRASS weight gets the library's rank rule on
                    its projected dimension d (n, the input features, for the default side
                    "cols"; m for "rows"; max(m, n) for "auto"): r = d/2 rounded to the
                    nearest multiple of 8, at least 8, at most d (`_lib.default_rank(d)`,
                    grass_default_rank in C), so weights of different d get different ranks.
                    An int r >= 1: every GRASS weight uses r, which must be at most its d:
                    init refuses a larger one, naming the weight; with cap_rank=True a weight
                    with d < rank uses r = d instead. opt.rank is the rank as given (None for
                    the rule); `opt.layer_ranks(params)` gives each weight's resolved rank.
    refresh_every   K >= 1
    method, power, scaling, side, seed: the row selection (see grass.h). The defaults
                    (uniform_nr, scaling none, side cols) are the configuration that trained
                    best in the measured sweep (bench/results/sweep_train/), and bf16
                    moments at twice the rank with alpha 0.177 on the long runs
                    (docs/long-run.md): every paper method stays available by name.
    b1, b2, eps, weight_decay, decay_mode ("off" | "selected" | "dense"), alpha,
    refresh_mode ("reset" | "carry"), state_dtype (float32 | bfloat16): the compressed AdamW.
                    state_dtype is the GRASS weights' moments (default bfloat16: at the rank
                    rule's d/2 they take the bytes of f32 moments at d/4);
    dense_state_dtype (float32 | bfloat16): the moments of the dense leaves when dense is None
                    (grass's own AdamW; default float32).
                    "carry" keeps the moments and step counts of rows that stay selected;
                    entering rows start from zero moments and a zero step count.
    row_warmup      W >= 0: state row j's step is scaled by min(1, t_j / W), t_j its step count
                    (1 on the first step after a refresh zeroed it), so zeroed rows ramp up
                    instead of taking a full-size first step; 0 turns it off. Default: the
                    library's, 10 (docs/long-run.md measures it). Keep W well below
                    refresh_every with "reset": each refresh restarts every row.
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

    residual        "none" (the default) or "sign": each step, the rows (or columns) of every
                    GRASS weight that the selection leaves out move by FRUGAL's state-free
                    signSGD, -lr·alpha·residual_scale·sign(G_u), so every step is full-rank while
                    Adam's state stays r x k (docs/long-run.md: it beat grass alone and AdamW on
                    the long preset). With `step`, G is computed by libgrass in chunks from each
                    layer's X and dY, which the backward pass hands over: call
                    `opt.projections(params, state, tokens=...)` with the tokens per step; the
                    m x n gradient is never held, but X and dY of every GRASS layer are kept
                    until the step, and the step costs one more weight-gradient GEMM per
                    weight. With `update` it is taken from the full gradient. Not with
                    axis_name (the sign of the mean gradient needs its m x n all-reduce) nor
                    with micro-batch accumulation (the sign of each micro-batch is not the
                    sign of their sum).
    residual_scale  the residual step's size relative to lr·alpha (finite, >= 0; the
                    library's default, grass_default_residual_scale: 0.1).

    layout          how each GRASS weight is stored: "out_in" ((out, in), y = x @ w.T) or
                    "in_out" ((in, out), y = x @ w: Flax kernels), a params-shaped tree of
                    those, or fn(path, leaf) -> layout. None: "out_in", except that a leaf
                    named "kernel" (Flax's name for an (in, out) weight) must be declared.
                    grass_linear and the layers check every call against it, naming the
                    weight, so a square weight is never updated transposed.
    stacked         number of leading layer axes of each GRASS weight (nn.scan / lax.scan
                    stacks): an int for all, a params-shaped tree or fn(path, leaf) -> int;
                    None is 0. A GRASS leaf whose ndim is not stacked + 2 is refused: a 3-D
                    kernel is never taken for a stack unless declared.

    Every option is checked here: a misspelt name or an out-of-range value raises ValueError,
    naming the option and the accepted values.

    Two ways to train with it (both keep init's state):
      opt.step(params, grads, state) -> (params, state)     grads from opt.value_and_grad
          with grass_linear / GrassDense layers: compressed gradients, W updated in place.
      opt.update(grads, state, params) -> (updates, state)  the optax contract, so opt works
          in optax.chain, optax.apply_updates and Flax TrainState: grads are ordinary full
          gradients (jax.grad); the selected rows are taken from them (state savings only,
          like optax.contrib.galore); updates has the params' shapes.
    """

    # The defaults are the library's (grass_projection_config_init / grass_adamw_config_init:
    # one set, kept in the Rust core); the library's default rank, 0, is the rank rule: None
    # here, resolved per weight in layer_configs.

    # Every option but the learning rate: optax.inject_hyperparams(grass_adamw,
    # static_args=grass_adamw.STATIC_ARGS) keeps them static.
    STATIC_ARGS = ("grass_mask", "rank", "refresh_every", "method", "power", "scaling", "side",
                   "seed", "b1", "b2", "eps", "weight_decay", "decay_mode", "alpha",
                   "refresh_mode", "state_dtype", "dense_state_dtype", "dense", "axis_name",
                   "dp_scores",
                   "dp_chunk_elems", "shard_state", "max_grad_norm", "cap_rank", "layout",
                   "stacked", "residual", "residual_scale", "row_warmup")

    def __init__(self, learning_rate: Union[float, Callable], *, grass_mask, rank=_DEFAULTS["rank"],
                 refresh_every=_DEFAULTS["refresh_every"], method=_DEFAULTS["method"],
                 power=_DEFAULTS["power"], scaling=_DEFAULTS["scaling"], side=_DEFAULTS["side"],
                 seed=_DEFAULTS["seed"], b1=_DEFAULTS["b1"], b2=_DEFAULTS["b2"],
                 eps=_DEFAULTS["eps"], weight_decay=_DEFAULTS["weight_decay"],
                 decay_mode=_DEFAULTS["decay_mode"], alpha=_DEFAULTS["alpha"],
                 refresh_mode=_DEFAULTS["refresh_mode"],
                 state_dtype=jnp.dtype(_DEFAULTS["state_dtype"]),
                 dense_state_dtype=jnp.dtype(_DEFAULTS["dense_state_dtype"]), dense=None,
                 axis_name=None,
                 dp_scores="exact",
                 dp_chunk_elems=1 << 22, shard_state=False, max_grad_norm=None,
                 cap_rank=False, layout=None, stacked=None, residual="none",
                 residual_scale=_DEFAULTS["residual_scale"],
                 row_warmup=_DEFAULTS["row_warmup"]):
        _refuse_traced_options(locals())
        if not callable(learning_rate) and not isinstance(learning_rate, jax.core.Tracer):
            _number(learning_rate, "learning_rate", 0.0)
        if grass_mask is None:
            raise ValueError("grass_adamw: grass_mask is required: a params-shaped tree of bools "
                             "or fn(path, leaf) -> bool selecting the GRASS weights")
        self.rank = None if rank is None else \
            _count(rank, "rank (the number of selected rows per weight; None: the rank rule)")
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
        state_dtype = _state_dtype(state_dtype, "state_dtype")
        dense_state_dtype = _state_dtype(dense_state_dtype, "dense_state_dtype")
        _number(b1, "b1", 0.0, 1.0, high_open=True)
        _number(b2, "b2", 0.0, 1.0, high_open=True)
        _number(eps, "eps", 0.0, low_open=True)
        _number(weight_decay, "weight_decay", 0.0)
        _number(alpha, "alpha", 0.0, low_open=True)
        if max_grad_norm is not None:
            _number(max_grad_norm, "max_grad_norm", 0.0, low_open=True)
        _choice(residual, {"none": 0, "sign": 1}, "residual")
        _number(residual_scale, "residual_scale", 0.0)
        if residual != "none" and axis_name is not None:
            raise ValueError("grass_adamw: residual='sign' does not run data parallel "
                             "(axis_name): the sign of the mean gradient of the rows left out "
                             "needs an all-reduce of the m x n gradient; use residual='none'")
        self.residual, self.residual_scale = residual, float(residual_scale)
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
        self.row_warmup = _count(row_warmup, "row_warmup", 0)
        if self.row_warmup >= 1 << 31:
            raise ValueError(f"grass_adamw: row_warmup must fit in int32, got {row_warmup}")
        self.state_dtype = state_dtype
        self.dense_state_dtype = dense_state_dtype
        self.dense = dense
        self.axis_name, self.dp_scores = axis_name, dp_scores
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.cap_rank = bool(cap_rank)
        self.shard_state = bool(shard_state)
        if isinstance(layout, str) or layout is None:
            if layout is not None:
                check_layout(layout, "grass_adamw: layout")
        elif not callable(layout) and not isinstance(layout, (dict, list, tuple)):
            raise ValueError(f"grass_adamw: layout must be 'out_in', 'in_out', a params-shaped "
                             f"tree of those or fn(path, leaf) -> layout, got {layout!r}")
        self.layout = layout
        if stacked is not None and not callable(stacked) and \
                not isinstance(stacked, (int, dict, list, tuple)):
            raise ValueError(f"grass_adamw: stacked must be an int (leading layer axes), a "
                             f"params-shaped tree of ints or fn(path, leaf) -> int, got "
                             f"{stacked!r}")
        self.stacked = stacked
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

    def _per_leaf(self, option, leaves_p, treedef, default):
        """The value of a per-weight option (`layout`, `stacked`) for each leaf: one value for
        all, a params-shaped tree, or fn(path, leaf)."""
        if option is None or isinstance(option, (str, int)):
            return [default if option is None else option] * len(leaves_p)
        if callable(option):
            return [option(path, leaf) for path, leaf in leaves_p]
        try:
            return treedef.flatten_up_to(option)
        except (ValueError, TypeError) as e:
            raise ValueError(f"grass_adamw: a per-weight option tree does not have the "
                             f"structure of the params: {e}") from None

    def _layout_of(self, path, declared):
        name = _path_name(path)
        if declared is None:
            if leaf_name(path) == "kernel":
                raise ValueError(
                    f"GRASS leaf {name}: a leaf named 'kernel' is stored (in, out) by Flax, "
                    f"(out, in) elsewhere, and a square one looks the same either way: declare "
                    f"how it is stored, grass_adamw(..., layout='in_out') for Flax kernels "
                    f"(grass_linear(x, w, proj, layout='in_out'), GrassDense), or "
                    f"layout='out_in'")
            return "out_in"
        return check_layout(declared, f"grass_adamw: layout of GRASS leaf {name}")

    def layer_configs(self, params):
        """LayerConfig per GRASS leaf (None elsewhere), in flattened order. layer_id counts the
        GRASS leaves in that order, so each layer draws its rows independently (the slices of
        a stacked leaf share its layer_id and differ by refresh index, LayerConfig.stack)."""
        leaves_p, treedef, mask = self._mask(params)
        layouts = self._per_leaf(self.layout, leaves_p, treedef, None)
        stacks = self._per_leaf(self.stacked, leaves_p, treedef, 0)
        configs, layer_id = [], 0
        for (path, leaf), is_grass, layout, stacked in zip(leaves_p, mask, layouts, stacks):
            if not is_grass:
                configs.append(None)
                continue
            shape = tuple(jnp.shape(leaf))
            name = _path_name(path)
            layout = self._layout_of(path, layout)
            if stacked is None:
                stacked = 0
            if isinstance(stacked, bool) or not isinstance(stacked, int) or stacked < 0:
                raise ValueError(f"grass_adamw: stacked for GRASS leaf {name} must be the "
                                 f"number of leading layer axes (an int >= 0), got {stacked!r}")
            if len(shape) != stacked + 2:
                if len(shape) < 2:
                    why = "a GRASS leaf must be a 2-D weight; leave it out of grass_mask"
                elif len(shape) > stacked + 2:
                    why = (f"it has {len(shape) - 2 - stacked} axes more than a "
                           f"{'stack of ' if stacked else ''}2-D weight. A stack of layers "
                           f"(nn.scan / lax.scan) is declared: grass_adamw(..., "
                           f"stacked={len(shape) - 2}) (or a tree / fn(path, leaf) -> int). A "
                           f"multi-axis DenseGeneral kernel (e.g. (in, heads, head_dim)) is "
                           f"not a stack: reshape it to 2-D in the layer (GrassDense does)")
                else:
                    why = f"stacked={stacked} declares {stacked} leading layer axes"
                raise ValueError(f"GRASS leaf {name} has shape {shape}: {why}")
            m, n = shape[-2:] if layout == "out_in" else shape[-2:][::-1]
            if self.shard_state and len(shape) > 2:
                raise ValueError(f"GRASS leaf {_path_name(path)}: shard_state does not split "
                                 f"stacked weights {shape}; use 2-D weights with shard_state, "
                                 f"or a replicated state (shard_state=False)")
            c = LayerConfig.make(
                m, n, self.rank, self.side, layer_id=layer_id, axis_name=self.axis_name,
                dp_scores=self.dp_scores, dp_chunk_elems=self.dp_chunk_elems,
                stack=shape[:-2], layout=layout, name=name, **self.selection)
            if self.rank is not None and c.rank < self.rank and not self.cap_rank:
                what = "rows" if c.side == "rows" else "columns"
                raise ValueError(
                    f"GRASS leaf {name} ({m} x {n}{' as (out, in)' if layout == 'in_out' else ''}, "
                    f"side {c.side}) has only {c.d} "
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
        if _inside_multisteps():
            raise ValueError(_MULTISTEPS_HELP)
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
                lambda p: DenseAdamWState(jnp.zeros(p.shape, self.dense_state_dtype),
                                          jnp.zeros(p.shape, self.dense_state_dtype),
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

    def projections(self, params, state, refresh: Optional[bool] = None, tokens=None,
                    act_dtype=jnp.float32):
        """Params-shaped tree: a Projection for each GRASS leaf, None elsewhere. Pass it to the
        loss and use `grass_linear(x, w, proj[...])` for each GRASS weight (for a stacked
        weight: one slice at a time, scanning over weight and projection together).

        refresh=None decides on the device (`lax.cond`, one compiled step); True / False
        decides at trace time, for a loop that calls a refresh step every refresh_every steps
        (`opt.refresh_due_host(step)`) and a plain one otherwise.

        With residual="sign", `tokens` (the rows of X and dY each GRASS layer sees per step,
        e.g. batch x sequence) is required: the backward pass hands X and dY over to the step
        through the projections (as `act_dtype`, float32 or bfloat16)."""
        leaves, treedef, configs = self.layer_configs(params)
        if self.residual != "none":
            tokens = _count(tokens, "tokens (projections: the rows of X and dY per step, "
                                    "needed by residual='sign')")
            act_dtype = jnp.dtype(act_dtype)
            if act_dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
                raise ValueError(f"projections: act_dtype must be float32 or bfloat16, got "
                                 f"{act_dtype}")
        layers = _aligned(state.layers, treedef, GrassLayerState)
        flag = self.refresh_due(state) if refresh is None else bool(refresh)
        out = []
        for c, ls in zip(configs, layers):
            if c is None:
                out.append(None)
                continue
            f = flag if isinstance(flag, bool) else jnp.broadcast_to(flag, c.stack)
            acts = (None, None) if self.residual == "none" else (
                jnp.zeros(c.stack + (tokens, c.n), act_dtype),
                jnp.zeros(c.stack + (tokens, c.m), act_dtype))
            out.append(Projection(ls.indices, ls.scales,
                                  jnp.zeros(c.stack + (c.rank, c.k), jnp.float32),
                                  jnp.zeros(c.stack + (c.d,), jnp.float32),
                                  c.refresh_indices(ls.refresh_count), f, c, *acts))
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

    # -- gradient accumulation over micro-batches --------------------------------------------

    def micro_projections(self, projections, grads):
        """The projections for the micro-batches after the first of a step.

        `projections` are the step's (`opt.projections`), `grads` the first micro-batch's
        (param_grads, projection_grads). At a refresh step the first micro-batch chose new rows
        in its backward pass (from its own scores); the projections returned here carry those
        rows and do not refresh, so every micro-batch compresses onto the same rows and the
        compressed gradients add up. Outside refresh steps they are the step's rows."""
        def one(p, pct):
            if not isinstance(p, Projection):
                return p
            c = p.config
            idx, sc = p.indices, p.scales
            if p.static_refresh is not False:
                new_idx, new_sc = _select(c, pct.score_sink, p.refresh_index)
                if p.static_refresh is None:
                    idx = jnp.where(p.refresh[..., None], new_idx, idx)
                    sc = jnp.where(p.refresh[..., None], new_sc, sc)
                else:
                    idx, sc = new_idx, new_sc
            return Projection(idx, sc, jnp.zeros_like(p.sink), jnp.zeros_like(p.score_sink),
                              p.refresh_index, False, c)

        if not isinstance(grads, (tuple, list)) or len(grads) != 2:
            raise ValueError(_GRADS_HELP)
        _refuse_residual_accumulation(projections)
        return jax.tree_util.tree_map(one, projections, grads[1],
                                      is_leaf=lambda x: isinstance(x, Projection) or x is None)

    @staticmethod
    def accumulate(acc, grads):
        """acc + grads for (param_grads, projection_grads) pairs from `value_and_grad`; `acc`
        None starts an accumulation with `grads` (the first micro-batch's). The dense leaves'
        gradients and the compressed (r x k) gradients add; the row scores stay the first
        micro-batch's (from which the step re-derives the rows it chose); the GRASS weights'
        own gradients (zero by construction, m x n) are dropped (None), so nothing m x n is
        kept for a GRASS weight, also not as the carry of a lax.scan over micro-batches."""
        for pair in (acc, grads):
            if pair is not None and (not isinstance(pair, (tuple, list)) or len(pair) != 2):
                raise ValueError(_GRADS_HELP)
        is_node = lambda x: isinstance(x, Projection) or x is None

        def param(p, a, g=None):
            if isinstance(p, Projection) or a is None:
                return None
            return a if g is None else a + g

        def proj(a, b=None):
            if not isinstance(a, Projection):
                return a if b is None or a is None else a + b
            return a if b is None else _replace_sink(a, a.sink + b.sink)

        _refuse_residual_accumulation(grads[1])
        if acc is None:
            first = jax.tree_util.tree_map(param, grads[1], grads[0], is_leaf=is_node)
            return first, grads[1]
        params = jax.tree_util.tree_map(param, acc[1], acc[0], grads[0], is_leaf=is_node)
        projs = jax.tree_util.tree_map(proj, acc[1], grads[1], is_leaf=is_node)
        return params, projs

    @staticmethod
    def mean(acc, count):
        """The accumulated gradients divided by the number of micro-batches `count` (the
        gradient of the mean loss over equal micro-batches), ready for `step`."""
        inv = 1.0 / count
        scale = lambda a: a if a is None or not jnp.issubdtype(a.dtype, jnp.floating) else \
            (a * inv).astype(a.dtype)
        params = jax.tree_util.tree_map(scale, acc[0])
        projs = jax.tree_util.tree_map(
            lambda p: _replace_sink(p, p.sink * inv) if isinstance(p, Projection) else scale(p),
            acc[1], is_leaf=lambda x: isinstance(x, Projection) or x is None)
        return params, projs

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
        layers = _aligned(state.layers, treedef, GrassLayerState)
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
                    axis_name=self.axis_name, side=c.stored_side, rank=c.rank, alpha=self.alpha,
                    row_warmup=self.row_warmup, adam=self.adam, after=after)
            else:
                w, m, v, row_steps, skipped = _sharded_like(
                    ops.sparse_adamw_step, w, ls.indices, ls.scales, sinks[i], ls.m, ls.v,
                    ls.row_steps, lr, side=c.stored_side, alpha=self.alpha,
                    row_warmup=self.row_warmup, after=after, **self.adam)
            if self.residual != "none":
                w, skipped = self._residual_step(c, w, pct, ls.indices, lr, skipped)
            new_leaves[i] = w
            new_layers[i] = ls._replace(m=m, v=v, row_steps=row_steps, skipped=skipped)
        dense = self._dense_step(leaves, dense_idx, dense_grads, treedef, state, lr,
                                 new_leaves, after)
        return (treedef.unflatten(new_leaves),
                GrassState(state.count + 1, treedef.unflatten(new_layers), dense))

    def update(self, updates, state: GrassState, params=None):
        """The optax contract: (updates, state) from the ordinary gradients of the params
        (`updates`, e.g. jax.grad of the loss). For each GRASS weight the row scores come from
        its gradient, the selection refreshes every refresh_every steps, g = the selected
        rows (times their scales) and the compressed AdamW steps them; `updates` is
        W_new - W (non-zero on the selected rows, plus weight decay where decay_mode says),
        so `optax.apply_updates(params, updates)` gives the new params (up to one rounding
        of W + (W_new - W)). The other leaves step with `dense`.

        The gradient and the update are m x n here (the gradient is anyway): the state is
        r x k. For the gradient savings use grass layers and `step`."""
        if params is None:
            raise ValueError("grass_adamw.update needs params: tx.update(grads, opt_state, "
                             "params) (grass reads the weights it updates)")
        if self.axis_name is not None:
            raise ValueError("grass_adamw.update (the optax form) does not average over "
                             "axis_name: with data parallelism use opt.step(params, grads, "
                             "state) inside shard_map, or average the gradients yourself and "
                             "build grass_adamw without axis_name")
        leaves, treedef, configs = self.layer_configs(params)
        if isinstance(updates, (tuple, list)) and len(updates) == 2 and any(
                isinstance(x, Projection) for x in jax.tree_util.tree_leaves(
                    updates[1], is_leaf=lambda x: isinstance(x, Projection))):
            raise ValueError(_PAIR_HELP)
        try:
            gleaves = treedef.flatten_up_to(updates)
        except (ValueError, TypeError):
            raise ValueError("grass_adamw.update: the gradients do not have the structure of "
                             "the params. " + _PAIR_HELP) from None
        layers = _aligned(state.layers, treedef, GrassLayerState)
        lr = self._lr(state.count)
        refresh = self.refresh_due(state)
        new_layers, comp = list(layers), {}
        for i, (c, ls, g) in enumerate(zip(configs, layers, gleaves)):
            if c is None:
                continue
            rows = _selection_rows(c, gathered(g))       # (*stack, d, k)
            scores = jnp.sqrt(jnp.sum(rows * rows, axis=-1))
            ls = self._maybe_refresh(c, ls, scores, refresh)
            comp[i] = jnp.take_along_axis(rows, ls.indices[..., None], axis=-2) * \
                ls.scales[..., None]
            new_layers[i] = ls
        dense_idx = [i for i, c in enumerate(configs) if c is None]
        dense_grads = [gleaves[i] for i in dense_idx]
        if self.max_grad_norm is not None:
            norm = _norm(list(comp.values()), [g for g in dense_grads if g is not None])
            scale = _clip_scale(norm, self.max_grad_norm)
            comp = {i: g * scale for i, g in comp.items()}
            dense_grads = [g if g is None else (g * scale).astype(g.dtype) for g in dense_grads]
        new_leaves = list(leaves)
        for i, g in comp.items():
            c, ls, w = configs[i], new_layers[i], leaves[i]
            w_new, m, v, row_steps, skipped = _sharded_like(
                ops.sparse_adamw_step, w, ls.indices, ls.scales, g, ls.m, ls.v, ls.row_steps,
                lr, side=c.stored_side, alpha=self.alpha, row_warmup=self.row_warmup,
                **self.adam)
            if self.residual != "none":
                w_new = self._residual_update(c, w_new, gathered(gleaves[i]), ls.indices, lr,
                                              skipped)
            new_leaves[i] = w_new
            new_layers[i] = ls._replace(m=m, v=v, row_steps=row_steps, skipped=skipped)
        dense = self._dense_step(leaves, dense_idx, dense_grads, treedef, state, lr,
                                 new_leaves, None)
        out = [None if g is None else (wn - w).astype(w.dtype)
               for w, wn, g in zip(leaves, new_leaves, gleaves)]
        return (treedef.unflatten(out),
                GrassState(state.count + 1, treedef.unflatten(new_layers), dense))

    def _residual_step(self, c, w, pct, indices, lr, skipped):
        """The residual step of GRASS weight `c` (libgrass, from the X and dY its backward
        handed over), gated on the compressed step's outcome `skipped`."""
        if pct.x_sink is None:
            raise ValueError(f"grass_adamw(residual='sign'): the gradients of GRASS weight "
                             f"{c.name} carry no activations: make the projections with "
                             f"opt.projections(params, state, tokens=<tokens per step>)")
        # a weight stored (in, out) is the transpose: its gradient is Xᵀ dY, not dYᵀ X
        x, dy = (pct.x_sink, pct.dy_sink) if c.layout == "out_in" else \
            (pct.dy_sink, pct.x_sink)
        return _sharded_like(ops.residual_step, w, x, dy, indices, lr, skipped,
                             side=c.stored_side, alpha=self.alpha,
                             residual_scale=self.residual_scale)

    def _residual_update(self, c, w_new, g, indices, lr, skipped):
        """The residual step on a full gradient (the optax form): the rule of
        `ops.residual_step`, in f32 rounded once, where the compressed step applied and g is
        finite."""
        rows = _selection_rows(c, g).astype(jnp.float32)          # (*stack, d, k)
        keep = jnp.ones(rows.shape[:-1], jnp.float32)
        keep = jnp.put_along_axis(keep, indices, 0.0, axis=-1, inplace=False)
        step = (jnp.asarray(lr, jnp.float32) * jnp.float32(self.alpha)) * \
            jnp.float32(self.residual_scale)
        move = (step * jnp.sign(rows)) * keep[..., None]
        if c.stored_side == "cols":
            move = jnp.swapaxes(move, -1, -2)
        ok = (skipped == ops.STEP_APPLIED) & jnp.all(jnp.isfinite(rows), axis=(-2, -1)) & \
            jnp.isfinite(step) & (step >= 0)
        ok = ok.reshape(ok.shape + (1, 1))
        moved = (w_new.astype(jnp.float32) - move).astype(w_new.dtype)
        return jnp.where(ok, moved, w_new)

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
            dstates = _aligned(state.dense, treedef, DenseAdamWState)
            out = list(dstates)
            for i, g in zip(idx, grads):
                ds = dstates[i]
                w, m, v, st, sk = _sharded_like(ops.adamw_step, leaves[i], g, ds.m, ds.v,
                                                ds.step, lr, after=after, **self.adam)
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
        layers = _aligned(state.layers, treedef, GrassLayerState)
        return treedef.unflatten([ls.skipped if ls is not None else None for ls in layers])


def _select(c: LayerConfig, scores, refresh_index):
    """select_rows for one weight, slice by slice for a stacked one."""
    if not c.stack:
        return select_rows(c, scores, refresh_index)
    flat = lambda a: a.reshape((c.slices,) + a.shape[len(c.stack):])
    back = lambda a: a.reshape(c.stack + a.shape[1:])
    idx, sc = jax.vmap(lambda s, i: select_rows(c, s, i))(flat(scores), flat(refresh_index))
    return back(idx), back(sc)


def _selection_rows(c: LayerConfig, g):
    """A full gradient (stored layout, *stack) as (*stack, d, k) f32: row j is what the
    selection of index j takes (a row of the (out, in) gradient for side "rows", a column
    for "cols")."""
    g = jnp.asarray(g, jnp.float32)
    if tuple(g.shape) != c.stack + c.stored_shape:
        raise ValueError(f"grass_adamw.update: the gradient of GRASS weight {c.name} has shape "
                         f"{tuple(g.shape)}, the weight {c.stack + c.stored_shape}")
    return g if c.stored_side == "rows" else jnp.swapaxes(g, -1, -2)


def _sharded_like(fn, w, *args, **kwargs):
    """fn(w, *args) for an in-place op, with w (and the array arguments) gathered when they are
    sharded over explicit mesh axes, and the new w (the first result) sharded as w was: the
    ops see whole arrays; the params keep their FSDP / tensor-parallel sharding."""
    spec = explicit_spec(w)
    if spec is None and not any(explicit_spec(a) is not None for a in args
                                if isinstance(a, jax.Array)):
        return fn(w, *args, **kwargs)
    args = [gathered(a) if isinstance(a, jax.Array) else a for a in args]
    out = fn(gathered(w), *args, **kwargs)
    if spec is None:
        return out
    return (jax.sharding.reshard(out[0], spec),) + tuple(out[1:])


def _norm(compressed, dense):
    parts = [jnp.sum(jnp.square(g.astype(jnp.float32))) for g in list(compressed) + list(dense)]
    return jnp.sqrt(sum(parts)) if parts else jnp.zeros((), jnp.float32)


def _clip_scale(norm, max_norm):
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return jnp.where(jnp.isfinite(norm), scale, 1.0).astype(jnp.float32)


def _refuse_residual_accumulation(projections):
    for p in jax.tree_util.tree_leaves(projections, is_leaf=lambda x: isinstance(x, Projection)):
        if isinstance(p, Projection) and p.x_sink is not None:
            raise ValueError(
                "grass_adamw(residual='sign') does not accumulate micro-batches: the residual "
                "moves by the sign of the step's gradient, which the micro-batches' own signs "
                "do not give. Make one backward pass over the step's whole batch, or use "
                "residual='none'")


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
