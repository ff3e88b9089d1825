"""grass_linear: a linear layer whose weight gradient leaves the backward pass compressed.

    y = x @ w.T              layout "out_in": w stored (m, n) = (out, in) (PyTorch, grass)
    y = x @ w                layout "in_out": w stored (n, m) = (in, out) (Flax kernels)
    x: (..., n), y: (..., m)

The layout is declared once, for the optimizer (`grass_adamw(layout=...)`), and travels in
each weight's Projection; the call states the layout it computes with (`layout=`, "out_in"
unless given), and a call whose layout is not the declared one fails at trace time, naming
the weight. A square weight looks the same either way: this check is what keeps a (in, out)
kernel passed transposed from being updated transposed.

The product runs in x's dtype (the compute dtype): w is cast to it, so bf16 or f16 activations
work with f32 (or bf16) master weights. `grass_linear(x, w, None)` is the plain product with
ordinary autodiff, for evaluation.

The backward pass returns dx = dy @ w as usual, but no gradient for w: the cotangent of w is
zero by construction (w is used like `stop_gradient(w)`). The gradient goes instead to the
`Projection` passed beside w: the cotangent of its `sink` (r x k) is the compressed gradient
g = PᵀG, computed by `ops.sparse_grad` from x and dy, and at a refresh step the cotangent of
its `score_sink` (d) holds the exact row scores the new rows were chosen from. So XLA never
forms the m x n weight gradient.

The rule for users: a GRASS weight reaches the loss only through grass_linear, once per
training step, with the Projection the optimizer made for it (`grass_adamw.projections`).
Differentiate with respect to the projections too (`allow_int=True`, since they carry the
integer row indices) and hand both gradients to the optimizer's `step`.
"""

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _lib, ops


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """What is fixed about one GRASS layer (static under jit)."""

    m: int
    n: int
    side: str            # "rows" or "cols", resolved
    d: int               # projected dimension
    k: int               # kept dimension: g, M and V are rank x k
    rank: int            # r of this weight (resolved: the rank rule's when none was given)
    method: str = "multinomial_nr"
    power: int = 2
    scaling: str = "unbiased"
    seed: int = 0
    layer_id: int = 0
    axis_name: Any = None        # data-parallel mesh axis (inside shard_map), or None
    dp_scores: str = "exact"     # how scores are combined across axis_name: "exact" | "sum_sq"
    dp_chunk_elems: int = 1 << 22
    stack: tuple = ()            # leading layer axes of a stacked weight (*stack, m, n)
    layout: str = "out_in"       # how the weight is stored: "out_in" (m, n) or "in_out" (n, m)
    name: str = ""               # the weight's path in the params, for messages

    @property
    def stored_side(self) -> str:
        """The side the update indexes in the *stored* array: the selected rows of an (out, in)
        weight are columns of the same weight stored (in, out)."""
        if self.layout == "out_in":
            return self.side
        return "cols" if self.side == "rows" else "rows"

    @property
    def stored_shape(self) -> tuple:
        """The shape of the stored weight (one layer slice)."""
        return (self.m, self.n) if self.layout == "out_in" else (self.n, self.m)

    @staticmethod
    def make(m, n, rank=None, side="auto", **kw):
        """The config of an m x n weight; `rank` is capped at the projected dimension d.
        rank None is the library's rank rule for d (`_lib.default_rank(d)`: d/2 rounded to
        the nearest multiple of 8, at least 8, at most d)."""
        side, d, k = ops.resolve_side(m, n, side)
        r = _lib.default_rank(d) if rank is None else min(int(rank), d)
        return LayerConfig(m=m, n=n, side=side, d=d, k=k, rank=r, **kw)

    @property
    def slices(self) -> int:
        """Number of layer slices: 1 for a 2-D weight, prod(stack) for a stacked one."""
        return int(np.prod(self.stack, dtype=np.int64)) if self.stack else 1

    def refresh_indices(self, refresh_count):
        """The refresh index each slice selects with at refresh `refresh_count` (u32, shape
        `stack`): refresh_count · slices + slice, so that every slice of a stacked weight draws
        its own rows (the generator's key is (seed, layer_id, refresh index)). A 2-D weight
        selects with refresh_count itself."""
        count = jnp.asarray(refresh_count, jnp.uint32)
        if not self.stack:
            return count
        s = jnp.arange(self.slices, dtype=jnp.uint32).reshape(self.stack)
        return count * jnp.uint32(self.slices) + s


@jax.tree_util.register_pytree_node_class
class Projection:
    """The selection of one GRASS layer for one step, and the sinks its gradient flows into.

    indices (i32[r]) and scales (f32[r]) are the current rows σ and scales ρ; `refresh` says
    whether this step chooses new rows (from this step's exact scores, at refresh index
    `refresh_index`, u32) before compressing. `refresh` is either a traced bool (one compiled
    step, a `lax.cond` inside) or a Python bool (static: compile a refresh step and a plain one).

    For a stacked weight (`config.stack`, e.g. (L,) for L layers of a `lax.scan`) every array
    has those leading axes: one selection per layer slice. Scan over it together with the
    weight (`lax.scan(body, h, (w, proj))`), or take one slice with `proj[l]`.
    """

    def __init__(self, indices, scales, sink, score_sink, refresh_index, refresh, config,
                 x_sink=None, dy_sink=None):
        self.indices, self.scales = indices, scales
        self.sink, self.score_sink = sink, score_sink
        self.refresh_index, self.refresh = refresh_index, refresh
        self.config = config
        # With grass_adamw(residual="sign"): (tokens, n) and (tokens, m) zeros whose gradients
        # are this layer's X and dY, which the step's residual needs; None otherwise.
        self.x_sink, self.dy_sink = x_sink, dy_sink

    @property
    def static_refresh(self) -> Optional[bool]:
        return self.refresh if isinstance(self.refresh, bool) else None

    def tree_flatten(self):
        children = (self.indices, self.scales, self.sink, self.score_sink, self.refresh_index,
                    self.x_sink, self.dy_sink)
        if isinstance(self.refresh, bool):
            return children, (self.config, self.refresh)
        return children + (self.refresh,), (self.config, None)

    @classmethod
    def tree_unflatten(cls, aux, children):
        config, static = aux
        refresh = static if static is not None else children[7]
        return cls(*children[:5], refresh, config, children[5], children[6])

    def __getitem__(self, i):
        """The projection of slice `i` of a stacked weight (indexes every array's leading
        axes)."""
        if jnp.ndim(self.indices) < 2:
            raise IndexError("this projection is for one 2-D weight, not a stack: nothing to "
                             "index")
        children, aux = self.tree_flatten()
        return self.tree_unflatten(aux, [None if c is None else c[i] for c in children])

    def __repr__(self):
        stack = f"{'x'.join(map(str, self.config.stack))} layers of " if self.config.stack \
            else ""
        return f"Projection({stack}{self.config.m}x{self.config.n}, side={self.config.side}, " \
               f"rank={self.config.rank}, refresh={self.refresh})"


def explicit_spec(a):
    """The PartitionSpec of `a` when it is sharded over explicit mesh axes (JAX's sharding in
    types, the default of jax.make_mesh), else None (unsharded, or auto axes where XLA
    decides)."""
    try:
        sharding = jax.typeof(a).sharding
    except (AttributeError, TypeError):
        return None
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    if spec is None or mesh is None or getattr(mesh, "empty", True):
        return None
    if all(s is None for s in spec):
        return None
    return spec


def gathered(a):
    """`a` replicated over the mesh when it is sharded over explicit axes (what FSDP does to a
    weight before its product, and what grass's ops, which see whole arrays, need); `a`
    itself otherwise."""
    if explicit_spec(a) is None:
        return a
    return jax.sharding.reshard(a, jax.sharding.PartitionSpec())


_COMPUTE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


LAYOUTS = ("out_in", "in_out")


def check_layout(layout, what="layout"):
    """`layout` if it is one of LAYOUTS, else a ValueError naming `what`."""
    if layout not in LAYOUTS:
        raise ValueError(f"{what} must be 'out_in' (w stored (out, in), y = x @ w.T) or "
                         f"'in_out' (w stored (in, out), y = x @ w, as Flax kernels), got "
                         f"{layout!r}")
    return layout


def grass_linear(x, w, proj: Optional[Projection], layout: str = "out_in"):
    """y = x @ w.T (layout "out_in") or x @ w (layout "in_out"), with the compressed weight
    gradient routed to `proj` (see module doc).

    `layout` says how this call reads w; it must be the layout the weight was declared with
    (`proj.config.layout`, from grass_adamw's `layout`), else ValueError naming the weight.
    The product runs in x's dtype (float32, bfloat16 or float16); w (any of those) is cast to
    it. `proj=None` is the plain product with ordinary autodiff (evaluation)."""
    check_layout(layout, "grass_linear: layout")
    x, w = jnp.asarray(x), jnp.asarray(w)
    if jnp.dtype(x.dtype) not in _COMPUTE_DTYPES:
        raise TypeError(f"grass_linear: x must be float32, bfloat16 or float16 (the compute "
                        f"dtype), got {x.dtype}")
    if jnp.dtype(w.dtype) not in _COMPUTE_DTYPES:
        raise TypeError(f"grass_linear: w must be float32, bfloat16 or float16, got {w.dtype}")
    if proj is None:
        w, x = gathered(w), gathered(x)
        n_in = w.shape[1] if layout == "out_in" else w.shape[0]
        if w.ndim != 2 or x.shape[-1] != n_in:
            product = "x @ w.T (w is (out, in))" if layout == "out_in" else \
                "x @ w (w is (in, out))"
            raise ValueError(f"grass_linear: x {x.shape} and w {w.shape} do not make {product}")
        return x @ (w.astype(x.dtype).T if layout == "out_in" else w.astype(x.dtype))
    cfg = proj.config
    name = f"GRASS weight {cfg.name}" if cfg.name else "this GRASS weight"
    if layout != cfg.layout:
        stored = {"out_in": "(out, in)", "in_out": "(in, out)"}
        raise ValueError(
            f"grass_linear: {name} was declared stored {stored[cfg.layout]} (layout "
            f"{cfg.layout!r}) but this call reads it as {stored[layout]} (layout {layout!r}). "
            f"Pass the stored array itself (not a transpose) with "
            f"grass_linear(x, w, proj, layout={cfg.layout!r}), or declare the layout it is "
            f"stored in: grass_adamw(..., layout={layout!r}). A square weight would otherwise "
            f"be updated transposed.")
    if jnp.ndim(proj.indices) != 1:
        raise ValueError(
            f"grass_linear: this projection holds {'x'.join(map(str, proj.indices.shape[:-1]))} "
            f"layer slices (a stacked weight of shape {cfg.stack + (cfg.m, cfg.n)}); use one "
            f"slice per call: scan over the weight and its projection together "
            f"(lax.scan(body, h, (w, proj))) or index both (w[l], proj[l])")
    if w.shape != cfg.stored_shape:
        raise ValueError(f"grass_linear: w has shape {w.shape} but the projection was made for "
                         f"{cfg.stored_shape} ({name}, layout {cfg.layout!r})")
    if x.shape[-1] != cfg.n:
        raise ValueError(f"x has {x.shape[-1]} features, w expects {cfg.n}")
    # Weights sharded over explicit mesh axes (FSDP P('data', None), tensor parallel
    # P(None, 'model')) are gathered for the product, and so are the activations grass's
    # backward ops read whole; with auto axes XLA places the data itself.
    w, x = gathered(w), gathered(x)
    refresh = proj.refresh
    static = proj.static_refresh
    if static is not None:
        refresh = jnp.bool_(static)  # unused placeholder; the static flag decides
    return _linear(cfg, static, x, w, proj.indices, proj.scales, proj.sink, proj.score_sink,
                   proj.refresh_index, refresh, proj.x_sink, proj.dy_sink)


def _oi(cfg, w, dtype):
    """w as (out, in) in `dtype` (a transpose XLA folds into the matmul)."""
    w = w.astype(dtype)
    return w if cfg.layout == "out_in" else w.T


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _linear(cfg, static, x, w, indices, scales, sink, score_sink, refresh_index, refresh,
            x_sink, dy_sink):
    return x @ _oi(cfg, w, x.dtype).T


def _linear_fwd(cfg, static, x, w, indices, scales, sink, score_sink, refresh_index, refresh,
                x_sink, dy_sink):
    # w itself is kept (a parameter, alive anyway), not its cast: the backward casts again.
    # the sinks' token count and dtype travel as a zero-width slice (no bytes kept)
    acts = None if x_sink is None else x_sink[..., :0]
    return x @ _oi(cfg, w, x.dtype).T, (x, w, indices, scales, refresh_index, refresh, acts)


def _handed_over(cfg, acts, x2, dy2):
    """The cotangents of the activation sinks: this call's X and dY (the residual's input)."""
    if acts is None:
        return None, None
    tokens, dtype = acts.shape[0], acts.dtype
    if x2.shape[0] != tokens:
        name = f"GRASS weight {cfg.name}" if cfg.name else "a GRASS weight"
        raise ValueError(f"grass_linear: {name} sees {x2.shape[0]} tokens in this step but its "
                         f"projection was made for tokens="
                         f"{tokens} (opt.projections(params, state, tokens=...))")
    return x2.astype(dtype), dy2.astype(dtype)


def _linear_bwd(cfg, static, res, dy):
    x, w, indices, scales, refresh_index, refresh, acts = res
    dx = (dy.astype(x.dtype) @ _oi(cfg, w, x.dtype)).astype(x.dtype)
    x2 = x.reshape(-1, cfg.n)
    dy2 = dy.reshape(-1, cfg.m).astype(x.dtype)

    def fresh():
        scores = layer_scores(cfg, x2, dy2)
        idx, sc = select_rows(cfg, scores, refresh_index)
        return idx, sc, scores

    def kept():
        return indices, scales, jnp.zeros((cfg.d,), jnp.float32)

    if static is None:
        idx, sc, scores = lax.cond(refresh, fresh, kept)
    else:
        idx, sc, scores = fresh() if static else kept()
    g = ops.sparse_grad(x2, dy2, idx, sc, cfg.side)
    xs, dys = _handed_over(cfg, acts, x2, dy2)
    return dx, None, None, None, g, scores, None, None, xs, dys


_linear.defvjp(_linear_fwd, _linear_bwd)


def select_rows(cfg: LayerConfig, scores, refresh_index):
    return ops.select(scores, refresh_index, rank=cfg.rank, method=cfg.method, power=cfg.power,
                      scaling=cfg.scaling, seed=cfg.seed, layer_id=cfg.layer_id)


def layer_scores(cfg: LayerConfig, x2, dy2):
    """Row scores of this step's weight gradient, identical on every device of cfg.axis_name.

    One device: exact norms from `ops.row_scores`. Data parallel (the gradient is the mean of
    the devices' gradients, as the optimizer averages them):
      "exact"  the rows of the mean gradient, built chunk by chunk (`ops.sparse_grad` with
               identity selection, rank-chunk x k) and averaged with `pmean`, then their norms:
               exact, memory chunk x k, communication m·n floats once per refresh.
      "sum_sq" sqrt(mean over devices of each device's squared row norms): d floats of
               communication, but only an estimate (it ignores cross-device terms).
    """
    if cfg.axis_name is None:
        return ops.row_scores(x2, dy2, cfg.side)
    if cfg.dp_scores == "sum_sq":
        s = ops.row_scores(x2, dy2, cfg.side)
        return jnp.sqrt(lax.pmean(s * s, cfg.axis_name))
    if cfg.dp_scores != "exact":
        raise ValueError(f"dp_scores must be 'exact' or 'sum_sq', got {cfg.dp_scores!r}")
    chunk = max(1, min(cfg.d, cfg.dp_chunk_elems // max(cfg.k, 1)))
    starts = jnp.arange(0, cfg.d, chunk, dtype=jnp.int32)
    ones = jnp.ones((chunk,), jnp.float32)

    def body(carry, start):
        idx = jnp.minimum(start + jnp.arange(chunk, dtype=jnp.int32), cfg.d - 1)
        rows = lax.pmean(ops.sparse_grad(x2, dy2, idx, ones, cfg.side), cfg.axis_name)
        return carry, jnp.sqrt(jnp.sum(rows * rows, axis=1))

    _, norms = lax.scan(body, None, starts)
    return norms.reshape(-1)[: cfg.d]
