"""A research twin of grass_adamw in plain jnp, on full gradients: to try levers before they
are built into the library.

`grass_reference(...)` is an optax GradientTransformation that does GRASS's step the way the
library does it (the same rows: the library's own `select` on the same scores, seed, layer id
and refresh index; per-row Adam bias corrections; reset or carry at a refresh; update
lr·alpha·ρ_j·u_j into the selected rows or columns; bf16 or f32 moments), but from the full
m x n weight gradient, which the library never forms. On top of it, research options that the
library does not have yet:

  residual        what the rows that are not selected do each step (the gradient's residual
                  R, its selected rows zeroed):
                  "none" nothing (GRASS);
                  "sign" FRUGAL's state-free signSGD: -lr·alpha·residual_scale·sign(R);
                  "sgd"  -lr·alpha·residual_scale·R;
                  "fira" Fira's norm-based scaling: -lr·alpha·residual_scale·φ·R with
                         φ = ||U|| / ||G_sel|| (U the Adam direction of the selected rows,
                         G_sel their gradient), and Fira's limiter: ||φR|| grows by at most
                         a factor 1.01 per step.
  rank_alloc      "uniform": rank r for every weight (grass_adamw's rule);
                  "fraction": r_l proportional to the weight's projected dimension d_l, scaled
                  so that the moments take as many bytes as uniform rank r (Σ r_l·k_l fixed).
  row_warmup      W >= 0: the step of state row j is scaled by min(1, t_j / W), t_j its Adam
                  steps since the row was zeroed (1 on its first step), so a row whose moments
                  a refresh zeroed ramps up over W steps instead of taking a full-size step
                  (m̂/√v̂ = ±1 per element at t = 1); 0: no warm-up; None: the library's
                  default, grass_adamw's (as for refresh_every, alpha and state_dtype).
  method          the library's selection rules, and one of the twin's own:
                  "cyclic" random reshuffling: each refresh takes the next r units of a random
                         permutation of the d units (one permutation per ceil(d/r) refreshes,
                         the last block wrapping to the permutation's start), so every unit
                         is selected once per cycle instead of at random (uniform_nr leaves
                         a unit out of 4 refreshes running with probability (1 - r/d)^4).
  first_moment_dtype  M's dtype when it differs from V's (state_dtype): bf16 M beside f32 V
                  takes 6 bytes per element instead of 8, a third more rank for the bytes.
  second_moment   what V keeps for a selected row (a unit: a row, or a column on side cols):
                  "full" one second moment per element (Adam's, the library's);
                  "row"  one per selected unit, the EMA of its squared gradient's mean
                         (Adam-mini's block-wise v, a unit being the block): V is r x 1
                         instead of r x k, so the bytes of full V buy about twice the rank;
                  "factored" Adafactor's rank-1 factors of the selected rows' v: an EMA of
                         each unit's mean square (r) and of each column's mean square over
                         the selected units (k), v ≈ row·col / mean(row).
  state_rounding  how f32 moments become bf16 ones (bf16 state only): "nearest" (round to
                  nearest even, the library's) or "stochastic" (up or down with the
                  probabilities that make the rounding unbiased), so V's decay by β2 = 0.999,
                  a change below half a bf16 ulp, still happens on average.

The state keeps what the library keeps (indices, scales, M, V, per-row step counts, refresh
count) plus, for "fira", one f32 per weight; its bytes count the same way as grass's. Weight
decay is not implemented (the trainer's default is 0)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from . import _lib, ops

RESIDUALS = ("none", "sign", "sgd", "fira")
RANK_ALLOCS = ("uniform", "fraction")
STATE_ROUNDINGS = ("nearest", "stochastic")
SECOND_MOMENTS = ("full", "row", "factored")
RESEARCH_METHODS = ("cyclic",)


def cyclic_select(d, r, refresh_index, seed, layer_id):
    """The r units of refresh `refresh_index` under "cyclic" (sorted, scales 1)."""
    blocks = -(-d // r)
    epoch = refresh_index // jnp.uint32(blocks)
    slot = (refresh_index % jnp.uint32(blocks)).astype(jnp.int32)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), layer_id), epoch)
    perm = jax.random.permutation(key, d)
    idx = perm[(slot * r + jnp.arange(r, dtype=jnp.int32)) % d]
    return jnp.sort(idx).astype(jnp.int32), jnp.ones((r,), jnp.float32)
FIRA_LIMIT = 1.01


class RefLayerState(NamedTuple):
    indices: jax.Array        # i32[r]
    scales: jax.Array         # f32[r]
    m: jax.Array              # [r, k]
    v: jax.Array              # [r, k]; [r, 1] for second_moment "row", [r + k, 1] "factored"
    row_steps: jax.Array      # i32[r]
    refresh_count: jax.Array  # u32[]
    residual_norm: jax.Array  # f32[], the last residual step's norm (fira's limiter)


class RefState(NamedTuple):
    count: jax.Array
    layers: Any   # params-shaped: RefLayerState for a projected leaf, None elsewhere
    dense: Any    # the dense optimizer's state (projected leaves masked out)


def allocate_ranks(shapes, rank, side, rank_alloc):
    """[(side, d, k, r)] per projected (m, n): the layers' ranks under `rank_alloc`."""
    geo = [ops.resolve_side(m, n, side) for m, n in shapes]
    if rank_alloc == "uniform":
        return [(s, d, k, min(rank, d)) for s, d, k in geo]
    if rank_alloc != "fraction":
        raise ValueError(f"rank_alloc must be one of {RANK_ALLOCS}, got {rank_alloc!r}")
    budget = sum(min(rank, d) * k for _, d, k in geo)
    frac = budget / sum(d * k for _, d, k in geo)
    return [(s, d, k, int(min(d, max(1, round(frac * d))))) for s, d, k in geo]


def grass_reference(learning_rate, *, grass_mask, rank, refresh_every=None,
                    method="uniform_nr", power=2, scaling="none", side="cols", seed=0,
                    b1=0.9, b2=0.999, eps=1e-8, alpha=None, refresh_mode="reset",
                    state_dtype=None, dense=None, residual="none", residual_scale=1.0,
                    rank_alloc="uniform", row_warmup=None, state_rounding="nearest",
                    second_moment="full", first_moment_dtype=None):
    lib = _lib.defaults()  # None: the library's default, grass_adamw's
    row_warmup = lib["row_warmup"] if row_warmup is None else row_warmup
    refresh_every = lib["refresh_every"] if refresh_every is None else refresh_every
    alpha = lib["alpha"] if alpha is None else alpha
    state_dtype = lib["state_dtype"] if state_dtype is None else state_dtype
    if row_warmup < 0:
        raise ValueError(f"row_warmup must be >= 0, got {row_warmup}")
    if residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
    if state_rounding not in STATE_ROUNDINGS:
        raise ValueError(f"state_rounding must be one of {STATE_ROUNDINGS}, "
                         f"got {state_rounding!r}")
    if second_moment not in SECOND_MOMENTS:
        raise ValueError(f"second_moment must be one of {SECOND_MOMENTS}, "
                         f"got {second_moment!r}")
    if second_moment == "factored" and refresh_mode == "carry":
        raise ValueError("second_moment 'factored' keeps one column factor for all selected "
                         "rows: refresh_mode must be 'reset'")
    if refresh_mode not in ("reset", "carry"):
        raise ValueError(f"refresh_mode must be 'reset' or 'carry', got {refresh_mode!r}")
    sched = learning_rate if callable(learning_rate) else (lambda c: learning_rate)
    dense = dense if dense is not None else optax.adamw(learning_rate, b1=b1, b2=b2)
    sdt = jnp.dtype(state_dtype)
    mdt = sdt if first_moment_dtype is None else jnp.dtype(first_moment_dtype)

    def to_state(x, key, dt=sdt):
        """f32 -> the moments' dtype; stochastic rounding for bf16 when asked."""
        if dt != jnp.bfloat16 or state_rounding == "nearest":
            return x.astype(dt)
        bits = lax.bitcast_convert_type(x, jnp.uint32)
        noise = jax.random.bits(key, x.shape, jnp.uint32) & jnp.uint32(0xFFFF)
        up = lax.bitcast_convert_type((bits + noise) & jnp.uint32(0xFFFF0000), jnp.float32)
        return jnp.where(jnp.isfinite(x), up, x).astype(dt)

    def split(params):
        leaves_p, treedef = jax.tree_util.tree_flatten_with_path(params)
        if callable(grass_mask):
            mask = [bool(grass_mask(path, leaf)) for path, leaf in leaves_p]
        else:
            mask = [bool(m) for m in treedef.flatten_up_to(grass_mask)]
        return [leaf for _, leaf in leaves_p], treedef, mask

    def geometry(leaves, mask):
        shapes = [tuple(leaf.shape) for leaf, g in zip(leaves, mask) if g]
        return iter(allocate_ranks(shapes, rank, side, rank_alloc))

    def dense_view(tree_leaves, treedef, mask):
        return treedef.unflatten([None if g else x for x, g in zip(tree_leaves, mask)])

    def v_shape(r, k):
        # "factored": the r row factors, then the k column factors
        return {"full": (r, k), "row": (r, 1), "factored": (r + k, 1)}[second_moment]

    def second(v_old, gs):
        """(new V in f32, v̂ before bias correction as an r x k or r x 1 array)."""
        sq = gs * gs
        if second_moment != "factored":
            new = sq if second_moment == "full" else jnp.mean(sq, axis=1, keepdims=True)
            v = b2 * v_old + (1 - b2) * new
            return v, v
        r = gs.shape[0]
        row = b2 * v_old[:r] + (1 - b2) * jnp.mean(sq, axis=1, keepdims=True)
        col = b2 * v_old[r:, 0] + (1 - b2) * jnp.mean(sq, axis=0)
        v = jnp.concatenate([row, col[:, None]], axis=0)
        return v, row * col[None, :] / jnp.maximum(jnp.mean(row), 1e-30)

    def init(params):
        leaves, treedef, mask = split(params)
        geo = geometry(leaves, mask)
        layers = []
        for leaf, g in zip(leaves, mask):
            if not g:
                layers.append(None)
                continue
            _, d, k, r = next(geo)
            layers.append(RefLayerState(
                jnp.arange(r, dtype=jnp.int32), jnp.ones((r,), jnp.float32),
                jnp.zeros((r, k), mdt), jnp.zeros(v_shape(r, k), sdt),
                jnp.zeros((r,), jnp.int32),
                jnp.zeros((), jnp.uint32), jnp.zeros((), jnp.float32)))
        return RefState(jnp.zeros((), jnp.int32), treedef.unflatten(layers),
                        dense.init(dense_view(leaves, treedef, mask)))

    def layer_update(gt, ls, lr, count, layer_id, r):
        """gt: (d, k) gradient with the selectable units as rows -> ((d, k) update, state)."""
        gt = gt.astype(jnp.float32)

        def fresh(ls):
            scores = jnp.sqrt(jnp.sum(gt * gt, axis=1)).astype(jnp.float32)
            if method == "cyclic":
                idx, sc = cyclic_select(gt.shape[0], r, ls.refresh_count, seed, layer_id)
            else:
                idx, sc = ops.select(scores, ls.refresh_count, rank=r, method=method,
                                     power=power, scaling=scaling, seed=seed,
                                     layer_id=layer_id)
            if refresh_mode == "reset":
                m = jnp.zeros_like(ls.m)
                v = jnp.zeros_like(ls.v)
                steps = jnp.zeros_like(ls.row_steps)
            else:  # carry the rows that stay selected, with their counts
                match = (idx[:, None] == ls.indices[None, :]).astype(jnp.float32)
                m = (match @ ls.m.astype(jnp.float32)).astype(mdt)
                v = (match @ ls.v.astype(jnp.float32)).astype(sdt)
                steps = jnp.round(match @ ls.row_steps.astype(jnp.float32)).astype(jnp.int32)
            return ls._replace(indices=idx, scales=sc, m=m, v=v, row_steps=steps,
                               refresh_count=ls.refresh_count + jnp.uint32(1))

        ls = lax.cond(count % refresh_every == 0, fresh, lambda s: s, ls)
        gs = gt[ls.indices]
        t = (ls.row_steps + 1).astype(jnp.float32)[:, None]
        m = b1 * ls.m.astype(jnp.float32) + (1 - b1) * gs
        v, vhat = second(ls.v.astype(jnp.float32), gs)
        u = (m / (1 - b1 ** t)) / (jnp.sqrt(vhat / (1 - b2 ** t)) + eps)
        step = lr * alpha
        ramp = jnp.minimum(1.0, t / row_warmup) if row_warmup > 0 else 1.0
        upd_sel = -step * ls.scales[:, None] * ramp * u
        res_norm = ls.residual_norm
        if residual == "none":
            upd = jnp.zeros_like(gt)
        else:
            keep = jnp.ones((gt.shape[0],), jnp.float32).at[ls.indices].set(0.0)
            res = gt * keep[:, None]
            if residual == "sign":
                s = jnp.sign(res)
            elif residual == "sgd":
                s = res
            else:
                phi = jnp.linalg.norm(u) / jnp.maximum(jnp.linalg.norm(gs), 1e-30)
                s = phi * res
                n = jnp.linalg.norm(s)
                cap = jnp.where(res_norm > 0, FIRA_LIMIT * res_norm, jnp.inf)
                s = s * jnp.where(n > cap, cap / jnp.maximum(n, 1e-30), 1.0)
                res_norm = jnp.minimum(n, cap)
            upd = -step * residual_scale * s
        upd = upd.at[ls.indices].add(upd_sel)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), layer_id), count)
        km, kv = jax.random.split(key)
        ls = ls._replace(m=to_state(m, km, mdt), v=to_state(v, kv), row_steps=ls.row_steps + 1,
                         residual_norm=res_norm)
        return upd, ls

    def update(grads, state, params=None):
        leaves, treedef, mask = split(params)
        gleaves = treedef.flatten_up_to(grads)
        layers = treedef.flatten_up_to(state.layers)
        lr = sched(state.count)
        geo = geometry(leaves, mask)
        updates, new_layers, layer_id = [], [], 0
        for g, ls, is_grass in zip(gleaves, layers, mask):
            if not is_grass:
                updates.append(None)
                new_layers.append(None)
                continue
            s, d, k, r = next(geo)
            gt = g.T if s == "cols" else g
            upd, ls = layer_update(gt, ls, lr, state.count, layer_id, r)
            updates.append((upd.T if s == "cols" else upd).astype(g.dtype))
            new_layers.append(ls)
            layer_id += 1
        d_upd, d_state = dense.update(dense_view(gleaves, treedef, mask), state.dense,
                                      dense_view(leaves, treedef, mask))
        d_leaves = treedef.flatten_up_to(d_upd)
        out = [u if g else du for u, du, g in zip(updates, d_leaves, mask)]
        return treedef.unflatten(out), RefState(state.count + 1, treedef.unflatten(new_layers),
                                                d_state)

    return optax.GradientTransformation(init, update)
