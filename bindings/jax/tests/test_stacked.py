"""Stacked GRASS weights (*layers, m, n) for lax.scan: each layer slice has its own selection,
state and outcome; a scanned model trains exactly as the same model unrolled, and (with a
deterministic selection) as the model with one 2-D weight per layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import assert_close, random
import grass_jax as gj
from grass_jax import ops

L, DIM, HIDDEN, VOCAB = 3, 16, 40, 32


def init_params(key):
    k = jax.random.split(key, 4)
    return {
        "embed": jax.random.normal(k[0], (VOCAB, DIM)) * 0.5,
        "up": jax.random.normal(k[1], (L, HIDDEN, DIM)) / jnp.sqrt(DIM),
        "down": jax.random.normal(k[2], (L, DIM, HIDDEN)) / jnp.sqrt(HIDDEN) * 0.5,
        "head": jax.random.normal(k[3], (VOCAB, DIM)) / jnp.sqrt(DIM),
    }


MASK = {"embed": False, "up": True, "down": True, "head": False}


def block(h, w_up, w_down, p_up, p_down):
    u = jax.nn.gelu(gj.grass_linear(h, w_up, p_up))
    return h + gj.grass_linear(u, w_down, p_down)


def loss_scan(params, proj, ids, target):
    h = params["embed"][ids]

    def body(h, xs):
        return block(h, *xs), None

    h, _ = lax.scan(body, h, (params["up"], params["down"], proj["up"], proj["down"]))
    logits = h @ params["head"].T
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1))


def loss_unrolled(params, proj, ids, target):
    h = params["embed"][ids]
    for l in range(L):
        h = block(h, params["up"][l], params["down"][l], proj["up"][l], proj["down"][l])
    logits = h @ params["head"].T
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1))


def split_params(params):
    """The same model with one 2-D weight per layer."""
    out = {"embed": params["embed"], "head": params["head"]}
    for l in range(L):
        out[f"up{l}"], out[f"down{l}"] = params["up"][l], params["down"][l]
    return out


def loss_split(params, proj, ids, target):
    h = params["embed"][ids]
    for l in range(L):
        h = block(h, params[f"up{l}"], params[f"down{l}"], proj[f"up{l}"], proj[f"down{l}"])
    logits = h @ params["head"].T
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1))


def batch(i):
    ids = jax.random.randint(jax.random.PRNGKey(1000 + i), (8, 6), 0, VOCAB)
    return ids, (ids * 7 + 3) % VOCAB  # a fixed token map to learn


def train(opt, loss_fn, params, steps):
    @jax.jit
    def step(params, state, ids, target):
        proj = opt.projections(params, state)
        loss, grads = opt.value_and_grad(loss_fn)(params, proj, ids, target)
        params, state = opt.step(params, grads, state)
        return params, state, loss

    state = opt.init(params)
    losses = []
    for i in range(steps):
        params, state, loss = step(params, state, *batch(i))
        losses.append(float(loss))
    return params, state, losses


def test_scanned_model_equals_unrolled(platform):
    """Sampled rows (multinomial_nr, unbiased scaling, side "auto"), carry, 3 refreshes: the
    scanned and the unrolled model take the same steps, bit for bit; every slice selects its
    own rows."""
    kw = dict(grass_mask=MASK, stacked=1, rank=6, refresh_every=4, refresh_mode="carry",
              method="multinomial_nr", scaling="unbiased", side="auto", alpha=1.0)
    params = init_params(jax.random.PRNGKey(0))
    a_params, a_state, a_losses = train(gj.grass_adamw(3e-3, **kw), loss_scan, params, 10)
    b_params, b_state, b_losses = train(gj.grass_adamw(3e-3, **kw), loss_unrolled, params, 10)
    assert a_losses == b_losses
    for x, y in zip(jax.tree_util.tree_leaves((a_params, a_state)),
                    jax.tree_util.tree_leaves((b_params, b_state))):
        np.testing.assert_array_equal(x, y)
    up = a_state.layers["up"]
    assert up.indices.shape == (L, 6) and up.m.shape == (L, 6, DIM)
    assert up.skipped.shape == (L,) and not np.asarray(up.skipped).any()
    assert int(up.refresh_count) == 3
    rows = [tuple(np.asarray(up.indices[l])) for l in range(L)]
    assert len(set(rows)) == L, f"slices selected the same rows: {rows}"
    for l in range(L):  # every slice's weight moved
        assert not np.array_equal(a_params["up"][l], params["up"][l])
    assert np.mean(a_losses[-3:]) < np.mean(a_losses[:3])


def test_stacked_equals_one_weight_per_layer(platform):
    """With a deterministic selection (top_r) a stacked weight is exactly L separate 2-D
    weights: each slice is scored, selected and stepped on its own."""
    kw = dict(rank=5, refresh_every=3, method="top_r", scaling="none")
    params = init_params(jax.random.PRNGKey(1))
    a_params, a_state, a_losses = train(gj.grass_adamw(5e-3, grass_mask=MASK, stacked=1, **kw), loss_scan,
                                        params, 7)
    split_mask = lambda path, leaf: path[0].key.startswith(("up", "down"))
    b_params, b_state, b_losses = train(gj.grass_adamw(5e-3, grass_mask=split_mask, **kw),
                                        loss_split, split_params(params), 7)
    np.testing.assert_allclose(a_losses, b_losses, rtol=1e-6)
    for l in range(L):
        for name in ("up", "down"):
            np.testing.assert_array_equal(a_state.layers[name].indices[l],
                                          b_state.layers[f"{name}{l}"].indices)
            assert_close(a_params[name][l], b_params[f"{name}{l}"], what=f"{name}[{l}]")


def test_stacked_sparse_adamw_step_is_one_step_per_slice(platform):
    """ops.sparse_adamw_step on (S, m, n) in one call equals S calls on the slices."""
    S, m, n, r = 3, 10, 6, 4
    k = jax.random.split(jax.random.PRNGKey(2), 4)
    w = random(k[0], (S, m, n))
    idx = jnp.array([[0, 2, 5, 9], [1, 2, 3, 4], [3, 6, 7, 8]], jnp.int32)
    sc = jax.random.uniform(k[1], (S, r), minval=0.5, maxval=2.0)
    g = random(k[2], (S, r, n))
    mv = random(k[3], (S, r, n)) * 0.1
    steps = jnp.array([[0, 1, 2, 3], [5, 5, 5, 5], [0, 0, 9, 1]], jnp.int32)
    g = g.at[1, 0, 0].set(jnp.nan)  # slice 1 skips, the others step
    f = jax.jit(lambda w, m, v, st: ops.sparse_adamw_step(w, idx, sc, g, m, v, st, 0.1,
                                                          side="rows", weight_decay=0.01))
    w1, m1, v1, st1, skipped = f(w, mv, jnp.abs(mv), steps)
    np.testing.assert_array_equal(skipped, [0, 1, 0])
    for s in range(S):
        want = ops.sparse_adamw_step(w[s], idx[s], sc[s], g[s], mv[s], jnp.abs(mv[s]), steps[s],
                                     0.1, side="rows", weight_decay=0.01)
        for got, ref in zip((w1[s], m1[s], v1[s], st1[s], skipped[s]), want):
            np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(w1[1], w[1])


def test_unsliced_stacked_projection_is_refused():
    opt = gj.grass_adamw(1e-3, grass_mask=MASK, stacked=1, rank=4)
    params = init_params(jax.random.PRNGKey(3))
    proj = opt.projections(params, opt.init(params))
    with pytest.raises(ValueError, match=r"3 layer slices.*lax.scan"):
        gj.grass_linear(jnp.ones((2, DIM)), params["up"][0], proj["up"])
    assert proj["up"][1].indices.shape == (4,)
    with pytest.raises(IndexError, match="not a stack"):
        gj.grass_adamw(1e-3, grass_mask={"w": True}, rank=2).projections(
            {"w": jnp.ones((4, 3))},
            gj.grass_adamw(1e-3, grass_mask={"w": True}, rank=2).init({"w": jnp.ones((4, 3))})
        )["w"][0]


def test_stacked_static_refresh_schedule_equals_traced(platform):
    """A refresh step and a plain step compiled apart (refresh=True / False at trace time)
    give a stacked weight the same trajectory as the one step deciding on the device."""
    opt = gj.grass_adamw(3e-3, grass_mask=MASK, stacked=1, rank=4, refresh_every=3, refresh_mode="carry")
    params = init_params(jax.random.PRNGKey(4))
    a_params, a_state, _ = train(opt, loss_scan, params, 7)

    def step(refresh):
        def f(params, state, ids, target):
            proj = opt.projections(params, state, refresh=refresh)
            loss, grads = opt.value_and_grad(loss_scan)(params, proj, ids, target)
            return opt.step(params, grads, state)
        return jax.jit(f)

    steps = {True: step(True), False: step(False)}
    b_params, b_state = params, opt.init(params)
    for i in range(7):
        b_params, b_state = steps[opt.refresh_due_host(i)](b_params, b_state, *batch(i))
    np.testing.assert_array_equal(a_state.layers["up"].indices, b_state.layers["up"].indices)
    np.testing.assert_array_equal(a_state.layers["down"].row_steps,
                                  b_state.layers["down"].row_steps)
    for name in params:
        assert_close(a_params[name], b_params[name], what=name)


def test_shard_state_refuses_stacked_weights():
    opt = gj.grass_adamw(1e-3, grass_mask=MASK, stacked=1, rank=4, axis_name="data", shard_state=True)
    with pytest.raises(ValueError, match=r"\['down'\]: shard_state does not split stacked"):
        opt.init(init_params(jax.random.PRNGKey(5)))
